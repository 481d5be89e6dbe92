"""A SentencePiece model file (``spiece.model``, ``source.spm``, Llama 2's ``tokenizer.model``)
read without the ``sentencepiece`` or ``protobuf`` packages.

The file is one protobuf message, ``ModelProto`` of sentencepiece's
``sentencepiece_model.proto``. :func:`read_spm` reads the protobuf wire format (varints,
fixed32 floats, length-delimited strings and messages) and keeps what a tokenizer needs:

- ``pieces`` (field 1): each ``SentencePiece`` ``piece`` (1), ``score`` (2, float) and
  ``type`` (3: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte);
- ``trainer_spec`` (2): ``model_type`` (3: 1 unigram, 2 bpe, 3 word, 4 char), ``vocab_size``
  (4), ``byte_fallback`` (35), ``unk_id``/``bos_id``/``eos_id``/``pad_id`` (40-43) and their
  pieces (45-48);
- ``normalizer_spec`` (3): ``name`` (1), ``precompiled_charsmap`` (2), ``add_dummy_prefix``
  (3), ``remove_extra_whitespaces`` (4), ``escape_whitespaces`` (5).

Every other field is skipped by its wire type. Defaults are the proto's (a field absent from
the file has them). A file that is not such a message (a truncated varint or string, a wire
type protobuf does not have, a piece that is not UTF-8, no pieces at all) is an
:class:`~attnviz.core.errors.InputError` naming the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from attnviz.core.errors import InputError

__all__ = ["NORMAL", "UNKNOWN", "CONTROL", "USER_DEFINED", "UNUSED", "BYTE", "Piece", "SpmModel",
           "read_spm"]

# SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class _Damaged(Exception):
    """The bytes are not a protobuf message of the expected shape (the reason)."""


@dataclass(frozen=True)
class Piece:
    piece: str
    score: float = 0.0
    type: int = NORMAL


@dataclass
class SpmModel:
    """What a tokenizer needs of a ``ModelProto`` (defaults: the proto's)."""

    pieces: list[Piece] = field(default_factory=list)
    model_type: int = 1  # unigram
    vocab_size: int = 8000
    byte_fallback: bool = False
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    unk_piece: str = "<unk>"
    bos_piece: str = "<s>"
    eos_piece: str = "</s>"
    pad_piece: str = "<pad>"
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True

    @property
    def kind(self) -> str:
        """``"unigram"``, ``"bpe"``, ``"word"`` or ``"char"``."""
        return MODEL_TYPES.get(self.model_type, f"model type {self.model_type}")


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise _Damaged("a varint runs past the end")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise _Damaged("a varint longer than 10 bytes")


def _fields(data: bytes):
    """``(field number, wire type, value)`` of each field of one message: an int for
    varints, the raw bytes for the others (8 for fixed64, 4 for fixed32)."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Damaged("field number 0")
        if wire == _VARINT:
            value, at = _varint(data, at)
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            if at + size > len(data):
                raise _Damaged("a fixed-size field runs past the end")
            value, at = data[at:at + size], at + size
        elif wire == _BYTES:
            size, at = _varint(data, at)
            if at + size > len(data):
                raise _Damaged(f"field {number} says {size} bytes but fewer are left")
            value, at = data[at:at + size], at + size
        else:  # 3, 4: groups (never in this proto); 6, 7: not protobuf
            raise _Damaged(f"wire type {wire} (field {number})")
        yield number, wire, value


def _expect(number: int, wire: int, wanted: int) -> None:
    if wire != wanted:
        raise _Damaged(f"field {number} has wire type {wire}, expected {wanted}")


def _text(number: int, wire: int, value) -> str:
    _expect(number, wire, _BYTES)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise _Damaged(f"field {number} is not UTF-8") from None


def _int32(number: int, wire: int, value) -> int:
    _expect(number, wire, _VARINT)
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value  # negative int32: 10-byte two's complement


def _piece(data: bytes) -> Piece:
    piece, score, kind = "", 0.0, NORMAL
    for number, wire, value in _fields(data):
        if number == 1:
            piece = _text(number, wire, value)
        elif number == 2:
            _expect(number, wire, _FIXED32)
            score = struct.unpack("<f", value)[0]
        elif number == 3:
            kind = _int32(number, wire, value)
    return Piece(piece, score, kind)


_TRAINER_INTS = {3: "model_type", 4: "vocab_size", 40: "unk_id", 41: "bos_id", 42: "eos_id",
                 43: "pad_id"}
_TRAINER_TEXTS = {45: "unk_piece", 46: "bos_piece", 47: "eos_piece", 48: "pad_piece"}
_NORMALIZER_BOOLS = {3: "add_dummy_prefix", 4: "remove_extra_whitespaces", 5: "escape_whitespaces"}


def _parse(data: bytes) -> SpmModel:
    model = SpmModel()
    for number, wire, value in _fields(data):
        if number == 1:
            _expect(number, wire, _BYTES)
            model.pieces.append(_piece(value))
        elif number == 2:
            _expect(number, wire, _BYTES)
            for inner, inner_wire, item in _fields(value):
                if inner in _TRAINER_INTS:
                    setattr(model, _TRAINER_INTS[inner], _int32(inner, inner_wire, item))
                elif inner in _TRAINER_TEXTS:
                    setattr(model, _TRAINER_TEXTS[inner], _text(inner, inner_wire, item))
                elif inner == 35:
                    model.byte_fallback = bool(_int32(inner, inner_wire, item))
        elif number == 3:
            _expect(number, wire, _BYTES)
            for inner, inner_wire, item in _fields(value):
                if inner == 1:
                    model.normalizer_name = _text(inner, inner_wire, item)
                elif inner == 2:
                    _expect(inner, inner_wire, _BYTES)
                    model.precompiled_charsmap = bytes(item)
                elif inner in _NORMALIZER_BOOLS:
                    setattr(model, _NORMALIZER_BOOLS[inner], bool(_int32(inner, inner_wire, item)))
    return model


def read_spm(path: Path, data: bytes | None = None) -> SpmModel:
    """The SentencePiece model in ``path`` (its bytes ``data`` when already read)."""
    path = Path(path)
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read SentencePiece model {path}: {exc.strerror}") from None
    try:
        model = _parse(data)
    except _Damaged as exc:
        raise InputError(f"{path} is not a readable SentencePiece model ({exc}): the file is "
                         "damaged or is not one") from None
    if not model.pieces:
        raise InputError(f"{path} is not a readable SentencePiece model (it has no pieces): the "
                         "file is damaged or is not one")
    n = len(model.pieces)
    if not 0 <= model.unk_id < n:
        raise InputError(f"{path}: its unknown piece id {model.unk_id} is not a piece (0..{n - 1})")
    return model
