"""Atomic file writes: a temporary file in the target's folder, renamed into place.

An interrupted run (Ctrl-C, SIGTERM, a crash) leaves either the old file or the complete
new one, and never a temporary behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp's 0600 is not what a user expects
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import: os.umask can only be read by setting it, which must not happen
# while the writer thread of plot.write_heatmaps creates files.
UMASK = _read_umask()


def _unlink_quietly(path: str) -> None:
    with suppress(OSError):
        os.unlink(path)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)
