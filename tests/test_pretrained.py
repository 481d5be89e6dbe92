"""Real GPT-2 checkpoints: our forward pass against Hugging Face transformers' GPT2Model on
small random checkpoints it saved itself, and safe, strict loading."""

import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch
import transformers  # a test extra; CI installs it
from helpers import SHORT_TEXT, make_hf_checkpoint

from attnviz import models as checkpoint
from attnviz.analyses.attention import analyze, analyze_ids
from attnviz.core.errors import InputError
from attnviz.text.gpt2_bpe import encode

TEXT = "The cat sat on the mat. The cat sat on the mat again, and again."


def hf_attentions(folder, token_ids):
    model = transformers.GPT2Model.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(torch.tensor([token_ids]), output_attentions=True)
    return np.stack([a[0].numpy() for a in out.attentions])  # (L, H, T, T)


@pytest.mark.parametrize(
    "n_layer, n_head, n_embd, lm_head, safe",
    [(3, 4, 64, False, True), (2, 2, 32, True, True), (4, 8, 128, False, False), (1, 1, 16, True, False)],
)
def test_every_layer_matches_transformers(tmp_path, n_layer, n_head, n_embd, lm_head, safe):
    folder = make_hf_checkpoint(tmp_path, n_layer, n_head, n_embd, seed=n_layer, lm_head=lm_head, safe=safe)
    result = analyze(TEXT, weights=str(folder), layer="all")
    expected = hf_attentions(folder, result.token_ids)
    assert result.weights.shape == expected.shape == (n_layer, n_head, result.n_tokens, result.n_tokens)
    np.testing.assert_allclose(result.weights, expected, atol=1e-5)
    uniform = np.tril(np.ones_like(expected[0, 0])) / np.arange(1, result.n_tokens + 1)[:, None]
    assert np.abs(expected - uniform).max() > 0.1  # sharp patterns: a demanding comparison


def test_single_layer_equals_the_same_layer_of_all(hf_checkpoint):
    everything = analyze(TEXT, weights=str(hf_checkpoint), layer="all")
    second = analyze(TEXT, weights=str(hf_checkpoint), layer=1)
    assert second.layers == [1]
    np.testing.assert_array_equal(second.weights[0], everything.weights[1])


def test_attn_input_is_ln1_of_the_residual_stream(hf_checkpoint):
    result = analyze(SHORT_TEXT, weights=str(hf_checkpoint), layer=2, heads=[0])
    model = transformers.GPT2Model.from_pretrained(hf_checkpoint, attn_implementation="eager").eval()
    with torch.no_grad():
        hidden = model(torch.tensor([result.token_ids]), output_hidden_states=True).hidden_states
        expected = model.h[2].ln_1(hidden[2])[0].numpy()
    np.testing.assert_allclose(result.attn_inputs[0], expected, atol=1e-5)


def test_single_safetensors_file_without_config(tmp_path):
    folder = make_hf_checkpoint(tmp_path / "ck", 2, 2, 128)  # head size 64, as GPT-2
    lone = tmp_path / "lone" / "weights.safetensors"
    lone.parent.mkdir()
    lone.write_bytes((folder / "model.safetensors").read_bytes())
    result = analyze(TEXT, weights=str(lone), layer="all")
    np.testing.assert_allclose(result.weights, hf_attentions(folder, result.token_ids), atol=1e-5)
    assert result.config["n_heads"] == 2


def test_bare_name_is_found_in_a_cache_transformers_filled(tmp_path, hf_checkpoint):
    """The standard cache layout (models--gpt2/refs/main -> snapshots/<commit>), as
    transformers leaves it: found offline, without a server."""
    import subprocess
    import sys

    snapshot = tmp_path / "hub" / "models--gpt2" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((hf_checkpoint / name).read_bytes())
    (tmp_path / "hub" / "models--gpt2" / "refs").mkdir()
    (tmp_path / "hub" / "models--gpt2" / "refs" / "main").write_text("abc123")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}

    def info(cache):
        return subprocess.run([sys.executable, "-m", "attnviz", "info", "--weights", "gpt2",
                               "--offline", "--format", "json"], capture_output=True, text=True,
                              cwd=tmp_path, env={**env, "HF_HUB_CACHE": str(cache)})

    found = info(tmp_path / "hub")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["config"]["weights"] == str(snapshot / "model.safetensors")
    missing = info(tmp_path / "empty")
    assert missing.returncode == 2 and "not in the local Hugging Face cache" in missing.stderr


def test_induction_heads_are_scored(hf_checkpoint):
    from attnviz.analyses.induction import induction_scores

    scores = induction_scores(weights=str(hf_checkpoint), layer="all", period=20)
    assert scores.shape == (3, 4)
    assert ((0 <= scores) & (scores <= 1)).all()


# --- hostile and broken checkpoints -----------------------------------------------------

class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "evil"
    folder.mkdir()
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"wte.weight": RunsCode()}, f)
    with pytest.raises(InputError, match="refusing to load"):
        checkpoint.load(str(folder))
    assert not (tmp_path / "pwned-by-pickle").exists()


@pytest.mark.parametrize("damage", ["truncate", "random", "empty", "header"])
def test_broken_safetensors_give_a_clear_error(tmp_path, hf_checkpoint, damage):
    data = (hf_checkpoint / "model.safetensors").read_bytes()
    broken = {
        "truncate": data[: len(data) // 2],
        "random": np.random.default_rng(0).bytes(5000),
        "empty": b"",
        "header": struct.pack("<Q", 20) + b"{not json at all!!!}" + data[28:],
    }[damage]
    path = tmp_path / "broken.safetensors"
    path.write_bytes(broken)
    with pytest.raises(InputError, match="not a valid safetensors file"):
        checkpoint.load(str(path))


def _rewrite(folder, tmp_path, edit_tensors=None, edit_config=None):
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    if edit_tensors:
        edit_tensors(tensors)
    if edit_config:
        edit_config(config)
    out = tmp_path / "edited"
    out.mkdir()
    save_file(tensors, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_config_that_lies_about_shapes_is_caught(tmp_path, hf_checkpoint):
    folder = _rewrite(hf_checkpoint, tmp_path, edit_config=lambda c: c.update(n_layer=12))
    with pytest.raises(InputError, match="n_layer=12 but the weights have 3"):
        checkpoint.load(str(folder))


def test_untied_config_without_its_output_head_is_refused(tmp_path, hf_checkpoint):
    # tie_word_embeddings: false names lm_head.weight as the unembedding; wte is not a stand-in
    folder = _rewrite(hf_checkpoint, tmp_path, edit_config=lambda c: c.update(tie_word_embeddings=False))
    with pytest.raises(InputError, match=r"tensor lm_head\.weight is missing"):
        checkpoint.load(str(folder))
    tied = checkpoint.load(str(hf_checkpoint))
    assert tied.spec.tied_embeddings is True


def test_missing_tensor_is_named(tmp_path, hf_checkpoint):
    folder = _rewrite(hf_checkpoint, tmp_path, edit_tensors=lambda t: t.pop("h.1.attn.c_attn.weight"))
    with pytest.raises(InputError, match=r"tensor h\.1\.attn\.c_attn\.weight is missing"):
        checkpoint.load(str(folder))


def test_wrong_shape_is_named(tmp_path, hf_checkpoint):
    def shrink(t):
        t["h.0.mlp.c_proj.bias"] = t["h.0.mlp.c_proj.bias"][:10].clone()

    folder = _rewrite(hf_checkpoint, tmp_path, edit_tensors=shrink)
    with pytest.raises(InputError, match=r"h\.0\.mlp\.c_proj\.bias has shape \(10,\)"):
        checkpoint.load(str(folder))


def test_vocabulary_must_be_gpt2s(tmp_path, hf_checkpoint):
    def shrink(t):
        t["wte.weight"] = t["wte.weight"][:1000].clone()

    folder = _rewrite(hf_checkpoint, tmp_path, edit_tensors=shrink,
                      edit_config=lambda c: c.update(vocab_size=1000))
    with pytest.raises(InputError, match="wte.weight has 1000 rows"):
        checkpoint.load(str(folder))


def test_vocabulary_of_its_own_with_the_tokenizer_beside_it(tmp_path):
    """A GPT-2-architecture model trained with another vocabulary (300 tokens) opens with
    the tokenizer.json beside it: tokens equal AutoTokenizer's, attention transformers'."""
    from helpers import write_bpe_tokenizer
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    folder = tmp_path / "own"
    torch.manual_seed(3)
    model = GPT2Model(GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=300))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln_" not in name:
                param.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    write_bpe_tokenizer(folder, vocab_size=300, bos=None, specials=("<|endoftext|>",))
    result = analyze(TEXT, weights=str(folder), layer="all")
    expected_ids = AutoTokenizer.from_pretrained(folder)(TEXT)["input_ids"]
    assert result.token_ids == expected_ids and max(expected_ids) >= 256  # merges, not bytes
    expected = hf_attentions(folder, expected_ids)
    np.testing.assert_allclose(result.weights, expected, atol=1e-5)
    assert np.abs(expected - np.tril(np.ones_like(expected[0, 0])) /
                  np.arange(1, len(expected_ids) + 1)[:, None]).max() > 0.1
    assert result.config["vocab_size"] == 300
    assert result.config["tokenizer"]["source"] == str(folder / "tokenizer.json")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(InputError, match="300 rows, not GPT-2's 50257.*no tokenizer.json"):
        checkpoint.load(str(folder))


def test_layer_out_of_range_names_the_range(hf_checkpoint):
    with pytest.raises(InputError, match=r"--layer 3 is out of range: the checkpoint has 3 layers \(0-2\)"):
        analyze_ids([1, 2], weights=str(hf_checkpoint), layer=3)


def test_text_longer_than_the_checkpoints_context(hf_checkpoint):
    with pytest.raises(InputError, match="longer than the context length 128"):
        analyze_ids(list(range(129)), weights=str(hf_checkpoint))


# --- the command line -------------------------------------------------------------------

def test_heatmap_layer_all_writes_per_layer_folders_and_a_model_view(cli, tmp_path, hf_checkpoint):
    out = tmp_path / "out"
    result = cli("heatmap", SHORT_TEXT, "--weights", hf_checkpoint, "--layer", "all", "--out", out,
                 "--json")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "layer_00", "layer_01", "layer_02", "model.png"]
    for layer in range(3):
        names = sorted(p.name for p in (out / f"layer_{layer:02d}").iterdir())
        assert names == [f"head_{h:02d}.png" for h in range(4)] + ["heads.png"]
    assert len(json.loads(result.stdout)["files"]) == 3 * 5 + 1


def test_compare_heads_pretrained_has_layer_and_induction_columns(cli, hf_checkpoint):
    result = cli("compare-heads", SHORT_TEXT, "--weights", hf_checkpoint, "--layer", "all",
                 "--induction", "--format", "json", "--similarity")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    expected = [(layer, h) for layer in range(3) for h in range(4)]
    assert [(r["layer"], r["head"]) for r in doc["heads"]] == expected
    assert all(0 <= r["induction"] <= 1 for r in doc["heads"])
    assert np.asarray(doc["similarity"]).shape == (3, 4, 4)


def test_export_layer_all(cli, tmp_path, hf_checkpoint):
    path = tmp_path / "all.npz"
    result = cli("export", SHORT_TEXT, "--weights", hf_checkpoint, "--layer", "all", "-o", path,
                 "--include-params")
    assert result.exit_code == 0, result.stderr
    data = np.load(path)
    assert data["weights"].shape == (3, 4, 6, 6)
    assert data["attn_input"].shape == (3, 6, 64)
    assert data["W_query"].shape == (3, 64, 64) and data["b_value"].shape == (3, 64)


def test_info_shows_the_checkpoint_config(cli, hf_checkpoint):
    doc = json.loads(cli("info", "--weights", hf_checkpoint, "--format", "json").stdout)
    assert doc["config"]["n_layers"] == 3 and doc["config"]["n_heads"] == 4
    assert doc["config"]["d_model"] == 64 and doc["config"]["vocab_size"] == 50257


def test_weights_errors_on_the_command_line(cli, tmp_path):
    result = cli("heatmap", SHORT_TEXT, "--weights", tmp_path / "missing", "--out", tmp_path / "o")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("Error: --weights") and len(result.stderr.splitlines()) == 1


def test_random_mode_sizes_are_ignored_with_a_warning(cli, hf_checkpoint):
    result = cli("compare-heads", SHORT_TEXT, "--weights", hf_checkpoint, "--heads", 3,
                 "--d-model", 30, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert "Warning: --d-model ignored" in result.stderr
    assert "Warning: --heads 3 ignored: config.json says n_head=4" in result.stderr
    assert len(json.loads(result.stdout)["heads"]) == 4  # the checkpoint's heads
    quiet = cli("compare-heads", SHORT_TEXT, "--weights", hf_checkpoint, "--heads", 3, "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""


@pytest.mark.parametrize("layer, window", [("all", None), ("2,0", None), ("1", "2:5"),
                                           ("2,1", "-3:")])
def test_export_writes_layer_by_layer_what_transformers_computes(cli, tmp_path, hf_checkpoint,
                                                                 layer, window):
    """Without --include-params export streams each layer into the file as the forward pass
    reaches it (out-of-order --layer lists and --tokens windows included); the file holds
    transformers' attentions, in the asked order, and equals the --include-params path."""
    from transformers import GPT2Model

    cut = ["--tokens", window] if window else []
    streamed, whole = tmp_path / "streamed.npz", tmp_path / "whole.npz"
    common = [SHORT_TEXT, "--weights", hf_checkpoint, "--layer", layer, *cut]
    assert cli("export", *common, "-o", streamed).exit_code == 0
    assert cli("export", *common, "-o", whole, "--include-params").exit_code == 0
    data, reference = np.load(streamed), np.load(whole)
    assert sorted(data.files) == ["layers", "positions", "token_ids", "tokens", "weights"]
    for name in data.files:
        np.testing.assert_array_equal(data[name], reference[name])
    # the inputs and parameters gathered on the way equal analyze()'s, which holds every layer
    held = analyze(SHORT_TEXT, weights=str(hf_checkpoint), layer=layer, tokens=window)
    # (L, …) whatever the layer choice, as the Python API has them
    np.testing.assert_array_equal(reference["attn_input"], held.attn_inputs)
    assert {"W_query", "W_key", "W_value", "b_query", "b_key", "b_value"} <= set(reference.files)
    for name, value in held.params.items():
        np.testing.assert_array_equal(reference[name], value)
    np.testing.assert_array_equal(data["weights"], held.weights)
    ids = encode(SHORT_TEXT)
    start, stop = slice(*(int(x) if x else None for x in window.split(":"))).indices(len(ids))[:2] \
        if window else (0, len(ids))
    hf = GPT2Model.from_pretrained(hf_checkpoint, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = hf(torch.tensor([ids]), output_attentions=True).attentions
    layers = list(range(3)) if layer == "all" else [int(x) for x in layer.split(",")]
    expected = np.stack([attentions[i][0, :, start:stop, start:stop].numpy() for i in layers])
    np.testing.assert_allclose(data["weights"], expected, atol=1e-5)
    assert data["layers"].tolist() == layers and data["positions"].tolist() == list(range(start, stop))
