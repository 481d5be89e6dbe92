"""Results that show themselves in notebooks (Jupyter, JupyterLab, VS Code, Colab) and
save themselves as files.

A result's display is a ``View``: a standalone HTML page, a PNG picture of the same thing
and a one-line description. In a notebook the cell output holds three forms (a mimebundle):

- ``text/html``: an interactive page (the report) inside ``<iframe srcdoc=… sandbox=
  "allow-scripts">`` — its scripts run in a document of their own with an opaque origin: no
  require.js, no CDN, no global names in the notebook's page, any number of views side by
  side — sized to its content by a message the page posts to its parent; a static page (a
  table and pictures, no scripts) is inlined as it is;
- the PNG again inside that HTML, shown until the interactive page reports that it runs (an
  untrusted notebook, GitHub's viewer and nbviewer strip scripts and iframes: the picture
  stays);
- ``image/png`` (what nbconvert puts in a PDF) and ``text/plain`` (a terminal).

The views are registered for the result classes (``attnviz.core.views``), which never import
this module; heavy modules are imported only when something is shown.
"""

from __future__ import annotations

import base64
import html
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from attnviz.analyses.describe import layer_text
from attnviz.core.errors import AttnvizWarning, InputError
from attnviz.core.views import register
from attnviz.core.words import counted
from attnviz.files.fileio import write_bytes

# A cell output above this many bytes is warned about (once a session): notebook files grow
# by it, and frontends slow down (VS Code and Jupyter handle a few MB at ease).
MAX_OUTPUT_BYTES = 10 * 2**20
DEFAULT_HEIGHT = 640  # px: the iframe's height until the page has measured itself
_warned = False

# Inside the report: tell the notebook how tall the page is (and again when it changes).
# The heads view's 75vh would grow with the iframe itself: it gets a fixed height instead.
_RESIZER = """<style>.heads-scroll { max-height: 560px; }</style>
<script>
(function () {
  function post() {
    parent.postMessage({attnviz: "%(id)s",
                        height: Math.ceil(document.body.getBoundingClientRect().height)}, "*");
  }
  window.addEventListener("load", post);
  if (window.ResizeObserver) new ResizeObserver(post).observe(document.body);
})();
</script>
"""
# In the notebook's page: size the iframe, hide the picture once the page runs.
_LISTENER = """<script>
(function () {
  var box = document.getElementById("%(id)s");
  if (!box) return;
  var frame = box.querySelector("iframe"), picture = box.querySelector("img");
  window.addEventListener("message", function (event) {
    var data = event.data;
    if (event.source !== frame.contentWindow || !data || data.attnviz !== "%(id)s") return;
    frame.style.height = Math.max(120, data.height) + "px";
    if (picture) picture.style.display = "none";
  });
})();
</script>"""


@dataclass
class View:
    """What a result shows: ``page`` (a whole HTML document; ``interactive``: it runs
    scripts), ``png`` (the same as a picture), ``title`` (one line) and ``narrow`` (how to
    make it smaller, for the size warning)."""

    page: str
    png: bytes
    title: str
    interactive: bool = False
    narrow: str = ""

    def snippet(self) -> str:
        """The ``text/html`` of a notebook cell (see the module docstring)."""
        picture = (f'<img alt="{html.escape(self.title)}" style="max-width:100%;display:block" '
                   f'src="data:image/png;base64,{base64.b64encode(self.png).decode("ascii")}">')
        if not self.interactive:
            return _body(self.page)
        view_id = "attnviz-" + uuid.uuid4().hex[:12]
        page = self.page.replace("</body>", _RESIZER % {"id": view_id} + "</body>", 1)
        return (f'<div class="attnviz-view" id="{view_id}">'
                f'<iframe title="{html.escape(self.title)}" sandbox="allow-scripts" '
                f'style="width:100%;height:{DEFAULT_HEIGHT}px;border:0;display:block" '
                f'srcdoc="{html.escape(page, quote=True)}"></iframe>{picture}'
                f'{_LISTENER % {"id": view_id}}</div>')

    def bundle(self, text: str) -> dict:
        """The mimebundle of a cell output (IPython's ``_repr_mimebundle_``), ``text`` its
        ``text/plain``."""
        global _warned
        snippet = self.snippet()
        png = base64.b64encode(self.png).decode("ascii")
        size = len(snippet) + len(png)
        if size > MAX_OUTPUT_BYTES and not _warned:
            _warned = True
            warnings.warn(f"this output is {size / 2**20:.1f} MB (above attnviz.display.notebook."
                          f"MAX_OUTPUT_BYTES, {MAX_OUTPUT_BYTES / 2**20:.0f} MB): the notebook file "
                          f"grows by as much; {self.narrow or 'show less of it'}", AttnvizWarning,
                          stacklevel=3)
        return {"text/plain": text, "text/html": snippet, "image/png": png}

    def save(self, path: str | Path) -> Path:
        """``path`` ending in .html: the page; .png: the picture (written atomically)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".html", ".htm", ".png"):
            raise InputError(f"save({str(path)!r}): the name must end in .html or .png")
        write_bytes(path, self.page.encode("utf-8") if suffix != ".png" else self.png)
        return path


def _body(page: str) -> str:
    """A static page's content, for inlining: what is between its body tags."""
    start = page.index("<body>") + len("<body>")
    return page[start:page.rindex("</body>")].strip()


# ------------------------------------------------------------------------- static pages

_STATIC_STYLE = """<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 16px; }
</style>"""


def static_page(title: str, body: str) -> str:
    """A standalone page around ``body`` (HTML that needs no script and no style of its own:
    inlined in a notebook as it is)."""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n{_STATIC_STYLE}\n</head>\n<body>\n{body}\n"
            f"</body>\n</html>\n")


def table(columns: list[str], rows: list[list], caption: str = "") -> str:
    """An HTML table; every cell's text escaped."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    caption = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image(png: bytes, alt: str) -> str:
    return (f'<img alt="{html.escape(alt)}" style="max-width:100%" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')


# ------------------------------------------------------------------------------ the views

_NARROW = "show less: layer= (one layer, or a list) or tokens='A:B' (a window of the text)"


@register("attnviz.analyses.attention.AttentionResult")
def attention_view(result, extras: dict | None = None) -> View:
    """The report of an ``AttentionResult`` (with ``report.build_payload``'s ``extras``:
    norms, rollout, attribution, induction), and its heads as one picture."""
    # numpy, matplotlib: loaded when a view is shown (`import attnviz` imports this module)
    from attnviz.display.report import build_payload, render_html
    from attnviz.pictures.plot import overview_png

    title = (f"attnviz report: {counted(result.n_tokens, 'token')}, {layer_text(result.layers)}, "
             f"{counted(result.n_heads, 'head')}")
    png = overview_png(result)
    if not result.causal:  # the interactive page draws causal heads: the picture of every head
        return View(static_page(title, image(png, title)), png, title)
    page = render_html(build_payload(result, **(extras or {})))
    return View(page, png, title, interactive=True, narrow=_NARROW)


@register("attnviz.analyses.seq2seq.Seq2SeqResult")
def seq2seq_view(result) -> View:
    """An encoder–decoder's attention: the page with the switch between its kinds
    (``display.seq2seq_report``), and the heads of its last kind as one picture."""
    from attnviz.display.seq2seq_report import build_seq2seq_payload, render_seq2seq_html
    from attnviz.pictures.plot import overview_png

    title = (f"attnviz report: {counted(len(result.source_ids), 'source token')}, "
             f"{counted(len(result.target_ids), 'decoder token')}, {', '.join(result.kinds)}")
    png = overview_png(result.of(result.kinds[-1]))
    page = render_seq2seq_html(build_seq2seq_payload(result))
    return View(page, png, title, interactive=True, narrow=_NARROW)


@register("attnviz.display.report_contents.Report")
def report_view(report) -> View:
    """A ``Report``: its result's report, with the extras it holds."""
    return attention_view(report.result, report.extras)


@register("attnviz.analyses.scanning.ScanResult")
def scan_view(result, top: int = 5) -> View:
    """A ``ScanResult``: its top heads per detector and the detector maps."""
    # numpy, matplotlib: loaded when a view is shown (`import attnviz` imports this module)
    from attnviz.analyses.scanning import TOP_COLUMNS, top_table
    from attnviz.pictures.scan import detector_maps, figure_png, score_maps_figure

    detectors = list(TOP_COLUMNS) + (["induction_probe"] if result.induction_probe is not None
                                     else [])
    png = figure_png(score_maps_figure(detector_maps(result, detectors), result.layers))
    rows = top_table(result, detectors, top)
    title = (f"attnviz scan: {counted(result.n_prompts, 'prompt')}, {counted(result.n_tokens, 'token')}, "
             f"{layer_text(result.layers)}")
    body = (f"<h3>{html.escape(title)}</h3>"
            + table(["rank", *detectors], [[row[c] for c in ("rank", *detectors)] for row in rows],
                    f"Top heads per detector, mean ± std over {counted(result.n_prompts, 'prompt')}")
            + image(png, "detector maps: layers × heads"))
    return View(static_page(title, body), png, title)


@register("attnviz.analyses.longcontext.LongResult")
def long_view(result, top: int = 10) -> View:
    """A ``LongResult``: its pooled maps (each cell the largest weight of its block) as one
    picture, the heads with the most attention on the first tokens and those that look
    farthest, and the first layer's statistics picture."""
    from attnviz.pictures.longcontext import stats_figure
    from attnviz.pictures.plot import overview_png

    pooled = result.pooled("max") if "weights_max" in result.arrays else None
    png = overview_png(pooled) if pooled is not None else stats_figure(result, 0)
    stats = result.stats()
    heads = [(layer, h) for li, layer in enumerate(result.layers) for h in range(result.n_heads)]
    columns = ["layer", "head", "sink_mass", "mean_distance", "entropy", "previous_token"]

    def ranked(name: str, caption: str, size=float) -> str:
        order = sorted(range(len(heads)), key=lambda k: -size(stats[name].reshape(-1)[k]))[:top]
        return table(columns, [[*heads[k], *(f"{stats[c].reshape(-1)[k]:.3f}"
                                                for c in columns[2:])] for k in order], caption)

    b = result.block
    kind = "" if result.causal else f" ({result.attention})"
    title = (f"attnviz long text{kind}: {result.n_tokens:,} tokens, {layer_text(result.layers)}, "
             f"{counted(result.n_heads, 'head')}, pooled {b}×{b}")
    # an encoder's mean distance is signed (negative: ahead): the farthest either way
    farthest = (("Heads that look farthest (mean distance, tokens)", float) if result.causal
                else ("Heads that look farthest either way (mean distance, tokens; negative: "
                      "ahead)", abs))
    body = (f"<h3>{html.escape(title)}</h3>"
            + image(png, f"every head, each cell the largest of {b}×{b} weights")
            + ranked("sink_mass", f"Heads with the most attention on the first "
                                  f"{counted(result.sink_tokens, 'token')}")
            + ranked("mean_distance", *farthest)
            + image(stats_figure(result, 0), f"layer {result.layers[0]}: distances and sinks"))
    return View(static_page(title, body), png, title,
                narrow="show less: layer= (fewer layers) or resolution= (fewer cells)")


@register("attnviz.analyses.attribution.AttributionResult")
def attribution_view(result) -> View:
    """An ``AttributionResult``: the metric, the predictions, the top heads by each measure
    and the two layers × heads maps."""
    from attnviz.analyses.attribution import describe_metric, token_info, token_labels, top_head_rows
    from attnviz.pictures.attribution import head_map_bytes

    tokenizer = result.tokenizer
    labels = token_labels(tokenizer, result.token_ids)
    metric = describe_metric(result, tokenizer)
    ablated = "zeroed" if result.ablate == "zero" else "replaced by its mean"
    dla = head_map_bytes(result.dla, f"Direct logit attribution to {metric}", "logits")
    ablation = head_map_bytes(result.ablation, f"Ablation effect on {metric} (head {ablated})",
                              "Δ metric (logits)")
    at = f"position {result.position} ({labels[result.position]})"
    title = f"attnviz attribute: {metric} after {at}"
    predictions = [[rank, token_info(tokenizer, i)["label"], i, f"{p:.4f}", f"{logit:.3f}"]
                   for rank, (i, p, logit) in enumerate(result.predictions, start=1)]
    columns = ["rank", "layer", "head", "dla", "ablation", "looks at"]

    def heads_table(measure: str, caption: str) -> str:
        rows = top_head_rows(result, labels, measure, 10)
        return table(columns, [[f"{r[c]:.4f}" if c in ("dla", "ablation") else r[c]
                                for c in columns] for r in rows], caption)

    body = (f"<h3>{html.escape(title)}</h3>"
            f"<p>{html.escape(metric)} = {result.metric:.4f}; the heads' direct attributions add "
            f"up to {float(result.dla.sum()):.4f} (with the embeddings, MLPs and biases: "
            f"{result.decomposition_total():.4f})</p>"
            + table(["rank", "token", "id", "probability", "logit"], predictions,
                    f"Predictions after {at}")
            + heads_table("dla", "Top heads by direct logit attribution")
            + heads_table("ablation", f"Top heads by ablation effect (head {ablated})")
            + image(dla, "direct logit attribution: layers × heads")
            + image(ablation, "ablation effect: layers × heads"))
    return View(static_page(title, body), dla, title)


@register("attnviz.analyses.why.WhyResult")
def why_view(result, top: int = 10) -> View:
    """A ``WhyResult``: the score, the top pairs, the totals per component on each side and
    the two pictures (contributions; key-side totals at each key)."""
    from attnviz.analyses.attribution import token_labels
    from attnviz.analyses.why import head_name, pair_table_rows, score_line, side_table_rows
    from attnviz.pictures.why import keys_bytes, matrix_bytes

    labels = token_labels(result.tokenizer, result.token_ids)
    name = head_name(result, labels)
    title = f"attnviz why: {name}"
    key_labels = token_labels(result.tokenizer, result.key_ids)
    matrix = matrix_bytes(result.contributions(), result.query_components,
                          f"Why {name}: contributions to the score",
                          key_names=result.key_components)
    keys = keys_bytes(result.key_totals_by_key(), result.key_components,
                      [key_labels[j] for j in result.keys], result.keys, result.key,
                      result.weights, f"Why {name.split(' -> ')[0]}: key-side totals at each key")
    pairs = [[r["rank"], r["query component"], r["key component"], f"{r['contribution']:.4f}"]
             for r in pair_table_rows(result, top)]
    sides = [[r["rank"], r["query side"], "" if r["query total"] is None else
              f"{r['query total']:.4f}", r["key side"],
              "" if r["key total"] is None else f"{r['key total']:.4f}"]
             for r in side_table_rows(result, top)]
    body = (f"<h3>{html.escape(title)}</h3><p>{html.escape(score_line(result))}</p>"
            + table(["rank", "query component", "key component", "contribution"], pairs,
                    "Top pairs (query-side component × key-side component)")
            + table(["rank", "query side", "query total", "key side", "key total"], sides,
                    "Totals per component")
            + image(matrix, "contributions: query components × key components")
            + image(keys, "key-side totals: components × keys"))
    return View(static_page(title, body), matrix, title)
