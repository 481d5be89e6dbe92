"""The Llama-style families (llama, mistral, qwen2, qwen3, smollm3) against transformers
itself: tiny random checkpoints saved by transformers' own ``*ForCausalLM`` with weights
spread until attention is peaked, and their eager float32 ``output_attentions``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from helpers import make_family_checkpoint

from attnviz import models
from attnviz.analyses.attention import analyze, analyze_ids
from attnviz.analyses.steps import head_steps
from attnviz.core.errors import InputError

TEXT = "When Mary and John went to the store, John gave a drink to Mary. The cat sat on the mat."
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

# name -> (family, overrides): together they cover GQA, head_dim != hidden / heads, RoPE
# scaling (llama3, linear), a window shorter than the text, q/k/v biases, QK-norm, layers
# without RoPE, tied and untied embeddings, and a bf16 file.
CASES = {
    "llama-gqa-llama3-scaling": ("llama", dict(head_dim=32, rope_scaling=LLAMA3_SCALING,
                                               attention_bias=True)),
    "llama-linear-tied-mqa": ("llama", dict(rope_scaling={"rope_type": "linear", "factor": 4.0},
                                            tie_word_embeddings=True, kv_heads=1)),
    "mistral-window": ("mistral", dict(sliding_window=6)),
    "qwen2-bias-window-layers": ("qwen2", dict(hidden=96, heads=6, kv_heads=2,
                                               use_sliding_window=True, sliding_window=5,
                                               max_window_layers=1)),
    "qwen3-qknorm-bf16": ("qwen3", dict(head_dim=24, dtype=torch.bfloat16, rope_theta=1000.0)),
    "smollm3-nope-window": ("smollm3", dict(n_layers=4, no_rope_layer_interval=2,
                                            use_sliding_window=True, sliding_window=7)),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: make_family_checkpoint(root / name, family, seed=i, **overrides)
            for i, (name, (family, overrides)) in enumerate(CASES.items())}


def reference(folder, token_ids, **kwargs):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(torch.tensor([token_ids]), output_attentions=True, output_hidden_states=True,
                    **kwargs)
    return model, out


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("n_tokens", [37, 1024])
def test_attention_equals_transformers_at_first_middle_and_last_layer(checkpoints, name, n_tokens):
    folder = checkpoints[name]
    token_ids = np.random.default_rng(n_tokens).integers(0, 300, size=n_tokens).tolist()
    _, out = reference(folder, token_ids)
    n_layers = len(out.attentions)
    layers = sorted({0, n_layers // 2, n_layers - 1})
    result = analyze_ids(token_ids, weights=str(folder), layer=",".join(map(str, layers)))
    expected = np.stack([out.attentions[i][0].numpy() for i in layers])
    assert result.weights.shape == expected.shape
    np.testing.assert_allclose(result.weights, expected, atol=1e-5, rtol=0)
    assert (expected.max(axis=-1) >= 0.5).mean() > 0.3  # peaked rows: a demanding comparison


@pytest.mark.parametrize("name", CASES)
def test_the_layer_input_is_the_residual_stream_through_input_layernorm(checkpoints, name):
    folder = checkpoints[name]
    token_ids = list(range(3, 40))
    model, out = reference(folder, token_ids)
    last = len(out.attentions) - 1
    result = analyze_ids(token_ids, weights=str(folder), layer=last)
    with torch.no_grad():
        expected = model.model.layers[last].input_layernorm(out.hidden_states[last])[0].numpy()
    np.testing.assert_allclose(result.attn_inputs[0], expected, atol=1e-4, rtol=1e-5)


def test_windows_and_grouped_heads_are_what_the_config_says(checkpoints):
    mistral = analyze_ids(list(range(20)), weights=str(checkpoints["mistral-window"]), layer="all")
    assert mistral.windows == [6, 6, 6] and mistral.kv_heads == [0, 0, 1, 1]
    w = mistral.weights[0, 0]
    i, j = np.indices(w.shape)
    assert np.all(w[j <= i - 6] == 0) and np.all(w[j > i] == 0)
    assert np.all(w[(j <= i) & (j > i - 6)] > 0)
    qwen2 = analyze_ids(list(range(20)), weights=str(checkpoints["qwen2-bias-window-layers"]),
                        layer="all")
    assert qwen2.windows == [None, 5, 5] and qwen2.kv_heads == [0, 0, 0, 1, 1, 1]
    smol = models.load(str(checkpoints["smollm3-nope-window"])).spec
    assert [layer.rope is not None for layer in smol.layers] == [True, False, True, False]
    assert [layer.window for layer in smol.layers] == [None, 7, None, 7]


@pytest.mark.parametrize("name", ["qwen3-qknorm-bf16", "llama-gqa-llama3-scaling", "mistral-window"])
def test_steps_recompute_the_rotation_and_norms_as_transformers_does(checkpoints, name):
    """Q and K after QK-norm and RoPE equal what transformers' own modules compute, and the
    steps reproduce the model's weights."""
    folder = checkpoints[name]
    token_ids = list(range(5, 30))
    model, out = reference(folder, token_ids)
    layer, head = 1, 3
    result = analyze_ids(token_ids, weights=str(folder), layer=layer, heads=[head])
    steps = head_steps(result, head)
    np.testing.assert_allclose(steps.weights, result.weights[0, head], atol=1e-6)
    attn = model.model.layers[layer].self_attn
    with torch.no_grad():
        x = model.model.layers[layer].input_layernorm(out.hidden_states[layer])
        shape = (1, len(token_ids), -1, attn.head_dim)
        q, k = attn.q_proj(x).view(shape), attn.k_proj(x).view(shape)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        cos, sin = model.model.rotary_emb(x, torch.arange(len(token_ids))[None])
        rotated_q, rotated_k = transformers.models.llama.modeling_llama.apply_rotary_pos_emb(q, k, cos, sin)
    kv = head // (model.config.num_attention_heads // model.config.num_key_value_heads)
    assert steps.kv_head == kv
    np.testing.assert_allclose(steps.queries_unrotated, q[0, head].numpy(), atol=1e-5)
    np.testing.assert_allclose(steps.queries, rotated_q[0, head].numpy(), atol=1e-5)
    np.testing.assert_allclose(steps.keys, rotated_k[0, kv].numpy(), atol=1e-5)
    assert not np.allclose(steps.queries, steps.queries_unrotated, atol=1e-3)  # RoPE did rotate
    assert (steps.queries_projected is not None) == hasattr(attn, "q_norm")
    assert steps.window == result.windows[0]


@pytest.mark.parametrize("name", ["llama-gqa-llama3-scaling", "qwen3-qknorm-bf16"])
def test_text_is_fed_as_the_model_s_own_token_ids(checkpoints, name):
    folder = checkpoints[name]
    auto = transformers.AutoTokenizer.from_pretrained(folder)
    with_bos = analyze(TEXT, weights=str(folder))
    assert with_bos.token_ids == auto(TEXT)["input_ids"]
    assert with_bos.token_ids[0] == auto.bos_token_id and with_bos.bos
    assert with_bos.tokens()[0]["bos"] is True and "bos" not in with_bos.tokens()[1]
    from attnviz.core.config import ModelConfig

    without = analyze(TEXT, ModelConfig(bos=False), weights=str(folder))
    assert without.token_ids == auto(TEXT, add_special_tokens=False)["input_ids"]
    assert not without.bos and "bos" not in without.tokens()[0]


def test_describe_names_what_shapes_the_attention(checkpoints):
    described = models.load(str(checkpoints["llama-gqa-llama3-scaling"])).describe()
    assert described["family"] == "llama"
    assert (described["n_heads"], described["n_kv_heads"], described["head_dim"]) == (4, 2, 32)
    assert described["rope"]["scaling"]["type"] == "llama3"
    assert described["rope"]["base"] == 10000.0
    qwen3 = models.load(str(checkpoints["qwen3-qknorm-bf16"])).describe()
    assert qwen3["dtype"] == "bfloat16" and qwen3["qk_norm"] is True
    assert models.load(str(checkpoints["mistral-window"])).describe()["sliding_window"] == [6, 6, 6]
    assert models.load(str(checkpoints["smollm3-nope-window"])).describe()["rope_layers"] == [0, 2]


# --- refusals --------------------------------------------------------------------------------

def _edited(tmp_path, source, **changes):
    folder = tmp_path / "edited"
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("changes, words", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}, "rope_parameters": None},
     "rope_type 'yarn' is not implemented"),
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}},
     "rope_type 'dynamic'"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config (gptq)"),
    ({"num_local_experts": 8}, "mixture-of-experts"),
    ({"use_bidirectional_attention": True}, "bidirectional"),
    ({"hidden_act": "xielu"}, "hidden_act 'xielu'"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor 0.5"),
    ({"num_key_value_heads": 3}, "num_key_value_heads=3 does not divide"),
    ({"model_type": "mamba"}, "model_type 'mamba' is not supported; attnviz reads gpt2, llama"),
])
def test_what_attnviz_does_not_implement_is_refused_by_name(tmp_path, checkpoints, changes, words):
    folder = _edited(tmp_path, checkpoints["llama-linear-tied-mqa"], **changes)
    with pytest.raises(InputError) as caught:
        models.load(str(folder))
    assert words in str(caught.value)


def test_unknown_layer_types_are_refused(tmp_path, checkpoints):
    folder = _edited(tmp_path, checkpoints["qwen2-bias-window-layers"],
                     layer_types=["full_attention", "chunked_attention", "full_attention"])
    with pytest.raises(InputError, match="layer_types 'chunked_attention'"):
        models.load(str(folder))


def test_a_checkpoint_without_tokenizer_says_tokenizer(tmp_path, checkpoints, cli):
    folder = tmp_path / "bare"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(checkpoints["mistral-window"] / name, folder / name)
    result = cli("heatmap", TEXT, "--weights", folder, "--out", tmp_path / "out")
    assert result.exit_code == 2 and result.stderr.startswith("Error: ")
    assert "--tokenizer" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    given = cli("heatmap", TEXT, "--weights", folder, "--tokenizer",
                checkpoints["mistral-window"] / "tokenizer.json", "--out", tmp_path / "out", "-q")
    assert given.exit_code == 0, given.stderr
    assert (tmp_path / "out" / "heads.png").is_file()


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path, checkpoints, cli):
    from helpers import write_bpe_tokenizer

    big = write_bpe_tokenizer(tmp_path / "big", vocab_size=600)  # the model has 300 rows
    result = cli("tokens", TEXT, "--weights", checkpoints["llama-linear-tied-mqa"],
                 "--tokenizer", big / "tokenizer.json")
    assert result.exit_code == 2 and "embedding" in result.stderr and "--tokenizer" in result.stderr
    assert result.stdout == ""


def test_config_and_weights_that_disagree_are_refused(tmp_path, checkpoints):
    folder = _edited(tmp_path, checkpoints["llama-linear-tied-mqa"], num_hidden_layers=5)
    with pytest.raises(InputError, match="num_hidden_layers=5 but the weights hold 3 layers"):
        models.load(str(folder))


# --- the commands ----------------------------------------------------------------------------

def test_rows_carry_the_kv_head_and_gpt2_rows_do_not(checkpoints, hf_checkpoint, cli):
    grouped = cli("compare-heads", TEXT, "--weights", checkpoints["qwen2-bias-window-layers"],
                  "--layer", "1", "--format", "json")
    assert grouped.exit_code == 0, grouped.stderr
    rows = json.loads(grouped.stdout)["heads"]
    assert [r["kv_head"] for r in sorted(rows, key=lambda r: r["head"])] == [0, 0, 0, 1, 1, 1]
    gpt2 = cli("compare-heads", TEXT, "--weights", hf_checkpoint, "--format", "json")
    document = json.loads(gpt2.stdout)
    assert "kv_head" not in document["heads"][0] and "bos" not in document["tokens"][0]
    scan = cli("scan", TEXT, "The cat sat on the mat", "--weights",
               checkpoints["llama-gqa-llama3-scaling"], "--layer", "all", "--format", "csv")
    assert scan.exit_code == 0, scan.stderr
    header, first = scan.stdout.splitlines()[:2]
    assert header.split(",")[:3] == ["layer", "head", "kv_head"] and first.startswith("0,0,0,")


def test_tokens_shows_the_model_s_tokenization_with_its_bos(checkpoints, cli):
    folder = checkpoints["llama-gqa-llama3-scaling"]
    auto = transformers.AutoTokenizer.from_pretrained(folder)
    result = cli("tokens", "naïve café 東京", "--weights", folder, "--format", "json")
    assert result.exit_code == 0, result.stderr
    tokens = json.loads(result.stdout)["tokens"]
    assert [t["id"] for t in tokens] == auto("naïve café 東京")["input_ids"]
    assert tokens[0]["bos"] is True and tokens[0]["text"] == "<|begin_of_text|>"
    assert sum(t["bytes"] for t in tokens[1:]) == len("naïve café 東京".encode())
    no_bos = cli("tokens", "naïve", "--tokenizer", folder / "tokenizer.json", "--no-bos",
                 "--format", "json")
    assert [t["id"] for t in json.loads(no_bos.stdout)["tokens"]] == auto(
        "naïve", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", ["llama-gqa-llama3-scaling", "qwen3-qknorm-bf16",
                                  "mistral-window", "smollm3-nope-window"])
def test_every_command_runs_on_every_family(tmp_path, checkpoints, cli, name):
    folder = checkpoints[name]
    runs = {
        "heatmap": ["heatmap", TEXT, "--weights", folder, "--layer", "all", "--out", tmp_path / "h"],
        "compare": ["compare-heads", TEXT, "--weights", folder, "--layer", "1", "--similarity",
                    "-o", tmp_path / "pair.png"],
        "report": ["report", TEXT, "--weights", folder, "--layer", "all", "-o", tmp_path / "r.html"],
        "scan": ["scan", TEXT, "The cat sat on the mat", "--weights", folder, "--layer", "all",
                 "--induction", "--plot", tmp_path / "maps"],
        "steps": ["steps", TEXT, "--weights", folder, "--layer", "1", "--head", "2", "--output",
                  tmp_path / "steps.png"],
        "export": ["export", TEXT, "--weights", folder, "--layer", "all", "-o", tmp_path / "e.npz",
                   "--include-params"],
        "info": ["info", "--weights", folder, "--format", "json"],
    }
    for what, args in runs.items():
        result = cli(*args, "-q") if what != "info" else cli(*args)
        assert result.exit_code == 0, (what, result.stderr)
    layers = list((tmp_path / "h").glob("layer_*"))
    assert layers and len(list((tmp_path / "h").glob("layer_*/head_*.png"))) == 4 * len(layers)
    arrays = np.load(tmp_path / "e.npz")
    spec = models.load(str(folder)).spec
    assert arrays["weights"].shape[:2] == (spec.n_layers, spec.n_heads)
    assert arrays["W_key"].shape[1] == spec.n_kv_heads * spec.head_dim
    info = json.loads(runs and cli(*runs["info"]).stdout)
    assert info["config"]["family"] == CASES[name][0]
    assert info["tokenizer"]["kind"] == "tokenizer.json"


# --- the Hub ---------------------------------------------------------------------------------

def test_a_family_repo_downloads_its_tokenizer_once_then_runs_offline(tmp_path, checkpoints):
    """config.json, the safetensors and the tokenizer files come from the local test Hub
    (never a .bin, never code); the second run, offline, makes no request."""
    from hub_server import HubServer, Repo
    from test_hub import attnviz, hub_env

    folder = checkpoints["qwen3-qknorm-bf16"]
    files = Repo.from_folder(folder).files
    repo = Repo({**files, "pytorch_model.bin": b"not a pickle", "modeling_evil.py": b"import os"})
    with HubServer({"org/qwen3-tiny": repo}) as hub:
        env = hub_env(tmp_path, hub.url)
        first = attnviz("compare-heads", TEXT, "--weights", "org/qwen3-tiny", "--format", "json",
                        env=env)
        assert first.returncode == 0, first.stderr
        fetched = {p.rsplit("/", 1)[1] for _, p in hub.requests if "/resolve/" in p}
        generation = {"generation_config.json"} & set(files)  # what generate follows
        assert generation  # transformers' save_pretrained writes it for a causal LM
        assert fetched == {"config.json", "model.safetensors", "tokenizer.json",
                           "tokenizer_config.json", *generation}
        before = len(hub.requests)
        again = attnviz("compare-heads", TEXT, "--weights", "org/qwen3-tiny", "--format", "json",
                        env={**env, "HF_HUB_OFFLINE": "1"})
        assert again.returncode == 0, again.stderr
        assert len(hub.requests) == before
    assert json.loads(again.stdout) == json.loads(first.stdout)
    ids = json.loads(first.stdout)["tokens"]
    assert [t["id"] for t in ids] == transformers.AutoTokenizer.from_pretrained(folder)(TEXT)["input_ids"]


def test_a_gated_family_repo_says_hf_token(tmp_path, checkpoints):
    from hub_server import HubServer, Repo
    from test_hub import attnviz, hub_env

    repo = Repo(Repo.from_folder(checkpoints["llama-gqa-llama3-scaling"]).files, gated=True)
    with HubServer({"meta-llama/Llama-tiny": repo}) as hub:
        result = attnviz("heatmap", TEXT, "--weights", "meta-llama/Llama-tiny", "--out",
                         tmp_path / "out", env=hub_env(tmp_path, hub.url))
    assert result.returncode == 2 and "HF_TOKEN" in result.stderr and "gated" in result.stderr
    assert not (tmp_path / "out").exists()


OFFLINE_RUNS = r"""
import json, sys
from typer.testing import CliRunner
from attnviz.cli import app
repo, out = sys.argv[1], sys.argv[2]
text = "When Mary and John went to the store, John gave a drink to Mary."
runs = {
    "heatmap": ["heatmap", text, "--weights", repo, "--layer", "all", "--out", out + "/h", "-q"],
    "compare-heads": ["compare-heads", text, "--weights", repo, "--format", "json"],
    "report": ["report", text, "--weights", repo, "--layer", "all", "-o", out + "/r.html", "-q"],
    "scan": ["scan", text, "the cat sat on the mat", "--weights", repo, "--layer", "all", "-q"],
    "steps": ["steps", text, "--weights", repo, "--head", "1", "--output", out + "/s.png", "-q"],
    "export": ["export", text, "--weights", repo, "--layer", "all", "-o", out + "/e.npz", "-q"],
}
print(json.dumps({name: [r.exit_code, r.stderr[-300:]] for name, args in runs.items()
                  for r in [CliRunner().invoke(app, args)]}))
"""


@pytest.mark.parametrize("name", ["llama-gqa-llama3-scaling", "qwen3-qknorm-bf16",
                                  "mistral-window", "smollm3-nope-window"])
def test_each_family_from_the_hub_downloads_once_then_every_command_runs_offline(
        tmp_path, checkpoints, name):
    import subprocess
    import sys

    from hub_server import HubServer, Repo
    from test_hub import attnviz, hub_env

    repo_id = f"org/{name}"
    with HubServer({repo_id: Repo.from_folder(checkpoints[name])}) as hub:
        env = hub_env(tmp_path, hub.url)
        first = attnviz("info", "--weights", repo_id, "--format", "json", env=env)
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["tokenizer"]["kind"] == "tokenizer.json"
        before = len(hub.requests)
        offline = subprocess.run([sys.executable, "-c", OFFLINE_RUNS, repo_id, str(tmp_path)],
                                 env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                                 text=True, timeout=600)
        assert offline.returncode == 0, offline.stderr
        assert len(hub.requests) == before  # not one request after the first run
    results = json.loads(offline.stdout.strip().splitlines()[-1])
    assert {command: code for command, (code, _) in results.items()} == dict.fromkeys(results, 0), results
    assert (tmp_path / "r.html").is_file() and (tmp_path / "e.npz").is_file()
