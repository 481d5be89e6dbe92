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
from attnviz.plot import HeatmapFigure, displayable, masked
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
from attnviz.plot import HeatmapFigure
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
from attnviz.tokenizer import get_encoding
get_encoding().encode("warm")
print(time.perf_counter() - start)
"""


def text_of(n_tokens: int) -> str:
    """A text of exactly ``n_tokens`` GPT-2 tokens (every word below is one token)."""
    from attnviz.tokenizer import encode

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

    from attnviz.analysis import analyze

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

    from attnviz.attention import MultiHeadAttention, wrapper_from_fused

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
         "ratio": f"{vs_wrapper[0] / vs_wrapper[1]:.2f}x faster", "target": ">= 2x faster",
         "met": vs_wrapper[0] / vs_wrapper[1] >= 2},
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


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), {platform.system()}")


def table(rows: list[dict]) -> str:
    lines = ["| measure | baseline | attnviz | ratio | target | met |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['measure']} | {r['baseline']} | {r['attnviz']} | {r['ratio']} | "
                     f"{r['target']} | {'yes' if r['met'] else '**no**'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per side (median of these)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run: checks it works")
    parser.add_argument("--write-docs", action="store_true", help="also write docs/benchmarks.md")
    args = parser.parse_args(argv)
    repeat = 1 if args.smoke else args.repeat
    tokens, long_tokens = (8, 32) if args.smoke else (64, 1024)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        rows = [bench_render(tokens, repeat, tmp), bench_process(tokens, repeat, tmp),
                bench_tokenizer(repeat, tmp), *bench_attention(long_tokens, repeat),
                bench_memory(long_tokens, tmp)]
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
  the colour-mapped cells into the axes' pixel box and encodes the PNG itself (zlib level
  3, no filters) in a writer thread.
- **Whole process**: `python -m attnviz heatmap TEXT --quiet` against the floor
  `python -c "import torch, matplotlib.figure, tiktoken"`, both as fresh processes.
- **Tokenizer**: a fresh interpreter importing attnviz's tokenizer and encoding a word,
  with the converted BPE ranks cached (later runs) or not (first run).
- **Attention**: one forward pass with weights at T = 1024, 12 heads, d_model 768, in
  `torch.no_grad()`. `MultiHeadAttention` computes the queries in blocks of 64 rows so
  the masked half of the scores is never computed.
- **Memory**: peak RSS (`ru_maxrss`) of the whole `attnviz heatmap` process at T = 1024.
- **Why fused vs wrapper stays under 2x on this CPU**: both classes do the same
  projection GEMMs (3 x 1024 x 768 x 768) and, per head, GEMMs large enough to run at
  full speed on two cores; the wrapper is not slowed by launch overhead the way it is on a
  GPU. The fused class saves the masked half of the scores (query blocks), the 48 MB
  temporaries and the final stack, which measures 1.3-1.6x; the rest of its time is the
  shared projections (~20 ms) and page-faulting the 48 MB weights tensor it must return
  (~12 ms). Fusing the three projections into one GEMM or changing the block size
  (32-128) measured no better. We have not slowed the wrapper down to meet the target.
"""

if __name__ == "__main__":
    sys.exit(main())
