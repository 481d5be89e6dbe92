"""`attnviz train` (issue #23, part 2): the run's folder, its scores equal to `attnviz scan`,
snapshots equal to transformers, an exact --resume, the film, and every refusal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from attnviz.analyses import train_run, training
from attnviz.analyses.train_run import RunSettings
from attnviz.pictures.training import write_run_pictures

transformers = pytest.importorskip("transformers")

# A run small enough for a test: 40 steps of a 16-token, 64-word model.
SMALL = training.TrainConfig(n_positions=16, vocab_size=64, batch_size=16)
SMALL_CLI = ["--context", "16", "--vocab", "64", "--batch-size", "16"]


def _small_run(out: Path, steps: int = 40, every: int = 10, **options) -> train_run.RunSummary:
    return train_run.train(out, RunSettings(SMALL, steps=steps, snapshot_every=every), **options)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    summary = _small_run(out)
    return out, summary


def test_the_run_folder_has_a_snapshot_and_a_log_line_per_k_steps(small_run):
    out, summary = small_run
    steps = [r["step"] for r in train_run.read_log(out)]
    assert steps == [0, 10, 20, 30, 40]
    assert sorted(p.name for p in out.glob("step-*")) == [f"step-{s:06d}" for s in steps]
    for step in steps:
        names = {p.name for p in (out / f"step-{step:06d}").iterdir()}
        assert names == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert len((out / "probes.txt").read_text().splitlines()) == train_run.N_PROBES
    first = train_run.read_log(out)[0]
    assert set(first["scores"]) >= {"induction_head", "previous_token_head", "duplicate_token_head"}
    assert np.array(first["scores"]["induction_head"]).shape == (SMALL.n_layer, SMALL.n_head)
    assert summary.last["loss"] < first["loss"]  # it learns


def test_the_log_equals_attnviz_scan_on_the_same_snapshot_and_probes(small_run, cli):
    out, _ = small_run
    for record in train_run.read_log(out)[::2]:
        result = cli("scan", "--weights", out / record["snapshot"], "--file", out / "probes.txt",
                     "--format", "json", "-q")
        assert result.exit_code == 0, result.stderr
        rows = json.loads(result.stdout)["heads"]
        for row in rows:
            for name, scores in record["scores"].items():
                assert row[f"{name}_mean"] == pytest.approx(scores[row["layer"]][row["head"]],
                                                            abs=1e-7), (record["step"], name)


def test_a_snapshot_gives_transformers_attention(small_run):
    out, _ = small_run
    from attnviz.analyses.attention import analyze

    folder = out / "step-000040"
    text = (out / "probes.txt").read_text().splitlines()[3]
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    ids = transformers.AutoTokenizer.from_pretrained(folder)(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        theirs = torch.stack(hf(ids, output_attentions=True).attentions)[:, 0].numpy()
    ours = analyze(text, weights=str(folder), layer="all")
    assert ours.token_ids == ids[0].tolist()
    np.testing.assert_allclose(ours.weights, theirs, atol=1e-5, rtol=0)


def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path, small_run):
    whole, _ = small_run
    out = tmp_path / "run"

    def stop_at(step, loss):
        if step == 27:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _small_run(out, on_step=stop_at)
    assert [r["step"] for r in train_run.read_log(out)] == [0, 10, 20]
    summary = _small_run(out, resume=True)
    assert summary.resumed_from == 20
    for step in (0, 10, 20, 30, 40):
        name = f"step-{step:06d}/model.safetensors"
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name

    def drop_time(records):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    assert drop_time(train_run.read_log(out)) == drop_time(train_run.read_log(whole))


def test_resume_can_extend_the_run_and_refuses_other_options(tmp_path):
    out = tmp_path / "run"
    _small_run(out, steps=20)
    summary = _small_run(out, steps=30, resume=True)
    assert [r["step"] for r in summary.records] == [0, 10, 20, 30]
    other = RunSettings(training.TrainConfig(n_positions=16, vocab_size=64, batch_size=16, lr=1e-3),
                        steps=30, snapshot_every=10)
    with pytest.raises(training.InputError, match=r"\(--lr 0.003 in the run, 0.001 now\)"):
        train_run.train(out, other, resume=True)
    with pytest.raises(training.InputError, match="past --steps 20"):
        _small_run(out, steps=20, resume=True)


def test_the_film_has_a_frame_per_snapshot_and_the_chart_is_drawn(small_run):
    from PIL import Image

    out, summary = small_run
    files = write_run_pictures(out, RunSettings(SMALL), summary.records, "heads.gif")
    assert [f.name for f in files] == ["heads.gif", "detectors.png"]
    with Image.open(out / "heads.gif") as film:
        assert film.n_frames == len(summary.records)
        first = np.asarray(film.convert("RGB"))
        film.seek(film.n_frames - 1)
        last = np.asarray(film.convert("RGB"))
    assert not np.array_equal(first, last)  # the heads (and the step) change
    files = write_run_pictures(out, RunSettings(SMALL), summary.records, "heads.png")
    with Image.open(out / "heads.png") as film:
        assert film.format == "PNG" and film.n_frames == len(summary.records)  # APNG
    assert not (out / "heads.gif").exists()  # one film per run
    with Image.open(out / "detectors.png") as chart:
        assert chart.size[0] > 800


@pytest.mark.slow
def test_previous_task_forms_a_previous_token_head(tmp_path):
    settings = RunSettings(training.TrainConfig(n_positions=16, vocab_size=64, batch_size=32),
                           task="previous", steps=300, snapshot_every=300)
    summary = train_run.train(tmp_path / "run", settings)
    first = np.array(summary.records[0]["scores"]["previous_token_head"])
    last = np.array(summary.last["scores"]["previous_token_head"])
    assert first.max() < 0.3 and last[0].max() > 0.9  # a layer-0 head attends one back
    assert summary.last["loss"] < 0.5


STORY = ("I had always thought Jack Gisburn rather a cheap genius--though a good fellow "
         "enough--so it was no great surprise to me to hear that, in the height of his glory, "
         "he had dropped his painting, married a rich widow, and established himself in a villa "
         "on the Riviera. ") * 6


def test_text_runs_train_on_the_text_with_its_own_tokenizer(tmp_path, cli):
    story = tmp_path / "story.txt"
    story.write_text(STORY)
    out = tmp_path / "run"
    result = cli("train", "--out", out, "--text", story, "--steps", "20", "--snapshot-every",
                 "10", "--vocab", "300", *SMALL_CLI[:2], "--format", "json", "-q")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["steps"] == 20 and len(summary["snapshots"]) == 3
    folder = Path(summary["snapshots"][-1])
    theirs = transformers.AutoTokenizer.from_pretrained(folder)(STORY[:200])["input_ids"]
    from attnviz.text.tokenization import load_tokenizer

    assert load_tokenizer(folder / "tokenizer.json").encode(STORY[:200]) == theirs
    assert json.loads((folder / "config.json").read_text())["vocab_size"] <= 300


def test_the_command_reports_the_best_heads_and_writes_the_film(tmp_path, cli):
    out = tmp_path / "run"
    result = cli("train", "--out", out, "--steps", "20", "--snapshot-every", "10", *SMALL_CLI)
    assert result.exit_code == 0, result.stderr
    assert "induction" in result.stdout and "L1 H" in result.stdout
    assert f"Wrote{out / 'heads.gif'}" in "".join(result.stderr.split())  # rich folds long paths
    result = cli("train", "--out", out, "--steps", "20", "--snapshot-every", "10", *SMALL_CLI,
                 "--format", "json")
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"Error: --out {out} holds another training run; pass "
                                     "--resume to continue it or --force to replace it")
    result = cli("train", "--out", out, "--steps", "15", *SMALL_CLI, "--format", "json", "--force")
    assert result.exit_code == 0, result.stderr
    assert [r["step"] for r in train_run.read_log(out)] == [0, 15]  # and the last step
    assert sorted(p.name for p in out.glob("step-*")) == ["step-000000", "step-000015"]


@pytest.mark.parametrize("args, message", [
    (["--task", "copy"], "--task must be one of induction, previous (or --text FILE), got 'copy'"),
    (["--heads", "3"], "--d-model 64 is not divisible by --heads 3"),
    (["--film-format", "webm"], "--film-format must be one of gif, apng, mp4, got 'webm'"),
    (["--resume"], "--resume: {out} holds no training run to continue"),
    (["--resume", "--force"], "--resume and --force: pass one (continue the run, or replace it)"),
    (["--text", "{tmp}/missing.txt", "--vocab", "300"], "--text {tmp}/missing.txt: no such file"),
    (["--text", "{tmp}/short.txt"], "--vocab 64: a byte-level tokenizer for --text needs at least "
                                    "256 tokens (one per byte)"),
    (["--text", "{tmp}/short.txt", "--vocab", "300"],
     "--text {tmp}/short.txt is 1 token; training needs at least 17 (the context 16 + 1): use a "
     "longer text or a smaller --context"),
    (["--text", "{tmp}/short.txt", "--task", "previous"], "--text and --task: pass one (--text "
                                                          "trains on the text)"),
    (["--probe", " ".join(["the"] * 20)], "--probe is 20 tokens, longer than the context 16; "
                                          "shorten it or pass a larger --context"),
])
def test_bad_options_are_refused_with_one_line(tmp_path, cli, args, message):
    (tmp_path / "short.txt").write_text("hello")
    out = tmp_path / "run"
    args = [a.format(tmp=tmp_path, out=out) for a in args]
    base = ["--steps", "20", "--snapshot-every", "10", *SMALL_CLI]
    base = [x for i, x in enumerate(base) if base[i - i % 2] not in args]  # the case's own win
    result = cli("train", "--out", out, *base, *args)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.strip() == "Error: " + message.format(tmp=tmp_path, out=out)
    assert not out.exists()  # nothing written


def test_a_folder_of_other_files_is_refused(tmp_path, cli):
    (tmp_path / "notes.txt").write_text("mine")
    result = cli("train", "--out", tmp_path, "--steps", "10", "--snapshot-every", "10", *SMALL_CLI,
                 "--force")
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"Error: --out {tmp_path} is not empty and holds no training "
                                     "run (run.json); choose a new or empty folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_mp4_needs_ffmpeg(tmp_path, cli):
    import shutil

    result = cli("train", "--out", tmp_path / "run", "--steps", "10", "--snapshot-every", "10",
                 *SMALL_CLI, "--film-format", "mp4", "-q")
    if shutil.which("ffmpeg") is None:
        assert result.exit_code == 2
        assert result.stderr.strip() == ("Error: --film-format mp4 needs ffmpeg on PATH (not "
                                         "found); use gif or apng")
        assert not (tmp_path / "run").exists()
    else:
        assert result.exit_code == 0, result.stderr
        assert (tmp_path / "run" / "heads.mp4").stat().st_size > 0


@pytest.mark.slow
def test_ctrl_c_exits_130_and_leaves_a_loadable_snapshot_to_resume(tmp_path, cli):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = subprocess.Popen(
        [sys.executable, "-m", "attnviz", "train", "--out", str(out), "--steps", "100000",
         "--snapshot-every", "20", *SMALL_CLI], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while len(train_run.read_log(out)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    code = run.wait(timeout=60)
    stderr = run.stderr.read()
    assert code == 130, stderr
    last = train_run.read_log(out)[-1]["snapshot"]
    assert stderr.strip().splitlines() == [
        f"Error: interrupted; {out / last} is the last complete snapshot (it opens with "
        f"--weights); continue with attnviz train --out {out} --resume and the same options"]
    assert not list(out.glob(".*.tmp"))
    result = cli("heatmap", "the cat sat", "--weights", out / last, "--format", "json", "-q",
                 "--out", tmp_path / "pictures")
    assert result.exit_code == 0, result.stderr
    result = cli("train", "--out", out, "--steps", "100", "--snapshot-every", "20", *SMALL_CLI,
                 "--resume", "-q", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["resumed_from"] == int(last.removeprefix("step-"))


@pytest.mark.slow
def test_a_shortened_default_run_forms_an_induction_head(tmp_path):
    """The issue's target on a run known to form the head: the default model, task and
    optimiser with seed 2 for 4000 steps (about 50 s). The default run itself (seed 0, 6000
    steps) is measured by benchmarks/train_bench.py."""
    from attnviz.analyses.attention import analyze

    settings = RunSettings(training.TrainConfig(seed=2), steps=4000, snapshot_every=2000)
    summary = train_run.train(tmp_path / "run", settings)

    def best(record):
        return max(record["scores"]["induction_head"][1])

    assert best(summary.records[0]) <= 0.1
    assert best(summary.last) >= 0.5
    # The head does what the detector says on a sequence it has never seen: from the second
    # repeat on, most queries attend most to the token after the previous occurrence of
    # their own token (76% here; a head attending anywhere else would hit about 1 in 20).
    head = int(np.argmax(summary.last["scores"]["induction_head"][1]))
    words = training.word_vocabulary(512)
    rng = np.random.default_rng(99)
    segment = [words[i] for i in rng.choice(np.arange(1, 512), 7, replace=False)]
    text = " ".join(segment * 4)
    weights = analyze(text, weights=str(tmp_path / "run" / "step-004000"), layer=1).weights[0, head]
    queries = np.arange(7, 28)
    hits = weights[queries].argmax(-1) == queries - 6  # the token after, one period back
    assert hits.mean() >= 0.7, weights[queries].argmax(-1)
