"""Model loading beyond the plain Hugging Face layout: the book's own GPTModel, every
GPT2Config field that changes the math, lone files whose head count is unknown, lazy
reading of only the blocks asked for, and random-mode presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers  # a test extra; CI installs it
from helpers import SHORT_TEXT, make_hf_checkpoint
from torch import nn

from attnviz import models as checkpoint
from attnviz.analyses.attention import analyze, analyze_ids
from attnviz.core.config import ModelConfig
from attnviz.core.errors import InputError

TEXT = "The cat sat on the mat. The cat sat on the mat again, and again."


# --- an independent implementation of the book's GPTModel (chapter 4), written here -------

class BookLayerNorm(nn.Module):
    def __init__(self, emb_dim):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


class BookGELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(torch.sqrt(torch.tensor(2.0 / torch.pi)) * (x + 0.044715 * x**3)))


class BookMHA(nn.Module):
    def __init__(self, d_in, d_out, context_length, num_heads, qkv_bias):
        super().__init__()
        self.d_out, self.num_heads, self.head_dim = d_out, num_heads, d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(0.0)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x):
        b, n, _ = x.shape
        q = self.W_query(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.W_key(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.W_value(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        scores = q @ k.transpose(2, 3)
        scores.masked_fill_(self.mask.bool()[:n, :n], -torch.inf)
        weights = torch.softmax(scores / k.shape[-1] ** 0.5, dim=-1)
        self.last_weights = weights  # what we compare against
        context = (weights @ v).transpose(1, 2).reshape(b, n, self.d_out)
        return self.out_proj(context)


class BookBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["emb_dim"]
        self.att = BookMHA(d, d, cfg["context_length"], cfg["n_heads"], cfg["qkv_bias"])
        self.ff = nn.Module()
        self.ff.layers = nn.Sequential(nn.Linear(d, 4 * d), BookGELU(), nn.Linear(4 * d, d))
        self.norm1, self.norm2 = BookLayerNorm(d), BookLayerNorm(d)
        self.drop_shortcut = nn.Dropout(0.0)

    def forward(self, x):
        x = x + self.att(self.norm1(x))
        return x + self.ff.layers(self.norm2(x))


class BookGPTModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(0.0)
        self.trf_blocks = nn.Sequential(*[BookBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = BookLayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, idx):
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
        return self.out_head(self.final_norm(self.trf_blocks(self.drop_emb(x))))


def book_model(n_heads=4, emb_dim=64, n_layers=3, qkv_bias=False, seed=0):
    torch.manual_seed(seed)
    cfg = {"vocab_size": 50257, "context_length": 96, "emb_dim": emb_dim, "n_heads": n_heads,
           "n_layers": n_layers, "drop_rate": 0.0, "qkv_bias": qkv_bias}
    model = BookGPTModel(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.3)
    return model


def book_attentions(model, token_ids):
    with torch.no_grad():
        model(torch.tensor([token_ids]))
    return np.stack([blk.att.last_weights[0].numpy() for blk in model.trf_blocks])


@pytest.mark.parametrize("qkv_bias, wrapped", [(False, False), (True, True)])
def test_book_gptmodel_pth_matches_an_independent_implementation(tmp_path, qkv_bias, wrapped):
    model = book_model(qkv_bias=qkv_bias)
    path = tmp_path / "model.pth"
    state = model.state_dict()
    if wrapped:  # chapter 5's training checkpoint, optimizer state and all
        optimizer = torch.optim.AdamW(model.parameters())
        state = {"model_state_dict": state, "optimizer_state_dict": optimizer.state_dict()}
    torch.save(state, path)
    result = analyze(TEXT, ModelConfig(n_heads=4), weights=str(path), layer="all")
    expected = book_attentions(model, result.token_ids)
    assert result.weights.shape == expected.shape == (3, 4, result.n_tokens, result.n_tokens)
    np.testing.assert_allclose(result.weights, expected, atol=1e-5)
    assert result.config["layout"] == "book" and result.config["qkv_bias"] is qkv_bias
    assert ("b_query" in result.params) is qkv_bias


def test_book_head_count_comes_from_heads_and_is_said(tmp_path, cli):
    model = book_model(n_heads=8)
    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)
    result = cli("compare-heads", TEXT, "--weights", path, "--heads", 8, "--layer", "1",
                 "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert len(doc["heads"]) == 8 and doc["config"]["n_heads_assumed"] is False
    assert "Warning: 8 heads, from --heads" in result.stderr
    ids = [t["id"] for t in doc["tokens"]]
    from attnviz.analyses.stats import head_rows

    expected = head_rows(book_attentions(model, ids)[1:2], [1])
    np.testing.assert_allclose([r["entropy"] for r in doc["heads"]],
                               [r["entropy"] for r in expected], atol=1e-5)
    # without --heads: the book's 12 heads are assumed, and the output says so ...
    unknown = cli("info", "--weights", path)
    assert unknown.exit_code == 2 and "12 heads (assumed) does not divide" in unknown.stderr
    assert "pass --heads" in unknown.stderr  # ... or, when 12 cannot be right, asks for it
    torch.save(book_model(n_heads=12, emb_dim=96, n_layers=1).state_dict(), path)
    info = cli("info", "--weights", path, "--format", "json")
    assert info.exit_code == 0, info.stderr
    config = json.loads(info.stdout)["config"]
    assert config["n_heads"] == 12 and config["n_heads_assumed"] is True
    assert "12 heads assumed" in info.stderr


def test_book_checkpoint_with_missing_tensor_is_named(tmp_path):
    state = book_model().state_dict()
    del state["trf_blocks.1.att.W_key.weight"]
    torch.save(state, tmp_path / "model.pth")
    with pytest.raises(InputError, match=r"trf_blocks\.1\.att\.W_key\.weight is missing"):
        checkpoint.load(str(tmp_path / "model.pth"))


def test_a_file_that_is_not_a_pickle_is_not_called_code(tmp_path):
    path = tmp_path / "model.pth"
    path.write_text("hello, I am text")
    with pytest.raises(InputError, match="is not a checkpoint: it looks like text") as info:
        checkpoint.load(str(path))
    assert "run code" not in str(info.value)


# --- every GPT2Config field that changes the math ------------------------------------------

CONFIG_VARIANTS = [
    {"scale_attn_weights": False},
    {"scale_attn_by_inverse_layer_idx": True},
    {"reorder_and_upcast_attn": True},
    {"scale_attn_by_inverse_layer_idx": True, "reorder_and_upcast_attn": True},
    {"activation_function": "gelu"},
    {"activation_function": "relu"},
    {"activation_function": "silu"},
    {"activation_function": "gelu_pytorch_tanh"},
    {"activation_function": "quick_gelu"},
    {"layer_norm_epsilon": 1e-2},
    {"n_inner": 40},
]


@pytest.mark.parametrize("fields", CONFIG_VARIANTS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_config_fields_that_change_the_math_are_honoured(tmp_path, fields):
    config = transformers.GPT2Config(n_layer=3, n_head=4, n_embd=32, n_positions=64, **fields)
    torch.manual_seed(1)
    model = transformers.GPT2Model(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(0.0, 0.3) if "ln_" not in name else param.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path)
    result = analyze(TEXT, weights=str(tmp_path), layer="all")
    reloaded = transformers.GPT2Model.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        out = reloaded(torch.tensor([result.token_ids]), output_attentions=True)
    expected = np.stack([a[0].numpy() for a in out.attentions])
    np.testing.assert_allclose(result.weights, expected, atol=1e-5)


@pytest.mark.parametrize("field, value, words", [
    ("activation_function", "mish_special", "activation_function 'mish_special'"),
    ("model_type", "bert", "model_type .bert. is not supported; attnviz reads gpt2, llama"),
    ("scale_attn_weights", "yes", "scale_attn_weights must be true or false"),
])
def test_config_fields_attnviz_cannot_honour_are_refused_by_name(tmp_path, hf_checkpoint, field, value,
                                                                words):
    folder = tmp_path / "edited"
    folder.mkdir()
    config = json.loads((hf_checkpoint / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes((hf_checkpoint / "model.safetensors").read_bytes())
    with pytest.raises(InputError, match=words):
        checkpoint.load(str(folder))


# --- lone files, lazy reading ---------------------------------------------------------------

def test_lone_safetensors_uses_heads_when_given(tmp_path, cli):
    folder = make_hf_checkpoint(tmp_path / "ck", 2, 8, 128)  # 8 heads of 16: not GPT-2's 64
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((folder / "model.safetensors").read_bytes())
    assumed = cli("info", "--weights", lone, "--format", "json")
    assert json.loads(assumed.stdout)["config"]["n_heads"] == 2  # 128 / 64, assumed ...
    assert json.loads(assumed.stdout)["config"]["n_heads_assumed"] is True
    assert "2 heads assumed" in assumed.stderr and "--heads" in assumed.stderr  # ... and said
    told = cli("export", SHORT_TEXT, "--weights", lone, "--heads", 8, "--layer", "all", "-o",
               tmp_path / "w.npz")
    assert told.exit_code == 0, told.stderr
    weights = np.load(tmp_path / "w.npz")["weights"]
    model = transformers.GPT2Model.from_pretrained(folder, attn_implementation="eager").eval()
    ids = np.load(tmp_path / "w.npz")["token_ids"].tolist()
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_attentions=True)
    expected = np.stack([a[0].numpy() for a in out.attentions])
    np.testing.assert_allclose(weights, expected, atol=1e-5)
    bad = cli("info", "--weights", lone, "--heads", 7)
    assert bad.exit_code == 2 and "--heads=7 does not divide" in bad.stderr


def test_only_the_blocks_up_to_the_layer_asked_for_are_read(tmp_path, hf_checkpoint):
    from safetensors.torch import load_file, save_file

    tensors = load_file(hf_checkpoint / "model.safetensors")
    tensors["h.1.mlp.c_fc.weight"][0, 0] = float("nan")  # a poisoned MLP in block 1
    tensors["h.2.attn.c_attn.weight"][0, 0] = float("nan")  # and block 2's attention
    folder = tmp_path / "poisoned"
    folder.mkdir()
    save_file(tensors, folder / "model.safetensors")
    (folder / "config.json").write_text((hf_checkpoint / "config.json").read_text())
    # layer 1: blocks 0 and 1 are read, but not block 1's MLP (its output feeds no
    # attention asked for), nor block 2
    good = analyze_ids([1, 2, 3], weights=str(folder), layer=1)
    np.testing.assert_array_equal(good.weights, analyze_ids([1, 2, 3], weights=str(hf_checkpoint),
                                                            layer=1).weights)
    with pytest.raises(InputError, match=r"h\.1\.mlp\.c_fc\.weight holds NaN"):
        analyze_ids([1, 2, 3], weights=str(folder), layer=2)


def test_streamed_export_that_meets_a_bad_block_leaves_the_old_file_and_no_temporary(
        cli, tmp_path, hf_checkpoint):
    """export writes the layers as they are computed; a block found broken half-way (after
    the file was begun) is one Error line, and the target keeps its old content."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(hf_checkpoint / "model.safetensors")
    tensors["h.2.attn.c_attn.weight"][0, 0] = float("inf")
    folder = tmp_path / "poisoned"
    folder.mkdir()
    save_file(tensors, folder / "model.safetensors")
    (folder / "config.json").write_text((hf_checkpoint / "config.json").read_text())
    out = tmp_path / "out"
    out.mkdir()
    (out / "w.npz").write_bytes(b"old")
    result = cli("export", SHORT_TEXT, "--weights", folder, "--layer", "all", "-o", out / "w.npz")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("Error: ") and "h.2.attn.c_attn.weight" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["w.npz"]
    assert (out / "w.npz").read_bytes() == b"old"


def test_pytorch_bin_folder_still_loads(tmp_path):
    from safetensors.torch import load_file

    folder = make_hf_checkpoint(tmp_path / "bin", 2, 2, 32)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    result = analyze(SHORT_TEXT, weights=str(folder), layer="all")
    model = transformers.GPT2Model.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(torch.tensor([result.token_ids]), output_attentions=True)
    np.testing.assert_allclose(result.weights, np.stack([a[0].numpy() for a in out.attentions]), atol=1e-5)


# --- presets --------------------------------------------------------------------------------

@pytest.mark.parametrize("preset, heads, d_model", [("gpt2", 12, 768), ("gpt2-medium", 16, 1024),
                                                     ("gpt2-large", 20, 1280), ("gpt2-xl", 25, 1600)])
def test_presets_set_the_sizes_and_info_shows_them(cli, preset, heads, d_model):
    doc = json.loads(cli("info", "--preset", preset, "--format", "json").stdout)["config"]
    assert (doc["n_heads"], doc["d_model"], doc["context_length"]) == (heads, d_model, 1024)
    assert doc["preset"] == preset


def test_explicit_options_win_over_a_preset(cli):
    def config(*args):
        result = cli("info", *args, "--format", "json")
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)["config"]

    assert config("--preset", "gpt2-xl", "--heads", 16)["n_heads"] == 16
    assert config("--preset", "gpt2-xl", "--heads", 16)["d_model"] == 1600
    # explicit values equal to the defaults still win
    doc = config("--preset", "gpt2-xl", "--heads", 12, "--d-model", 768)
    assert (doc["n_heads"], doc["d_model"], doc["preset"]) == (12, 768, "gpt2-xl")
    bad = cli("info", "--preset", "gpt5")
    assert bad.exit_code == 2 and bad.stderr.startswith("Error: --preset must be one of gpt2,")
