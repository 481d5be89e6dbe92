"""A small GPT-2-architecture model trained here, and its snapshots in Hugging Face's
GPT-2 layout (the core of ``attnviz train``, issue #23; the command is not built yet).

    model = TinyGPT2(TrainConfig())                    # 2 layers, 4 heads, d_model 64
    ids, mask = induction_batch(config, step=0)        # (B, T) tokens, (B, T-1) loss mask
    loss = model.loss(ids, mask)
    save_snapshot(model, folder)                        # config.json, model.safetensors,
                                                        # tokenizer.json: any --weights opens it

Parameters are stored as transformers' ``GPT2LMHeadModel`` stores them (``Conv1D``
weights as ``(in, out)``, the output head tied to ``wte``), so a snapshot is the state dict
with a ``transformer.`` prefix. An attention-only model (the default) is saved with zero
MLP weights and biases: the MLP of a GPT-2 block then adds exactly 0, and the file loads in
any GPT-2 reader unchanged.
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

from attnviz.errors import InputError
from attnviz.fileio import UMASK

UNK = "[UNK]"


@dataclass(frozen=True)
class TrainConfig:
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    n_positions: int = 32  # the context: training sequences are this long
    vocab_size: int = 512
    mlp: bool = False  # attention only unless asked
    batch_size: int = 64
    seed: int = 0

    @property
    def n_inner(self) -> int:
        return 4 * self.n_embd

    def hf_config(self) -> dict:
        """``config.json`` of a snapshot: transformers' ``GPT2Config`` keys."""
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                "vocab_size": self.vocab_size, "n_positions": self.n_positions,
                "n_embd": self.n_embd, "n_layer": self.n_layer, "n_head": self.n_head,
                "n_inner": self.n_inner, "activation_function": "gelu_new",
                "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True,
                "bos_token_id": None, "eos_token_id": None,  # no GPT-2 <|endoftext|> here
                "attnviz_training": {"mlp": self.mlp, **{k: v for k, v in asdict(self).items()
                                                         if k in ("batch_size", "seed")}}}


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
    """GPT-2 (pre-LayerNorm, learned positions, tied output head), optionally without MLPs."""

    def __init__(self, config: TrainConfig):
        super().__init__()
        self.config = config
        torch.manual_seed(config.seed)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList(_Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=1e-5)
        for param in self.parameters():  # GPT-2's initialisation
            if param.dim() > 1:
                nn.init.normal_(param, 0.0, 0.02)

    def forward(self, ids: torch.Tensor, keep_weights: bool = False):
        """``ids (B, T)`` -> logits ``(B, T, V)`` and per layer the weights ``(B, H, T, T)``
        (None unless ``keep_weights``)."""
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
        weights = []
        for block in self.h:
            x, w = block(x, keep_weights)
            weights.append(w)
        return self.ln_f(x) @ self.wte.weight.T, weights

    def loss(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the next-token predictions where ``mask (B, T-1)`` is True."""
        logits, _ = self(ids)
        return F.cross_entropy(logits[:, :-1][mask], ids[:, 1:][mask])

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors of ``GPT2LMHeadModel`` (without the tied ``lm_head``), contiguous."""
        c = self.config
        out = {"transformer.wte.weight": self.wte.weight, "transformer.wpe.weight": self.wpe.weight,
               "transformer.ln_f.weight": self.ln_f.weight, "transformer.ln_f.bias": self.ln_f.bias}
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


def induction_batch(config: TrainConfig, step: int, n: int | None = None):
    """Sequences of a random segment (length 4 … T/2, tokens uniform over every id but
    ``[UNK]``'s 0) repeated to the context length; the loss is on the repeats only.
    Returns ``ids (B, T)`` int64 and ``mask (B, T-1)`` bool (position p predicts p+1)."""
    rng = _rng(config, step)
    n, t = n or config.batch_size, config.n_positions
    ids = np.empty((n, t), dtype=np.int64)
    mask = np.zeros((n, t - 1), dtype=bool)
    for i in range(n):
        period = int(rng.integers(4, t // 2 + 1))
        segment = rng.integers(1, config.vocab_size, period)
        ids[i] = np.tile(segment, -(-t // period))[:t]
        mask[i, period - 1:] = True  # the token at p+1 >= period repeats one seen before
    return torch.from_numpy(ids), torch.from_numpy(mask)


# ---------------------------------------------------------------------------- vocabulary


def word_vocabulary(size: int) -> list[str]:
    """``[UNK]`` and the ``size - 1`` most frequent lowercase English words of GPT-2's
    vocabulary (its merge order), so random sequences read as words, not as ids."""
    from attnviz.tokenizer import load_token_bytes

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
