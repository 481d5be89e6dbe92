"""``AttentionResult`` -> one self-contained, offline, interactive HTML file.

The page's CSS and JavaScript are real files in ``attnviz/display/report_assets/`` (package data),
inlined when the report is written; the data travels in one
``<script type="application/json" id="attnviz-data">`` element whose schema is
documented in docs/report.md. The output has no URL of any kind (no ``//`` at all) and is
byte-identical for the same input.

Model families: a result with sliding windows or grouped-query heads carries ``windows``
(per layer) and ``kv_heads`` (per head) in its data, and the assets' blocks between
``/* [families] */`` and ``/* [/families] */`` lines draw them; for any other result those
blocks are left out of the page (``asset``), so a GPT-2 report stays byte for byte what
it was before the families came.

Generation (``attnviz generate``): ``write_generation_report`` writes the same page over the
whole sequence (prompt and generated tokens) from a ``generation.GenerationResult``. Only
the generated rows are stored (layout ``"generated-rows"``: row ``g`` is the query at
position ``P + g - 1`` that wrote generated token ``g``, over keys ``0 .. P + g - 1``), with
the steps (each token's probability and top-k alternatives) in ``generation``; the assets'
``/* [generation] */`` blocks mark the generated tokens, leave the rows that were not
computed blank and add the heads view's step slider. Any other report leaves them out.

>>> from attnviz.analyses.attention import analyze
>>> from attnviz.display.report import build_payload, decode_weights
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

from attnviz.analyses.attention import AttentionResult, token_records
from attnviz.analyses.stats import COLUMNS, add_induction, head_rows, row_entropy, similarity
from attnviz.analyses.weighting import colour_top, renormalized, weighting_config
from attnviz.core.errors import InputError
from attnviz.core.words import counted
from attnviz.files.fileio import write_bytes
from attnviz.files.output import clean
from attnviz.text.gpt2_bpe import token_label, token_text

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

_ASSETS = ("report.css", "data.js", "heatmap.js", "heads.js", "model.js", "tables.js",
           "attribution.js", "weighting.js", "rollout.js", "main.js")
# asset -> the payload key it needs
_OPTIONAL = {"attribution.js": "attribution", "weighting.js": "norms", "rollout.js": "rollout"}
_SCRIPT_END = re.compile(r"</script", re.I)


def _block(name: str) -> re.Pattern:
    """Whole lines of the assets, from "/* [name] */" to "/* [/name] */" (see asset())."""
    return re.compile(rf"^[ \t]*/\* \[{name}\] \*/\n.*?^[ \t]*/\* \[/{name}\] \*/\n",
                      re.M | re.S)


_FAMILIES = _block("families")
# The generation report's code: "/* [generation] */" ... "/* [/generation] */".
_GENERATION = _block("generation")
# The value-weighted norms' code (--weighting norm): "/* [norms] */" ... "/* [/norms] */".
_NORMS = _block("norms")
GENERATED_ROWS = "generated-rows"  # weights.layout of a generation report


def n_stored(n_layers: int, n_heads: int, n_tokens: int, matrices: int = 1) -> int:
    """How many weights a report stores: the lower triangle (with the diagonal) of each head,
    for each of ``matrices`` matrices per head (2 with the value-weighted norms)."""
    return matrices * n_layers * n_heads * n_tokens * (n_tokens + 1) // 2


def check_size(n_layers: int, n_heads: int, n_tokens: int, limit: int | None = None,
               matrices: int = 1) -> None:
    """Refuse, before any encoding, a report too large for a browser to open comfortably;
    ``matrices=2`` when it carries the norms of ``--weighting norm`` beside the weights."""
    limit = MAX_WEIGHTS if limit is None else limit
    count = n_stored(n_layers, n_heads, n_tokens, matrices)
    if count > limit:
        what = "attention weights" if matrices == 1 else (
            "values (attention weights and their value-weighted norms)")
        raise InputError(
            f"a report of {counted(n_layers, 'layer')} x {counted(n_heads, 'head')} x "
            f"{counted(n_tokens, 'token')} would hold "
            f"{count:,} {what}, more than the {limit:,} a report can hold (about "
            f"{limit * 4 / 3 / 1e6:.1f} MB of HTML); choose fewer layers with --layer (e.g. --layer 0 "
            "or --layer 3,5) or a shorter text" + (", or leave out --weighting norm"
                                                    if matrices > 1 else "")
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


def _stats(rows_of: np.ndarray, layers: list[int], induction: np.ndarray | None) -> dict:
    """The statistics block of the page: ``compare-heads``' rows and similarity matrices."""
    rows = head_rows(rows_of, layers)
    if induction is not None:
        add_induction(rows, induction)
    return {
        "columns": ["layer", "head", *COLUMNS] + (["induction"] if induction is not None else []),
        "heads": rows,
        "similarity": [[[float(x) for x in row] for row in similarity(w)] for w in rows_of],
    }


def _norms_block(norms: np.ndarray, encoding: str, layers: list[int],
                 induction: np.ndarray | None) -> dict:
    """``--weighting norm``: the norms ``(L, H, T, T)`` as a second matrix (stored as
    norm / scale in the weights' layout and encoding) and the statistics of their rows
    renormalised to sum 1."""
    scale = colour_top(norms)
    n_layers, n_heads, n_tokens, _ = norms.shape
    return {
        "shape": [n_layers, n_heads, n_tokens, n_tokens],
        "layout": "lower-triangle",
        "encoding": encoding,
        "scale": scale,
        "data": base64.urlsafe_b64encode(quantize(lower_triangles(norms) / scale, encoding)
                                         ).decode("ascii"),
        "stats": _stats(renormalized(norms), layers, induction),
    }


def _rollout_block(rollout: dict) -> dict:
    """The rollout view's data: ``rollout`` holds ``layers`` and the ``(T, T)`` matrices
    ``attention`` (and ``norm``), stored as 16-bit lower triangles (rows sum to at most 1)."""
    n_tokens = rollout["attention"].shape[-1]
    block = {"layers": list(rollout["layers"]), "shape": [n_tokens, n_tokens],
             "layout": "lower-triangle", "encoding": "u16"}
    for name in ("attention", "norm"):
        if rollout.get(name) is not None:
            block[name] = base64.urlsafe_b64encode(
                quantize(lower_triangles(np.asarray(rollout[name])), "u16")).decode("ascii")
    return block


def build_payload(result: AttentionResult, encoding: str = "auto", limit: int | None = None,
                  induction: np.ndarray | None = None, attribution: dict | None = None,
                  norms: np.ndarray | None = None, norm_induction: np.ndarray | None = None,
                  rollout: dict | None = None) -> dict:
    """The document embedded in the page (schema: docs/report.md). ``induction``: the
    ``(L, H)`` scores of ``induction.induction_probe``, a column of the statistics.
    ``attribution``: ``attribution.report_data``'s, for the "heads that matter" view.
    ``windows`` (per layer: W or None) is there only when a layer has a sliding window,
    ``kv_heads`` (per head: its key/value head) only when heads share them.
    ``norms``: the ``(L, H, T, T)`` value-weighted norms (``weighting.norm_weights``), a
    second matrix the page's switch shows instead of the weights (``norm_induction``: the
    induction scores of their rows); ``rollout``: ``{"layers", "attention": (T, T),
    "norm": (T, T) or None}`` for the rollout view. Each key is absent without them."""
    n_layers, n_heads, n_tokens, _ = result.weights.shape
    matrices = 1 if norms is None else 2
    check_size(n_layers, n_heads, n_tokens, limit, matrices)
    count = n_stored(n_layers, n_heads, n_tokens, matrices)
    if encoding == "auto":
        encoding = choose_encoding(count)
    data = quantize(lower_triangles(result.weights), encoding)
    # Model families: written only when they say something, so a GPT-2 report is unchanged.
    windows = [result.layer_window(li) for li in range(n_layers)]
    families = {"windows": windows} if any(w is not None for w in windows) else {}
    if result.grouped:
        families["kv_heads"] = [int(kv) for kv in result.kv_heads]
    extras = {}
    config = result.config
    if norms is not None:
        extras["norms"] = _norms_block(norms, encoding, list(result.layers), norm_induction)
        config = {**config, "weighting": weighting_config(
            "norm", "a second matrix beside the weights; the page's switch shows either",
            top=extras["norms"]["scale"])}
    if rollout is not None:
        extras["rollout"] = _rollout_block(rollout)
    return clean({
        "format": FORMAT,
        "version": VERSION,
        "config": config,
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
        "stats": _stats(result.weights, list(result.layers), induction),
        **({"attribution": attribution} if attribution is not None else {}),
        **extras,
    })


def decode_weights(payload: dict) -> np.ndarray:
    """``(L, H, T, T)`` float64 weights from a payload (zeros above the diagonal); for a
    generation report (layout ``"generated-rows"``) its ``(L, H, N, T)`` rows, zeros at
    the keys not yet written."""
    spec = payload["weights"]
    if spec["layout"] == GENERATED_ROWS:
        n_layers, n_heads, n_steps, n_tokens = spec["shape"]
        values = dequantize(base64.urlsafe_b64decode(spec["data"]), spec["encoding"])
        rows = np.zeros((n_layers, n_heads, n_steps, n_tokens))
        rows[..., _written_keys(n_tokens - n_steps, n_steps)] = values.reshape(n_layers, n_heads, -1)
        return rows
    n_layers, n_heads, n_tokens, _ = spec["shape"]
    values = dequantize(base64.urlsafe_b64decode(spec["data"]), spec["encoding"])
    values = values.reshape(n_layers, n_heads, n_tokens * (n_tokens + 1) // 2)
    weights = np.zeros((n_layers, n_heads, n_tokens, n_tokens))
    rows, cols = np.tril_indices(n_tokens)
    weights[..., rows, cols] = values
    return weights


def _lower_triangle_values(data: str, encoding: str, lead: tuple[int, ...], n_tokens: int) -> np.ndarray:
    """Stored lower triangles (base64url) -> ``lead + (T, T)`` float64, zeros above the diagonal."""
    values = dequantize(base64.urlsafe_b64decode(data), encoding)
    values = values.reshape(*lead, n_tokens * (n_tokens + 1) // 2)
    out = np.zeros((*lead, n_tokens, n_tokens))
    rows, cols = np.tril_indices(n_tokens)
    out[..., rows, cols] = values
    return out


def decode_norms(payload: dict) -> np.ndarray:
    """``(L, H, T, T)`` float64 value-weighted norms of a ``--weighting norm`` report
    (stored value × ``norms.scale``; zeros above the diagonal)."""
    spec = payload["norms"]
    n_layers, n_heads, n_tokens, _ = spec["shape"]
    return _lower_triangle_values(spec["data"], spec["encoding"], (n_layers, n_heads),
                                  n_tokens) * spec["scale"]


def decode_rollout(payload: dict, which: str = "attention") -> np.ndarray:
    """The ``(T, T)`` rollout of a ``--rollout`` report: of the attention weights, or of
    the renormalised norms (``which="norm"``)."""
    spec = payload["rollout"]
    return _lower_triangle_values(spec[which], spec["encoding"], (), spec["shape"][0])


def payload_json(payload: dict) -> str:
    """JSON safe inside a ``<script>`` element: ASCII only, ``<``, ``>``, ``&`` escaped (they
    occur only inside strings) so no token text can close the element, and ``/`` written
    ``\\/`` so no text puts a URL such as ``http://`` or ``//host`` in the page."""
    text = json.dumps(payload, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("/", "\\/")):
        text = text.replace(char, escaped)
    return text


def asset(name: str, families: bool = True, generation: bool = True, norms: bool = True) -> str:
    """The text of ``report_assets/name``; without ``families``, its lines from each
    ``/* [families] */`` to the next ``/* [/families] */`` (both included) left out: the
    code for sliding windows and grouped-query heads, which a plain report does not run;
    without ``generation``, the same for the ``/* [generation] */`` blocks, and without
    ``norms`` for the ``/* [norms] */`` blocks (the value-weighted switch's hooks)."""
    text = resources.files("attnviz.display").joinpath("report_assets", name).read_text(encoding="utf-8")
    if not name.endswith(".html") and _SCRIPT_END.search(text):  # would end a <script> early
        raise AssertionError(f"report asset {name} contains '</script'")
    text = text if families else _FAMILIES.sub("", text)
    text = text if norms else _NORMS.sub("", text)
    return text if generation else _GENERATION.sub("", text)


def has_families(payload: dict) -> bool:
    """Whether the page needs the assets' model-family blocks (see ``asset``)."""
    return "windows" in payload or "kv_heads" in payload


def render_html(payload: dict) -> str:
    """The whole page: the template with the CSS, the data and the scripts inlined."""
    families, generation, norms = has_families(payload), "generation" in payload, "norms" in payload
    scripts = "\n".join(f"<script>\n{asset(name, families, generation, norms)}</script>"
                        for name in _ASSETS if name.endswith(".js")
                        and _OPTIONAL.get(name, "format") in payload)
    page = asset("report.html")
    # One pass, so text inserted for one placeholder is never searched for another.
    parts = {"{{css}}": asset("report.css", families, generation, norms),
             "{{data}}": payload_json(payload),
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
                 limit: int | None = None, induction: np.ndarray | None = None,
                 attribution: dict | None = None, norms: np.ndarray | None = None,
                 norm_induction: np.ndarray | None = None,
                 rollout: dict | None = None) -> ReportInfo:
    """Write ``result`` as one offline HTML file at ``path`` (atomically).

    ``encoding``: ``"auto"`` (16-bit when at most ``MAX_U16_WEIGHTS`` weights, else
    8-bit square root), ``"u16"`` or ``"sqrt-u8"``. Raises ``InputError`` above ``limit``
    (default ``MAX_WEIGHTS``) stored weights. ``induction``, ``attribution``, ``norms``,
    ``norm_induction``, ``rollout``: see ``build_payload``.
    """
    if encoding not in ("auto", *ENCODINGS):
        raise InputError(f"unknown encoding {encoding!r}; choose auto, {', '.join(ENCODINGS)}")
    payload = build_payload(result, encoding, limit, induction, attribution, norms,
                            norm_induction, rollout)
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


# ------------------------------------------------------------------------------ generation


def _written_keys(prompt_length: int, n_steps: int) -> np.ndarray:
    """``(N, P + N)`` bool: the keys each generated row saw (row ``g``: ``0 .. P + g - 1``)."""
    keys = np.arange(prompt_length + n_steps)[None, :]
    return keys < prompt_length + np.arange(n_steps)[:, None]


def n_generated_stored(n_layers: int, n_heads: int, prompt_length: int, n_steps: int) -> int:
    """How many weights a generation report stores: ``P + g`` keys for each generated row."""
    return n_layers * n_heads * (n_steps * prompt_length + n_steps * (n_steps - 1) // 2)


def generated_row_stats(rows: np.ndarray, prompt_length: int, layers: list[int],
                        kv_heads: list[int] = ()) -> list[dict]:
    """``stats.head_rows`` for generated rows ``(L, H, N, P + N)``: the same statistics
    (docs/heads.md), each a mean over the generated rows, row ``g`` being the query at
    position ``P + g - 1``; NaN as None."""
    n_steps, n_tokens = rows.shape[2:]
    queries = prompt_length - 1 + np.arange(n_steps)  # (N,) each row's query position
    later = queries >= 1  # the statistics of keys before the query need one
    index = np.arange(n_steps)
    distance = queries[:, None] - np.arange(n_tokens)[None, :]  # (N, T); later keys weigh 0
    records = []
    for layer, layer_rows in zip(layers, rows):
        w = layer_rows.astype(np.float64)  # (H, N, T)
        entropy = row_entropy(w)  # (H, N)
        nan = np.full(w.shape[0], np.nan)
        stats = {
            "entropy": entropy.mean(axis=-1),
            "normalized_entropy": (entropy[:, later] / np.log(queries[later] + 1.0)).mean(axis=-1)
            if later.any() else nan,
            "max_weight": w.max(axis=-1).mean(axis=-1),
            "self": w[:, index, queries].mean(axis=-1),
            "previous_token": w[:, index[later], queries[later] - 1].mean(axis=-1)
            if later.any() else nan,
            "first_token": w[:, later, 0].mean(axis=-1) if later.any() else nan,
            "mean_distance": (w * distance).sum(axis=-1).mean(axis=-1),
        }
        for h in range(w.shape[0]):
            record = {"layer": layer, "head": h, **({"kv_head": kv_heads[h]} if kv_heads else {})}
            for name in COLUMNS:
                value = float(stats[name][h])
                record[name] = None if np.isnan(value) else value
            records.append(record)
    return records


def _token_info(token_ids: list[int], tokenizer, known: dict[int, str]) -> dict[int, dict]:
    """id -> {"text", "label"}: from the tokenizer's bytes when there is one, else the
    labels of the sequence (``known``; other ids get "id 123")."""
    ids = list(dict.fromkeys(token_ids))
    if tokenizer is not None:
        return {i: {"text": token_text(raw), "label": token_label(raw)}
                for i, raw in zip(ids, tokenizer.token_bytes(ids))}
    return {i: {"text": known.get(i, f"id {i}"), "label": known.get(i, f"id {i}")} for i in ids}


def build_generation_payload(result, token_labels: list[str], *, tokenizer=None,
                             windows: list[int | None] | None = None,
                             kv_heads: list[int] | None = None, encoding: str = "auto",
                             limit: int | None = None) -> dict:
    """The document of a generation report (schema: docs/report.md, "Generation"):
    ``result`` a ``generation.GenerationResult``, ``token_labels`` one per token (prompt and
    generated); ``tokenizer`` (anything with ``token_bytes(ids)``, e.g. ``model.tokenizer``)
    gives the tokens' text and bytes and the alternatives' text (without it the labels
    stand for the text, bytes are null and an alternative outside the sequence is "id 123").
    ``windows`` (per layer) and ``kv_heads`` (per head) as ``AttentionResult``'s."""
    prompt, n_steps = result.prompt_length, len(result.new_ids)
    n_layers, n_heads = result.rows.shape[:2]
    n_tokens = prompt + n_steps
    if n_steps == 0:
        raise InputError("nothing was generated: a generation report needs a generated token")
    if result.rows.shape != (n_layers, n_heads, n_steps, n_tokens):
        raise ValueError(f"rows must be (layers, heads, {n_steps}, {n_tokens}), got "
                         f"{result.rows.shape}")
    if len(token_labels) != n_tokens:
        raise ValueError(f"{len(token_labels)} token labels for {n_tokens} tokens")
    limit = MAX_WEIGHTS if limit is None else limit
    count = n_generated_stored(n_layers, n_heads, prompt, n_steps)
    if count > limit:
        raise InputError(
            f"a report of {counted(n_layers, 'layer')} x {counted(n_heads, 'head')} x "
            f"{n_steps} generated tokens after "
            f"a {prompt}-token prompt would hold {count:,} attention weights, more than the "
            f"{limit:,} a report can hold; choose fewer layers with --layer or generate fewer "
            "tokens")
    if encoding == "auto":
        encoding = choose_encoding(count)
    data = quantize(result.rows[..., _written_keys(prompt, n_steps)], encoding)
    token_ids = result.token_ids
    labels = {tid: label for tid, label in zip(token_ids, token_labels)}
    alternatives = [tid for step in result.alternatives for tid, _ in step]
    info = _token_info(token_ids + alternatives, tokenizer, labels)
    if tokenizer is not None:
        bos = getattr(tokenizer, "bos_id", None)
        tokens = token_records(token_ids, tokenizer.token_bytes(token_ids),
                               bos=bos is not None and token_ids[0] == bos)
    else:
        tokens = [{"position": i, "id": tid, "text": label, "label": label, "bytes": None}
                  for i, (tid, label) in enumerate(zip(token_ids, token_labels))]
    for record in tokens[prompt:]:
        record["generated"] = True
    steps = [{"id": tid, "text": info[tid]["text"], "label": token_labels[prompt + g],
              "probability": float(p),
              "top_k": [{"id": a, "text": info[a]["text"], "label": info[a]["label"],
                         "probability": float(q)} for a, q in result.alternatives[g]]}
             for g, (tid, p) in enumerate(zip(result.new_ids, result.probabilities))]
    windows = list(windows or [])
    families = {"windows": windows} if any(w is not None for w in windows) else {}
    if kv_heads and len(set(kv_heads)) < len(kv_heads):
        families["kv_heads"] = [int(kv) for kv in kv_heads]
    rows = generated_row_stats(result.rows, prompt, list(result.layers))
    return clean({
        "format": FORMAT,
        "version": VERSION,
        "config": result.config,
        "layers": list(result.layers),
        "n_heads": n_heads,
        "n_tokens": n_tokens,
        "tokens": tokens,
        "window": None,
        **families,
        "generation": {"prompt_length": prompt, "stopped": result.stopped, "steps": steps},
        "weights": {
            "shape": [n_layers, n_heads, n_steps, n_tokens],
            "layout": GENERATED_ROWS,
            "encoding": encoding,
            "data": base64.urlsafe_b64encode(data).decode("ascii"),
        },
        "stats": {
            "columns": ["layer", "head", *COLUMNS],
            "heads": rows,
            "similarity": [[[float(x) for x in row] for row in similarity(layer_rows)]
                           for layer_rows in result.rows],
        },
    })


def write_generation_report(result, token_labels: list[str], path: str | Path, *,
                            tokenizer=None, windows: list[int | None] | None = None,
                            kv_heads: list[int] | None = None, encoding: str = "auto",
                            limit: int | None = None) -> ReportInfo:
    """Write the generation ``result`` as one offline HTML file at ``path`` (atomically):
    the report over the whole sequence with the generated tokens marked and, in the heads
    view, a step slider (each generated token's row per head and its top-k alternatives).
    Options: see ``build_generation_payload``; ``encoding`` and ``limit`` as ``write_report``."""
    if encoding not in ("auto", *ENCODINGS):
        raise InputError(f"unknown encoding {encoding!r}; choose auto, {', '.join(ENCODINGS)}")
    payload = build_generation_payload(result, token_labels, tokenizer=tokenizer, windows=windows,
                                       kv_heads=kv_heads, encoding=encoding, limit=limit)
    html = render_html(payload).encode("ascii")
    path = Path(path)
    write_bytes(path, html)
    return ReportInfo(path=path, bytes=len(html), data_bytes=len(payload["weights"]["data"]),
                      encoding=payload["weights"]["encoding"], layers=list(result.layers),
                      n_heads=int(result.rows.shape[1]), n_tokens=payload["n_tokens"])
