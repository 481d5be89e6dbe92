"""``AttentionResult`` -> one self-contained, offline, interactive HTML file.

The page's CSS and JavaScript are real files in ``attnviz/report_assets/`` (package data),
inlined when the report is written; the data travels in one
``<script type="application/json" id="attnviz-data">`` element whose schema is
documented in docs/report.md. The output has no URL of any kind (no ``//`` at all) and is
byte-identical for the same input.

Model families: a result with sliding windows or grouped-query heads carries ``windows``
(per layer) and ``kv_heads`` (per head) in its data, and the assets' blocks between
``/* [families] */`` and ``/* [/families] */`` lines draw them; for any other result those
blocks are left out of the page (``asset``), so a GPT-2 report stays byte for byte what
it was before the families came.

>>> from attnviz.analysis import analyze
>>> from attnviz.report import build_payload, decode_weights
>>> result = analyze("Hello world", heads=None)
>>> payload = build_payload(result)
>>> payload["weights"]["encoding"], decode_weights(payload).shape
('u16', (1, 12, 2, 2))
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from attnviz.analysis import AttentionResult
from attnviz.errors import InputError

FORMAT = "attnviz-report"
VERSION = 1

# Refuse reports holding more stored weights than this (lower triangles of every head):
# about 16.8 MB of data, 22.4 MB of HTML; e.g. GPT-2 small, 12 layers x 12 heads, up to
# 482 tokens, or one layer of 1024 tokens with up to 31 heads.
MAX_WEIGHTS = 2**24
# At most this many stored weights are written as 16-bit linear values (exact to 7.6e-6);
# above it, 8-bit square-root values keep the 12 x 12 x 256 case under 8 MB.
MAX_U16_WEIGHTS = 2**20
ENCODINGS = ("u16", "sqrt-u8")

_ASSETS = ("report.css", "data.js", "heatmap.js", "heads.js", "model.js", "tables.js", "main.js")
_SCRIPT_END = re.compile(r"</script", re.I)
# Whole lines of the assets, from "/* [families] */" to "/* [/families] */" (see asset()).
_FAMILIES = re.compile(r"^[ \t]*/\* \[families\] \*/\n.*?^[ \t]*/\* \[/families\] \*/\n",
                       re.M | re.S)


def n_stored(n_layers: int, n_heads: int, n_tokens: int) -> int:
    """How many weights a report stores: the lower triangle (with the diagonal) of each head."""
    return n_layers * n_heads * n_tokens * (n_tokens + 1) // 2


def check_size(n_layers: int, n_heads: int, n_tokens: int, limit: int | None = None) -> None:
    """Refuse, before any encoding, a report too large for a browser to open comfortably."""
    limit = MAX_WEIGHTS if limit is None else limit
    count = n_stored(n_layers, n_heads, n_tokens)
    if count > limit:
        raise InputError(
            f"a report of {n_layers} layer(s) x {n_heads} heads x {n_tokens} tokens would hold "
            f"{count:,} attention weights, more than the {limit:,} a report can hold (about "
            f"{limit * 4 / 3 / 1e6:.1f} MB of HTML); choose fewer layers with --layer (e.g. --layer 0 "
            "or --layer 3,5) or a shorter text"
        )


def quantize(lower: np.ndarray, encoding: str) -> bytes:
    """Stored weights (any shape, values in [0, 1]) -> bytes, as documented in docs/report.md:
    ``u16``: ``round(w * 65535)`` little-endian uint16; ``sqrt-u8``: ``round(sqrt(w) * 255)``."""
    w = np.clip(lower.astype(np.float64), 0.0, 1.0)
    if encoding == "u16":
        return np.rint(w * 65535).astype("<u2").tobytes()
    if encoding == "sqrt-u8":
        return np.rint(np.sqrt(w) * 255).astype(np.uint8).tobytes()
    raise ValueError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")


def dequantize(data: bytes, encoding: str) -> np.ndarray:
    """The inverse of ``quantize``: float64 values."""
    if encoding == "u16":
        return np.frombuffer(data, dtype="<u2") / 65535.0
    if encoding == "sqrt-u8":
        return (np.frombuffer(data, dtype=np.uint8) / 255.0) ** 2
    raise ValueError(f"unknown encoding {encoding!r}")


def max_error(weight: float | np.ndarray, encoding: str) -> float | np.ndarray:
    """The largest possible difference between a weight and its decoded value."""
    if encoding == "u16":
        return np.full_like(np.asarray(weight, dtype=np.float64), 0.5 / 65535)
    # |sqrt w - sqrt w'| <= 1/510, so |w - w'| <= (2 sqrt w + 1/510) / 510
    return (2 * np.sqrt(weight) + 1 / 510) / 510


def lower_triangles(weights: np.ndarray) -> np.ndarray:
    """``(L, H, T, T)`` -> ``(L, H, T(T+1)/2)``: row ``i`` of each head, keys ``0..i``, rows in order."""
    n = weights.shape[-1]
    rows, cols = np.tril_indices(n)  # row-major: (0,0), (1,0), (1,1), (2,0), ...
    return weights[..., rows, cols]


def choose_encoding(count: int) -> str:
    return "u16" if count <= MAX_U16_WEIGHTS else "sqrt-u8"


def build_payload(result: AttentionResult, encoding: str = "auto", limit: int | None = None,
                  induction: np.ndarray | None = None) -> dict:
    """The document embedded in the page (schema: docs/report.md). ``induction``: the
    ``(L, H)`` scores of ``analysis.induction_probe``, a column of the statistics.
    ``windows`` (per layer: W or None) is there only when a layer has a sliding window,
    ``kv_heads`` (per head: its key/value head) only when heads share them."""
    from attnviz.output import clean
    from attnviz.stats import COLUMNS, add_induction, head_rows, similarity

    n_layers, n_heads, n_tokens, _ = result.weights.shape
    check_size(n_layers, n_heads, n_tokens, limit)
    count = n_stored(n_layers, n_heads, n_tokens)
    if encoding == "auto":
        encoding = choose_encoding(count)
    data = quantize(lower_triangles(result.weights), encoding)
    rows = head_rows(result.weights, result.layers)
    if induction is not None:
        add_induction(rows, induction)
    # Model families: written only when they say something, so a GPT-2 report is unchanged.
    windows = [result.layer_window(li) for li in range(n_layers)]
    families = {"windows": windows} if any(w is not None for w in windows) else {}
    if result.grouped:
        families["kv_heads"] = [int(kv) for kv in result.kv_heads]
    return clean({
        "format": FORMAT,
        "version": VERSION,
        "config": result.config,
        "layers": list(result.layers),
        "n_heads": n_heads,
        "n_tokens": n_tokens,
        "tokens": result.tokens(),
        # --tokens A:B: the queries and keys A..B-1 of attention computed on the whole text
        "window": {"start": result.window[0], "stop": result.window[1]} if result.window else None,
        **families,
        "weights": {
            "shape": [n_layers, n_heads, n_tokens, n_tokens],
            "layout": "lower-triangle",
            "encoding": encoding,
            "data": base64.urlsafe_b64encode(data).decode("ascii"),
        },
        "stats": {
            "columns": ["layer", "head", *COLUMNS] + (["induction"] if induction is not None else []),
            "heads": rows,
            "similarity": [[[float(x) for x in row] for row in similarity(w)]
                           for w in result.weights],
        },
    })


def decode_weights(payload: dict) -> np.ndarray:
    """``(L, H, T, T)`` float64 weights from a payload (zeros above the diagonal)."""
    spec = payload["weights"]
    n_layers, n_heads, n_tokens, _ = spec["shape"]
    values = dequantize(base64.urlsafe_b64decode(spec["data"]), spec["encoding"])
    values = values.reshape(n_layers, n_heads, n_tokens * (n_tokens + 1) // 2)
    weights = np.zeros((n_layers, n_heads, n_tokens, n_tokens))
    rows, cols = np.tril_indices(n_tokens)
    weights[..., rows, cols] = values
    return weights


def payload_json(payload: dict) -> str:
    """JSON safe inside a ``<script>`` element: ASCII only, ``<``, ``>``, ``&`` escaped (they
    occur only inside strings) so no token text can close the element, and ``/`` written
    ``\\/`` so no text puts a URL such as ``http://`` or ``//host`` in the page."""
    text = json.dumps(payload, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("/", "\\/")):
        text = text.replace(char, escaped)
    return text


def asset(name: str, families: bool = True) -> str:
    """The text of ``report_assets/name``; without ``families``, its lines from each
    ``/* [families] */`` to the next ``/* [/families] */`` (both included) left out: the
    code for sliding windows and grouped-query heads, which a plain report does not run."""
    text = resources.files("attnviz").joinpath("report_assets", name).read_text(encoding="utf-8")
    if name != "report.html" and _SCRIPT_END.search(text):  # would end a <script> early
        raise AssertionError(f"report asset {name} contains '</script'")
    return text if families else _FAMILIES.sub("", text)


def has_families(payload: dict) -> bool:
    """Whether the page needs the assets' model-family blocks (see ``asset``)."""
    return "windows" in payload or "kv_heads" in payload


def render_html(payload: dict) -> str:
    """The whole page: the template with the CSS, the data and the scripts inlined."""
    families = has_families(payload)
    scripts = "\n".join(f"<script>\n{asset(name, families)}</script>" for name in _ASSETS
                        if name.endswith(".js"))
    page = asset("report.html")
    # One pass, so text inserted for one placeholder is never searched for another.
    parts = {"{{css}}": asset("report.css", families), "{{data}}": payload_json(payload),
             "{{scripts}}": scripts}
    return re.sub(r"\{\{(css|data|scripts)\}\}", lambda m: parts[m.group(0)], page)


@dataclass
class ReportInfo:
    """What ``write_report`` wrote."""

    path: Path
    bytes: int
    data_bytes: int
    encoding: str
    layers: list[int]
    n_heads: int
    n_tokens: int

    def as_dict(self) -> dict:
        return {"file": str(self.path), "bytes": self.bytes, "data_bytes": self.data_bytes,
                "encoding": self.encoding, "layers": self.layers, "n_heads": self.n_heads,
                "n_tokens": self.n_tokens}


def write_report(result: AttentionResult, path: str | Path, encoding: str = "auto",
                 limit: int | None = None, induction: np.ndarray | None = None) -> ReportInfo:
    """Write ``result`` as one offline HTML file at ``path`` (atomically).

    ``encoding``: ``"auto"`` (16-bit when at most ``MAX_U16_WEIGHTS`` weights, else
    8-bit square root), ``"u16"`` or ``"sqrt-u8"``. Raises ``InputError`` above ``limit``
    (default ``MAX_WEIGHTS``) stored weights. ``induction``: see ``build_payload``.
    """
    from attnviz.fileio import write_bytes

    if encoding not in ("auto", *ENCODINGS):
        raise InputError(f"unknown encoding {encoding!r}; choose auto, {', '.join(ENCODINGS)}")
    payload = build_payload(result, encoding, limit, induction)
    html = render_html(payload).encode("ascii")
    path = Path(path)
    write_bytes(path, html)
    return ReportInfo(path=path, bytes=len(html), data_bytes=len(payload["weights"]["data"]),
                      encoding=payload["weights"]["encoding"], layers=list(result.layers),
                      n_heads=int(result.weights.shape[1]), n_tokens=int(result.weights.shape[2]))


def read_payload(path: str | Path) -> dict:
    """The embedded document of a report written by ``write_report``."""
    html = Path(path).read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="attnviz-data">(.*?)</script>', html, re.S)
    if match is None:
        raise InputError(f"{path} is not an attnviz report (no attnviz-data element)")
    return json.loads(match.group(1))
