"""One output layer for every command: results on stdout as a table, JSON or CSV;
messages on stderr. Tables are plain text (no colour, no box art) when stdout is not a
terminal; ``NO_COLOR`` and ``FORCE_COLOR`` are honoured (by rich).

The contract (docs/scripting.md): a table never cuts a number or a header — columns that
do not fit the width are printed as further blocks of the same rows; CSV is RFC 4180
(CRLF line ends, fields with commas, quotes or line breaks quoted); a closed pipe ends the
run quietly (the app turns ``BrokenPipeError`` into exit 0); any other failure to write
stdout (a full disk) is one ``Error:`` line."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from attnviz.core.errors import AttnvizError

FORMATS = ("table", "json", "csv")
_MIN_TEXT_WIDTH = 10  # a text column (tokens, paths) may fold down to this many cells
_UNBROKEN = re.compile(r"[\d/\\]")  # a word never folded: a number, "L11", a path


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


def to_json(value: Any, indent: str = "") -> str:
    """JSON indented by two spaces, except that a list of plain values (a row of a matrix,
    token ids) stays on one line: a 40 x 40 matrix is 40 lines, not 1,700. ``value`` is
    ``clean``'s output."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = (f"{inner}{json.dumps(key)}: {to_json(item, inner)}" for key, item in value.items())
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        return "[\n" + ",\n".join(inner + to_json(item, inner) for item in value) + f"\n{indent}]"
    return json.dumps(value, allow_nan=False)


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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def stdout_failed(exc: OSError) -> AttnvizError:
    """The one error for a failed write to stdout (a full disk, an I/O error)."""
    return AttnvizError(f"cannot write to standard output: {exc.strerror or exc}")


def write_stdout(data: str | bytes) -> None:
    """Write ``data`` to stdout and flush, so that a full disk fails here, as one clear
    error, and not at exit. A closed pipe stays a ``BrokenPipeError`` (exit 0)."""
    try:
        if isinstance(data, bytes):
            sys.stdout.flush()
            target = getattr(sys.stdout, "buffer", None)
            if target is None:  # an in-memory stdout (tests)
                sys.stdout.write(data.decode("latin-1"))
            else:
                target.write(data)
                target.flush()
        else:
            sys.stdout.write(data)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise stdout_failed(exc) from None


class _Console(Console):
    """rich's Console, but a closed pipe raises ``BrokenPipeError`` for the app's one
    handler (rich itself would exit with status 1)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


class Output:
    """Where a command's results and messages go, decided once from ``--format``/``--quiet``."""

    def __init__(self, fmt: str = "table", quiet: bool = False):
        self.format = fmt
        self.quiet = quiet
        width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
        self.stdout = _Console(highlight=False, width=width)
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

    def print(self, renderable: Any, **options: Any) -> None:
        """``rich`` print to stdout; a failed write is one clear error. Off a terminal no
        line ends in spaces (rich pads each line of a table to the table's width)."""
        try:
            if self.fancy:
                self.stdout.print(renderable, **options)
                return
            with self.stdout.capture() as captured:
                self.stdout.print(renderable, **options)
            write_stdout("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise stdout_failed(exc) from None

    def line(self, text: str) -> None:
        """One line of plain text (long lines wrap at spaces, never inside a number)."""
        self.print(Text(text))

    def json(self, document: dict) -> None:
        write_stdout(to_json(clean(document)) + "\n")

    def csv(self, rows: Sequence[dict], columns: Sequence[str]) -> None:
        """RFC 4180: CRLF after each record; a field with a comma, a quote, CR or LF is
        quoted, so any token text reads back through Python's ``csv`` module."""
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else clean(row.get(c)) for c in columns])
        write_stdout(buffer.getvalue())

    def paths(self, paths: Sequence[object]) -> None:
        """The written files, one per line: what --quiet prints for file-writing commands."""
        write_stdout("".join(f"{p}\n" for p in paths))

    def table(
        self,
        rows: Sequence[dict],
        columns: Sequence[str],
        title: str | None = None,
        styles: dict[int, str] | None = None,
        keys: Sequence[str] | None = None,
    ) -> None:
        """A rich table of ``rows``; ``styles`` maps a row index to a rich style.

        Numbers and headers are never cut: every column is as wide as its widest number
        and its header. When the columns do not fit the console, they are split into
        blocks printed one after the other, each repeating the ``keys`` columns (default:
        the first column) so every row stays identifiable. Text (tokens, paths) may fold
        onto several lines, but never inside a word that holds a digit."""
        keys = [c for c in (keys if keys is not None else columns[:1]) if c in columns]
        cells = {c: [format_cell(r.get(c)) for r in rows] for c in columns}
        numeric = {c: any(_is_number(r.get(c)) for r in rows) for c in columns}
        natural, least = {}, {}
        for c in columns:
            lengths = [Text(s).cell_len for s in cells[c]]
            header = Text(c).cell_len
            whole = [n for n, r in zip(lengths, rows) if _is_number(r.get(c)) or r.get(c) is None]
            # a word with a digit or a slash ("0.123", "L11", "out/head_07.png") is never folded
            digits = [Text(w).cell_len for s in cells[c] for w in s.split() if _UNBROKEN.search(w)]
            natural[c] = max([header, *lengths])
            least[c] = max([header, *whole, *digits, min(natural[c], _MIN_TEXT_WIDTH)])
        limit = self.stdout.width
        # keys wider than the console already need a longer line: then one block of all
        room = limit if self._width(keys, least) < limit else math.inf
        blocks: list[list[str]] = []
        for c in (c for c in columns if c not in keys):
            if blocks and self._width(keys + blocks[-1] + [c], least) <= room:
                blocks[-1].append(c)
            else:
                blocks.append([c])
        for i, block in enumerate(blocks or [[]]):
            shown = keys + block
            widths = self._fit({c: natural[c] for c in shown}, least, limit)
            table = Table(box=box.SIMPLE_HEAVY if self.fancy else None,
                          header_style="bold" if self.fancy else "", pad_edge=False)
            if title:  # a line of its own: wrapped only by a console narrower than it
                self.print(Text(title if i == 0 else f"{title} (continued)",
                                style="italic" if self.fancy else ""))
            for c in shown:
                table.add_column(c, justify="right" if numeric[c] else "left", width=widths[c],
                                 no_wrap=numeric[c], overflow="fold")
            for r, _ in enumerate(rows):
                # Text(): user text such as "[/INST]" must not be read as rich markup.
                table.add_row(*(Text(cells[c][r]) for c in shown), style=(styles or {}).get(r))
            needed = self._width(shown, widths)
            if needed <= limit:
                self.print(table)
            else:  # one column too wide for the console: a longer line, never a cut
                self.stdout.width = needed
                try:
                    self.print(table, crop=False)
                finally:
                    self.stdout.width = limit

    def _width(self, columns: Sequence[str], widths: dict[str, int]) -> int:
        """Characters a table of ``columns`` at ``widths`` takes, borders and padding included."""
        skeleton = Table(box=box.SIMPLE_HEAVY if self.fancy else None, pad_edge=False)
        for c in columns:
            skeleton.add_column(c, width=widths[c])
        return Measurement.get(self.stdout, self.stdout.options.update_width(10**6),
                               skeleton).maximum

    def _fit(self, widths: dict[str, int], least: dict[str, int], limit: int) -> dict[str, int]:
        """Narrow the widest text columns (never below ``least``) until the table fits."""
        widths = dict(widths)
        while self._width(list(widths), widths) > limit:
            shrinkable = [c for c in widths if widths[c] > least[c]]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda c: widths[c])
            excess = self._width(list(widths), widths) - limit
            widths[widest] = max(least[widest], widths[widest] - excess)
        return widths

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
        keys: Sequence[str] | None = None,
    ) -> None:
        """The one result of a command: ``document`` as JSON, or ``rows`` as CSV / table."""
        if self.format == "json":
            self.json(document)
        elif self.format == "csv":
            self.csv(rows, columns)
        else:
            self.table(rows, columns, title, styles, keys)
