"""A small GPT-2-architecture model trained here, and its snapshots in Hugging Face's
GPT-2 layout (the core of ``attnviz train``; the run itself is ``train_run``).

    model = TinyGPT2(TrainConfig())                    # 2 layers, 2 heads, d_model 64
    ids, targets = induction_batch(config, step=0)     # (B, T) tokens, (B, T) targets (-1: none)
    loss = model.loss(ids, targets)
    save_snapshot(model, folder)                        # config.json, model.safetensors,
                                                        # tokenizer.json: any --weights opens it

Parameters are stored as transformers' ``GPT2LMHeadModel`` stores them (``Conv1D``
weights as ``(in, out)``; an untied ``lm_head``, which the config says with
``tie_word_embeddings: false``). An attention-only model (the default) is saved with zero
MLP weights and biases: the MLP of a GPT-2 block then adds exactly 0, and the file loads in
any GPT-2 reader unchanged.

The defaults are the recipe that forms the two-head induction circuit of Olsson et al.
(2022) within a minute on a CPU (docs/training.md, "Why these defaults"): a layer-0
previous-token head, and a layer-1 head whose keys read it and which copies at every
period. 2 heads of 32 dimensions per layer, a vocabulary of 64 words, an untied output
head, attention biases drawn as ``nn.Linear`` draws them (not GPT-2's zeros), AdamW at
6e-3 without weight decay, and the induction task of ``induction_batch`` (a segment of
any length from 2 to T/2, tiled after a prefix of noise, so that neither absolute
positions nor a fixed period solve it).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attnviz.analyses.circuit import training_periods
from attnviz.core.errors import InputError
from attnviz.files.fileio import UMASK
from attnviz.text.gpt2_bpe import load_token_bytes

UNK = "[UNK]"
NO_TARGET = -1  # a position without a loss
TRAINING_KEYS = ("mlp", "batch_size", "lr", "weight_decay", "seed")  # not GPT2Config's


@dataclass(frozen=True)
class TrainConfig:
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    n_positions: int = 32  # the context: training sequences are this long
    vocab_size: int = 64
    mlp: bool = False  # attention only unless asked
    batch_size: int = 64
    lr: float = 6e-3
    weight_decay: float = 0.0  # decay blurs the heads once the loss is near 0
    seed: int = 3  # forms the textbook circuit (docs/training.md, "Why these defaults")

    @property
    def n_inner(self) -> int:
        return 4 * self.n_embd

    def hf_config(self) -> dict:
        """``config.json`` of a snapshot: transformers' ``GPT2Config`` keys."""
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                "vocab_size": self.vocab_size, "n_positions": self.n_positions,
                "n_embd": self.n_embd, "n_layer": self.n_layer, "n_head": self.n_head,
                "n_inner": self.n_inner, "activation_function": "gelu_new",
                "layer_norm_epsilon": 1e-5, "tie_word_embeddings": False,
                "bos_token_id": None, "eos_token_id": None,  # no GPT-2 <|endoftext|> here
                "attnviz_training": {k: v for k, v in asdict(self).items() if k in TRAINING_KEYS}}



class _Block(nn.Module):
    def __init__(self, c: TrainConfig):
        super().__init__()
        d = c.n_embd
        self.n_head = c.n_head
        self.ln_1 = nn.LayerNorm(d, eps=1e-5)
        self.attn = nn.ParameterDict({"c_attn_weight": nn.Parameter(torch.empty(d, 3 * d)),
                                      "c_attn_bias": nn.Parameter(torch.zeros(3 * d)),
                                      "c_proj_weight": nn.Parameter(torch.empty(d, d)),
                                      "c_proj_bias": nn.Parameter(torch.zeros(d))})
        self.mlp = None
        if c.mlp:
            self.ln_2 = nn.LayerNorm(d, eps=1e-5)
            self.mlp = nn.ParameterDict({"c_fc_weight": nn.Parameter(torch.empty(d, c.n_inner)),
                                         "c_fc_bias": nn.Parameter(torch.zeros(c.n_inner)),
                                         "c_proj_weight": nn.Parameter(torch.empty(c.n_inner, d)),
                                         "c_proj_bias": nn.Parameter(torch.zeros(d))})

    def forward(self, x: torch.Tensor, keep_weights: bool = False):
        n_batch, n, d = x.shape  # (B, T, d)
        a = self.attn
        qkv = self.ln_1(x) @ a["c_attn_weight"] + a["c_attn_bias"]  # (B, T, 3d): q_all | k_all | v_all
        q, k, v = qkv.view(n_batch, n, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        weights = None
        if keep_weights:  # (B, H, T, T), for the film and the tests
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.n_head)
            causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            weights = scores.masked_fill(~causal, float("-inf")).softmax(-1)
            context = weights @ v
        else:
            context = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + context.transpose(1, 2).reshape(n_batch, n, d) @ a["c_proj_weight"] + a["c_proj_bias"]
        if self.mlp is not None:
            m = self.mlp
            hidden = F.gelu(self.ln_2(x) @ m["c_fc_weight"] + m["c_fc_bias"], approximate="tanh")
            x = x + hidden @ m["c_proj_weight"] + m["c_proj_bias"]
        return x, weights


class TinyGPT2(nn.Module):
    """GPT-2 (pre-LayerNorm, learned positions, an untied output head), optionally without
    MLPs."""

    def __init__(self, config: TrainConfig):
        super().__init__()
        self.config = config
        torch.manual_seed(config.seed)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList(_Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=1e-5)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # (V, d)
        for param in self.parameters():  # GPT-2's initialisation of the weights
            if param.dim() > 1:
                nn.init.normal_(param, 0.0, 0.02)
        bound = 1 / math.sqrt(config.n_embd)  # the attention's biases as torch's nn.Linear
        for block in self.h:                  # draws them (GPT-2 starts them at 0): the
            for name in ("c_attn_bias", "c_proj_bias"):  # induction head forms far sooner
                nn.init.uniform_(block.attn[name], -bound, bound)

    def hidden(self, ids: torch.Tensor, keep_weights: bool = False):
        """``ids (B, T)`` -> the final hidden states ``(B, T, d)`` (after ``ln_f``) and per
        layer the weights ``(B, H, T, T)`` (None unless ``keep_weights``)."""
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
        weights = []
        for block in self.h:
            x, w = block(x, keep_weights)
            weights.append(w)
        return self.ln_f(x), weights

    def forward(self, ids: torch.Tensor, keep_weights: bool = False):
        """``ids (B, T)`` -> logits ``(B, T, V)`` and the weights, as ``hidden``."""
        x, weights = self.hidden(ids, keep_weights)
        return self.lm_head(x), weights

    def loss(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the predictions at the positions whose ``targets (B, T)``
        is a token (``NO_TARGET``: no loss there; those are not unembedded at all)."""
        x, _ = self.hidden(ids)
        scored = targets != NO_TARGET  # (B, T)
        return F.cross_entropy(self.lm_head(x[scored]), targets[scored])

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors of ``GPT2LMHeadModel``, contiguous."""
        c = self.config
        out = {"transformer.wte.weight": self.wte.weight, "transformer.wpe.weight": self.wpe.weight,
               "transformer.ln_f.weight": self.ln_f.weight, "transformer.ln_f.bias": self.ln_f.bias,
               "lm_head.weight": self.lm_head.weight}
        for i, block in enumerate(self.h):
            p = f"transformer.h.{i}."
            out[p + "ln_1.weight"], out[p + "ln_1.bias"] = block.ln_1.weight, block.ln_1.bias
            for name, value in _dotted(block.attn).items():
                out[p + "attn." + name] = value
            if block.mlp is not None:
                out[p + "ln_2.weight"], out[p + "ln_2.bias"] = block.ln_2.weight, block.ln_2.bias
                mlp = _dotted(block.mlp)
            else:  # attention only: an MLP that adds exactly zero
                d, f = c.n_embd, c.n_inner
                out[p + "ln_2.weight"], out[p + "ln_2.bias"] = torch.ones(d), torch.zeros(d)
                mlp = {"c_fc.weight": torch.zeros(d, f), "c_fc.bias": torch.zeros(f),
                       "c_proj.weight": torch.zeros(f, d), "c_proj.bias": torch.zeros(d)}
            for name, value in mlp.items():
                out[p + "mlp." + name] = value
        return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in out.items()}


def _dotted(params: nn.ParameterDict) -> dict[str, torch.Tensor]:
    """``c_attn_weight`` -> ``c_attn.weight`` (a ParameterDict key cannot hold a dot)."""
    return {re.sub(r"_(weight|bias)$", r".\1", key): value for key, value in params.items()}


# ---------------------------------------------------------------------------- the tasks


def _rng(config: TrainConfig, step: int) -> np.random.Generator:
    """The batch of ``step`` depends on the seed and the step only: a resumed run sees the
    batches an uninterrupted one would."""
    return np.random.default_rng([config.seed, step])


def random_tokens(config: TrainConfig, rng: np.random.Generator, n: int,
                  length: int | None = None) -> np.ndarray:
    """``(n, length)`` random ids (``length`` defaults to T), every id but ``[UNK]``'s 0:
    distinct within a row when the vocabulary holds that many (a token then repeats only
    where a task repeats it, and "the previous occurrence" is one position), uniform
    otherwise."""
    length, high = length or config.n_positions, config.vocab_size
    if high - 1 >= length:
        return np.argsort(rng.random((n, high - 1)), axis=1)[:, :length] + 1
    return rng.integers(1, high, (n, length))


def induction_batch(config: TrainConfig, step: int, n: int | None = None):
    """Random tokens (``random_tokens``) in which, from a random position r, a segment of
    L tokens is tiled to the end, L drawn from ``training_periods`` (2 … T/2, less the
    held-out periods) and r from 0 … T - 2L (so the segment appears at least twice). The
    loss is on the predictions of the repeats, from position r + L (the first repeated
    token cannot be known yet) to the last, whose target is the token the tiling puts
    after it. The prefix of noise keeps absolute positions from solving the task, and the
    spread of L keeps a fixed look-back from solving it: only the induction circuit (find
    the previous occurrence of the current token, copy the token after it) predicts every
    repeat.
    Returns ``ids (B, T)`` and ``targets (B, T)``, int64 (``NO_TARGET`` where no loss)."""
    rng = _rng(config, step)
    n, t = n or config.batch_size, config.n_positions
    periods = np.array(training_periods(t))
    tokens = random_tokens(config, rng, n, t + 1)  # (B, T + 1): the last is a target only
    targets = np.full((n, t), NO_TARGET, dtype=np.int64)
    for i in range(n):
        length = int(periods[rng.integers(0, len(periods))])
        start = int(rng.integers(0, t - 2 * length + 1))
        tokens[i, start:] = np.tile(tokens[i, start:start + length], -(-(t + 1) // length))[
            : t + 1 - start]
        targets[i, start + length:] = tokens[i, start + length + 1:]
    return torch.from_numpy(tokens[:, :t].copy()), torch.from_numpy(targets)


def previous_batch(config: TrainConfig, step: int, n: int | None = None):
    """Random tokens; the target at every position but the first is the token before it
    (a previous-token head solves it). Returns ``ids`` and ``targets`` as ``induction_batch``."""
    rng = _rng(config, step)
    n, t = n or config.batch_size, config.n_positions
    ids = rng.integers(1, config.vocab_size, (n, t))
    targets = np.full((n, t), NO_TARGET, dtype=np.int64)
    targets[:, 1:] = ids[:, :-1]
    return torch.from_numpy(ids), torch.from_numpy(targets)


def text_batch(config: TrainConfig, step: int, tokens: np.ndarray, n: int | None = None):
    """Next-token prediction on windows of ``tokens`` (a text's ids, at least T + 1) at
    random offsets. Returns ``ids`` and ``targets`` as ``induction_batch``."""
    rng = _rng(config, step)
    n, t = n or config.batch_size, config.n_positions
    if len(tokens) < t + 1:
        raise InputError(f"the text is {len(tokens)} tokens; training needs at least "
                         f"{t + 1} (the context length + 1)")
    starts = rng.integers(0, len(tokens) - t, n)
    windows = np.stack([tokens[s:s + t + 1] for s in starts]).astype(np.int64)  # (B, T+1)
    return torch.from_numpy(windows[:, :-1].copy()), torch.from_numpy(windows[:, 1:].copy())


# ---------------------------------------------------------------------------- vocabulary


def word_vocabulary(size: int) -> list[str]:
    """``[UNK]`` and the ``size - 1`` most frequent lowercase English words of GPT-2's
    vocabulary (its merge order), so random sequences read as words, not as ids."""
    words = [raw[1:].decode() for raw in load_token_bytes() if re.fullmatch(rb" [a-z]{2,}", raw)]
    if size - 1 > len(words):
        raise InputError(f"--vocab {size}: a word vocabulary holds at most {len(words) + 1} tokens")
    return [UNK, *words[: size - 1]]


def save_word_tokenizer(vocabulary: list[str], folder: Path) -> None:
    """``tokenizer.json`` (a WordLevel model over whitespace-separated words) and
    ``tokenizer_config.json``, read the same by ``AutoTokenizer`` and attnviz."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocabulary)}, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": UNK,
         "model_max_length": 1_000_000}, indent=2) + "\n")


def save_text_tokenizer(text: str, vocab_size: int, folder: Path) -> None:
    """A byte-level BPE of at most ``vocab_size`` tokens trained on ``text`` (GPT-2's kind
    of tokenizer, without its special token), as ``tokenizer.json`` and
    ``tokenizer_config.json``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet):
        raise InputError(f"--vocab {vocab_size}: a byte-level tokenizer for --text needs at "
                         f"least {len(alphabet)} tokens (one per byte)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet,
                                  show_progress=False)
    tokenizer.train_from_iterator([text], trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1_000_000},
        indent=2) + "\n")


# ---------------------------------------------------------------------------- snapshots


def save_snapshot(model: TinyGPT2, folder: Path, tokenizer_files: Path | None = None,
                  vocabulary: list[str] | None = None) -> Path:
    """Write ``folder`` (config.json, model.safetensors, the tokenizer) all at once: built
    in a temporary folder beside it and renamed, so an interrupted run leaves the last
    complete snapshot and no half-written one. The tokenizer is copied from
    ``tokenizer_files`` (a folder) or built from ``vocabulary``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        (tmp / "config.json").write_text(json.dumps(model.config.hf_config(), indent=2) + "\n")
        save_file(model.hf_state_dict(), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer_files is not None:
            for name in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copyfile(Path(tokenizer_files) / name, tmp / name)
        elif vocabulary is not None:
            save_word_tokenizer(vocabulary, tmp)
        os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp's 0700 is not what a user expects
        old = folder.with_name(tmp.name.removesuffix(".tmp") + ".old")
        if folder.exists():  # rewritten (--force): moved aside, removed once the new one is in
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
