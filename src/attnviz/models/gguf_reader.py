"""``--weights FILE.gguf``: a llama.cpp GGUF file read as a virtual Hugging Face checkpoint.

Its metadata becomes the ``config.json`` transformers' GGUF loader builds
(``integrations/ggml.py``'s ``GGUF_CONFIG_MAPPING``, ``modeling_gguf_pytorch_utils.py``), its
tensors are served under Hugging Face's names (``models.gguf_file.GGUFSource``), and the
family's own reader (``models.families.READERS``) does the rest, exactly as for safetensors.
What llama.cpp's converter changed on the way in is undone as transformers undoes it: the
Q/K row permutation of ``llama`` files, Gemma's norms stored as 1 + w, GPT-2's Conv1D
weights stored transposed; and GPT-NeoX's fused q | k | v goes back to its per-head layout.
An absent ``output.weight`` means tied embeddings.

Where transformers leaves out what the file states, the file wins: the head dimension
(``attention.key_length``), biases (a ``blk.0.attn_q.bias``), linear RoPE scaling
(``rope.scaling.type``) and Llama 3.1's (the ``rope_freqs`` tensor, as llama.cpp applies it),
Gemma's softcaps, window pattern and local RoPE base, a Mistral-style window
(``llama.attention.sliding_window``).
The attention is that of the weights dequantized to float32, not of llama.cpp's quantized
arithmetic.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import replace

from attnviz.core.errors import InputError
from attnviz.models.checkpoint import Checkpoint
from attnviz.models.families import READERS
from attnviz.models.gguf_file import GGUFFile, GGUFSource, dequantizable, type_name
from attnviz.models.resolve import Located
from attnviz.text.gguf_tokenizer import check_token_count, gguf_tokenizer

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2", "gptneox")
FLOAT_NOTE = ("the attention is that of the weights dequantized to float32 (not of llama.cpp's "
              "quantized arithmetic)")

# The file's tensor names (gguf's TENSOR_NAMES, without blk.N.) -> Hugging Face's.
_LLAMA_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LLAMA_BLOCK = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GEMMA_BLOCK = {**_LLAMA_BLOCK, "post_attention_norm": "post_attention_layernorm",
                "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}
_GPT2_TOP = {"token_embd": "transformer.wte", "position_embd": "transformer.wpe",
             "output_norm": "transformer.ln_f", "output": "lm_head"}
_GPT2_BLOCK = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj",
               "ffn_norm": "ln_2", "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
_NEOX_TOP = {"token_embd": "gpt_neox.embed_in", "output_norm": "gpt_neox.final_layer_norm",
             "output": "embed_out"}
_NEOX_BLOCK = {"attn_norm": "input_layernorm", "attn_qkv": "attention.query_key_value",
               "attn_output": "attention.dense", "ffn_norm": "post_attention_layernorm",
               "ffn_up": "mlp.dense_h_to_4h", "ffn_down": "mlp.dense_4h_to_h"}
# architecture -> (top-level names, block names, Hugging Face's block prefix)
NAMES = {
    "llama": (_LLAMA_TOP, _LLAMA_BLOCK, "model.layers."),
    "qwen2": (_LLAMA_TOP, _LLAMA_BLOCK, "model.layers."),
    "qwen3": (_LLAMA_TOP, _LLAMA_BLOCK, "model.layers."),
    "gemma2": ({k: v for k, v in _LLAMA_TOP.items() if k != "output"}, _GEMMA_BLOCK, "model.layers."),
    "gemma3": (_LLAMA_TOP, _GEMMA_BLOCK, "model.layers."),
    "gpt2": (_GPT2_TOP, _GPT2_BLOCK, "transformer.h."),
    "gptneox": (_NEOX_TOP, _NEOX_BLOCK, "gpt_neox.layers."),
}
_GGUF_NAME = re.compile(r"(?:blk\.(\d+)\.)?(\w+)\.(weight|bias)")
# Gemma 2 27B (46 layers) and Gemma 3 27B (62) scale by (hidden / heads)^-½, the others by
# head_dim^-½ (llama.cpp's rule; the files do not record query_pre_attn_scalar)
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}


def read(located: Located, *, n_heads: int | None = None, tokenizer=None) -> Checkpoint:
    """The checkpoint of a GGUF file: its metadata as a Hugging Face config, its tensors
    under Hugging Face's names, read by the family's own reader."""
    path = located.weights[0]
    file = GGUFFile(path)
    arch = file.get("general.architecture", str)
    if arch is None:
        raise InputError(f"{path}: metadata general.architecture is missing")
    if arch not in ARCHITECTURES:
        raise InputError(f"{path}: GGUF architecture {arch!r} is not supported; attnviz reads "
                         f"{', '.join(ARCHITECTURES)}")
    splits = file.get("split.count", int)
    if splits is not None and splits > 1:
        raise InputError(f"{path} is part of a split GGUF ({splits} files): merge it first "
                         "(llama-gguf-split --merge)")
    raw = config(file, arch)
    source = GGUFSource(file, tensor_names(file, arch, raw))
    virtual = replace(located, config=path, gguf=source)
    reader = importlib.import_module(READERS[raw["model_type"]])
    checkpoint = reader.read(virtual, raw, n_heads=n_heads, tokenizer=_tokenizer(file, tokenizer))
    if tokenizer is None:  # the file's own: one token per row of its embedding
        check_token_count(file, path, checkpoint.spec.vocab_size)
    notes = [FLOAT_NOTE, *_rope_factors(file, checkpoint)]
    checkpoint.notes += notes
    checkpoint.layout = "gguf"
    checkpoint.described |= {
        "layout": "gguf", "dtype": file.file_type() or checkpoint.described.get("dtype"),
        "format": "gguf", "architecture": arch, "file_type": file.file_type(),
        "quantizations": file.quantizations(),
        "notes": [*checkpoint.described.get("notes", []), *notes],
    }
    return checkpoint


def gguf_source(located: Located) -> GGUFSource:
    """The tensors of a located GGUF file under Hugging Face's names (``hf.open_source``)."""
    if located.gguf is not None:
        return located.gguf
    file = GGUFFile(located.weights[0])
    arch = file.get("general.architecture", str)
    if arch not in ARCHITECTURES:
        raise InputError(f"{file.path}: GGUF architecture {arch!r} is not supported")
    return GGUFSource(file, tensor_names(file, arch, config(file, arch)))


def _tokenizer(file: GGUFFile, path):
    """``--tokenizer PATH`` (the family's reader loads it), else the file's own."""
    if path is not None:
        return path
    return gguf_tokenizer(file, file.path)


def _rope_factors(file: GGUFFile, checkpoint: Checkpoint) -> list[str]:
    """``rope_freqs.weight``: llama.cpp's converter writes Llama 3.1's RoPE scaling as one
    factor per frequency, which llama.cpp divides each frequency by. transformers' GGUF loader
    ignores it (and so runs Llama 3.x unscaled); attnviz applies it, as llama.cpp does."""
    info = file.tensors.get("rope_freqs.weight")
    spec = checkpoint.spec
    ropes = {layer.rope for layer in spec.layers if layer.rope is not None}
    if info is None or not ropes:
        return []
    half = {rope.rotary_dim // 2 for rope in ropes}
    if len(half) != 1 or info.shape != (next(iter(half)),) or info.ggml_type not in dequantizable():
        raise InputError(f"{file.path}: tensor rope_freqs.weight has shape {info.shape} "
                         f"({type_name(info.ggml_type)}); expected ({min(half)},) values")
    values = file.dequantize(file.raw(info), info)
    if not bool((values > 0).all()) or not bool(values.isfinite().all()):
        raise InputError(f"{file.path}: tensor rope_freqs.weight holds factors that are not "
                         "positive numbers")

    def scaled(rope):
        if rope is None:
            return None
        if rope.scaling is None:
            return replace(rope, scaling=("factors", tuple(values.tolist())))
        if rope.scaling[0] == "linear":  # both: llama.cpp divides by each
            return replace(rope, scaling=("factors", tuple((values * rope.scaling[1]).tolist())))
        raise InputError(f"{file.path}: rope_freqs.weight together with {rope.scaling[0]} RoPE "
                         "scaling is not supported")

    checkpoint.spec = replace(spec, layers=tuple(replace(layer, rope=scaled(layer.rope))
                                                 for layer in spec.layers))
    checkpoint.described["rope"] = checkpoint.spec.describe()["rope"]
    return ["rope_freqs.weight (Llama 3.1's RoPE scaling as factors per frequency) is applied as "
            "llama.cpp applies it; transformers' GGUF loader ignores it"]


# -- the metadata as transformers' config.json ------------------------------------------------------


def _need(file: GGUFFile, key: str, kind=int):
    value = file.get(key, kind)
    if value is None:
        raise InputError(f"{file.path}: metadata {key} is missing")
    return value


def config(file: GGUFFile, arch: str) -> dict:
    """The Hugging Face config of the file (None values left out: the reader's defaults)."""
    raw = {"gpt2": _gpt2, "gptneox": _neox}.get(arch, _decoder)(file, arch)
    experts = file.get(f"{arch}.expert_count", int)
    if experts:
        raw["num_local_experts"] = experts  # refused by name by the reader
    return {k: v for k, v in raw.items() if v is not None}


def _decoder(file: GGUFFile, arch: str) -> dict:
    """llama (Llama 3.x, SmolLM2, Mistral), qwen2, qwen3, gemma2, gemma3."""
    def get(name, kind=int):
        return file.get(f"{arch}.{name}", kind)

    def need(name, kind=int):
        return _need(file, f"{arch}.{name}", kind)

    heads, n_layers, hidden = need("attention.head_count"), need("block_count"), need("embedding_length")
    head_dim = get("attention.key_length")
    if head_dim is None and arch == "llama":
        head_dim = get("rope.dimension_count")  # transformers maps it to head_dim for llama
    tensors = file.tensors
    raw = {
        "model_type": arch, "hidden_size": hidden, "num_hidden_layers": n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv") or heads,
        "head_dim": head_dim, "intermediate_size": need("feed_forward_length"),
        "max_position_embeddings": get("context_length"),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", float),
        "rope_theta": get("rope.freq_base", float),
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
    }
    kind = get("rope.scaling.type", str)
    if kind not in (None, "none"):
        raw["rope_scaling"] = {"rope_type": kind, "factor": get("rope.scaling.factor", float)}
    if arch == "llama":
        raw["mlp_bias"] = "blk.0.ffn_up.bias" in tensors
        window = get("attention.sliding_window")
        if window is not None or file.get("general.name") == "mistral":  # transformers' test
            raw |= {"model_type": "mistral", "sliding_window": window}
    if arch.startswith("gemma"):
        raw |= _gemma(file, arch, raw)
    return raw


def _gemma(file: GGUFFile, arch: str, raw: dict) -> dict:
    def get(name, kind=int):
        return file.get(f"{arch}.{name}", kind)

    head_dim = raw["head_dim"] or 256
    big = raw["num_hidden_layers"] == _GEMMA_27B_LAYERS[arch]
    scalar = raw["hidden_size"] // raw["num_attention_heads"] if big else head_dim
    extra = {"model_type": "gemma2" if arch == "gemma2" else "gemma3_text",
             "query_pre_attn_scalar": scalar, "sliding_window": get("attention.sliding_window"),
             "final_logit_softcapping": get("final_logit_softcapping", float)}
    if arch == "gemma2":
        extra["attn_logit_softcapping"] = get("attn_logit_softcapping", float)
        return extra
    extra["rope_local_base_freq"] = get("rope.freq_base_swa", float)
    pattern = file.metadata.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, int) and not isinstance(pattern, bool):
        extra["sliding_window_pattern"] = pattern
    elif (flags := file.array(f"{arch}.attention.sliding_window_pattern")) is not None:
        extra["layer_types"] = ["sliding_attention" if f else "full_attention" for f in flags]
    return extra


def _gpt2(file: GGUFFile, arch: str) -> dict:
    return {"model_type": "gpt2", "n_layer": _need(file, "gpt2.block_count"),
            "n_head": _need(file, "gpt2.attention.head_count"),
            "n_embd": _need(file, "gpt2.embedding_length"),
            "n_positions": file.get("gpt2.context_length", int),
            "n_inner": file.get("gpt2.feed_forward_length", int),
            "layer_norm_epsilon": file.get("gpt2.attention.layer_norm_epsilon", float),
            "tie_word_embeddings": "output.weight" not in file.tensors}


def _neox(file: GGUFFile, arch: str) -> dict:
    hidden, heads = _need(file, "gptneox.embedding_length"), _need(file, "gptneox.attention.head_count")
    head_dim = hidden // heads
    rotary = file.get("gptneox.rope.dimension_count", int, head_dim)
    pct = rotary / head_dim
    if int(head_dim * pct) != rotary:  # the reader takes int(head_dim * rotary_pct)
        pct = (rotary + 0.5) / head_dim
    return {"model_type": "gpt_neox", "hidden_size": hidden, "num_attention_heads": heads,
            "num_hidden_layers": _need(file, "gptneox.block_count"),
            "intermediate_size": file.get("gptneox.feed_forward_length", int),
            "max_position_embeddings": file.get("gptneox.context_length", int),
            "rotary_pct": pct, "rotary_emb_base": file.get("gptneox.rope.freq_base", float),
            "use_parallel_residual": file.get("gptneox.use_parallel_residual", bool),
            "layer_norm_eps": file.get("gptneox.attention.layer_norm_epsilon", float),
            "attention_bias": "blk.0.attn_qkv.bias" in file.tensors,
            "tie_word_embeddings": "output.weight" not in file.tensors}


# -- the tensors under Hugging Face's names ---------------------------------------------------------


def tensor_names(file: GGUFFile, arch: str, raw: dict) -> dict[str, tuple[str, tuple | None]]:
    """Hugging Face's name of each tensor the family's reader reads -> (the file's name, the
    transform that brings it to Hugging Face's layout). Other tensors are left unread."""
    top, block, prefix = NAMES[arch]
    heads = raw.get("num_attention_heads", raw.get("n_head"))
    names = {}
    supported = dequantizable()
    for name, info in file.tensors.items():
        match = _GGUF_NAME.fullmatch(name)
        if match is None:
            continue
        layer, base, suffix = match.groups()
        hf = (top if layer is None else block).get(base)
        if hf is None:
            continue
        if info.ggml_type not in supported:
            raise InputError(f"{file.path}: tensor {name} is stored as {type_name(info.ggml_type)}, "
                             "which attnviz cannot dequantize (gguf.quants reads F32, F16, BF16, "
                             "Q4_0 … Q8_0, the K-quants and the IQ types)")
        transform = None
        if arch == "llama" and base in ("attn_q", "attn_k"):
            transform = ("unpermute", heads if base == "attn_q" else raw["num_key_value_heads"])
        elif arch.startswith("gemma") and "norm" in base:
            transform = ("minus_one",)
        elif arch == "gpt2" and suffix == "weight" and base in ("attn_qkv", "attn_output",
                                                               "ffn_up", "ffn_down"):
            transform = ("transpose",)
        elif arch == "gptneox" and base == "attn_qkv":
            transform = ("neox_qkv", heads)
        full = hf if layer is None else f"{prefix}{layer}.{hf}"
        names[f"{full}.{suffix}"] = (name, transform)
    return names
