"""The tokenizer of a GGUF file, built from its metadata as transformers 5 builds it.

A GGUF file (llama.cpp's format) carries no ``tokenizer.json``: its tokenizer is metadata under
llama.cpp's key names (``tokenizer.ggml.model``, ``.tokens``, ``.token_type``, ``.merges``,
``.scores``, the special ids and ``add_bos_token`` / ``add_eos_token``). :func:`gguf_tokenizer` turns
it into a ``tokenizers.Tokenizer`` with the same calls, in the same order, as
``AutoTokenizer.from_pretrained(folder, gguf_file=name)`` makes (transformers'
``integrations/gguf/gguf_tokenizer_mapping.py``: ``get_gguf_tokenizer``, ``convert_gguf_tokenizer``,
then ``TokenizersBackend.__init__``), so the ids are transformers' on any text, and wraps it in
:class:`~attnviz.text.tokenization.JsonTokenizer` (``kind`` ``"gguf"``). Special-token strings in the
text follow :class:`~attnviz.text.tokenization.Tokenizer`'s rule (plain text unless ``allow_special``).

- ``tokenizer.ggml.model`` **gpt2**: byte-level BPE. A token not spelled in GPT-2's byte alphabet
  is re-spelled as the alphabet of its UTF-8 bytes; the merges are the file's. The pre-tokenizer is
  named by ``tokenizer.ggml.pre``: the variants of :data:`PRE_TOKENIZER_SPLITS` split with their own
  pattern (Llama 3's for ``llama-bpe`` ..., Qwen2's for ``qwen2`` ..., GPT-4o's, Tekken's, Qwen3.5's),
  then byte-level without a pattern; any other value (``smollm``, ``gpt-2``, ``default``, none ...)
  gets GPT-2's own byte-level split, as transformers does (whatever split llama.cpp uses for it).
- **llama**: SentencePiece BPE: the vocabulary as the file spells it (``▁`` for a space), the
  file's merges or, without them, merges recovered from ``tokenizer.ggml.scores`` (transformers'
  ``generate_merges``), byte fallback to ``<0x00>`` ... ``<0xFF>``, Metaspace prepending ``▁`` to the
  first word only. ``tokenizer.ggml.add_space_prefix`` is read but not used, as transformers 5 does
  not use it (it always prepends). ``phi3`` files instead get a normalizer that prepends ``▁`` and
  turns every space into ``▁`` (transformers' ``phi3_tokenizer``).
- **Special tokens.** Tokens typed CONTROL (3) become special added tokens (in a byte-level
  vocabulary only those spelled in the byte alphabet), USER_DEFINED (4) plain added tokens matched
  whole. The class's default special tokens (GPT2Tokenizer's ``<|endoftext|>``, LlamaTokenizer's
  ``<s>`` ``</s>`` ``<unk>``) are registered special first, and the tokens of
  ``bos/eos/unknown/padding_token_id`` not registered by then are registered special last; a later
  registration changes the flags of an earlier one, as in transformers. For a
  ``qwen2``/``qwen2moe``/``qwen3``/``qwen3moe`` file the named tokens are made special once more
  (transformers' ``Qwen2Tokenizer`` does).
- **BOS / EOS.** ``encode`` prepends the BOS token when ``tokenizer.ggml.add_bos_token`` is true
  (a ``llama`` file without the key: true, as llama.cpp and transformers take it) and the file
  names a BOS id, and appends EOS when ``add_eos_token`` is true. ``eos_id`` is the appended EOS,
  else the file's ``eos_token_id``.
- **One deliberate difference.** transformers registers a special token the file's vocabulary does
  not hold (a class default such as ``<|endoftext|>`` in a Llama 3 vocabulary, or a named token
  the byte-level re-spelling changed) under a new id past the file's tokens -- an id the model's
  embedding does not have. attnviz leaves such a token out (its string is plain text), and refuses
  a file whose BOS/EOS to add would be one (InputError naming the key).
- **Refused** (:class:`~attnviz.core.errors.InputError`, one line naming the key): a missing
  ``tokenizer.ggml.model`` or ``tokenizer.ggml.tokens``, merges missing without scores to recover
  them from, a tokenizer model other than gpt2/llama (t5, bert, rwkv, gemma4, ...), a ``llama``
  tokenizer of a Gemma architecture (transformers re-spells it for ``GemmaTokenizer``) or with a
  byte-level ``tokenizer.ggml.pre`` of the table (transformers would split it as bytes), arrays whose
  lengths differ from the token count, ids out of range, values of the wrong type, a merge that is
  not two tokens of the vocabulary.

The token count is not checked against anything here: the model reader must compare
:func:`gguf_token_count` with its embedding's rows (:func:`check_token_count` does it). The tokenizer's
``vocab_size`` is the file's token count.

``tokenizers`` is imported when a tokenizer is built; nothing here imports ``gguf``: the reader is
any ``gguf.GGUFReader`` (its ``fields``: ``types``, ``parts``, ``data``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from attnviz.core.errors import InputError
from attnviz.text import gpt2_bpe as gpt2
from attnviz.text.spm_tokenizer import generate_merges
from attnviz.text.tokenization import LLAMA3_PAT_STR, JsonTokenizer, Tokenizer
from attnviz.text.tokenizer_recipes import QWEN2_PAT_STR

__all__ = [
    "PRE_TOKENIZER_SPLITS",
    "chat_template",
    "check_token_count",
    "gguf_token_count",
    "gguf_tokenizer",
]

# GGUF value types (gguf.GGUFValueType).
_INTEGER = {0, 1, 2, 3, 4, 5, 10, 11}
_FLOAT = {6, 12}
_BOOL = 7
_STRING = 8
_ARRAY = 9
_TYPE_NAMES = {_BOOL: "a boolean", _STRING: "a string"}

# llama.cpp's token types (gguf.TokenType).
_CONTROL = 3
_USER_DEFINED = 4

TOKENS = "tokenizer.ggml.tokens"
MODEL = "tokenizer.ggml.model"
PRE = "tokenizer.ggml.pre"
TOKEN_TYPE = "tokenizer.ggml.token_type"
SCORES = "tokenizer.ggml.scores"
MERGES = "tokenizer.ggml.merges"
CHAT_TEMPLATE = "tokenizer.chat_template"
ARCHITECTURE = "general.architecture"
# transformers' named special tokens, in its order, and the keys of their ids.
_NAMED_IDS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}
ADD_BOS = "tokenizer.ggml.add_bos_token"
ADD_EOS = "tokenizer.ggml.add_eos_token"

_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> the split pattern before the byte-level step (transformers'
# GGUF_PRE_TOKENIZER_SPLITS); any other value gets GPT-2's byte-level pre-tokenizer.
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(
        ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
         "jina-v5-nano", "dbrx", "smaug-bpe"],
        LLAMA3_PAT_STR,
    ),
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"], QWEN2_PAT_STR),
    "qwen35": _QWEN35_SPLIT,
    **dict.fromkeys(["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], _GPT4O_SPLIT),
}
# Architectures whose transformers tokenizer class is Qwen2Tokenizer (it re-adds the named tokens).
_QWEN2_CLASS = {"qwen2", "qwen2moe", "qwen3", "qwen3moe"}
_GEMMA = {"gemma", "gemma2", "gemma3", "gemma3n", "gemma4"}
_CLASS_DEFAULTS = {"gpt2": ["<|endoftext|>"], "llama": ["<s>", "</s>", "<unk>"]}


# -- reading the metadata --------------------------------------------------------------------------


class _Metadata:
    """Typed access to a GGUF file's metadata; every problem is one InputError naming the key.

    ``source`` is gguf's ``GGUFReader`` or any object with ``field(key) -> ([value type],
    value) | ([ARRAY, item type], [values]) | None`` (attnviz's own checked header,
    ``attnviz.models.gguf_file.GGUFFile``, which reads the file once)."""

    def __init__(self, source, where: Path):
        self.source = source
        self.where = where

    def error(self, key: str, problem: str) -> InputError:
        return InputError(f"{self.where}: GGUF key {key} {problem}")

    def _field(self, key: str, required: bool) -> tuple[list[int], object] | None:
        if hasattr(self.source, "field"):
            found = self.source.field(key)
        else:  # a GGUFReader
            field = self.source.fields.get(key)
            found = None if field is None else ([int(t) for t in field.types], field)
        if found is None and required:
            raise self.error(key, "is missing: the file does not describe its tokenizer fully")
        return found

    def _decode(self, key: str, raw) -> str:
        if isinstance(raw, str):
            return raw
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(key, "holds a string that is not UTF-8") from None

    def scalar(self, key: str, kinds: set[int], *, required: bool = False):
        found = self._field(key, required)
        if found is None:
            return None
        types, value = found
        if len(types) != 1 or types[0] not in kinds:
            raise self.error(key, f"is not {_kind_name(kinds)}")
        if not isinstance(value, (str, int, float, bool)):  # a GGUFReader field
            value = value.parts[value.data[0]]
            if types[0] != _STRING:
                value = value.tolist()[0]
        if types[0] == _STRING:
            return self._decode(key, value)
        return bool(value) if types[0] == _BOOL else value

    def array(self, key: str, kinds: set[int], *, required: bool = False) -> list | None:
        found = self._field(key, required)
        if found is None:
            return None
        types, value = found
        if len(types) != 2 or types[0] != _ARRAY or types[1] not in kinds:
            raise self.error(key, f"is not an array of {_kind_name(kinds, plural=True)}")
        if isinstance(value, list):
            return [self._decode(key, v) for v in value] if types[1] == _STRING else value
        if types[1] == _STRING:  # a GGUFReader field
            return [self._decode(key, value.parts[i]) for i in value.data]
        return [v for i in value.data for v in value.parts[i].tolist()]


def _kind_name(kinds: set[int], plural: bool = False) -> str:
    if kinds <= _INTEGER:
        return "integers" if plural else "an integer"
    if kinds <= _INTEGER | _FLOAT:
        return "numbers" if plural else "a number"
    name = _TYPE_NAMES[next(iter(kinds))]
    return name.removeprefix("a ") + "s" if plural else name


def gguf_token_count(reader) -> int | None:
    """The number of tokens ``tokenizer.ggml.tokens`` holds (None: the file has none)."""
    tokens = _Metadata(reader, Path("the GGUF file")).array(TOKENS, {_STRING})
    return None if tokens is None else len(tokens)


def check_token_count(reader, where: Path, embedding_rows: int) -> None:
    """Refuse a file whose token count is not the number of rows of its token embedding.

    The model reader calls it: :func:`gguf_tokenizer` cannot see the tensors' shapes.
    """
    count = gguf_token_count(reader)
    if count is not None and count != embedding_rows:
        raise InputError(
            f"{where}: GGUF key {TOKENS} holds {count} tokens but the token embedding has "
            f"{embedding_rows} rows: the tokenizer does not belong to these weights"
        )


def chat_template(reader) -> str | None:
    """The chat template (``tokenizer.chat_template``) of a GGUF file, or None."""
    where = getattr(getattr(reader, "data", None), "filename", None) or "the GGUF file"
    return _Metadata(reader, Path(where)).scalar(CHAT_TEMPLATE, {_STRING})


# -- building the tokenizer ------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's ``bytes_to_unicode``: each byte's printable stand-in."""
    return {byte: char for char, byte in gpt2._data_gym_byte_decoder().items()}


def _merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """transformers' ``generate_merges(vocab, vocab_scores)``
    (:func:`attnviz.text.spm_tokenizer.generate_merges`)."""
    return generate_merges({token: index for index, token in enumerate(tokens)},
                           dict(zip(tokens, scores)))


class _Read:
    """What the file says about its tokenizer, checked."""

    def __init__(self, meta: _Metadata):
        self.meta = meta
        self.architecture = meta.scalar(ARCHITECTURE, {_STRING})
        self.model = meta.scalar(MODEL, {_STRING}, required=True)
        if self.model not in ("gpt2", "llama"):
            raise meta.error(
                MODEL,
                f"names the tokenizer model {self.model!r}, which attnviz does not read "
                "(it reads gpt2, byte-level BPE, and llama, SentencePiece BPE)",
            )
        if self.model == "llama" and self.architecture in _GEMMA:
            raise meta.error(
                ARCHITECTURE,
                f"is {self.architecture!r}: attnviz does not read the SentencePiece tokenizer of a "
                "Gemma GGUF file (transformers re-spells it for GemmaTokenizer)",
            )
        self.pre = meta.scalar(PRE, {_STRING})
        if self.model == "llama" and self.pre in PRE_TOKENIZER_SPLITS:
            raise meta.error(
                PRE,
                f"is {self.pre!r}, a byte-level split, for a SentencePiece (llama) vocabulary: "
                "the file contradicts itself",
            )
        self.tokens = meta.array(TOKENS, {_STRING}, required=True)
        n = len(self.tokens)
        if n == 0:
            raise meta.error(TOKENS, "is empty")
        self.token_type = meta.array(TOKEN_TYPE, _INTEGER)
        self.scores = meta.array(SCORES, _INTEGER | _FLOAT)
        for key, values in ((TOKEN_TYPE, self.token_type), (SCORES, self.scores)):
            if values is not None and len(values) != n:
                raise meta.error(key, f"holds {len(values)} values for the {n} tokens of {TOKENS}")
        raw_merges = meta.array(MERGES, {_STRING})
        if raw_merges is None and self.scores is None:
            raise meta.error(MERGES, f"is missing, and so is {SCORES} to recover the merges from")
        self.merges = None if raw_merges is None else self._split_merges(raw_merges)
        self.named = {}  # bos_token -> its string, as transformers names it
        self.named_ids = {}
        for name, key in _NAMED_IDS.items():
            token_id = meta.scalar(key, _INTEGER)
            if token_id is not None and not 0 <= token_id < n:
                raise meta.error(key, f"is {token_id}, not a token id (0..{n - 1})")
            self.named[name] = None if token_id is None else self.tokens[token_id]
            self.named_ids[name] = token_id
        self.add_bos = meta.scalar(ADD_BOS, {_BOOL})
        self.add_eos = meta.scalar(ADD_EOS, {_BOOL})
        if self.model == "llama" and self.add_bos is None:
            self.add_bos = True  # llama.cpp's and transformers' default for a SentencePiece vocabulary

    def _split_merges(self, raw: list[str]) -> list[tuple[str, str]]:
        merges = []
        for index, merge in enumerate(raw):
            pair = tuple(merge.split(" "))
            if len(pair) != 2:
                raise self.meta.error(MERGES, f"entry {index} ({merge!r}) is not two tokens and a space")
            merges.append(pair)
        return merges


def _model(read: _Read):
    """The BPE model and the pipeline the inner class builds (GPT2Tokenizer / LlamaTokenizer)."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    merges = read.merges
    if merges is None:
        merges = _merges_from_scores(read.tokens, read.scores)
    if read.model == "gpt2":
        spelling = _bytes_to_unicode()
        alphabet = set(spelling.values())
        vocab = {
            token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8")): index
            for index, token in enumerate(read.tokens)
        }
        options = {"continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False}
    else:
        vocab = {token: index for index, token in enumerate(read.tokens)}
        options = {"fuse_unk": True, "byte_fallback": True}
    try:
        model = models.BPE(vocab=vocab, merges=merges, dropout=None, **options)
    except Exception as exc:  # tokenizers: "Error while initializing BPE: Token `x` out of vocabulary"
        raise read.meta.error(MERGES, f"does not fit {TOKENS} ({exc})") from None
    backend = Backend(model)
    if read.model == "gpt2":
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
    else:
        backend.normalizer = None
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="\u2581", prepend_scheme="first", split=False
        )
        backend.decoder = decoders.Sequence(
            [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
             decoders.Strip(content=" ", left=1)]
        )
        if read.architecture == "phi3":  # transformers' phi3_tokenizer
            backend.normalizer = normalizers.Sequence(
                [normalizers.Prepend(prepend="\u2581"), normalizers.Replace(pattern=" ", content="\u2581")]
            )
            backend.pre_tokenizer = None
    return backend


def _template(backend, bos: str | None, eos: str | None):
    """transformers' ``update_post_processor``: ``[bos] $A [eos]``."""
    from tokenizers import processors

    single = f"{bos + ':0 ' if bos else ''}$A:0{' ' + eos + ':0' if eos else ''}"
    pair = f"{single}{' ' + bos + ':1' if bos else ''} $B:1{' ' + eos + ':1' if eos else ''}"
    specials = [(token, backend.token_to_id(token)) for token in (bos, eos) if token]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)


def _build(read: _Read):
    """The backend in the state ``AutoTokenizer.from_pretrained(folder, gguf_file=...)`` leaves it."""
    from tokenizers import AddedToken, Regex, pre_tokenizers

    backend = _model(read)

    def in_vocabulary(content: str) -> bool:  # transformers would add any other one past the file's ids
        return backend.model.token_to_id(content) is not None

    def special(content: str) -> AddedToken:
        return AddedToken(content, special=True, normalized=False)

    # 1. The inner class's __init__ (GPT2Tokenizer / LlamaTokenizer): its default special tokens,
    #    and a post-processor that adds nothing.
    backend.add_tokens([special(t) for t in _CLASS_DEFAULTS[read.model] if in_vocabulary(t)])
    backend.post_processor = _template(backend, None, None)
    # 2. add_gguf_special_tokens: CONTROL tokens special, USER_DEFINED ones plain added tokens.
    types = read.token_type or ()
    alphabet = set(_bytes_to_unicode().values()) if read.model == "gpt2" else None
    control = [
        special(token)
        for token, kind in zip(read.tokens, types)
        if kind == _CONTROL and (alphabet is None or set(token) <= alphabet)
    ]
    if control:
        backend.add_special_tokens(control)
    vocabulary = backend.get_vocab(with_added_tokens=True)
    user = [
        AddedToken(token, special=False, normalized=False)
        for token, kind in zip(read.tokens, types)
        if kind == _USER_DEFINED and token in vocabulary
    ]
    if user:
        backend.add_tokens(user)
    # 3. set_split_regex.
    split = PRE_TOKENIZER_SPLITS.get(read.pre)
    if split is not None:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    # 4. TokenizersBackend.__init__ with the file's named tokens: those not yet added, as special.
    named = [t for t in read.named.values() if t is not None]
    added = {token.content for token in backend.get_added_tokens_decoder().values()}
    fresh = []
    for token in named:
        if token not in added and token not in fresh:
            fresh.append(token)
    backend.add_tokens([special(t) for t in fresh if in_vocabulary(t)])
    if read.add_bos is not None or read.add_eos is not None:  # update_post_processor
        bos = read.named["bos_token"] if read.add_bos else None
        eos = read.named["eos_token"] if read.add_eos else None
        for name, token, key in (("BOS", bos, ADD_BOS), ("EOS", eos, ADD_EOS)):
            if token is not None and not in_vocabulary(token):
                raise read.meta.error(
                    key,
                    f"asks for the {name} token {token!r}, which is not spelled in the vocabulary: "
                    "transformers would add it past the model's token ids",
                )
        backend.post_processor = _template(backend, bos, eos)
    # 5. Qwen2Tokenizer.__init__ adds every named special token once more.
    if read.architecture in _QWEN2_CLASS:
        unique = list(dict.fromkeys(named))
        backend.add_tokens([AddedToken(t, special=True) for t in unique if in_vocabulary(t)])
    backend.no_truncation()
    backend.no_padding()
    return backend


def gguf_tokenizer(reader, where: Path) -> Tokenizer:
    """The tokenizer a GGUF file's metadata describes, as transformers builds it (module docstring).

    ``reader`` is the file's checked header (``models.gguf_file.GGUFFile``) or gguf's ``GGUFReader``,
    ``where`` its path (named in every error). The
    caller (the model reader) must check that the token count (:func:`gguf_token_count`) equals the
    rows of the token embedding: :func:`check_token_count`.
    """
    where = Path(where)
    read = _Read(_Metadata(reader, where))
    backend = _build(read)
    eos = read.named["eos_token"]
    tokenizer = JsonTokenizer(
        str(where),
        backend,
        byte_level=read.model == "gpt2",
        tokenizer_class=None,
        eos=eos if eos is not None and backend.model.token_to_id(eos) is not None else None,
        kind="gguf",
    )
    tokenizer.vocab_size = len(read.tokens)
    tokenizer.chat_template = chat_template(reader)
    tokenizer.chat_tokens = {"bos_token": read.named["bos_token"], "eos_token": read.named["eos_token"]}
    if tokenizer.eos_id is None:
        tokenizer.eos_id = read.named_ids["eos_token"]
    return tokenizer
