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

from attnviz.analyses import circuit, train_run, training
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
    periods = circuit.probe_periods(SMALL.n_positions)
    probes = (out / "probes.txt").read_text().splitlines()
    assert len(probes) == circuit.PROBES_PER_PERIOD * len(periods)
    for line, period in zip(probes, np.repeat(periods, circuit.PROBES_PER_PERIOD)):
        words = line.split()  # one word a token: random tokens repeated twice
        assert len(words) == 2 * period and words[:period] == words[period:]
        assert len(set(words)) == period
    first = train_run.read_log(out)[0]
    assert set(first["scores"]) >= {"induction_head", "previous_token_head", "duplicate_token_head"}
    assert np.array(first["scores"]["induction_head"]).shape == (SMALL.n_layer, SMALL.n_head)
    assert list(first["periods"]) == [str(p) for p in periods]
    for scores in first["periods"].values():
        for kind in circuit.KINDS:
            values = np.array(scores[kind])
            assert values.shape == (SMALL.n_layer, SMALL.n_head)
            assert ((values >= 0) & (values <= 1)).all()
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
    with pytest.raises(training.InputError, match=r"\(--lr 0.006 in the run, 0.001 now\)"):
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
    # the scan score's highest on a probe of 2p tokens is (2p - 1) / 2p: row 0 has no previous
    highest = np.mean([(2 * p - 1) / (2 * p) for p in circuit.probe_periods(16)])
    assert first.max() < 0.3 and last[0].max() > 0.95 * highest  # a layer-0 head attends one back
    weight = circuit.mean_over_periods(summary.last, "previous_token")
    assert weight[0].max() > 0.95  # its weight on the previous token, from every query
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
    assert "previous token (layer 0)" in result.stdout and "period 7, never trained" in result.stdout
    assert f"Wrote{out / 'heads.gif'}" in "".join(result.stderr.split())  # rich folds long paths
    result = cli("train", "--out", out, "--steps", "20", "--snapshot-every", "10", *SMALL_CLI,
                 "--format", "json")
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"Error: --out {out} holds another training run; pass "
                                     "--resume to continue it or --force to replace it")
    result = cli("train", "--out", out, "--steps", "15", *SMALL_CLI, "--format", "json", "--force")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)["circuit"]
    assert found["previous_token"]["layer"] == 0 and found["induction"]["layer"] == 1
    assert list(found["induction"]["periods"]) == ["2", "3", "4", "7", "8"]  # context 16
    assert [p["trained"] for p in found["induction"]["periods"].values()] == [True, False, True,
                                                                             False, True]
    assert found["formed"] is None  # 15 steps form nothing
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
    # 4 snapshots logged: the line of the 3rd was printed (a line follows its log entry)
    while len(train_run.read_log(out)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    code = run.wait(timeout=60)
    stderr = run.stderr.read()
    assert code == 130, stderr
    last = train_run.read_log(out)[-1]["snapshot"]
    *progress, error = stderr.strip().splitlines()  # off a terminal: a line per snapshot
    assert error == (
        f"Error: interrupted; {out / last} is the last complete snapshot (it opens with "
        f"--weights); continue with attnviz train --out {out} --resume and the same options")
    assert len(progress) >= 3 and all(line.startswith("step ") for line in progress)
    assert progress[1].startswith("step 20/100,000, loss ") and " s left" in progress[1]
    assert not list(out.glob(".*.tmp"))
    result = cli("heatmap", "the cat sat", "--weights", out / last, "--format", "json", "-q",
                 "--out", tmp_path / "pictures")
    assert result.exit_code == 0, result.stderr
    result = cli("train", "--out", out, "--steps", "100", "--snapshot-every", "20", *SMALL_CLI,
                 "--resume", "-q", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["resumed_from"] == int(last.removeprefix("step-"))


def _transformers_attention(folder: Path, token_ids: np.ndarray) -> np.ndarray:
    """``(L, B, H, T, T)``: transformers' ``GPT2Model`` (eager attention, float32) loaded
    with the snapshot's weights, on ``token_ids (B, T)``."""
    model, info = transformers.GPT2Model.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(token_ids), output_attentions=True)
    return torch.stack(out.attentions).numpy()


def repeated_twice(rng, vocab_size: int, period: int, n_sequences: int, context: int | None = None):
    """``(B, 2p)`` fresh random tokens (distinct, never ``[UNK]``'s 0), repeated twice; with
    ``context``, after as many random tokens as fill it (``(B, context)``)."""
    n = context or 2 * period
    rows = []
    for _ in range(n_sequences):
        tokens = rng.choice(np.arange(1, vocab_size), n - period, replace=False)
        noise, segment = tokens[:n - 2 * period], tokens[n - 2 * period:]
        rows.append(np.concatenate([noise, segment, segment]))
    return np.stack(rows)


def circuit_by_transformers(folder: Path, period: int, context: int | None = None, seed: int = 42):
    """Recomputed independently of attnviz: per head, the mean weight from each query of
    the repeat on the induction target (the token after the previous occurrence of the
    query's token), and from each query on the previous token. Both ``(L, H)``."""
    config = json.loads((folder / "config.json").read_text())
    ids = repeated_twice(np.random.default_rng([seed, period]), config["vocab_size"], period, 16,
                         context)
    weights = _transformers_attention(folder, ids)  # (L, B, H, T, T)
    n = ids.shape[1]
    queries = np.arange(n - period, n)  # the repeat
    rows = np.arange(1, n)
    assert (ids[:, n - period:] == ids[:, n - 2 * period:n - period]).all()  # repeated twice
    assert all(len(set(row)) == n - period for row in ids.tolist())  # and nothing else repeats
    induction = weights[..., queries, queries - period + 1].mean(axis=(1, 3))  # (L, H)
    previous = weights[..., rows, rows - 1].mean(axis=(1, 3))
    return induction, previous


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The default recipe, whole: model, task, optimiser and steps (only the snapshots are
    fewer: they change nothing of the training)."""
    settings = RunSettings(steps=RunSettings().steps, snapshot_every=RunSettings().steps)
    out = tmp_path_factory.mktemp("default") / "run"
    return out, train_run.train(out, settings)


@pytest.mark.slow
@pytest.mark.parametrize("noise_first", [False, True], ids=["repeat-alone", "after-noise"])
def test_the_default_recipe_forms_a_previous_token_head_and_an_induction_head(default_run,
                                                                              noise_first):
    """Issue #42: on fresh random tokens repeated twice at the shortest and the longest
    period the context allows (and at every held-out period), transformers' own forward
    pass of the last snapshot shows a layer-1 head with >= 0.4 of its weight on the
    induction target and a layer-0 head with >= 0.4 on the previous token; the run's
    summary names those heads. On the recipe before #42 (checked by hand on its default
    run's last snapshot) the best layer-1 head put 0.16 of its weight on the target at
    period 16 and 0.02 at period 11, and the best layer-0 head 0.05 on the previous token
    after noise: this test failed there."""
    out, summary = default_run
    context = training.TrainConfig().n_positions
    folder = out / summary.last["snapshot"]
    found = train_run.circuit_summary(summary.records, context)
    layer, head = found["induction"]["layer"], found["induction"]["head"]
    assert layer == 1
    periods = sorted({2, context // 2, *circuit.held_out_periods(context)})
    for period in periods:
        induction, previous = circuit_by_transformers(folder, period,
                                                      context if noise_first else None)
        assert induction[1, head] >= 0.4, (period, induction)
        assert previous[0].max() >= 0.4, (period, previous)
        assert int(np.argmax(previous[0])) == found["previous_token"]["head"]
    assert found["previous_token"]["score_at_step_0"] < 0.3 and found["previous_token"]["score"] >= 0.4
    assert found["induction"]["score_at_step_0"] < 0.2 and found["induction"]["score"] >= 0.8
    assert found["formed"] is not None and found["formed"]["loss_after"] < found["formed"]["loss_before"]


@pytest.mark.slow
def test_the_logged_period_scores_are_transformers_weights_on_the_targets(default_run):
    """training.jsonl's per-period scores of the last snapshot, recomputed with
    transformers on the probes of probes.txt (the heads are sharp here, so a target off by
    one position would show)."""
    out, summary = default_run
    folder = out / summary.last["snapshot"]
    lines = (out / "probes.txt").read_text().splitlines()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    k = circuit.PROBES_PER_PERIOD
    for i, period in enumerate(circuit.probe_periods(training.TrainConfig().n_positions)):
        ids = np.array([tokenizer(line)["input_ids"] for line in lines[i * k:(i + 1) * k]])
        weights = _transformers_attention(folder, ids)  # (L, B, H, 2p, 2p)
        queries, rows = np.arange(period, 2 * period), np.arange(1, 2 * period)
        logged = summary.last["periods"][str(period)]
        np.testing.assert_allclose(logged["induction"], weights[..., queries, queries - period + 1]
                                   .mean(axis=(1, 3)), atol=1e-5, rtol=0)
        np.testing.assert_allclose(logged["previous_token"], weights[..., rows, rows - 1]
                                   .mean(axis=(1, 3)), atol=1e-5, rtol=0)
    assert max(max(row) for row in summary.last["periods"]["16"]["induction"]) > 0.9  # sharp
