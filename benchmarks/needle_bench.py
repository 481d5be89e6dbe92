"""The needle benchmark (issue #39): the passkey test of `attnviz needle` on the real
SmolLM2-135M-Instruct against a Retrieval_Head-style transformers script, and the peak RSS
of one test at 8,000 tokens.

    python benchmarks/needle_bench.py                       # 4k tokens, 11 depths (the issue's)
    python benchmarks/needle_bench.py --length 2000 --depths 0,0.5,1   # smaller, same rows
    python benchmarks/needle_bench.py --smoke               # tiny stand-in: checks it works

Rows (``bench_needle`` returns them in ``benchmarks/run.py``'s format, group ``needle``):

- ``attnviz needle --chat`` with the built-in passkey at ``length`` tokens and ``depths``,
  whole process, against the script Retrieval_Head's ``retrieval_head_detection.py`` runs
  per test, on transformers reading the same GGUF file (float32, eager attention): the
  prompt but its last token in one pass, then one token a step with
  ``output_attentions=True`` over the whole cache, ``topk(1)`` of each head's row and the
  copy check; the same prompts (attnviz's, token for token) and the same number of steps.
  Target <= 0.5x its time.
- ``attnviz needle`` of one test at 8,000 tokens: peak RSS (the prefill on the engine's
  long path, the decoding rows one at a time), recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmark modules

from gguf_bench import smollm2_file, smollm2_stand_in  # noqa: E402
from run import peak_rss_mb, side_by_side, table, wall  # noqa: E402

# Retrieval_Head's procedure per test (its decode() and retrieval_calculate()), on
# transformers from the GGUF file; the prompts are attnviz's, from a JSON file.
RETRIEVAL_HEAD = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM
path, tests_file = sys.argv[1:3]
folder, name = path.rsplit("/", 1)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                             attn_implementation="eager").eval()
config = model.config
for test in json.load(open(tests_file)):
    ids = torch.tensor([test["prompt_ids"]])
    start, end = test["answer_span"]
    score = [[0.0] * config.num_attention_heads for _ in range(config.num_hidden_layers)]
    with torch.no_grad():
        past = model(input_ids=ids[:, :-1], use_cache=True).past_key_values
        step = ids[:, -1:]
        for _ in range(test["max_new_tokens"]):
            out = model(input_ids=step, past_key_values=past, use_cache=True,
                        output_attentions=True)
            past = out.past_key_values
            token = out.logits[0, -1].argmax()
            for layer, attention in enumerate(out.attentions):
                for head in range(config.num_attention_heads):
                    _, index = attention[0][head][-1].topk(1)
                    i = int(index[0])
                    if start <= i < end and int(token) == test["prompt_ids"][i]:
                        score[layer][head] += 1 / (end - start)
            if int(token) == test["eos"]:
                break
            step = token.view(1, 1)
"""


def passkey_tests(path: Path, length: int, depths: list[float], chat: bool) -> list[dict]:
    """attnviz's prompts of the passkey grid (what the script runs too)."""
    from attnviz.analyses import needle as nd
    from attnviz.analyses.attention import load_model

    model = load_model(None, str(path))
    needles = nd.default_needles()[:1]
    plans = nd.prepare(model, nd.builtin_haystack(length // 8 + 50), needles, [length], depths,
                       chat=chat)
    return [{"prompt_ids": p.prompt_ids, "answer_span": list(p.answer_span),
             "max_new_tokens": p.max_new_tokens, "eos": model.tokenizer.eos_id} for p in plans]


def bench_needle(smoke: bool, repeat: int, tmp: Path, length: int = 4000,
                 depths: str = "0:1:0.1", long_length: int = 8000) -> list[dict]:
    """The rows of the needle benchmark (see the module docstring)."""
    from attnviz.analyses.needle import parse_depths

    tmp.mkdir(parents=True, exist_ok=True)
    path = smollm2_stand_in(tmp / "file") if smoke else smollm2_file()
    if smoke:
        length, depths, long_length, repeat = 200, "0,1", 300, 1
    chat = not smoke  # the stand-in's tokenizer has no chat template
    depth_list = parse_depths(depths)
    needles = tmp / "passkey.jsonl"
    from attnviz.analyses.needle import default_needles

    needles.write_text(json.dumps(vars(default_needles()[0])) + "\n")
    tests = tmp / "tests.json"
    tests.write_text(json.dumps(passkey_tests(path, length, depth_list, chat)))

    def ours(n: int, which: str) -> list[str]:
        return [sys.executable, "-m", "attnviz", "needle", "--weights", str(path), "--needles",
                str(needles), "--lengths", str(n), "--depths", which, "--format", "json",
                "--quiet", *(["--chat"] if chat else [])]

    theirs = [sys.executable, "-c", RETRIEVAL_HEAD, str(path), str(tests)]
    base, mine = side_by_side(lambda: wall(theirs), lambda: wall(ours(length, depths)), repeat)
    long_rss = peak_rss_mb(ours(long_length, "0.5")) / 1024
    import attnviz

    heads = attnviz.load(str(path)).describe()["n_heads"]
    eager_gb = 4 * heads * long_length**2 / 2**30  # one layer's weights in an eager prefill
    what = "tiny SmolLM2 stand-in" if smoke else "SmolLM2-135M-Instruct, the real Q4_1 GGUF"
    return [
        {"measure": f"`attnviz needle --chat`, the passkey at {length:,} tokens, "
                    f"{len(depth_list)} depths, {what}: whole process",
         "baseline": f"{base:.1f} s (Retrieval_Head's procedure on transformers: eager, "
                     "output_attentions over the whole cache at each step)",
         "attnviz": f"{mine:.1f} s", "ratio": f"{mine / base:.2f}x its time",
         "target": "<= 0.5x", "met": mine / base <= 0.5},
        {"measure": f"`attnviz needle`, one passkey test at {long_length:,} tokens, {what}: "
                    "peak RSS",
         "baseline": f"an eager prefill holds {eager_gb:.2f} GB of weights per layer "
                     f"({heads} x {long_length:,}² float32)",
         "attnviz": f"{long_rss:.2f} GB", "ratio": "-", "target": "recorded",
         "met": True},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny stand-in, one run")
    parser.add_argument("--repeat", type=int, default=1, help="alternating runs (medians)")
    parser.add_argument("--length", type=int, default=4000, help="prompt length, tokens")
    parser.add_argument("--depths", default="0:1:0.1", help="needle depths")
    parser.add_argument("--long-length", type=int, default=8000, help="the RSS row's length")
    args = parser.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        print(table(bench_needle(args.smoke, args.repeat, Path(folder), args.length, args.depths,
                                 args.long_length)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
