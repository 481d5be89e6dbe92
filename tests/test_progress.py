"""Issue 15: live progress (attnviz.files.progress), --threads, and the whole-model fast paths
(weights written in place by the forward, checkpoint tensors used as parameters, PNGs
encoded in threads, overview tiles never stacked) — each checked against an independent
computation or the slow path it replaces. Nothing here is timed."""

from __future__ import annotations

import io
import re
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from attnviz.analyses.attention import analyze, analyze_with, load_model
from attnviz.core.attention import MultiHeadAttention
from attnviz.core.config import ModelConfig
from attnviz.files import progress
from attnviz.files.progress import Progress
from attnviz.pictures import cells, colours, images, plot
from attnviz.pictures.grid import grid_figure, heads_overview

TEXT = "Your journey starts with one step, and then another one after it"


class Recorder:
    """A progress callback that keeps every event."""

    def __init__(self):
        self.events: list[tuple[str, int, int]] = []

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.events.append((stage, done, total))

    def stage(self, name: str) -> list[tuple[int, int]]:
        return [(done, total) for stage, done, total in self.events if stage == name]


def forced_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=120, color_system=None), buffer


# ------------------------------------------------------------------- the progress module


def test_progress_prints_nothing_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    with Progress() as report:
        report("Forward pass", 1, 2)
        report("Forward pass", 2, 2)
        report.summary("Wrote 3 files")
    captured = capsys.readouterr()
    assert not report.enabled
    assert captured.out == "" and captured.err == ""
    assert list(report.stages) == ["Forward pass"]  # timings are still kept


def test_progress_prints_nothing_with_quiet_even_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    with Progress(quiet=True) as report:
        report("Drawing", 1, 1)
    assert not report.enabled
    assert capsys.readouterr().err == ""
    assert Progress(quiet=False).enabled  # the same terminal without --quiet: bars


def test_forced_progress_draws_bars_and_one_summary_line():
    console, buffer = forced_console()
    with Progress(enabled=True, console=console) as report:
        for i in range(1, 4):
            report("Reading weights", i, 3)
        for i in range(1, 6):
            report("Drawing", i, 5)
        report.summary("Wrote 5 PNG files to out")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue())  # cursor moves, colours
    assert "Reading weights" in text and "Drawing" in text and "5/5" in text
    lines = text.replace("\r", "\n").splitlines()
    summary = [line for line in lines if line.startswith("Wrote 5 PNG files to out in ")]
    assert len(summary) == 1
    assert "reading weights" in summary[0] and "drawing" in summary[0]


def test_forced_progress_prints_no_summary_when_the_run_fails():
    console, buffer = forced_console()
    with pytest.raises(RuntimeError), Progress(enabled=True, console=console) as report:
        report("Drawing", 1, 4)
        raise RuntimeError("disk full")
    assert "Done in" not in buffer.getvalue()


def test_stage_times_add_up_to_the_run():
    report = Progress(enabled=False)
    with report:
        for i in range(3):
            report("Forward pass", i + 1, 3)
        report("Drawing", 1, 1)
    assert list(report.stages) == ["Forward pass", "Drawing"]
    assert all(seconds >= 0 for seconds in report.stages.values())
    assert report.summary_line().startswith("Done in ")


# ------------------------------------------------------------------ callbacks of the library


def test_analyze_reports_every_block_read_and_run(hf_checkpoint):
    recorder = Recorder()
    result = analyze(TEXT, weights=str(hf_checkpoint), layer="all", progress=recorder)
    n_layers = len(result.layers)
    assert recorder.stage("Reading weights") == [(i, n_layers) for i in range(1, n_layers + 1)]
    assert recorder.stage("Forward pass") == [(i, n_layers) for i in range(1, n_layers + 1)]


def test_forward_reports_only_the_blocks_it_needs(hf_checkpoint):
    recorder = Recorder()
    analyze(TEXT, weights=str(hf_checkpoint), layer="1", progress=recorder)
    assert recorder.stage("Forward pass") == [(1, 2), (2, 2)]


def test_write_heatmaps_reports_every_picture(hf_checkpoint, tmp_path):
    result = analyze(TEXT, weights=str(hf_checkpoint), layer="all")
    recorder = Recorder()
    files = plot.write_heatmaps(result, tmp_path, progress=recorder)
    drawn = recorder.stage("Drawing")
    assert drawn[-1] == (len(files), len(files))
    assert [done for done, _ in drawn] == list(range(1, len(files) + 1))
    assert all(f.path.is_file() for f in files)


# --------------------------------------------------------------------------- the CLI


def test_heatmap_piped_shows_no_progress(cli, hf_checkpoint, tmp_path):
    result = cli("heatmap", TEXT, "--weights", hf_checkpoint, "--layer", "all", "--out", tmp_path)
    assert result.exit_code == 0, result.stderr
    assert "━" not in result.stderr and " in " not in result.stderr.split("…")[-1]
    assert "× 3 layers × 4 heads" in result.stderr  # what is drawn, not only the head count


def test_quiet_heatmap_and_export_print_only_paths(cli, hf_checkpoint, tmp_path):
    result = cli("export", TEXT, "--weights", hf_checkpoint, "--layer", "all",
                 "-o", tmp_path / "w.npz", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert np.load(tmp_path / "w.npz")["weights"].shape[:2] == (3, 4)


def test_threads_option_sets_torch_threads(cli, hf_checkpoint, tmp_path):
    before = torch.get_num_threads()
    try:
        result = cli("export", TEXT, "--weights", hf_checkpoint, "--threads", "1",
                     "-o", tmp_path / "w.npz", "--quiet")
        assert result.exit_code == 0, result.stderr
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_threads_must_be_positive(cli, tmp_path):
    result = cli("export", TEXT, "--threads", "0", "-o", tmp_path / "w.npz")
    assert result.exit_code == 2
    assert "--threads" in result.stderr


def test_threads_is_offered_by_every_model_command(cli):
    for command in ("heatmap", "export", "compare-heads", "info"):
        result = cli(command, "--help")
        assert "--threads" in result.stdout, command


# ---------------------------------------------------------------------- the fast paths


def test_weights_written_in_place_equal_the_plain_forward(hf_checkpoint):
    model = load_model(ModelConfig(), str(hf_checkpoint))
    token_ids = list(range(100, 140))
    result = analyze_with(model, token_ids, "all")
    plain = model.run(torch.tensor([token_ids]), result.layers)
    expected = np.stack([w[0].numpy() for _, w, _ in plain])
    np.testing.assert_array_equal(result.weights, expected)
    assert result.weights.flags["C_CONTIGUOUS"] and result.weights.dtype == np.float32


def test_block_parameters_are_the_checkpoint_tensors(hf_checkpoint):
    from transformers import GPT2Model

    model = load_model(ModelConfig(), str(hf_checkpoint))
    model.load_blocks(1)
    block = model.blocks[0]
    reference = GPT2Model.from_pretrained(hf_checkpoint).h[0]
    d = block.attn.W_query.out_features
    c_attn = reference.attn.c_attn.weight.detach()  # (d, 3d), Conv1D layout
    torch.testing.assert_close(block.attn.W_key.weight, c_attn[:, d : 2 * d].T, rtol=0, atol=0)
    model.load_blocks(2)  # block 0's MLP is read once a deeper layer needs its output
    torch.testing.assert_close(block.mlp.fc.weight, reference.mlp.c_fc.weight.detach().T,
                               rtol=0, atol=0)
    assert not any(p.requires_grad for p in block.parameters())
    (_, weights, _), = model.run(torch.tensor([[1, 2, 3]]), [0])
    assert weights.device.type == "cpu" and float(weights[0, 0, 0, 1]) == 0.0  # the future


def test_attention_writes_weights_into_the_given_tensor():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 32, 20, num_heads=4).eval()
    x = torch.randn(2, 11, 32)
    out = torch.full((2, 4, 11, 11), float("nan"))
    with torch.no_grad():
        context, weights = mha(x, return_weights=True)
        context_out, weights_out = mha(x, return_weights=True, weights_out=out)
    assert weights_out.data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, weights, rtol=0, atol=0)
    torch.testing.assert_close(context_out, context, rtol=0, atol=0)
    # An independent computation: softmax of masked scaled scores, head by head.
    q, k = mha.W_query(x), mha.W_key(x)
    for h in range(4):
        cols = slice(h * 8, (h + 1) * 8)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) / 8**0.5
        scores = scores.masked_fill(torch.triu(torch.ones(11, 11, dtype=torch.bool), 1), -torch.inf)
        torch.testing.assert_close(out[:, h], torch.softmax(scores, -1).detach())


@pytest.mark.parametrize("opaque", [True, False])
def test_png_is_rgb_when_opaque_and_decodes_to_the_same_pixels(opaque):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, size=(7, 9, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    if not opaque:
        rgba[3, 4, 3] = 10
    data = images.encode_png(rgba, dpi=100)
    image = Image.open(io.BytesIO(data))
    assert image.mode == ("RGB" if opaque else "RGBA")
    np.testing.assert_array_equal(np.asarray(image.convert("RGBA")), rgba)
    # Independent check of the scanlines: zlib-inflate the IDAT chunk.
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8 : start - 4], "big")
    rows = np.frombuffer(zlib.decompress(data[start : start + length]), dtype=np.uint8)
    channels = 3 if opaque else 4
    rows = rows.reshape(7, 1 + 9 * channels)
    assert (rows[:, 0] == 0).all()
    np.testing.assert_array_equal(rows[:, 1:].reshape(7, 9, channels), rgba[..., :channels])


def test_cell_words_ignore_what_masked_cells_hold():
    colormap, _ = colours.weight_colormap("viridis")
    norm = colours.make_norm("sqrt")
    rng = np.random.default_rng(1)
    weights = np.tril(rng.random((13, 13), dtype=np.float32))
    garbage = weights + np.triu(np.full((13, 13), np.nan, dtype=np.float32), 1)
    for px in (5, 13, 30):  # pooled, one pixel per cell, upsampled
        clean = cells.cell_words(cells.masked(weights), px, px, colormap, norm)
        dirty = cells.cell_words(cells.masked(garbage), px, px, colormap, norm)
        np.testing.assert_array_equal(clean, dirty)
    # each unmasked cell has exactly matplotlib's colour at one pixel per cell
    words = cells.cell_words(cells.masked(weights), 13, 13, colormap, norm)
    expected = colormap(norm(weights), bytes=True).view(np.uint32)[..., 0]
    lower = np.tril(np.ones((13, 13), dtype=bool))
    np.testing.assert_array_equal(words[lower], expected[lower])
    bad = colormap(np.ma.masked_all(1), bytes=True).view(np.uint32)[0, 0]
    assert (words[~lower] == bad).all()


def test_cached_causal_mask_cannot_be_changed_through_a_head():
    a, b = cells.masked(np.zeros((6, 6))), cells.masked(np.ones((6, 6)))
    np.testing.assert_array_equal(np.ma.getmask(a), np.triu(np.ones((6, 6), dtype=bool), 1))
    a[5, 0] = np.ma.masked
    assert not np.ma.getmask(b)[5, 0]
    assert not cells.causal_mask(6)[5, 0]
    with pytest.raises(ValueError):
        cells.causal_mask(6)[0, 0] = True


def test_grid_of_lists_and_lazy_tiles_equals_the_stacked_grid():
    rng = np.random.default_rng(2)
    heads = rng.random((2, 3, 40, 40), dtype=np.float32)
    stacked = grid_figure(heads, "t", token_labels=[f"t{i}" for i in range(40)], dpi=40)
    lists = grid_figure([[heads[r, c] for c in range(3)] for r in range(2)], "t",
                        token_labels=[f"t{i}" for i in range(40)], dpi=40)
    lazy = grid_figure([[(lambda w=heads[r, c]: w) for c in range(3)] for r in range(2)],
                       "t", token_labels=[f"t{i}" for i in range(40)], dpi=40)
    png = stacked.to_bytes("png")
    assert lists.to_bytes("png") == png and lazy.to_bytes("png") == png


def test_overview_with_an_empty_slot_leaves_it_blank():
    rng = np.random.default_rng(3)
    heads = rng.random((5, 12, 12), dtype=np.float32)  # 4 a row: slots 6-8 empty
    grid = heads_overview(heads, "t", dpi=40)
    assert sum(box is None for row in grid.tiles for box in row) == 3


def test_each_layer_overview_equals_one_drawn_afresh(hf_checkpoint, tmp_path):
    """write_heatmaps lays the heads overview out once and only re-tiles and re-titles it
    for the next layers: every layer's picture must be the one a fresh figure gives."""
    result = analyze(TEXT, weights=str(hf_checkpoint), layer="all")
    plot.write_heatmaps(result, tmp_path)
    for li, layer in enumerate(result.layers):
        title = f"Layer {layer}, all 4 heads, {result.n_tokens} tokens"
        fresh = heads_overview(result.weights[li], title, token_labels=result.token_labels)
        assert (tmp_path / f"layer_{layer:02d}" / "heads.png").read_bytes() == fresh.to_bytes("png")
    grid = heads_overview(result.weights[0], "Zebra title")
    grid.image()  # a raster first: the title is drawn over the saved background ...
    assert "Zebra title" in grid.to_bytes("svg").decode()  # ... and still drawn in vector output


def test_png_without_isal_has_the_same_pixels(monkeypatch):
    """ISA-L is optional: without it zlib compresses, and the picture is the same."""
    import sys

    rgba = np.random.default_rng(4).integers(0, 256, size=(20, 30, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    with_isal = images.encode_png(rgba, dpi=72)
    monkeypatch.setitem(sys.modules, "isal", None)  # import fails: zlib is used
    without = images.encode_png(rgba, dpi=72)
    for data in (with_isal, without):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGBA")), rgba)


@pytest.mark.parametrize("n_cells, n_px", [(1001, 160), (1001, 110), (17, 5), (64, 32), (9, 8)])
def test_block_max_equals_reduceat(n_cells, n_px):
    rng = np.random.default_rng(n_cells + n_px)
    data = rng.random((n_cells, n_cells), dtype=np.float32)
    data[np.triu_indices(n_cells, 1)] = -np.inf  # masked cells, as cell_words marks them
    starts, pooled = cells._axis_plan(n_cells, n_px)
    assert pooled
    for axis in (0, 1):
        np.testing.assert_array_equal(cells.block_max(data, starts, axis),
                                      np.maximum.reduceat(data, starts, axis=axis))
