"""What this run has written so far, for the one line an interrupted command prints: which
files are complete on disk, and of how many a folder was to hold (``OutputFolder`` plans
them). Kept per process; ``begin`` starts a command's account."""

from __future__ import annotations

import threading
from pathlib import Path

_lock = threading.Lock()
_written: list[Path] = []  # complete files, in the order they were renamed into place
_planned: dict[Path, int] = {}  # folder -> how many files this run meant to write there


def begin() -> None:
    """A command starts: nothing written, nothing planned."""
    with _lock:
        _written.clear()
        _planned.clear()


def wrote(path: Path) -> None:
    """``path`` is complete on disk (a writer thread may call this too)."""
    with _lock:
        _written.append(Path(path))


def plan(folder: Path, count: int) -> None:
    """This run means to write ``count`` files into ``folder``."""
    with _lock:
        _planned[Path(folder)] = count


def interrupted() -> str:
    """What is on disk after an interruption, said in one line: ``9 of 13 files written to
    out/; run the command again to finish``, or that nothing was written."""
    with _lock:
        written, planned = list(dict.fromkeys(_written)), dict(_planned)
    if not written:
        return "interrupted; nothing was written"
    parts, loose = [], []
    for folder, count in planned.items():
        inside = [p for p in written if folder in p.parents]
        if inside:
            parts.append(f"{len(inside)} of {count} file{'s' if count != 1 else ''} written "
                         f"to {folder}{'/' if not str(folder).endswith('/') else ''}")
    loose = [p for p in written if not any(folder in p.parents for folder in planned)]
    if len(loose) <= 2:
        parts += [f"{p} written" for p in loose]
    else:
        parts.append(f"{len(loose)} files written (the last: {loose[-1]})")
    unfinished = any(len([p for p in written if f in p.parents]) < n for f, n in planned.items())
    return ("interrupted; " + ", ".join(parts)
            + ("; run the command again to finish" if unfinished else ""))
