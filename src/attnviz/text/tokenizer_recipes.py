"""How a ``tokenizer.json`` is set up as transformers 5 sets it up: the per-class recipes.

:func:`set_up_like_transformers` takes a ``tokenizers.Tokenizer`` read from a ``tokenizer.json`` and
the folder holding it, reads ``tokenizer_config.json`` (else ``config.json``, ``special_tokens_map.json``)
beside it, and leaves the backend in the state ``AutoTokenizer.from_pretrained(folder)`` leaves it:

- **Which pipeline.** transformers 5 rebuilds the normalizer, pre-tokenizer and BPE options of some
  classes named by ``tokenizer_class`` (from ``tokenizer_config.json``, else ``config.json``'s
  ``tokenizer_class`` or ``model_type``), keeping only the vocabulary, merges and post-processor of
  ``tokenizer.json``; we do the same (:data:`_RECIPES`): ``GPT2Tokenizer`` (byte-level, SmolLM2),
  ``Qwen2Tokenizer`` (NFC + Qwen's split pattern + byte-level), ``LlamaTokenizer`` (Metaspace ``▁``
  without normalizer, byte fallback; the prepend scheme from ``add_prefix_space`` / ``legacy``;
  a byte-level ``tokenizer.json`` declared ``LlamaTokenizer`` is read as it is, as AutoTokenizer
  does), ``GPTNeoXTokenizer`` and ``GemmaTokenizer``; the encoders' ``BertTokenizer`` and
  ``DistilBertTokenizer`` (WordPiece: ``BertNormalizer`` from ``do_lower_case``,
  ``tokenize_chinese_chars``, ``strip_accents``; ``[CLS] $A [SEP] $B:1 [SEP]:1``) and
  ``RobertaTokenizer`` (byte-level, ``<s> $A </s></s> $B </s>``), whose post-processor is
  rebuilt too. ``PreTrainedTokenizerFast`` (Llama 3, SmolLM3, ModernBERT), no class, or a
  class not in that table: ``tokenizer.json`` as it is. Added and named
  special tokens (``bos_token``, ``eos_token``, ... with the class's defaults, ``added_tokens_decoder``,
  else ``special_tokens_map.json`` and the ``added_tokens`` of ``tokenizer.json``) are registered
  in the order transformers registers them, so the same strings are special.

:mod:`attnviz.text.tokenization` (the tokenizers themselves, finding and loading) uses it; this module
imports nothing of it. ``tokenizers`` is imported inside the functions, never at import time.
"""

from __future__ import annotations

import json
from pathlib import Path

from attnviz.core.errors import InputError

__all__ = ["QWEN2_PAT_STR", "set_up_like_transformers"]

# transformers' Qwen2Tokenizer.PRETOKENIZE_REGEX (digits one by one, unlike Llama 3's \p{N}{1,3}).
QWEN2_PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_NAMED_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
_ADDED_TOKEN_FIELDS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")


def _read_json_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(value, dict):
        raise InputError(f"{path} is not a JSON object")
    return value


def chat_setup(folder: Path) -> tuple[str | None, dict]:
    """The chat template beside a tokenizer.json (``tokenizer_config.json``'s ``chat_template``,
    its ``default`` entry when it lists named templates, else ``chat_template.jinja``) and the
    strings of ``bos_token``/``eos_token`` it is rendered with, as transformers reads them."""
    config = _read_json_config(folder / "tokenizer_config.json")
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    tokens = {}
    for name in ("bos_token", "eos_token"):
        value = config.get(name)
        tokens[name] = value.get("content") if isinstance(value, dict) else value
    return (template if isinstance(template, str) else None), tokens


def _added_token(value):
    """A transformers-style token value (string, ``{"content": ...}`` dict, AddedToken) as str/AddedToken."""
    from tokenizers import AddedToken

    if isinstance(value, dict) and "content" in value:
        return AddedToken(**{k: v for k, v in value.items() if k in _ADDED_TOKEN_FIELDS})
    return value


def _prepend_scheme(kwargs: dict) -> str:
    """transformers' _get_prepend_scheme for LlamaTokenizer (add_prefix_space None means True)."""
    add_prefix_space = kwargs.get("add_prefix_space")
    if add_prefix_space is None or add_prefix_space:
        return "first" if not kwargs.get("legacy", False) else "always"
    return "never"


def _bpe_options(**options) -> dict:
    """A BPE model's options as ``tokenizers.models.BPE(vocab, merges, **options)`` leaves them."""
    defaults = {
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": False,
    }
    return {**defaults, **options}


def _recipe_gpt2(kwargs):
    from tokenizers import pre_tokenizers

    return {
        "defaults": {
            "unk_token": "<|endoftext|>",
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
        },
        "bpe": _bpe_options(continuing_subword_prefix="", end_of_word_suffix=""),
        "normalizer": None,
        "pre_tokenizer": pre_tokenizers.ByteLevel(
            add_prefix_space=bool(kwargs.get("add_prefix_space", False))
        ),
        "byte_level": True,
    }


def _recipe_qwen2(kwargs):
    from tokenizers import Regex, normalizers, pre_tokenizers

    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PAT_STR), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=bool(kwargs.get("add_prefix_space")), use_regex=False),
        ]
    )
    return {
        "defaults": {
            "unk_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
        },
        "bpe": _bpe_options(continuing_subword_prefix="", end_of_word_suffix=""),
        "normalizer": normalizers.NFC(),
        "pre_tokenizer": pre,
        "byte_level": True,
        "add_all_special": True,  # Qwen2Tokenizer.__init__ adds every special token once more
    }


def _recipe_llama(kwargs):
    from tokenizers import pre_tokenizers

    return {
        "defaults": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
        "bpe": _bpe_options(fuse_unk=True, byte_fallback=True),
        "normalizer": None,
        "pre_tokenizer": pre_tokenizers.Metaspace(
            replacement="\u2581", prepend_scheme=_prepend_scheme(kwargs), split=False
        ),
        "byte_level": False,
    }


def _recipe_gpt_neox(kwargs):
    from tokenizers import normalizers, pre_tokenizers

    pre = pre_tokenizers.ByteLevel(
        add_prefix_space=bool(kwargs.get("add_prefix_space", False)),
        trim_offsets=bool(kwargs.get("trim_offsets", True)),
    )
    defaults = {"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    return {
        "defaults": {**defaults, "pad_token": "<|padding|>"},
        "bpe": _bpe_options(continuing_subword_prefix="", end_of_word_suffix=""),
        "normalizer": normalizers.NFC(),
        "pre_tokenizer": pre,
        "byte_level": True,
        "no_post_processor": True,  # GPTNeoXTokenizer calls update_post_processor(): nothing added
    }


def _recipe_gemma(kwargs):
    from tokenizers import normalizers, pre_tokenizers

    unk = kwargs.get("unk_token", "<unk>")
    return {
        "defaults": {
            "unk_token": "<unk>",
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "pad_token": "<pad>",
            "mask_token": "<mask>",
        },
        "bpe": _bpe_options(fuse_unk=True, byte_fallback=True, unk_token=None if unk is None else str(unk)),
        "normalizer": normalizers.Replace(" ", "\u2581"),
        "pre_tokenizer": pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False),
        "byte_level": False,
    }


def _recipe_bert(kwargs):
    from tokenizers import normalizers, pre_tokenizers, processors

    def post_processor(named: dict, token_id) -> object:  # BertTokenizer.__init__'s template
        cls, sep = str(named["cls_token"]), str(named["sep_token"])
        return processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, token_id(cls)), (sep, token_id(sep))])

    return {
        "defaults": {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                     "cls_token": "[CLS]", "mask_token": "[MASK]"},
        "model": "WordPiece",
        "normalizer": normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=bool(kwargs.get("tokenize_chinese_chars", True)),
            strip_accents=kwargs.get("strip_accents"),
            lowercase=bool(kwargs.get("do_lower_case", True))),
        "pre_tokenizer": pre_tokenizers.BertPreTokenizer(),
        "byte_level": False,
        "post_processor": post_processor,
    }


def _recipe_roberta(kwargs):
    from tokenizers import pre_tokenizers, processors

    add_prefix_space = bool(kwargs.get("add_prefix_space", False))

    def post_processor(named: dict, token_id) -> object:  # RobertaTokenizer.__init__'s
        cls, sep = str(named["cls_token"]), str(named["sep_token"])
        return processors.RobertaProcessing((sep, token_id(sep)), (cls, token_id(cls)),
                                            bool(kwargs.get("trim_offsets", True)),
                                            add_prefix_space)

    return {
        "defaults": {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
                     "cls_token": "<s>", "unk_token": "<unk>", "pad_token": "<pad>",
                     "mask_token": "<mask>"},
        "bpe": _bpe_options(continuing_subword_prefix="", end_of_word_suffix=""),
        "normalizer": None,
        "pre_tokenizer": pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space),
        "byte_level": True,
        "post_processor": post_processor,
    }


# transformers 5 classes whose __init__ rebuilds the pipeline around tokenizer.json's vocabulary.
_RECIPES = {
    "BertTokenizer": _recipe_bert,
    "DistilBertTokenizer": _recipe_bert,
    "RobertaTokenizer": _recipe_roberta,
    "BartTokenizer": _recipe_roberta,  # transformers 5: an alias of RobertaTokenizer
    "GPT2Tokenizer": _recipe_gpt2,
    "Qwen2Tokenizer": _recipe_qwen2,
    "LlamaTokenizer": _recipe_llama,
    "GPTNeoXTokenizer": _recipe_gpt_neox,
    "GemmaTokenizer": _recipe_gemma,
}
# config.json model_type -> class, for a tokenizer_config.json that names none (transformers' mapping).
_MODEL_TYPE_CLASS = {
    "gpt2": "GPT2Tokenizer",
    "qwen2": "Qwen2Tokenizer",
    "qwen2_moe": "Qwen2Tokenizer",
    "qwen3": "Qwen2Tokenizer",
    "qwen3_moe": "Qwen2Tokenizer",
    "gpt_neox": "GPTNeoXTokenizer",
    "gemma": "GemmaTokenizer",
    "gemma2": "GemmaTokenizer",
    "gemma3": "GemmaTokenizer",
    "gemma3_text": "GemmaTokenizer",
    "bert": "BertTokenizer",
    "distilbert": "DistilBertTokenizer",
    "roberta": "RobertaTokenizer",
    "bart": "RobertaTokenizer",
}


def _tokenizer_class(config: dict, model_config: dict) -> str | None:
    name = config.get("tokenizer_class") or model_config.get("tokenizer_class")
    if not name:
        return _MODEL_TYPE_CLASS.get(model_config.get("model_type"))
    return name if name == "PreTrainedTokenizerFast" else name.removesuffix("Fast")


def _is_byte_level(backend) -> bool:
    parts = (backend.pre_tokenizer, backend.decoder, backend.normalizer)
    return any(part is not None and b'"ByteLevel"' in part.__getstate__() for part in parts)


def set_up_like_transformers(backend, data: bytes, folder: Path):
    """Register added and special tokens (and rebuild the pipeline) as transformers 5 does.

    Mirrors ``AutoTokenizer.from_pretrained`` -> ``PreTrainedTokenizerBase._from_pretrained`` ->
    ``TokenizersBackend.__init__`` (and the class's own ``__init__``) for a folder with a
    tokenizer.json, in the same order, so the tokenizers library ends in the same state.
    Returns the backend to use, whether it is byte-level, the class name and the eos string.
    """
    from tokenizers import AddedToken

    config = _read_json_config(folder / "tokenizer_config.json")
    model_config = {}
    if not config.get("tokenizer_class"):
        model_config = _read_json_config(folder / "config.json")
    class_name = _tokenizer_class(config, model_config)
    if class_name == "LlamaTokenizer" and b'"ByteLevel"' in data:
        class_name = "TokenizersBackend"  # AutoTokenizer's own correction for byte-level "Llama" files
    kwargs = {
        k: v for k, v in config.items() if k not in ("add_bos_token", "add_eos_token", "tokenizer_class")
    }
    if "additional_special_tokens" in kwargs and not kwargs.get("extra_special_tokens"):
        kwargs["extra_special_tokens"] = kwargs.pop("additional_special_tokens")
    if "added_tokens_decoder" in kwargs:
        added = {int(i): _added_token(t) for i, t in kwargs["added_tokens_decoder"].items()}
    else:  # legacy: special_tokens_map.json, then the tokenizer.json's own added tokens
        for key, value in _read_json_config(folder / "special_tokens_map.json").items():
            if isinstance(value, dict) and key != "extra_special_tokens":
                value = AddedToken(**{**_added_token(value).__getstate__(), "special": True})
            elif key == "extra_special_tokens" and isinstance(value, list):
                existing = list(kwargs.get("extra_special_tokens") or [])
                for token in map(_added_token, value):
                    if token not in existing:
                        existing.append(token)
                value = existing
            kwargs[key] = value
        added = backend.get_added_tokens_decoder()
    kwargs = {k: _added_token(v) if k.endswith("_token") else v for k, v in kwargs.items()}
    if "additional_special_tokens" in kwargs and "extra_special_tokens" not in kwargs:
        kwargs["extra_special_tokens"] = kwargs.pop("additional_special_tokens")
    added_by_text = {str(token): token for token in added.values() if not isinstance(token, str)}

    recipe = _RECIPES[class_name](kwargs) if class_name in _RECIPES else None
    if recipe is not None and backend.model.__class__.__name__ == recipe.get("model", "BPE"):
        backend = _rebuild(backend, recipe)
    else:
        recipe = None

    # The named special tokens (bos, eos, ..., then model-specific *_token keys), class defaults first.
    named: dict[str, object] = dict(recipe["defaults"]) if recipe else {}
    extra: list = []
    for key, value in kwargs.items():
        if key in _NAMED_TOKEN_KEYS or (key.endswith("_token") and isinstance(value, (str, AddedToken))):
            named[key] = value
        elif key == "extra_special_tokens" and isinstance(value, dict):
            named.update({k: _added_token(v) for k, v in value.items()})
        elif key == "extra_special_tokens" and isinstance(value, (list, tuple)):
            extra = [_added_token(v) for v in value]
    ordered = [k for k in _NAMED_TOKEN_KEYS if k in named] + [k for k in named if k not in _NAMED_TOKEN_KEYS]
    named_values = []
    for key in ordered:
        value = named[key]
        if value is None:
            continue
        if isinstance(value, str) and value in added_by_text:
            value = added_by_text[value]
        named_values.append(value)
    named_text = {str(v) for v in named_values}

    to_add = [added[i] for i in sorted(added)]
    known = {token.content for token in backend.get_added_tokens_decoder().values()} | {
        str(t) for t in to_add
    }
    for value in [*named_values, *extra]:
        if str(value) not in known and value not in to_add:
            to_add.append(value)
            known.add(str(value))
    tokens = []
    for token in to_add:
        if isinstance(token, str):
            token = AddedToken(token, special=True)
        elif not token.special and str(token) in named_text:
            token.special = True
        tokens.append(token)
    if tokens:
        backend.add_tokens(tokens)
    if recipe and recipe.get("add_all_special"):
        seen: list[str] = []
        for value in [*named_values, *extra]:
            if str(value) not in seen:
                seen.append(str(value))
        backend.add_tokens([AddedToken(text, special=True) for text in seen])
    if recipe and recipe.get("no_post_processor"):
        backend.post_processor = None
    if recipe and recipe.get("post_processor"):  # built by the class, with the tokens' ids
        backend.post_processor = recipe["post_processor"](named, backend.token_to_id)
    eos = named.get("eos_token")
    byte_level = recipe["byte_level"] if recipe else _is_byte_level(backend)
    return backend, byte_level, class_name, None if eos is None else str(eos)


def _rebuild(backend, recipe: dict):
    """A fresh backend around the same BPE vocabulary and merges, as the class's __init__ builds it."""
    from tokenizers import Tokenizer as Backend

    fresh = Backend(backend.model)  # shares the model: no copy of the vocabulary
    for option, value in recipe.get("bpe", {}).items():
        setattr(fresh.model, option, value)
    fresh.normalizer = recipe["normalizer"]
    fresh.pre_tokenizer = recipe["pre_tokenizer"]
    fresh.post_processor = backend.post_processor
    return fresh
