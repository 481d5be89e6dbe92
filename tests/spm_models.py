"""Tiny SentencePiece models trained here with the ``sentencepiece`` library (unigram and bpe,
byte fallback on and off) and the tokenizer folders real repos ship around them: T5's
``spiece.model``, Llama 2's ``tokenizer.model``, Marian's ``source.spm``, ``target.spm`` and
``vocab.json`` — never a tokenizer.json."""

from __future__ import annotations

import io
import json
from pathlib import Path

ENGLISH = ("the cat sat on mat john gave a drink to mary when they went store attention is all you "
           "need heads attend tokens house small tree tall teacher student reads book writes letter "
           "river mountain morning evening yesterday tomorrow quickly slowly because although "
           "translation language model over under between jumps lazy fox brown quiet zebra "
           "vivid joke pizza box wax 1984 1234 3.14159 42 2024 naïve café résumé").split()
GERMAN = ("die katze sass auf der matte das haus ist klein und sehr schön baum hund über straße "
          "größer lehrer schüler liest buch schreibt brief fluss berg morgen abend gestern heute "
          "schnell langsam weil obwohl übersetzung sprache modell zwischen springt fauler fuchs "
          "brauner ruhig zebra witz kiste wachs 1984 1234 3,14159 42 2024 東京 日本 首都 北京 中国").split()


def corpus(words: list[str], n: int = 500) -> list[str]:
    """Sentences made of ``words`` in a fixed, varied order."""
    lines = []
    for i in range(n):
        picked = [words[(i * 7 + j * j * 3 + j) % len(words)] for j in range(5 + i % 9)]
        lines.append(" ".join(picked).capitalize() + (".", "!", "?", ",", ":", ";")[i % 6])
    return lines


def train(lines: list[str], **options) -> bytes:
    """A SentencePiece model trained on ``lines`` (the bytes of its .model file)."""
    import sentencepiece

    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=out, minloglevel=2, character_coverage=1.0,
        hard_vocab_limit=False, **options)
    return out.getvalue()


def t5_model(byte_fallback: bool = False) -> bytes:
    """A unigram with T5's ids (<pad> 0, </s> 1, <unk> 2, no <s>) and nmt_nfkc's charsmap."""
    return train(corpus(ENGLISH + GERMAN), model_type="unigram", vocab_size=300 + 256 * byte_fallback,
                 pad_id=0, eos_id=1, unk_id=2, bos_id=-1, byte_fallback=byte_fallback)


def llama_model(byte_fallback: bool = True) -> bytes:
    """A BPE as Llama 2's: identity normalizer, spaces kept, digits split, byte fallback."""
    return train(corpus(ENGLISH + GERMAN), model_type="bpe", vocab_size=300 + 256 * byte_fallback,
                 normalization_rule_name="identity", remove_extra_whitespaces=False,
                 split_digits=True, byte_fallback=byte_fallback, user_defined_symbols=["<tool>"])


def write_t5_tokenizer(folder: Path, model: bytes, extra_ids: int = 100) -> int:
    """spiece.model and T5's tokenizer_config.json; returns the token count with extra ids."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(model)
    extra = [f"<extra_id_{i}>" for i in range(extra_ids)]
    config = {"tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "unk_token": "<unk>",
              "pad_token": "<pad>", "extra_ids": extra_ids, "additional_special_tokens": extra,
              "model_max_length": 512}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
         "additional_special_tokens": extra}))
    return _piece_count(model) + extra_ids


def write_llama_tokenizer(folder: Path, model: bytes, **config) -> Path:
    """tokenizer.model and Llama 2's tokenizer_config.json (``config`` overrides: legacy ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model)
    token = {"__type": "AddedToken", "lstrip": False, "normalized": False, "rstrip": False,
             "single_word": False}
    settings = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
                "bos_token": {**token, "content": "<s>"}, "eos_token": {**token, "content": "</s>"},
                "unk_token": {**token, "content": "<unk>"}, "pad_token": None, "legacy": False,
                "clean_up_tokenization_spaces": False, "sp_model_kwargs": {}, **config}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


def marian_models(kind: str = "unigram", byte_fallback: bool = False) -> tuple[bytes, bytes]:
    """source.spm (English) and target.spm (German): two languages, two segmentations."""
    options = {"model_type": kind, "byte_fallback": byte_fallback, "user_defined_symbols": ["<tool>"],
               "vocab_size": (200 if kind == "unigram" else 250) + 256 * byte_fallback}
    return train(corpus(ENGLISH), **options), train(corpus(GERMAN), **options)


DROPPED = 3  # pieces of the models that vocab.json leaves out: they become <unk>


def write_marian_tokenizer(folder: Path, source: bytes, target: bytes) -> int:
    """source.spm, target.spm, vocab.json (</s> 0, <unk> 1, both models' pieces but a few,
    two language codes, <pad> last) and tokenizer_config.json; returns the vocabulary size."""
    from sentencepiece import sentencepiece_model_pb2

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "source.spm").write_bytes(source)
    (folder / "target.spm").write_bytes(target)
    pieces = []
    for data in (source, target):
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(data)
        normal = [p.piece for p in proto.pieces if p.type in (1, 4, 6)]  # normal, user, byte
        pieces += [p for p in normal[:-DROPPED] if p not in pieces]
    vocab = {"</s>": 0, "<unk>": 1, ">>de<<": 2, ">>fr<<": 3}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    vocab["<pad>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"source_lang": "en", "target_lang": "de", "model_max_length": 512,
         "tokenizer_class": "MarianTokenizer", "separate_vocabs": False}))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}))
    return len(vocab)


def _piece_count(model: bytes) -> int:
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_proto=model).get_piece_size()
