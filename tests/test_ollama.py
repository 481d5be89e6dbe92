"""``--weights ollama:NAME[:TAG]``: Ollama's local store read as Ollama writes it (manifests and
content-addressed blobs), never a server."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from attnviz.core.errors import InputError
from attnviz.models import ollama

GGUF_BYTES = b"GGUF\x03\x00\x00\x00" + bytes(64)  # a stand-in blob: these tests resolve, not read


def add_model(store: Path, name: str, tag: str, data: bytes = GGUF_BYTES,
              namespace: str = "library", registry: str = "registry.ollama.ai") -> Path:
    """A pulled model as Ollama stores it: the blob under its digest, and a manifest."""
    digest = hashlib.sha256(data).hexdigest()
    blob = store / "blobs" / f"sha256-{digest}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    manifest = {"schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": "sha256:" + "0" * 64, "size": 2},
                "layers": [{"mediaType": "application/vnd.ollama.image.model",
                            "digest": f"sha256:{digest}", "size": len(data)},
                           {"mediaType": "application/vnd.ollama.image.template",
                            "digest": "sha256:" + "1" * 64, "size": 10}]}
    path = store / "manifests" / registry / namespace / name / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return blob


@pytest.fixture
def store(tmp_path, monkeypatch):
    folder = tmp_path / "ollama-models"
    folder.mkdir()
    monkeypatch.setenv("OLLAMA_MODELS", str(folder))
    return folder


@pytest.mark.parametrize("name, parsed", [
    ("ollama:llama3.2", ("registry.ollama.ai", "library", "llama3.2", "latest")),
    ("ollama:llama3.2:1b", ("registry.ollama.ai", "library", "llama3.2", "1b")),
    ("ollama:someone/smollm2:135m-q4_1", ("registry.ollama.ai", "someone", "smollm2", "135m-q4_1")),
    ("ollama:hf.co/org/model-GGUF:Q8_0", ("hf.co", "org", "model-GGUF", "Q8_0")),
])
def test_names_as_ollama_writes_them(name, parsed):
    assert ollama.parse_name(name) == parsed


@pytest.mark.parametrize("name", ["ollama:", "ollama:a/b/c/d", "ollama:../x", "ollama:a:b:c",
                                  "ollama:/abs"])
def test_bad_names_are_refused(name):
    with pytest.raises(InputError, match="not an Ollama model name"):
        ollama.parse_name(name)


def test_the_model_layer_of_the_manifest_is_the_blob(store):
    blob = add_model(store, "smollm2", "135m")
    other = add_model(store, "smollm2", "latest", GGUF_BYTES + b"other")
    assert ollama.locate("ollama:smollm2:135m") == blob
    assert ollama.locate("ollama:smollm2") == other
    named = add_model(store, "tiny", "q8", GGUF_BYTES + b"ns", namespace="someone")
    assert ollama.locate("ollama:someone/tiny:q8") == named


def test_a_missing_name_lists_what_is_installed(store):
    add_model(store, "smollm2", "135m")
    add_model(store, "tiny", "q8", GGUF_BYTES + b"ns", namespace="someone")
    add_model(store, "model", "Q4_K_M", GGUF_BYTES + b"hf", namespace="org", registry="hf.co")
    with pytest.raises(InputError) as caught:
        ollama.locate("ollama:llama3.2:1b")
    assert str(caught.value) == (
        f"--weights ollama:llama3.2:1b: not in Ollama's store {store}; installed: "
        "hf.co/org/model:Q4_K_M, smollm2:135m, someone/tiny:q8")


def test_an_empty_store_says_so(store):
    with pytest.raises(InputError, match="it holds no model .OLLAMA_MODELS names another store"):
        ollama.locate("ollama:smollm2")


@pytest.mark.parametrize("manifest", ["not json {", "[]", '{"layers": 3}', "{}"])
def test_a_manifest_that_is_not_one_is_refused(store, manifest):
    add_model(store, "smollm2", "latest")
    (store / "manifests/registry.ollama.ai/library/smollm2/latest").write_text(manifest)
    with pytest.raises(InputError, match="is not an Ollama manifest"):
        ollama.locate("ollama:smollm2")


def test_a_manifest_without_a_model_layer_or_its_blob_is_refused(store):
    blob = add_model(store, "smollm2", "latest")
    path = store / "manifests/registry.ollama.ai/library/smollm2/latest"
    manifest = json.loads(path.read_text())
    blob.unlink()
    with pytest.raises(InputError, match="which is missing .pull the model again"):
        ollama.locate("ollama:smollm2")
    manifest["layers"] = manifest["layers"][1:]
    path.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="names no model layer"):
        ollama.locate("ollama:smollm2")


def test_the_default_store_is_in_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ollama.models_folder() == tmp_path / ".ollama" / "models"
