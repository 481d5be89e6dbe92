"""What the pictures of ``--weighting norm`` draw: the norms as weights, on one colour scale."""

from __future__ import annotations

from dataclasses import replace

from attnviz.analyses.weighting import NORM_LABEL, colour_top, norm_weights, weighting_config
from attnviz.pictures.colours import Measure


def norm_pictures(result):
    """``(result with its norms as weights, colours.Measure)``: what the pictures of
    ``--weighting norm`` draw, on one colour scale for every layer and head of the run
    (0..``colour_top`` of the norms), and the config saying so."""
    norms = norm_weights(result)
    top = colour_top(norms)
    config = {**result.config, "weighting": weighting_config(
        "norm", "pictures of the norms on one colour scale, 0..top, for every layer and head",
        top=top)}
    return (replace(result, weights=norms, config=config),
            Measure(label=NORM_LABEL, top=top, title=" · value-weighted"))
