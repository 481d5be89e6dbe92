"""`attnviz generate` benchmark (SPEC section 7): 200 new tokens after a 32-token prompt,
every layer's rows kept, GPT-2-small shape (12 x 12 heads, d_model 768, random weights saved
by transformers' ``save_pretrained`` as a GPT2LMHeadModel).

- (a) recomputing a full forward for every step: a script with attnviz's own model that, for
  each new token, runs the whole sequence so far (no cache) and keeps the last query's rows;
- (b) transformers' ``generate(do_sample=False, output_attentions=True,
  return_dict_in_generate=True)``, the rows saved with ``np.savez`` as ours are;
- peak RSS of ours.

Every side is a whole fresh process (imports, loading, writing the rows), run alternately;
the greedy ids of all three are checked equal. ``bench_generate`` returns rows in the
format of ``benchmarks/run.py``.

    python benchmarks/generate_bench.py [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECOMPUTE = r"""
import sys, numpy as np, torch
from attnviz.analyses.attention import load_model
model = load_model(None, sys.argv[1])
ids = [int(t) for t in open(sys.argv[2]).read().split()]
n_new, p = int(sys.argv[3]), len(ids)
rows = np.zeros((model.n_layers, model.n_heads, n_new, p + n_new), dtype=np.float32)
for g in range(n_new):
    cache = model.new_cache(len(ids))  # a fresh cache: the whole sequence again, every step
    logits, kept = model.decode(torch.tensor([ids]), cache, keep=list(range(model.n_layers)))
    for layer, weights in kept.items():
        rows[layer, :, g, : len(ids)] = weights[0, :, -1].numpy()
    ids.append(int(logits[0, -1].argmax()))
np.savez(sys.argv[4], rows=rows, token_ids=np.asarray(ids))
"""

TRANSFORMERS = r"""
import sys, numpy as np, torch, transformers
model = transformers.GPT2LMHeadModel.from_pretrained(sys.argv[1], attn_implementation="eager").eval()
ids = torch.tensor([[int(t) for t in open(sys.argv[2]).read().split()]])
n_new, p = int(sys.argv[3]), ids.shape[1]
with torch.no_grad():
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                         do_sample=False, output_attentions=True, return_dict_in_generate=True,
                         pad_token_id=0, eos_token_id=None)
layers, heads = len(out.attentions[0]), out.attentions[0][0].shape[1]
rows = np.zeros((layers, heads, n_new, p + n_new), dtype=np.float32)
for g, step in enumerate(out.attentions):  # step g: the rows of the query that wrote token g
    for layer, weights in enumerate(step):
        rows[layer, :, g, : weights.shape[-1]] = weights[0, :, -1].numpy()
np.savez(sys.argv[4], rows=rows, token_ids=out.sequences[0].numpy())
"""


def make_checkpoint(folder: Path, smoke: bool) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=256) if smoke else GPT2Config()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # spread the weights: a random GPT-2 at 0.02 writes one token forever
        for name, param in model.named_parameters():
            if "ln_" not in name:
                param.normal_(0.0, 0.08)
    model.save_pretrained(folder)
    return folder


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def peak_rss_mb(cmd: list[str]) -> float:
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_prompt(tmp: Path, n_prompt: int) -> tuple[str, list[int], Path]:
    """A prompt of ``n_prompt`` GPT-2 tokens (common words), its ids, and the ids in a file
    the baseline scripts read: ``(text, ids, path)``."""
    from attnviz.text.gpt2_bpe import encode

    words = ("the of and to in is was for on that with as by at from his it an were are "
             "which this be or had not but first one").split()
    text = "".join(" " + words[(i * 7) % len(words)] for i in range(n_prompt))
    prompt_ids = encode(text)
    assert len(prompt_ids) == n_prompt, len(prompt_ids)
    ids_file = tmp / "prompt.txt"
    ids_file.write_text(" ".join(map(str, prompt_ids)))
    return text, prompt_ids, ids_file


def bench_generate(tmp: Path, smoke: bool = False, repeat: int = 5) -> list[dict]:
    import numpy as np

    from attnviz.text.gpt2_bpe import get_encoding

    n_prompt, n_new = (8, 10) if smoke else (32, 200)
    repeat = 1 if smoke else repeat
    checkpoint = make_checkpoint(tmp / "gpt2-lm", smoke)
    text, prompt_ids, ids_file = bench_prompt(tmp, n_prompt)
    ours = [sys.executable, "-m", "attnviz", "generate", text, "--weights", str(checkpoint),
            "-n", str(n_new), "--ignore-eos", "-o", str(tmp / "ours.npz"), "-q"]
    commands = {
        "recompute": [sys.executable, "-c", RECOMPUTE, str(checkpoint), str(ids_file), str(n_new),
                      str(tmp / "recompute.npz")],
        "transformers": [sys.executable, "-c", TRANSFORMERS, str(checkpoint), str(ids_file),
                         str(n_new), str(tmp / "transformers.npz")],
        "ours": ours,
    }
    for cmd in commands.values():
        wall(cmd)  # warm the file cache and the tokenizer cache
    times: dict[str, list[float]] = {name: [] for name in commands}
    for i in range(repeat):  # a different order each round
        names = list(commands)[i % 3:] + list(commands)[: i % 3]
        for name in names:
            times[name].append(wall(commands[name]))
    median = {name: statistics.median(t) for name, t in times.items()}
    files = {name: np.load(tmp / f"{name}.npz") for name in commands}
    same_ids = (files["ours"]["token_ids"].tolist() == files["recompute"]["token_ids"].tolist()
                == files["transformers"]["token_ids"].tolist())
    diff = max(float(np.abs(files["ours"]["rows"] - files[n]["rows"]).max())
               for n in ("recompute", "transformers"))
    rss = peak_rss_mb(ours)
    assert get_encoding() is not None
    shape = "tiny checkpoint" if smoke else "GPT-2-small shape (12 x 12 heads)"
    what = f"`attnviz generate`, {n_new} new tokens after {n_prompt}, every layer's rows, {shape}"
    note = f"same ids: {'yes' if same_ids else 'NO'}, rows max diff {diff:.1e}"
    return [
        {"measure": f"{what}: vs a full forward per step",
         "baseline": f"{median['recompute']:.2f} s (no cache: the whole sequence every step)",
         "attnviz": f"{median['ours']:.2f} s ({note})",
         "ratio": f"{median['ours'] / median['recompute']:.2f}x its time", "target": "<= 0.35x",
         "met": median["ours"] / median["recompute"] <= 0.35 and same_ids},
        {"measure": f"{what}: vs transformers generate(output_attentions=True)",
         "baseline": f"{median['transformers']:.2f} s (import, from_pretrained, generate, savez)",
         "attnviz": f"{median['ours']:.2f} s",
         "ratio": f"{median['ours'] / median['transformers']:.2f}x its time", "target": "<= 1.0x",
         "met": median["ours"] / median["transformers"] <= 1.0 and same_ids},
        {"measure": f"{what}: peak RSS", "baseline": "—", "attnviz": f"{rss:.0f} MB",
         "ratio": f"{rss / 1024:.2f} GB", "target": "<= 1.5 GB", "met": rss <= 1.5 * 1024},
    ]


def run_standalone(bench, doc: str, argv: list[str] | None = None) -> int:
    """The command line of a standalone benchmark script: ``bench(tmp, smoke, repeat)``'s
    rows printed one a line."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for row in bench(Path(tmp), smoke=args.smoke, repeat=args.repeat):
            print(" | ".join(str(row[k]) for k in ("measure", "baseline", "attnviz", "ratio",
                                                   "target", "met")))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_standalone(bench_generate, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
