"""What goes into a report, from a model and a text: the attention of the chosen layers and,
when asked for, the value-weighted norms, a rollout, the "heads that matter" view and the
induction scores. Shared by `attnviz report` and the Python API (``attnviz.display.report``/``show``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from attnviz.analyses.attention import AttentionResult, analyze_with, crop, parse_window
from attnviz.analyses.describe import one_line
from attnviz.analyses.induction import INDUCTION_PERIOD, check_induction_probe, induction_probe
from attnviz.analyses.weighting import model_rollouts, norm_weights, rollout_layers
from attnviz.core.errors import InputError
from attnviz.core.views import Displayable
from attnviz.core.words import counted
from attnviz.display.report import check_size


@dataclass
class Report(Displayable):
    """``result`` (the attention, cut to ``tokens`` when asked) and the keyword arguments
    of ``report.write_report``/``build_payload`` beside it; shown in a notebook as the
    report, and ``save("r.html")`` writes the page `attnviz report` writes."""

    result: AttentionResult
    extras: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        views = [name for name in ("norms", "rollout", "attribution", "induction")
                 if name in self.extras]
        more = f" + {', '.join(views)}" if views else ""
        return f"<attnviz report of {one_line(self.result)}{more}>"


def check_report_options(weighting: str = "attention", target: str | None = None,
                         contrast: str | None = None, ablate: str = "zero",
                         pretrained: bool = True) -> None:
    """The options refused before any model is read."""
    if weighting not in ("attention", "norm"):
        raise InputError(f"--weighting must be attention or norm, got {weighting!r}")
    if target is not None or contrast is not None:
        from attnviz.analyses.attribution import ABLATIONS

        if ablate not in ABLATIONS:
            raise InputError(f"--ablate must be zero or mean, got {ablate!r}")
        if not pretrained:
            raise InputError("--target needs trained weights: random mode has no output head "
                             "(unembedding); pass --weights")


def report_contents(model, token_ids: list[int], *, layer=None, tokens: str | None = None,
                    weighting: str = "attention", rollout: bool = False,
                    induction: bool = False, seed: int = 123, target: str | None = None,
                    contrast: str | None = None, position: int = -1, ablate: str = "zero",
                    say: Callable[[str], None] = lambda message: None) -> Report:
    """Everything a report of ``token_ids`` shows, computed by ``model`` (``load_model``);
    the options are `attnviz report`'s. ``say`` hears what is being done."""
    check_report_options(weighting, target, contrast, ablate,
                         model.describe()["mode"] != "random")
    window = parse_window(tokens, len(token_ids))
    attributing = target is not None or contrast is not None
    if attributing:
        from attnviz.analyses.attribution import resolve_metric

        metric_ids = resolve_metric(model, token_ids, target, contrast, position)
    rolled = None
    if rollout:
        rolled = rollout_layers(layer, model.n_layers, default_all=False, option="--rollout")
    if induction:
        check_induction_probe(model)
    result = analyze_with(model, token_ids, layer)
    result = crop(result, *window) if window else result
    check_size(*result.weights.shape[:3], matrices=2 if weighting == "norm" else 1)
    extras = {}
    if weighting == "norm":
        extras["norms"] = norm_weights(result)
    if rolled is not None:
        say(f"Rolling attention out through layers 0-{rolled[-1]}…")
        cut = slice(*window) if window else slice(None)
        found = model_rollouts(model, token_ids, rolled, ["attention"] + (
            ["norm"] if weighting == "norm" else []))
        extras["rollout"] = {"layers": rolled, **{k: v[cut, cut] for k, v in found.items()}}
    if attributing:
        from attnviz.analyses.attribution import attribute, report_data

        say(f"Attributing the prediction to {counted(model.n_layers * model.n_heads, 'head')}…")
        found = attribute(model, token_ids, position=position, target=metric_ids[0],
                          contrast=metric_ids[1], ablate=ablate)
        extras["attribution"] = report_data(found, model.tokenizer)
    if induction:
        say(f"Scoring induction on a repeated random sequence ({2 * INDUCTION_PERIOD} tokens)…")
        extras["induction"] = induction_probe(model, result.layers, seed)
        if weighting == "norm":
            extras["norm_induction"] = induction_probe(model, result.layers, seed,
                                                       weighting="norm")
    return Report(result, extras)
