"""One tokenizer interface for every model family: GPT-2 offline, ``tokenizer.json``, SentencePiece, tiktoken.

Each model must be fed its own token ids, the ids ``transformers.AutoTokenizer.from_pretrained(folder)
(text)["input_ids"]`` gives. Four kinds of tokenizer sit behind :class:`Tokenizer`:

- ``"gpt2"``: the offline GPT-2 tiktoken encoding of :mod:`attnviz.text.gpt2_bpe` (:func:`gpt2_tokenizer`).
- ``"tokenizer.json"``: a Hugging Face ``tokenizer.json`` read with the ``tokenizers`` library, set up
  the way transformers 5 sets it up (below).
- ``"sentencepiece"``: a SentencePiece model where there is no ``tokenizer.json`` (T5's
  ``spiece.model``, a Llama 2-style ``tokenizer.model``, Marian's ``source.spm`` + ``target.spm``
  + ``vocab.json``), read by :mod:`attnviz.text.spm_model` and built as transformers builds it
  by :mod:`attnviz.text.spm_tokenizer` (Marian: :class:`MarianSpmTokenizer`).
- ``"tiktoken"``: Llama 3's ``tokenizer.model`` (lines ``base64-token rank``) as a ``tiktoken.Encoding``
  with Llama 3's split pattern and its 256 special tokens after the ranks, as Meta's reference
  ``llama_models/llama3/tokenizer.py`` builds it for the 3.1 text models (11 named tokens, then
  ``<|reserved_special_token_2|>`` ...; the 3.2 vision version puts ``<|image|>`` at n+11, which
  only renames the reserved tokens after it).

Product rules:

- **BOS / EOS.** ``encode(text)`` (``add_bos=True``) adds exactly what AutoTokenizer adds by default
  (``add_special_tokens=True``); ``add_bos=False`` (the CLI's ``--no-bos``) equals
  ``add_special_tokens=False``. transformers 5 decides from the files alone:

  * With a ``tokenizer.json``, ``add_bos_token`` / ``add_eos_token`` in ``tokenizer_config.json`` are
    dropped (``PreTrainedTokenizerBase._from_pretrained`` pops them), so what is added is exactly what
    the ``post_processor`` of ``tokenizer.json`` adds: Llama 3's TemplateProcessing
    ``<|begin_of_text|> $A``, Llama 2 / Mistral's ``<s> $A``, nothing for Qwen2/3 and GPT-2 / SmolLM2
    (a ByteLevel post-processor), nothing when it is ``null``. The one exception: ``GPTNeoXTokenizer``
    (Pythia) replaces the post-processor by one that adds nothing.
  * Llama 3's tiktoken ``tokenizer.model`` prepends ``<|begin_of_text|>`` (Meta's reference does;
    transformers does when ``tokenizer_config.json`` says ``add_bos_token: true``).
  * GPT-2 offline adds nothing (``bos_id`` None, ``add_bos`` has no effect), as AutoTokenizer on
    ``gpt2`` does.

- **Special-token strings in the text** follow one rule for every tokenizer, GPT-2's: by default they
  are plain text, encoded as ordinary characters (AutoTokenizer with ``split_special_tokens=True``;
  ``tokenizers``' ``encode_special_tokens``); with ``allow_special=True`` (``--allow-special``) each
  becomes its special token (AutoTokenizer's default). Added tokens that are *not* special (Qwen3's
  ``<think>``, say) are matched whole either way, as transformers does.

- **Which pipeline.** A ``tokenizer.json`` is set up the way transformers 5 sets it up for the
  ``tokenizer_class`` it names: :mod:`attnviz.text.tokenizer_recipes` (its docstring says how).

- **Labels.** :meth:`Tokenizer.token_bytes` gives each token's raw bytes for
  :func:`attnviz.text.gpt2_bpe.token_label`: byte-level pieces are mapped back to their bytes
  (``Ġ`` -> ``b" "``, ``Ċ`` -> ``b"\\n"``), SentencePiece's ``▁`` -> ``b" "``, byte-fallback pieces
  ``<0x0A>`` -> ``b"\\n"``, added and special tokens -> their text as UTF-8. For byte-level tokenizers
  without a normalizer the bytes of ``encode(t, add_bos=False)`` join to ``t.encode()``.

- **Not matched.** A class transformers rebuilds but :mod:`attnviz.text.tokenizer_recipes` does
  not know (Cohere, T5, ...) is read as its ``tokenizer.json`` says; the old ``added_tokens.json``
  file is not read; a tiktoken ``tokenizer.model`` always gets Meta's 256 names and BOS, whatever a
  ``tokenizer_config.json`` beside it says (transformers takes both from that file).

- Problems are :class:`~attnviz.core.errors.InputError` naming the file. ``tokenizers`` and ``tiktoken``
  are imported when a tokenizer is loaded, never at import time; loaded tokenizers are cached per
  path (and modification time).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from functools import lru_cache
from pathlib import Path

from attnviz.core.errors import InputError
from attnviz.text import gpt2_bpe as gpt2
from attnviz.text.inputs import EMPTY_TEXT
from attnviz.text.spm_model import read_spm
from attnviz.text.spm_tokenizer import SpmPieces, marian_vocab, spm_class, spm_pipeline
from attnviz.text.tokenizer_recipes import chat_setup, set_up_like_transformers

__all__ = [
    "LLAMA3_PAT_STR",
    "LLAMA3_SPECIAL_TOKENS",
    "Tokenizer",
    "find_tokenizer",
    "gpt2_tokenizer",
    "load_tokenizer",
]


LLAMA3_PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_NAMED = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",  # end of message
    "<|eot_id|>",  # end of turn
    "<|python_tag|>",
]
# Meta's 256 special tokens, with ids n, n+1, ... after the n ranks of tokenizer.model.
LLAMA3_SPECIAL_TOKENS = _LLAMA3_NAMED + [
    f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(_LLAMA3_NAMED))
]

_MODEL_TYPES = {"BPE", "Unigram", "WordPiece", "WordLevel"}
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_TIKTOKEN_LINE = re.compile(rb"[A-Za-z0-9+/]+={0,2} [0-9]+")


def _check_text(text: str) -> None:
    if not text:
        raise InputError(EMPTY_TEXT)


class Tokenizer:
    """The interface every tokenizer implements.

    ``kind`` is ``"gpt2"``, ``"tokenizer.json"``, ``"tiktoken"``, ``"gguf"`` (a GGUF file's metadata,
    :mod:`attnviz.text.gguf_tokenizer`) or ``"sentencepiece"`` (a SentencePiece model file,
    :mod:`attnviz.text.spm_tokenizer`); ``source`` is where it was read
    from (``"gpt2 (offline)"`` or a path); every id it produces is ``< vocab_size`` (added and
    special tokens included); ``bos_id`` is the id ``encode`` prepends by default (None: none).
    """

    kind: str
    source: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    chat_template: str | None = None  # jinja2, from tokenizer_config.json or a GGUF file
    chat_tokens: dict = {}  # {"bos_token": str | None, "eos_token": str | None}, for the template
    unk_id: int | None = None  # the unknown token ([UNK], <unk>) a word without pieces becomes

    def unknown_words(self, text: str, token_ids: list[int]) -> list[str]:
        """The words of ``text`` (encoded as ``token_ids``) that became the unknown token,
        each once, in order: the model cannot tell them apart. None for a byte-level
        tokenizer, which has a piece for every byte."""
        return []

    def encode(self, text: str, *, allow_special: bool = False, add_bos: bool = True) -> list[int]:
        """Token ids of ``text`` (special-token strings are plain text unless ``allow_special``)."""
        raise NotImplementedError

    def decoder_tokenizer(self) -> Tokenizer:
        """The tokenizer of an encoder–decoder's target text (``--decoder-text``): itself,
        except Marian's, whose target language has a SentencePiece model of its own."""
        return self

    def token_bytes(self, token_ids: list[int]) -> list[bytes]:
        """Each token's raw bytes, for :func:`attnviz.text.gpt2_bpe.token_label`."""
        raise NotImplementedError

    def is_special(self, token_id: int) -> bool:
        raise NotImplementedError

    def _token_info(self, token_id: int | None) -> dict | None:
        if token_id is None:
            return None
        return {"id": token_id, "text": gpt2.token_text(self.token_bytes([token_id])[0])}

    def describe(self) -> dict:
        """``kind``, ``source``, ``vocab_size``, ``bos`` and ``eos`` (``{"id", "text"}`` or None)."""
        return {
            "kind": self.kind,
            "source": self.source,
            "vocab_size": self.vocab_size,
            "bos": self._token_info(self.bos_id),
            "eos": self._token_info(self.eos_id),
        }

    def _unknown_id(self, token_id: int) -> InputError:
        return InputError(
            f"token id {token_id} is not in the vocabulary of {self.source} (0..{self.vocab_size - 1})"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} {self.source} vocab_size={self.vocab_size}>"


# -- GPT-2, offline -------------------------------------------------------------------------------


class Gpt2Tokenizer(Tokenizer):
    """:mod:`attnviz.text.gpt2_bpe`'s offline GPT-2 encoding; prepends nothing, as GPT-2 does."""

    kind = "gpt2"
    source = "gpt2 (offline)"
    vocab_size = gpt2.ENDOFTEXT_ID + 1
    bos_id = None
    eos_id = gpt2.ENDOFTEXT_ID

    def encode(self, text: str, *, allow_special: bool = False, add_bos: bool = True) -> list[int]:
        return gpt2.encode(text, allow_special=allow_special)

    def token_bytes(self, token_ids: list[int]) -> list[bytes]:
        for token_id in token_ids:
            if not 0 <= token_id < self.vocab_size:
                raise self._unknown_id(token_id)
        return gpt2.token_bytes(token_ids)

    def is_special(self, token_id: int) -> bool:
        return token_id == gpt2.ENDOFTEXT_ID


@lru_cache(maxsize=1)
def gpt2_tokenizer() -> Tokenizer:
    return Gpt2Tokenizer()


# -- Llama 3's tiktoken tokenizer.model -----------------------------------------------------------


class TiktokenTokenizer(Tokenizer):
    """Llama 3's ``tokenizer.model`` as tiktoken: ranks, Llama 3's pattern, Meta's 256 specials."""

    kind = "tiktoken"

    def __init__(self, source: str, encoding, n_ranks: int):
        self.source = source
        self._encoding = encoding
        self._n_ranks = n_ranks
        self.vocab_size = n_ranks + len(LLAMA3_SPECIAL_TOKENS)
        self.bos_id = n_ranks  # <|begin_of_text|>
        self.eos_id = n_ranks + 1  # <|end_of_text|>

    def encode(self, text: str, *, allow_special: bool = False, add_bos: bool = True) -> list[int]:
        _check_text(text)
        allowed = "all" if allow_special else set()
        ids = self._encoding.encode(text, allowed_special=allowed, disallowed_special=())
        return [self.bos_id, *ids] if add_bos else ids

    def token_bytes(self, token_ids: list[int]) -> list[bytes]:
        out = []
        for token_id in token_ids:
            if not 0 <= token_id < self.vocab_size:
                raise self._unknown_id(token_id)
            out.append(self._encoding.decode_single_token_bytes(token_id))
        return out

    def is_special(self, token_id: int) -> bool:
        return self._n_ranks <= token_id < self.vocab_size


def _load_tiktoken_model(path: Path, data: bytes) -> TiktokenTokenizer:
    import tiktoken

    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise InputError(
                f"{path} line {lineno} is not 'base64-token rank': the tiktoken tokenizer.model is damaged"
            ) from None
    n = len(ranks)
    if n == 0 or sorted(ranks.values()) != list(range(n)):
        raise InputError(f"{path}: the ranks of this tiktoken tokenizer.model are not 0..{n - 1} once each")
    specials = {token: n + i for i, token in enumerate(LLAMA3_SPECIAL_TOKENS)}
    try:
        encoding = tiktoken.Encoding(
            name=path.name, pat_str=LLAMA3_PAT_STR, mergeable_ranks=ranks, special_tokens=specials
        )
    except ValueError as exc:  # e.g. a special token that is also a rank
        raise InputError(f"{path}: tiktoken cannot build an encoding from it ({exc})") from None
    return TiktokenTokenizer(str(path), encoding, n)


# -- tokenizer.json through the tokenizers library ------------------------------------------------


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode (``Ġ`` -> 0x20), shared by every byte-level BPE."""
    return gpt2._data_gym_byte_decoder()


class JsonTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` set up as transformers sets it up: :mod:`attnviz.text.tokenizer_recipes`
    for a ``tokenizer.json``, :mod:`attnviz.text.gguf_tokenizer` for a GGUF file (``kind="gguf"``)."""

    kind = "tokenizer.json"

    def __init__(
        self,
        source: str,
        backend,
        *,
        byte_level: bool,
        tokenizer_class: str | None,
        eos: str | None,
        kind: str = "tokenizer.json",
    ):
        self.source = source
        self.kind = kind
        self.tokenizer_class = tokenizer_class
        self._backend = backend
        self._byte_level = byte_level
        self._byte_fallback = bool(getattr(backend.model, "byte_fallback", False))
        self._byte_of = _byte_decoder() if byte_level else {}
        added = backend.get_added_tokens_decoder()  # id -> AddedToken
        self._added = {token_id: token.content.encode() for token_id, token in added.items()}
        self._special = {token_id for token_id, token in added.items() if token.special}
        size = max([backend.get_vocab_size(with_added_tokens=False), *(i + 1 for i in added)])
        while backend.id_to_token(size) is not None:  # a model vocabulary with holes
            size += 1
        self.vocab_size = size
        unk = getattr(backend.model, "unk_token", None)
        self.unk_id = backend.token_to_id(unk) if unk else None
        prefix, suffix = self._template_tokens()
        self.bos_id = prefix[0] if prefix else None
        self.eos_id = suffix[-1] if suffix else (backend.token_to_id(eos) if eos else None)

    def _template_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the post-processor puts before and after a sequence."""
        self._backend.encode_special_tokens = True
        encoding = self._backend.encode("a", add_special_tokens=True)
        ids, sequence_ids = encoding.ids, encoding.sequence_ids
        content = [i for i, s in enumerate(sequence_ids) if s is not None]
        if not content:
            return ids, []
        return ids[: content[0]], ids[content[-1] + 1 :]

    def encode(self, text: str, *, allow_special: bool = False, add_bos: bool = True) -> list[int]:
        _check_text(text)
        self._backend.encode_special_tokens = not allow_special
        return self._backend.encode(text, add_special_tokens=add_bos).ids

    def unknown_words(self, text: str, token_ids: list[int]) -> list[str]:
        if self.unk_id is None or self.unk_id not in token_ids:
            return []
        encoding = self._backend.encode(text, add_special_tokens=False)
        words = [text[start:end] for token_id, (start, end) in zip(encoding.ids, encoding.offsets)
                 if token_id == self.unk_id]
        return list(dict.fromkeys(words))

    def _piece_bytes(self, token_id: int) -> bytes:
        if token_id in self._added:
            return self._added[token_id]
        piece = self._backend.id_to_token(token_id) if token_id >= 0 else None
        if piece is None:
            raise self._unknown_id(token_id)
        if self._byte_fallback and (match := _BYTE_PIECE.fullmatch(piece)):
            return bytes([int(match.group(1), 16)])
        if self._byte_level:
            try:
                return bytes(self._byte_of[ch] for ch in piece)
            except KeyError:  # not a byte-level piece (a plain special string in the vocabulary)
                return piece.encode()
        return piece.replace("\u2581", " ").encode()

    def token_bytes(self, token_ids: list[int]) -> list[bytes]:
        return [self._piece_bytes(token_id) for token_id in token_ids]

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special

    def encode_pair(self, text: str, pair: str, *, allow_special: bool = False
                    ) -> tuple[list[int], list[int], int]:
        """A sentence pair as AutoTokenizer encodes ``tokenizer(text, pair)``: ``(ids,
        token type ids, the position of the second sentence's first token)`` (BERT:
        ``[CLS] A [SEP] B [SEP]``, types 0 then 1; RoBERTa ``<s> A </s></s> B </s>``)."""
        _check_text(text)
        self._backend.encode_special_tokens = not allow_special
        encoding = self._backend.encode(text, pair, add_special_tokens=True)
        second = [i for i, s in enumerate(encoding.sequence_ids) if s == 1]
        if not second:
            raise InputError("--pair has no tokens: give a second sentence")
        return encoding.ids, encoding.type_ids, second[0]


def _explain_unreadable(path: Path, data: bytes, exc: Exception) -> InputError:
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = ""
        if isinstance(err, json.JSONDecodeError):
            where = f" ({err.msg} at line {err.lineno} column {err.colno})"
        return InputError(f"{path} is not valid JSON{where}: the file is damaged or is not a tokenizer.json")
    model = document.get("model") if isinstance(document, dict) else None
    if not isinstance(model, dict):
        return InputError(f'{path} is not a tokenizer.json: it has no "model" object')
    model_type = model.get("type")
    if model_type is not None and model_type not in _MODEL_TYPES:
        return InputError(
            f"{path} has an unknown tokenizer model type {model_type!r} "
            f"(the tokenizers library reads {', '.join(sorted(_MODEL_TYPES))})"
        )
    return InputError(f"the tokenizers library cannot read {path}: {exc}")


def _load_json_tokenizer(path: Path, data: bytes) -> JsonTokenizer:
    from tokenizers import Tokenizer as Backend

    try:
        backend = Backend.from_buffer(data)
    except Exception as exc:  # tokenizers raises plain Exception with serde's message
        raise _explain_unreadable(path, data, exc) from None
    backend, byte_level, class_name, eos = set_up_like_transformers(backend, data, path.parent)
    backend.no_truncation()  # transformers switches both off for a plain call
    backend.no_padding()
    tokenizer = JsonTokenizer(str(path), backend, byte_level=byte_level, tokenizer_class=class_name,
                              eos=eos)
    tokenizer.chat_template, tokenizer.chat_tokens = chat_setup(path.parent)
    return tokenizer


# -- SentencePiece models: T5's spiece.model, Llama 2's tokenizer.model, Marian's .spm ---------------


def _load_spm(path: Path, data: bytes) -> Tokenizer:
    """A SentencePiece model as transformers builds it for its class (:mod:`attnviz.text.spm_tokenizer`)."""
    class_name, config = spm_class(path.parent, path)
    if class_name == "MarianTokenizer":
        return _load_marian(path, config)
    backend, eos = spm_pipeline(read_spm(path, data), class_name, config, path)
    tokenizer = JsonTokenizer(str(path), backend, byte_level=False, tokenizer_class=class_name,
                              eos=eos, kind="sentencepiece")
    unk = config.get("unk_token", "<unk>")
    unk = unk.get("content") if isinstance(unk, dict) else unk
    if isinstance(unk, str) and backend.token_to_id(unk) is not None:
        tokenizer.unk_id = backend.token_to_id(unk)
    tokenizer.chat_template, tokenizer.chat_tokens = chat_setup(path.parent)
    return tokenizer


class MarianSpmTokenizer(Tokenizer):
    """Marian's tokenizer as transformers' ``MarianTokenizer`` runs it: the source text through
    ``source.spm``, the target text through ``target.spm`` (:meth:`decoder_tokenizer`), each piece
    to its id in ``vocab.json`` (``<unk>`` when it has none), a ``>>xx<<`` language code at the
    start of the text (or of a stretch between special tokens) kept whole, then ``</s>``."""

    kind = "sentencepiece"

    def __init__(self, sides: dict[str, tuple[str, SpmPieces]], vocab: dict[str, int],
                 named: dict[str, str], side: str = "source"):
        self._sides, self._vocab, self._named, self.side = sides, vocab, named, side
        self.source, self._spm = sides[side]
        self._piece = {token_id: piece for piece, token_id in vocab.items()}
        self.vocab_size = max(vocab.values()) + 1
        self.unk_id = vocab[named["unk_token"]]
        self.bos_id = None
        self.eos_id = vocab[named["eos_token"]]
        self._special = {text: vocab[text] for text in named.values()}
        self._special_ids = set(self._special.values())
        pattern = "|".join(map(re.escape, sorted(self._special, key=len, reverse=True)))
        self._split = re.compile(f"({pattern})")

    def decoder_tokenizer(self) -> Tokenizer:
        if self.side == "target":
            return self
        return MarianSpmTokenizer(self._sides, self._vocab, self._named, side="target")

    def _pieces(self, text: str, allow_special: bool) -> list[str]:
        """The text's pieces (and special tokens, ``allow_special``), as MarianTokenizer.tokenize."""
        chunks = [c for c in self._split.split(text) if c] if allow_special else [text]
        out = []
        for chunk in chunks:
            if allow_special and chunk in self._special:
                out.append(chunk)
                continue
            if chunk.startswith(">>") and (end := chunk.find("<<")) != -1:  # remove_language_code
                out.append(chunk[:end + 2])
                chunk = chunk[end + 2:]
            out += self._spm.pieces(chunk) if chunk else []
        return out

    def encode(self, text: str, *, allow_special: bool = False, add_bos: bool = True) -> list[int]:
        _check_text(text)
        ids = [self._vocab.get(piece, self.unk_id) for piece in self._pieces(text, allow_special)]
        return [*ids, self.eos_id] if add_bos else ids

    def unknown_words(self, text: str, token_ids: list[int]) -> list[str]:
        if self.unk_id not in token_ids:
            return []
        words = [piece.replace("\u2581", " ").strip() or piece for piece in self._pieces(text, False)
                 if self._vocab.get(piece, self.unk_id) == self.unk_id]
        return list(dict.fromkeys(words))

    def token_bytes(self, token_ids: list[int]) -> list[bytes]:
        out = []
        for token_id in token_ids:
            piece = self._piece.get(token_id)
            if piece is None:
                raise self._unknown_id(token_id)
            if token_id in self._special_ids:
                out.append(piece.encode())
            elif self._spm.model.byte_fallback and (match := _BYTE_PIECE.fullmatch(piece)):
                out.append(bytes([int(match.group(1), 16)]))
            else:
                out.append(piece.replace("\u2581", " ").encode())
        return out

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids


def _load_marian(path: Path, config: dict) -> MarianSpmTokenizer:
    folder = path.parent
    if config.get("separate_vocabs"):
        raise InputError(f"{folder / 'tokenizer_config.json'}: separate_vocabs (a target vocabulary "
                         "of its own) is not supported for Marian")
    files = {"source": folder / "source.spm", "target": folder / "target.spm"}
    if path.name not in ("source.spm", "target.spm"):
        files["source"] = path
    vocab_path = folder / "vocab.json"
    for file in (*files.values(), vocab_path):
        if not file.is_file():
            raise InputError(f"{folder}: Marian's tokenizer needs source.spm, target.spm and "
                             f"vocab.json side by side; {file.name} is missing")
    vocab = marian_vocab(vocab_path)
    named = {}
    for key, default in (("eos_token", "</s>"), ("unk_token", "<unk>"), ("pad_token", "<pad>")):
        value = config.get(key, default)
        value = value.get("content") if isinstance(value, dict) else value
        if not isinstance(value, str) or value not in vocab:
            raise InputError(f"{vocab_path}: Marian's {key} {value!r} is not in it")
        named[key] = value
    sides = {side: (str(file), SpmPieces(read_spm(file), file)) for side, file in files.items()}
    return MarianSpmTokenizer(sides, vocab, named)


# -- finding and loading ---------------------------------------------------------------------------


def _head(path: Path, size: int = 256) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(size)
    except OSError as exc:
        raise InputError(f"cannot read tokenizer {path}: {exc.strerror}") from None


def _is_tiktoken(head: bytes) -> bool:
    first = head.split(b"\n", 1)[0].rstrip(b"\r")
    return bool(_TIKTOKEN_LINE.fullmatch(first))


def _is_sentencepiece(data: bytes) -> bool:
    """A SentencePiece ModelProto: field 1 (pieces) first, and binary (scores are packed floats)."""
    if data[:1] != b"\n":
        return False
    try:
        data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return True
    return any(byte < 9 for byte in data[:4096])


# Where a checkpoint keeps its tokenizer, in the order they are looked for: tokenizer.model is
# Llama 3's tiktoken file or a SentencePiece model; spiece.model T5's; source.spm Marian's.
TOKENIZER_NAMES = ("tokenizer.json", "tokenizer.model", "spiece.model", "source.spm")


def find_tokenizer(folder: Path) -> Path | None:
    """The first of :data:`TOKENIZER_NAMES` in ``folder``, else None."""
    folder = Path(folder)
    for name in TOKENIZER_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def load_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer in a folder, or in a ``tokenizer.json`` / ``tokenizer.model`` /
    SentencePiece file (cached)."""
    path = Path(path)
    if path.is_dir():
        found = find_tokenizer(path)
        if found is None:
            raise InputError(
                f"no tokenizer in {path} (tokenizer.json, tokenizer.model, spiece.model or Marian's "
                "source.spm): pass --tokenizer PATH"
            )
        path = found
    elif not path.exists():
        raise InputError(
            f"tokenizer {path}: no such file or folder (--tokenizer takes a tokenizer.json, a "
            "tokenizer.model, a SentencePiece .model/.spm file, or a folder holding one)"
        )
    try:
        stat = path.stat()
    except OSError as exc:
        raise InputError(f"cannot read tokenizer {path}: {exc.strerror}") from None
    # absolute, not resolved: the files beside it (tokenizer_config.json, Marian's target.spm) are
    # found in its folder, which a Hub snapshot's symlink into the blob store would lose
    return _load_cached(str(path.absolute()), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _load_cached(absolute: str, mtime_ns: int, size: int) -> Tokenizer:
    path = Path(absolute)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read tokenizer {path}: {exc.strerror}") from None
    if data[:64].lstrip()[:1] == b"{" or path.suffix == ".json":
        return _load_json_tokenizer(path, data)
    if _is_tiktoken(data[:256]):
        return _load_tiktoken_model(path, data)
    if _is_sentencepiece(data) or path.suffix in (".model", ".spm"):
        return _load_spm(path, data)
    raise InputError(
        f"{path} is neither a tokenizer.json, a tiktoken tokenizer.model nor a SentencePiece model: "
        "pass --tokenizer PATH"
    )
