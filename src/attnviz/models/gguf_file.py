"""A GGUF file (llama.cpp's format), read so that a damaged or hostile file costs one
``InputError`` line and bounded memory: every count, length and offset of the header is
checked against the file's size before it is trusted (gguf's own ``GGUFReader`` loops over
an array length of 2^60 or slices past the end without a word), then the tensors are served
from a memory map under the names a reader asks for, one tensor dequantized at a time by
``gguf.quants.dequantize`` — the function transformers' GGUF loader calls.

The layout (ggml's docs/gguf.md): ``GGUF``, version (2 or 3), tensor count and metadata count
(u64 each), the metadata (key string, value type u32, value), the tensor infos (name, number
of dimensions u32, the dimensions u64 each, ggml type u32, offset u64 from the data section),
padding to ``general.alignment`` (32), then the data. Little-endian only.
"""

from __future__ import annotations

import mmap
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf  # ~25 ms once torch is loaded: imported at the top (this module already needs torch)
import numpy as np
import torch
from gguf.quants import _type_traits  # the block types gguf dequantizes (no public name)

from attnviz.core.errors import InputError
from attnviz.models.sources import TensorSource, _finite

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
# metadata value types (gguf's GGUFValueType): fixed-size scalars, string (8), array (9)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_MIN_SIZE = {**{t: struct.calcsize("<" + f) for t, f in _SCALARS.items()}, _STRING: 8, _ARRAY: 12}
_MAX_DEPTH = 3  # arrays of arrays of arrays: deeper than any file written by llama.cpp
# what gguf.quants.dequantize reads, besides its block types (F32 and F16 as plain values)
_PLAIN = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}


def dequantizable() -> set[int]:
    """The ggml types ``gguf.quants.dequantize`` turns into float32."""
    return set(_PLAIN) | set(_type_traits)


def type_name(ggml_type: int) -> str:
    try:
        return gguf.GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order (ggml lists the fastest-moving dimension first)
    ggml_type: int
    start: int  # byte offset in the file
    n_bytes: int


@dataclass(frozen=True)
class GGUFArray:
    """A metadata array, walked (its bounds checked) but not decoded: a vocabulary of 150,000
    strings costs nothing until read."""

    item_type: int
    count: int
    offset: int  # of the first item


class _Cursor:
    """Reads the header, refusing anything that would run past the end of the file."""

    def __init__(self, buf, size: int, where: Path):
        self.buf, self.size, self.where, self.pos = buf, size, where, 0

    def fail(self, what: str) -> InputError:
        return InputError(f"{self.where}: not a valid GGUF file ({what})")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.fail(f"{what} at byte {self.pos} runs past the end of the file "
                            f"({self.size} bytes): truncated?")

    def take(self, fmt: str, what: str):
        n = struct.calcsize("<" + fmt)
        self.need(n, what)
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += n
        return values[0] if len(values) == 1 else values

    def string(self, what: str) -> str:
        length = self.take("Q", what)
        if length > self.size - self.pos:
            raise self.fail(f"{what} at byte {self.pos - 8} claims {length} bytes, more than the "
                            f"rest of the file ({self.size - self.pos} bytes): truncated?")
        raw = bytes(self.buf[self.pos : self.pos + length])
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at byte {self.pos - length} is not UTF-8") from None

    def count(self, n: int, item_size: int, what: str) -> int:
        """``n`` items of at least ``item_size`` bytes each must fit in what is left."""
        if n * item_size > self.size - self.pos:
            raise self.fail(f"{what} is {n}, more than the remaining {self.size - self.pos} bytes "
                            "can hold")
        return n

    def value(self, value_type: int, what: str, depth: int = 0):
        if value_type in _SCALARS:
            return self.take(_SCALARS[value_type], what)
        if value_type == _STRING:
            return self.string(what)
        if value_type != _ARRAY:
            raise self.fail(f"{what} has unknown value type {value_type}")
        item_type, n = self.take("IQ", what)
        if item_type not in _MIN_SIZE:
            raise self.fail(f"{what} is an array of unknown value type {item_type}")
        if item_type == _ARRAY and depth >= _MAX_DEPTH:
            raise self.fail(f"{what} nests arrays deeper than {_MAX_DEPTH}")
        self.count(n, _MIN_SIZE[item_type], f"the length of {what}")
        array = GGUFArray(item_type, n, self.pos)
        if item_type in _SCALARS:
            self.pos += n * _MIN_SIZE[item_type]
        elif item_type == _STRING:
            for _ in range(n):  # variable lengths: walk them (each checked)
                length = self.take("Q", what)
                if length > self.size - self.pos:
                    raise self.fail(f"a string of {what} claims {length} bytes, more than the "
                                    f"rest of the file ({self.size - self.pos} bytes): truncated?")
                self.pos += length
        else:
            for _ in range(n):
                self.value(_ARRAY, what, depth + 1)
        return array


class GGUFFile:
    """The header of a GGUF file (metadata and tensor infos), checked, and its data mapped."""

    def __init__(self, path: Path):
        self.path = path = Path(path)
        try:
            with open(path, "rb") as f:
                size = f.seek(0, 2)
                if size < 24:
                    raise InputError(f"{path}: not a valid GGUF file ({size} bytes: truncated?)")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}") from None
        self.size = size
        cursor = _Cursor(self._map, size, path)
        if bytes(self._map[:4]) != MAGIC:
            raise InputError(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
        cursor.pos = 4
        version = cursor.take("I", "the version")
        if version not in VERSIONS:
            swapped = version & 0xFFFF == 0
            raise InputError(f"{path}: GGUF " + ("big-endian files are not supported" if swapped else
                             f"version {version} is not supported (versions 2 and 3)"))
        n_tensors, n_kv = cursor.take("QQ", "the counts")
        cursor.count(n_kv, 13, "the metadata count")  # key length, type, one byte at least
        self.metadata: dict[str, object] = {}
        self.value_types: dict[str, int] = {}  # key -> its GGUF value type (gguf.GGUFValueType)
        for i in range(n_kv):
            key = cursor.string(f"metadata key #{i}")
            if key in self.metadata:
                raise cursor.fail(f"metadata key {key} appears twice")
            value_type = cursor.take("I", f"the type of {key}")
            self.metadata[key] = cursor.value(value_type, key)
            self.value_types[key] = value_type
        cursor.count(n_tensors, 28, "the tensor count")  # name length, dims, type, offset
        infos = [self._tensor_info(cursor, i) for i in range(n_tensors)]
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise cursor.fail(f"general.alignment {alignment!r} is not a power of two")
        data_start = -(-cursor.pos // alignment) * alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, ggml_type, offset in infos:
            if name in self.tensors:
                raise cursor.fail(f"tensor {name} appears twice")
            self.tensors[name] = self._locate(name, shape, ggml_type, data_start + offset)
        self._data = None

    def _tensor_info(self, cursor: _Cursor, i: int) -> tuple:
        name = cursor.string(f"the name of tensor #{i}")
        n_dims = cursor.take("I", f"the dimensions of tensor {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cursor.fail(f"tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS})")
        dims = cursor.take("Q" * n_dims, f"the shape of tensor {name}")
        dims = dims if isinstance(dims, tuple) else (dims,)
        if min(dims) < 1:
            raise cursor.fail(f"tensor {name} has a dimension of 0")
        ggml_type, offset = cursor.take("IQ", f"the type of tensor {name}")
        return name, tuple(reversed(dims)), ggml_type, offset

    def _locate(self, name: str, shape: tuple, ggml_type: int, start: int) -> TensorInfo:
        try:
            block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise InputError(f"{self.path}: tensor {name} has unknown ggml type {ggml_type}") from None
        if shape[-1] % block:
            raise InputError(f"{self.path}: tensor {name} has rows of {shape[-1]} values, not a "
                             f"multiple of {type_name(ggml_type)}'s blocks of {block}")
        n_bytes = int(np.prod(shape, dtype=object)) // block * type_size
        if start + n_bytes > self.size:
            raise InputError(f"{self.path}: tensor {name}'s data (bytes {start} to {start + n_bytes}) "
                             f"lies past the end of the file ({self.size} bytes): truncated?")
        return TensorInfo(name, shape, ggml_type, start, n_bytes)

    # -- metadata ---------------------------------------------------------------------------

    def get(self, key: str, kind=None, default=None):
        """Metadata ``key`` (``default`` when absent), checked to be a ``kind`` (int, float,
        str, bool) when given."""
        value = self.metadata.get(key, default)
        if value is None or kind is None:
            return value
        ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
              float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              str: lambda v: isinstance(v, str), bool: lambda v: isinstance(v, bool)}[kind](value)
        if not ok:
            raise InputError(f"{self.path}: metadata {key} should be {kind.__name__}, got {value!r}")
        return kind(value)

    def array(self, key: str) -> list | None:
        """A metadata array of numbers or strings, decoded."""
        value = self.metadata.get(key)
        if not isinstance(value, GGUFArray):
            return None
        if value.item_type in _SCALARS:
            return list(struct.unpack_from(f"<{value.count}{_SCALARS[value.item_type]}", self._map,
                                           value.offset))
        cursor = _Cursor(self._map, self.size, self.path)
        cursor.pos = value.offset
        return [cursor.value(value.item_type, key) for _ in range(value.count)]

    def field(self, key: str) -> tuple[list[int], object] | None:
        """Metadata ``key`` as ``text.gguf_tokenizer`` reads it: ``([value type], value)`` or,
        for an array, ``([ARRAY, item type], [values])``; None when absent. The tokenizer is
        built from these rather than from gguf's ``GGUFReader``, which re-reads the whole
        header (about 2 s for a 49,000-token vocabulary)."""
        if key not in self.metadata:
            return None
        value = self.metadata[key]
        if isinstance(value, GGUFArray):
            return [_ARRAY, value.item_type], self.array(key)
        return [self.value_types[key]], value

    def file_type(self) -> str | None:
        """``general.file_type`` in llama.cpp's words: F32, F16, Q4_1, Q4_K_M …"""
        value = self.metadata.get("general.file_type")
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        try:
            name = gguf.LlamaFileType(value).name
        except ValueError:
            return f"unknown ({value})"
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")

    def quantizations(self) -> dict[str, int]:
        """How many tensors of each ggml type the file holds."""
        counts = Counter(type_name(info.ggml_type) for info in self.tensors.values())
        return dict(counts.most_common())

    # -- data -------------------------------------------------------------------------------

    def raw(self, info: TensorInfo) -> np.ndarray:
        """The tensor's bytes as gguf's reader presents them to ``dequantize``: plain values
        of their type, or ``(…, row bytes)`` uint8 blocks (a view of the memory map)."""
        if self._data is None:
            self._data = np.frombuffer(self._map, dtype=np.uint8)
        data = self._data[info.start : info.start + info.n_bytes]
        plain = _PLAIN.get(info.ggml_type)
        if plain is not None:
            return data.view(plain).reshape(info.shape)
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(info.ggml_type)]
        return data.reshape(*info.shape[:-1], info.shape[-1] // block * type_size)

    def dequantize(self, raw: np.ndarray, info: TensorInfo) -> torch.Tensor:
        values = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(info.ggml_type))
        return torch.from_numpy(np.array(values, dtype=np.float32))  # a copy: the map is read-only


# -- serving the tensors under a reader's names ---------------------------------------------------

# What a tensor needs between the file and the Hugging Face layout its reader expects:
# ("transpose",), ("unpermute", heads) (llama.cpp's Q/K row order), ("minus_one",) (Gemma's
# norms, stored as 1 + w), ("neox_qkv", heads) (GPT-NeoX's fused q | k | v back per head).
Transform = tuple


def _apply(tensor: torch.Tensor, transform: Transform | None) -> torch.Tensor:
    if transform is None:
        return tensor
    kind = transform[0]
    if kind == "transpose":
        return tensor.T
    if kind == "minus_one":
        return tensor - 1  # float32, as transformers' Gemma2TensorProcessor does in numpy
    if kind == "unpermute":  # transformers' LlamaTensorProcessor._reverse_permute_weights
        heads = transform[1]
        dim = tensor.shape[0] // heads // 2
        return tensor.reshape(heads, dim, 2, *tensor.shape[1:]).swapaxes(2, 1).reshape(tensor.shape)
    if kind == "neox_qkv":  # llama.cpp wrote q_all | k_all | v_all; Hugging Face is per head
        heads = transform[1]
        rest = tensor.shape[1:]
        return tensor.reshape(3, heads, -1, *rest).swapaxes(0, 1).reshape(tensor.shape)
    raise ValueError(f"unknown transform {transform!r}")


class GGUFSource(TensorSource):
    """A GGUF file's tensors under Hugging Face's names (``model.layers.0.self_attn.q_proj
    .weight``), each dequantized to float32 when asked for and brought to the layout the
    readers of safetensors checkpoints expect; ``shape`` reads no data; ``rows`` dequantizes
    only the rows asked for (a token embedding's rows never cross a block)."""

    def __init__(self, file: GGUFFile, names: dict[str, tuple[str, Transform | None]]):
        """``names``: the Hugging Face name -> (the file's tensor name, transform)."""
        self.file, self.names = file, names

    def renamed(self, rename: Callable[[str], str | None]) -> GGUFSource:
        """The same tensors under a reader's names (``rename`` of the Hugging Face name)."""
        return GGUFSource(self.file, {new: target for name, target in self.names.items()
                                      if (new := rename(name)) is not None})

    def keys(self) -> list[str]:
        return list(self.names)

    def __contains__(self, key: str) -> bool:
        return key in self.names

    def info(self, key: str) -> TensorInfo:
        return self.file.tensors[self.names[key][0]]

    def shape(self, key: str) -> tuple[int, ...]:
        shape = self.info(key).shape
        transform = self.names[key][1]
        return tuple(reversed(shape)) if transform and transform[0] == "transpose" else shape

    def dtype(self, key: str) -> str:
        """The ggml type it is stored in (F32, F16, Q8_0, Q4_K …)."""
        return type_name(self.info(key).ggml_type)

    def get(self, key: str) -> torch.Tensor:
        info, (name, transform) = self.info(key), self.names[key]
        tensor = self.file.dequantize(self.file.raw(info), info).reshape(info.shape)
        return _finite(_apply(tensor, transform), name, self.file.path)

    def rows(self, key: str, indices: list[int]) -> torch.Tensor:
        info, (name, transform) = self.info(key), self.names[key]
        if transform is not None or len(info.shape) != 2:
            return self.get(key)[indices]
        unique = sorted(set(indices))
        if unique and not 0 <= unique[0] <= unique[-1] < info.shape[0]:
            raise IndexError(f"row {unique[-1]} of tensor {name} ({info.shape[0]} rows)")
        picked = self.file.dequantize(self.file.raw(info)[unique], info).reshape(len(unique), -1)
        position = {row: i for i, row in enumerate(unique)}
        return _finite(picked[[position[i] for i in indices]], name, self.file.path)
