"""Scans that survive and split: a scan killed with SIGKILL and resumed equals an
uninterrupted one; shards merged equal one scan; runs of other scans are refused."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

WORDS = "the of and to in is was for on that with as by at from his it an were are".split()


def write_corpus(path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    lines = [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 30)))) for _ in range(n)]
    path.write_text("\n".join(lines) + "\n")


def scan_json(cli, *args):
    result = cli("scan", *args, "--format", "json", "-q")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def assert_same_aggregates(a: dict, b: dict, rtol: float = 1e-9) -> None:
    assert a["prompts"] == b["prompts"] and a["tokens"] == b["tokens"]
    assert len(a["heads"]) == len(b["heads"])
    for x, y in zip(a["heads"], b["heads"]):
        assert (x["layer"], x["head"], x["count"]) == (y["layer"], y["head"], y["count"])
        for key, value in x.items():
            if key.endswith(("_mean", "_std")):
                if value is None:
                    assert y[key] is None, key
                else:
                    assert y[key] == pytest.approx(value, rel=rtol, abs=1e-12), key


def test_kill_9_half_way_then_resume_equals_an_uninterrupted_run(cli, tmp_path):
    corpus = tmp_path / "corpus.txt"
    write_corpus(corpus, 600)
    common = ["--file", corpus, "--heads", "4", "--d-model", "32", "--batch-size", "4"]
    whole = scan_json(cli, *common)
    log = tmp_path / "each.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "attnviz", "scan", *map(str, common),
                             "--per-prompt", str(log), "--format", "json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill -9 once some prompts (not all) are logged
        if log.exists() and log.read_bytes().count(b"\n") > 40:
            break
        assert proc.poll() is None, "the scan ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    logged = log.read_bytes().count(b"\n") - 1
    assert 0 < logged < 600
    resumed = cli("scan", *common, "--per-prompt", log, "--resume", "--format", "json")
    assert resumed.exit_code == 0, resumed.stderr
    assert f"Resuming: {logged} of 600 prompts" in resumed.stderr
    assert_same_aggregates(whole, json.loads(resumed.stdout))
    header, *records = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(r["index"] for r in records) == list(range(600))  # each prompt once
    assert header["fingerprint"]["corpus"]["prompts"] == 600


def test_a_log_cut_mid_line_is_resumed_from_its_last_complete_line(cli, tmp_path):
    corpus = tmp_path / "corpus.txt"
    write_corpus(corpus, 30, seed=2)
    common = ["--file", corpus, "--heads", "4", "--d-model", "32"]
    log = tmp_path / "each.jsonl"
    whole = scan_json(cli, *common, "--per-prompt", log)
    data = log.read_bytes()
    cut = data.index(b"\n", len(data) // 2) + 30  # a crash half-way through a line
    log.write_bytes(data[:cut])
    assert_same_aggregates(whole, scan_json(cli, *common, "--per-prompt", log, "--resume"))
    assert log.read_bytes().count(b"\n") == 31
    log.write_bytes(data[:20])  # killed before the fingerprint line was whole: start afresh
    assert_same_aggregates(whole, scan_json(cli, *common, "--per-prompt", log, "--resume"))


@pytest.mark.parametrize("change, named", [
    (["--exclude-first"], "options.exclude_first"),
    (["--seed", "7"], "model.seed"),
    (["--limit", "20"], "corpus"),
])
def test_resume_refuses_the_log_of_another_scan(cli, tmp_path, change, named):
    corpus = tmp_path / "corpus.txt"
    write_corpus(corpus, 30, seed=3)
    common = ["--file", corpus, "--heads", "4", "--d-model", "32"]
    log = tmp_path / "each.jsonl"
    scan_json(cli, *common, "--per-prompt", log)
    before = log.read_bytes()
    result = cli("scan", *common, *change, "--per-prompt", log, "--resume")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --resume:") and named in result.stderr
    assert log.read_bytes() == before  # nothing overwritten


def test_three_shards_merged_equal_one_scan(cli, tmp_path):
    corpus = tmp_path / "corpus.txt"
    write_corpus(corpus, 1400, seed=4)  # 6 slices of 256
    common = ["--file", corpus, "--heads", "4", "--d-model", "32", "--exclude-first"]
    whole = scan_json(cli, *common, "--top", "3")
    parts = []
    for k in range(3):
        part = tmp_path / f"part-{k}.json"
        shard = scan_json(cli, *common, "--shard", f"{k}/3", "--partial", part)
        assert shard["shard"] == {"index": k, "count": 3}
        parts.append(part)
    counts = [json.loads(p.read_text())["prompts"] for p in parts]
    assert sum(counts) == 1400 and min(counts) > 0
    merged = cli("scan-merge", *parts[::-1], "--format", "json", "--top", "3")
    assert merged.exit_code == 0, merged.stderr
    document = json.loads(merged.stdout)
    assert_same_aggregates(whole, document)
    for name, ranked in whole["top"].items():  # the same heads ranked, in the same order
        assert [(e["layer"], e["head"]) for e in document["top"][name]] == [
            (e["layer"], e["head"]) for e in ranked]
    assert document["options"] == whole["options"] and document["merged_shards"] == 3
    csv = cli("scan-merge", *parts, "--format", "csv")
    assert csv.stdout.splitlines()[0] == cli("scan", *common, "--format", "csv").stdout.splitlines()[0]


def test_merge_refuses_missing_repeated_and_foreign_partials(cli, tmp_path):
    corpus = tmp_path / "corpus.txt"
    write_corpus(corpus, 300, seed=5)
    common = ["--file", corpus, "--heads", "4", "--d-model", "32", "-q"]
    for k in range(2):
        assert cli("scan", *common, "--shard", f"{k}/2", "--partial", tmp_path / f"p{k}.json").exit_code == 0
    assert cli("scan", *common, "--seed", "9", "--shard", "1/2",
               "--partial", tmp_path / "other.json").exit_code == 0
    (tmp_path / "broken.json").write_text('{"format": "attnviz-scan-partial", "stats": {')
    cases = [
        ([tmp_path / "p0.json"], "shard(s) 1/2 missing"),
        ([tmp_path / "p0.json", tmp_path / "p0.json"], "shard 0/2 is given twice"),
        ([tmp_path / "p0.json", tmp_path / "other.json"], "model.seed"),
        ([tmp_path / "p0.json", tmp_path / "broken.json"], "not a readable scan partial"),
        ([], "nothing to merge"),
    ]
    for files, message in cases:
        result = cli("scan-merge", *files)
        assert result.exit_code == 2, (files, result.stdout)
        assert result.stderr.startswith("Error:") and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--shard", "3/3"], "--shard 3/3 is out of range"),
    (["--shard", "one/two"], "--shard takes K/N"),
    (["--shard", "1/8"], "holds no prompts"),
    (["--resume"], "--resume goes on from a --per-prompt log"),
])
def test_bad_shard_and_resume_options(cli, tmp_path, args, message):
    corpus = tmp_path / "corpus.txt"
    write_corpus(corpus, 100, seed=6)
    result = cli("scan", "--file", corpus, "--heads", "4", "--d-model", "32", *args,
                 "--partial", tmp_path / "p.json")
    assert result.exit_code == 2 and message in result.stderr
    assert not (tmp_path / "p.json").exists()


def test_dask_local_cluster_equals_one_scan(tmp_path):
    """Two worker processes of a real dask.distributed LocalCluster, each scanning shards of
    the corpus with a checkpoint, merged: one scan of the whole corpus."""
    from dask.distributed import Client, LocalCluster
    from helpers import make_hf_checkpoint

    import attnviz
    from attnviz.analyses import scanning as scan
    from attnviz.analyses.attention import encode_text, load_model
    from attnviz.core.config import ModelConfig

    checkpoint = str(make_hf_checkpoint(tmp_path / "gpt2", 2, 4, 32))
    rng = np.random.default_rng(7)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 20)))) for _ in range(700)]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=None) as cluster, Client(cluster) as client:
        merged = attnviz.scan_distributed(texts, checkpoint, client=client, shards=3, layer="all",
                                          exclude_first=True)
    model = load_model(ModelConfig(), checkpoint)
    corpus = scan.tokenize_corpus(list(enumerate(texts, start=1)), model.context_length,
                                  encode=lambda t: encode_text(model, t))
    whole = scan.scan(model, corpus.prompts, [0, 1], exclude_first=True)
    assert merged.n_prompts == whole.n_prompts == 700 and merged.n_tokens == whole.n_tokens
    for name in scan.COLUMNS:
        np.testing.assert_array_equal(merged.count[name], whole.count[name])
        np.testing.assert_allclose(merged.mean[name], whole.mean[name], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(merged.std[name], whole.std[name], rtol=1e-9, atol=1e-12)


def test_device_auto_picks_the_cpu_here_and_says_so(cli):
    import torch

    document = scan_json(cli, "a b c a b c", "the cat sat on the mat", "--heads", "4",
                         "--d-model", "32", "--device", "auto")
    assert document["config"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _has_cuda(), reason="no CUDA device on this machine: the GPU path "
                    "of scan is exercised where one exists")
def test_scan_on_cuda_equals_the_cpu(cli, tmp_path):
    corpus = tmp_path / "corpus.txt"
    write_corpus(corpus, 50, seed=8)
    common = ["--file", corpus, "--heads", "4", "--d-model", "32"]
    cpu = scan_json(cli, *common)
    gpu = scan_json(cli, *common, "--device", "cuda")
    assert gpu["config"]["device"].startswith("cuda")
    assert_same_aggregates(cpu, gpu, rtol=1e-4)
