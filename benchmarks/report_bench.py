"""`attnviz report` benchmark: file size and time to first paint, GPT-2-small shape.

    python benchmarks/report_bench.py            # 12 layers x 12 heads, 256 tokens
    python benchmarks/report_bench.py --smoke    # 2 x 2 heads, 16 tokens: checks it works

``bench_report(smoke, repeat, tmp)`` returns rows in ``benchmarks/run.py``'s format. The
model is a random GPT-2 saved by transformers with GPT-2 small's layer and head counts
(12 x 12) but a narrow width (d_model 96): the report's size and the page's work depend
on layers x heads x tokens only, and the checkpoint stays a few MB. The page is loaded
from file:// in Debian's chromium (headless, Playwright), alternating with an empty page
(the floor: browser and navigation overhead), and first-contentful-paint is read from the
Paint Timing API; "ready" is when every view, thumbnails included, is drawn.
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

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
BUDGET_BYTES = 8_000_000
WORDS = ("the of and to in is was for on that with as by at from his it an were are which "
         "this be or had not but first one their its new after who they have her she two "
         "been other when there all during into school time may years more most").split()


def text_of(n_tokens: int) -> str:
    """A text of exactly ``n_tokens`` GPT-2 tokens (each word below is one token)."""
    from attnviz.text.gpt2_bpe import encode

    text = "".join(" " + WORDS[(i * 7) % len(WORDS)] for i in range(n_tokens))
    if len(encode(text)) != n_tokens:
        raise RuntimeError("the benchmark text does not have the intended token count")
    return text


def make_checkpoint(folder: Path, n_layer: int, n_head: int, n_positions: int) -> Path:
    import torch
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=8 * n_head,
                                 n_positions=n_positions))
    with torch.no_grad():  # spread the weights so heads are far from uniform, as trained ones are
        for name, param in model.named_parameters():
            if "ln_" not in name:
                param.normal_(0.0, 0.3)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def size(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:.2f} MB" if n_bytes >= 1e5 else f"{n_bytes / 1e3:.1f} kB"


def paint_times(pages: list[Path], repeat: int) -> list[dict[str, list[float]]]:
    """For each page, ``repeat`` loads (alternating between pages, fresh tab each):
    first-contentful-paint and ready times in ms."""
    from playwright.sync_api import sync_playwright

    results = [{"fcp": [], "ready": []} for _ in pages]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(repeat + 1):  # the first round warms the browser and the file cache
            for page_path, times in zip(pages, results):
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(page_path.as_uri())
                page.wait_for_function("document.body && document.body.dataset.ready === 'true'",
                                       timeout=120_000)
                page.wait_for_function("performance.getEntriesByName('first-contentful-paint').length")
                fcp = page.evaluate("performance.getEntriesByName('first-contentful-paint')[0].startTime")
                times["fcp"].append(fcp)
                times["ready"].append(float(page.evaluate("document.body.dataset.readyMs || 0")))
                page.close()
        browser.close()
    return [{k: v[1:] for k, v in times.items()} for times in results]


def bench_report(smoke: bool, repeat: int, tmp: Path) -> list[dict]:
    import numpy as np

    n_layer, n_head, n_tokens = (2, 2, 16) if smoke else (12, 12, 256)
    ckpt = make_checkpoint(tmp / "gpt2-shape", n_layer, n_head, max(n_tokens, 64))
    page = tmp / "report.html"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "attnviz", "report", text_of(n_tokens),
                           "--weights", str(ckpt), "--layer", "all", "-o", str(page),
                           "--format", "json", "--quiet"],
                          capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    info = json.loads(proc.stdout)

    # bertviz's way: the full float weights as JSON; measured on one layer, times the layers.
    from attnviz.display.report import decode_weights, read_payload

    one_layer = decode_weights(read_payload(page))[0].astype(np.float32)
    json_bytes = len(json.dumps(one_layer.tolist())) * n_layer

    empty = tmp / "empty.html"
    empty.write_text("<!DOCTYPE html><title>empty</title><p>empty page</p>"
                     "<script>document.body.dataset.ready='true'</script>")
    ours, floor = paint_times([page, empty], repeat)
    fcp, floor_fcp = statistics.median(ours["fcp"]), statistics.median(floor["fcp"])
    shape = f"{n_layer} layers x {n_head} heads x {n_tokens} tokens"
    return [
        {"measure": f"`attnviz report`, {shape}: file size",
         "baseline": f"{size(json_bytes)} (weights as JSON floats, as bertviz embeds them)",
         "attnviz": f"{size(info['bytes'])} ({info['encoding']}; written in {seconds:.1f} s)",
         "ratio": f"{json_bytes / info['bytes']:.1f}x smaller",
         "target": "<= 8 MB", "met": info["bytes"] <= BUDGET_BYTES},
        {"measure": f"`attnviz report`, {shape}: first paint in chromium",
         "baseline": f"{floor_fcp:.0f} ms (an empty page)",
         "attnviz": f"{fcp:.0f} ms (all views drawn: {statistics.median(ours['ready']):.0f} ms)",
         "ratio": f"{fcp / floor_fcp:.1f}x the empty page", "target": "measured", "met": True},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="page loads per side (median)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one load: checks it works")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        rows = bench_report(args.smoke, 1 if args.smoke else args.repeat, Path(folder))
    from run import table  # benchmarks/ is sys.path[0] when run as a script

    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
