"""The ``.npz`` files ``export`` writes: numpy's own format (what ``np.savez`` writes: a
ZIP of stored ``.npy`` members, read back by ``np.load``), with one difference: a member
may be written piece by piece, so the weights of every layer go to the file as the
forward pass produces them and are never all in memory at once.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Mapping
from typing import BinaryIO

import numpy as np


class Pieces:
    """An array of ``shape`` and ``dtype`` given as consecutive C-order pieces, e.g. the
    ``(H, T, T)`` layers of an ``(L, H, T, T)`` array."""

    def __init__(self, shape: tuple[int, ...], dtype, pieces: Iterable[np.ndarray]):
        self.shape, self.dtype, self.pieces = tuple(shape), np.dtype(dtype), pieces


def write_npz(file: BinaryIO, arrays: Mapping[str, np.ndarray | Pieces | Callable]
              ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``np.savez(file, **arrays)``, where a ``Pieces`` value is written piece by piece
    (checked against the shape announced in the member's header) and a function is called
    when its turn comes (after the pieces before it: what they computed on the way).
    Returns each member's shape and dtype."""
    written = {}
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as npz:
        for name, value in arrays.items():
            value = value() if callable(value) else value
            value = value if isinstance(value, Pieces) else np.asanyarray(value)
            written[name] = (value.shape, value.dtype)
            with npz.open(name + ".npy", mode="w", force_zip64=True) as member:
                if not isinstance(value, Pieces):
                    np.lib.format.write_array(member, value, allow_pickle=False)
                    continue
                header = {"descr": np.lib.format.dtype_to_descr(value.dtype),
                          "fortran_order": False, "shape": value.shape}
                np.lib.format.write_array_header_1_0(member, header)
                count, expected = 0, int(np.prod(value.shape))
                for piece in value.pieces:
                    piece = np.ascontiguousarray(piece, dtype=value.dtype)
                    member.write(memoryview(piece).cast("B"))  # no copy
                    count += piece.size
                if count != expected:
                    raise ValueError(f"{name}: {count} values written, {expected} announced")
    return written
