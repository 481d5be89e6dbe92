"""Tiny peaked random encoder–decoder checkpoints (T5, flan-t5, BART, Marian) saved by
transformers itself, with tokenizer.json files made here: a SentencePiece-like Unigram for
T5 and Marian, a byte-level BPE for BART."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import TRAINING_TEXT

SOURCE = "The cat sat on the mat. John gave a drink to Mary."
TARGET = "Die Katze sass auf der Matte."
VOCAB = 200


def write_unigram_tokenizer(folder: Path, tokenizer_class: str, specials: list[str],
                            eos: str = "</s>", size: int = VOCAB) -> Path:
    """A Unigram tokenizer of the test text's words, with T5's pipeline: whitespace split,
    ``▁`` prepended to every word, ``</s>`` appended. Built, not trained: ``tokenizers``'
    UnigramTrainer gives another vocabulary in every process (hash order), which made the
    tiny models' inputs, and what they generate, change from run to run. Every word of the
    text is a piece scored by its frequency, every character a piece of its own (so any
    word of these characters is read, letter by letter), nothing else: the same file in
    every run."""
    import math
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    words = Counter(f"{TRAINING_TEXT} {SOURCE} {TARGET}".split())
    total = sum(words.values())
    pieces = [[special, 0.0] for special in specials]
    pieces += [["\u2581" + word, math.log(count / total)]
               for word, count in sorted(words.items(), key=lambda item: (-item[1], item[0]))]
    pieces += [[char, -20.0] for char in sorted(set("".join(words)) | {"\u2581"})
               if [char, -20.0] not in pieces]
    tokenizer = Tokenizer(models.Unigram([tuple(piece) for piece in pieces],
                                         unk_id=specials.index("<unk>")))
    tokenizer.add_special_tokens(specials)  # as a trainer's special_tokens are
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)])
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}",
        special_tokens=[(eos, tokenizer.token_to_id(eos))])
    folder.mkdir(parents=True, exist_ok=True)
    document = json.loads(tokenizer.to_str())
    vocab = document["model"]["vocab"]  # as many pieces as the embedding has rows (some unused)
    vocab += [[f"<unused_{i}>", -100.0] for i in range(size - len(vocab))]
    (folder / "tokenizer.json").write_text(json.dumps(document))
    config = {"tokenizer_class": tokenizer_class, "eos_token": eos, "unk_token": "<unk>",
              "pad_token": "<pad>"}
    if tokenizer_class == "T5Tokenizer":
        config["extra_ids"] = 0
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def write_bart_tokenizer(folder: Path) -> Path:
    """A byte-level BPE with RoBERTa's ``<s> $A </s>`` (BART's tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    trainer = trainers.BpeTrainer(vocab_size=VOCAB + 120, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TRAINING_TEXT, SOURCE, TARGET] * 20, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0),
                                                            trim_offsets=True,
                                                            add_prefix_space=False)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "BartTokenizer", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "pad_token": "<pad>", "sep_token": "</s>",
              "cls_token": "<s>", "mask_token": "<mask>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def _spread(model, std: float) -> None:
    """Weights spread until attention is peaked; norms near 1."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.7, 1.3) if name.endswith("weight") else param.normal_(0, 0.1)
            elif "relative_attention_bias" in name:
                param.normal_(0.0, 2.0)
            else:
                param.normal_(0.0, std)


def make_t5(folder: Path, *, flan: bool = False, mt5: bool = False, seed: int = 0,
            layers: int = 2, decoder_layers: int = 2, d_model: int = 32, heads: int = 4,
            buckets: int = 8, max_distance: int = 20, vocab: int = VOCAB,
            tokenizer: bool = True) -> Path:
    """t5-small's layout (ReLU, tied head, decoder output scaled), or with ``flan`` flan-t5's
    (gated-GELU, an untied ``lm_head``, unscaled); ``mt5``: the same as model_type mt5.
    ``vocab`` rows; ``tokenizer=False``: no tokenizer files (the caller writes its own)."""
    import torch
    import transformers

    flan = flan or mt5
    config = (transformers.MT5Config if mt5 else transformers.T5Config)(
        vocab_size=vocab, d_model=d_model, d_kv=d_model // heads, d_ff=2 * d_model,
        num_layers=layers, num_decoder_layers=decoder_layers, num_heads=heads,
        relative_attention_num_buckets=buckets, relative_attention_max_distance=max_distance,
        feed_forward_proj="gated-gelu" if flan else "relu", decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1, tie_word_embeddings=not flan)
    torch.manual_seed(seed)
    model = (transformers.MT5ForConditionalGeneration if mt5 else
             transformers.T5ForConditionalGeneration)(config)
    _spread(model, 0.5)
    if flan:  # a head of its own: transformers 5 ties it unless the file differs
        model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab, d_model) * 0.5)
    model.save_pretrained(folder, safe_serialization=True)
    if flan:
        raw = json.loads((folder / "config.json").read_text())
        raw.pop("scale_decoder_outputs", None)  # as flan-t5's config.json: only the tie says it
        raw["tie_word_embeddings"] = False
        (folder / "config.json").write_text(json.dumps(raw))
    if tokenizer:
        write_unigram_tokenizer(folder, "T5Tokenizer", ["<pad>", "</s>", "<unk>"])
    return folder


def make_bart(folder: Path, *, marian: bool = False, seed: int = 0, layers: int = 2,
              decoder_layers: int = 2, d_model: int = 32, heads: int = 4,
              positions: int = 128, vocab: int = VOCAB, tokenizer: bool = True) -> Path:
    """BART (learned positions offset by 2, embedding LayerNorm) or Marian (sinusoidal
    positions, embeddings scaled by √d_model), post-norm. Marian: ``vocab`` rows (``<pad>``
    the last); ``tokenizer=False``: no tokenizer files (the caller writes its own)."""
    import torch
    import transformers

    common = dict(vocab_size=vocab if marian else VOCAB + 130, d_model=d_model,
                  encoder_layers=layers, decoder_layers=decoder_layers,
                  encoder_attention_heads=heads, decoder_attention_heads=heads,
                  encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model,
                  max_position_embeddings=positions)
    if marian:
        # Marian's ids: </s> 0, <unk> 1, …, <pad> last (its decoder start)
        config = transformers.MarianConfig(**common, pad_token_id=vocab - 1, eos_token_id=0,
                                           decoder_start_token_id=vocab - 1,
                                           forced_eos_token_id=None)
        cls = transformers.MarianMTModel
    else:
        config = transformers.BartConfig(**common, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                         decoder_start_token_id=2, forced_bos_token_id=None,
                                         forced_eos_token_id=None)
        cls = transformers.BartForConditionalGeneration
    torch.manual_seed(seed)
    model = cls(config)
    _spread(model, 0.8 if marian else 0.35)
    with torch.no_grad():
        model.final_logits_bias.normal_(0.0, 0.5)
    model.save_pretrained(folder, safe_serialization=True)
    if not tokenizer:
        return folder
    if marian:
        write_unigram_tokenizer(folder, "MarianTokenizer", ["</s>", "<unk>"], size=VOCAB - 1)
        tok = json.loads((folder / "tokenizer.json").read_text())
        # <pad> at the end of the vocabulary, as Marian's vocab.json has it
        tok["model"]["vocab"].append(["<pad>", 0.0])
        tok["added_tokens"].append({"id": VOCAB - 1, "content": "<pad>", "single_word": False,
                                    "lstrip": False, "rstrip": False, "normalized": False,
                                    "special": True})
        (folder / "tokenizer.json").write_text(json.dumps(tok))
    else:
        write_bart_tokenizer(folder)
    return folder
