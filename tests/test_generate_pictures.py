"""`attnviz generate`'s pictures and report, from GenerationResults built by hand:
staircase rows (row g sums to 1 over keys 0..P+g-1, zeros after) whose every pixel is
predicted here from the cells, independently of attnviz's layout code; the report's data
decoded by a separate implementation of its scheme; the page driven in Chromium.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.colors import to_rgba
from PIL import Image

from attnviz.analyses.generation import GenerationResult
from attnviz.core.errors import InputError
from attnviz.display import report
from attnviz.files import outdir
from attnviz.pictures import colours
from attnviz.pictures.generation import generation_view, write_generation_pictures
from attnviz.pictures.grid import heads_overview

GENERATED_FILL = "#c2185b"


def staircase_result(prompt: int, n_new: int, n_layers: int = 1, n_heads: int = 2, seed: int = 0,
                     windows=None, previous_head: bool = False) -> GenerationResult:
    """Random softmax rows over keys 0..P+g-1 (or the window's keys); with
    ``previous_head`` head 0 puts exactly 1.0 on the query's own position P+g-1."""
    rng = np.random.default_rng(seed)
    total = prompt + n_new
    rows = np.zeros((n_layers, n_heads, n_new, total), dtype=np.float32)
    for li in range(n_layers):
        window = windows[li] if windows else None
        for g in range(n_new):
            query = prompt + g - 1
            first = 0 if window is None else max(0, query - window + 1)
            scores = rng.normal(0, 2.5, (n_heads, query + 1 - first))
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            rows[li, :, g, first:query + 1] = weights / weights.sum(-1, keepdims=True)
            if previous_head:
                rows[li, 0, g] = 0.0
                rows[li, 0, g, query] = 1.0
    new_ids = [1000 + g for g in range(n_new)]
    alternatives = [[(1000 + g, 0.5), (7 + g, 0.3), (99, 0.1)] for g in range(n_new)]
    return GenerationResult(prompt_ids=list(range(10, 10 + prompt)), new_ids=new_ids,
                            probabilities=[0.5] * n_new, alternatives=alternatives, rows=rows,
                            layers=list(range(n_layers)), stopped="max_new_tokens",
                            config={"mode": "pretrained", "weights": "hand-made"})


def labels(prompt: int, n_new: int) -> list[str]:
    return [f"p{i}" for i in range(prompt)] + [f"␣g{g}" for g in range(n_new)]


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA")).astype(int)


def cells_box(pixels: np.ndarray) -> tuple[slice, slice]:
    """The heatmap's cells: inside the one-pixel frame (40, 40, 40) painted around them."""
    frame = np.all(pixels[..., :3] == 40, axis=-1)
    rows, cols = frame.sum(axis=1), frame.sum(axis=0)
    top, bottom = np.flatnonzero(rows >= 0.9 * rows.max())[[0, -1]]
    left, right = np.flatnonzero(cols >= 0.9 * cols.max())[[0, -1]]
    return slice(top + 1, bottom), slice(left + 1, right)


def colour(weight, scale: str = "sqrt") -> np.ndarray:
    """viridis on attnviz's fixed 0..1 scale, as RGBA bytes (any shape of weights)."""
    return np.array(colormaps["viridis"](colours.make_norm(scale)(weight), bytes=True), dtype=int)


def rgba(name: str) -> np.ndarray:
    return np.rint(np.array(to_rgba(name)) * 255).astype(int)


def column_plan(prompt: int, n_cols: int, width: int) -> tuple[np.ndarray, int]:
    """Written out again: per pixel column the cell it shows (-1 on the line), where the
    line is: columns 0..P-1 on round(P (w - 2) / C) pixels, 2 line pixels, then the rest."""
    left = round(prompt * (width - 2) / n_cols)
    right = width - left - 2
    plan = [int((x + 0.5) * prompt / left) for x in range(left)] + [-1, -1]
    plan += [prompt + int((x + 0.5) * (n_cols - prompt) / right) for x in range(right)]
    return np.array(plan), left


def expected_cells(weights: np.ndarray, prompt: int, window: int | None = None,
                   exclude_first: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, future, outside) per cell of the generated rows: the keys after each
    row's query masked, those outside a window, key 0 with ``exclude_first``."""
    n_new, n_cols = weights.shape
    query = prompt - 1 + np.arange(n_new)[:, None]
    keys = np.arange(n_cols)[None, :]
    future = keys > query
    outside = (keys <= query - window) if window else np.zeros_like(future)
    values = weights.astype(np.float64)
    if exclude_first:
        values = np.where(keys == 0, 0.0, values)
        values = values / values.sum(axis=1, keepdims=True)
        outside = outside | (keys == 0)  # drawn in the "masked / excluded" colour
        future = future | (keys == 0)
    return values, future, outside


# --- the head picture, pixel by pixel ------------------------------------------------------


@pytest.mark.parametrize(("prompt", "n_new", "window", "exclude"), [
    (8, 6, None, False), (10, 30, None, False), (9, 12, 5, False), (7, 9, None, True)])
def test_every_pixel_of_a_head_picture(tmp_path, prompt, n_new, window, exclude):
    result = staircase_result(prompt, n_new, windows=[window] if window else None)
    files = write_generation_pictures(result, labels(prompt, n_new), tmp_path, heads=[1],
                                      windows=[window], exclude_first_key=exclude, annotate=False)
    assert [f.path.name for f in files] == ["head_01.png", "heads.png"]
    pixels = read_png(tmp_path / "head_01.png")
    ys, xs = cells_box(pixels)
    box = pixels[ys, xs]
    height, width = box.shape[:2]
    n_cols = prompt + n_new
    plan, line = column_plan(prompt, n_cols, width)
    # The line: two white pixel columns between key P-1 and key P, and nowhere else.
    white = np.all(box[..., :3] == 255, axis=(0, 2))
    assert list(np.flatnonzero(white)) == [line, line + 1]
    assert abs(line + 1 - prompt * width / n_cols) <= 2  # at column P
    values, future, outside = expected_cells(result.rows[0, 1], prompt, window, exclude)
    g = ((np.arange(height) + 0.5) * n_new / height).astype(int)  # nearest: no cell pooled
    shown = np.flatnonzero(plan >= 0)
    cell = np.ix_(g, plan[shown])
    want = colour(values[cell])  # (height, shown, 4)
    want[future[cell]] = rgba(colours.mask_color("viridis"))
    if not exclude:  # with key 0 excluded the window's keys were none of these
        want[outside[cell]] = rgba(colours.outside_color("viridis"))
    wrong = np.argwhere(np.abs(box[:, shown] - want).max(axis=-1) > 1)
    assert len(wrong) == 0, f"pixels (y, x) {wrong[:5].tolist()} differ"
    assert future.sum() > 0 and (~future).sum() > n_cols  # both kinds of cell were checked
    if window:
        assert outside.any()


def test_the_line_hides_no_weight_when_cells_are_pooled(tmp_path):
    """600 generated tokens at 40 dpi: fewer pixels than cells. Head 0 puts 1.0 on each
    row's query (for row 0 the last prompt token, just left of the line): every pixel row
    keeps its 1.0 and nothing right of it is drawn but the masked future."""
    prompt, n_new = 12, 600
    result = staircase_result(prompt, n_new, n_heads=1, previous_head=True)
    write_generation_pictures(result, labels(prompt, n_new), tmp_path, heads=[0], dpi=40)
    box = read_png(tmp_path / "head_00.png")[cells_box(read_png(tmp_path / "head_00.png"))]
    height, width = box.shape[:2]
    assert width < prompt + n_new and height < n_new  # really pooled
    hot = np.all(np.abs(box - colour(1.0)) <= 1, axis=-1)
    assert hot.any(axis=1).all(), "a pixel row lost its weight of 1.0"
    assert hot[0, :width // 4].any()  # row 0's 1.0 is the last prompt column, left of the line
    white = np.all(box[..., :3] == 255, axis=(0, 2))
    assert white.sum() == 2
    mask = np.all(np.abs(box - rgba(colours.mask_color("viridis"))) <= 1, axis=-1) | white
    for y in range(height):
        last_hot = np.flatnonzero(hot[y])[-1]
        assert mask[y, last_hot + 1:].all(), y


def svg_texts(path: Path) -> list[tuple[str, str]]:
    """(text, style) of every <text> element of an SVG written with text kept as text."""
    found = re.findall(r'<text style="([^"]*)"[^>]*>([^<]*)</text>', path.read_text())
    return [(text, style) for style, text in found]


def test_rows_are_labelled_with_the_generated_tokens_in_colour(tmp_path):
    prompt, n_new = 8, 6
    result = staircase_result(prompt, n_new)
    write_generation_pictures(result, labels(prompt, n_new), tmp_path, heads=[0],
                              image_format="svg")
    texts = svg_texts(tmp_path / "head_00.svg")
    rows = [t for t, style in texts if "text-anchor: end" in style and t.startswith("␣g")]
    assert rows == [f"␣g{g}" for g in range(n_new)]
    coloured = [t for t, style in texts if f"fill: {GENERATED_FILL}" in style]
    assert sorted(coloured) == sorted([f"␣g{g}" for g in range(n_new)] * 2)  # rows + columns
    columns = [t for t, _ in texts if re.fullmatch(r"p\d+|␣g\d+", t)]
    assert [t for t in columns if t.startswith("p")] == [f"p{i}" for i in range(prompt)]
    titles = [t for t, style in texts if "font-size: 11px" in style]
    assert titles == ["layer 0, head 0 · generated rows (6 tokens after an 8-token prompt)"]
    assert ("generated token (row)", ) in [(t,) for t, _ in texts]


def test_a_short_title_on_two_lines_and_the_annotated_cells(tmp_path):
    result = staircase_result(3, 1)
    write_generation_pictures(result, labels(3, 1), tmp_path, heads=[0], image_format="svg")
    texts = svg_texts(tmp_path / "head_00.svg")
    assert {"layer 0, head 0", "generated rows (1 token after a 3-token prompt)"} <= {
        t for t, _ in texts}
    printed = [float(t) for t, style in texts  # the cells' numbers (the colorbar's: "start")
               if re.fullmatch(r"\d\.\d\d", t) and "text-anchor: middle" in style]
    assert printed == pytest.approx(result.rows[0, 0, 0, :3], abs=0.0051)


# --- overviews, layout, stale files ---------------------------------------------------------


def test_several_layers_write_the_heatmap_layout_and_a_rerun_removes_stale_files(tmp_path):
    prompt, n_new = 6, 9
    result = staircase_result(prompt, n_new, n_layers=2, n_heads=3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    files = write_generation_pictures(result, labels(prompt, n_new), out)
    names = sorted(f.path.relative_to(out).as_posix() for f in files)
    assert names == sorted([f"layer_{li:02d}/{name}.png" for li in range(2)
                            for name in ("head_00", "head_01", "head_02", "heads")] + ["model.png"])
    assert {(f.layer, f.head) for f in files if f.path.name == "heads.png"} == {(0, None), (1, None)}
    assert [(f.layer, f.head) for f in files if f.path.name == "model.png"] == [(None, None)]
    model = Image.open(out / "model.png")
    assert model.size[0] > 400 and model.size[1] > 200
    one = staircase_result(prompt, n_new, n_heads=3)
    write_generation_pictures(one, labels(prompt, n_new), out, heads=[1])
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert left == [outdir.MANIFEST, "head_01.png", "heads.png", "notes.txt"]
    assert json.loads((out / outdir.MANIFEST).read_text())["files"] == ["head_01.png", "heads.png"]


def test_overview_tiles_carry_the_line_and_the_masked_future():
    prompt, n_new = 10, 20
    result = staircase_result(prompt, n_new, n_heads=4, previous_head=True)
    view = generation_view(result, labels(prompt, n_new))
    grid = heads_overview(list(view.rows[0]), "t", token_labels=view.col_labels,
                          rows_of_tiles=view.panel_rows())
    pixels = grid.image().astype(int)
    mask = rgba(colours.mask_color("viridis"))
    for row in grid.tiles:
        for ys, xs in row:
            tile = pixels[ys, xs]
            height, width = tile.shape[:2]
            assert width == 160 and height == 160 * n_new // (prompt + n_new)  # cells as wide
            plan, line = column_plan(prompt, prompt + n_new, width)
            white = np.all(tile[..., :3] == 255, axis=(0, 2))
            assert list(np.flatnonzero(white)) == [line, line + 1]
            for y in range(height):
                g = int((y + 0.5) * n_new / height)
                future = plan > prompt + g - 1
                assert np.all(np.abs(tile[y, future] - mask) <= 1)
                assert not np.all(np.abs(tile[y, (plan >= 0) & ~future] - mask) <= 1, axis=-1).any()
    hot = np.all(np.abs(pixels[grid.tiles[0][0]] - colour(1.0)) <= 1, axis=-1)
    assert hot.any(axis=1).all()  # head 0's 1.0 in every row of its tile


def test_a_window_of_positions_cuts_columns_and_rows(tmp_path):
    prompt, n_new = 20, 15
    result = staircase_result(prompt, n_new)
    view = generation_view(result, labels(prompt, n_new), "-20:")  # positions 15..34
    assert (view.start, view.stop, view.first_step) == (15, 35, 0)
    assert view.rows.shape[2:] == (15, 20) and view.marked_from == 5
    assert view.col_labels[0] == "15: p15" and view.row_labels[0] == "20: ␣g0"
    inside = generation_view(result, labels(prompt, n_new), "25:30")  # generated positions only
    assert inside.first_step == 6 and inside.row_labels == ["26: ␣g6", "27: ␣g7", "28: ␣g8",
                                                             "29: ␣g9"]
    assert inside.marked_from == 0 and inside.offset == 0  # row 0's query is column 0
    with pytest.raises(InputError, match="holds no generated token"):
        generation_view(result, labels(prompt, n_new), "0:20")
    write_generation_pictures(result, labels(prompt, n_new), tmp_path, heads=[0], tokens="-20:",
                              image_format="svg")
    texts = [t for t, _ in svg_texts(tmp_path / "head_00.svg")]
    assert any(t.endswith("· tokens 15–34") for t in texts)
    assert [t for t in texts if re.fullmatch(r"\d+: p\d+", t)] == [f"{i}: p{i}" for i in range(15, 20)]


def test_bad_input_is_refused_before_any_file(tmp_path):
    result = staircase_result(5, 4)
    with pytest.raises(ValueError, match="token labels"):
        write_generation_pictures(result, labels(5, 3), tmp_path)
    with pytest.raises(InputError, match="--head 5"):
        write_generation_pictures(result, labels(5, 4), tmp_path, heads=[5])
    with pytest.raises(InputError, match="colormap"):
        write_generation_pictures(result, labels(5, 4), tmp_path, cmap="nope")
    assert not any(tmp_path.iterdir())


# --- the report ---------------------------------------------------------------------------


def independent_rows(payload: dict) -> np.ndarray:
    """docs/report.md's "generated-rows" layout, written out again."""
    spec = payload["weights"]
    n_layers, n_heads, n_new, total = spec["shape"]
    prompt = payload["generation"]["prompt_length"]
    raw = base64.urlsafe_b64decode(spec["data"])
    assert spec["encoding"] == "u16"
    values = [int.from_bytes(raw[k:k + 2], "little") / 65535 for k in range(0, len(raw), 2)]
    rows, k = np.zeros((n_layers, n_heads, n_new, total)), 0
    for li in range(n_layers):
        for h in range(n_heads):
            for g in range(n_new):
                for j in range(prompt + g):
                    rows[li, h, g, j] = values[k]
                    k += 1
    assert k == len(values)
    return rows


def test_report_data_carries_the_steps_and_the_rows(tmp_path):
    prompt, n_new = 6, 5
    result = staircase_result(prompt, n_new, n_layers=2, n_heads=3)
    info = report.write_generation_report(result, labels(prompt, n_new), tmp_path / "g.html")
    payload = report.read_payload(tmp_path / "g.html")
    generation = payload["generation"]
    assert generation["prompt_length"] == prompt and generation["stopped"] == "max_new_tokens"
    assert [s["id"] for s in generation["steps"]] == result.new_ids
    first = generation["steps"][0]
    assert first["text"] == "␣g0" and first["probability"] == 0.5
    assert first["top_k"] == [{"id": 1000, "text": "␣g0", "label": "␣g0", "probability": 0.5},
                              {"id": 7, "text": "id 7", "label": "id 7", "probability": 0.3},
                              {"id": 99, "text": "id 99", "label": "id 99", "probability": 0.1}]
    assert [t.get("generated", False) for t in payload["tokens"]] == [False] * prompt + [True] * n_new
    assert payload["n_tokens"] == prompt + n_new == info.n_tokens
    assert payload["weights"]["shape"] == [2, 3, n_new, prompt + n_new]
    assert payload["weights"]["layout"] == "generated-rows"
    decoded = independent_rows(payload)
    assert np.abs(decoded - result.rows).max() <= 0.5 / 65535 + 1e-9
    assert np.array_equal(decoded, report.decode_weights(payload))
    assert len(payload["stats"]["heads"]) == 6 and np.shape(payload["stats"]["similarity"]) == (2, 3, 3)


def test_report_takes_text_and_bytes_from_the_tokenizer(tmp_path):
    from attnviz.text.tokenization import gpt2_tokenizer

    tokenizer = gpt2_tokenizer()
    result = staircase_result(3, 2)
    result.prompt_ids, result.new_ids = tokenizer.encode("Hello big"), tokenizer.encode(" world!")
    result.alternatives = [[(result.new_ids[0], 0.5), (11, 0.2)], [(0, 0.9)]]
    result.prompt_ids += tokenizer.encode(" cat")
    report.write_generation_report(result, labels(3, 2), tmp_path / "g.html", tokenizer=tokenizer)
    payload = report.read_payload(tmp_path / "g.html")
    assert [t["text"] for t in payload["tokens"]] == ["Hello", " big", " cat", " world", "!"]
    assert [t["bytes"] for t in payload["tokens"]] == [5, 4, 4, 6, 1]
    steps = payload["generation"]["steps"]
    assert steps[0]["text"] == " world" and steps[0]["top_k"][1]["text"] == ","
    assert steps[1]["top_k"] == [{"id": 0, "text": "!", "label": "!", "probability": 0.9}]


def loop_stats(rows: np.ndarray, prompt: int) -> dict[str, float]:
    """docs/heads.md's statistics of one head's generated rows, one row at a time."""
    sums: dict[str, list[float]] = {k: [] for k in ("entropy", "normalized_entropy", "max_weight",
                                                    "self", "previous_token", "first_token",
                                                    "mean_distance")}
    for g, row in enumerate(rows):
        i = prompt - 1 + g
        p = [float(w) for w in row[: i + 1]]
        entropy = -sum(w * np.log(w) for w in p if w > 0)
        sums["entropy"].append(entropy)
        sums["max_weight"].append(max(p))
        sums["self"].append(p[i])
        sums["mean_distance"].append(sum(w * (i - j) for j, w in enumerate(p)))
        if i >= 1:
            sums["normalized_entropy"].append(entropy / np.log(i + 1))
            sums["previous_token"].append(p[i - 1])
            sums["first_token"].append(p[0])
    return {k: float(np.mean(v)) for k, v in sums.items()}


def test_report_statistics_are_the_heads_statistics_of_the_generated_rows():
    prompt, n_new = 1, 7  # row 0's query is position 0: it has no previous token
    result = staircase_result(prompt, n_new, n_heads=2, seed=4)
    records = report.generated_row_stats(result.rows, prompt, [0])
    for record, head_rows in zip(records, result.rows[0]):
        expected = loop_stats(head_rows, prompt)
        for name, value in expected.items():
            assert record[name] == pytest.approx(value, abs=1e-9), name


def test_a_plain_report_has_no_generation_code_and_blocks_are_whole():
    for name in ("report.css", "data.js", "heatmap.js", "heads.js", "model.js", "tables.js",
                 "main.js"):
        text = report.asset(name)
        assert text.count("/* [generation] */") == text.count("/* [/generation] */")
        stripped = report.asset(name, families=False, generation=False)
        assert "[generation]" not in stripped and "AV.known" not in stripped
        assert "[families]" not in stripped
    plain = report.render_html(report.build_payload(plot_free_result()))
    assert "step-info" not in plain and "--generated" not in plain


def plot_free_result():
    from test_report import synthetic_result

    return synthetic_result(1, 2, 5)


def test_a_generation_report_too_large_is_refused(tmp_path):
    result = staircase_result(30, 20, n_layers=2, n_heads=2)
    with pytest.raises(InputError, match="would hold 3,160 attention weights"):  # 4 x 790
        report.write_generation_report(result, labels(30, 20), tmp_path / "g.html", limit=3000)
    assert not (tmp_path / "g.html").exists()


def test_a_real_generation_through_pictures_and_report(tmp_path_factory, tmp_path):
    """A tiny GPT-2 with an output head: generate, then the pictures and the report."""
    from helpers import make_hf_checkpoint

    from attnviz.analyses.attention import load_model
    from attnviz.analyses.generation import generate
    from attnviz.core.config import ModelConfig
    from attnviz.text.gpt2_bpe import token_label

    folder = make_hf_checkpoint(tmp_path_factory.mktemp("gpt2-lm"), n_layer=2, n_head=2,
                                n_embd=32, lm_head=True)
    model = load_model(ModelConfig(progress=False), str(folder))
    result = generate(model, model.tokenizer.encode("When Mary and John went"), 6, ignore_eos=True)
    token_labels = [token_label(raw) for raw in model.tokenizer.token_bytes(result.token_ids)]
    files = write_generation_pictures(result, token_labels, tmp_path / "pics")
    assert len(files) == 2 * (2 + 1) + 1
    info = report.write_generation_report(result, token_labels, tmp_path / "g.html",
                                          tokenizer=model.tokenizer)
    payload = report.read_payload(info.path)
    steps = payload["generation"]["steps"]
    assert [s["id"] for s in steps] == result.new_ids
    assert all(s["top_k"][0]["id"] == s["id"] for s in steps)  # greedy: the most likely one
    rows = report.decode_weights(payload)
    prompt = result.prompt_length
    np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-3)
    assert (rows[..., 0, prompt:] == 0).all()


# --- the report in Chromium ---------------------------------------------------------------


@pytest.fixture(scope="module")
def generation_page_file(tmp_path_factory):
    prompt, n_new = 9, 12
    result = staircase_result(prompt, n_new, n_layers=2, n_heads=3, seed=7)
    path = tmp_path_factory.mktemp("generation-report") / "g.html"
    report.write_generation_report(result, labels(prompt, n_new), path)
    return path, result


@pytest.fixture(scope="module")
def browser():
    from test_report_browser import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, generation_page_file):
    from test_report_browser import Page

    loaded = Page(browser, generation_page_file[0])
    yield loaded
    loaded.page.close()


@pytest.mark.browser
def test_generation_page_loads_offline_with_the_generated_tokens_marked(page):
    assert page.errors == [] and page.requests == [page.url]
    summary = page.page.text_content("#summary")
    assert summary.startswith("21 tokens: 9 of the prompt, 12 generated (in colour")
    marked = page.page.eval_on_selector_all("#heads-left .tok.generated",
                                            "ts => ts.map(t => Number(t.dataset.pos))")
    assert marked == list(range(9, 21))
    rows = page.page.eval_on_selector_all("#tokens-table tbody tr.generated", "rs => rs.length")
    assert rows == 12
    assert page.page.text_content("#unknown-label").startswith("not computed")


@pytest.mark.browser
def test_the_step_slider_shows_a_steps_row_and_its_alternatives(page, generation_page_file):
    _, result = generation_page_file
    prompt = result.prompt_length
    page.page.click("#heads-all")
    everything = page.canvas_png("#heads-canvas")
    seen = set()
    for g in (0, 4, 11):
        page.page.fill("#step", str(g))
        page.page.dispatch_event("#step", "input")
        info = page.page.eval_on_selector("#step-info", "e => ({...e.dataset, text: e.textContent})")
        assert (info["step"], info["position"], info["id"]) == (str(g), str(prompt + g),
                                                               str(result.new_ids[g]))
        assert f"wrote \u201c\u2423g{g}\u201d" in info["text"] and "probability 0.5000" in info["text"]
        alternatives = page.page.eval_on_selector_all(
            "#step-topk tbody tr", "rs => rs.map(r => [Number(r.dataset.id), Number(r.dataset.probability),"
            " r.classList.contains('chosen')])")
        assert alternatives == [[a, p, a == result.new_ids[g]] for a, p in result.alternatives[g]]
        heads = page.page.eval_on_selector_all(
            "#step-heads tbody tr", "rs => rs.map(r => [r.dataset.head, r.dataset.keys, r.dataset.weights])")
        assert [int(h) for h, _, _ in heads] == [0, 1, 2]
        for h, keys, weights in heads:
            row = result.rows[0, int(h), g]
            strongest = [int(k) for k in keys.split(",")]
            assert strongest[0] == int(np.argmax(row)) and max(strongest) <= prompt + g - 1
            np.testing.assert_allclose([float(w) for w in weights.split(",")], row[strongest],
                                       atol=0.5 / 65535 + 1e-6)
        query = page.page.eval_on_selector("#heads-left .tok.step-query", "t => t.dataset.pos")
        written = page.page.eval_on_selector("#heads-right .tok.step-token", "t => t.dataset.pos")
        assert (int(query), int(written)) == (prompt + g - 1, prompt + g)
        drawn = page.canvas_png("#heads-canvas")
        assert drawn != everything and drawn not in seen  # one row's lines, a different one each
        seen.add(drawn)
    page.page.click("#step-all")
    assert page.canvas_png("#heads-canvas") == everything
    assert page.page.get_attribute("#step-info", "data-step") == ""
    assert page.errors == []


@pytest.mark.browser
def test_the_heatmap_reads_generated_rows_and_says_which_were_not_computed(page, generation_page_file):
    _, result = generation_page_file
    prompt = result.prompt_length
    unknown = page.hover_cell(3, 1)
    assert unknown["weight"] == "" and "not computed" in unknown["text"]
    for g, key in [(0, 8), (5, 2), (11, 19)]:
        cell = page.hover_cell(prompt - 1 + g, key)
        assert abs(float(cell["weight"]) - result.rows[0, 0, g, key]) <= 0.5 / 65535 + 1e-6
        assert f"(writing \u201c\u2423g{g}\u201d)" in cell["text"]
    last = page.hover_cell(20, 3)  # the last token's query never ran
    assert last["weight"] == "" and "not computed" in last["text"]
