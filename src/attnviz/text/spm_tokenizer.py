"""SentencePiece models as ``tokenizers`` pipelines, built as transformers builds them.

A checkpoint without a ``tokenizer.json`` may ship its tokenizer as a SentencePiece model
(read by :mod:`attnviz.text.spm_model`, without the ``sentencepiece`` package). Which pipeline
it becomes depends on the tokenizer class (``tokenizer_config.json``'s ``tokenizer_class``,
else ``config.json``'s ``model_type`` t5, mt5 or marian), as in transformers 5:

- **T5Tokenizer** (``spiece.model``: t5, flan-t5, mt5): ``T5Tokenizer.__init__`` on the
  pieces that ``SentencePieceExtractor`` + ``T5Converter.convert_from_spm`` extract: a Unigram
  of the pieces and their scores, then ``<extra_id_{extra_ids-1}>`` ... ``<extra_id_0>`` (score
  0; ``extra_ids`` from tokenizer_config.json, default 100), unknown id 2, no byte fallback;
  ``Precompiled(precompiled_charsmap)`` when the model has one; ``WhitespaceSplit`` +
  ``Metaspace(prepend_scheme="always", split=True)``; ``$A </s>``.
- **LlamaTokenizer** (a SentencePiece BPE ``tokenizer.model``: Llama 2, Mistral v0.1 ...):
  ``LlamaTokenizer.__init__`` on the pieces as a BPE vocabulary, its merges recovered from the
  piece order as transformers' ``generate_merges(vocab)`` does, byte fallback, no normalizer,
  ``Metaspace(split=False)`` prepending ``▁`` to the first chunk (``legacy: false``, the
  default) or to every chunk between special tokens (``legacy: true``), none with
  ``add_prefix_space: false``; ``<s>`` before the text when ``add_bos_token`` is true (after
  it ``</s>`` when ``add_eos_token``), as ``update_post_processor`` sets it.
- **MarianTokenizer** (``source.spm``, ``target.spm``, ``vocab.json``): MarianTokenizer is
  the ``sentencepiece`` library itself, so each side is transformers' emulation of
  ``SentencePieceProcessor.encode`` (``SpmConverter.build_tokenizer_from_spm_proto`` with
  ``legacy=True``): the model's own normalizer spec (the charsmap, extra spaces removed, spaces
  escaped as ``▁``, the dummy prefix), its Unigram (or BPE with merges ranked by score). The
  pieces it emits are mapped to ids through ``vocab.json`` (a piece it does not hold: ``<unk>``),
  and ``</s>`` is appended; :class:`attnviz.text.tokenization.MarianSpmTokenizer` does that.

Special tokens are registered as transformers registers them: the tokens of
``added_tokens_decoder`` (tokenizer_config.json), the named ones (``eos_token`` ..., the class's
defaults), the model's control pieces (and, for BPE, its user-defined pieces, matched whole
but not special) and T5's extra ids. **One deliberate difference**: a token the model's
vocabulary does not hold is left out (transformers gives it a new id past the embedding).

``tokenizers`` is imported when a pipeline is built, never at import time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from attnviz.core.errors import InputError
from attnviz.text.spm_model import BYTE, CONTROL, NORMAL, USER_DEFINED, SpmModel
from attnviz.text.tokenizer_recipes import _added_token, _read_json_config, _recipe_llama

__all__ = ["SPM_CLASSES", "SpmPieces", "generate_merges", "marian_vocab", "spm_class",
           "spm_pipeline"]

# The classes whose SentencePiece model attnviz builds, and the model_types that imply them when
# tokenizer_config.json names no class, as AutoTokenizer takes them (a llama folder without a class
# gets transformers' generic TokenizersBackend, which attnviz does not build).
SPM_CLASSES = ("T5Tokenizer", "LlamaTokenizer", "MarianTokenizer")
_MODEL_TYPE_CLASS = {"t5": "T5Tokenizer", "mt5": "T5Tokenizer", "marian": "MarianTokenizer"}
_DEFAULTS = {
    "T5Tokenizer": {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"},
    "LlamaTokenizer": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
    "MarianTokenizer": {"unk_token": "<unk>", "eos_token": "</s>", "pad_token": "<pad>"},
}
_NAMED = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def generate_merges(vocab: dict[str, int], scores: dict[str, float] | None = None
                    ) -> list[tuple[str, str]]:
    """transformers' ``generate_merges(vocab, vocab_scores)``: every split of every token into
    two tokens of the vocabulary; by score, best first (ties: longer left piece, then longer
    right), or without scores by the merged token's id, lowest first (ties: shorter left, then
    shorter right)."""
    reverse = scores is not None
    ranked = dict(scores) if reverse else vocab
    found = []
    for merge, rank in ranked.items():
        local = [(merge[:i], merge[i:], rank) for i in range(1, len(merge))
                 if merge[:i] in vocab and merge[i:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        found.extend(local)
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=reverse)
    return [(left, right) for left, right, _ in found]


def spm_class(folder: Path, path: Path) -> tuple[str, dict]:
    """The tokenizer class a SentencePiece model in ``folder`` is built as, and
    tokenizer_config.json's settings; refused by name when attnviz does not build it."""
    config = _read_json_config(folder / "tokenizer_config.json")
    name = config.get("tokenizer_class")
    if not name:
        model_type = _read_json_config(folder / "config.json").get("model_type")
        name = _MODEL_TYPE_CLASS.get(model_type)
        if name is None and path.suffix == ".spm":
            name = "MarianTokenizer"
    name = name.removesuffix("Fast") if name else name
    if name not in SPM_CLASSES:
        said = f"is for {name}" if name else "names no tokenizer class (tokenizer_config.json)"
        raise InputError(
            f"{path} is a SentencePiece model that {said}: attnviz builds SentencePiece tokenizers "
            f"of {', '.join(SPM_CLASSES)}; pass --tokenizer PATH to the model's tokenizer.json")
    return name, config


def spm_pipeline(model: SpmModel, class_name: str, config: dict, path: Path):
    """The ``tokenizers.Tokenizer`` transformers builds for ``class_name`` (T5Tokenizer or
    LlamaTokenizer) from ``model``, its special tokens registered; returns it and the eos text."""
    if class_name == "T5Tokenizer":
        backend, extra = _t5(model, config, path)
    else:
        backend, extra = _llama(model, config, path), []
    named = {**_DEFAULTS[class_name], **{k: v for k, v in config.items()
                                         if k in _NAMED or (k.endswith("_token") and isinstance(v, str))}}
    _register(backend, model, config, named, extra)
    eos = named.get("eos_token")
    eos = None if eos is None else str(_added_token(eos))
    if class_name == "T5Tokenizer":
        _template(backend, None, eos, path)
    else:  # update_post_processor: add_bos_token / add_eos_token as the file says (default off)
        bos = named.get("bos_token")
        _template(backend, str(_added_token(bos)) if bos and config.get("add_bos_token") else None,
                  eos if config.get("add_eos_token") else None, path)
    backend.no_truncation()
    backend.no_padding()
    return backend, eos


def _t5(model: SpmModel, config: dict, path: Path):
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    if model.kind != "unigram":
        raise InputError(f"{path}: a T5Tokenizer SentencePiece model must be unigram, this one is "
                         f"{model.kind}")
    extra_ids = config.get("extra_ids", 100)
    if not isinstance(extra_ids, int) or isinstance(extra_ids, bool) or extra_ids < 0:
        raise InputError(f"{path.parent / 'tokenizer_config.json'}: extra_ids must be a whole "
                         f"number >= 0, not {extra_ids!r}")
    if len(model.pieces) < 3:
        raise InputError(f"{path}: a T5 SentencePiece model has <pad>, </s> and <unk> first; this "
                         f"one has {len(model.pieces)} pieces")
    extra = [f"<extra_id_{i}>" for i in range(extra_ids - 1, -1, -1)]
    vocab = [(p.piece, p.score) for p in model.pieces] + [(token, 0.0) for token in extra]
    backend = Backend(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    if model.precompiled_charsmap:
        backend.normalizer = normalizers.Precompiled(model.precompiled_charsmap)
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)])
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    return backend, extra[::-1]  # registered <extra_id_0> first, as T5Tokenizer.__init__ lists them


def _llama(model: SpmModel, config: dict, path: Path):
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models

    if model.kind != "bpe":
        raise InputError(f"{path}: a LlamaTokenizer SentencePiece model must be bpe, this one is "
                         f"{model.kind}")
    recipe = _recipe_llama(config)
    vocab = {p.piece: i for i, p in enumerate(model.pieces)}
    if len(vocab) != len(model.pieces):
        raise InputError(f"{path}: a piece is in the model twice")
    options = {k: v for k, v in recipe["bpe"].items() if v is not None}
    backend = Backend(models.BPE(vocab=vocab, merges=generate_merges(vocab), **options))
    backend.normalizer = recipe["normalizer"]
    backend.pre_tokenizer = recipe["pre_tokenizer"]
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if config.get("add_prefix_space") is not False:
        steps.append(decoders.Strip(content=" ", left=1))
    backend.decoder = decoders.Sequence(steps)
    return backend


def _register(backend, model: SpmModel, config: dict, named: dict, extra: list[str]) -> None:
    """Added and special tokens in transformers' order (module docstring), those of the
    vocabulary only."""
    from tokenizers import AddedToken

    def special(content: str) -> AddedToken:
        return AddedToken(content, special=True, normalized=False)

    tokens: list[AddedToken] = []
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        for _, value in sorted(decoder.items(), key=lambda item: int(item[0])):
            token = _added_token(value)
            tokens.append(token if isinstance(token, AddedToken) else special(str(token)))
    for key in _NAMED + tuple(k for k in named if k not in _NAMED):
        if named.get(key) is not None:
            token = _added_token(named[key])
            tokens.append(special(str(token)) if isinstance(token, str) else token)
    bpe = model.kind == "bpe"
    for piece in model.pieces:
        if piece.type == CONTROL:
            tokens.append(special(piece.piece))
        elif piece.type == USER_DEFINED and bpe:
            tokens.append(AddedToken(piece.piece, special=False, normalized=False))
    tokens += [special(token) for token in extra]
    vocabulary = backend.get_vocab(with_added_tokens=False)
    seen: dict[str, AddedToken] = {}
    for token in tokens:
        if token.content in vocabulary and token.content not in seen:
            seen[token.content] = token
    named_text = {str(_added_token(v)) for v in named.values() if v is not None}
    for token in seen.values():
        if token.content in named_text:
            token.special = True
    if seen:
        backend.add_tokens(list(seen.values()))


def _template(backend, bos: str | None, eos: str | None, path: Path) -> None:
    from tokenizers import processors

    specials = []
    for token in (bos, eos):
        if token is not None:
            token_id = backend.token_to_id(token)
            if token_id is None:
                raise InputError(f"{path}: its special token {token!r} is not a piece of the model")
            specials.append((token, token_id))
    single = " ".join([*([f"{bos}:0"] if bos else []), "$A:0", *([f"{eos}:0"] if eos else [])])
    pair = " ".join([single, *([f"{bos}:1"] if bos else []), "$B:1", *([f"{eos}:1"] if eos else [])])
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                           special_tokens=specials)


# -- Marian: SentencePiece's own encoding, pieces through vocab.json -------------------------------


class SpmPieces:
    """The pieces ``SentencePieceProcessor.encode(text, out_type=str)`` emits, from a
    ``tokenizers`` pipeline built as transformers' ``build_tokenizer_from_spm_proto`` builds
    it (``legacy=True``): the model's own normalizer spec (the charsmap, extra spaces removed,
    spaces escaped as ``▁``, the dummy prefix), its Unigram (or BPE with merges ranked by
    score), user-defined pieces kept whole. Two corrections make it SentencePiece's: control,
    unknown and unused pieces never match the text (``</s>`` typed in a text is ``<``, ``/``
    ...), and an unknown stretch is emitted as its own text (SentencePiece's surface; Marian
    then looks it up in ``vocab.json``), not as ``<unk>``."""

    def __init__(self, model: SpmModel, path: Path):
        from tokenizers import Regex, models, normalizers, pre_tokenizers
        from tokenizers import Tokenizer as Backend

        self.model, self.unk_id = model, model.unk_id
        user_defined = [p.piece for p in model.pieces if p.type == USER_DEFINED]
        if model.kind == "unigram":
            vocab = [(p.piece if p.type in _MATCHED else f"\uffff{i}\uffff", p.score)
                     for i, p in enumerate(model.pieces)]
            backend = Backend(models.Unigram(vocab, unk_id=model.unk_id,
                                             byte_fallback=model.byte_fallback))
        elif model.kind == "bpe":
            vocab = {p.piece: i for i, p in enumerate(model.pieces)}
            if len(vocab) != len(model.pieces):
                raise InputError(f"{path}: a piece is in the model twice")
            normal = {p.piece: (p.score, i) for i, p in enumerate(model.pieces) if p.type == NORMAL}
            ranked = sorted((-score, i, token[:k], token[k:]) for token, (score, i) in normal.items()
                            for k in range(1, len(token)) if token[:k] in normal and token[k:] in normal)
            backend = Backend(models.BPE(
                vocab=vocab, merges=[(left, right) for _, _, left, right in ranked],
                unk_token=model.pieces[model.unk_id].piece, fuse_unk=True,
                byte_fallback=model.byte_fallback, dropout=None, ignore_merges=bool(user_defined)))
        else:
            raise InputError(f"{path}: a {model.kind} SentencePiece model; attnviz reads unigram "
                             "and bpe ones")
        steps = []
        if model.precompiled_charsmap:
            steps.append(normalizers.Precompiled(model.precompiled_charsmap))
        if model.remove_extra_whitespaces:  # spaces only: SentencePiece leaves newlines alone
            steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""),
                      normalizers.Replace(Regex(" {2,}"), " ")]
        if model.escape_whitespaces:
            steps.append(normalizers.Replace(" ", "\u2581"))
        if model.add_dummy_prefix:  # Metaspace adds no prefix to a text starting with ▁; spm does
            steps.append(normalizers.Replace(Regex(r"\A\u2581"), "\u2581\u2581"))
        self.normalizer = normalizers.Sequence(steps)
        pre = []
        if model.add_dummy_prefix:
            pre.append(pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always",
                                                split=False))
        if user_defined:
            pattern = "|".join(map(re.escape, sorted(user_defined, key=len, reverse=True)))
            pre.append(pre_tokenizers.Split(Regex(pattern), behavior="isolated"))
        self.pre_tokenizer = pre_tokenizers.Sequence(pre) if pre else None
        self.backend = backend

    def pieces(self, text: str) -> list[str]:
        """The pieces of ``text`` (no special tokens in it), as SentencePiece emits them."""
        normalized = self.normalizer.normalize_str(text)
        words = (self.pre_tokenizer.pre_tokenize_str(normalized) if self.pre_tokenizer
                 else [(normalized, None)])
        out = []
        for word, _ in words:
            raw = word.encode()
            for token in self.backend.model.tokenize(word):
                start, end = token.offsets  # in bytes
                out.append(raw[start:end].decode() if token.id == self.unk_id else token.value)
        return out


# The pieces SentencePiece matches against a text (control, unknown and unused ones it never does).
_MATCHED = (NORMAL, USER_DEFINED, BYTE)


def marian_vocab(path: Path) -> dict[str, int]:
    """Marian's ``vocab.json``: piece -> id, checked."""
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" ({exc.msg} at line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise InputError(f"{path} is not valid JSON{where}: Marian's vocab.json is damaged") from None
    if not isinstance(vocab, dict) or not vocab or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in vocab.values()):
        raise InputError(f"{path} is not Marian's vocab.json: an object of pieces to ids >= 0")
    return vocab
