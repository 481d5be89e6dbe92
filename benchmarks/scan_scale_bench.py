"""`attnviz scan` at scale (SPEC section 7, issue "scans that survive and scale"): a corpus of
10,000 prompts of 20-120 tokens, GPT-2-small shape (random weights saved by transformers),
every layer, whole processes:

- peak RSS of 10,000 prompts against 1,000 (memory flat in the number of prompts);
- a run killed with SIGKILL at about half of the prompts, then ``--resume``: the second
  half's time against the whole run's (<= 0.55x);
- 2 shards run at the same time (``--threads 1`` each) and ``scan-merge``: the wall time
  against one scan of the corpus with both cores (<= 1.1x: no gain is expected on two cores,
  the row shows what sharding costs); the merged aggregates are checked equal to one scan
  (<= 1e-9 relative) on the 1,000 prompts with one thread on both sides (a 2-thread and a
  1-thread run round float32 matmuls differently, by ~1e-8).

    python benchmarks/scan_scale_bench.py [--smoke] [--only rss|resume|shards]
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from generate_bench import make_checkpoint, peak_rss_mb, run_standalone, wall  # noqa: E402

WORDS = ("the of and to in is was for on that with as by at from his it an were are which "
         "this be or had not but first one their its new after who").split()


def write_corpus(path: Path, n: int, seed: int = 0) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    lines = [" ".join(rng.choice(WORDS, size=int(rng.integers(20, 121)))) for _ in range(n)]
    path.write_text("\n".join(lines) + "\n")


def scan_cmd(corpus: Path, checkpoint: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "attnviz", "scan", "--file", str(corpus), "--weights",
            str(checkpoint), "--layer", "all", "--format", "json", "-q", *extra]


def killed_half_way(cmd: list[str], log: Path, n: int) -> int:
    """Run ``cmd`` and SIGKILL it once ``log`` holds about n/2 prompt lines; lines logged."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        if log.exists() and log.read_bytes().count(b"\n") - 1 >= n // 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    return log.read_bytes().count(b"\n") - 1


def merged_difference(tmp: Path, corpus: Path, checkpoint: Path) -> float:
    """The largest relative difference of a mean between one scan of ``corpus`` and its 2
    shards merged, all with ``--threads 1`` (the same arithmetic on both sides)."""
    one = subprocess.run(scan_cmd(corpus, checkpoint, "--threads", "1"), capture_output=True,
                         text=True, check=True).stdout
    for k in range(2):
        subprocess.run(scan_cmd(corpus, checkpoint, "--threads", "1", "--shard", f"{k}/2",
                                "--partial", str(tmp / f"e{k}.json")), check=True,
                       stdout=subprocess.DEVNULL)
    merged = subprocess.run([sys.executable, "-m", "attnviz", "scan-merge", str(tmp / "e0.json"),
                             str(tmp / "e1.json"), "--format", "json"], capture_output=True,
                            text=True, check=True).stdout
    a, b = json.loads(one), json.loads(merged)
    return max(abs(x[k] - y[k]) / max(abs(x[k]), 1e-12) for x, y in zip(a["heads"], b["heads"])
               for k in x if k.endswith("_mean") and x[k] is not None)


def bench_scan_scale(tmp: Path, smoke: bool = False, repeat: int = 1,
                     only: str | None = None) -> list[dict]:
    n_big, n_small = (400, 40) if smoke else (10_000, 1_000)
    checkpoint = make_checkpoint(tmp / "gpt2", smoke)
    big, small = tmp / "big.txt", tmp / "small.txt"
    write_corpus(big, n_big)
    small.write_text("".join(big.read_text().splitlines(keepends=True)[:n_small]))
    what = f"`attnviz scan`, {n_big:,} prompts of 20-120 tokens, GPT-2-small shape, every layer"
    rows = []
    if only in (None, "rss"):
        rss_small = peak_rss_mb(scan_cmd(small, checkpoint))
        rss_big = peak_rss_mb(scan_cmd(big, checkpoint))
        rows.append(
            {"measure": f"{what}: peak RSS vs {n_small:,} prompts",
             "baseline": f"{rss_small:.0f} MB", "attnviz": f"{rss_big:.0f} MB",
             "ratio": f"{rss_big / rss_small:.2f}x", "target": "<= 1.2x",
             "met": rss_big <= 1.2 * rss_small})
    if only == "rss":
        return rows
    whole = wall(scan_cmd(big, checkpoint))
    if only in (None, "resume"):
        log = tmp / "log.jsonl"
        logged = killed_half_way(scan_cmd(big, checkpoint, "--per-prompt", str(log)), log,
                                 n_big)
        resumed = wall(scan_cmd(big, checkpoint, "--per-prompt", str(log), "--resume"))
        rows.append(
            {"measure": f"{what}: killed with SIGKILL after {logged:,} prompts, then --resume",
             "baseline": f"{whole:.1f} s (the whole run)",
             "attnviz": f"{resumed:.1f} s (the rest)",
             "ratio": f"{resumed / whole:.2f}x", "target": "<= 0.55x",
             "met": resumed <= 0.55 * whole})
    if only in (None, "shards"):
        start = time.perf_counter()
        shards = [subprocess.Popen(scan_cmd(big, checkpoint, "--threads", "1", "--shard",
                                            f"{k}/2", "--partial", str(tmp / f"p{k}.json")),
                                   stdout=subprocess.DEVNULL) for k in range(2)]
        for proc in shards:
            assert proc.wait() == 0
        subprocess.run([sys.executable, "-m", "attnviz", "scan-merge", str(tmp / "p0.json"),
                        str(tmp / "p1.json"), "--format", "json"], capture_output=True,
                       text=True, check=True)
        sharded = time.perf_counter() - start
        # timed only: 2 threads and 1 thread round float32 matmuls differently (~1e-8)
        diff = merged_difference(tmp, big if smoke else small, checkpoint)  # >= 2 slices
        rows.append(
            {"measure": f"{what}: 2 shards at once (--threads 1 each) + scan-merge",
             "baseline": f"{whole:.1f} s (one scan, 2 threads)",
             "attnviz": f"{sharded:.1f} s (merged = one scan to {diff:.0e} relative, "
                        f"{n_big if smoke else n_small:,} prompts, 1 thread each)",
             "ratio": f"{sharded / whole:.2f}x", "target": "<= 1.1x",
             "met": sharded <= 1.1 * whole and diff <= 1e-9})
    return rows


def main(argv: list[str] | None = None) -> int:
    only = None
    if argv is None:
        argv = sys.argv[1:]
    if "--only" in argv:
        at = argv.index("--only")
        only, argv = argv[at + 1], argv[:at] + argv[at + 2:]
    return run_standalone(lambda tmp, smoke, repeat: bench_scan_scale(tmp, smoke, repeat, only),
                          __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
