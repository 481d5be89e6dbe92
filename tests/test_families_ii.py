"""GPT-NeoX / Pythia, GPT-Neo, Gemma 2 and Gemma 3 against transformers itself: tiny random
checkpoints saved by transformers' own models, weights spread until attention is peaked,
compared with their eager float32 ``output_attentions``; and Pythia-style revisions of one
repo from the local test Hub."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from helpers import write_bpe_tokenizer

from attnviz import models
from attnviz.analyses.attention import analyze_ids
from attnviz.analyses.steps import head_steps

TEXT = "When Mary and John went to the store, John gave a drink to Mary. The cat sat on the mat."
VOCAB = 300
COMMON = dict(vocab_size=VOCAB, max_position_embeddings=2048, pad_token_id=None, bos_token_id=None,
              eos_token_id=None)
GEMMA = dict(COMMON, hidden_size=64, intermediate_size=128, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16)

# name -> (config, weight spread, file dtype)
CASES = {
    "pythia-parallel": (lambda: transformers.GPTNeoXConfig(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
        rotary_pct=0.25, **COMMON), 0.25, torch.float16),
    "neox-sequential-half-rotary": (lambda: transformers.GPTNeoXConfig(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
        rotary_pct=0.5, rotary_emb_base=1000, use_parallel_residual=False, **COMMON), 0.25, None),
    "gpt-neo-local": (lambda: transformers.GPTNeoConfig(
        hidden_size=64, num_layers=4, num_heads=4, attention_types=[[["global", "local"], 2]],
        window_size=7, **COMMON), 0.15, None),
    "gemma2-softcap": (lambda: transformers.Gemma2Config(
        num_hidden_layers=4, sliding_window=6, attn_logit_softcapping=20.0, **GEMMA), 0.25,
        torch.bfloat16),
    "gemma3-two-bases": (lambda: transformers.Gemma3TextConfig(
        num_hidden_layers=6, sliding_window=6, rope_scaling={"rope_type": "linear", "factor": 8.0},
        **GEMMA), 0.25, None),
}


def build(folder: Path, config, std: float, dtype=None, seed: int = 0, model_class=None) -> Path:
    torch.manual_seed(seed)
    if model_class is None:
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    else:
        config._attn_implementation = "eager"
        model = model_class(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "q_norm" in name or "k_norm" in name:  # Gemma: 1 + w; undo QK-norm's flattening
                param.uniform_(1.0, 2.0)
            elif "norm" in name or ".ln_" in name:
                param.uniform_(-0.3, 0.3) if "gemma" in config.model_type else param.uniform_(0.7, 1.3)
            else:
                param.normal_(0.0, std)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder)
    write_bpe_tokenizer(folder, vocab_size=VOCAB, bos="<bos>" if "gemma" in config.model_type else None)
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("families-ii")
    return {name: build(root / name, make(), std, dtype, seed=i)
            for i, (name, (make, std, dtype)) in enumerate(CASES.items())}


def reference(folder, token_ids, model_class=None):
    model = (model_class or transformers.AutoModelForCausalLM).from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([token_ids]), output_attentions=True)
    return np.stack([a[0].numpy() for a in out.attentions])


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("n_tokens", [41, 1024])
def test_attention_equals_transformers_at_first_middle_and_last_layer(checkpoints, name, n_tokens):
    folder = checkpoints[name]
    token_ids = np.random.default_rng(n_tokens).integers(0, VOCAB, size=n_tokens).tolist()
    expected = reference(folder, token_ids)
    layers = sorted({0, len(expected) // 2, len(expected) - 1})
    result = analyze_ids(token_ids, weights=str(folder), layer=",".join(map(str, layers)))
    np.testing.assert_allclose(result.weights, expected[layers], atol=1e-5, rtol=0)
    assert (expected.max(axis=-1) >= 0.5).mean() > 0.3  # peaked rows: a demanding comparison


def test_what_each_family_changes_is_in_its_description(checkpoints):
    pythia = models.load(str(checkpoints["pythia-parallel"])).describe()
    assert pythia["family"] == "gpt_neox" and pythia["parallel_residual"] is True
    assert pythia["rope"] == {"base": 10000.0, "rotary_dim": 4} and pythia["dtype"] == "float16"
    neo = models.load(str(checkpoints["gpt-neo-local"]))
    assert [layer.window for layer in neo.spec.layers] == [None, 7, None, 7]
    assert {layer.scale for layer in neo.spec.layers} == {1.0}
    assert neo.describe()["attention_layers"] == ["global", "local", "global", "local"]
    gemma2 = models.load(str(checkpoints["gemma2-softcap"])).describe()
    assert gemma2["attn_softcap"] == 20.0 and gemma2["sliding_window"] == [6, None, 6, None]
    assert gemma2["sandwich_norms"] is True and gemma2["dtype"] == "bfloat16"
    gemma3 = models.load(str(checkpoints["gemma3-two-bases"])).spec
    bases = [layer.rope.base for layer in gemma3.layers]
    assert bases == [10000.0] * 5 + [1_000_000.0]
    assert gemma3.layers[-1].rope.scaling == ("linear", 8.0) and gemma3.layers[0].rope.scaling is None
    assert all(layer.qk_norm for layer in gemma3.layers)


def test_gemma_steps_name_the_softcap_and_reproduce_the_weights(checkpoints):
    folder = checkpoints["gemma2-softcap"]
    token_ids = list(range(3, 30))
    result = analyze_ids(token_ids, weights=str(folder), layer=0, heads=[1])
    steps = head_steps(result, 1)
    np.testing.assert_allclose(steps.weights, result.weights[0, 1], atol=1e-6)
    assert steps.softcap == 20.0 and steps.window == 6
    assert "20·tanh(" in steps.formulas()["scaled"] and np.abs(steps.scaled).max() < 20.0
    uncapped = steps.scores * steps.scale
    np.testing.assert_allclose(steps.scaled, 20.0 * np.tanh(uncapped / 20.0), atol=1e-4)
    assert np.abs(steps.scaled - uncapped).max() > 0.5  # the cap did something


def test_the_text_tower_of_a_multimodal_gemma3_checkpoint(tmp_path):
    text = transformers.Gemma3TextConfig(num_hidden_layers=3, sliding_window=5, **GEMMA)
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=2,
                                             image_size=28, patch_size=14)
    config = transformers.Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                       mm_tokens_per_image=4, image_token_index=VOCAB - 1)
    folder = build(tmp_path / "gemma3-mm", config, 0.25,
                   model_class=transformers.Gemma3ForConditionalGeneration)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "gemma3"
    token_ids = np.random.default_rng(1).integers(0, VOCAB - 1, size=50).tolist()
    model = transformers.Gemma3ForConditionalGeneration.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([token_ids]), output_attentions=True)
    expected = np.stack([a[0].numpy() for a in out.attentions])
    result = analyze_ids(token_ids, weights=str(folder), layer="all")
    np.testing.assert_allclose(result.weights, expected, atol=1e-5, rtol=0)
    assert result.windows == [5, 5, 5]


def test_neo_and_neox_read_their_fused_and_split_layouts_as_transformers_does(checkpoints):
    """Pythia's per-head q | k | v rows: the query rows of head h are its own."""
    folder = checkpoints["pythia-parallel"]
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    qkv = model.gpt_neox.layers[0].attention.query_key_value.weight.detach()  # (3d, d)
    weights = models.load(str(folder)).weights.block(0)
    head_dim = 16
    np.testing.assert_array_equal(weights["attn.W_key.weight"][head_dim:2 * head_dim].numpy(),
                                  qkv[3 * head_dim + head_dim:3 * head_dim + 2 * head_dim].numpy())


def test_pythia_revisions_sit_side_by_side_and_are_named(tmp_path):
    """Two training checkpoints of one repo (step0, step1000) from the local test Hub: each
    run gets its own weights, both stay cached, every output names the revision."""
    from hub_server import HubServer, Repo
    from test_hub import attnviz, hub_env

    make = CASES["pythia-parallel"][0]
    steps = {name: build(tmp_path / name, make(), std, seed=seed)
             for name, std, seed in (("step0", 0.02, 1), ("step1000", 0.25, 2))}
    files = {name: Repo.from_folder(folder) for name, folder in steps.items()}
    repo = Repo(files["step1000"].files, revisions=files)
    with HubServer({"EleutherAI/pythia-tiny": repo}) as hub:
        env = hub_env(tmp_path, hub.url)
        outputs = {}
        for step in steps:
            run = attnviz("compare-heads", TEXT, "--weights", f"EleutherAI/pythia-tiny@{step}",
                          "--layer", "all", "--format", "json", env=env)
            assert run.returncode == 0, run.stderr
            outputs[step] = json.loads(run.stdout)
        before = len(hub.requests)
        again = attnviz("compare-heads", TEXT, "--weights", "EleutherAI/pythia-tiny@step0",
                        "--layer", "all", "--format", "json", env={**env, "HF_HUB_OFFLINE": "1"})
        assert again.returncode == 0, again.stderr and len(hub.requests) == before
    for step, document in outputs.items():
        assert document["config"]["revision"] == step
        assert document["config"]["repo"] == "EleutherAI/pythia-tiny"
    assert json.loads(again.stdout) == outputs["step0"]
    entropy = {step: [r["entropy"] for r in doc["heads"]] for step, doc in outputs.items()}
    assert entropy["step0"] != entropy["step1000"]  # two different models
    snapshots = list((tmp_path / "hf-home" / "hub" / "models--EleutherAI--pythia-tiny"
                      / "snapshots").iterdir())
    assert len(snapshots) == 2
    token_ids = outputs["step1000"]["tokens"]
    ids = [t["id"] for t in token_ids]
    result = analyze_ids(ids, weights=str(steps["step1000"]), layer="all")
    expected = reference(steps["step1000"], ids)
    np.testing.assert_allclose(result.weights, expected, atol=1e-5)


@pytest.mark.parametrize("name", ["pythia-parallel", "gpt-neo-local", "gemma3-two-bases"])
def test_the_commands_run_on_these_families(tmp_path, checkpoints, cli, name):
    folder = checkpoints[name]
    for args in (["heatmap", TEXT, "--weights", folder, "--layer", "all", "--out", tmp_path / "h"],
                 ["scan", TEXT, "The cat sat on the mat", "--weights", folder, "--layer", "all",
                  "--format", "csv"],
                 ["steps", TEXT, "--weights", folder, "--layer", "1", "--head", "0", "--output",
                  tmp_path / "s.png"],
                 ["report", TEXT, "--weights", folder, "--layer", "all", "-o", tmp_path / "r.html"]):
        result = cli(*args, "-q")
        assert result.exit_code == 0, (args[0], result.stderr)
    assert (tmp_path / "h" / "model.png").is_file() and (tmp_path / "r.html").stat().st_size > 1000


@pytest.mark.parametrize("model_class, make", [
    (transformers.Gemma2Model, lambda: transformers.Gemma2Config(
        num_hidden_layers=2, sliding_window=6, attn_logit_softcapping=20.0, **GEMMA)),
    (transformers.Gemma3TextModel, lambda: transformers.Gemma3TextConfig(
        num_hidden_layers=2, sliding_window=6, **GEMMA)),
    (transformers.GPTNeoXModel, lambda: transformers.GPTNeoXConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        rotary_pct=0.25, **COMMON)),
])
def test_a_checkpoint_of_the_bare_model_class_reads_as_transformers(tmp_path, model_class, make):
    """Saved without the ``model.`` (``gpt_neox.``) prefix of ``*ForCausalLM``, as the Llama
    reader already accepted."""
    folder = build(tmp_path / model_class.__name__, make(), 0.25, model_class=model_class)
    names = json.loads((folder / "model.safetensors").read_bytes()[8:8 + int.from_bytes(
        (folder / "model.safetensors").read_bytes()[:8], "little")])
    assert any(n.startswith("layers.0.") for n in names)  # no prefix
    token_ids = np.random.default_rng(2).integers(0, VOCAB, size=30).tolist()
    expected = reference(folder, token_ids, model_class)
    result = analyze_ids(token_ids, weights=str(folder), layer="all")
    np.testing.assert_allclose(result.weights, expected, atol=1e-5, rtol=0)


def test_bidirectional_attention_is_refused_with_the_reason(tmp_path, cli):
    """EmbeddingGemma's config asks for bidirectional attention: not drawn as causal."""
    config = transformers.Gemma3TextConfig(num_hidden_layers=2, sliding_window=6,
                                           use_bidirectional_attention=True, **GEMMA)
    folder = build(tmp_path / "embeddinggemma", config, 0.25, model_class=transformers.Gemma3TextModel)
    done = cli("heatmap", "the cat", "--weights", folder, "--out", tmp_path / "out")
    assert done.exit_code == 2 and not (tmp_path / "out").exists()
    assert done.stderr.strip() == (f"Error: {folder / 'config.json'}: bidirectional attention "
                                   "(use_bidirectional_attention / is_causal false) is not "
                                   "supported; attnviz shows causal decoders")
