"""What attnviz has written into a folder, known to the next run even when the run that
wrote it was interrupted or killed (``kill -9`` included).

The folder's manifest (``.attnviz-manifest.json``) lists attnviz's own files there. A run
(``OutputFolder``) first rewrites it, atomically, to list what earlier runs left *and*
every file this run plans to write, so at any moment the manifest names at least every
attnviz file in the folder; at the end it removes the earlier files it did not rewrite
and writes the manifest of this run alone. A file of the user's that happens to carry a
planned name is listed only just before attnviz overwrites it (``claim``): an interrupted
run never lists, so never removes, what it did not write. The temporaries of a killed run
(``fileio.atomic_write``'s, beside attnviz's names) are removed too. Names that do not look
like attnviz's (``notes.png``), symlinks and paths outside the folder are never removed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

from attnviz.files import ledger
from attnviz.files.fileio import write_bytes

MANIFEST = ".attnviz-manifest.json"
# The names of a heatmap folder (head_MM, heads, model, in layer_NN folders; rollout); other
# folders bring their own (pictures.scan.SCAN_MAPS).
HEATMAP_FILES = re.compile(r"(layer_\d+/)?(head_\d+|heads|model|rollout)\.(png|svg|pdf|jpg)")


def read_manifest(out_dir: Path, own: re.Pattern = HEATMAP_FILES) -> set[str]:
    """The files an earlier run wrote (or was writing) into ``out_dir``, as far as they
    look like attnviz's own names (``own``); nothing without a readable manifest."""
    try:
        listed = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {name for name in listed if isinstance(name, str) and own.fullmatch(name)}


def write_manifest(out_dir: Path, names: Iterable[str], complete: bool = True) -> None:
    document = {"written_by": "attnviz", "files": sorted(names), "complete": complete}
    write_bytes(out_dir / MANIFEST, (json.dumps(document, indent=1) + "\n").encode(),
                record=False)


def remove_stale(out_dir: Path, earlier: set[str], current: set[str]) -> list[Path]:
    """Delete what an earlier run wrote and this one did not (regular files only), then
    any ``layer_NN`` folder left empty by that; returns the removed files."""
    removed = []
    for name in sorted(earlier - current):
        path = out_dir / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(path)
    for folder in sorted({p.parent for p in removed if p.parent != out_dir}):
        with suppress(OSError):
            folder.rmdir()  # only when empty
    return removed


# fileio.atomic_write's temporaries: ".<name>.<8 random characters>.tmp", beside <name>.
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")


def remove_temporaries(out_dir: Path, own: re.Pattern = HEATMAP_FILES) -> list[Path]:
    """The temporaries a killed run (``kill -9``: no cleanup ran) left beside attnviz's
    files in ``out_dir`` and its ``layer_NN`` folders."""
    if not out_dir.is_dir():
        return []
    removed = []
    for folder in [out_dir, *sorted(p for p in out_dir.glob("layer_*") if p.is_dir())]:
        prefix = "" if folder == out_dir else folder.name + "/"
        for path in folder.glob(".*.tmp"):
            match = _TEMPORARY.fullmatch(path.name)
            name = match and match["name"]
            if name and (own.fullmatch(prefix + name) or (name == MANIFEST and not prefix)) \
                    and path.is_file() and not path.is_symlink():
                path.unlink()
                removed.append(path)
    return removed


class OutputFolder:
    """One run's files in ``out_dir`` (relative names, ``planned``): see the module
    docstring. ``claim(name)`` before each file is written, ``finish(written)`` at the end."""

    def __init__(self, out_dir: Path, planned: Iterable[str], own: re.Pattern = HEATMAP_FILES):
        self.out_dir = out_dir
        self.earlier = read_manifest(out_dir, own)
        remove_temporaries(out_dir, own)
        planned = set(planned)
        # A file of the user's under a planned name: listed only once it is overwritten.
        self.foreign = {n for n in planned - self.earlier if (out_dir / n).exists()}
        self.listed = self.earlier | (planned - self.foreign)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(out_dir, self.listed, complete=False)
        ledger.plan(out_dir, len(planned))

    def claim(self, name: str) -> None:
        """Call before writing ``name``: lists it first when it replaces a file of the user's."""
        if name in self.foreign:
            self.foreign.discard(name)
            self.listed.add(name)
            write_manifest(self.out_dir, self.listed, complete=False)

    def finish(self, written: Iterable[str]) -> list[Path]:
        """Remove the earlier files this run did not rewrite; the manifest lists this run's."""
        current = set(written)
        removed = remove_stale(self.out_dir, self.earlier, current)
        write_manifest(self.out_dir, current)
        return removed
