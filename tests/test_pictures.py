"""Pictures never hide what the model computed: checked on the pixels of the files.

Exact heads make the checks unambiguous: a previous-token head (A[i, i-1] = 1) and a
first-token sink (A[i, 0] = 1) have weights of exactly 1.0 on a line one cell wide,
which any dropping or averaging of cells makes disappear at 1001 tokens.
"""

import io
import json
import math
import struct
import zlib

import numpy as np
import pytest
from helpers import SHORT_TEXT, small_options
from matplotlib import colormaps
from matplotlib.colors import to_rgba
from PIL import Image

from attnviz.analyses.attention import AttentionResult
from attnviz.core.errors import InputError
from attnviz.files import outdir
from attnviz.pictures import cells, checks, colours, families, fonts, heatmap, plot, similarity
from attnviz.pictures.grid import grid_figure, heads_overview
from attnviz.pictures.lines import LINES_MAX_TOKENS, LinesFigure

LONG = 1001


def exact_heads(n: int) -> np.ndarray:
    """``(2, n, n)``: head 0 looks at the previous token (token 0 at itself), head 1 at
    the first token."""
    previous = np.zeros((n, n), dtype=np.float32)
    previous[np.arange(1, n), np.arange(n - 1)] = 1.0
    previous[0, 0] = 1.0
    sink = np.zeros((n, n), dtype=np.float32)
    sink[:, 0] = 1.0
    return np.stack([previous, sink])


def labels(n):
    return [f"t{i}" for i in range(n)]


def fake_result(n: int, n_layers: int = 1) -> AttentionResult:
    weights = np.stack([exact_heads(n)] * n_layers)  # (L, 2, T, T)
    return AttentionResult(
        token_ids=list(range(n)), weights=weights, layers=list(range(n_layers)),
        attn_inputs=np.zeros((n_layers, n, 4), dtype=np.float32), params={},
        config={"mode": "pretrained" if n_layers > 1 else "random", "n_heads": 2},
        raw_tokens=[f"t{i}".encode() for i in range(n)],
    )


def colour_of(weight: float, cmap="viridis", scale="sqrt") -> np.ndarray:
    return np.array(colormaps[cmap](colours.make_norm(scale)(weight), bytes=True))


def is_colour(pixels: np.ndarray, rgba) -> np.ndarray:
    return np.all(np.abs(pixels.astype(int) - np.asarray(rgba, dtype=int)) <= 2, axis=-1)


def check_exact_patterns(previous_box: np.ndarray, sink_box: np.ndarray, mask_rgba,
                         n_tokens: int = LONG) -> None:
    """The pixels of the two exact heads show their patterns: every pixel row has its
    1.0 on the diagonal (previous token) or in column 0 (sink), and nothing else is hot."""
    one, zero = colour_of(1.0), colour_of(0.0)
    size = previous_box.shape[0]
    assert abs(previous_box.shape[1] - size) <= 1
    tol = 1 + math.ceil(size / n_tokens)  # pixels: a cell may be wider than one
    rows, cols = np.indices(previous_box.shape[:2])
    hot = is_colour(previous_box, one)
    assert hot.any(axis=1).all(), "a pixel row lost its weight of 1.0"
    assert (np.abs(rows - cols)[hot] <= tol).all()
    below = cols < rows - tol
    assert below.sum() > size * size / 3
    assert is_colour(previous_box, zero)[below].all()
    assert is_colour(previous_box, mask_rgba)[cols > rows + tol].all()
    hot = is_colour(sink_box, one)
    assert hot[:, 0].all(), "column 0 (the first token) is not fully visible"
    assert not hot[:, tol:][cols[:, tol:] < rows[:, tol:] - tol].any()
    assert hot[0, 0]  # row 0 too


def heatmap_box(figure, pixels, panel=0):
    ys, xs = figure.boxes[panel]
    return pixels[ys, xs]


def mask_rgba(cmap="viridis"):
    return np.array(to_rgba(colours.mask_color(cmap))) * 255


# --- 1. downsampling keeps peaks -------------------------------------------------------


@pytest.mark.parametrize("dpi", [40, 100])
def test_heatmap_with_fewer_pixels_than_tokens_keeps_every_peak(dpi):
    w = exact_heads(LONG)
    figure = heatmap.HeatmapFigure(labels(LONG), dpi=dpi)
    previous = heatmap_box(figure, figure.render([w[0]], ["prev"])).copy()
    sink = heatmap_box(figure, figure.render([w[1]], ["sink"])).copy()
    if dpi == 40:
        assert previous.shape[0] < LONG / 2  # really pooled
        assert figure.note == "each pixel: max of up to 3×3 cells"
    check_exact_patterns(previous, sink, mask_rgba())


def test_block_maximum_against_a_plain_loop():
    rng = np.random.default_rng(3)
    n, px = 23, 7
    w = np.tril(rng.random((n, n))).astype(np.float32)
    colormap, _ = colours.weight_colormap("viridis")
    words = cells.cell_words(cells.masked(w), px, px, colormap, colours.make_norm("linear"))
    got = words.view(np.uint8).reshape(px, px, 4)
    edges = [p * n // px for p in range(px + 1)]
    for a in range(px):
        for b in range(px):
            block = [w[i, j] for i in range(edges[a], edges[a + 1])
                     for j in range(edges[b], edges[b + 1]) if j <= i]
            want = colormap(max(block), bytes=True) if block else colormap(np.ma.masked, bytes=True)
            assert np.array_equal(got[a, b], want), (a, b)


def test_overview_grids_keep_every_peak():
    w = exact_heads(LONG)
    grid = heads_overview(w, "t", dpi=40, token_labels=labels(LONG))
    pixels = grid.image()
    (prev_box, sink_box), = [grid.tiles[0][:2]]
    assert "max of" in grid.note
    check_exact_patterns(pixels[prev_box], pixels[sink_box], mask_rgba())


def test_heatmap_writes_both_patterns_at_1001_tokens_through_the_cli(cli, tmp_path, monkeypatch):
    import attnviz.analyses.longcontext

    result = fake_result(LONG, n_layers=2)
    monkeypatch.setattr(attnviz.analyses.longcontext, "analyze_tokens", lambda *a, **k: result)
    out = tmp_path / "out"
    run = cli("heatmap", "ignored", "--out", out, "--dpi", 40, "--quiet")
    assert run.exit_code == 0, run.stderr

    def decoded(path):
        return np.asarray(Image.open(path).convert("RGBA"))

    figure = heatmap.HeatmapFigure(result.token_labels, dpi=40)
    mask = mask_rgba()
    for layer in (0, 1):
        folder = out / f"layer_{layer:02d}"
        check_exact_patterns(heatmap_box(figure, decoded(folder / "head_00.png")),
                             heatmap_box(figure, decoded(folder / "head_01.png")), mask)
        grid = heads_overview(result.weights[layer], "t", dpi=40,
                              token_labels=result.token_labels)
        pixels = decoded(folder / "heads.png")
        assert pixels.shape == grid.image().shape
        check_exact_patterns(pixels[grid.tiles[0][0]], pixels[grid.tiles[0][1]], mask)
    model = grid_figure(result.weights, "t", row_names=["layer 0", "layer 1"],
                        col_names=["head 0", "head 1"], dpi=40, token_labels=result.token_labels)
    pixels = decoded(out / "model.png")
    for r in range(2):
        check_exact_patterns(pixels[model.tiles[r][0]], pixels[model.tiles[r][1]], mask)


# --- 2. masked cells never look like a weight ------------------------------------------

CMAPS = ["viridis", "magma", "inferno", "plasma", "cividis", "Blues", "Reds", "Greys", "Greys_r",
         "gray", "gray_r", "binary", "binary_r", "hot", "coolwarm", "jet", "turbo", "twilight", "hsv"]


@pytest.mark.parametrize("cmap", CMAPS)
def test_mask_colour_is_far_from_every_colour_of_the_colormap(cmap):
    color = colours.mask_color(cmap)
    assert colours.mask_distance(colormaps[cmap], color) >= 25


@pytest.mark.parametrize("cmap", ["Greys", "gray_r", "binary"])
def test_masked_cells_of_a_greyscale_map_are_drawn_in_a_colour(cmap):
    n = 6
    w = np.tril(np.full((n, n), 0.5, dtype=np.float32))
    figure = heatmap.HeatmapFigure(labels(n), cmap=cmap)
    box = heatmap_box(figure, figure.render([w], ["t"]))
    cell = box.shape[0] // n
    masked_pixel = box[cell // 2, n * cell - cell // 2]  # row 0, last column
    assert is_colour(masked_pixel, mask_rgba(cmap))
    shades = colormaps[cmap](np.linspace(0, 1, 256), bytes=True)
    assert np.abs(shades[:, :3].astype(int) - masked_pixel[:3].astype(int)).max(axis=1).min() > 40
    swatch = [p for ax in figure.fig.axes for p in ax.patches]
    assert [to_rgba(p.get_facecolor()) for p in swatch] == [to_rgba(colours.mask_color(cmap))]


# --- 3. PNGs carry their dpi -----------------------------------------------------------


def png_chunks(data: bytes) -> dict[bytes, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = {}, 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks.setdefault(kind, body)
        pos += 12 + length
    return chunks


@pytest.mark.parametrize("dpi", [72, 100, 200])
def test_png_carries_its_dpi(cli, tmp_path, dpi):
    result = cli("heatmap", SHORT_TEXT, "--out", tmp_path, "--dpi", dpi, *small_options(), "--quiet")
    assert result.exit_code == 0, result.stderr
    for name in ("head_00.png", "heads.png"):
        data = (tmp_path / name).read_bytes()
        x, y, unit = struct.unpack(">IIB", png_chunks(data)[b"pHYs"])
        assert unit == 1 and x == y == round(dpi / 0.0254)
        with Image.open(io.BytesIO(data)) as image:
            assert image.info["dpi"] == pytest.approx((dpi, dpi), abs=0.01)
    a = Image.open(tmp_path / "head_00.png")
    inches = a.size[0] / a.info["dpi"][0]
    with Image.open(tmp_path / "heads.png") as b:
        assert b.size[0] / b.info["dpi"][0] > 2
    assert 3 < inches < 15


def test_same_figure_has_the_same_size_on_the_page_at_any_dpi():
    sizes = []
    for dpi in (100, 200):
        with Image.open(io.BytesIO(heatmap.HeatmapFigure(labels(8), dpi=dpi).png(
                [exact_heads(8)[0]], ["t"]))) as image:
            sizes.append(image.size[0] / image.info["dpi"][0])
    assert sizes[0] == pytest.approx(sizes[1], abs=0.02)


# --- 4. readable at the default ---------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 8, 12])
def test_printed_weights_are_at_least_8_points_and_fit_their_cell(n):
    w = np.tril(np.full((n, n), 0.25, dtype=np.float32))
    figure = heatmap.HeatmapFigure(labels(n))
    figure.render([w], ["t"])
    renderer = figure.canvas.get_renderer()
    ax = figure.axes[0]
    cell_px = ax.get_window_extent().width / n
    shown = [t for t in figure.cell_texts[0] if t.get_text()]
    assert len(shown) == n * (n + 1) // 2
    for text in shown:
        assert text.get_fontsize() >= 8
        assert text.get_window_extent(renderer).width < 0.9 * cell_px


def test_overview_title_says_1_token(tmp_path, monkeypatch):
    assert families.plural(1, "token") == "1 token" and families.plural(2, "token") == "2 tokens"
    titles = []
    real = heads_overview
    monkeypatch.setattr(plot, "heads_overview", lambda w, t, *a, **k: titles.append(t) or real(w, t, *a, **k))
    files = plot.write_heatmaps(fake_result(1), tmp_path)
    assert [f.path.name for f in files] == ["head_00.png", "head_01.png", "heads.png"]
    assert titles == ["All 2 heads, 1 token"]


def test_many_panels_wrap_into_a_grid():
    figure = heatmap.HeatmapFigure(labels(6), n_panels=12)
    lefts = sorted({round(ax.get_position().x0, 3) for ax in figure.axes})
    bottoms = sorted({round(ax.get_position().y0, 3) for ax in figure.axes})
    assert len(lefts) == 4 and len(bottoms) == 3
    width, height = figure.fig.get_size_inches()
    assert width < 2 * height
    assert len(figure.row_labels) == 6
    assert sum(1 for texts in figure.col_labels if texts) == 4  # the bottom row only


def test_similarity_plot_follows_the_colormap(tmp_path):
    js = np.array([[0.0, 0.5], [0.5, 0.0]])
    for cmap in ("Greys", "viridis"):
        path = similarity.save_similarity(tmp_path / f"{cmap}.png", js, "t", cmap=cmap)
        pixels = np.asarray(Image.open(path).convert("RGBA")).reshape(-1, 4)
        top = colormaps[cmap](1.0, bytes=True)
        assert is_colour(pixels, top).sum() > 500  # the cells of 0.5 (the max) are drawn in it


def test_overview_has_token_labels_when_they_fit():
    grid = heads_overview(np.stack([exact_heads(5)[0]] * 4), "t", token_labels=labels(5))
    texts = [t.get_text() for t in grid.ax.texts]
    assert texts.count("t3") == 1 + 4  # left of the one row, below each of the 4 columns
    long = heads_overview(exact_heads(300), "t", token_labels=labels(300))
    shown = {t.get_text() for t in long.ax.texts if t.get_text().startswith("t")}
    assert not shown  # a label every k-th token would tell little (#36) ...
    numbers = [int(t.get_text()) for t in long.ax.texts if t.get_text().isdigit()]
    assert 0 in numbers and 3 <= len(set(numbers)) < 60  # ... position numbers instead


# --- 5. the file is what its name says ---------------------------------------------------

MAGIC = {"png": b"\x89PNG", "svg": b"<?xml", "pdf": b"%PDF", "jpg": b"\xff\xd8\xff"}


@pytest.mark.parametrize("suffix, fmt", [(".png", "png"), (".svg", "svg"), (".pdf", "pdf"),
                                         (".jpg", "jpg"), (".JPEG", "jpg")])
def test_plot_writes_the_format_its_name_says(cli, tmp_path, suffix, fmt):
    pair, sim = tmp_path / f"pair{suffix}", tmp_path / f"sim{suffix}"
    result = cli("compare-heads", SHORT_TEXT, *small_options(), "-o", pair,
                 "--similarity-plot", sim, "--format", "json")
    assert result.exit_code == 0, result.stderr
    for path in (pair, sim):
        assert path.read_bytes().startswith(MAGIC[fmt])
    if fmt == "svg":
        assert "<text" in pair.read_text() or "head 0" in pair.read_text()


@pytest.mark.parametrize("name", ["pair.gif", "pair.txt", "pair.png.bak"])
def test_unknown_image_suffixes_are_refused_before_any_work(cli, tmp_path, name):
    result = cli("compare-heads", SHORT_TEXT, *small_options(), "-o", tmp_path / name)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error:") and "cannot write" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_image_format_helper():
    from pathlib import Path

    assert checks.image_format(Path("a.svg"), "pdf") == "svg"  # the suffix wins
    assert checks.image_format(Path("a"), "pdf") == "pdf"
    assert checks.image_format(None, None) == "png"
    with pytest.raises(InputError, match="--image-format"):
        checks.image_format(None, "gif")


# --- 6. stale files ---------------------------------------------------------------------


def test_rerun_removes_only_what_attnviz_wrote_before(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "head_07.png").write_bytes(b"mine too")  # a name attnviz uses, not written by it
    first = plot.write_heatmaps(fake_result(5, n_layers=2), out)
    assert (out / "model.png").exists() and (out / "layer_01" / "head_01.png").exists()
    one_layer = fake_result(5)
    one_layer.weights = one_layer.weights[:, :1]  # one head, one layer
    plot.write_heatmaps(one_layer, out)
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert names == [outdir.MANIFEST, "head_00.png", "head_07.png", "heads.png", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "head_07.png").read_bytes() == b"mine too"
    manifest = json.loads((out / outdir.MANIFEST).read_text())
    assert manifest["files"] == ["head_00.png", "heads.png"]
    assert len(first) == 7


def test_a_tampered_manifest_never_deletes_other_files(tmp_path):
    outside = tmp_path / "precious.png"
    outside.write_bytes(b"x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "layer_03").mkdir()
    (out / "layer_03" / "head_00.png").symlink_to(outside)
    (out / outdir.MANIFEST).write_text(json.dumps(
        {"files": ["../precious.png", "notes.txt", "/etc/passwd", "layer_03/head_00.png", 5]}))
    plot.write_heatmaps(fake_result(3), out)
    assert outside.read_bytes() == b"x" and (out / "notes.txt").exists()
    assert (out / "layer_03" / "head_00.png").is_symlink()


def test_cli_rerun_with_fewer_heads_leaves_no_stale_heatmap(cli, tmp_path):
    out = tmp_path / "figs"
    assert cli("heatmap", SHORT_TEXT, "--out", out, *small_options(), "-q").exit_code == 0
    assert (out / "head_03.png").exists()
    assert cli("heatmap", SHORT_TEXT, "--out", out, *small_options(), "--head", 1, "-q").exit_code == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["head_01.png", "heads.png"]


# --- lines view (issue 14, 2) ----------------------------------------------------------


def test_lines_view_draws_a_strong_line_for_1_and_none_for_masked_pairs():
    n = 8
    self_attention = np.eye(n, dtype=np.float32)  # horizontal lines only
    figure = LinesFigure(labels(n), dpi=100)
    pixels = figure.render([self_attention], "t", [3])
    height = pixels.shape[0]

    def at(t, query, key):  # the pixel a fraction t along the line query -> key
        (x0, y0), (x1, y1) = figure.point("query", query), figure.point("key", key)
        x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
        return pixels[int(round(height - y)), int(round(x))]

    from attnviz.pictures.lines import head_color

    strong = np.array(to_rgba(head_color(3))) * 255
    for i in (0, 4, 7):
        for t in (0.25, 0.5, 0.75):
            assert is_colour(at(t, i, i), strong)
    white = np.array([255, 255, 255, 255])
    # masked pairs (a key after the query), sampled half-way between two drawn lines
    for query, key, ts in ((0, 3, (1 / 6, 0.5, 5 / 6)), (2, 7, (0.1, 0.5, 0.9)), (1, 6, (0.1, 0.9))):
        for t in ts:
            assert is_colour(at(t, query, key), white), (query, key, t)


def test_lines_view_is_refused_for_long_texts_with_a_hint():
    with pytest.raises(InputError, match="--tokens"):
        LinesFigure(labels(LINES_MAX_TOKENS + 1))


def test_heatmap_view_lines_through_the_cli(cli, tmp_path):
    out = tmp_path / "lines"
    result = cli("heatmap", SHORT_TEXT, "--out", out, *small_options(), "--view", "lines", "-q")
    assert result.exit_code == 0, result.stderr
    with Image.open(out / "head_02.png") as image:
        assert image.size[1] > 200
    long_text = " ".join(["word"] * (LINES_MAX_TOKENS + 1))
    refused = cli("heatmap", long_text, "--out", tmp_path / "no", *small_options(), "--view", "lines")
    assert refused.exit_code == 2 and "--tokens" in refused.stderr
    assert not (tmp_path / "no").exists()


# --- vector formats (issue 14, 3) -------------------------------------------------------


@pytest.mark.parametrize("fmt", ["svg", "pdf", "png", "jpg"])
def test_image_format_is_deterministic_and_keeps_text_as_text(cli, tmp_path, fmt):
    for run in ("a", "b"):
        result = cli("heatmap", SHORT_TEXT, "--out", tmp_path / run, *small_options(),
                     "--image-format", fmt, "-q")
        assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "a").glob(f"*.{fmt}"))
    assert names == [f"head_0{h}.{fmt}" for h in range(4)] + [f"heads.{fmt}"]
    for name in names:
        data = (tmp_path / "a" / name).read_bytes()
        assert data.startswith(MAGIC[fmt])
        assert data == (tmp_path / "b" / name).read_bytes()
    head = (tmp_path / "a" / f"head_00.{fmt}").read_bytes()
    if fmt == "svg":
        assert b"<text" in head and b"journey" in head and b"<dc:date>" not in head
    if fmt == "pdf":
        assert b"CreationDate" not in head and b"/FontFile2" in head  # TrueType: real text


def test_svg_embeds_the_same_pooled_cells_as_the_png():
    w = exact_heads(LONG)
    figure = heatmap.HeatmapFigure(labels(LONG), dpi=40)
    svg = figure.vector([w[1]], ["sink"], "svg").decode()
    assert "image-rendering:crisp-edges" in svg and "max of up to 3×3 cells" in svg


# --- exclude-first and the log scale (issue 14, 5) --------------------------------------


def test_exclude_first_drops_key_0_and_renormalises_rows_without_touching_the_input():
    rng = np.random.default_rng(0)
    w = np.tril(rng.random((6, 6)) + 0.01).astype(np.float32)
    w /= w.sum(1, keepdims=True)
    before = w.copy()
    view = cells.exclude_first(w)
    assert np.array_equal(w, before)
    assert view.mask[:, 0].all() and view.mask[0].all() and view.mask[2, 3]
    for i in range(1, 6):
        expected = w[i, 1 : i + 1] / w[i, 1 : i + 1].sum()
        np.testing.assert_allclose(view[i, 1 : i + 1], expected, rtol=1e-6)


def test_exclude_first_in_the_cli_changes_pictures_not_numbers(cli, tmp_path):
    args = ["heatmap", SHORT_TEXT, *small_options(), "--json"]
    plain = cli(*args, "--out", tmp_path / "a")
    excluded = cli(*args, "--out", tmp_path / "b", "--exclude-first")
    assert plain.exit_code == excluded.exit_code == 0, excluded.stderr
    assert (tmp_path / "a" / "head_00.png").read_bytes() != (tmp_path / "b" / "head_00.png").read_bytes()
    stats = [json.loads(cli("compare-heads", SHORT_TEXT, *small_options(), "--format", "json", *extra)
                        .stdout)["heads"] for extra in ([], ["--exclude-first"])]
    assert stats[0] == stats[1]


def test_log_scale_colours_and_ticks():
    norm = colours.make_norm("log")
    assert float(norm(1.0)) == pytest.approx(1.0)
    assert float(norm(1e-2)) == pytest.approx(0.5)  # half-way between 1e-4 and 1 in log
    shown = colours.normalized(norm, np.ma.masked_array([0.0, 1e-6, 1e-4], mask=[False, False, False]))
    assert not np.ma.getmaskarray(shown).any() and np.allclose(shown, 0.0)  # zero is not masked
    figure = heatmap.HeatmapFigure(labels(5), scale="log")
    cbar = [ax for ax in figure.fig.axes if ax.get_ylabel() == "attention weight (log scale)"][0]
    ticks = [t.get_text() for t in cbar.get_yticklabels()]
    assert ticks == ["≤0.0001", "0.001", "0.01", "0.1", "1"]
    w = np.tril(np.full((5, 5), 0.01, dtype=np.float32))
    box = heatmap_box(figure, figure.render([w], ["t"]))
    cell = box.shape[0] // 5
    assert is_colour(box[3 * cell + cell // 3, cell // 3], colour_of(0.01, scale="log"))


# --- annotate, title, font (issue 14, 6) ------------------------------------------------


def test_annotate_can_be_forced_or_suppressed():
    assert heatmap.HeatmapFigure(labels(20), annotate=True).cell_texts
    assert not heatmap.HeatmapFigure(labels(5), annotate=False).cell_texts
    figure = heatmap.HeatmapFigure(labels(20), annotate=True)
    figure.render([exact_heads(20)[0]], ["t"])
    assert min(t.get_fontsize() for t in figure.cell_texts[0]) >= 8
    with pytest.raises(InputError, match="--annotate"):
        heatmap.HeatmapFigure(labels(heatmap.ANNOTATE_MAX_TOKENS + 1), annotate=True)


def test_title_template(cli, tmp_path, monkeypatch):
    seen = []
    real = heatmap.HeatmapFigure.render
    monkeypatch.setattr(heatmap.HeatmapFigure, "render",
                        lambda self, panels, titles, *rest: seen.extend(titles)
                        or real(self, panels, titles, *rest))
    result = cli("heatmap", SHORT_TEXT, "--out", tmp_path, *small_options(), "--head", 2,
                 "--title", "Head {head}, {tokens} tokens", "-q")
    assert result.exit_code == 0, result.stderr
    assert seen == ["Head 2, 6 tokens"]
    bad = cli("heatmap", SHORT_TEXT, "--out", tmp_path / "x", "--title", "{nope}")
    assert bad.exit_code == 2 and "{head}" in bad.stderr


def test_font_by_family_or_file_and_bad_names(tmp_path):
    from matplotlib.font_manager import FontProperties, findfont

    try:
        fonts.use_font("DejaVu Serif")
        figure = heatmap.HeatmapFigure(labels(3))
        assert figure.row_labels[0].get_fontfamily()[0] == "DejaVu Serif"
        path = findfont(FontProperties(family=["DejaVu Sans Mono"]))
        fonts.use_font(path)
        assert heatmap.HeatmapFigure(labels(3)).row_labels[0].get_fontfamily()[0] == "DejaVu Sans Mono"
        with pytest.raises(InputError, match="not an installed font"):
            fonts.use_font("No Such Font 123")
        junk = tmp_path / "junk.ttf"
        junk.write_bytes(b"not a font")
        with pytest.raises(InputError, match="not a font file"):
            fonts.use_font(str(junk))
    finally:
        fonts.use_font(None)


def test_cjk_tokens_are_drawn_with_a_cjk_font_when_one_is_installed():
    """With a CJK-capable font installed the label is drawn as it is, in a fallback
    family; without one it is escaped (never boxes): both outcomes are checked."""
    chosen = fonts.Fonts(["中文"])
    figure = heatmap.HeatmapFigure(["中文", "x"])
    text = figure.row_labels[0].get_text()
    if fonts.cjk_families():
        assert chosen.families[1:] == list(fonts.cjk_families())
        assert text == "中文"
        assert fonts.cjk_families()[0] in figure.row_labels[0].get_fontfamily()
    else:
        assert chosen.families == [chosen.families[0]]
        assert text == "\\u4e2d\\u6587"
    assert fonts.Fonts(["plain"]).families == [chosen.families[0]]  # no fallback when not needed
