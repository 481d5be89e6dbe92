"""The page of ``attnviz needle --report``: one self-contained HTML file (no network) with
the run's summary, the pictures of ``attnviz.pictures.needle`` embedded as PNGs, the accuracy
table and every head's row in a table sorted by a click on its header."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from attnviz.files.fileio import write_bytes

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #1f2937; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #d1d5db; padding: 2px 8px; text-align: right; }
th { background: #f3f4f6; cursor: pointer; user-select: none; }
img { max-width: 100%; display: block; margin: .6em 0; }
.note { color: #4b5563; }
"""

_SORT = """
document.querySelectorAll("table.sortable th").forEach((th, column) => {
  th.addEventListener("click", () => {
    const body = th.closest("table").tBodies[0];
    const down = th.dataset.order !== "down";
    th.dataset.order = down ? "down" : "up";
    const value = row => { const t = row.cells[column].textContent;
                           const n = parseFloat(t); return isNaN(n) ? -Infinity : n; };
    [...body.rows].sort((a, b) => down ? value(b) - value(a) : value(a) - value(b))
                  .forEach(row => body.appendChild(row));
  });
});
"""


def _table(rows: list[dict], columns: list[str], sortable: bool = False) -> str:
    def cell(value) -> str:
        if value is None:
            return "—"
        return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    kind = ' class="sortable"' if sortable else ""
    return f"<table{kind}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def needle_page(title: str, summary: str, top_rows: list[dict], accuracy_rows: list[dict],
                accuracy_columns: list[str], head_rows: list[dict],
                pngs: dict[str, bytes]) -> str:
    """The page's HTML (see the module docstring)."""
    images = "".join(
        f'<h2>{html.escape(name.removesuffix(".png").replace("_", " "))}</h2>'
        f'<img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode("ascii")}">' for name, png in pngs.items())
    head_columns = list(head_rows[0]) if head_rows else []
    top_columns = list(top_rows[0]) if top_rows else []
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class=\"note\">{html.escape(summary)}</p>"
            f"<h2>Top retrieval heads</h2>{_table(top_rows, top_columns)}"
            f"<h2>Accuracy (ROUGE-1 recall) by depth and length</h2>"
            f"{_table(accuracy_rows, accuracy_columns)}{images}"
            f"<h2>Every head (click a header to sort)</h2>"
            f"{_table(head_rows, head_columns, sortable=True)}"
            f"<script>{_SORT}</script></body></html>")


def write_needle_page(path: Path, page: str) -> None:
    write_bytes(path, page.encode("utf-8"))
