"""The other families benchmark (SPEC section 7, "Other families (round 3)"): memory of
one layer and time of every layer of a Llama-3.2-1B-shaped checkpoint, `attnviz scan` of a
SmolLM2-135M-shaped one, and `attnviz scan` and `heatmap --layer all` of a
Pythia-160m-shaped (GPT-NeoX) one, each against transformers.

    python benchmarks/models_bench.py            # full sizes, prints a markdown table
    python benchmarks/models_bench.py --smoke    # tiny shapes, one run: checks it works
    python benchmarks/models_bench.py --only pythia --repeat 3   # the rows of one checkpoint

Full sizes, random weights made here (no download):

- a **Llama-3.2-1B** shape: 16 layers, d_model 2048, 32 query / 8 key-value heads
  (head_dim 64), MLP 8192, vocabulary 128256, tied embeddings, RoPE theta 500000 with
  Llama 3's ``llama3`` scaling (factor 32, low 1, high 4, original 8192) — 1.24B
  parameters in ONE bfloat16 ``model.safetensors`` (2.3 GiB), as Meta ships it. Built once
  into ``/tmp/attnviz-bench-llama1b`` (``ATTNVIZ_BENCH_CACHE`` moves it) and reused while
  its stamp matches;
- a **SmolLM2-135M** shape: 30 layers, d_model 576, 9 / 3 heads, MLP 1536, vocabulary
  49152, tied, theta 100000, bfloat16 as SmolLM2 ships (``/tmp/attnviz-bench-smollm2``);
- a **Pythia-160m** shape (GPT-NeoX): 12 layers x 12 heads, d_model 768, MLP 3072, RoPE on
  25% of each head (16 of 64 dimensions) with base 10000, parallel residual, vocabulary
  50304, untied, float16 as Pythia ships (``/tmp/attnviz-bench-pythia160m``).

The tensors are filled with torch directly and written with ``safetensors.torch.save_file``
under the names transformers' ``LlamaForCausalLM`` uses, beside a ``config.json`` in the
hub's own form; when a folder is built, transformers loads it once
(``AutoModelForCausalLM.from_pretrained``) to check that every tensor is used and none is
missing. The tokenizer is a byte-level BPE trained with ``tokenizers`` on the benchmark's
words (every word with its leading space one token, so texts have exact lengths): Llama 3
style with ``<|begin_of_text|>`` prepended, SmolLM2 style with none. The Pythia shape is
made by transformers itself instead (``GPTNeoXForCausalLM``, seeded, matrices respread,
``save_pretrained`` in float16), with the same kind of tokenizer declared
``GPTNeoXTokenizer`` (``<|endoftext|>``, ``<|padding|>``; nothing added to a text), which
AutoTokenizer is checked to read the same way when the folder is built.

Rows (``bench_models`` returns them in ``benchmarks/run.py``'s format):

- ``attnviz heatmap TEXT --layer 0`` of 64 tokens (BOS included): whole-process peak RSS
  against the file size (target <= 20%), and for context a script loading every tensor
  (``safetensors.torch.load_file``);
- ``attnviz export --layer all`` of 512 tokens against a script doing the same with
  transformers (AutoTokenizer, ``AutoModelForCausalLM.from_pretrained(attn_implementation=
  "eager", dtype=torch.float32)``, the forward with ``output_attentions=True`` under
  ``torch.inference_mode()``, ``np.savez`` of the stacked attentions): whole-process wall
  time (target <= 0.6x), the two files' max difference, both peak RSS;
- ``attnviz scan`` of 300 prompts (scan_bench's generator, 20-120 tokens) ``--layer all``
  against transformers eager (``AutoModel``, the base model, as scan_bench uses
  ``GPT2Model``) one prompt at a time computing the same statistics and detectors; the
  means are compared (target >= 1.5x the prompts/s); the same row for the Pythia shape;
- ``attnviz heatmap --layer all`` of 1001 tokens of the Pythia shape (144 head pictures,
  12 layer overviews, the model overview) against run.py's full-context transformers
  script (``GPTNeoXModel.from_pretrained(attn_implementation="eager", dtype=torch.float32)``,
  the forward with attentions, ``np.savez``; the ids given), whole processes alternating as
  run.py's GPT-2 rows do (target <= 1.0x); one ``attnviz export --layer all`` of the same
  text afterwards checks that the weights agree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmark modules

from scan_bench import WORDS, make_prompts, peak_rss_mb, scan_cmd, wall, write_prompts  # noqa: E402

BUILD_VERSION = 1  # bump when the way the checkpoints are made changes: rebuilds the caches
CACHE = Path(os.environ.get("ATTNVIZ_BENCH_CACHE", tempfile.gettempdir()))

LLAMA_3_2_1B = {  # meta-llama/Llama-3.2-1B's config.json (token ids left out)
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 16,
    "hidden_size": 2048, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
    "intermediate_size": 8192, "vocab_size": 128256, "tie_word_embeddings": True,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
    "initializer_range": 0.02, "pretraining_tp": 1, "use_cache": True,
    "bos_token_id": None, "eos_token_id": None, "torch_dtype": "bfloat16",
}
SMOLLM2_135M = {  # HuggingFaceTB/SmolLM2-135M's config.json (token ids left out)
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 30,
    "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
    "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
    "rope_scaling": None, "hidden_act": "silu", "attention_bias": False,
    "attention_dropout": 0.0, "mlp_bias": False, "initializer_range": 0.041,
    "pretraining_tp": 1, "use_cache": True, "bos_token_id": None, "eos_token_id": None,
    "torch_dtype": "bfloat16",
}
PYTHIA_160M = {  # EleutherAI/pythia-160m's config.json (token ids left out)
    "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "num_hidden_layers": 12,
    "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072,
    "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": True,
    "vocab_size": 50304, "max_position_embeddings": 2048, "layer_norm_eps": 1e-5,
    "tie_word_embeddings": False, "hidden_act": "gelu", "initializer_range": 0.02,
    "use_cache": True, "bos_token_id": None, "eos_token_id": None, "dtype": "float16",
}
TINY = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 300,
        "max_position_embeddings": 2048}
TINY_NEOX = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
             "intermediate_size": 128, "vocab_size": 300}

SPREAD = 1.8  # the random matrices' std times sqrt(d_model): peaked attention rows, not one-hot

BOS = "<|begin_of_text|>"
NEOX_SPECIALS = ("<|endoftext|>", "<|padding|>")  # ids 0 and 1, as in Pythia's tokenizer
NEOX_TOKENIZER = {  # EleutherAI/pythia-160m's tokenizer_config.json, in transformers 5's form
    "tokenizer_class": "GPTNeoXTokenizer", "model_max_length": 2048, "add_bos_token": False,
    "add_eos_token": False, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>", "pad_token": None,
}

# What a user writes with transformers to get every layer's attention of a text into a file.
TRANSFORMERS_EXPORT = r"""
import sys
import numpy as np, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, text_file, out = sys.argv[1:4]
tokenizer = AutoTokenizer.from_pretrained(folder)
ids = tokenizer(open(text_file, encoding="utf-8").read(), return_tensors="pt")["input_ids"]
model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager",
                                             dtype=torch.float32).eval()
with torch.inference_mode():
    attentions = model(ids, output_attentions=True).attentions
np.savez(out, weights=np.stack([a[0].numpy() for a in attentions]))  # (L, H, T, T)
"""

# Every tensor of the file loaded (and touched).
LOAD_WHOLE = r"""
import sys
from safetensors.torch import load_file
tensors = load_file(sys.argv[1])
total = sum(float(t.sum()) for t in tensors.values())
"""

# scan_bench's transformers baseline for the Llama-style families: the base model (no LM
# head, as scan_bench's GPT2Model), the checkpoint's tokenizer through AutoTokenizer.
HF_SCAN = r"""
import json, sys
import numpy as np, torch, transformers
from attnviz.analyses.stats import head_stats
from attnviz.analyses.detectors import detector_scores
prompts = [line for line in open(sys.argv[1], encoding="utf-8").read().split("\n") if line.strip()]
tokenizer = transformers.AutoTokenizer.from_pretrained(sys.argv[2])
model = transformers.AutoModel.from_pretrained(sys.argv[2], attn_implementation="eager",
                                               dtype=torch.float32).eval()
sums, squares = {}, {}
with torch.inference_mode():
    for text in prompts:
        ids = tokenizer(text)["input_ids"]
        attentions = model(torch.tensor([ids]), output_attentions=True).attentions
        weights = np.stack([a[0].numpy() for a in attentions])  # (L, H, T, T)
        values = {}
        for layer_weights in weights:
            for name, v in {**head_stats(layer_weights), **detector_scores(layer_weights, ids)}.items():
                values.setdefault(name, []).append(v)
        for name, v in values.items():
            v = np.stack(v)  # (L, H)
            sums[name] = sums.get(name, 0.0) + v
            squares[name] = squares.get(name, 0.0) + v * v
n = len(prompts)
means = {name: (s / n).tolist() for name, s in sums.items()}
json.dump({"mean": means}, open(sys.argv[3], "w"))
"""

# The ids transformers' AutoTokenizer gives a text (the GPT-NeoX checkpoint's check).
VERIFY_TOKENIZER = r"""
import json, sys
from transformers import AutoTokenizer
print(json.dumps(AutoTokenizer.from_pretrained(sys.argv[1])(sys.argv[2])["input_ids"]))
"""

# Run once per folder built: transformers must take every tensor, miss none, and read the
# config as meant (the llama3 RoPE, tied embeddings).
VERIFY = r"""
import json, sys
from transformers import AutoModelForCausalLM
model, info = AutoModelForCausalLM.from_pretrained(sys.argv[1], output_loading_info=True)
problems = {k: list(v) for k, v in info.items() if k != "error_msgs" and v}
config = model.config
rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
print(json.dumps({"problems": problems, "tied": model.lm_head.weight.data_ptr()
                  == model.model.embed_tokens.weight.data_ptr(),
                  "rope_type": rope.get("rope_type", "default"),
                  "parameters": sum(p.numel() for p in model.parameters())}))
"""


def write_tokenizer(folder: Path, vocab_size: int, bos: str | None,
                    specials: tuple[str, ...] = ("<|end_of_text|>",),
                    config: dict | None = None) -> Path:
    """A byte-level BPE (``tokenizers``) trained on the benchmark's words, saved as
    tokenizer.json + tokenizer_config.json; with a vocabulary of a few hundred merges
    every `` word`` is one token. ``bos`` is prepended by the post-processor (Llama 3) or
    nothing is (SmolLM2, Pythia); ``specials`` are the other special tokens (the first is
    EOS), ``config`` the tokenizer_config.json (by default a PreTrainedTokenizerFast)."""
    import numpy as np
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    rng = np.random.default_rng(0)
    corpus = ["".join(" " + WORDS[i] for i in rng.integers(0, len(WORDS), size=200))
              for _ in range(50)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=([bos] if bos else []) + list(specials),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tokenizer.token_to_id(bos))])
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config or {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 131072,
        "bos_token": bos, "eos_token": specials[0]}))
    return folder


def _fill_tensors(config: dict, dtype, seed: int) -> dict:
    """Random tensors in ``LlamaForCausalLM``'s names and shapes, made in float32 and
    stored as ``dtype``. Projections have std 1.8 / sqrt(d_model), so attention rows are
    peaked but not one-hot; the norms are ones."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    d, f = config["hidden_size"], config["intermediate_size"]
    hd = config.get("head_dim") or d // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    std = SPREAD / d**0.5

    def weight(*shape: int) -> torch.Tensor:
        return torch.empty(shape).normal_(0.0, std, generator=generator).to(dtype)

    tensors = {"model.embed_tokens.weight": weight(config["vocab_size"], d)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors |= {p + "input_layernorm.weight": torch.ones(d, dtype=dtype),
                    p + "self_attn.q_proj.weight": weight(q, d),
                    p + "self_attn.k_proj.weight": weight(kv, d),
                    p + "self_attn.v_proj.weight": weight(kv, d),
                    p + "self_attn.o_proj.weight": weight(d, q),
                    p + "post_attention_layernorm.weight": torch.ones(d, dtype=dtype),
                    p + "mlp.gate_proj.weight": weight(f, d),
                    p + "mlp.up_proj.weight": weight(f, d),
                    p + "mlp.down_proj.weight": weight(d, f)}
    tensors["model.norm.weight"] = torch.ones(d, dtype=dtype)
    if not config["tie_word_embeddings"]:
        tensors["lm_head.weight"] = weight(config["vocab_size"], d)
    return tensors


def built_once(folder: Path, stamp: dict, build) -> Path:
    """``folder`` as ``build(path)`` fills it, reused while its stamp.json equals ``stamp``
    (built beside it, then renamed: an interrupted build leaves no half folder)."""
    import shutil

    stamp = {"version": BUILD_VERSION, **stamp}
    if (folder / "stamp.json").is_file() and json.loads((folder / "stamp.json").read_text()) == stamp:
        return folder
    building = folder.with_name(folder.name + ".building")
    if building.exists():
        shutil.rmtree(building)
    building.mkdir(parents=True)
    build(building)
    (building / "stamp.json").write_text(json.dumps(stamp))
    if folder.exists():
        shutil.rmtree(folder)
    building.rename(folder)
    return folder


def make_checkpoint(folder: Path, config: dict, *, bos: str | None, tokenizer_vocab: int,
                    seed: int = 0, verify: bool = True) -> Path:
    """``folder`` holding config.json, one bfloat16 model.safetensors and a tokenizer;
    reused when its stamp says it was made from the same config the same way. ``verify``:
    load it once with transformers (--smoke leaves that to the rows, which load it too)."""

    def build(building: Path) -> None:
        import torch
        from safetensors.torch import save_file

        start = time.perf_counter()
        tensors = _fill_tensors(config, torch.bfloat16, seed)
        save_file(tensors, building / "model.safetensors", metadata={"format": "pt"})
        del tensors
        (building / "config.json").write_text(json.dumps(config, indent=2))
        write_tokenizer(building, tokenizer_vocab, bos)
        if verify:
            out = subprocess.run([sys.executable, "-c", VERIFY, str(building)],
                                 capture_output=True, text=True, check=True)
            verdict = json.loads(out.stdout.strip().splitlines()[-1])
            rope = (config.get("rope_scaling") or {}).get("rope_type", "default")
            if verdict["problems"] or not verdict["tied"] or verdict["rope_type"] != rope:
                raise RuntimeError(f"transformers does not read the benchmark checkpoint as "
                                   f"meant: {verdict}")
            print(f"built {folder} ({verdict['parameters'] / 1e6:.0f}M parameters, loaded by "
                  f"transformers) in {time.perf_counter() - start:.0f} s", file=sys.stderr)

    return built_once(folder, {"config": config, "bos": bos, "tokenizer_vocab": tokenizer_vocab,
                               "seed": seed}, build)


def make_neox_checkpoint(folder: Path, config: dict, *, tokenizer_vocab: int, seed: int = 0,
                         verify: bool = True) -> Path:
    """A GPT-NeoX checkpoint made by transformers itself: ``GPTNeoXForCausalLM`` built from
    ``GPTNeoXConfig(**config)`` (seeded), its matrices respread (``SPREAD``, as
    ``_fill_tensors``; LayerNorms ones and zeros, biases zeros as transformers initialises
    them), cast to float16 and written by ``save_pretrained`` (one model.safetensors), with
    a GPT-NeoX-style tokenizer (``GPTNeoXTokenizer``: ``<|endoftext|>`` and
    ``<|padding|>``, nothing added to a text). ``verify``: transformers' AutoTokenizer must
    give the ids ``tokenizers`` reads from the file, one per word."""

    def build(building: Path) -> None:
        import torch
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        start = time.perf_counter()
        torch.manual_seed(seed)
        # built in float32 and cast (the config's dtype is what save_pretrained records)
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**{k: v for k, v in config.items()
                                                    if k not in ("model_type", "dtype")}))
        generator = torch.Generator().manual_seed(seed)
        std = SPREAD / config["hidden_size"] ** 0.5
        with torch.no_grad():
            for param in model.parameters():
                if param.ndim == 2:  # embeddings, projections, MLP, unembedding
                    param.normal_(0.0, std, generator=generator)
        model.to(torch.float16).save_pretrained(building)
        n_parameters = sum(p.numel() for p in model.parameters())
        del model
        write_tokenizer(building, tokenizer_vocab, None, specials=NEOX_SPECIALS, config=NEOX_TOKENIZER)
        if verify:
            text, n = text_of(building, 200, exact=True)
            out = subprocess.run([sys.executable, "-c", VERIFY_TOKENIZER, str(building), text],
                                 capture_output=True, text=True, check=True)
            ids = json.loads(out.stdout.strip().splitlines()[-1])
            from tokenizers import Tokenizer

            if ids != Tokenizer.from_file(str(building / "tokenizer.json")).encode(text).ids:
                raise RuntimeError("transformers' AutoTokenizer does not read the benchmark "
                                   "tokenizer as tokenizers does")
            print(f"built {folder} ({n_parameters / 1e6:.0f}M parameters, float16; "
                  f"AutoTokenizer: {n} tokens as meant) in {time.perf_counter() - start:.0f} s",
                  file=sys.stderr)

    return built_once(folder, {"config": config, "tokenizer_vocab": tokenizer_vocab, "seed": seed,
                               "tokenizer": NEOX_TOKENIZER}, build)


def text_of(folder: Path, n_tokens: int, exact: bool) -> tuple[str, int]:
    """A text of ``n_tokens`` tokens of the checkpoint's tokenizer (its BOS included) and
    its length; ``exact``: refuse any other length (the tiny vocabulary of --smoke splits
    words, so there the length is only reported)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    n_bos = len(tokenizer.encode("").ids)
    text = "".join(" " + WORDS[(i * 7) % len(WORDS)] for i in range(n_tokens - n_bos))
    count = len(tokenizer.encode(text).ids)
    if exact and count != n_tokens:
        raise RuntimeError(f"the benchmark text has {count} tokens, not {n_tokens}")
    return text, count


def shape_of(config: dict, smoke: bool, name: str) -> str:
    if smoke:
        return f"tiny {name} stand-in ({config['num_hidden_layers']} layers)"
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads", heads)
    return (f"{name} shape ({config['num_hidden_layers']} layers, "
            f"{heads if kv == heads else f'{heads}/{kv}'} heads)")


def bench_llama_one_layer(folder: Path, smoke: bool, tmp: Path) -> dict:
    """Row (a): one layer of the 1B model, peak RSS against the file."""
    size_mb = os.path.getsize(folder / "model.safetensors") / 2**20
    text, n = text_of(folder, 8 if smoke else 64, exact=not smoke)
    ours_cmd = [sys.executable, "-m", "attnviz", "heatmap", text, "--weights", str(folder),
                "--layer", "0", "--out", str(tmp / "one-layer"), "--quiet"]
    whole_cmd = [sys.executable, "-c", LOAD_WHOLE, str(folder / "model.safetensors")]
    if not smoke:
        wall(ours_cmd)  # the file in the OS cache for both sides
    ours_s, whole_s = wall(ours_cmd), wall(whole_cmd)
    ours_mb, whole_mb = peak_rss_mb(ours_cmd), peak_rss_mb(whole_cmd)
    shape = shape_of(LLAMA_3_2_1B | (TINY if smoke else {}), smoke, "Llama-3.2-1B")
    size = f"{size_mb:.0f}" if size_mb >= 10 else f"{size_mb:.2f}"
    return {"measure": f"`attnviz heatmap --layer 0`, {n} tokens, {shape}, bf16 "
                       f"({size} MB checkpoint): peak RSS",
            "baseline": f"{size} MB (the file); loading every tensor (safetensors "
                        f"load_file): {whole_mb:.0f} MB, {whole_s:.1f} s",
            "attnviz": f"{ours_mb:.0f} MB, {ours_s:.1f} s (whole process)",
            "ratio": f"{ours_mb / size_mb:.0%} of the file", "target": "<= 20% of the file",
            "met": ours_mb <= 0.20 * size_mb}


def bench_llama_export(folder: Path, smoke: bool, repeat: int, tmp: Path) -> dict:
    """Row (b): every layer of the 1B model into an .npz, against transformers."""
    import numpy as np
    from run import side_by_side  # benchmarks/run.py (it runs these rows)

    text, n = text_of(folder, 32 if smoke else 512, exact=not smoke)
    text_file = tmp / "export.txt"
    text_file.write_text(text, encoding="utf-8")
    ours_npz, theirs_npz = tmp / "ours.npz", tmp / "transformers.npz"
    theirs = [sys.executable, "-c", TRANSFORMERS_EXPORT, str(folder), str(text_file),
              str(theirs_npz)]
    ours = [sys.executable, "-m", "attnviz", "export", "--file", str(text_file), "--weights",
            str(folder), "--layer", "all", "-o", str(ours_npz), "--quiet"]
    if not smoke:
        wall(theirs), wall(ours)  # warm the OS file cache and the tokenizer caches
    base, mine = side_by_side(lambda: wall(theirs), lambda: wall(ours), repeat)
    a, b = np.load(ours_npz)["weights"], np.load(theirs_npz)["weights"]
    if a.shape != b.shape:
        raise RuntimeError(f"attnviz wrote {a.shape}, transformers {b.shape}")
    diff = float(np.abs(a - b).max())
    ours_mb, theirs_mb = peak_rss_mb(ours), peak_rss_mb(theirs)
    shape = shape_of(LLAMA_3_2_1B | (TINY if smoke else {}), smoke, "Llama-3.2-1B")
    return {"measure": f"`attnviz export --layer all`, {n} tokens, {shape}, bf16 file: "
                       "whole process",
            "baseline": f"{base:.2f} s, {theirs_mb:.0f} MB peak (transformers script: "
                        "AutoTokenizer, from_pretrained float32 eager, forward, savez)",
            "attnviz": f"{mine:.2f} s, {ours_mb:.0f} MB peak (same weights: max diff {diff:.1e})",
            "ratio": f"{mine / base:.2f}x its time", "target": "<= 0.6x",
            "met": mine / base <= 0.6 and diff < 1e-5}


def bench_scan_vs_transformers(folder: Path, shape: str, file_kind: str, smoke: bool,
                               repeat: int, tmp: Path) -> dict:
    """``attnviz scan --layer all`` of 300 prompts against transformers eager one prompt
    at a time (``HF_SCAN``), whole processes alternating; the means are compared."""
    import numpy as np

    tmp.mkdir(parents=True, exist_ok=True)
    n_prompts, shortest, longest = (6, 5, 20) if smoke else (300, 20, 120)
    prompts_file = write_prompts(tmp / "prompts.txt", make_prompts(n_prompts, shortest, longest))
    ours_json, hf_json = tmp / "scan.json", tmp / "hf.json"

    def ours() -> float:
        with open(ours_json, "w") as out:
            return n_prompts / wall(scan_cmd(prompts_file, folder), stdout=out)

    def theirs() -> float:
        return n_prompts / wall([sys.executable, "-c", HF_SCAN, str(prompts_file), str(folder),
                                 str(hf_json)])

    if not smoke:
        ours()  # warm the OS file cache and the tokenizer cache
    mine, hf = [], []
    for i in range(repeat):
        pair = (ours, theirs) if i % 2 == 0 else (theirs, ours)
        for f in pair:
            (mine if f is ours else hf).append(f())
    ours_rate, hf_rate = statistics.median(mine), statistics.median(hf)
    document, reference = json.loads(ours_json.read_text()), json.loads(hf_json.read_text())
    diff = 0.0
    for name, expected in reference["mean"].items():
        got = np.array([row[f"{name}_mean"] for row in document["heads"]], dtype=float)
        diff = max(diff, float(np.nanmax(np.abs(got - np.array(expected, dtype=float).reshape(-1)))))
    return {"measure": f"`attnviz scan --layer all`, {n_prompts} prompts of {shortest}-{longest} "
                       f"tokens, {shape}, {file_kind} file: vs transformers eager, one prompt at a time",
            "baseline": f"{hf_rate:.2f} prompts/s (AutoModel; same means, max diff {diff:.1e})",
            "attnviz": f"{ours_rate:.2f} prompts/s", "ratio": f"{ours_rate / hf_rate:.2f}x faster",
            "target": ">= 1.5x faster", "met": ours_rate / hf_rate >= 1.5 and diff < 1e-4}


def bench_smollm2_scan(folder: Path, smoke: bool, repeat: int, tmp: Path) -> dict:
    """Row (c): scan of 300 prompts of the SmolLM2-135M shape."""
    shape = shape_of(SMOLLM2_135M | (TINY if smoke else {}), smoke, "SmolLM2-135M")
    return bench_scan_vs_transformers(folder, shape, "bf16", smoke, repeat, tmp / "smollm2-scan")


def bench_pythia_scan(folder: Path, smoke: bool, repeat: int, tmp: Path) -> dict:
    """Row (d): scan of 300 prompts of the Pythia-160m shape (GPT-NeoX, float16 file)."""
    shape = shape_of(PYTHIA_160M | (TINY_NEOX if smoke else {}), smoke, "Pythia-160m")
    return bench_scan_vs_transformers(folder, shape, "fp16", smoke, repeat, tmp / "pythia-scan")


def bench_pythia_heatmap(folder: Path, smoke: bool, repeat: int, tmp: Path) -> dict:
    """Row (e): ``attnviz heatmap --layer all`` of 1001 tokens of the Pythia-160m shape
    against run.py's transformers script (``GPTNeoXModel``, float32 eager, the ids given),
    as run.py's GPT-2 full-context rows, alternating; ``attnviz export --layer all`` of the
    same text is run once after them to check that both sides compute the same weights."""
    from run import all_layers_commands, max_diff, rotating_medians  # benchmarks/run.py

    from attnviz.text.tokenization import load_tokenizer

    n_tokens = 32 if smoke else 1001
    work = tmp / "pythia-heatmap"
    work.mkdir(parents=True, exist_ok=True)
    text, n = text_of(folder, n_tokens, exact=not smoke)
    ids = load_tokenizer(folder).encode(text)  # attnviz's ids: AutoTokenizer's (no BOS for NeoX)
    if len(ids) != n:
        raise RuntimeError(f"attnviz's tokenizer gives {len(ids)} tokens, tokenizers {n}")
    commands = all_layers_commands(folder, text, ids, work, model_class="GPTNeoXModel")
    medians = rotating_medians({k: commands[k] for k in ("transformers", "heatmap")}, repeat)
    base, ours = medians["transformers"], medians["heatmap"]
    wall(commands["export"])
    diff = max_diff(work)
    n_files = len(list((work / "out").rglob("*.png")))
    shape = shape_of(PYTHIA_160M | (TINY_NEOX if smoke else {}), smoke, "Pythia-160m")
    return {"measure": f"`attnviz heatmap --layer all`, {n} tokens, {shape}, fp16 file, "
                       "whole process",
            "baseline": f"{base:.2f} s (transformers script: import, from_pretrained float32, "
                        "forward, savez)",
            "attnviz": f"{ours:.2f} s ({n_files} PNGs; its export: max diff {diff:.1e})",
            "ratio": f"{ours / base:.2f}x its time", "target": "<= 1.0x",
            "met": ours / base <= 1.0 and diff < 1e-5}


FAMILIES = ("llama", "smollm2", "pythia")


def bench_models(smoke: bool, repeat: int, tmp: Path,
                 families: tuple[str, ...] = FAMILIES) -> list[dict]:
    """The rows of SPEC section 7's "Other families (round 3)" (see the module docstring);
    ``families``: only the rows of these checkpoints."""
    tmp.mkdir(parents=True, exist_ok=True)
    repeat = 1 if smoke else repeat
    home = tmp if smoke else CACHE
    vocab = 300 if smoke else 2048
    rows = []
    if "llama" in families:
        llama = make_checkpoint(home / "attnviz-bench-llama1b",
                                LLAMA_3_2_1B | (TINY if smoke else {}), bos=BOS,
                                tokenizer_vocab=vocab, verify=not smoke)
        rows += [bench_llama_one_layer(llama, smoke, tmp),
                 bench_llama_export(llama, smoke, repeat, tmp)]
    if "smollm2" in families:
        smollm2 = make_checkpoint(home / "attnviz-bench-smollm2",
                                  SMOLLM2_135M | (TINY if smoke else {}), bos=None,
                                  tokenizer_vocab=vocab, verify=not smoke)
        rows.append(bench_smollm2_scan(smollm2, smoke, repeat, tmp))
    if "pythia" in families:
        pythia = make_neox_checkpoint(home / "attnviz-bench-pythia160m",
                                      PYTHIA_160M | (TINY_NEOX if smoke else {}),
                                      tokenizer_vocab=vocab, verify=not smoke)
        rows += [bench_pythia_scan(pythia, smoke, repeat, tmp),
                 bench_pythia_heatmap(pythia, smoke, repeat, tmp)]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one run")
    parser.add_argument("--repeat", type=int, default=5, help="alternating runs per side")
    parser.add_argument("--only", metavar="FAMILY,...", default=",".join(FAMILIES),
                        help=f"only the rows of these checkpoints ({', '.join(FAMILIES)})")
    args = parser.parse_args(argv)
    families = tuple(args.only.split(","))
    if unknown := [f for f in families if f not in FAMILIES]:
        parser.error(f"unknown famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}")
    with tempfile.TemporaryDirectory() as folder:
        rows = bench_models(args.smoke, args.repeat, Path(folder), families)
    from run import table

    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
