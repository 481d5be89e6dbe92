"""Every bad input: one `Error:` line on stderr, the right exit code, nothing on stdout,
nothing half-written. Interrupts leave no temporaries. Random input never crashes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import SHORT_TEXT, small_options
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from attnviz.analyses.attention import analyze
from attnviz.core.config import ModelConfig
from attnviz.files.fileio import atomic_write

LONG = " ".join(["word"] * 40)


def assert_one_error_line(result, code, pattern):
    import re

    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in result.stderr


BAD_HEATMAP = [
    (["heatmap", ""], 2, "the text is empty"),
    (["heatmap"], 2, "no text given"),
    (["heatmap", LONG, "--context-length", "8"], 2,
     r"40 tokens, longer than the context length 8.*--context-length"),
    (["heatmap", SHORT_TEXT, "--heads", "5"], 2, "--heads 5 does not divide --d-model 768"),
    (["heatmap", SHORT_TEXT, "--heads", "0"], 2, "--heads"),
    (["heatmap", SHORT_TEXT, "--d-model", "-8"], 2, "--d-model"),
    (["heatmap", SHORT_TEXT, "--context-length", "0"], 2, "--context-length"),
    (["heatmap", SHORT_TEXT, "--head", "12"], 2,
     r"--head 12 is out of range: the model has 12 heads \(0-11\)"),
    (["heatmap", SHORT_TEXT, "--head", "-1"], 2, "--head"),
    (["heatmap", SHORT_TEXT, "--layer", "1"], 2, r"--layer 1 is out of range"),
    (["heatmap", SHORT_TEXT, "--layer", "two"], 2, "--layer must be a layer number"),
    (["heatmap", SHORT_TEXT, "--cmap", "virdis"], 2, "unknown colormap 'virdis'; did you mean viridis"),
    (["heatmap", SHORT_TEXT, "--dpi", "5000"], 2, "--dpi 5000 is outside"),
    (["heatmap", SHORT_TEXT, "--dpi", "0"], 2, "--dpi 0 is outside"),
    (["heatmap", SHORT_TEXT, "--impl", "turbo"], 2, "'turbo' is not one of 'fused', 'wrapper'"),
    (["heatmap", SHORT_TEXT, "--bogus"], 2, "No such option: --bogus"),
    (["heatmap", SHORT_TEXT, "--file", "x.txt"], 2, "not both"),
    (["heatmap", "--file", "does-not-exist.txt"], 2, "cannot read --file does-not-exist.txt"),
    (["nosuchcommand"], 2, "No such command"),
    (["export", SHORT_TEXT], 2, "Missing option '--output'"),
    (["compare-heads", SHORT_TEXT, "--sort-by", "colour"], 2, "--sort-by 'colour' is not a column"),
    (["tokens", SHORT_TEXT, "--format", "xml"], 2, "'xml' is not one of"),
]


@pytest.mark.parametrize("args, code, pattern", BAD_HEATMAP)
def test_bad_input_gives_one_error_line_and_writes_nothing(cli, tmp_path, monkeypatch, args, code, pattern):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    extra = ["--out", str(out)] if args[0] == "heatmap" else []
    result = cli(*args, *extra)
    assert_one_error_line(result, code, pattern)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_out_is_a_file(cli, tmp_path):
    target = tmp_path / "taken"
    target.write_text("precious")
    assert_one_error_line(cli("heatmap", SHORT_TEXT, "--out", target), 2, "is a file, not a folder")
    assert target.read_text() == "precious"


def test_out_not_writable_is_found_by_trying_not_by_permission_bits(cli):
    # as root os.access says yes everywhere; creating a file in /proc fails even for root
    assert_one_error_line(cli("heatmap", SHORT_TEXT, "--out", "/proc/attnviz-x"), 2,
                          "not writable")


def test_plot_target_folder_missing(cli, tmp_path):
    result = cli("compare-heads", SHORT_TEXT, "-o", tmp_path / "nope" / "p.png")
    assert_one_error_line(result, 2, "does not exist")


def test_invalid_utf8_on_stdin_is_refused(cli):
    result = cli("tokens", "-", input=b"caf\xe9 latin-1\n")
    assert_one_error_line(result, 2, r"standard input is not valid UTF-8 \(byte 0xe9 at offset 3\)")


def test_invalid_utf8_file_is_refused(cli, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\xff\xfe\x00a")
    assert_one_error_line(cli("tokens", "--file", path), 2, "not valid UTF-8")


def test_memory_estimate_refuses_on_the_command_line(cli, monkeypatch):
    import attnviz.analyses.attention

    monkeypatch.setattr(attnviz.analyses.attention, "available_memory", lambda: 1000)
    result = cli("compare-heads", SHORT_TEXT)
    assert_one_error_line(result, 2, r"need about .* GiB for the attention weights")


def test_unexpected_failure_is_one_line_exit_1_and_debug_shows_traceback(cli, monkeypatch):
    import attnviz.analyses.stats

    def boom(*args):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(attnviz.analyses.stats, "head_rows", boom)
    result = cli("compare-heads", SHORT_TEXT, *small_options())
    assert_one_error_line(result, 1, "unexpected failure: RuntimeError: simulated bug")
    debug = cli("compare-heads", SHORT_TEXT, *small_options(), "--debug")
    assert debug.exit_code == 1 and "Traceback" in debug.stderr


def test_keyboard_interrupt_exits_130_with_one_line(cli, monkeypatch, tmp_path):
    import attnviz.pictures.plot

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(attnviz.pictures.plot, "write_heatmaps", interrupted)
    result = cli("heatmap", SHORT_TEXT, "--out", tmp_path / "o", "--quiet")
    assert_one_error_line(result, 130, "interrupted")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "file.png"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_write(target) as f:
        f.write(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.png"]


def default_sigint() -> None:
    """In the child: SIGINT as a terminal delivers it, also when the suite itself runs as a
    background job (which starts with SIGINT ignored, and Python keeps it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_run_leaves_only_complete_pngs(tmp_path, sig):
    out = tmp_path / "out"
    text = " ".join(f"w{i}" for i in range(150))
    proc = subprocess.Popen(
        [sys.executable, "-m", "attnviz", "heatmap", text, "--out", str(out), "--heads", "96",
         "--d-model", "768"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=default_sigint,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and len(list(out.glob("head_*.png"))) >= 3):
        time.sleep(0.02)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    files = [p for p in out.iterdir() if p.name != ".attnviz-manifest.json"]
    assert stderr.decode().strip().splitlines()[-1] == (
        f"Error: interrupted; {len(files)} of 97 files written to {out}/; run the command "
        "again to finish")  # 96 heads and the overview planned
    assert files and all(p.name.startswith("head_") and p.suffix == ".png" for p in files)
    assert len(files) < 96  # it really was interrupted mid-run
    listed = json.loads((out / ".attnviz-manifest.json").read_text())  # what the next run cleans
    assert {p.name for p in files} <= set(listed["files"]) and listed["complete"] is False
    for png in files:
        with Image.open(png) as image:
            image.load()  # a truncated file would raise here


def test_endoftext_in_text_is_plain_by_default(cli):
    import json

    plain = json.loads(cli("compare-heads", "a <|endoftext|> b", "--format", "json", *small_options()).stdout)
    special = json.loads(cli("compare-heads", "a <|endoftext|> b", "--format", "json", "--allow-special",
                             *small_options()).stdout)
    assert 50256 not in [t["id"] for t in plain["tokens"]]
    assert 50256 in [t["id"] for t in special["tokens"]]


ODD_TEXTS = [
    "emoji 🙂👍🏽👨‍👩‍👧",
    "中文 日本語 한국어",
    "مرحبا بالعالم עברית",
    "e\u0301 a\u0308 combining",
    "zero\u200bwidth\u200d\ufeff",
    "ctrl \x00\x01\x07\x1b\x7f",
    "tab\tnew\nline\r\nend",
]


@pytest.mark.parametrize("text", ODD_TEXTS)
def test_odd_but_valid_text_works_without_glyph_warnings(tmp_path, text):
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-m", "attnviz", "heatmap", "-", "--out", str(tmp_path),
         "--head", "0", *small_options()], input=text.encode(), capture_output=True, timeout=120,
    )  # through stdin: argv cannot carry a NUL
    assert proc.returncode == 0, proc.stderr
    assert b"Glyph" not in proc.stderr and b"Warning" not in proc.stderr
    assert (tmp_path / "head_00.png").is_file()


# --- property-based ---------------------------------------------------------------------

configs = st.builds(
    lambda heads, per_head, seed, bias: ModelConfig(n_heads=heads, d_model=heads * per_head,
                                                    seed=seed, qkv_bias=bias),
    st.integers(1, 6), st.integers(1, 12), st.integers(0, 2**31), st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(text=st.text(min_size=1, max_size=60), config=configs)
def test_any_text_and_config_gives_valid_attention(text, config):
    result = analyze(text, config)
    w = result.weights[0].astype(np.float64)
    n = result.n_tokens
    assert w.shape == (config.n_heads, n, n)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    assert (w[:, np.triu(np.ones((n, n), dtype=bool), 1)] == 0).all()
    assert np.isfinite(w).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40), command=st.sampled_from(["tokens", "compare-heads"]),
       heads=st.integers(-2, 5))
def test_cli_never_crashes(cli, text, command, heads):
    args = [command, text, "--format", "json"]
    if command == "compare-heads":
        args += ["--heads", str(heads), "--d-model", "12"]
    result = cli(*args)
    assert result.exit_code in (0, 2), result.stderr
    assert "Traceback" not in result.stderr
    if result.exit_code == 0:
        import json

        assert json.loads(result.stdout)
    else:
        assert result.stderr.startswith("Error: ") and result.stdout == ""
