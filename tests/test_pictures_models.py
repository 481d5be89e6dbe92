"""Pictures of the model families: sliding windows and grouped-query heads.

A layer with a sliding window W gives exactly 0 to the keys outside it (``j <= i - W``),
like the causal future: the pictures draw those cells in a second mask colour, name it in
the legend and say "window W" in the titles. Grouped-query heads name their kv head and
the overview lays each kv group out together. Results without either are drawn byte for
byte as before (GPT-2's pictures and reports do not change).

Every result here is built by hand: softmax rows over the keys a query may see, so the
expected colour of every cell is known.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.colors import to_rgba
from PIL import Image

from attnviz.analyses.attention import AttentionResult, crop
from attnviz.display import report
from attnviz.pictures import cells, colours, families, heatmap, plot
from attnviz.pictures.grid import heads_overview, overview_plan
from attnviz.pictures.lines import LinesFigure

CMAPS = ["viridis", "magma", "cividis", "Blues", "Greys", "gray", "coolwarm", "turbo"]


def allowed(n: int, window: int | None) -> np.ndarray:
    """``(n, n)`` bool: the keys each query sees (causal, within the window)."""
    i, j = np.indices((n, n))
    return (j <= i) & ((j > i - window) if window is not None else True)


def softmax_heads(n: int, n_heads: int, window: int | None, seed: int = 0) -> np.ndarray:
    """``(H, n, n)`` float32 softmax rows over the allowed keys: exactly 0 elsewhere."""
    scores = np.random.default_rng(seed).normal(0.0, 2.0, size=(n_heads, n, n))
    scores[:, ~allowed(n, window)] = -np.inf
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def edge_head(n: int, window: int) -> np.ndarray:
    """Query i puts all its weight on the oldest key of its window, max(0, i - W + 1):
    a 1.0 right next to the outside region."""
    head = np.zeros((n, n), dtype=np.float32)
    head[np.arange(n), np.maximum(0, np.arange(n) - window + 1)] = 1.0
    return head


def make_result(n: int, windows=(), kv_heads=(), n_heads: int = 4, seed: int = 0,
                mode: str = "pretrained", heads: np.ndarray | None = None) -> AttentionResult:
    n_layers = max(len(windows), 1)
    weights = np.stack([heads if heads is not None else
                        softmax_heads(n, n_heads, windows[li] if li < len(windows) else None,
                                      seed + li)
                        for li in range(n_layers)])  # (L, H, T, T)
    return AttentionResult(
        token_ids=list(range(n)), weights=weights, layers=list(range(n_layers)),
        attn_inputs=np.zeros((n_layers, n, 4), dtype=np.float32), params={},
        config={"mode": mode, "n_heads": weights.shape[1], "weights": "hand-made"},
        raw_tokens=[f"t{i}".encode() for i in range(n)],
        windows=list(windows), kv_heads=list(kv_heads),
    )


def rgba_bytes(color: str) -> np.ndarray:
    return np.rint(np.array(to_rgba(color)) * 255).astype(int)


def weight_rgba(weight, cmap="viridis", scale="sqrt") -> np.ndarray:
    return np.array(colormaps[cmap](colours.make_norm(scale)(weight), bytes=True)).astype(int)


def is_colour(pixels: np.ndarray, rgba, tol: int = 2) -> np.ndarray:
    return np.all(np.abs(pixels[..., :4].astype(int) - np.asarray(rgba, dtype=int)) <= tol, axis=-1)


def png_pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA"))


def frame_box(pixels: np.ndarray) -> tuple[slice, slice]:
    """Where the cells of a one-panel heatmap picture are: inside its one-pixel frame."""
    frame = np.all(pixels[..., :3] == heatmap._FRAME_RGBA[:3], axis=-1)
    rows = np.nonzero(frame.sum(axis=1) > frame.shape[1] * 0.3)[0]
    cols = np.nonzero(frame.sum(axis=0) > frame.shape[0] * 0.3)[0]
    return slice(rows.min() + 1, rows.max()), slice(cols.min() + 1, cols.max())


def framed_cells(pixels: np.ndarray) -> np.ndarray:
    return pixels[frame_box(pixels)]


def cell_centres(box: np.ndarray, n: int) -> np.ndarray:
    """``(n, n, 4)``: the pixel at the centre of each cell of a box of n x n cells."""
    ys = ((np.arange(n) + 0.5) * box.shape[0] / n).astype(int)
    xs = ((np.arange(n) + 0.5) * box.shape[1] / n).astype(int)
    return box[ys][:, xs]


def check_cells(centres: np.ndarray, weights: np.ndarray, window: int, cmap: str,
                scale: str = "sqrt") -> None:
    """Future cells in the first mask colour, cells outside the window in the second,
    every other cell the colour of its weight."""
    n = weights.shape[0]
    i, j = np.indices((n, n))
    future, outside = j > i, j <= i - window
    assert outside.any() and future.any()
    assert is_colour(centres[future], rgba_bytes(colours.mask_color(cmap))).all()
    assert is_colour(centres[outside], rgba_bytes(colours.outside_color(cmap))).all()
    seen = ~future & ~outside
    want = np.array(colormaps[cmap](colours.make_norm(scale)(weights[seen]), bytes=True))
    assert is_colour(centres[seen], want).all()


# --- the two mask colours ----------------------------------------------------------------


@pytest.mark.parametrize("cmap", CMAPS)
def test_the_two_mask_colours_differ_from_each_other_and_from_every_weight(cmap):
    future, outside = colours.mask_color(cmap), colours.outside_color(cmap)
    shades = colormaps[cmap](np.linspace(0.0, 1.0, 256), bytes=True)[:, :3].astype(int)
    for color in (future, outside):
        assert not (shades == rgba_bytes(color)[:3]).all(axis=1).any()  # no weight has it
        assert colours.mask_distance(colormaps[cmap], color) >= 25.0
    lab = [colours._lab(np.array(to_rgba(c)[:3])) for c in (future, outside)]
    assert np.linalg.norm(lab[0] - lab[1]) >= 25.0


def test_the_window_colour_is_a_darker_grey_beside_viridis_grey_future():
    assert (colours.mask_color("viridis"), colours.outside_color("viridis")) == ("#d0d0d0", "#808080")


@pytest.mark.parametrize("cmap", ["viridis", "Greys", "magma"])
@pytest.mark.parametrize(("n", "window"), [(5, 3), (60, 16)])
def test_cells_outside_the_window_are_drawn_in_the_second_mask_colour(cmap, n, window):
    w = softmax_heads(n, 1, window)[0]
    figure = heatmap.HeatmapFigure([f"t{i}" for i in range(n)], cmap=cmap, annotate=False,
                                   outside_label=f"outside\nwindow {window}")
    pixels = figure.render([cells.masked(w, window)], ["t"], windows=[window])
    ys, xs = figure.boxes[0]
    check_cells(cell_centres(pixels[ys, xs], n), w, window, cmap)
    assert is_colour(pixels, rgba_bytes(colours.outside_color(cmap))).sum() > (
        is_colour(pixels[ys, xs], rgba_bytes(colours.outside_color(cmap))).sum())  # + swatch


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_write_heatmaps_draws_the_window_in_every_head_file(tmp_path, fmt):
    n, window = 12, 4
    result = make_result(n, windows=[window], kv_heads=[0, 0, 1, 1])
    plot.write_heatmaps(result, tmp_path, heads=[1, 3], annotate=False, image_format=fmt)
    plot.write_heatmaps(result, tmp_path / "png", heads=[1], annotate=False)
    box = frame_box(png_pixels(tmp_path / "png" / "head_01.png"))  # the same layout
    for h in (1, 3):
        centres = cell_centres(png_pixels(tmp_path / f"head_{h:02d}.{fmt}")[box], n)
        if fmt == "png":
            check_cells(centres, result.weights[0, h], window, "viridis")
        else:  # JPEG is lossy: the masked regions still come out in their own colours
            i, j = np.indices((n, n))
            assert is_colour(centres[j <= i - window], rgba_bytes("#808080"), tol=12).all()
            assert is_colour(centres[j > i], rgba_bytes("#d0d0d0"), tol=12).all()


def test_absolute_positions_of_a_cut_text_decide_the_window(tmp_path):
    """``--tokens 10:22`` of a windowed text: cell (a, b) of the picture is query 10 + a
    and key 10 + b; outside the window when 10 + b <= 10 + a - W."""
    n, window, start, stop = 30, 5, 10, 22
    result = crop(make_result(n, windows=[window]), start, stop)
    plot.write_heatmaps(result, tmp_path, heads=[0], annotate=False)
    centres = cell_centres(framed_cells(png_pixels(tmp_path / "head_00.png")), stop - start)
    query, key = np.indices((stop - start, stop - start)) + start  # absolute positions
    outside = key <= query - window
    assert outside.any()
    assert is_colour(centres[outside], rgba_bytes("#808080")).all()
    seen = (key <= query) & ~outside
    assert not is_colour(centres[seen], rgba_bytes("#808080")).any()
    assert not is_colour(centres[seen], rgba_bytes("#d0d0d0")).any()
    # the row of query 10 still shows keys 10-... of its window, not the cut's first keys
    assert not is_colour(centres[0, 0], rgba_bytes("#808080"))


# --- pooled views of long texts ------------------------------------------------------


def block_kinds(n: int, n_px: int, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For an n_px x n_px pooling of n x n cells: blocks with a visible cell, blocks of
    only future cells, blocks of only masked cells holding some outside the window."""
    edges = np.arange(n_px + 1) * n // n_px
    first, last = edges[:-1], edges[1:] - 1
    d_min = first[:, None] - last[None, :]  # i - j over a block
    d_max = last[:, None] - first[None, :]
    visible = (d_min <= window - 1) & (d_max >= 0)
    outside = ~visible & (d_max >= window)
    return visible, ~visible & ~outside, outside


def check_pooled(box: np.ndarray, n: int, window: int, cmap: str = "viridis") -> None:
    assert box.shape[0] < n and abs(box.shape[0] - box.shape[1]) <= 1  # really pooled
    size = min(box.shape[:2])
    box = box[:size, :size]
    visible, future, outside = block_kinds(n, size, window)
    future_rgba, outside_rgba = rgba_bytes(colours.mask_color(cmap)), rgba_bytes(
        colours.outside_color(cmap))
    assert outside.sum() > size * size / 4  # most of the lower triangle
    assert is_colour(box[outside], outside_rgba).all()
    assert is_colour(box[future], future_rgba).all()
    assert not is_colour(box[visible], outside_rgba).any()
    assert not is_colour(box[visible], future_rgba).any()
    # The edge head's 1.0 sits next to the outside region, in blocks partly outside the
    # window: every pixel row still shows it.
    hot = is_colour(box, weight_rgba(1.0, cmap))
    assert hot.any(axis=1).all()


def test_a_pooled_heatmap_of_600_tokens_keeps_the_outside_region_masked():
    n, window = 600, 64
    figure = heatmap.HeatmapFigure([f"t{i}" for i in range(n)], dpi=40,
                                   outside_label=f"outside\nwindow {window}")
    pixels = figure.render([cells.masked(edge_head(n, window), window)], ["t"], windows=[window])
    ys, xs = figure.boxes[0]
    assert "max of" in figure.note
    check_pooled(pixels[ys, xs], n, window)


def test_a_pooled_overview_of_600_tokens_keeps_the_outside_region_masked(tmp_path):
    n, window = 600, 64
    heads = np.stack([edge_head(n, window)] * 4)
    result = make_result(n, windows=[window], kv_heads=[0, 0, 1, 1], heads=heads)
    grid = heads_overview([cells.masked(w, window) for w in heads], "t",
                          token_labels=result.token_labels, kv_heads=result.kv_heads,
                          window=window)
    pixels = grid.image()
    assert "max of" in grid.note
    for box in (b for row in grid.tiles for b in row if b is not None):
        check_pooled(pixels[box], n, window)
    # The same through write_heatmaps' file, layer after layer (the overview is re-tiled).
    two = replace(result, weights=np.concatenate([result.weights] * 2), layers=[0, 1],
                  windows=[window, window], attn_inputs=np.zeros((2, n, 4), np.float32))
    plot.write_heatmaps(two, tmp_path, heads=[0])
    for layer in (0, 1):
        tiles = png_pixels(tmp_path / f"layer_{layer:02d}" / "heads.png")
        for box in (b for row in grid.tiles for b in row if b is not None):
            check_pooled(tiles[box], n, window)


def test_block_maximum_with_a_window_against_a_plain_loop():
    rng = np.random.default_rng(5)
    n, px, window = 29, 8, 6
    w = np.where(allowed(n, window), rng.random((n, n)), 0.0).astype(np.float32)
    colormap, _ = colours.weight_colormap("viridis")
    words = cells.cell_words(cells.masked(w, window), px, px, colormap,
                             colours.make_norm("linear"), window, "#808080")
    got = words.view(np.uint8).reshape(px, px, 4)
    edges = [p * n // px for p in range(px + 1)]
    for a in range(px):
        for b in range(px):
            rows, cols = range(edges[a], edges[a + 1]), range(edges[b], edges[b + 1])
            block = [w[i, j] for i in rows for j in cols if i - window < j <= i]
            if block:
                want = colormap(max(block), bytes=True)
            elif any(j <= i - window for i in rows for j in cols):
                want = tuple(rgba_bytes("#808080"))
            else:
                want = colormap(np.ma.masked, bytes=True)
            assert np.array_equal(got[a, b], want), (a, b)


# --- titles, legends, annotations ----------------------------------------------------


def svg_text(path) -> str:
    return path.read_text(encoding="utf-8")


def test_titles_and_legend_name_the_window_and_the_kv_head(tmp_path):
    result = make_result(10, windows=[4, None], kv_heads=[h // 4 for h in range(8)], n_heads=8)
    plot.write_heatmaps(result, tmp_path, heads=[5], image_format="svg")
    head = svg_text(tmp_path / "layer_00" / "head_05.svg")
    assert "layer 0, head 5 · kv 1 · window 4" in head
    assert "outside" in head and "window 4" in head and "(future)" in head  # the legend
    plain_layer = svg_text(tmp_path / "layer_01" / "head_05.svg")
    assert "layer 1, head 5 · kv 1" in plain_layer and "window" not in plain_layer
    heads = svg_text(tmp_path / "layer_00" / "heads.svg")
    assert "all 8 heads in 2 kv groups, 10 tokens · window 4" in heads
    assert "kv 0: heads 0–3" in heads and "kv 1: heads 4–7" in heads
    assert all(f"head {h} · kv {h // 4}" in heads for h in range(8))
    model = svg_text(tmp_path / "model.svg")
    assert "layer 0 · window 4" in model and "head 7 · kv 1" in model


def test_a_window_as_long_as_the_text_is_said_not_drawn(tmp_path):
    n = 18
    result = make_result(n, windows=[4096])
    plot.write_heatmaps(result, tmp_path, heads=[0], image_format="svg")
    assert "head 0 · window 4096 ≥ 18 tokens" in svg_text(tmp_path / "head_00.svg")
    assert "window 4096 ≥ 18 tokens" in svg_text(tmp_path / "heads.svg")
    assert "outside" not in svg_text(tmp_path / "head_00.svg")  # no cell has that colour
    plot.write_heatmaps(result, tmp_path / "png", heads=[0], annotate=False)
    centres = cell_centres(framed_cells(png_pixels(tmp_path / "png" / "head_00.png")), n)
    assert not is_colour(centres, rgba_bytes("#808080")).any()
    assert is_colour(centres[np.triu_indices(n, 1)], rgba_bytes("#d0d0d0")).all()
    assert families.window_note(4096, 1) == "window 4096 ≥ 1 token"


def test_without_groups_there_is_no_kv_label(tmp_path):
    result = make_result(8, windows=[3], kv_heads=[0, 1, 2, 3])  # one kv head per head
    assert not result.grouped
    plot.write_heatmaps(result, tmp_path, heads=[2], image_format="svg")
    for name in ("head_02.svg", "heads.svg"):
        text = svg_text(tmp_path / name)
        assert not re.search(r"\bkv \d", text) and "window 3" in text


def test_printed_weights_leave_the_outside_cells_empty():
    n, window = 9, 3
    w = softmax_heads(n, 1, window)[0]
    figure = heatmap.HeatmapFigure([f"t{i}" for i in range(n)], annotate=True,
                                   outside_label="outside\nwindow 3")
    figure.render([cells.masked(w, window)], ["t"], windows=[window])
    texts = np.array([t.get_text() for t in figure.cell_texts[0]]).reshape(n, n)
    seen = allowed(n, window)
    assert (texts[~seen] == "").all()
    assert all(texts[i, j] == f"{w[i, j]:.2f}" for i, j in zip(*np.nonzero(seen)))


def test_exclude_first_with_a_window_renormalises_over_the_window():
    n, window = 10, 4
    w = softmax_heads(n, 1, window, seed=2)[0]
    before = w.copy()
    view = cells.exclude_first(w, window)
    assert np.array_equal(w, before)
    mask = np.ma.getmaskarray(view)
    i, j = np.indices((n, n))
    assert (mask == ((j > i) | (j <= i - window) | (j == 0) | (i == 0))).all()
    kept = np.where(mask, 0.0, w)
    want = kept / kept.sum(axis=1, keepdims=True).clip(1e-30)
    assert np.allclose(np.ma.getdata(view)[~mask], want[~mask], atol=1e-6)
    assert np.allclose(view[1:].sum(axis=1), 1.0, atol=1e-5)


def test_exclude_first_pictures_keep_both_mask_colours(tmp_path):
    n, window = 12, 4
    result = make_result(n, windows=[window])
    plot.write_heatmaps(result, tmp_path, heads=[0], annotate=False, exclude_first_key=True)
    centres = cell_centres(framed_cells(png_pixels(tmp_path / "head_00.png")), n)
    i, j = np.indices((n, n))
    assert is_colour(centres[j <= i - window], rgba_bytes("#808080")).all()
    excluded = (j == 0) & (i < window)  # key 0 inside the window: excluded, first colour
    assert is_colour(centres[excluded | (j > i)], rgba_bytes("#d0d0d0")).all()


# --- the overview's kv groups ----------------------------------------------------------


@pytest.mark.parametrize(("n_heads", "n_kv"), [(8, 2), (32, 8), (14, 2), (16, 8), (8, 1), (40, 8)])
def test_overview_puts_each_kv_group_together_under_one_label(n_heads, n_kv):
    kv_heads = [h // (n_heads // n_kv) for h in range(n_heads)]
    plan = overview_plan(n_heads, kv_heads)
    placed = [h for row in plan.slots for h in row if h is not None]
    assert sorted(placed) == list(range(n_heads))
    for r, first, last, label in plan.groups:  # each label spans heads of one kv head only
        heads = plan.slots[r][first : last + 1]
        assert None not in heads and len({kv_heads[h] for h in heads}) == 1
        assert label.startswith(f"kv {kv_heads[heads[0]]}: head")
    for row in plan.slots:  # a group is never split across a row unless it is wider than a row
        for kv in {kv_heads[h] for h in row if h is not None}:
            members = [h for h in range(n_heads) if kv_heads[h] == kv]
            if len(members) <= len(row):
                assert set(members) <= set(row)
    assert all(len(row) <= 8 for row in plan.slots)


def test_overview_tiles_of_a_group_sit_closer_than_two_groups():
    n = 6
    kv_heads = [0, 0, 1, 1, 2, 2, 3, 3]
    heads = softmax_heads(n, 8, None)
    grid = heads_overview(heads, "t", token_labels=[f"t{i}" for i in range(n)],
                          kv_heads=kv_heads)
    plan = overview_plan(8, kv_heads)
    assert plan.col_breaks  # groups of 2 share rows
    row = grid.tiles[0]
    lefts = [box[1].start for box in row]
    gaps = np.diff(lefts)
    within = [g for c, g in enumerate(gaps, start=1) if c not in plan.col_breaks]
    between = [g for c, g in enumerate(gaps, start=1) if c in plan.col_breaks]
    assert min(between) > max(within) + 10  # pixels
    texts = [t.get_text() for t in grid.ax.texts]
    assert "kv 1: heads 2–3" in texts and "head 3 · kv 1" in texts


def test_not_grouped_overview_keeps_its_old_layout():
    assert overview_plan(12).slots == overview_plan(12, list(range(12))).slots
    plan = overview_plan(12)
    assert [len(r) for r in plan.slots] == [4, 4, 4] and not plan.groups and not plan.col_breaks
    assert plan.titles[0] == ["head 0", "head 1", "head 2", "head 3"]


# --- compare and lines ---------------------------------------------------------------


def test_compare_titles_and_cells(tmp_path):
    n = 10
    result = make_result(n, windows=[3, None], kv_heads=[0, 0, 1, 1])
    plot.save_compare(tmp_path / "c.svg", result, [1, 2], image_format="svg")
    text = svg_text(tmp_path / "c.svg")
    assert "layer 0, head 1 · kv 0 · window 3" in text and "layer 1, head 2 · kv 1" in text
    assert "layer 1, head 2 · kv 1 · window" not in text
    plot.save_compare(tmp_path / "c.png", result, [1], annotate=False)
    plain = replace(result, windows=[None, 3])  # layer 1 windowed instead: same count
    plot.save_compare(tmp_path / "p.png", plain, [1], annotate=False)
    outside = [is_colour(png_pixels(tmp_path / name), rgba_bytes("#808080")).sum()
               for name in ("c.png", "p.png")]
    assert outside[0] > 28 * 20 * 20  # layer 0's 28 outside cells of >= 30 px a side
    assert abs(outside[0] - outside[1]) < 0.01 * outside[0]


def test_lines_draw_no_line_outside_the_window_and_say_so(tmp_path):
    n, window = 10, 3
    result = make_result(n, windows=[window], kv_heads=[0, 0, 1, 1])
    figure = LinesFigure(result.token_labels)
    view = cells.masked(result.weights[0, 2], window)
    figure.render([view], "t", [2], head_names=["head 2 · kv 1"],
                  note="no line to keys outside window 3 (j ≤ i − 3)")
    lines = figure._artists[0]
    pairs = {(int(round(seg[0][1])), int(round(seg[1][1]))) for seg in lines.get_segments()}
    assert pairs and all(i - window < j <= i for i, j in pairs)
    plot.write_heatmaps(result, tmp_path, view="lines", heads=[2], image_format="svg")
    text = svg_text(tmp_path / "head_02.svg")
    assert "head 2 · kv 1 · window 3" in text and "outside window 3" in text
    plot.save_compare(tmp_path / "c.svg", result, [0, 2], view="lines", image_format="svg")
    text = svg_text(tmp_path / "c.svg")
    assert "head 2 · kv 1" in text and "window 3" in text


# --- the report ----------------------------------------------------------------------


def test_report_data_carries_windows_and_kv_heads(tmp_path):
    result = make_result(12, windows=[4, None], kv_heads=[0, 0, 1, 1])
    report.write_report(result, tmp_path / "r.html")
    payload = report.read_payload(tmp_path / "r.html")
    assert payload["windows"] == [4, None]
    assert payload["kv_heads"] == [0, 0, 1, 1]
    html = (tmp_path / "r.html").read_text(encoding="ascii")
    assert "firstKey" in html and "outside-swatch" in html and "kv-group" in html
    # decoded weights are exactly 0 outside the window, as computed
    decoded = report.decode_weights(payload)
    assert (decoded[0][:, ~allowed(12, 4)] == 0).all()


def test_report_of_a_plain_result_leaves_the_family_code_out(tmp_path):
    plain = make_result(12, kv_heads=[0, 1, 2, 3])  # own kv head each: not grouped
    payload = report.build_payload(plain)
    assert "windows" not in payload and "kv_heads" not in payload
    html = report.render_html(payload)
    assert "[families]" not in html and "firstKey" not in html and "--outside" not in html
    for name in report._ASSETS:
        text = report.asset(name, families=False)
        assert "[families]" not in text and "[/families]" not in text
        full = report.asset(name)
        assert full.count("/* [families] */") == full.count("/* [/families] */")
    windowed = report.build_payload(make_result(12, windows=[None, 20]))
    assert windowed["windows"] == [None, 20] and "kv_heads" not in windowed
    grouped = report.build_payload(make_result(12, kv_heads=[0, 0, 1, 1]))
    assert grouped["kv_heads"] == [0, 0, 1, 1] and "windows" not in grouped


# --- GPT-2's pictures do not change --------------------------------------------------


def render_everything(result: AttentionResult, folder) -> dict[str, bytes]:
    plot.write_heatmaps(result, folder / "png", heads=[0, 3])
    plot.write_heatmaps(result, folder / "svg", image_format="svg", heads=[0])
    plot.write_heatmaps(result, folder / "ex", exclude_first_key=True, heads=[1], cmap="Greys",
                        scale="log")
    plot.write_heatmaps(result, folder / "lines", view="lines", heads=[2])
    plot.save_compare(folder / "cmp.png", result, [0, 3])
    if result.n_tokens < 10:
        plot.save_compare(folder / "cmp.pdf", result, [1], image_format="pdf")
    plot.save_compare(folder / "cmp_lines.png", result, [0, 1], view="lines")
    report.write_report(result, folder / "r.html")
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("n", [7, 30])
def test_plain_results_are_drawn_byte_for_byte_as_before(tmp_path, n):
    """No window and no groups, said three ways (nothing; None per layer; one kv head per
    head): the same bytes for every picture and the report."""
    base = make_result(n, windows=[None, None], mode="pretrained")
    variants = [replace(base, windows=[]), base,
                replace(base, windows=[None, None], kv_heads=[0, 1, 2, 3])]
    files = [render_everything(r, tmp_path / f"v{k}") for k, r in enumerate(variants)]
    assert len(files[0]) >= 15
    for other in files[1:]:
        assert other.keys() == files[0].keys()
        assert [k for k in files[0] if files[0][k] != other[k]] == []
    assert b"[families]" not in files[0]["r.html"]
    payload = json.loads(re.search(rb'id="attnviz-data">(.*?)</script>', files[0]["r.html"],
                                   re.S).group(1))
    assert "windows" not in payload and "kv_heads" not in payload
    # and a window does change them
    plot.write_heatmaps(replace(base, windows=[3, 3]), tmp_path / "w", heads=[0])
    assert (tmp_path / "w/layer_00/head_00.png").read_bytes() != files[0]["png/layer_00/head_00.png"]


def test_png_decodes_and_carries_the_second_colour_in_its_legend(tmp_path):
    result = make_result(6, windows=[2])
    plot.write_heatmaps(result, tmp_path, heads=[0], annotate=False)
    image = Image.open(io.BytesIO((tmp_path / "heads.png").read_bytes()))
    pixels = np.asarray(image.convert("RGBA"))
    assert is_colour(pixels, rgba_bytes("#808080")).any()
    assert is_colour(pixels, rgba_bytes("#d0d0d0")).any()


# --- the report in a browser ---------------------------------------------------------


@pytest.mark.browser
def test_report_page_draws_windows_and_kv_groups(tmp_path):
    """Debian's chromium, headless (as tests/test_report_browser.py): the heatmap paints
    outside-window cells in --outside and the future in --masked, says "window 4", reads
    out "outside window 4"; thumbnails and chips carry their kv head."""
    from pathlib import Path

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.fail(f"{chromium} is missing: install Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    n, window = 20, 4
    report.write_report(make_result(n, windows=[window, None], kv_heads=[0, 0, 1, 1]),
                        tmp_path / "r.html")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox",
                                                                         "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("console", lambda m: m.type in ("error", "warning") and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((tmp_path / "r.html").resolve().as_uri())
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        assert errors == []
        assert page.text_content("#heatmap-head") == "layer 0, head 0 · kv 0 · window 4"
        assert "4 heads share 2 kv heads" in page.text_content("#summary")
        assert page.is_visible("#outside-label")
        assert page.text_content("#outside-label") == "outside window 4"
        kv = page.eval_on_selector_all('.thumb[data-layer="0"]', "bs => bs.map(b => b.dataset.kv)")
        assert kv == ["0", "0", "1", "1"]
        assert page.eval_on_selector_all("#model-view .kv-label", "s => s.map(e => e.textContent)") == [
            "kv 0", "kv 1"]
        groups = page.eval_on_selector_all(
            "#head-chips .kv-group",
            "gs => gs.map(g => [...g.querySelectorAll('.chip')].map(c => c.dataset.head))")
        assert groups == [["0", "1"], ["2", "3"]]

        def pixel(query: int, key: int) -> list[int]:
            return page.evaluate("""([q, k]) => {
                const c = document.getElementById("heatmap-canvas"), d = c.dataset;
                const dpr = window.devicePixelRatio || 1;
                const x = (Number(d.margin) + (k + 0.5) * Number(d.cell)) * dpr;
                const y = (Number(d.margin) + (q + 0.5) * Number(d.cell)) * dpr;
                return [...c.getContext("2d").getImageData(Math.floor(x), Math.floor(y), 1, 1).data];
            }""", [query, key])

        css = page.evaluate("""() => ["--masked", "--outside"].map(
            v => getComputedStyle(document.documentElement).getPropertyValue(v).trim())""")
        future, outside = (rgba_bytes(c) for c in css)
        assert css == ["#d0d0d0", "#808080"]
        for q in range(n):
            for k in range(n):
                got = np.array(pixel(q, k))
                if k > q:
                    assert is_colour(got, future), (q, k)
                elif k <= q - window:
                    assert is_colour(got, outside), (q, k)
                else:
                    assert not is_colour(got, future) and not is_colour(got, outside), (q, k)
        box = page.locator("#heatmap-canvas").bounding_box()
        where = page.eval_on_selector("#heatmap-canvas", "c => ({...c.dataset})")
        margin, cell = float(where["margin"]), float(where["cell"])
        page.mouse.move(box["x"] + margin + 2.5 * cell, box["y"] + margin + 10.5 * cell)
        readout = page.eval_on_selector("#hover-readout", "e => ({...e.dataset, text: e.textContent})")
        assert readout["query"] == "10" and readout["key"] == "2" and readout["weight"] == ""
        assert "outside window 4 (query 10 sees keys 7\u201310)" in readout["text"]
        page.click('.thumb[data-layer="1"][data-head="3"]')  # a layer without a window
        assert page.text_content("#heatmap-head") == "layer 1, head 3 · kv 1"
        assert not page.is_visible("#outside-label")
        assert not is_colour(np.array(pixel(10, 2)), outside)
        browser.close()
