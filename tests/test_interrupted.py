"""Issue 26: whatever attnviz has written into a folder is known to the next run, even when
the run that wrote it was interrupted (SIGINT) or killed (SIGKILL) — before the first
picture, mid-writing, or during the overview. Real processes, real signals (sent from
Python's subprocess: a shell's background job would start with SIGINT ignored)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnviz.files import outdir

WORDS = "the cat sat on a mat while seven quick foxes jumped over lazy dogs near rivers".split()
LONG_TEXT = " ".join(WORDS[i % len(WORDS)] + ("," if i % 9 == 8 else "") for i in range(800))
SMALLER = ["heatmap", "short text here", "--heads", "4", "--d-model", "64", "-q"]
EXPECTED = {"head_00.png", "head_01.png", "head_02.png", "head_03.png", "heads.png",
            outdir.MANIFEST, "notes.png", "mine.txt"}


def attnviz(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # SIGINT as a terminal delivers it, also when the suite runs as a background job (which
    # starts with SIGINT ignored: Python would keep it ignored)
    return subprocess.Popen([sys.executable, "-m", "attnviz", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def heads_written(out: Path) -> int:
    return len(list(out.glob("head_*.png")))


MOMENTS = {
    # the manifest is there (the run has planned its files), no picture yet
    "before-the-first-picture": lambda out: (out / outdir.MANIFEST).exists() and heads_written(out) == 0,
    "mid-writing": lambda out: heads_written(out) >= 5,
    # every head is written: the overview is being drawn
    "during-the-overview": lambda out: heads_written(out) == 24 and not (out / "heads.png").exists(),
}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("moment", MOMENTS)
def test_an_interrupted_run_leaves_nothing_a_later_run_does_not_clean(tmp_path, moment, sig):
    out = tmp_path / "figs"
    out.mkdir()
    (out / "notes.png").write_bytes(b"the user's own picture")
    (out / "mine.txt").write_text("the user's own notes")
    run = attnviz("heatmap", LONG_TEXT, "--out", str(out), "--heads", "24", "-q", cwd=tmp_path)
    deadline = time.monotonic() + 240
    while not MOMENTS[moment](out):
        assert run.poll() is None, f"the run ended before the moment came: {run.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    run.send_signal(sig)
    code = run.wait(timeout=60)
    assert code == (130 if sig == signal.SIGINT else -signal.SIGKILL), run.stderr.read()
    left = {p.name for p in out.iterdir()}
    assert "heads.png" not in left and heads_written(out) < 24 or moment == "during-the-overview"
    manifest = json.loads((out / outdir.MANIFEST).read_text())
    assert {p.name for p in out.glob("head_*.png")} <= set(manifest["files"])  # none unknown
    assert manifest["complete"] is False

    smaller = attnviz(*SMALLER[:1], *SMALLER[1:2], "--out", str(out), *SMALLER[2:], cwd=tmp_path)
    assert smaller.wait(timeout=120) == 0, smaller.stderr.read()
    assert {p.name for p in out.iterdir()} == EXPECTED
    assert (out / "notes.png").read_bytes() == b"the user's own picture"
    final = json.loads((out / outdir.MANIFEST).read_text())
    assert final == {"written_by": "attnviz", "complete": True,
                     "files": sorted(EXPECTED - {outdir.MANIFEST, "notes.png", "mine.txt"})}


def test_a_user_file_under_a_planned_name_is_not_listed_before_it_is_overwritten(tmp_path):
    """A run interrupted before it reached head_03.png does not claim the user's head_03.png."""
    out = tmp_path / "figs"
    out.mkdir()
    (out / "head_03.png").write_bytes(b"mine")
    record = outdir.OutputFolder(out, ["head_00.png", "head_03.png", "heads.png"])
    listed = json.loads((out / outdir.MANIFEST).read_text())["files"]
    assert listed == ["head_00.png", "heads.png"]
    record.claim("head_03.png")
    assert "head_03.png" in json.loads((out / outdir.MANIFEST).read_text())["files"]


def test_a_killed_run_s_temporaries_are_removed_and_nothing_else(tmp_path):
    out = tmp_path / "figs"
    (out / "layer_02").mkdir(parents=True)
    leftovers = [out / ".head_05.png.ab12cd34.tmp", out / "layer_02" / ".heads.png.zz99yy88.tmp",
                 out / f".{outdir.MANIFEST}.q1w2e3r4.tmp"]
    kept = [out / ".notes.png.ab12cd34.tmp", out / "x.tmp", out / ".head_05.png.tmp"]
    for path in leftovers + kept:
        path.write_bytes(b"x")
    removed = outdir.remove_temporaries(out)
    assert sorted(removed) == sorted(leftovers)
    assert all(p.exists() for p in kept)


def test_scan_plot_folders_follow_the_same_rule(tmp_path, cli):
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "notes.png").write_bytes(b"mine")
    first = cli("scan", "a b a b a b", "the cat sat on the mat", "--heads", "4", "--d-model", "32",
                "--plot", maps, "--induction", "--context-length", "128", "-q")
    assert first.exit_code == 0, first.stderr
    assert (maps / "induction_probe.png").exists()
    second = cli("scan", "a b a b a b", "the cat sat on the mat", "--heads", "4", "--d-model", "32",
                 "--plot", maps, "-q")
    assert second.exit_code == 0, second.stderr
    assert not (maps / "induction_probe.png").exists() and (maps / "notes.png").exists()
    assert (maps / "induction_head.png").exists()
