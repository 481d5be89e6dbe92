"""`--weights REPO`: Hub repo ids resolved from the cache or downloaded with huggingface_hub,
against a real HTTP server on 127.0.0.1 (tests/hub_server.py) — not a mock of the library.
Each run is a fresh process, as huggingface_hub reads HF_* variables at import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers  # noqa: E402 - a test extra; CI installs it
from helpers import make_hf_checkpoint
from hub_server import HubServer, Repo

TEXT = "When Mary and John went to the store, John gave a drink to"


def attnviz(*args, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnviz", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def hub_env(tmp_path: Path, url: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf-home"), **extra}


def transformers_attentions(folder: Path, token_ids: list[int]) -> np.ndarray:
    model = transformers.GPT2Model.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(torch.tensor([token_ids]), output_attentions=True)
    return np.stack([a[0].float().numpy() for a in out.attentions])  # (L, H, T, T)


def snapshot_files(tmp_path: Path, repo_dir: str) -> list[Path]:
    return sorted((tmp_path / "hf-home" / "hub" / repo_dir / "snapshots").glob("*/*"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp("tiny"), n_layer=2, n_head=2, n_embd=32, seed=3)


def test_first_run_downloads_then_works_offline_with_no_request(tmp_path, tiny):
    with HubServer({"tiny/gpt2": Repo.from_folder(tiny)}) as hub:
        env = hub_env(tmp_path, hub.url)
        out = tmp_path / "export.npz"
        first = attnviz("export", TEXT, "--weights", "tiny/gpt2", "--layer", "all", "-o", out, env=env)
        assert first.returncode == 0, first.stderr
        assert "Downloaded tiny/gpt2" in first.stderr
        downloaded = {path for _, path in hub.requests if "/resolve/" in path}
        assert {p.rsplit("/", 1)[1] for p in downloaded} == {"config.json", "model.safetensors"}
        before = len(hub.requests)
        for extra in ({"HF_HUB_OFFLINE": "1"}, {}):  # offline, and online with a complete cache
            again = attnviz("export", TEXT, "--weights", "tiny/gpt2", "--layer", "all", "-o",
                            tmp_path / "again.npz", env={**env, **extra})
            assert again.returncode == 0, again.stderr
            assert "Downloaded" not in again.stderr
        assert len(hub.requests) == before  # not one request after the first run
    files = snapshot_files(tmp_path, "models--tiny--gpt2")
    assert [f.name for f in files] == ["config.json", "model.safetensors"]
    data = np.load(out)
    expected = transformers_attentions(files[0].parent, data["token_ids"].tolist())
    np.testing.assert_allclose(data["weights"], expected, atol=1e-5)
    # the second run's numbers are the first run's
    np.testing.assert_array_equal(np.load(tmp_path / "again.npz")["weights"], data["weights"])


def test_sharded_fp16_checkpoint_downloads_only_what_it_needs(tmp_path):
    folder = tmp_path / "sharded"
    config = transformers.GPT2Config(n_layer=3, n_head=4, n_embd=64, n_positions=64)
    torch.manual_seed(0)
    model = transformers.GPT2Model(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln_" not in name:
                param.normal_(0.0, 0.3)
    model.half().save_pretrained(folder, max_shard_size="1MB")
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) > 1 and (folder / "model.safetensors.index.json").is_file()
    files = Repo.from_folder(folder).files | {"README.md": b"# a model", "pytorch_model.bin": b"x"}
    with HubServer({"org/sharded": Repo(files)}) as hub:
        result = attnviz("compare-heads", TEXT, "--weights", "org/sharded", "--layer", "all",
                         "--format", "json", env=hub_env(tmp_path, hub.url))
        assert result.returncode == 0, result.stderr
        fetched = {p.rsplit("/", 1)[1] for m, p in hub.requests if m == "GET" and "/resolve/" in p}
    assert fetched == {"config.json", "model.safetensors.index.json", *shards}
    doc = json.loads(result.stdout)
    assert len(doc["heads"]) == 12
    # fp16 weights are upcast to float32: the same numbers as transformers in float32
    snapshot = snapshot_files(tmp_path, "models--org--sharded")[0].parent
    ids = [t["id"] for t in doc["tokens"]]
    fp32 = transformers.GPT2Model.from_pretrained(snapshot, attn_implementation="eager",
                                                  dtype=torch.float32).eval()
    with torch.no_grad():
        expected = np.stack([a[0].numpy() for a in fp32(torch.tensor([ids]),
                                                        output_attentions=True).attentions])
    from attnviz.analyses.stats import head_rows

    np.testing.assert_allclose([r["entropy"] for r in doc["heads"]],
                               [r["entropy"] for r in head_rows(expected, [0, 1, 2])], atol=1e-4)


def test_revision_pin_and_org_names(tmp_path, tiny):
    repo = Repo.from_folder(tiny, commit="a" * 40)
    with HubServer({"openai-community/gpt2": repo}) as hub:
        env = hub_env(tmp_path, hub.url)
        ok = attnviz("info", "--weights", f"openai-community/gpt2@{'a' * 40}", "--format", "json", env=env)
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["config"]["n_layers"] == 2
        bad = attnviz("info", "--weights", "openai-community/gpt2@nope", env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("Error: ") and "revision" in bad.stderr


@pytest.mark.parametrize("case, code, words", [
    ("bin-only", 2, ["pytorch_model.bin", "safetensors", "run code"]),
    ("missing", 2, ["no such repo"]),
    ("gated", 2, ["gated", "HF_TOKEN"]),
    ("unsupported-family", 2, ["model_type 'xlnet' is not supported", "llama", "qwen3"]),
    ("offline-not-cached", 2, ["offline", "not in the local Hugging Face cache"]),
])
def test_hub_errors_are_one_line_and_write_nothing(tmp_path, tiny, case, code, words):
    files = Repo.from_folder(tiny).files
    repos = {
        "bin-only": Repo({"config.json": files["config.json"], "pytorch_model.bin": b"pickle"}),
        "gated": Repo(files, gated=True),
        "unsupported-family": Repo({**files, "config.json": json.dumps({"model_type": "xlnet"}).encode()}),
        "offline-not-cached": Repo(files),
    }
    with HubServer({"org/model": repos[case]} if case in repos else {}) as hub:
        extra = ["--offline"] if case == "offline-not-cached" else []
        result = attnviz("heatmap", TEXT, "--weights", "org/model", "--out", tmp_path / "out",
                         *extra, env=hub_env(tmp_path, hub.url))
    assert result.returncode == code, result.stderr
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr
    assert not (tmp_path / "out").exists()
    if case == "bin-only":
        assert not snapshot_files(tmp_path, "models--org--model")  # the pickle was never fetched


def test_server_gone_is_a_runtime_error_naming_the_endpoint(tmp_path, tiny):
    hub = HubServer({})
    url = hub.url
    hub.httpd.server_close()  # nothing listens on that port any more
    result = attnviz("tokens", "x", env=hub_env(tmp_path, url))  # tokens never needs the Hub
    assert result.returncode == 0
    result = attnviz("info", "--weights", "tiny/gpt2", env=hub_env(tmp_path, url))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("Error: ") and url in result.stderr and "--offline" in result.stderr


def test_interrupted_download_leaves_no_broken_file_and_the_next_run_recovers(tmp_path, tiny):
    repo = Repo.from_folder(tiny)
    size = len(repo.files["model.safetensors"])
    with HubServer({"tiny/gpt2": repo}, truncate={"model.safetensors": size // 3}) as hub:
        env = hub_env(tmp_path, hub.url, HF_HUB_DOWNLOAD_TIMEOUT="5", HF_HUB_ETAG_TIMEOUT="5")
        broken = attnviz("info", "--weights", "tiny/gpt2", env=env)
        assert broken.returncode != 0 and broken.stderr.startswith("Error: ")
        assert "Traceback" not in broken.stderr
        assert "model.safetensors" not in [f.name for f in snapshot_files(tmp_path, "models--tiny--gpt2")]
        hub.truncate.clear()
        fixed = attnviz("info", "--weights", "tiny/gpt2", "--format", "json", env=env)
    assert fixed.returncode == 0, fixed.stderr
    blob = snapshot_files(tmp_path, "models--tiny--gpt2")[-1]
    assert blob.name == "model.safetensors" and blob.read_bytes() == repo.files["model.safetensors"]
