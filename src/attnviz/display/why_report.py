"""The page of ``attnviz why --report FILE.html``: one offline HTML file with the head's
heatmap; clicking a cell (query i, key j) shows that score's split, computed in the page.

Nothing is precomputed per cell: the split is bilinear, so the page holds each component's
part of the scaled query and of the key at every position (``[components, T, head_dim]`` per
side, from ``WhyResult.cells``) and computes a clicked cell's ``C × C`` matrix as
``query_parts[:, i] @ key_parts[:, j].T``, in double precision. The parts are stored as
float64 when both sides fit in ``EXACT_BYTES`` (the page's sums are then the tool's to
rounding), as float32 above it (about 1e-7 relative per part). The page's script and style
are ``report_assets/why.js`` and ``why.css``, inlined into ``why.html``.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np

from attnviz.analyses.attribution import token_labels
from attnviz.core.errors import InputError
from attnviz.display.report import asset, payload_json
from attnviz.files.fileio import write_bytes

FORMAT = "attnviz-why"
VERSION = 1
EXACT_BYTES = 16 * 2**20  # both sides' parts as float64 up to this many bytes
MAX_BYTES = 96 * 2**20  # refuse a page whose parts (float32) would exceed this


def parts_bytes(n_components: int, n_tokens: int, head_dim: int, itemsize: int = 4,
                n_key_components: int | None = None, n_keys: int | None = None) -> int:
    """Both sides' parts: ``n_components x n_tokens`` query parts and as many key parts (or
    ``n_key_components x n_keys``: cross-attention's other text), ``head_dim`` each."""
    keys = (n_components if n_key_components is None else n_key_components) * (
        n_tokens if n_keys is None else n_keys)
    return (n_components * n_tokens + keys) * head_dim * itemsize


def check_report_size(n_components: int, n_tokens: int, head_dim: int,
                      n_key_components: int | None = None, n_keys: int | None = None) -> None:
    size = parts_bytes(n_components, n_tokens, head_dim, 4, n_key_components, n_keys)
    if size > MAX_BYTES:
        sides = ("each side" if n_key_components is None and n_keys is None else
                 f"and {n_key_components} x {n_keys} on the key side")
        raise InputError(f"--report would hold {size / 2**20:.0f} MB of parts ({n_components} "
                         f"components x {n_tokens} tokens x {head_dim} dimensions, {sides}), "
                         f"more than {MAX_BYTES // 2**20} MB; shorten the text or drop --report")


def _b64(values: np.ndarray, dtype: str) -> str:
    little = np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<"))
    return base64.urlsafe_b64encode(little.tobytes()).decode("ascii")


def why_payload(result, labels: list[str]) -> dict:
    """What the page reads (``result`` from ``why(..., every_query=True)``)."""
    cells = result.cells
    if cells is None:
        raise ValueError("the report needs every cell: why(..., every_query=True)")
    n_components, n_tokens, head_dim = cells.query_parts.shape
    n_key_components, n_keys, _ = cells.key_parts.shape
    check_report_size(n_components, n_tokens, head_dim, n_key_components, n_keys)
    exact = parts_bytes(n_components, n_tokens, head_dim, 8, n_key_components,
                        n_keys) <= EXACT_BYTES
    dtype = "float64" if exact else "float32"
    key_labels = (list(labels) if result.key_token_ids is None else
                  token_labels(result.tokenizer, result.key_token_ids))
    bias = cells.position_bias
    return {
        "format": FORMAT, "version": VERSION, "attention": cells.attention,
        "layer": result.layer, "head": result.head, "kv_head": result.kv_head,
        "query": result.query, "key": result.key,
        "softcap": result.softcap, "window": cells.window,
        "tokens": list(labels), "key_tokens": key_labels,
        "components": list(result.query_components),
        "key_components": list(result.key_components),
        "n_tokens": n_tokens, "n_keys": n_keys, "head_dim": head_dim, "dtype": dtype,
        "weights": _b64(cells.weights, "float32"),
        "query_parts": _b64(cells.query_parts, dtype),
        "key_parts": _b64(cells.key_parts, dtype),
        "position_bias": None if bias is None else _b64(bias, "float64"),  # (T_q, T_k)
        "config": result.config,
    }


_ARRAYS = ("weights", "query_parts", "key_parts", "position_bias")


def render_why_html(payload: dict) -> str:
    """The whole page: ``why.html`` with the style, the data and the script inlined. The
    arrays' base64url text needs no escaping (letters, digits, ``-``, ``_``, ``=``): it is
    put in after the rest is escaped, not searched through (megabytes)."""
    data = payload_json({k: (f"@{k}@" if k in _ARRAYS else v) for k, v in payload.items()})
    for name in _ARRAYS:
        text = payload[name]
        if text is None:
            data = data.replace(f'"@{name}@"', "null", 1)
            continue
        if not re.fullmatch(r"[A-Za-z0-9_=-]*", text):
            raise ValueError(f"{name} is not base64url text")
        data = data.replace(f'"@{name}@"', f'"{text}"', 1)
    parts = {"{{css}}": asset("why.css"), "{{data}}": data,
             "{{scripts}}": f"<script>\n{asset('why.js')}</script>"}
    return re.sub(r"\{\{(css|data|scripts)\}\}", lambda m: parts[m.group(0)], asset("why.html"))


def write_why_report(result, labels: list[str], path: str | Path) -> Path:
    """The page of ``result`` (with its cells) written to ``path`` (atomically)."""
    path = Path(path)
    write_bytes(path, render_why_html(why_payload(result, labels)).encode("utf-8"))
    return path
