"""Helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path

SHORT_TEXT = "Your journey starts with one step"


def small_options(heads: int = 4, d_model: int = 32) -> list[str]:
    return ["--heads", str(heads), "--d-model", str(d_model)]


def make_hf_checkpoint(folder: Path, n_layer: int, n_head: int, n_embd: int,
                       n_positions: int = 128, seed: int = 0, lm_head: bool = False,
                       safe: bool = True) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions)
    torch.manual_seed(seed)
    model = (GPT2LMHeadModel if lm_head else GPT2Model)(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln_" not in name:
                param.normal_(0.0, 0.3)
    model.save_pretrained(folder, safe_serialization=safe)
    return folder


# --- the Llama-style families ---------------------------------------------------------------

TRAINING_TEXT = (
    "The cat sat on the mat. The dog sat on the log. When Mary and John went to the store, "
    "John gave a drink to Mary. Attention is all you need; heads attend to tokens. "
    "1234567890 !?.,;:'\"()[]{} <> naïve café 東京 🙂 \n\t  spaces   and\nnewlines\n"
)


def write_bpe_tokenizer(folder: Path, vocab_size: int = 300, bos: str | None = "<|begin_of_text|>",
                        specials: tuple[str, ...] = ("<|end_of_text|>",)) -> Path:
    """A byte-level BPE trained with `tokenizers` (as Llama 3's and Qwen's are), saved as
    tokenizer.json + tokenizer_config.json; ``bos`` is prepended by its post-processor
    (Llama 3 style), or nothing is (Qwen style) when None."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ([bos] if bos else []) + list(specials)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TRAINING_TEXT] * 20, trainer)
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))])
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096,
              "bos_token": bos, "eos_token": specials[0] if specials else None}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


FAMILY_CONFIGS = {
    # model_type: (transformers config class, keyword arguments)
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": 5}),
    "qwen2": ("Qwen2Config", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}),
    "qwen3": ("Qwen3Config", {}),
    "smollm3": ("SmolLM3Config", {"no_rope_layer_interval": 2}),
}


def make_family_checkpoint(folder: Path, family: str, *, n_layers: int = 3, hidden: int = 64,
                           heads: int = 4, kv_heads: int = 2, head_dim: int | None = None,
                           vocab_size: int = 300, std: float = 0.25, seed: int = 0,
                           dtype=None, bos: str | None = "<|begin_of_text|>",
                           tokenizer: bool = True, **overrides) -> Path:
    """A tiny random checkpoint of ``family`` saved by transformers itself (its
    ``*ForCausalLM``, safetensors), weights spread until attention is peaked; norms near 1.
    Beside it, a byte-level BPE tokenizer whose ids fit the embedding."""
    import torch
    import transformers

    class_name, defaults = FAMILY_CONFIGS[family]
    kwargs = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=n_layers, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, max_position_embeddings=2048,
                  tie_word_embeddings=False, rms_norm_eps=1e-6, pad_token_id=None,
                  bos_token_id=None, eos_token_id=None)
    if head_dim is not None:
        kwargs["head_dim"] = head_dim
    kwargs.update(defaults)
    kwargs.update(overrides)
    config = getattr(transformers, class_name)(**kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "q_norm" in name or "k_norm" in name:  # QK-norm flattens the scores: undo it
                param.uniform_(2.0, 3.0)
            elif "norm" in name:
                param.uniform_(0.7, 1.3)
            else:
                param.normal_(0.0, std)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer:
        write_bpe_tokenizer(folder, vocab_size=vocab_size, bos=bos)
    return folder


# --- text that tokenizers get wrong: whitespace runs, emoji sequences, scripts, controls -----

TRICKY_TEXT = [
    " ",
    "   ",
    "\n",
    "\r\n",
    "\t",
    "\n\n\n",
    "  \n ",
    "🙂",
    "👨‍👩‍👧",
    "🇫🇷",
    "日本語",
    "中文",
    "한국어",
    "e\u0301",  # NFC composes it
    "\u212b",  # the Angstrom sign, NFC makes it Å
    "\x00",
    "\x07",
    "\x1b[31m",
    "\u200b",
    "\u2581",
    "'s",
    "'LL",
    "123456",
    "3.14",
    "Hello",
    " world",
    "def f(x):",
    "ß",
    "Ġ",
]


def text_strategy(fragments: list[str]):
    """Hypothesis texts: runs of random characters and of ``fragments`` (special-token
    strings, ``TRICKY_TEXT``), at most 10 pieces, never empty."""
    from hypothesis import strategies as st

    return (st.lists(st.one_of(st.text(max_size=6), st.sampled_from(fragments)), min_size=1, max_size=10)
            .map("".join).filter(bool))


def one_layer(arrays, args=()) -> dict:
    """An ``export`` of one layer (not ``--layer all``) with its layer axis, ``(1, …)``,
    taken off the per-layer arrays: what the tests written for 0.1's shapes compare."""
    arrays = dict(arrays)
    if "all" in [str(a) for a in args] or len(arrays.get("layers", [])) != 1:
        return arrays
    for name, value in arrays.items():
        if name in ("weights", "norms", "attn_input") or name.startswith(("W_", "b_")):
            assert value.shape[0] == 1, name
            arrays[name] = value[0]
    return arrays
# --- encoders: BERT, RoBERTa, DistilBERT, ModernBERT -----------------------------------------

ENCODER_TEXT = (
    "The cat sat on the mat. It was tired. The dog sat on the log. When Mary and John went to "
    "the store, John gave a drink to Mary. Attention is all you need; naïve café 東京 It was "
    "tired because it had run. Les chats dorment. "
)


def write_encoder_tokenizer(folder: Path, family: str, vocab_size: int = 300) -> dict:
    """The tokenizer.json (+ tokenizer_config.json) of an encoder ``family``, trained with
    ``tokenizers`` as the real ones are built: WordPiece with [CLS]/[SEP] for bert and
    distilbert (``BertTokenizer`` rebuilds it from ``do_lower_case``), byte-level BPE with
    ``<s> A </s></s> B </s>`` for roberta, byte-level BPE with [CLS]/[SEP] for modernbert
    (``PreTrainedTokenizerFast``). Returns the special tokens' ids."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if family in ("bert", "distilbert"):
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    else:
        specials = (["<s>", "<pad>", "</s>", "<unk>", "<mask>"] if family == "roberta" else
                    ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([ENCODER_TEXT] * 20, trainer)
    ids = {s: tok.token_to_id(s) for s in specials}
    if family == "roberta":
        tok.post_processor = processors.RobertaProcessing(("</s>", ids["</s>"]), ("<s>", ids["<s>"]))
        config = {"tokenizer_class": "RobertaTokenizer", "model_max_length": 512}
    else:
        cls, sep = "[CLS]", "[SEP]"
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, ids[cls]), (sep, ids[sep])])
        config = ({"tokenizer_class": "PreTrainedTokenizerFast", "cls_token": cls,
                   "sep_token": sep, "pad_token": "[PAD]", "unk_token": "[UNK]",
                   "mask_token": "[MASK]"} if family == "modernbert" else
                  {"tokenizer_class": "DistilBertTokenizer" if family == "distilbert"
                   else "BertTokenizer", "do_lower_case": True})
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return ids


def make_encoder_checkpoint(folder: Path, family: str, *, n_layers: int = 3, hidden: int = 32,
                            heads: int = 4, std: float = 0.3, seed: int = 0,
                            positions: int = 64, **overrides) -> Path:
    """A tiny random encoder of ``family`` saved by transformers (its ``*ForMaskedLM``, so the
    file's names carry the task model's prefix), weights spread until attention is peaked,
    beside its tokenizer (``write_encoder_tokenizer``)."""
    import torch
    import transformers

    ids = write_encoder_tokenizer(folder, family)
    vocab = len(__import__("json").loads((folder / "tokenizer.json").read_text())["model"]["vocab"])
    if family == "distilbert":
        config = transformers.DistilBertConfig(
            vocab_size=vocab, dim=hidden, n_heads=heads, n_layers=n_layers, hidden_dim=2 * hidden,
            max_position_embeddings=positions, pad_token_id=ids["[PAD]"], **overrides)
    elif family == "modernbert":
        config = transformers.ModernBertConfig(
            vocab_size=vocab, hidden_size=hidden, num_attention_heads=heads,
            num_hidden_layers=n_layers, intermediate_size=2 * hidden,
            max_position_embeddings=positions, pad_token_id=ids["[PAD]"],
            cls_token_id=ids["[CLS]"], sep_token_id=ids["[SEP]"], bos_token_id=ids["[CLS]"],
            eos_token_id=ids["[SEP]"], **{"local_attention": 4, "global_attn_every_n_layers": 2,
                                          **overrides})
    else:
        name = "RobertaConfig" if family == "roberta" else "BertConfig"
        pad = ids["<pad>"] if family == "roberta" else ids["[PAD]"]
        config = getattr(transformers, name)(
            vocab_size=vocab, hidden_size=hidden, num_attention_heads=heads,
            num_hidden_layers=n_layers, intermediate_size=2 * hidden, pad_token_id=pad,
            max_position_embeddings=positions + (pad + 1 if family == "roberta" else 0),
            type_vocab_size=1 if family == "roberta" else 2, **overrides)
    torch.manual_seed(seed)
    model = transformers.AutoModelForMaskedLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.lower():
                param.uniform_(0.7, 1.3) if name.endswith("weight") else param.normal_(0.0, 0.1)
            else:
                param.normal_(0.0, std)
    model.save_pretrained(folder, safe_serialization=True)
    return folder
