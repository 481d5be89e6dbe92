"""The ``.npz`` files ``export`` writes: numpy's own format (what ``np.savez`` writes: a
ZIP of stored ``.npy`` members, read back by ``np.load``), with one difference: a member
may be written piece by piece, so the weights of every layer go to the file as the
forward pass produces them and are never all in memory at once.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Mapping
from typing import BinaryIO

import numpy as np


class Pieces:
    """An array of ``shape`` and ``dtype`` given as consecutive C-order pieces, e.g. the
    ``(H, T, T)`` layers of an ``(L, H, T, T)`` array."""

    def __init__(self, shape: tuple[int, ...], dtype, pieces: Iterable[np.ndarray]):
        self.shape, self.dtype, self.pieces = tuple(shape), np.dtype(dtype), pieces


def write_npz(file: BinaryIO, arrays: Mapping[str, np.ndarray | Pieces]) -> None:
    """``np.savez(file, **arrays)``, where a ``Pieces`` value is written piece by piece
    (each checked against the shape and dtype announced in the member's header)."""
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as npz:
        for name, value in arrays.items():
            with npz.open(name + ".npy", mode="w", force_zip64=True) as member:
                if not isinstance(value, Pieces):
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
                    continue
                header = {"descr": np.lib.format.dtype_to_descr(value.dtype),
                          "fortran_order": False, "shape": value.shape}
                np.lib.format.write_array_header_1_0(member, header)
                written, expected = 0, int(np.prod(value.shape))
                for piece in value.pieces:
                    piece = np.ascontiguousarray(piece, dtype=value.dtype)
                    member.write(memoryview(piece).cast("B"))  # no copy
                    written += piece.size
                if written != expected:
                    raise ValueError(f"{name}: {written} values written, {expected} announced")
