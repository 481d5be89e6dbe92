"""Atomic file writes: a temporary file in the target's folder, renamed into place.

An interrupted run (Ctrl-C, SIGTERM, a crash) leaves either the old file or the complete
new one, and never a temporary behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from attnviz.core.errors import InputError
from attnviz.files import ledger


@contextmanager
def atomic_write(path: Path, record: bool = True) -> Iterator[BinaryIO]:
    """Write ``path`` through a temporary beside it; ``record``: count it as one of the
    run's files (``ledger``). A failure names ``path``, never the temporary."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp's 0600 is not what a user expects
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        if tmp in (exc.filename, exc.filename2):
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if record:
        ledger.wrote(path)


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


def write_bytes(path: Path, data: bytes, record: bool = True) -> None:
    with atomic_write(path, record) as f:
        f.write(data)


def check_free_space(path: Path, size: int, option: str) -> None:
    """Refuse, before anything is written, a file of ``size`` bytes that the disk holding
    ``path`` has no room for."""
    folder = Path(path).resolve().parent
    free = shutil.disk_usage(folder).free
    if size > free:
        raise InputError(f"{option} {path} would be {_gib(size)}, and its disk has {_gib(free)} "
                         "free: export fewer layers (--layer), a window (--tokens A:B), or "
                         "pooled maps (--resolution)")


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
