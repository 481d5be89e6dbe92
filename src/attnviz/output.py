"""One output layer for every command: results on stdout as a table, JSON or CSV;
messages on stderr. Tables are plain text (no colour, no box art) when stdout is not a
terminal; ``NO_COLOR`` and ``FORCE_COLOR`` are honoured (by rich)."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

FORMATS = ("table", "json", "csv")


def clean(value: Any) -> Any:
    """JSON-ready: numpy scalars/arrays to Python, NaN/inf to None, recursively."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalar or array
        return clean(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def sort_rows(rows: list[dict], column: str | None, desc: bool = False) -> list[dict]:
    """``rows`` sorted by ``column`` (stable: ties keep their order), nulls last either
    way; ``column=None`` keeps the order (reversed with ``desc``)."""
    if column is None:
        return rows[::-1] if desc else list(rows)
    known = sorted((r for r in rows if r[column] is not None), key=lambda r: r[column],
                   reverse=desc)
    return known + [r for r in rows if r[column] is None]


def format_cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


class Output:
    """Where a command's results and messages go, decided once from ``--format``/``--quiet``."""

    def __init__(self, fmt: str = "table", quiet: bool = False):
        self.format = fmt
        self.quiet = quiet
        width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
        self.stdout = Console(highlight=False, width=width)
        self.stderr = Console(stderr=True, highlight=False)

    @property
    def fancy(self) -> bool:
        """Box art only on a terminal (or when colour is forced)."""
        return self.stdout.is_terminal

    def message(self, text: str) -> None:
        """Progress and notes: stderr, silenced by --quiet."""
        if not self.quiet:
            self.stderr.print(Text(text))

    def warning(self, text: str) -> None:
        if not self.quiet:
            self.stderr.print(Text("Warning: " + text))

    def json(self, document: dict) -> None:
        sys.stdout.write(json.dumps(clean(document), indent=2, allow_nan=False) + "\n")

    def csv(self, rows: Sequence[dict], columns: Sequence[str]) -> None:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else clean(row.get(c)) for c in columns])

    def table(
        self,
        rows: Sequence[dict],
        columns: Sequence[str],
        title: str | None = None,
        styles: dict[int, str] | None = None,
    ) -> None:
        """A rich table of ``rows``; ``styles`` maps a row index to a rich style."""
        table = Table(
            title=title,
            box=box.SIMPLE_HEAVY if self.fancy else None,
            title_justify="left",
            header_style="bold" if self.fancy else "",
            pad_edge=False,
        )
        for column in columns:
            numeric = any(isinstance(r.get(column), (int, float)) for r in rows)
            table.add_column(column, justify="right" if numeric else "left")
        for i, row in enumerate(rows):
            # Text(): user text such as "[/INST]" must not be read as rich markup.
            table.add_row(*(Text(format_cell(row.get(c))) for c in columns),
                          style=(styles or {}).get(i))
        self.stdout.print(table)

    def mapping(self, pairs: dict, title: str | None = None) -> None:
        """A two-column key/value table."""
        self.table([{"key": k, "value": v} for k, v in pairs.items()], ["key", "value"], title)

    def emit(
        self,
        document: dict,
        rows: Sequence[dict],
        columns: Sequence[str],
        title: str | None = None,
        styles: dict[int, str] | None = None,
    ) -> None:
        """The one result of a command: ``document`` as JSON, or ``rows`` as CSV / table."""
        if self.format == "json":
            self.json(document)
        elif self.format == "csv":
            self.csv(rows, columns)
        else:
            self.table(rows, columns, title, styles)
