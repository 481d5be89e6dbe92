"""Pictures: checked through what is drawn (labels, counts, colours at known cells), not
by comparing against stored images."""

import io

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.colors import to_rgba
from PIL import Image

from attnviz.core.errors import InputError
from attnviz.pictures import cells, colours, fonts, heatmap, images
from attnviz.pictures.grid import grid_figure, save_grid


def causal_random(n, seed=0, heads=1):
    rng = np.random.default_rng(seed)
    w = np.tril(rng.random((heads, n, n)) + 0.01).astype(np.float32)
    return w / w.sum(-1, keepdims=True)


def labels(n):
    return [f"tok{i}" for i in range(n)]


def cell_pixel(figure, panel, i, j):
    """The RGBA inside cell (query i, key j) of the rendered canvas, off its centre so
    that a printed weight does not cover the sample."""
    ax = figure.axes[panel]
    x, y = ax.transData.transform((j + 0.35, i + 0.35))
    height = figure.canvas.get_width_height()[1]
    pixels = np.asarray(figure.canvas.buffer_rgba())
    return pixels[int(height - y), int(x)]


@pytest.mark.parametrize("n", [5, 60, 300])
def test_token_labels_sit_on_their_tokens_and_never_overlap(n):
    figure = heatmap.HeatmapFigure(labels(n))
    ax = figure.axes[0]
    renderer = figure.canvas.get_renderer()
    for axis, texts in (("y", figure.row_labels), ("x", figure.col_labels[0])):
        positions = [t.get_position()[1 if axis == "y" else 0] for t in texts]
        assert [t.get_text() for t in texts] == [f"tok{int(p)}" for p in positions]
        assert positions[0] == 0 and positions == sorted(positions)
        boxes = [t.get_window_extent(renderer) for t in texts]
        for a, b in zip(boxes, boxes[1:]):
            assert not a.overlaps(b), (axis, a, b)
        frame = ax.get_window_extent(renderer)
        for box in boxes:  # outside the heatmap, on the left / below
            assert (box.x1 <= frame.x0) if axis == "y" else (box.y1 <= frame.y0)
        for text, box in zip(texts, boxes):  # centred on its row / column
            centre = ax.transData.transform((text.get_position()[0], text.get_position()[1]))
            if axis == "y":
                assert abs((box.y0 + box.y1) / 2 - centre[1]) < 2
            else:
                assert abs((box.x0 + box.x1) / 2 - centre[0]) < 2
    assert len(figure.row_labels) == n if n <= 60 else 10 < len(figure.row_labels) < n
    assert all(t.get_rotation() == 90 for t in figure.col_labels[0])


@pytest.mark.parametrize("n", [5, 60, 300, 1024])
def test_figure_size_grows_with_tokens_up_to_a_cap(n):
    figure = heatmap.HeatmapFigure(labels(n))
    width, height = figure.fig.get_size_inches()
    assert 4 < width < 16 and 4 < height < 16
    if n >= 60:
        assert width > 10


def test_masked_cells_differ_from_zero_weight_cells():
    n = 6
    w = np.zeros((n, n), dtype=np.float32)
    w[:, 0] = 1.0  # every other visible cell is exactly 0
    figure = heatmap.HeatmapFigure(labels(n), cmap="viridis", scale="linear")
    figure.render([w], ["t"])
    masked_rgba = cell_pixel(figure, 0, 1, 4) / 255
    zero_rgba = cell_pixel(figure, 0, 4, 1) / 255
    one_rgba = cell_pixel(figure, 0, 4, 0) / 255
    np.testing.assert_allclose(masked_rgba, to_rgba(figure.mask_color), atol=2 / 255)
    np.testing.assert_allclose(zero_rgba, colormaps["viridis"](0.0), atol=2 / 255)
    np.testing.assert_allclose(one_rgba, colormaps["viridis"](1.0), atol=2 / 255)
    assert np.abs(masked_rgba - zero_rgba).max() > 0.2


def test_each_head_is_drawn_with_its_own_title_and_pixels():
    w = causal_random(8, heads=2)
    figure = heatmap.HeatmapFigure(labels(8), scale="linear")
    first = figure.render([w[0]], ["head 0"]).copy()
    assert figure.titles[0].get_text() == "head 0"
    second = figure.render([w[1]], ["head 1"]).copy()
    assert figure.titles[0].get_text() == "head 1"
    assert not np.array_equal(first, second)
    expected = np.array(colormaps["viridis"](float(w[1][5, 2]), bytes=True))
    np.testing.assert_allclose(cell_pixel(figure, 0, 5, 2), expected, atol=2)


def test_small_inputs_print_the_weights_in_the_cells():
    w = causal_random(4)[0]
    figure = heatmap.HeatmapFigure(labels(4))
    figure.render([w], ["h"])
    texts = [t.get_text() for t in figure.cell_texts[0] if t.get_text()]
    assert len(texts) == 10  # the visible cells of a 4 x 4 causal matrix
    assert texts[0] == "1.00" and f"{w[3, 2]:.2f}" in texts
    assert heatmap.HeatmapFigure(labels(40)).cell_texts == []


def test_png_is_valid_deterministic_and_equals_the_canvas():
    w = causal_random(10)[0]
    figure = heatmap.HeatmapFigure(labels(10))
    data = figure.png([w], ["head 0"])
    again = heatmap.HeatmapFigure(labels(10)).png([w], ["head 0"])
    assert data == again
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))
    assert np.array_equal(decoded, figure.render([w], ["head 0"]))


def test_side_by_side_panels_share_one_colorbar():
    w = causal_random(7, heads=3)
    figure = heatmap.HeatmapFigure(labels(7), n_panels=3)
    figure.render(list(w), ["a", "b", "c"])
    assert [t.get_text() for t in figure.titles] == ["a", "b", "c"]
    colorbars = [ax for ax in figure.fig.axes if ax.get_ylabel() == "attention weight (√ scale)"]
    assert len(colorbars) == 1
    assert len(figure.col_labels) == 3 and len(figure.row_labels) == 7  # rows only on the first


def test_labels_the_font_cannot_draw_are_escaped():
    assert fonts.displayable("␣中文") == "␣\\u4e2d\\u6587"
    assert fonts.displayable("plain") == "plain"
    assert fonts.displayable("x" * 40).endswith("…") and len(fonts.displayable("x" * 40)) == 14


def test_no_glyph_warnings_for_odd_text(recwarn):
    figure = heatmap.HeatmapFigure(["中", "🙂", "\\xe2", "␣$x$", "a\u0301", "مرحبا"])
    figure.render([causal_random(6)[0]], ["t"])
    assert not [w for w in recwarn if "Glyph" in str(w.message)]
    assert figure.row_labels[3].get_text() == "␣$x$"  # no mathtext


def test_pool_takes_the_maximum_of_visible_cells_only():
    w = causal_random(10)[0]
    pooled = cells.pool(w, max_cells=5)  # 2 x 2 blocks
    assert pooled.shape == (5, 5)
    assert pooled[0, 0] == pytest.approx(max(w[0, 0], w[1, 0], w[1, 1]))
    assert pooled[2, 1] == pytest.approx(w[4:6, 2:4].max())
    assert pooled.mask[0, 1]  # a block that is entirely future
    assert not cells.pool(w, max_cells=20).mask[5, 2]


def test_unknown_colormap_suggests_close_names():
    with pytest.raises(InputError, match="did you mean viridis"):
        colours.check_cmap("virdis")
    assert colours.check_cmap("magma").name == "magma"


@pytest.mark.parametrize("dpi", [0, 10, 601, 100000])
def test_absurd_dpi_is_refused(dpi):
    with pytest.raises(InputError, match="--dpi"):
        images.check_dpi(dpi)


def test_gigapixel_images_are_refused():
    with pytest.raises(InputError, match="pixels"):
        heatmap.HeatmapFigure(labels(1000), n_panels=4, dpi=600)


def test_grid_writes_one_image_with_a_title(tmp_path):
    w = causal_random(9, heads=6).reshape(2, 3, 9, 9)
    path = save_grid(tmp_path / "g.png", w, "All 6 heads", row_names=["a", "b"],
                     col_names=["x", "y", "z"])
    image = Image.open(path)
    assert image.size[0] > image.size[1] > 100


@pytest.mark.parametrize("scale,first,last", [("sqrt", "0", "5"), ("linear", "0", "5"),
                                              ("log", "≤0.0005", "5")])
def test_a_measure_other_than_weights_gets_its_own_scale_and_label(scale, first, last):
    measure = colours.Measure(label="‖α·f(x)‖ (value-weighted)", top=5.0, title=" · x")
    w = causal_random(6)[0] * 5.0
    figure = heatmap.HeatmapFigure(labels(6), scale=scale, measure=measure, annotate=True)
    figure.render([w], ["t"])
    bar = [ax for ax in figure.fig.axes if ax.get_ylabel().startswith(measure.label[:-1])
           and colours.SCALE_NAMES[scale] in ax.get_ylabel()]  # the scale named (#36)
    assert len(bar) == 1
    ticks = [t.get_text() for t in bar[0].get_yticklabels()]
    assert ticks[0] == first and ticks[-1] == last
    top = colormaps["viridis"](1.0, bytes=True)
    i, j = np.unravel_index(np.argmax(np.tril(w)), w.shape)
    scaled = colours.make_norm(scale, 5.0)(w[i, j])
    np.testing.assert_allclose(cell_pixel(figure, 0, i, j),
                               colormaps["viridis"](float(scaled), bytes=True), atol=2)
    assert w[i, j] < 5.0 or np.allclose(cell_pixel(figure, 0, i, j), top, atol=2)
    printed = [t.get_text() for t in figure.cell_texts[0] if t.get_text()]
    assert printed[0] == f"{w[0, 0]:.2f}" and measure.decimals == 2
    grid = grid_figure(np.stack([w, w])[None], "g", measure=measure)
    # the grid's shorter bar: on two lines or more (the label's words wrapped to the bar)
    assert any(" ".join(ax.get_ylabel().split()).startswith(measure.label[:-1])
               and "√ scale" in ax.get_ylabel() for ax in grid.fig.axes)


def test_scaled_ticks_are_round_and_reach_the_top():
    for top in (0.4, 1.5, 2.5, 5.0, 8.0, 150.0):
        ticks = colours.scaled_ticks(top)
        assert ticks[0] == 0 and ticks[-1] == top and ticks == sorted(set(ticks))
        assert all(float(f"{t:.2g}") == t for t in ticks)
    assert len(colours.scaled_ticks(5.0, short=True)) == len(colours.scaled_ticks(5.0)) - 1
