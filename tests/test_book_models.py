"""The book's chapter-5 bonus classes — Llama3Model, Qwen3Model, Gemma3Model — read from
their state dicts: against an independent implementation of each class written here after
the book's code, against transformers on the same weights in Hugging Face's layout, the
configuration from --book-config / --preset, and what is refused."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import transformers
from helpers import write_bpe_tokenizer
from torch import nn

from attnviz import models
from attnviz.analyses.attention import analyze
from attnviz.core.config import ModelConfig
from attnviz.core.errors import InputError
from attnviz.models import book_reader
from attnviz.models.spec import RopeSpec

TEXT = "The cat sat on the mat. The cat sat on the mat again, and again, and again."


# --- independent implementations of the book's classes, after its code ----------------------

def compute_rope_params(head_dim, theta_base=10_000, context_length=4096, freq_config=None,
                        dtype=torch.float32):
    inv_freq = 1.0 / (theta_base ** (torch.arange(0, head_dim, 2, dtype=dtype)[: (head_dim // 2)].float()
                                     / head_dim))
    if freq_config is not None:
        low_freq_wavelen = freq_config["original_context_length"] / freq_config["low_freq_factor"]
        high_freq_wavelen = freq_config["original_context_length"] / freq_config["high_freq_factor"]
        wavelen = 2 * torch.pi / inv_freq
        inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / freq_config["factor"],
                                     inv_freq)
        smooth_factor = (freq_config["original_context_length"] / wavelen
                         - freq_config["low_freq_factor"]) / (
            freq_config["high_freq_factor"] - freq_config["low_freq_factor"])
        smoothed_inv_freq = ((1 - smooth_factor) * (inv_freq / freq_config["factor"])
                             + smooth_factor * inv_freq)
        is_medium_freq = (wavelen <= low_freq_wavelen) & (wavelen >= high_freq_wavelen)
        inv_freq = torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)
    positions = torch.arange(context_length, dtype=dtype)
    angles = positions.unsqueeze(1) * inv_freq.unsqueeze(0)  # (context_length, head_dim // 2)
    angles = torch.cat([angles, angles], dim=1)  # (context_length, head_dim)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x, cos, sin):
    _, _, seq_len, head_dim = x.shape
    x1, x2 = x[..., : head_dim // 2], x[..., head_dim // 2:]
    cos = cos[:seq_len, :].unsqueeze(0).unsqueeze(0)  # (1, 1, seq_len, head_dim)
    sin = sin[:seq_len, :].unsqueeze(0).unsqueeze(0)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos) + (rotated * sin)


class QwenRMSNorm(nn.Module):
    def __init__(self, emb_dim, eps=1e-6, bias=False):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim)) if bias else None

    def forward(self, x):
        variance = x.pow(2).mean(dim=-1, keepdim=True)
        norm_x = x * torch.rsqrt(variance + self.eps) * self.scale
        return norm_x + self.shift if self.shift is not None else norm_x


class GemmaRMSNorm(nn.Module):
    def __init__(self, emb_dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.zeros(emb_dim))  # zero-centred, applied as 1 + scale

    def forward(self, x):
        var = x.pow(2).mean(dim=-1, keepdim=True)
        return x * torch.rsqrt(var + self.eps) * (1.0 + self.scale)


class GroupedQueryAttention(nn.Module):
    """Llama3Model's (``head_dim = d_out // num_heads``, no norms, scores / √head_dim) and,
    with ``head_dim``/``norm``, Qwen3Model's and Gemma3Model's (queries scaled first)."""

    def __init__(self, d_in, num_heads, num_kv_groups, head_dim=None, norm=None, scaling=None):
        super().__init__()
        self.num_heads, self.num_kv_groups = num_heads, num_kv_groups
        self.group_size = num_heads // num_kv_groups
        self.head_dim = head_dim or d_in // num_heads
        self.d_out = num_heads * self.head_dim
        self.W_query = nn.Linear(d_in, self.d_out, bias=False)
        self.W_key = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=False)
        self.W_value = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=False)
        self.out_proj = nn.Linear(self.d_out, d_in, bias=False)
        if norm is not None:
            self.q_norm, self.k_norm = norm(self.head_dim, eps=1e-6), norm(self.head_dim, eps=1e-6)
        else:
            self.q_norm = self.k_norm = None
        self.scaling = scaling

    def forward(self, x, mask, cos, sin):
        b, num_tokens, _ = x.shape
        queries = self.W_query(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        keys = self.W_key(x).view(b, num_tokens, self.num_kv_groups, self.head_dim).transpose(1, 2)
        values = self.W_value(x).view(b, num_tokens, self.num_kv_groups, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            queries, keys = self.q_norm(queries), self.k_norm(keys)
        queries, keys = apply_rope(queries, cos, sin), apply_rope(keys, cos, sin)
        keys = keys.repeat_interleave(self.group_size, dim=1)
        values = values.repeat_interleave(self.group_size, dim=1)
        if self.scaling is not None:  # Gemma 3: the queries are scaled before the product
            attn_scores = (queries * self.scaling) @ keys.transpose(2, 3)
            attn_weights = torch.softmax(attn_scores.masked_fill(mask, -torch.inf), dim=-1)
        else:
            attn_scores = (queries @ keys.transpose(2, 3)).masked_fill(mask, -torch.inf)
            attn_weights = torch.softmax(attn_scores / self.head_dim**0.5, dim=-1)
        self.last_weights = attn_weights  # what we compare against
        context = (attn_weights @ values).transpose(1, 2).reshape(b, num_tokens, self.d_out)
        return self.out_proj(context)


class FeedForward(nn.Module):
    def __init__(self, cfg, act=nn.functional.silu):
        super().__init__()
        self.fc1 = nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], bias=False)
        self.fc2 = nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], bias=False)
        self.fc3 = nn.Linear(cfg["hidden_dim"], cfg["emb_dim"], bias=False)
        self.act = act

    def forward(self, x):
        return self.fc3(self.act(self.fc1(x)) * self.fc2(x))


class LlamaBlock(nn.Module):
    def __init__(self, cfg, norm):
        super().__init__()
        self.att = GroupedQueryAttention(cfg["emb_dim"], cfg["n_heads"], cfg["n_kv_groups"],
                                         head_dim=cfg.get("head_dim"),
                                         norm=QwenRMSNorm if cfg.get("qk_norm") else None)
        self.ff = FeedForward(cfg)
        self.norm1, self.norm2 = norm(cfg["emb_dim"]), norm(cfg["emb_dim"])

    def forward(self, x, mask, cos, sin):
        x = x + self.att(self.norm1(x), mask, cos, sin)
        return x + self.ff(self.norm2(x))


class Llama3Model(nn.Module):
    """The book's Llama3Model; with ``orig_context_length`` its earlier rope_base rescale."""

    def __init__(self, cfg):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.trf_blocks = nn.ModuleList(
            [LlamaBlock(cfg, lambda d: nn.RMSNorm(d, eps=1e-5)) for _ in range(cfg["n_layers"])])
        self.final_norm = nn.RMSNorm(cfg["emb_dim"], eps=1e-5)
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)
        rope_base = cfg["rope_base"]
        if cfg.get("orig_context_length", cfg["context_length"]) != cfg["context_length"]:
            rope_base = rope_base * (cfg["context_length"] / cfg["orig_context_length"])
        cos, sin = compute_rope_params(cfg["emb_dim"] // cfg["n_heads"], rope_base,
                                       cfg["context_length"], cfg["rope_freq"])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, in_idx):
        x = self.tok_emb(in_idx)
        n = x.shape[1]
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
        for block in self.trf_blocks:
            x = block(x, mask, self.cos, self.sin)
        return self.out_head(self.final_norm(x))


class Qwen3Model(Llama3Model):
    def __init__(self, cfg):
        nn.Module.__init__(self)
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.trf_blocks = nn.ModuleList([LlamaBlock(cfg, QwenRMSNorm) for _ in range(cfg["n_layers"])])
        self.final_norm = QwenRMSNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)
        head_dim = cfg["head_dim"] or cfg["emb_dim"] // cfg["n_heads"]
        cos, sin = compute_rope_params(head_dim, cfg["rope_base"], cfg["context_length"])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)


class GemmaBlock(nn.Module):
    def __init__(self, cfg, attn_type):
        super().__init__()
        self.attn_type = attn_type
        scalar = cfg["query_pre_attn_scalar"]
        self.att = GroupedQueryAttention(cfg["emb_dim"], cfg["n_heads"], cfg["n_kv_groups"],
                                         cfg["head_dim"], GemmaRMSNorm if cfg["qk_norm"] else None,
                                         scaling=(scalar or cfg["head_dim"]) ** -0.5)
        self.ff = FeedForward(cfg, lambda x: nn.functional.gelu(x, approximate="tanh"))
        self.input_layernorm = GemmaRMSNorm(cfg["emb_dim"])
        self.post_attention_layernorm = GemmaRMSNorm(cfg["emb_dim"])
        self.pre_feedforward_layernorm = GemmaRMSNorm(cfg["emb_dim"])
        self.post_feedforward_layernorm = GemmaRMSNorm(cfg["emb_dim"])

    def forward(self, x, mask_global, mask_local, cos_global, sin_global, cos_local, sin_local):
        local = self.attn_type == "sliding_attention"
        x_attn = self.att(self.input_layernorm(x), mask_local if local else mask_global,
                          cos_local if local else cos_global, sin_local if local else sin_global)
        x = x + self.post_attention_layernorm(x_attn)
        x_ffn = self.post_feedforward_layernorm(self.ff(self.pre_feedforward_layernorm(x)))
        return x + x_ffn


class Gemma3Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.blocks = nn.ModuleList([GemmaBlock(cfg, t) for t in cfg["layer_types"]])
        self.final_norm = GemmaRMSNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)
        self.cos_local, self.sin_local = compute_rope_params(cfg["head_dim"], cfg["rope_local_base"],
                                                             cfg["context_length"])
        self.cos_global, self.sin_global = compute_rope_params(cfg["head_dim"], cfg["rope_base"],
                                                               cfg["context_length"])

    def forward(self, input_ids):
        seq_len = input_ids.shape[1]
        x = self.tok_emb(input_ids) * (self.cfg["emb_dim"] ** 0.5)
        ones = torch.ones((seq_len, seq_len), dtype=torch.bool)
        mask_global = torch.triu(ones, diagonal=1)
        mask_local = mask_global | torch.triu(ones, diagonal=self.cfg["sliding_window"]).T
        for block in self.blocks:
            x = block(x, mask_global, mask_local, self.cos_global, self.sin_global,
                      self.cos_local, self.sin_local)
        return self.out_head(self.final_norm(x))


# --- configurations and models -------------------------------------------------------------

LLAMA = {"vocab_size": 300, "context_length": 256, "emb_dim": 64, "n_heads": 4, "n_layers": 3,
         "hidden_dim": 128, "n_kv_groups": 2, "rope_base": 500_000.0, "dtype": "torch.float32",
         # head_dim 16: wavelengths 6 … 6e5, so each band of the scaling has some
         "rope_freq": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_context_length": 1024}}
QWEN = {"vocab_size": 300, "context_length": 256, "emb_dim": 64, "n_heads": 4, "n_layers": 3,
        "hidden_dim": 128, "head_dim": 32, "qk_norm": True, "n_kv_groups": 2,
        "rope_base": 1_000_000.0, "dtype": "bfloat16"}
GEMMA = {"vocab_size": 300, "context_length": 256, "emb_dim": 64, "n_heads": 4, "n_layers": 4,
         "hidden_dim": 128, "head_dim": 32, "qk_norm": True, "n_kv_groups": 2,
         "rope_local_base": 10_000.0, "rope_base": 1_000_000.0, "sliding_window": 5,
         "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
         "dtype": "bfloat16", "query_pre_attn_scalar": 24}
CLASSES = {"Llama3Model": (Llama3Model, LLAMA), "Qwen3Model": (Qwen3Model, QWEN),
           "Gemma3Model": (Gemma3Model, GEMMA)}


def book_model(kind, seed=0, **changes):
    """The book's ``kind`` with random weights spread until attention is peaked."""
    cls, cfg = CLASSES[kind]
    cfg = {**cfg, **changes}
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "q_norm" in name or "k_norm" in name:  # QK-norm flattens the scores: undo it
                param.uniform_(2.0, 3.0) if kind != "Gemma3Model" else param.uniform_(1.0, 2.0)
            elif "norm" in name:
                param.uniform_(0.7, 1.3) if kind != "Gemma3Model" else param.uniform_(-0.3, 0.3)
            else:
                param.normal_(0.0, 0.35)
    return model, cfg


def book_attentions(model, token_ids) -> np.ndarray:
    with torch.no_grad():
        model(torch.tensor([token_ids]))
    blocks = model.blocks if hasattr(model, "blocks") else model.trf_blocks
    return np.stack([b.att.last_weights[0].numpy() for b in blocks])  # (layers, heads, T, T)


def save(folder, model, cfg, *, wrapped=False, state=None):
    """model.pth, cfg.json and tokenizer.json (ids < 300) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if state is None else state
    torch.save({"model_state_dict": state} if wrapped else state, folder / "model.pth")
    (folder / "cfg.json").write_text(json.dumps(cfg))
    tokenizer = write_bpe_tokenizer(folder / "tok", vocab_size=cfg["vocab_size"], bos=None)
    return folder / "model.pth", folder / "cfg.json", tokenizer / "tokenizer.json"


def run(path, cfg_path=None, tokenizer=None, preset=None):
    config = ModelConfig(book_config=None if cfg_path is None else str(cfg_path),
                         tokenizer=None if tokenizer is None else str(tokenizer), book_preset=preset)
    with pytest.warns(Warning):  # what came from the config is said
        return analyze(TEXT, config, weights=str(path), layer="all")


def peaked(weights) -> float:
    """The share of rows (past the first) whose largest weight is at least 0.5."""
    rows = weights[..., 1:, :].max(-1)
    return float((rows >= 0.5).mean())


# --- parity -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, wrapped", [("Llama3Model", False), ("Qwen3Model", True),
                                           ("Gemma3Model", False)])
def test_state_dict_matches_an_independent_implementation_of_the_book_class(tmp_path, kind, wrapped):
    model, cfg = book_model(kind)
    path, cfg_path, tokenizer = save(tmp_path, model, cfg, wrapped=wrapped)
    result = run(path, cfg_path, tokenizer)
    expected = book_attentions(model, result.token_ids)
    assert result.n_tokens > 16
    assert result.weights.shape == expected.shape == (cfg["n_layers"], 4, result.n_tokens,
                                                      result.n_tokens)
    assert peaked(expected) >= 0.6  # the weights are far from uniform: the test can fail
    np.testing.assert_allclose(result.weights, expected, atol=1e-5)
    described = result.config
    assert described["layout"] == book_reader.LAYOUTS[kind] and described["book_class"] == kind
    assert (described["n_heads"], described["n_kv_heads"]) == (4, 2)  # grouped-query heads
    assert described.get("qk_norm", False) is (kind != "Llama3Model")


def test_gemma3_slides_on_its_sliding_layers_with_two_rope_bases(tmp_path):
    model, cfg = book_model("Gemma3Model", seed=1)
    path, cfg_path, tokenizer = save(tmp_path, model, cfg)
    result = run(path, cfg_path, tokenizer)
    window = cfg["sliding_window"]
    assert result.n_tokens > 3 * window
    i, j = np.tril_indices(result.n_tokens)
    far = i - j >= window
    for layer, kind in enumerate(cfg["layer_types"]):  # nothing beyond the window slides in
        beyond = result.weights[layer][:, i[far], j[far]]
        assert (beyond == 0).all() if kind == "sliding_attention" else (beyond > 0).any()
    assert result.config["sliding_window"] == [window, None, window, None]
    assert [r["base"] for r in result.config["rope"]] == [1e4, 1e6, 1e4, 1e6]
    # the other base on the sliding layers gives other weights: the bases are not swapped
    swapped = {**cfg, "rope_local_base": cfg["rope_base"], "rope_base": cfg["rope_local_base"]}
    (tmp_path / "swapped.json").write_text(json.dumps(swapped))
    other = run(path, tmp_path / "swapped.json", tokenizer)
    assert np.abs(other.weights[0] - result.weights[0]).max() > 1e-3
    np.testing.assert_allclose(result.weights, book_attentions(model, result.token_ids), atol=1e-5)


@pytest.mark.parametrize("factor, head_dim", [(32.0, 16), (3.0, 32)])
def test_book_rope_is_the_book_s_tables_bit_for_bit(tmp_path, factor, head_dim):
    freq = {**LLAMA["rope_freq"], "factor": factor}
    scaling = ("llama3", factor, freq["low_freq_factor"], freq["high_freq_factor"],
               freq["original_context_length"])
    rope = book_reader.BookRope(500_000.0, head_dim, scaling)
    cos, sin = rope.tables(300)
    book_cos, book_sin = compute_rope_params(head_dim, 500_000.0, 300, freq)
    assert torch.equal(cos, book_cos) and torch.equal(sin, book_sin)
    assert rope.describe()["scaling"]["factor"] == factor
    if factor == 3.0:  # where transformers' order of operations rounds otherwise
        assert not torch.equal(RopeSpec(500_000.0, head_dim, scaling).inv_freq(), rope.inv_freq())
    # ... and the reader runs a Llama3Model state dict with those very tables
    model, cfg = book_model("Llama3Model", n_heads=64 // head_dim, n_kv_groups=1, rope_freq=freq)
    path, cfg_path, tokenizer = save(tmp_path, model, cfg)
    with pytest.warns(Warning):
        checkpoint = models.load(str(path), book_config=cfg_path, tokenizer=tokenizer)
    tables = checkpoint.spec.layers[0].rope.tables(300)
    assert torch.equal(tables[0], book_cos) and torch.equal(tables[1], book_sin)


def test_llama3_rope_base_rescaled_by_the_context_as_the_book_did(tmp_path):
    # The book's Llama3Model until June 2025: rope_base × context_length / orig_context_length.
    model, cfg = book_model("Llama3Model", context_length=128, orig_context_length=1024)
    path, cfg_path, tokenizer = save(tmp_path, model, cfg)
    with pytest.warns(Warning, match=r"rope_base 500000 rescaled to 62500"):
        result = analyze(TEXT, ModelConfig(book_config=str(cfg_path), tokenizer=str(tokenizer)),
                         weights=str(path), layer="all")
    np.testing.assert_allclose(result.weights, book_attentions(model, result.token_ids), atol=1e-5)
    assert result.config["rope"]["base"] == 62500.0
    # That code wrote the rescaled base back into the dict: saved after building, it holds
    # 62500 already, and is not rescaled twice.
    (tmp_path / "after.json").write_text(json.dumps({**cfg, "rope_base": 62500.0}))
    with pytest.warns(Warning, match="already rescaled"):
        again = analyze(TEXT, ModelConfig(book_config=str(tmp_path / "after.json"),
                                          tokenizer=str(tokenizer)), weights=str(path), layer="all")
    np.testing.assert_allclose(again.weights, result.weights, atol=1e-6)
    # without the rescale the weights differ: the rescale matters
    (tmp_path / "plain.json").write_text(json.dumps({**cfg, "orig_context_length": 128}))
    plain = run(path, tmp_path / "plain.json", tokenizer)
    assert np.abs(plain.weights - result.weights).max() > 1e-3


def test_older_llama3_state_dicts_with_rope_buffers_are_read_and_checked(tmp_path):
    """Until February 2025 the book's Llama3Model kept mask, cos and sin (in the model's
    dtype) as persistent buffers of every attention."""
    model, cfg = book_model("Llama3Model")
    state = dict(model.state_dict())
    n = cfg["context_length"]
    for i in range(cfg["n_layers"]):
        state[f"trf_blocks.{i}.att.mask"] = torch.triu(torch.ones(n, n), diagonal=1)
        state[f"trf_blocks.{i}.att.cos"] = model.cos.to(torch.bfloat16)
        state[f"trf_blocks.{i}.att.sin"] = model.sin.to(torch.bfloat16)
    path, cfg_path, tokenizer = save(tmp_path, model, cfg, state=state)
    result = run(path, cfg_path, tokenizer)
    np.testing.assert_allclose(result.weights, book_attentions(model, result.token_ids), atol=1e-5)
    (tmp_path / "wrong.json").write_text(json.dumps({**cfg, "rope_base": 10_000.0}))
    with pytest.raises(InputError, match=r"RoPE table trf_blocks\.0\.att\.cos .* rope_base=10000"):
        models.load(str(path), book_config=tmp_path / "wrong.json", tokenizer=tokenizer)


# --- the book layout equals Hugging Face's on the same weights ----------------------------------

def _hf_model(kind):
    torch.manual_seed(3)
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  pad_token_id=None, bos_token_id=None, eos_token_id=None, tie_word_embeddings=False)
    if kind == "Llama3Model":
        config = transformers.LlamaConfig(**common, rms_norm_eps=1e-5, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500_000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 1024})
        cls = transformers.LlamaForCausalLM
    elif kind == "Qwen3Model":
        config = transformers.Qwen3Config(**common, head_dim=32, rms_norm_eps=1e-6,
                                          rope_parameters={"rope_type": "default",
                                                           "rope_theta": 1_000_000.0})
        cls = transformers.Qwen3ForCausalLM
    else:
        config = transformers.Gemma3TextConfig(
            **{**common, "num_hidden_layers": 4}, head_dim=32, rms_norm_eps=1e-6,
            query_pre_attn_scalar=24, sliding_window=5,
            layer_types=["sliding_attention", "full_attention"] * 2,
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                             "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0}})
        cls = transformers.Gemma3ForCausalLM
    model = cls(config).eval()
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "q_norm" in name or "k_norm" in name:
                param.uniform_(2.0, 3.0) if kind != "Gemma3Model" else param.uniform_(1.0, 2.0)
            elif "norm" in name:  # Gemma stores its norm weights zero-centred, as the book does
                param.uniform_(0.7, 1.3) if kind != "Gemma3Model" else param.uniform_(-0.3, 0.3)
            else:
                param.normal_(0.0, 0.35)
    return model


def _to_book(kind, hf_state):
    """transformers' names -> the book's (its load_weights_into_* read the other way)."""
    block = "blocks" if kind == "Gemma3Model" else "trf_blocks"
    norm = "weight" if kind == "Llama3Model" else "scale"
    names = {f"self_attn.{p}_proj.weight": f"att.{b}.weight"
             for p, b in (("q", "W_query"), ("k", "W_key"), ("v", "W_value"), ("o", "out_proj"))}
    names |= {"self_attn.q_norm.weight": "att.q_norm.scale", "self_attn.k_norm.weight": "att.k_norm.scale",
             "mlp.gate_proj.weight": "ff.fc1.weight", "mlp.up_proj.weight": "ff.fc2.weight",
             "mlp.down_proj.weight": "ff.fc3.weight"}
    if kind == "Gemma3Model":
        names |= {f"{n}.weight": f"{n}.scale" for n in ("input_layernorm", "post_attention_layernorm",
                                                        "pre_feedforward_layernorm",
                                                        "post_feedforward_layernorm")}
    else:
        names |= {"input_layernorm.weight": f"norm1.{norm}",
                  "post_attention_layernorm.weight": f"norm2.{norm}"}
    out = {"tok_emb.weight": hf_state["model.embed_tokens.weight"],
           f"final_norm.{norm}": hf_state["model.norm.weight"], "out_head.weight": hf_state["lm_head.weight"]}
    for key, tensor in hf_state.items():
        if key.startswith("model.layers."):
            i, rest = key.removeprefix("model.layers.").split(".", 1)
            out[f"{block}.{i}.{names[rest]}"] = tensor
    return out


@pytest.mark.parametrize("kind", ["Llama3Model", "Qwen3Model", "Gemma3Model"])
def test_the_book_layout_equals_transformers_on_the_same_weights(tmp_path, kind):
    model = _hf_model(kind)
    _, cfg = CLASSES[kind]
    cfg = {**cfg, "n_layers": model.config.num_hidden_layers}
    path, cfg_path, tokenizer = save(tmp_path, None, cfg, state=_to_book(kind, model.state_dict()))
    result = run(path, cfg_path, tokenizer)
    with torch.no_grad():
        out = model(torch.tensor([result.token_ids]), output_attentions=True)
    expected = np.stack([a[0].numpy() for a in out.attentions])
    assert result.n_tokens > 3 * 5  # past Gemma's window
    assert peaked(expected) >= 0.6
    np.testing.assert_allclose(result.weights, expected, atol=1e-5)


# --- the configuration: --book-config, --preset ----------------------------------------------

def test_presets_are_the_book_s_published_models():
    # The parameter counts the book's notebooks print for their published configs.
    published = {"llama3.2-1b": 1_498_482_688, "qwen3-0.6b": 751_632_384, "gemma3-270m": 435_870_336}
    for name, total in published.items():
        kind, cfg = book_reader.PRESETS[name]
        shapes = book_reader.state_dict_shapes(kind, cfg)
        assert sum(math.prod(s) for s in shapes.values()) == total, name
    kinds = {name: kind for name, (kind, _) in book_reader.PRESETS.items()}
    assert kinds == {"llama3.2-1b": "Llama3Model", "llama3.2-3b": "Llama3Model",
                     "qwen3-0.6b": "Qwen3Model", "qwen3-1.7b": "Qwen3Model",
                     "gemma3-270m": "Gemma3Model"}


def test_a_preset_fills_in_what_the_state_dict_does_not_record(tmp_path, monkeypatch):
    model, cfg = book_model("Qwen3Model")
    path, _, tokenizer = save(tmp_path, model, cfg)
    small = {k: v for k, v in cfg.items() if k != "rope_base"} | {"rope_base": 1_000_000.0}
    monkeypatch.setitem(book_reader.PRESETS, "qwen3-0.6b", ("Qwen3Model", small))
    with pytest.warns(Warning, match=r"rope_base=1000000\.0, context_length=256 from --preset qwen3-0\.6b"):
        result = analyze(TEXT, ModelConfig(book_preset="qwen3-0.6b", tokenizer=str(tokenizer)),
                         weights=str(path), layer="all")
    np.testing.assert_allclose(result.weights, book_attentions(model, result.token_ids), atol=1e-5)
    assert result.config["book_config"] == "--preset qwen3-0.6b"


def test_a_preset_whose_shapes_disagree_is_one_error_line(tmp_path, cli):
    model, cfg = book_model("Qwen3Model")
    path, _, tokenizer = save(tmp_path, model, cfg)
    result = cli("info", "--weights", path, "--preset", "qwen3-0.6b", "--tokenizer", tokenizer)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --preset qwen3-0.6b says")
    assert "vocab_size=151936" in lines[0] and "300" in lines[0]
    # a preset of another class says which presets fit
    other = cli("info", "--weights", path, "--preset", "gemma3-270m", "--tokenizer", tokenizer)
    assert other.exit_code == 2 and "presets for it: qwen3-0.6b, qwen3-1.7b" in other.stderr


def test_without_config_or_preset_it_says_what_is_needed(tmp_path, cli):
    model, cfg = book_model("Llama3Model")
    path, _, tokenizer = save(tmp_path, model, cfg)
    result = cli("heatmap", TEXT, "--weights", path, "--tokenizer", tokenizer, "--out", tmp_path / "out")
    assert result.exit_code == 2 and not (tmp_path / "out").exists()
    error = result.stderr.strip()
    assert error.startswith("Error: model.pth is a state dict of the book's Llama3Model")
    for words in ("head count (n_heads)", "RoPE base", "rope_freq", "--book-config FILE.json",
                  "--preset llama3.2-1b or --preset llama3.2-3b"):
        assert words in error


@pytest.mark.parametrize("changes, words", [
    ({"emb_dim": 128}, r"cfg\.json says emb_dim=128 but model\.pth has 64 \(columns of tok_emb"),
    ({"n_kv_groups": 4}, r"says n_kv_groups=4 but model\.pth has 2"),
    ({"n_heads": 8}, r"says n_heads=8 but model\.pth has 4"),
    ({"qk_norm": False}, r"says qk_norm=False but model\.pth has True"),
    ({"rope_base": None}, r"cfg\.json: rope_base missing"),
    ({"layer_types": ["full_attention"]}, r"layer_types must list one type per layer \(4"),
    ({"layer_types": ["sliding_attention", "chunked_attention"] * 2}, r"'chunked_attention' not supported"),
    ({"sliding_window": None}, r"sliding_window is missing"),
    ({"dtype": "torch.int8"}, r"dtype must name a torch float type"),
])
def test_a_config_that_disagrees_or_lacks_a_key_is_refused_by_name(tmp_path, changes, words):
    model, cfg = book_model("Gemma3Model")
    cfg = {k: v for k, v in {**cfg, **changes}.items() if v is not None or k == "query_pre_attn_scalar"}
    path, cfg_path, tokenizer = save(tmp_path, model, cfg)
    with pytest.raises(InputError, match=words):
        models.load(str(path), book_config=cfg_path, tokenizer=tokenizer)


@pytest.mark.parametrize("edit, words", [
    (lambda s: s.pop("trf_blocks.1.att.W_key.weight"), r"trf_blocks\.1\.att\.W_key\.weight is missing"),
    (lambda s: s.update({"trf_blocks.0.att.W_query.bias": torch.zeros(128)}),
     r"trf_blocks\.0\.att\.W_query\.bias is not part of the book's Qwen3Model"),
    (lambda s: s.update({"trf_blocks.0.ff.gate.weight": torch.zeros(4, 64)}), r"mixture-of-experts"),
    (lambda s: s.update({"trf_blocks.0.norm1.shift": torch.ones(64)}), r"norm1\.shift: an RMSNorm shift"),
    (lambda s: s.update({"trf_blocks.2.ff.fc3.weight": torch.zeros(64, 100)}),
     r"fc3\.weight has shape \(64, 100\), expected \(64, 128\)"),
])
def test_tensors_the_class_does_not_have_are_refused_by_name(tmp_path, edit, words):
    model, cfg = book_model("Qwen3Model")
    state = dict(model.state_dict())
    edit(state)
    path, cfg_path, tokenizer = save(tmp_path, model, cfg, state=state)
    with pytest.raises(InputError, match=words):
        models.load(str(path), book_config=cfg_path, tokenizer=tokenizer)


def test_a_zero_rmsnorm_shift_is_read(tmp_path):
    model, cfg = book_model("Qwen3Model")
    state = dict(model.state_dict()) | {"trf_blocks.0.norm1.shift": torch.zeros(64)}
    path, cfg_path, tokenizer = save(tmp_path, model, cfg, state=state)
    result = run(path, cfg_path, tokenizer)
    np.testing.assert_allclose(result.weights, book_attentions(model, result.token_ids), atol=1e-5)


def test_no_tokenizer_asks_for_tokenizer(tmp_path, cli):
    model, cfg = book_model("Qwen3Model")
    path, cfg_path, tokenizer = save(tmp_path, model, cfg)
    result = cli("info", "--weights", path, "--book-config", cfg_path)
    assert result.exit_code == 2
    assert "holds no tokenizer: pass --tokenizer PATH" in result.stderr
    # one beside the state dict is used, and said
    (tmp_path / "tokenizer.json").write_bytes(tokenizer.read_bytes())
    beside = cli("info", "--weights", path, "--book-config", cfg_path)
    assert beside.exit_code == 0, beside.stderr
    assert "beside the state dict" in beside.stderr


def test_detect_names_the_book_classes_and_leaves_gptmodel_alone(tmp_path):
    for kind in CLASSES:
        model, _ = book_model(kind)
        torch.save(model.state_dict(), tmp_path / f"{kind}.pth")
        assert book_reader.detect(tmp_path / f"{kind}.pth") == kind
    gpt = {"tok_emb.weight": torch.zeros(3, 4), "pos_emb.weight": torch.zeros(3, 4),
           "trf_blocks.0.norm1.scale": torch.ones(4)}
    torch.save(gpt, tmp_path / "gpt.pth")
    assert book_reader.detect(tmp_path / "gpt.pth") is None
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    assert book_reader.detect(tmp_path / "junk.pth") is None


# --- the CLI -----------------------------------------------------------------------------------

def test_heatmap_and_info_on_a_book_state_dict(tmp_path, cli):
    model, cfg = book_model("Qwen3Model")
    path, cfg_path, tokenizer = save(tmp_path, model, cfg)
    out = tmp_path / "out"
    result = cli("heatmap", TEXT, "--weights", path, "--book-config", cfg_path, "--tokenizer",
                 tokenizer, "--layer", "2", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert (out / "head_00.png").is_file() and (out / "head_03.png").is_file()
    assert "Warning: Qwen3Model state dict: rope_base=1000000.0, context_length=256 from" in result.stderr
    info = cli("info", "--weights", path, "--book-config", cfg_path, "--tokenizer", tokenizer,
               "--format", "json")
    assert info.exit_code == 0, info.stderr
    config = json.loads(info.stdout)["config"]
    assert (config["layout"], config["book_class"], config["family"]) == ("book-qwen3", "Qwen3Model", "qwen3")
    assert (config["n_layers"], config["n_heads"], config["n_kv_heads"], config["head_dim"]) == (3, 4, 2, 32)
    assert config["qk_norm"] is True and config["rope"]["base"] == 1e6
    assert config["book_config"] == str(cfg_path) and config["book_dtype"] == "bfloat16"
    assert any("from " + str(cfg_path) in note for note in config["notes"])
