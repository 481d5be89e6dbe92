"""`attnviz scan` benchmark (SPEC section 7): prompts/s against the two ways a user would
do it without scan, and peak memory against the number of prompts.

    python benchmarks/scan_bench.py            # full sizes, prints a markdown table
    python benchmarks/scan_bench.py --smoke    # tiny sizes, one run: checks it works

Full sizes: a GPT-2-small-shaped random checkpoint (12 layers x 12 heads, d_model 768, saved
by transformers' ``save_pretrained``), 300 prompts of 20-120 tokens, every layer.

- (a) a shell loop of ``attnviz compare-heads PROMPT --weights CKPT --layer all --format
  json``, one process per prompt, timed on a sample of the prompts;
- (b) a script that loads the checkpoint in transformers' ``GPT2Model(attn_implementation=
  "eager")`` and runs one prompt at a time with ``output_attentions=True``, computing the
  same statistics and detectors (``stats.head_stats``, ``detectors.detector_scores``) and
  their mean and spread; its means are checked against scan's;
- peak RSS of ``attnviz scan`` on 1000 prompts against 100 prompts.

Every side is a whole fresh process (start-up, loading and tokenizing included), run
alternately; prompts/s are medians. ``bench_scan`` returns rows in the format of
``benchmarks/run.py``.
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

WORDS = ("the of and to in is was for on that with as by at from his it an were are which "
         "this be or had not but first one their its new after who they have her she two been "
         "other when there all during into school time may years more most only over city "
         "some world would where later up such used many can state about national out known "
         "university united then made").split()

HF_BASELINE = r"""
import json, sys, time
start = time.perf_counter()
import numpy as np, torch, transformers
from attnviz.text.gpt2_bpe import encode
from attnviz.analyses.stats import head_stats
from attnviz.analyses.detectors import detector_scores
prompts = [line for line in open(sys.argv[1], encoding="utf-8").read().split("\n") if line.strip()]
model = transformers.GPT2Model.from_pretrained(sys.argv[2], attn_implementation="eager").eval()
sums, squares = {}, {}
with torch.inference_mode():
    for text in prompts:
        ids = encode(text)
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
stds = {name: np.sqrt(np.maximum(squares[name] / n - (sums[name] / n) ** 2, 0) * n / (n - 1)).tolist()
        for name in sums}
json.dump({"mean": means, "std": stds}, open(sys.argv[3], "w"))
print(time.perf_counter() - start)
"""


def make_checkpoint(folder: Path, smoke: bool) -> Path:
    """A random GPT-2 checkpoint saved by transformers (GPT-2 small's shape unless smoke)."""
    import torch
    from transformers import GPT2Config, GPT2Model

    config = (GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=128) if smoke
              else GPT2Config())  # GPT-2 small: 12 layers, 12 heads, 768, 1024 positions
    torch.manual_seed(0)
    GPT2Model(config).save_pretrained(folder)
    return folder


def make_prompts(n: int, shortest: int, longest: int, seed: int = 0) -> list[str]:
    """``n`` prompts of ``shortest``..``longest`` GPT-2 tokens (each word is one token)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = rng.integers(shortest, longest + 1, size=n)
    return ["".join(" " + WORDS[i] for i in rng.integers(0, len(WORDS), size=length))
            for length in lengths]


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    return path


def wall(cmd: list[str], stdout=subprocess.DEVNULL) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=stdout, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak resident memory of ``cmd``, in a fresh process of its own."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip())


def scan_cmd(prompts_file: Path, checkpoint: Path) -> list[str]:
    return [sys.executable, "-m", "attnviz", "scan", "--file", str(prompts_file), "--weights",
            str(checkpoint), "--layer", "all", "--format", "json", "--quiet"]


def bench_scan(tmp: Path, smoke: bool = False, repeat: int = 3, sample: int = 8) -> list[dict]:
    """The three scan rows of SPEC section 7 (see the module docstring)."""
    import numpy as np

    tmp.mkdir(parents=True, exist_ok=True)
    repeat, sample = (1, 2) if smoke else (repeat, sample)
    n_prompts, shortest, longest = (6, 5, 20) if smoke else (300, 20, 120)
    rss_sizes = (10, 20) if smoke else (100, 1000)
    checkpoint = make_checkpoint(tmp / "checkpoint", smoke)
    prompts = make_prompts(n_prompts, shortest, longest)
    prompts_file = write_prompts(tmp / "prompts.txt", prompts)
    ours_json, hf_json = tmp / "scan.json", tmp / "hf.json"

    def ours() -> float:
        with open(ours_json, "w") as out:
            return n_prompts / wall(scan_cmd(prompts_file, checkpoint), stdout=out)

    def timed_transformers() -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", HF_BASELINE, str(prompts_file), str(checkpoint),
                        str(hf_json)], check=True, capture_output=True)
        return n_prompts / (time.perf_counter() - start)

    def shell_loop() -> float:
        chosen = prompts[:sample]
        script = ('for p in "$@"; do "$PY" -m attnviz compare-heads "$p" --weights "$CKPT" '
                  '--layer all --format json --quiet > /dev/null; done')
        env = {**os.environ, "PY": sys.executable, "CKPT": str(checkpoint)}
        start = time.perf_counter()
        subprocess.run(["bash", "-c", script, "loop", *chosen], check=True, env=env)
        return len(chosen) / (time.perf_counter() - start)

    ours()  # warm the OS file cache and the tokenizer cache
    mine, hf = [], []
    for i in range(repeat):
        pair = (ours, timed_transformers) if i % 2 == 0 else (timed_transformers, ours)
        for f in pair:
            (mine if f is ours else hf).append(f())
    loop = shell_loop()
    ours_rate, hf_rate = statistics.median(mine), statistics.median(hf)

    # Same numbers: scan's means against the transformers script's.
    document = json.loads(ours_json.read_text())
    reference = json.loads(hf_json.read_text())
    diff = 0.0
    for name, expected in reference["mean"].items():
        got = np.array([row[f"{name}_mean"] for row in document["heads"]], dtype=float)
        diff = max(diff, float(np.nanmax(np.abs(got - np.array(expected, dtype=float).reshape(-1)))))

    small, large = (write_prompts(tmp / f"rss{n}.txt", make_prompts(n, shortest, longest, seed=n))
                    for n in rss_sizes)
    rss_small = peak_rss_mb(scan_cmd(small, checkpoint))
    rss_large = peak_rss_mb(scan_cmd(large, checkpoint))

    shape = "tiny checkpoint" if smoke else "GPT-2 small shape, 12 layers"
    what = f"{n_prompts} prompts of {shortest}-{longest} tokens, {shape}"
    return [
        {"measure": f"`attnviz scan`, {what}: vs a shell loop of `compare-heads --format json`",
         "baseline": f"{loop:.2f} prompts/s (loop over {sample} prompts)",
         "attnviz": f"{ours_rate:.2f} prompts/s", "ratio": f"{ours_rate / loop:.1f}x faster",
         "target": ">= 20x faster", "met": ours_rate / loop >= 20},
        {"measure": f"`attnviz scan`, {what}: vs transformers eager, one prompt at a time",
         "baseline": f"{hf_rate:.2f} prompts/s (same means, max diff {diff:.1e})",
         "attnviz": f"{ours_rate:.2f} prompts/s", "ratio": f"{ours_rate / hf_rate:.2f}x faster",
         "target": ">= 1.5x faster", "met": ours_rate / hf_rate >= 1.5 and diff < 1e-4},
        {"measure": f"`attnviz scan` peak RSS, {rss_sizes[1]} vs {rss_sizes[0]} prompts",
         "baseline": f"{rss_small:.0f} MB ({rss_sizes[0]} prompts)",
         "attnviz": f"{rss_large:.0f} MB ({rss_sizes[1]} prompts)",
         "ratio": f"{rss_large / rss_small:.2f}x", "target": "<= 1.2x",
         "met": rss_large / rss_small <= 1.2},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs per side")
    parser.add_argument("--sample", type=int, default=8, help="prompts in the shell loop")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        rows = bench_scan(Path(folder), smoke=args.smoke, repeat=args.repeat, sample=args.sample)
    from run import table  # benchmarks/ is sys.path[0] when run as a script

    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
