"""The encoders benchmark (issue 40): `attnviz heatmap --layer all` of a BERT-base-shaped
checkpoint at its whole context, 512 tokens, against a transformers script that loads the
model, runs it with attentions and saves them.

    python benchmarks/encoders_bench.py            # full size, one row
    python benchmarks/encoders_bench.py --smoke    # a tiny stand-in, one run: checks it works

Full size, random weights made here (no download): a **BERT-base** shape — 12 layers x 12
heads, hidden 768, MLP 3072, 512 positions, two token types, vocabulary 30522, float32 as
bert-base-uncased ships (``BertModel`` made by transformers, every matrix respread to std
1.8 / sqrt(768) so rows are peaked, ``save_pretrained``: 418 MB). Built once into
``/tmp/attnviz-bench-bert-base`` (``ATTNVIZ_BENCH_CACHE`` moves it) and reused while its
stamp matches. Its tokenizer is a WordPiece ``tokenizer.json`` declared ``BertTokenizer``
(lower case), whose vocabulary holds the benchmark's words whole, so ``[CLS]`` + 510 words +
``[SEP]`` is exactly 512 tokens.

The row: ``attnviz heatmap --file TEXT --weights FOLDER --layer all --quiet`` (144 head
pictures of 512 x 512 cells, 12 layer overviews, the model overview: 157 PNGs) against
run.py's transformers script (``BertModel.from_pretrained(attn_implementation="eager",
dtype=torch.float32)``, the forward with ``output_attentions=True``, ``np.savez`` of the
stacked attentions; the ids given), whole processes alternating (target <= 1.0x); one
``attnviz export --layer all`` afterwards checks that both sides computed the same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmark modules

from scan_bench import WORDS  # noqa: E402

BUILD_VERSION = 1  # bump when the way the checkpoint is made changes: rebuilds the cache
CACHE = Path(os.environ.get("ATTNVIZ_BENCH_CACHE", tempfile.gettempdir()))
BERT_BASE = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
             "num_attention_heads": 12, "intermediate_size": 3072,
             "max_position_embeddings": 512, "type_vocab_size": 2}
TINY = {"vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 64, "type_vocab_size": 2}
SPREAD = 1.8  # the matrices' std times sqrt(hidden): peaked attention rows
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_bert(folder: Path, config: dict) -> Path:
    """A BERT-shaped checkpoint (``BertModel``, float32) and a WordPiece tokenizer.json whose
    words are single tokens; built once per stamp."""
    stamp = folder / "stamp.json"
    wanted = {"version": BUILD_VERSION, **config}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return folder
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**config), add_pooling_layer=False)
    std = SPREAD / config["hidden_size"] ** 0.5
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm" in name:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                param.normal_(0.0, std)
    model.save_pretrained(folder, safe_serialization=True)
    vocab = {token: i for i, token in enumerate(SPECIALS + sorted(set(WORDS)))}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}))
    stamp.write_text(json.dumps(wanted))
    return folder


def bench_encoders(tmp: Path, smoke: bool = False, repeat: int = 5) -> list[dict]:
    """The row of the module docstring, in run.py's format."""
    from run import all_layers_commands, max_diff, rotating_medians  # benchmarks/run.py
    from scan_bench import wall

    from attnviz.text.tokenization import load_tokenizer

    repeat = 1 if smoke else repeat
    config = TINY if smoke else BERT_BASE
    folder = make_bert((tmp if smoke else CACHE) / "attnviz-bench-bert-base", config)
    n_tokens = config["max_position_embeddings"]
    text = " ".join(WORDS[(i * 7) % len(WORDS)] for i in range(n_tokens - 2))
    ids = load_tokenizer(folder).encode(text)
    if len(ids) != n_tokens:
        raise RuntimeError(f"the text is {len(ids)} tokens, not {n_tokens}")
    work = tmp / "bert-heatmap"
    work.mkdir(parents=True, exist_ok=True)
    commands = all_layers_commands(folder, text, ids, work, model_class="BertModel")
    medians = rotating_medians({k: commands[k] for k in ("transformers", "heatmap")}, repeat)
    base, ours = medians["transformers"], medians["heatmap"]
    wall(commands["export"])
    diff = max_diff(work)
    n_files = len(list((work / "out").rglob("*.png")))
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    shape = (f"tiny BERT stand-in ({layers} layers)" if smoke else
             f"BERT-base shape ({layers} layers x {heads} heads), float32 file")
    ratio = ours / base
    return [{"measure": f"`attnviz heatmap --layer all`, {n_tokens} tokens (the whole context) "
                        f"of an encoder, {shape}, whole process",
             "baseline": f"{base:.2f} s (transformers script: import, BertModel.from_pretrained "
                         "float32 eager, forward with attentions, savez)",
             "attnviz": f"{ours:.2f} s ({n_files} PNGs; its export: max diff {diff:.1e})",
             "ratio": f"{ratio:.2f}x its time", "target": "<= 1.0x",
             "met": ratio <= 1.0 and diff < 1e-5}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny stand-in, one run")
    parser.add_argument("--repeat", type=int, default=5, help="alternating runs per side")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for row in bench_encoders(Path(tmp), smoke=args.smoke, repeat=args.repeat):
            print(" | ".join(str(row[k]) for k in ("measure", "baseline", "attnviz", "ratio",
                                                   "target", "met")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
