"""Pictures readable at a glance (issue #36, part 4): every colour bar names its scale and
its ticks do not crowd, no text is smaller than a readable size, token labels are whole or
replaced by position numbers, a one-layer scan map is not a strip beside a tall bar, the
attribution pictures are large enough with their titles inside, the training film uses the
weights' default scale, and the report's legend and configuration panel read cleanly.

Every picture kind is drawn from tiny arrays; the figures are caught as matplotlib draws
them (``FigureCanvasAgg.draw``), before any encoding, and their artists inspected.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.text import Text
from PIL import Image

from attnviz.core.config import ModelConfig
from attnviz.pictures import colours

MIN_PT = 7.0  # points: the smallest text that reads at the default 100 dpi (9.7 pixels)
SCALE_NAMES = ("√ scale", "log scale", "linear scale", "linear, symmetric about 0")
CROWDED = 1.6  # two tick labels closer than this many of their lines touch or nearly


# --- catching the figures --------------------------------------------------------------------

_DRAWN_TEXTS: dict[int, Text] = {}  # the Text artists drawn in the current test, by id


@pytest.fixture
def drawn(monkeypatch):
    """Every matplotlib Figure drawn (on the Agg canvas) while the test runs, in order; the
    Text artists actually drawn (not tick labels outside the view) are kept aside."""
    figures = []
    draw, draw_text = FigureCanvasAgg.draw, Text.draw
    _DRAWN_TEXTS.clear()

    def recording(self, *args, **kwargs):
        if all(f is not self.figure for f in figures):
            figures.append(self.figure)
        return draw(self, *args, **kwargs)

    def recording_text(self, renderer, *args, **kwargs):
        _DRAWN_TEXTS[id(self)] = self
        return draw_text(self, renderer, *args, **kwargs)

    monkeypatch.setattr(FigureCanvasAgg, "draw", recording)
    monkeypatch.setattr(Text, "draw", recording_text)
    yield figures
    _DRAWN_TEXTS.clear()


def colorbars(figures) -> list:
    return [ax._colorbar for fig in figures for ax in fig.axes if hasattr(ax, "_colorbar")]


def bar_name(bar) -> str:
    return bar.ax.get_xlabel() if bar.orientation == "horizontal" else bar.ax.get_ylabel()


def texts(figures) -> list[Text]:
    """The Text artists of ``figures`` that were drawn and show something."""
    shown = []
    for fig in figures:
        for text in fig.findobj(Text):
            if id(text) in _DRAWN_TEXTS and text.get_visible() and text.get_text().strip():
                shown.append(text)
    return shown


# --- the picture kinds, from tiny arrays ----------------------------------------------------

def labels(n: int) -> list[str]:
    return [f"t{i}" for i in range(n)]


def causal(n: int, heads: int = 1, seed: int = 0) -> np.ndarray:
    """``(heads, n, n)`` rows of random weights over the past, each summing to 1."""
    rng = np.random.default_rng(seed)
    w = np.tril(rng.random((heads, n, n)) ** 4)
    return (w / w.sum(-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def small_result():
    from attnviz.analyses.attention import analyze

    return analyze("Your journey starts with one step", ModelConfig(n_heads=4, d_model=32))


def film_records(steps: int = 3, layers: int = 2, heads: int = 2) -> list[dict]:
    """training.jsonl lines as ``attnviz train`` writes them, with scores that rise."""
    records = []
    for k in range(steps):
        level = k / max(steps - 1, 1)
        scores = {name: np.full((layers, heads), level).tolist()
                  for name in ("previous_token_head", "duplicate_token_head", "induction_head")}
        periods = {str(p): {"induction": np.full((layers, heads), level).tolist(),
                            "previous_token": np.full((layers, heads), level).tolist()}
                   for p in (2, 3)}
        records.append({"step": 100 * k, "loss": 4.0 - level * 3, "scores": scores,
                        "periods": periods})
    return records


def draw_heatmap(tmp_path, scale="sqrt", n=5):
    from attnviz.pictures.heatmap import HeatmapFigure

    HeatmapFigure(labels(n), scale=scale).png(list(causal(n)), ["head 0"])


def draw_overview(tmp_path, n=5):
    from attnviz.pictures.grid import heads_overview

    heads_overview(causal(n, 4), "t", token_labels=labels(n)).to_bytes("png")


def draw_model_grid(tmp_path):
    from attnviz.pictures.grid import save_grid

    save_grid(tmp_path / "model.png", causal(6, 4).reshape(2, 2, 6, 6), "every layer",
              row_names=["layer 0", "layer 1"], col_names=["head 0", "head 1"],
              token_labels=labels(6))


def draw_compare(tmp_path, result):
    from attnviz.pictures.plot import save_compare

    save_compare(tmp_path / "compare.png", result, [0, 1])


def draw_rollout(tmp_path):
    from attnviz.pictures.plot import write_rollout

    write_rollout(causal(5)[0], labels(5), tmp_path, "rollout")


def draw_steps(tmp_path, result):
    from attnviz.analyses.steps import head_steps
    from attnviz.pictures.steps import render_steps

    render_steps(head_steps(result, 0), result.token_labels)


def draw_scan_map(tmp_path, layers=1, heads=12):
    from attnviz.pictures.scan import save_score_maps

    scores = np.linspace(0, 1, layers * heads).reshape(layers, heads)
    save_score_maps(tmp_path, {"induction_head": (scores, "induction score\nmean over 2 prompts")},
                    list(range(layers)))


def draw_scan_notebook(tmp_path):
    from attnviz.pictures.scan import figure_png, score_maps_figure

    maps = {"induction_head": (np.full((1, 4), 0.5), "induction score"),
            "first_token": (np.full((1, 4), 0.2), "first-token (sink) mass")}
    figure_png(score_maps_figure(maps, [0]))


def draw_series(tmp_path):
    from attnviz.analyses.scan_series import CheckpointScan
    from attnviz.pictures.series import save_series_plots

    def checkpoint(step: int) -> CheckpointScan:
        mean = {"induction_head": np.full((2, 3), step / 2000)}
        result = SimpleNamespace(layers=[0, 1], n_heads=3, mean=mean, induction_probe=None)
        return CheckpointScan(f"step{step}", step, {}, result)

    save_series_plots(tmp_path, [checkpoint(0), checkpoint(1000)], ["induction_head"])


def draw_head_map(tmp_path, shape=(2, 2)):
    from attnviz.pictures.attribution import save_head_map

    values = np.linspace(-1, 1, shape[0] * shape[1]).reshape(shape)
    return save_head_map(tmp_path / "dla.png", values, "Direct logit attribution to logit(x)",
                         "logits")


def attribution(keys: int = 3):
    from attnviz.analyses.attribution import AttributionResult

    attention = np.tile(np.linspace(1, 2, keys) / np.linspace(1, 2, keys).sum(), (2, 2, 1))
    return AttributionResult(token_ids=list(range(keys)), position=keys - 1, target=0,
                             contrast=None, metric=1.0, predictions=[],
                             dla=np.zeros((2, 2)), ablation=np.zeros((2, 2)),
                             attention=attention, components={})


def draw_top_heads(tmp_path, keys=3):
    from attnviz.pictures.attribution import save_top_heads

    return save_top_heads(tmp_path / "top_heads.png", attribution(keys),
                          [(0, 0, 0.5), (1, 1, -0.25)], labels(keys), "dla")


def draw_similarity(tmp_path):
    from attnviz.pictures.similarity import save_similarity

    save_similarity(tmp_path / "similarity.png", np.array([[0.0, 0.4], [0.4, 0.0]]), "t")


def draw_why(tmp_path):
    from attnviz.pictures.why import keys_bytes, matrix_bytes

    names = ["embed", "pos", "L0.H0", "L0.H1"]
    matrix_bytes(np.eye(4) - 0.5, names, "Why L1 H0")
    keys_bytes(np.ones((4, 3)), names, ["a", "b", "c"], [0, 1, 2], 1,
               np.array([0.2, 0.5, 0.3]), "Why L1 H0")


def generation(prompt: list[str], generated: list[str], layers: int = 2, heads: int = 2):
    total = len(prompt) + len(generated)
    rows = np.stack([causal(total, heads, seed=layer)[:, len(prompt) - 1 : total - 1]
                     for layer in range(layers)])  # (L, H, N, total): the generated rows
    return SimpleNamespace(rows=rows, prompt_length=len(prompt), new_ids=list(range(len(generated))),
                           layers=list(range(layers)))


def draw_generation(tmp_path):
    from attnviz.pictures.generation import write_generation_pictures

    prompt, new = ["Once", "␣upon", "␣there", "␣was"], ["␣something", "␣belonged", "␣here"]
    write_generation_pictures(generation(prompt, new), [*prompt, *new], tmp_path / "gen")


def draw_film(tmp_path, n=30):
    from attnviz.pictures.training import film_frames

    records = film_records()
    frames = [np.stack([causal(n, 2, seed=k), causal(n, 2, seed=k + 1)]) for k in range(len(records))]
    return list(film_frames(frames, labels(n), records))


def draw_needle(tmp_path):
    from attnviz.pictures.needle import needle_pngs

    rows = np.tile(np.linspace(0, 0.05, 100), (3, 1))
    needle_pngs([0, 1], np.full((2, 4), 0.5), np.full((2, 4), 0.25), np.array([[1.0, 0.5]] * 3),
                [0.0, 0.5, 1.0], [100, 200], {(1, 0): (rows, [(0.1, 0.12)] * 3, [0.0, 0.5, 1.0], 200)},
                3, 6)


def draw_detector_chart(tmp_path):
    from attnviz.pictures.training import write_detector_chart

    write_detector_chart(film_records(), tmp_path / "detectors.png")


def draw_lines(tmp_path):
    from attnviz.pictures.lines import LinesFigure

    LinesFigure(labels(5)).to_bytes(list(causal(5)), "head 0", [0])


# name -> (draw(tmp_path, result), whether it has a colour bar)
KINDS = {
    "heatmap √": (lambda tmp, r: draw_heatmap(tmp, "sqrt"), True),
    "heatmap linear": (lambda tmp, r: draw_heatmap(tmp, "linear"), True),
    "heatmap log": (lambda tmp, r: draw_heatmap(tmp, "log"), True),
    "heatmap of 300 tokens": (lambda tmp, r: draw_heatmap(tmp, "sqrt", 300), True),
    "overview, 5 tokens": (lambda tmp, r: draw_overview(tmp, 5), True),
    "overview, 60 tokens": (lambda tmp, r: draw_overview(tmp, 60), True),
    "overview, 300 tokens": (lambda tmp, r: draw_overview(tmp, 300), True),
    "model grid": (lambda tmp, r: draw_model_grid(tmp), True),
    "compare-heads": (draw_compare, True),
    "rollout": (lambda tmp, r: draw_rollout(tmp), True),
    "steps": (draw_steps, True),
    "scan map, one layer": (lambda tmp, r: draw_scan_map(tmp, 1, 12), True),
    "scan map, 12 layers": (lambda tmp, r: draw_scan_map(tmp, 12, 12), True),
    "scan maps in a notebook": (lambda tmp, r: draw_scan_notebook(tmp), True),
    "scan across checkpoints": (lambda tmp, r: draw_series(tmp), True),
    "attribute head map": (lambda tmp, r: draw_head_map(tmp), True),
    "attribute top heads": (lambda tmp, r: draw_top_heads(tmp), True),
    "head similarity": (lambda tmp, r: draw_similarity(tmp), True),
    "why": (lambda tmp, r: draw_why(tmp), True),
    "generate": (lambda tmp, r: draw_generation(tmp), True),
    "training film": (lambda tmp, r: draw_film(tmp), True),
    "needle": (lambda tmp, r: draw_needle(tmp), True),
    "training detectors chart": (lambda tmp, r: draw_detector_chart(tmp), False),
    "lines view": (lambda tmp, r: draw_lines(tmp), False),
}
WITH_BARS = [name for name, (_, bar) in KINDS.items() if bar]


# --- 1. every colour bar names its scale, with ticks that do not crowd -----------------------

@pytest.mark.parametrize("kind", WITH_BARS)
def test_every_colour_bar_names_its_scale(kind, drawn, tmp_path, small_result):
    KINDS[kind][0](tmp_path, small_result)
    bars = colorbars(drawn)
    assert bars, f"{kind}: no colour bar drawn"
    for bar in bars:
        name = bar_name(bar)
        assert any(scale in name for scale in SCALE_NAMES), f"{kind}: the bar {name!r} names no scale"


@pytest.mark.parametrize("scale", ["sqrt", "linear", "log"])
def test_the_bar_names_the_scale_in_use(scale, drawn, tmp_path):
    draw_heatmap(tmp_path, scale)
    (bar,) = colorbars(drawn)
    assert colours.SCALE_NAMES[scale] in bar_name(bar)
    assert [s for s in colours.SCALE_NAMES.values() if s in bar_name(bar)] == [colours.SCALE_NAMES[scale]]


def tick_points(bar) -> tuple[list[float], float]:
    """The bar's tick positions along it, in points, and its tick labels' font size."""
    axis = bar.ax.xaxis if bar.orientation == "horizontal" else bar.ax.yaxis
    low, high = sorted(axis.get_view_interval())
    locs = [v for v in axis.get_majorticklocs() if low - 1e-9 <= v <= high + 1e-9]
    k = 0 if bar.orientation == "horizontal" else 1
    points = [bar.ax.transData.transform((v, 0.5) if k == 0 else (0.5, v))[k]
              * 72 / bar.ax.figure.dpi for v in locs]
    shown = [t for t in axis.get_ticklabels() if t.get_text()]
    return sorted(points), shown[0].get_fontsize() if shown else 0.0


@pytest.mark.parametrize("kind", WITH_BARS)
def test_colour_bar_ticks_do_not_crowd(kind, drawn, tmp_path, small_result):
    KINDS[kind][0](tmp_path, small_result)
    for bar in colorbars(drawn):
        points, font = tick_points(bar)
        assert len(points) >= 2, f"{kind}: a bar of {len(points)} ticks"
        gaps = np.diff(points)
        assert gaps.min() >= CROWDED * font, (
            f"{kind}: ticks {gaps.min():.1f} pt apart at {font} pt ({bar_name(bar)!r})")


def test_a_short_bar_keeps_both_ends_and_drops_the_ticks_that_would_touch():
    norm = colours.make_norm("sqrt")
    ticks = [0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1]
    kept = [ticks[k] for k in colours.spaced_ticks(ticks, norm, 1.5, 8.0)]
    assert kept[0] == 0 and kept[-1] == 1 and 0.05 not in kept
    assert [ticks[k] for k in colours.spaced_ticks(ticks, norm, 9.0, 8.0)] == ticks  # a tall bar


# --- 2. no text smaller than a readable size --------------------------------------------------

@pytest.mark.parametrize("kind", list(KINDS))
def test_no_text_is_smaller_than_a_readable_size(kind, drawn, tmp_path, small_result):
    KINDS[kind][0](tmp_path, small_result)
    shown = texts(drawn)
    assert shown
    small = sorted({(t.get_fontsize(), t.get_text()[:20]) for t in shown if t.get_fontsize() < MIN_PT})
    assert not small, f"{kind}: text under {MIN_PT} pt: {small[:5]}"


@pytest.mark.parametrize("kind", list(KINDS))
def test_no_text_leaves_the_canvas(kind, drawn, tmp_path, small_result):
    KINDS[kind][0](tmp_path, small_result)
    assert_texts_inside(drawn)


# --- 3. token labels: whole and readable, or position numbers --------------------------------

def grid_labels(figures) -> tuple[list[Text], list[Text]]:
    """(token labels, position numbers) of the overview's tiles."""
    shown = texts(figures)
    return ([t for t in shown if t.get_text().startswith("t") and t.get_text()[1:].isdigit()],
            [t for t in shown if t.get_text().isdigit()])


def test_a_short_texts_overview_labels_every_token_readably(drawn, tmp_path):
    draw_overview(tmp_path, 5)
    tokens, _ = grid_labels(drawn)
    assert {t.get_text() for t in tokens} == set(labels(5))
    assert min(t.get_fontsize() for t in tokens) >= MIN_PT


@pytest.mark.parametrize("n", [60, 300])
def test_a_long_texts_overview_shows_position_numbers_not_every_kth_token(n, drawn, tmp_path):
    draw_overview(tmp_path, n)
    tokens, numbers = grid_labels(drawn)
    assert not tokens  # a label every k-th token says nothing about the tokens between
    values = sorted({int(t.get_text()) for t in numbers})
    assert values[0] == 0 and len(values) >= 3
    step = values[1] - values[0]
    assert step in (1, 2, 5, 10, 20, 50, 100) and np.all(np.diff(values) == step)  # round steps
    assert min(t.get_fontsize() for t in numbers) >= 8.0


def test_the_film_labels_the_default_probes_tokens_at_a_readable_size(drawn, tmp_path):
    draw_film(tmp_path, 30)  # the default run's probe: 15 tokens repeated twice
    film = drawn[0]
    heads = [ax for ax in film.axes if ax.images and not hasattr(ax, "_colorbar")]
    assert len(heads) == 2
    for ax in heads:
        names = [t.get_text() for t in ax.get_xticklabels()]
        assert names == labels(30)
        assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 8.0


def test_the_film_of_a_long_probe_shows_positions(drawn, tmp_path):
    draw_film(tmp_path, 100)
    ax = next(ax for ax in drawn[0].axes if ax.images and not hasattr(ax, "_colorbar"))
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert all(name.isdigit() for name in names) and names[0] == "0" and 3 <= len(names) <= 30
    assert min(t.get_fontsize() for t in ax.get_yticklabels()) >= 8.0


def test_the_generate_overviews_show_whole_token_labels(drawn, tmp_path):
    draw_generation(tmp_path)
    overviews = [fig for fig in drawn if fig._suptitle is not None and (
        "Every layer and head" in fig._suptitle.get_text() or "all 2 heads" in fig._suptitle.get_text())]
    assert len(overviews) == 2  # layer 0's heads (layer 1 reuses its layout) and the model's
    for fig in overviews:
        shown = texts([fig])
        assert {"␣something", "␣belonged"} <= {t.get_text() for t in shown}  # not "␣somethi"
        assert min(t.get_fontsize() for t in shown if t.get_text().startswith("␣")) >= MIN_PT


# --- 4. scan maps --------------------------------------------------------------------------

def extent(artist):
    box = artist.get_window_extent()
    return box.width, box.height


@pytest.mark.parametrize("layers", [1, 2])
def test_a_flat_scan_map_is_not_a_strip_beside_a_tall_bar(layers, drawn, tmp_path):
    draw_scan_map(tmp_path, layers, 12)
    (fig,) = drawn
    (bar,) = colorbars(drawn)
    image = next(ax for ax in fig.axes if ax.images and not hasattr(ax, "_colorbar")).images[0]
    map_w, map_h = extent(image)
    bar_w, bar_h = extent(bar.ax)
    assert map_w > 4 * map_h  # a strip: one or two layers of 12 heads
    if bar.orientation == "vertical":
        assert bar_h <= 1.05 * map_h
    else:
        assert bar_w <= 1.05 * map_w and bar_h < map_h
    width, height = fig.get_size_inches()
    assert height < 0.6 * width  # no tall canvas around a flat map


def test_scan_titles_say_what_the_score_is():
    from attnviz.pictures.scan import TITLES

    assert TITLES["induction_head"] == "induction score"
    assert not any("TransformerLens" in title for title in TITLES.values())


def test_a_tall_scan_map_has_its_bar_beside_it_no_longer_than_the_map(drawn, tmp_path):
    draw_scan_map(tmp_path, 12, 12)
    (bar,) = colorbars(drawn)
    image = next(ax for ax in drawn[0].axes if ax.images and not hasattr(ax, "_colorbar")).images[0]
    assert bar.orientation == "vertical" and extent(bar.ax)[1] <= 1.05 * extent(image)[1]


# --- 5. attribute: large enough, titles inside --------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (4, 4), (12, 12)])
def test_attribute_head_maps_are_large_enough_with_the_title_inside(shape, drawn, tmp_path):
    path = draw_head_map(tmp_path, shape)
    with Image.open(path) as image:
        assert image.size[0] >= 600 and image.size[1] >= 400
    assert_texts_inside(drawn)


@pytest.mark.parametrize("keys", [2, 9, 60])
def test_attribute_top_heads_are_large_enough_with_the_title_inside(keys, drawn, tmp_path):
    path = draw_top_heads(tmp_path, keys)
    with Image.open(path) as image:
        assert image.size[0] >= 600 and image.size[1] >= 400
    assert_texts_inside(drawn)


def assert_texts_inside(figures) -> None:
    for fig in figures:
        canvas = fig.bbox
        renderer = fig.canvas.get_renderer()
        for text in texts([fig]):
            box = text.get_window_extent(renderer)
            assert (box.x0 >= canvas.x0 - 1 and box.x1 <= canvas.x1 + 1 and box.y0 >= canvas.y0 - 1
                    and box.y1 <= canvas.y1 + 1), f"{text.get_text()!r} leaves the canvas"


def test_attribute_top_heads_use_the_weights_default_scale(drawn, tmp_path):
    draw_top_heads(tmp_path)
    (bar,) = colorbars(drawn)
    assert isinstance(bar.norm, PowerNorm) and bar.norm.gamma == 0.5
    assert "√ scale" in bar_name(bar)


# --- 6. the training film: the default colour scale ------------------------------------------

def test_the_film_uses_the_default_colour_scale(drawn, tmp_path):
    frames = draw_film(tmp_path, 12)
    default = colours.make_norm("sqrt")
    film = drawn[0]
    images = [image for ax in film.axes for image in ax.images]
    assert len(images) == 2
    for image in images:
        norm = image.norm
        assert type(norm) is type(default) and norm.gamma == default.gamma
        assert (norm.vmin, norm.vmax) == (default.vmin, default.vmax)
    (bar,) = colorbars(drawn)
    assert "√ scale" in bar_name(bar)
    # a weight of 0.25 is drawn half-way up the colormap, as in every heatmap
    assert float(images[0].norm(0.25)) == pytest.approx(0.5)
    assert frames[0].ndim == 3


# --- 7. the report: the legend names the scale; the configuration stays inside its panel ----

@pytest.mark.browser
def test_report_legend_names_the_scale_and_the_configuration_does_not_overflow(tmp_path,
                                                                             small_result):
    from dataclasses import replace

    from attnviz.display import report

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.fail(f"{chromium} is missing: install Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    long_path = ("/home/someone/.cache/huggingface/hub/models--someone--a-rather-long-model-name/"
                 "snapshots/0123456789abcdef0123456789abcdef01234567/model.safetensors")
    config = {**small_result.config, "weights": long_path,
              "weighting": {"name": "norm", "method": "Kobayashi et al. 2020, ‖α·f(x)‖",
                            "pictures": "the norms on one colour scale, 0..top, every head"}}
    report.write_report(replace(small_result, config=config), tmp_path / "r.html")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium),
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto((tmp_path / "r.html").resolve().as_uri())
            page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            assert page.inner_text("#colorbar-scale") == "(√ scale)"
            page.select_option("#scale", "linear")
            assert page.inner_text("#colorbar-scale") == "(linear scale)"
            for width in (1280, 390):  # a laptop, a phone
                page.set_viewport_size({"width": width, "height": 800})
                scroll, client = page.eval_on_selector(
                    "#config-section .table-scroll", "e => [e.scrollWidth, e.clientWidth]")
                assert scroll <= client + 1, f"the configuration overflows at {width} px"
            assert long_path in page.inner_text("#config-table").replace("\n", "")
        finally:
            browser.close()

