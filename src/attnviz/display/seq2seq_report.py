"""An encoder–decoder's attention (``analyses.seq2seq.Seq2SeqResult``) -> one offline,
interactive HTML page with bertviz's switch between its three kinds: encoder
self-attention, decoder self-attention and cross-attention.

The page (``report_assets/seq2seq.html`` + ``seq2seq.js``, the report's CSS) holds, per
kind, every head's whole ``(T_query, T_key)`` matrix (layout ``"full"``: row-major, the
decoder's masked future stored as 0), quantised as the report quantises (``report.quantize``:
``u16`` or ``sqrt-u8``), and each head's statistics (``compare-heads``' rows). Its views: the
model view, grouped by kind (a grid of layers x heads for each); the selected head's
heatmap (rectangular for cross-attention: the decoder's tokens down the side, the source's
along the top); the lines view of the selected layer (query tokens on the left, key tokens
on the right: the source's for cross-attention); the statistics, both texts' tokens and the
configuration. Schema: docs/encoder-decoders.md. Like every report it has no URL and is
byte-identical for the same input.

An encoder model's page (BERT …, random ``--bidirectional``: ``analyses.seq2seq.
encoder_result``, no decoder tokens) is the same page with the one kind "encoder", titled
for an encoder, plus ``report_assets/encoder.js``; with a sentence pair the payload's
``pair_start`` (the second sentence's first position, each token's ``"sentence"``) and the
script draws the boundary across the heatmap and the lines view and marks the second
sentence's tokens. The pages of encoder–decoders are unchanged by it.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np

from attnviz.analyses.seq2seq import KINDS, Seq2SeqResult
from attnviz.analyses.stats import COLUMNS, head_rows
from attnviz.core.errors import InputError
from attnviz.display.report import (
    ENCODINGS,
    MAX_WEIGHTS,
    ReportInfo,
    asset,
    choose_encoding,
    dequantize,
    payload_json,
    quantize,
)
from attnviz.files.fileio import write_bytes
from attnviz.files.output import clean

FORMAT = "attnviz-seq2seq-report"
VERSION = 1
FULL = "full"  # every cell of each head, row-major


def check_size(result: Seq2SeqResult, limit: int | None = None) -> int:
    """The weights the page stores (every cell of every head of every kind), refused above
    ``limit`` (``report.MAX_WEIGHTS``) before any encoding."""
    limit = MAX_WEIGHTS if limit is None else limit
    count = sum(result.of(kind).weights.size for kind in result.kinds)
    if count > limit:
        raise InputError(f"a report of {', '.join(result.kinds)} attention would hold {count:,} "
                         f"weights, more than the {limit:,} a report can hold; choose fewer "
                         "layers with --layer, one kind with --attention, or shorter texts")
    return count


def build_seq2seq_payload(result: Seq2SeqResult, encoding: str = "auto",
                          limit: int | None = None) -> dict:
    """The document embedded in the page (see the module docstring)."""
    count = check_size(result, limit)
    if encoding == "auto":
        encoding = choose_encoding(count)
    kinds = {}
    for kind in result.kinds:
        shown = result.of(kind)
        kinds[kind] = {
            "layers": list(shown.layers), "shape": list(shown.weights.shape), "layout": FULL,
            "encoding": encoding,
            "data": base64.urlsafe_b64encode(quantize(shown.weights, encoding)).decode("ascii"),
            "stats": {"columns": ["layer", "head", *COLUMNS],
                      "heads": head_rows(shown.weights, list(shown.layers), (), kind)},
        }
    pair = {} if result.pair_start is None else {"pair_start": result.pair_start}
    return clean({"format": FORMAT, "version": VERSION, "config": result.config,
                  "tokens": result.tokens(), "decoder_tokens": result.decoder_tokens(),
                  "kinds": kinds, **pair})


def decode_kind(payload: dict, kind: str) -> np.ndarray:
    """``(L, H, T_query, T_key)`` float64 weights of ``kind`` from a payload."""
    spec = payload["kinds"][kind]
    values = dequantize(base64.urlsafe_b64decode(spec["data"]), spec["encoding"])
    return values.reshape(spec["shape"])


def is_encoder_page(payload: dict) -> bool:
    """An encoder model's page: no decoder (an encoder–decoder's always reads its start
    token)."""
    return not payload["decoder_tokens"]


def render_seq2seq_html(payload: dict) -> str:
    """The whole page: the template with the report's CSS, the data and the script."""
    page = asset("seq2seq.html")
    scripts = f"<script>\n{asset('seq2seq.js')}</script>"
    if is_encoder_page(payload):
        page = page.replace("attnviz report: encoder&ndash;decoder", "attnviz report: encoder")
        scripts += f"\n<script>\n{asset('encoder.js')}</script>"
    parts = {"{{css}}": asset("report.css", families=False, generation=False, norms=False),
             "{{data}}": payload_json(payload), "{{scripts}}": scripts}
    return re.sub(r"\{\{(css|data|scripts)\}\}", lambda m: parts[m.group(0)], page)


def write_seq2seq_report(result: Seq2SeqResult, path: str | Path, encoding: str = "auto",
                         limit: int | None = None) -> ReportInfo:
    """Write ``result`` as one offline HTML page at ``path`` (atomically)."""
    if encoding not in ("auto", *ENCODINGS):
        raise InputError(f"unknown encoding {encoding!r}; choose auto, {', '.join(ENCODINGS)}")
    payload = build_seq2seq_payload(result, encoding, limit)
    html = render_seq2seq_html(payload).encode("ascii")
    path = Path(path)
    write_bytes(path, html)
    first = result.of(result.kinds[0])
    return ReportInfo(path=path, bytes=len(html),
                      data_bytes=sum(len(k["data"]) for k in payload["kinds"].values()),
                      encoding=next(iter(payload["kinds"].values()))["encoding"],
                      layers=list(first.layers), n_heads=first.n_heads,
                      n_tokens=len(result.source_ids))


__all__ = ["KINDS", "build_seq2seq_payload", "decode_kind", "write_seq2seq_report"]
