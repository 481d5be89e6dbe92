"""The generation config is read as transformers reads it (generation_config.json, else
config.json's generation keys), and decoder-only `generate` applies the same logits
processors (one module, `analyses.decoding`) with the ids of transformers' generate."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from helpers import make_family_checkpoint
from seq2seq_checkpoints import SOURCE, make_bart

from attnviz.analyses.attention import encode_text, load_model
from attnviz.analyses.generation import generate
from attnviz.analyses.seq2seq import generate_seq2seq
from attnviz.core.config import ModelConfig

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_family_checkpoint(tmp_path_factory.mktemp("gen") / "llama", "llama", std=0.2)


def with_generation_config(folder, settings: dict):
    path = folder / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **settings}))
    return folder


def transformers_ids(folder, prompt_ids, n, **kwargs):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        ids = torch.tensor([prompt_ids])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                             do_sample=False, **kwargs)
    return out[0, len(prompt_ids):].tolist()


@pytest.mark.parametrize("settings", [
    {"repetition_penalty": 1.8},
    {"no_repeat_ngram_size": 1},
    {"bad_words_ids": "first", "repetition_penalty": 1.3},
    {"min_new_tokens": 10, "eos_token_id": "third"},
    {"min_length": "prompt+8", "eos_token_id": "third", "forced_eos_token_id": "fifth"},
], ids=["repetition", "no-repeat-ngram", "bad-words", "min-new-tokens", "min-length-forced-eos"])
def test_decoder_only_generate_applies_the_generation_config(llama, tmp_path, settings):
    import shutil

    folder = tmp_path / "llama"
    shutil.copytree(llama, folder)
    model = load_model(ModelConfig(), str(folder))
    prompt = encode_text(model, PROMPT, False)
    plain = generate(model, prompt, 12, ignore_eos=True).new_ids
    named = {"first": [[plain[0]], [plain[1], plain[2]]], "third": plain[2],
             "fifth": next(t for t in plain[3:] if t not in plain[:3]),
             "prompt+8": len(prompt) + 8}
    settings = {k: named.get(v, v) if isinstance(v, str) else v for k, v in settings.items()}
    # what the end-of-sequence token alone would give: the processors must change it
    baseline = generate(model, prompt, 12, eos_token_id=settings.get("eos_token_id")).new_ids
    with_generation_config(folder, settings)
    model = load_model(ModelConfig(), str(folder))
    ours = generate(model, prompt, 12)
    assert ours.new_ids == transformers_ids(folder, prompt, 12)
    assert ours.new_ids != baseline
    assert ours.generation["source"].endswith("generation_config.json")


def test_decoder_only_num_beams_is_refused_and_the_files_is_not_applied(cli, llama, tmp_path):
    import shutil

    folder = tmp_path / "llama"
    shutil.copytree(llama, folder)
    result = cli("generate", PROMPT, "--weights", folder, "--num-beams", 2, "-n", 3)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --num-beams: beam search is for encoder–decoder")
    with_generation_config(folder, {"num_beams": 3})
    result = cli("generate", PROMPT, "--weights", folder, "-n", 3, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert "num_beams not applied" in result.stderr
    model = load_model(ModelConfig(), str(folder))
    prompt = encode_text(model, PROMPT, False)
    written = [step["id"] for step in json.loads(result.stdout)["generated"]]
    assert written == transformers_ids(folder, prompt, 3, num_beams=1)


def test_without_generation_config_json_config_json_generation_keys_apply(tmp_path):
    """As transformers: no generation_config.json, and config.json's num_beams,
    no_repeat_ngram_size and forced_bos_token_id apply (BART's older checkpoints)."""
    folder = make_bart(tmp_path / "bart")
    (folder / "generation_config.json").unlink()
    raw = json.loads((folder / "config.json").read_text())
    raw.update({"num_beams": 3, "no_repeat_ngram_size": 1, "forced_bos_token_id": 7,
                "max_length": 8})
    (folder / "config.json").write_text(json.dumps(raw))
    model = load_model(ModelConfig(), str(folder), seq2seq=True)
    source = model.tokenizer.encode(SOURCE)
    ours = generate_seq2seq(model, source)
    reference = transformers.AutoModelForSeq2SeqLM.from_pretrained(
        folder, attn_implementation="eager").eval()
    with torch.no_grad():
        expected = reference.generate(torch.tensor([source]))[0].tolist()
    assert [ours.start_id, *ours.new_ids] == expected
    assert ours.num_beams == 3 and ours.new_ids[0] == 7 and len(set(ours.new_ids)) == 7
    assert ours.generation["source"].endswith("config.json")
