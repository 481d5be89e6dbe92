"""`attnviz train` benchmark (issues #23, #42): the default run, as a user starts it, against
the bare training loop of the same model.

- (a) the bare loop: a script that builds ``TinyGPT2`` with the defaults and runs the same
  4000 AdamW steps on the same batches, on the same 2 threads, and nothing else: no snapshots,
  scores, film or chart;
- (b) ``attnviz train --out DIR`` with every default, the whole process (imports, training,
  21 snapshots each scored as ``scan`` does and per probed period, the film and the chart).

The target is (b) <= 120 s on a 2-core CPU. The row also gives the circuit the run ends
with, read from ``training.jsonl`` as the summary reads it: the layer-0 previous-token
head's weight on the previous token and the induction head's weight on the induction
target (averaged over the probed periods, and at its weakest period), at step 0 and at the
end.

    python benchmarks/train_bench.py [--smoke] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attnviz.analyses.train_run import RunSettings, circuit_summary
from attnviz.analyses.training import TrainConfig

BARE = r"""
import sys, torch
from attnviz.analyses import training
from attnviz.analyses.train_run import TRAIN_THREADS
torch.set_num_threads(TRAIN_THREADS)
config = training.TrainConfig()
model = training.TinyGPT2(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
for step in range(int(sys.argv[1])):
    loss = model.loss(*training.induction_batch(config, step))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(loss.item())
"""


def _timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def bench_train(smoke: bool = False, repeat: int = 1) -> list[dict]:
    steps = 200 if smoke else RunSettings().steps
    bare_times, ours_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):  # alternately, so both see the same machine
            bare_times.append(_timed([sys.executable, "-c", BARE, str(steps)]))
            out = Path(tmp) / f"run{i}"
            ours_times.append(_timed([sys.executable, "-m", "attnviz", "train", "--out", str(out),
                                      "--steps", str(steps), "--quiet"]))
        log = [json.loads(line) for line in (out / "training.jsonl").read_text().splitlines()]
    bare, ours = statistics.median(bare_times), statistics.median(ours_times)

    found = circuit_summary(log, TrainConfig().n_positions)
    previous, induction = found["previous_token"], found["induction"]
    weakest = min(p["score"] for p in induction["periods"].values())
    return [{
        "measure": f"`attnviz train` with the defaults ({steps} steps, 2 layers x 2 heads), "
                   "whole process",
        "baseline": f"{bare:.2f} s (the bare training loop of the same model and batches)",
        "attnviz": f"{ours:.2f} s ({len(log)} snapshots scored, film, chart; previous token "
                   f"L0 H{previous['head']} {previous['score_at_step_0']:.2f} -> "
                   f"{previous['score']:.2f}, induction L{induction['layer']} H{induction['head']} "
                   f"{induction['score_at_step_0']:.2f} -> {induction['score']:.2f}, weakest "
                   f"of {len(induction['periods'])} periods {weakest:.2f})",
        "ratio": f"{ours:.0f} s ({ours / bare:.2f}x the bare loop)",
        "target": "<= 120 s",
        "met": "yes" if ours <= 120 else "**no**",
    }]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="200 steps: checks the script only")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print("| measure | baseline | attnviz | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    for row in bench_train(args.smoke, args.repeat):
        print("| " + " | ".join(row.values()) + " |")


if __name__ == "__main__":
    main()
