"""The long-context benchmark (SPEC section 20, "Long contexts, exactly"): every head of the
real SmolLM2-135M-Instruct at its whole context, and one layer of a Llama-3.2-1B shape at
32,768 tokens, in bounded memory.

    python benchmarks/longcontext_bench.py            # the rows, full sizes (~10 minutes)
    python benchmarks/longcontext_bench.py --smoke    # tiny stand-ins: checks it works

Rows (``bench_longcontext`` returns them in ``benchmarks/run.py``'s format, group
``longcontext``):

- ``attnviz export --layer all --resolution 512`` (pooled maps and every statistic) of 8,192
  tokens of the real SmolLM2 Q4_1 file, whole process, against a transformers script that
  only runs the forward at that length (``AutoModelForCausalLM.from_pretrained(folder,
  gguf_file=name, dtype=float32, attn_implementation="sdpa")``, ``model.model(ids)``, no
  weights returned): the floor, the forward has to run anyway. Target <= 1.6x its time and
  a peak RSS <= 3 GB.
- ``attnviz heatmap --layer all`` of the same text (270 pooled pictures and 30 statistics
  pictures) against the same script: target <= 2.5x.
- transformers' own ``output_attentions=True`` (eager) at that length, under a 16 GB
  address-space limit: what it needs (30 x 9 x 8192^2 float32 = 72.5 GB) and how it fails.
- ``attnviz export --layer 0 --resolution 1024`` of 32,768 tokens of the Llama-3.2-1B-shaped
  Q8_0 file of ``gguf_bench`` (16 layers, 32/8 heads of 64): peak RSS, target <= 6 GB; its
  time gives the projections of docs/long-context.md.
- An encoder at its whole context: ``attnviz heatmap --layer all`` of 8,192 tokens of a
  **ModernBERT-base** shape (22 layers x 12 heads, hidden 768, MLP 1152, every third layer
  global, the others a window of ±64; random weights made here by transformers'
  ``ModernBertModel``, respread to std 1.8 / sqrt(768) so rows are peaked, float32,
  ``save_pretrained`` into ``/tmp/attnviz-bench-modernbert-base``, ``ATTNVIZ_BENCH_CACHE``
  moves it), against a transformers script that only runs the forward (SDPA, no weights):
  peak RSS (target <= 3 GB) and time. ``--only modernbert`` runs this row alone,
  ``--tokens N`` at another length.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmark modules

from gguf_bench import llama1b_q8, smollm2_file, smollm2_stand_in, text_of  # noqa: E402
from models_bench import CACHE  # noqa: E402
from run import peak_rss_mb, side_by_side, table, wall  # noqa: E402

# transformers reading the GGUF file (its tokenizer and model), attention implementation {impl}
LOAD = r"""
import sys, json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, text_file = sys.argv[1:3]
folder, name = path.rsplit("/", 1)
ids = AutoTokenizer.from_pretrained(folder, gguf_file=name)(
    open(text_file, encoding="utf-8").read(), return_tensors="pt")["input_ids"]
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                             attn_implementation="{impl}").eval()
"""

# The floor: transformers runs the forward at this length and returns no weights.
FORWARD_ONLY = LOAD.format(impl="sdpa") + r"""
with torch.inference_mode():
    model.model(ids)
"""

# transformers' own way to every weight, under a memory limit: how far it gets.
OUTPUT_ATTENTIONS = r"""
import resource, sys
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
""" + LOAD.format(impl="eager") + r"""
try:
    with torch.inference_mode():
        model.model(ids, output_attentions=True)
    print(json.dumps({"ok": True}))
except (RuntimeError, MemoryError) as error:
    print(json.dumps({"ok": False, "error": f"{type(error).__name__}: {str(error)[:120]}"}))
"""

LIMIT = 16 * 2**30


def bench_smollm2(smoke: bool, repeat: int, tmp: Path) -> list[dict]:
    work = tmp / "smollm2-long"
    work.mkdir(parents=True, exist_ok=True)
    path = smollm2_stand_in(work / "file") if smoke else smollm2_file()
    text, n, described = text_of(path, 600 if smoke else 8192, exact=not smoke)
    text_file = work / "text.txt"
    text_file.write_text(text, encoding="utf-8")
    resolution = "64" if smoke else "512"
    theirs = [sys.executable, "-c", FORWARD_ONLY, str(path), str(text_file)]
    export = [sys.executable, "-m", "attnviz", "export", "--file", str(text_file), "--weights",
              str(path), "--layer", "all", "--resolution", resolution, "-o",
              str(work / "long.npz"), "--quiet"]
    heatmap = [sys.executable, "-m", "attnviz", "heatmap", "--file", str(text_file),
               "--weights", str(path), "--layer", "all", "--out", str(work / "maps"), "--quiet"]
    if not smoke:
        wall(theirs), wall(export)  # the file in the OS cache, the caches warm
    base, mine = side_by_side(lambda: wall(theirs), lambda: wall(export), repeat)
    rss_gb = peak_rss_mb(export) / 1024
    base_rss_gb = peak_rss_mb(theirs) / 1024
    _, drawn = side_by_side(lambda: base, lambda: wall(heatmap), 1)
    import numpy as np

    saved = np.load(work / "long.npz")
    block, shape = int(saved["block"]), saved["weights_max"].shape
    what = ("tiny SmolLM2 stand-in" if smoke else
            f"SmolLM2-135M-Instruct, the real Q4_1 GGUF ({described['n_layers']} layers, "
            f"{described['n_heads']}/{described['n_kv_heads']} heads)")
    rows = [
        {"measure": f"`attnviz export --layer all --resolution {resolution}`, {n:,} tokens, "
                    f"{what}: pooled maps {shape[-1]}x{shape[-1]} (blocks of {block}) and "
                    "every statistic, whole process",
         "baseline": f"{base:.1f} s, {base_rss_gb:.2f} GB peak (transformers script: the "
                     "forward only, SDPA, from the GGUF, no weights returned)",
         "attnviz": f"{mine:.1f} s, {rss_gb:.2f} GB peak",
         "ratio": f"{mine / base:.2f}x its time", "target": "<= 1.6x, <= 3 GB",
         "met": mine / base <= 1.6 and rss_gb <= 3.0},
        {"measure": f"`attnviz heatmap --layer all`, the same {n:,} tokens: pooled pictures "
                    f"(each cell the largest of its block) and a statistics picture per layer",
         "baseline": f"{base:.1f} s (the same forward-only script)",
         "attnviz": f"{drawn:.1f} s ({len(list((work / 'maps').rglob('*.png')))} PNGs)",
         "ratio": f"{drawn / base:.2f}x its time", "target": "<= 2.5x",
         "met": drawn / base <= 2.5},
    ]
    if not smoke:
        n_layers, n_heads = described["n_layers"], described["n_heads"]
        needed = 4 * n_layers * n_heads * n * n / 2**30
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", OUTPUT_ATTENTIONS, str(path), str(text_file),
                              str(LIMIT)], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        lines = out.stdout.strip().splitlines()
        result = json.loads(lines[-1]) if lines else {"ok": False,
                                                      "error": out.stderr.strip()[-120:]}
        rows.append({
            "measure": f"transformers' `output_attentions=True` (eager), the same {n:,} tokens, "
                       f"under a {LIMIT / 2**30:.0f} GB address-space limit",
            "baseline": f"needs {needed:.1f} GB for the weights it returns "
                        f"({n_layers} x {n_heads} x {n:,}² float32)",
            "attnviz": ("it ran" if result["ok"] else f"fails after {seconds:.0f} s: "
                        f"{result['error'].splitlines()[0]}"),
            "ratio": "-", "target": "recorded", "met": True})
    return rows


def bench_llama_32k(smoke: bool, tmp: Path) -> dict:
    path = llama1b_q8(tmp if smoke else CACHE, smoke)
    n_tokens = 700 if smoke else 32768
    text, n, _ = text_of(path, n_tokens, exact=not smoke)
    text_file = tmp / "llama-long.txt"
    text_file.write_text(text, encoding="utf-8")
    ours = [sys.executable, "-m", "attnviz", "export", "--file", str(text_file), "--weights",
            str(path), "--layer", "0", "--resolution", "64" if smoke else "1024", "-o",
            str(tmp / "llama-long.npz"), "--quiet"]
    seconds = wall(ours)
    rss_gb = peak_rss_mb(ours) / 1024
    cells = 32 * n * (n + 1) / 2  # the (query, key) pairs the layer's heads score
    return {"measure": f"`attnviz export --layer 0 --resolution 1024`, {n:,} tokens, "
                       "Llama-3.2-1B shape (32/8 heads of 64), Q8_0 GGUF: peak RSS",
            "baseline": f"every weight of the layer would be {4 * 32 * n * n / 2**30:.0f} GB",
            "attnviz": f"{rss_gb:.2f} GB, {seconds:.0f} s whole process "
                       f"({seconds / cells * 1e9:.2f} ns per scored pair)",
            "ratio": "-", "target": "<= 6 GB", "met": rss_gb <= 6.0}


MODERNBERT_BASE = {"vocab_size": 50368, "hidden_size": 768, "num_hidden_layers": 22,
                   "num_attention_heads": 12, "intermediate_size": 1152,
                   "max_position_embeddings": 8192, "local_attention": 128,
                   "global_attn_every_n_layers": 3}
MODERNBERT_TINY = {**MODERNBERT_BASE, "vocab_size": 600, "hidden_size": 32,
                   "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 64,
                   "local_attention": 16}
SPREAD = 1.8  # the matrices' std times sqrt(hidden): peaked attention rows


def make_modernbert(folder: Path, config: dict) -> Path:
    """A ModernBERT-shaped checkpoint (``ModernBertModel``, float32) and a WordPiece
    tokenizer.json (``[CLS] … [SEP]``) whose words are single tokens; built once per stamp."""
    from encoders_bench import SPECIALS
    from scan_bench import WORDS

    stamp = folder / "stamp.json"
    wanted = {"version": 1, **config}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return folder
    import torch
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(SPECIALS + sorted(set(WORDS)))}
    torch.manual_seed(0)
    model = transformers.ModernBertModel(transformers.ModernBertConfig(
        **config, pad_token_id=vocab["[PAD]"], cls_token_id=vocab["[CLS]"],
        sep_token_id=vocab["[SEP]"], bos_token_id=vocab["[CLS]"], eos_token_id=vocab["[SEP]"]))
    std = SPREAD / config["hidden_size"] ** 0.5
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.fill_(1.0) if "norm" in name else param.normal_(0.0, std)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:0 [SEP]:0",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 8192}))
    stamp.write_text(json.dumps(wanted))
    return folder


def timed(cmd: list[str]) -> tuple[float, float]:
    """``(seconds, peak RSS in GB)`` of one run of ``cmd`` in a fresh process (a run at
    8,192 tokens is minutes: not repeated for its memory)."""
    code = ("import resource, subprocess, sys, time; start = time.perf_counter(); "
            "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
            "print(time.perf_counter() - start, "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20)")
    out = subprocess.run([sys.executable, "-c", code, *cmd], check=True, capture_output=True,
                         text=True).stdout.split()
    return float(out[0]), float(out[1])


# The floor: transformers runs the encoder at this length and returns no weights.
ENCODER_FORWARD = r"""
import sys, torch
from transformers import ModernBertModel
folder, n = sys.argv[1], int(sys.argv[2])
model = ModernBertModel.from_pretrained(folder, dtype=torch.float32,
                                        attn_implementation="sdpa").eval()
ids = torch.arange(n)[None] % 500 + 5
with torch.inference_mode():
    model(ids)
"""


def bench_modernbert(smoke: bool, tmp: Path, n_tokens: int = 8192) -> dict:
    """The encoder row of the module docstring."""
    from scan_bench import WORDS

    from attnviz.text.tokenization import load_tokenizer

    config = MODERNBERT_TINY if smoke else MODERNBERT_BASE
    folder = make_modernbert((tmp if smoke else CACHE) / "attnviz-bench-modernbert-base", config)
    n_tokens = 700 if smoke else n_tokens
    text = " ".join(WORDS[(i * 7) % len(WORDS)] for i in range(n_tokens - 2))
    n = len(load_tokenizer(folder).encode(text))
    if n != n_tokens:
        raise RuntimeError(f"the text is {n} tokens, not {n_tokens}")
    text_file = tmp / "modernbert-long.txt"
    text_file.write_text(text, encoding="utf-8")
    heatmap = [sys.executable, "-m", "attnviz", "heatmap", "--file", str(text_file),
               "--weights", str(folder), "--layer", "all", "--out", str(tmp / "mb-maps"),
               "--quiet"] + (["--resolution", "64"] if smoke else [])
    theirs = [sys.executable, "-c", ENCODER_FORWARD, str(folder), str(n)]
    (base, base_rss_gb), (ours, rss_gb) = timed(theirs), timed(heatmap)  # one run each
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    pngs = len(list((tmp / "mb-maps").rglob("*.png")))
    return {"measure": f"`attnviz heatmap --layer all` of a long encoder text, {n:,} tokens, "
                       f"{'tiny ModernBERT stand-in' if smoke else 'ModernBERT-base shape'} "
                       f"({layers} layers x {heads} heads, every third global), whole process",
            "baseline": f"{base:.1f} s, {base_rss_gb:.2f} GB peak (transformers script: the "
                        f"forward only, SDPA, no weights; every weight would be "
                        f"{4 * layers * heads * n * n / 2**30:.1f} GiB)",
            "attnviz": f"{ours:.1f} s, {rss_gb:.2f} GB peak ({pngs} PNGs)",
            "ratio": f"{ours / base:.2f}x its time", "target": "<= 3 GB",
            "met": rss_gb <= 3.0}


def bench_longcontext(smoke: bool, repeat: int, tmp: Path) -> list[dict]:
    """The rows of the long-context benchmark (see the module docstring)."""
    tmp.mkdir(parents=True, exist_ok=True)
    repeat = 1 if smoke else repeat
    return [*bench_smollm2(smoke, repeat, tmp), bench_llama_32k(smoke, tmp),
            bench_modernbert(smoke, tmp)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny stand-ins, one run")
    parser.add_argument("--repeat", type=int, default=1, help="alternating runs (medians)")
    parser.add_argument("--only", choices=["modernbert"], help="one row alone")
    parser.add_argument("--tokens", type=int, default=8192, help="--only modernbert: length")
    args = parser.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        if args.only == "modernbert":
            print(table([bench_modernbert(args.smoke, Path(folder), args.tokens)]))
        else:
            print(table(bench_longcontext(args.smoke, args.repeat, Path(folder))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
