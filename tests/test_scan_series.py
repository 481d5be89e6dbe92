"""`attnviz scan` across checkpoints: every checkpoint's rows equal a scan with it alone,
the changes and summaries follow from them, Hub revisions download side by side (stand-in
Hub on 127.0.0.1), pictures and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import make_hf_checkpoint
from hub_server import HubServer, Repo

from attnviz.analyses import scan_series
from attnviz.cli import app

PROMPTS = ["When Mary and John went to the store, John gave a drink to",
           "The cat sat on the mat and then the cat sat on the mat again",
           "one two three four five one two three four five"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """Three checkpoints of one shape, named as `attnviz train` names its snapshots."""
    folder = tmp_path_factory.mktemp("run")
    for i, step in enumerate((0, 500, 2000)):
        make_hf_checkpoint(folder / f"step-{step:06d}", n_layer=2, n_head=4, n_embd=32, seed=i)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def scan_json(runner, *args) -> dict:
    done = runner.invoke(app, ["scan", *map(str, args), "--format", "json", "-q"])
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout)


def test_every_checkpoint_equals_a_scan_with_it_alone(runner, run_folder, corpus):
    steps = sorted(run_folder.iterdir())
    weights = [a for p in steps for a in ("--weights", p)]
    found = scan_json(runner, *weights, "--file", corpus, "--layer", "all", "--induction")
    assert [c["checkpoint"] for c in found["checkpoints"]] == [str(p) for p in steps]
    assert [c["step"] for c in found["checkpoints"]] == [0, 500, 2000]
    singles = [scan_json(runner, "--weights", p, "--file", corpus, "--layer", "all",
                         "--induction") for p in steps]
    for checkpoint, single in zip(found["checkpoints"], singles):
        assert checkpoint["heads"] == single["heads"]
        assert checkpoint["top"] == single["top"]
        assert checkpoint["prompts"] == 3 and checkpoint["tokens"] == single["tokens"]
    # what changed, from the single scans' numbers
    first = np.array([r["induction_head_mean"] for r in singles[0]["heads"]])
    last = np.array([r["induction_head_mean"] for r in singles[-1]["heads"]])
    change = last - first
    expected = np.argsort(-np.abs(change), kind="stable")[:5]
    changes = found["changes"]["induction_head"]
    assert [(c["layer"], c["head"]) for c in changes] == [(i // 4, i % 4) for i in expected]
    assert [c["change"] for c in changes] == pytest.approx(change[expected].tolist(), abs=1e-12)
    assert found["same_shape"] is True


def test_a_glob_quoted_or_spread_by_the_shell_names_the_same_checkpoints(runner, run_folder,
                                                                         corpus):
    steps = [str(p) for p in sorted(run_folder.iterdir())]
    quoted = scan_json(runner, "--weights", f"{run_folder}/step-*", "--file", corpus)
    spread = scan_json(runner, "--weights", *steps, "--file", corpus)  # what bash passes
    assert [c["checkpoint"] for c in quoted["checkpoints"]] == steps
    assert quoted == spread


def test_csv_has_a_row_per_checkpoint_and_head(runner, run_folder, corpus):
    import csv
    import io

    done = runner.invoke(app, ["scan", "--weights", f"{run_folder}/step-*", "--file",
                               str(corpus), "--layer", "all", "--format", "csv", "-q"])
    assert done.exit_code == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(rows) == 3 * 2 * 4
    assert list(rows[0])[:4] == ["checkpoint", "step", "layer", "head"]
    assert [r["step"] for r in rows[::8]] == ["0", "500", "2000"]


def test_plots_small_multiples_and_lines(runner, run_folder, corpus, tmp_path):
    from PIL import Image

    out = tmp_path / "maps"
    done = runner.invoke(app, ["scan", "--weights", f"{run_folder}/step-*", "--file",
                               str(corpus), "--layer", "all", "--plot", str(out), "-q"])
    assert done.exit_code == 0, done.stderr
    names = sorted(p.name for p in out.glob("*.png"))
    detectors = ["duplicate_token_head", "first_token", "induction_head", "previous_token_head"]
    assert names == sorted([f"{d}.png" for d in detectors]
                           + [f"{d}_over_checkpoints.png" for d in detectors])
    for path in out.glob("*.png"):
        with Image.open(path) as image:
            assert image.width > 400 and image.height > 200
            assert len(np.unique(np.asarray(image.convert("L")))) > 20  # drawn, not blank


def test_checkpoints_of_different_shapes_are_compared_by_summaries(runner, run_folder, corpus,
                                                                    tmp_path):
    other = make_hf_checkpoint(tmp_path / "other", n_layer=3, n_head=2, n_embd=32, seed=7)
    first = sorted(run_folder.iterdir())[0]
    done = runner.invoke(app, ["scan", "--weights", str(first), "--weights", str(other),
                               "--file", str(corpus), "--layer", "all", "--format", "json"])
    assert done.exit_code == 0, done.stderr
    assert "differ in shape" in done.stderr and "summaries" in done.stderr
    found = json.loads(done.stdout)
    assert found["same_shape"] is False and "changes" not in found
    for checkpoint in found["checkpoints"]:
        heads = checkpoint["heads"]
        for entry in checkpoint["summary"]["induction_head"]["best_per_layer"]:
            layer_rows = [r for r in heads if r["layer"] == entry["layer"]]
            best = max(layer_rows, key=lambda r: r["induction_head_mean"])
            assert (entry["head"], entry["score"]) == (best["head"], best["induction_head_mean"])
        over = sum(r["first_token_mean"] >= 0.5 for r in heads)
        assert checkpoint["summary"]["first_token"]["over_threshold"] == over


def test_revisions_download_side_by_side_and_match_single_scans(tmp_path, corpus):
    folders = {rev: make_hf_checkpoint(tmp_path / rev, n_layer=2, n_head=2, n_embd=32, seed=i)
               for i, rev in enumerate(("step1000", "step2000", "step3000"))}
    main = Repo.from_folder(folders["step3000"],
                            revisions={r: Repo.from_folder(f) for r, f in folders.items()})
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_ENDPOINT": "", "HF_HOME": str(tmp_path / "hf-home")}

    def scan(*args):
        done = subprocess.run([sys.executable, "-m", "attnviz", "scan", *map(str, args),
                               "--file", str(corpus), "--layer", "all", "--format", "json"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    with HubServer({"org/pythia-tiny": main}) as hub:
        env["HF_ENDPOINT"] = hub.url
        found = scan("--weights", "org/pythia-tiny", "--revisions", "step1000:3000:1000")
        singles = [scan("--weights", f"org/pythia-tiny@{rev}") for rev in folders]
    assert [c["step"] for c in found["checkpoints"]] == [1000, 2000, 3000]
    assert [c["config"]["revision"] for c in found["checkpoints"]] == list(folders)
    for checkpoint, single in zip(found["checkpoints"], singles):
        assert checkpoint["heads"] == single["heads"]
    snapshots = list((tmp_path / "hf-home" / "hub" / "models--org--pythia-tiny" /
                      "snapshots").iterdir())
    assert len(snapshots) == 3  # one folder per revision, side by side


def test_the_corpus_is_tokenized_once_per_tokenizer(run_folder):
    from attnviz.analyses.attention import encode_text, load_model
    from attnviz.analyses.scanning import scan, tokenize_corpus
    from attnviz.core.config import ModelConfig

    calls = []

    def tokenize(model):
        calls.append(model)
        return tokenize_corpus(list(enumerate(PROMPTS, 1)), model.context_length,
                               encode=lambda text: encode_text(model, text))

    names = [str(p) for p in sorted(run_folder.iterdir())]
    series = scan_series.scan_series(names, lambda n: load_model(ModelConfig(), n), tokenize,
                                     lambda model, corpus: scan(model, corpus.prompts, [0, 1]))
    assert len(calls) == 1 and [c.step for c in series] == [0, 500, 2000]


@pytest.mark.parametrize("args, message", [
    (["--weights", "org/m", "--weights", "org/n", "--revisions", "step1"],
     "--revisions takes one --weights REPO"),
    (["--weights", "org/m@step1", "--revisions", "step2"], "without @revision"),
    (["--weights", "org/m", "--revisions", "step5:1:1"], "the range is empty"),
    (["--weights", "org/m", "--revisions", "a:b"], "a range is PREFIX START:STOP:STEP"),
    (["--weights", "x/step-*"], "the pattern matches no file or folder"),
])
def test_bad_checkpoint_lists_are_refused(runner, corpus, args, message):
    done = runner.invoke(app, ["scan", *args, "--file", str(corpus)])
    assert done.exit_code == 2 and message in done.stderr and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("Error:")


def test_a_checkpoint_that_cannot_be_read_stops_the_run_before_any_scan(runner, run_folder,
                                                                        corpus, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "gpt2", "n_layer": 2}')
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    first = sorted(run_folder.iterdir())[0]
    out = tmp_path / "maps"
    done = runner.invoke(app, ["scan", "--weights", str(first), "--weights", str(broken),
                               "--file", str(corpus), "--plot", str(out)])
    assert done.exit_code == 2, done.stderr
    assert str(broken) in done.stderr and "no checkpoint was scanned" in done.stderr
    assert done.stdout == "" and not out.exists()
    twice = runner.invoke(app, ["scan", "--weights", str(first), "--weights", str(first),
                                "--file", str(corpus)])
    assert twice.exit_code == 2 and "is given twice" in twice.stderr
    resumed = runner.invoke(app, ["scan", "--weights", str(first), "--weights", str(broken),
                                  "--file", str(corpus), "--per-prompt", str(tmp_path / "l.jsonl")])
    assert resumed.exit_code == 2 and "--per-prompt scans one checkpoint" in resumed.stderr


def test_step_of_names():
    assert scan_series.step_of("EleutherAI/pythia-160m@step143000") == 143000
    assert scan_series.step_of("run/step-000500/") == 500
    assert scan_series.step_of("out/checkpoint-1200") == 1200
    assert scan_series.step_of("models/gpt2") is None
    assert scan_series.step_of("org/m@main") is None
    assert scan_series.parse_revisions("step0:16:8,step100") == ["step0", "step8", "step16",
                                                                  "step100"]
