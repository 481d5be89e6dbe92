"""The encoder–decoder benchmark (issue 40): every attention of a t5-small-shaped model —
encoder self, decoder self and cross — into one .npz, against transformers.

    python benchmarks/seq2seq_bench.py            # full size, prints a markdown table
    python benchmarks/seq2seq_bench.py --smoke    # a tiny T5, one run: checks it works

Full size, random weights made here (no download): t5-small's config (6 + 6 layers, 8 heads
of 64, d_model 512, ReLU MLP 2048, 32 relative buckets up to distance 128, vocabulary
32128, tied and scaled head) as ``T5ForConditionalGeneration(T5Config(...))``, seeded, saved
by ``save_pretrained`` (float32, 242 MB) into ``/tmp/attnviz-bench-t5small`` (reused while
its stamp matches), beside a T5-style Unigram tokenizer.json (WhitespaceSplit, Metaspace,
``</s>`` appended) in which each benchmark word with its ``▁`` is one piece, so texts have
exact lengths.

Row: ``attnviz export --attention all --layer all`` of a 256-token source (``</s>``
included) and a 64-token decoder input (the start token and 63 words: the labels shifted
right) against a script doing the same with transformers (AutoTokenizer,
``AutoModelForSeq2SeqLM.from_pretrained(attn_implementation="eager", dtype=torch.float32)``,
the forward with ``output_attentions=True`` under ``torch.inference_mode()``, ``np.savez``
of the stacked encoder, decoder and cross attentions): whole-process wall time (target
<= 0.8x), the files' max difference, both peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmark modules

from models_bench import built_once  # noqa: E402
from scan_bench import WORDS, peak_rss_mb, wall  # noqa: E402

CACHE = Path(os.environ.get("ATTNVIZ_BENCH_CACHE", tempfile.gettempdir()))
T5_SMALL = {"vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6,
            "num_heads": 8, "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128, "feed_forward_proj": "relu",
            "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}
TINY = {"vocab_size": 400, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2,
        "num_heads": 4}

# What a user writes with transformers to get an encoder–decoder's three attentions into a file.
TRANSFORMERS_EXPORT = r"""
import sys
import numpy as np, torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
folder, source_file, target_file, out = sys.argv[1:5]
tokenizer = AutoTokenizer.from_pretrained(folder)
source = tokenizer(open(source_file, encoding="utf-8").read(), return_tensors="pt")["input_ids"]
labels = tokenizer(open(target_file, encoding="utf-8").read())["input_ids"]
model = AutoModelForSeq2SeqLM.from_pretrained(folder, attn_implementation="eager",
                                              dtype=torch.float32).eval()
target = torch.tensor([[model.config.decoder_start_token_id, *labels[:-1]]])
with torch.inference_mode():
    out_ = model(input_ids=source, decoder_input_ids=target, output_attentions=True)
stack = lambda attentions: np.stack([a[0].numpy() for a in attentions])
np.savez(out, weights=stack(out_.encoder_attentions), decoder_weights=stack(out_.decoder_attentions),
         cross_weights=stack(out_.cross_attentions))
"""


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """A T5-style Unigram tokenizer.json in which every benchmark word is one piece."""
    pieces = [["<pad>", 0.0], ["</s>", 0.0], ["<unk>", 0.0], ["\u2581", -5.0]]
    pieces += [["\u2581" + w, -1.0] for w in WORDS]
    pieces += [[c, -10.0] for c in sorted({c for w in WORDS for c in w})]
    pieces += [[f"<unused_{i}>", -100.0] for i in range(vocab_size - len(pieces))]
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in enumerate(("<pad>", "</s>", "<unk>"))]
    document = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"},
            {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always",
             "split": True}]},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"Sequence": {"id": "A", "type_id": 0}},
                                      {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "</s>", "type_id": 0}},
                                    {"Sequence": {"id": "B", "type_id": 0}},
                                    {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                           "special_tokens": {"</s>": {"id": "</s>", "ids": [1],
                                                       "tokens": ["</s>"]}}},
        "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always",
                    "split": True},
        "model": {"type": "Unigram", "unk_id": 2, "vocab": pieces, "byte_fallback": False},
    }
    (folder / "tokenizer.json").write_text(json.dumps(document), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<pad>", "extra_ids": 0}))


def make_t5(smoke: bool) -> Path:
    """The t5-small-shaped checkpoint (module docstring), built once."""
    config = T5_SMALL | (TINY if smoke else {})

    def build(folder: Path) -> None:
        import torch
        import transformers

        torch.manual_seed(0)
        model = transformers.T5ForConditionalGeneration(transformers.T5Config(**config))
        model.save_pretrained(folder, safe_serialization=True)
        write_tokenizer(folder, config["vocab_size"])

    name = "attnviz-bench-t5small" + ("-smoke" if smoke else "")
    return built_once(CACHE / name, {"config": config}, build)


def words(n: int, offset: int) -> str:
    return " ".join(WORDS[(i * 7 + offset) % len(WORDS)] for i in range(n))


def bench_seq2seq(smoke: bool, repeat: int, tmp: Path) -> list[dict]:
    import numpy as np
    from run import side_by_side  # benchmarks/run.py (it runs these rows)

    tmp.mkdir(parents=True, exist_ok=True)
    folder = make_t5(smoke)
    n_source, n_target = (16, 8) if smoke else (256, 64)
    source_file, target_file = tmp / "source.txt", tmp / "target.txt"
    source_file.write_text(words(n_source - 1, 0), encoding="utf-8")  # + </s>
    target = words(n_target - 1, 3)  # the start token, then the words (</s> is not read)
    target_file.write_text(target, encoding="utf-8")
    ours_npz, theirs_npz = tmp / "ours.npz", tmp / "transformers.npz"
    theirs = [sys.executable, "-c", TRANSFORMERS_EXPORT, str(folder), str(source_file),
              str(target_file), str(theirs_npz)]
    ours = [sys.executable, "-m", "attnviz", "export", "--file", str(source_file), "--weights",
            str(folder), "--decoder-text", target, "--attention", "all", "--layer", "all",
            "-o", str(ours_npz), "--quiet"]
    if not smoke:
        wall(theirs), wall(ours)  # warm the OS file cache
    base, mine = side_by_side(lambda: wall(theirs), lambda: wall(ours), repeat)
    ours_data, theirs_data = np.load(ours_npz), np.load(theirs_npz)
    diff = 0.0
    for name in ("weights", "decoder_weights", "cross_weights"):
        if ours_data[name].shape != theirs_data[name].shape:
            raise RuntimeError(f"{name}: attnviz wrote {ours_data[name].shape}, transformers "
                               f"{theirs_data[name].shape}")
        diff = max(diff, float(np.abs(ours_data[name] - theirs_data[name]).max()))
    shape = ours_data["cross_weights"].shape
    if shape[2:] != (n_target, n_source):
        raise RuntimeError(f"cross_weights {shape}: not {n_target} x {n_source} tokens")
    ours_mb, theirs_mb = peak_rss_mb(ours), peak_rss_mb(theirs)
    model = "a tiny T5" if smoke else "t5-small shape (6 + 6 layers x 8 heads, d_model 512)"
    return [{
        "measure": f"`attnviz export --attention all --layer all`, {n_source} source + "
                   f"{n_target} target tokens, {model}, fp32 file: whole process",
        "baseline": f"{base:.2f} s, {theirs_mb:.0f} MB peak (transformers script: AutoTokenizer, "
                    "from_pretrained float32 eager, forward, savez of the three)",
        "attnviz": f"{mine:.2f} s, {ours_mb:.0f} MB peak (same weights: max diff {diff:.1e})",
        "ratio": f"{mine / base:.2f}x its time", "target": "<= 0.8x",
        "met": mine / base <= 0.8 and diff < 1e-5,
    }]


def main(argv: list[str] | None = None) -> int:
    from run import table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per side (median)")
    parser.add_argument("--smoke", action="store_true", help="a tiny T5, one run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        rows = bench_seq2seq(args.smoke, 1 if args.smoke else args.repeat, Path(folder))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
