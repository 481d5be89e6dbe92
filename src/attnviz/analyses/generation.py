"""Attention while the model writes: greedy or seeded sampling with a KV cache, keeping the
attention row that produced every generated token.

>>> result = generate(model, prompt_ids, max_new_tokens=20)         # doctest: +SKIP
>>> result.rows.shape          # (layers kept, heads, new tokens, every position)
(12, 12, 20, 27)

Row ``g`` of ``rows[l, h]`` is what head ``h`` of layer ``l`` looked at when the model wrote
generated token ``g``: the attention of the query at position ``P + g - 1`` (the last
prompt token for the first one; ``P`` = prompt length) over keys ``0 .. P + g - 1``. Keys
after it are 0 (the token was not written yet): each row is a staircase of the full
``(P + N) × (P + N)`` attention matrix, equal to the rows of one full forward over the
final sequence. Each step runs only the new token through the model (``models.forward.KVCache``);
memory is the rows kept, ``L × H × N × (P + N)`` float32, not ``T × T`` per step.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from attnviz.core.errors import InputError


@dataclass(frozen=True)
class Sampling:
    """Greedy (``sample=False``) or sampling with ``temperature``, ``top_k``, ``top_p``,
    reproducible with ``seed`` (transformers' order: temperature, then top-k, then top-p)."""

    sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0

    def check(self) -> None:
        if self.sample and not self.temperature > 0:
            raise InputError(f"--temperature must be above 0 with --sample, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise InputError(f"--top-k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise InputError(f"--top-p must be in (0, 1], got {self.top_p}")


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    new_ids: list[int]
    probabilities: list[float]  # the model's probability of each token it wrote (softmax, T=1)
    alternatives: list[list[tuple[int, float]]]  # per step: the top-k (id, probability)
    rows: np.ndarray  # (L, H, N, P + N) float32, see the module docstring
    layers: list[int]
    stopped: str  # "eos", "max_new_tokens" or "context"
    config: dict = field(default_factory=dict)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.new_ids

    @property
    def prompt_length(self) -> int:
        return len(self.prompt_ids)


def check_can_generate(model, prompt_length: int, max_new_tokens: int) -> None:
    """Refuse before any work: random mode, no output head, no room, no tokens to write."""
    if model.describe().get("mode") == "random":
        raise InputError("generation needs trained weights: random mode has no output head; "
                         "pass --weights (a checkpoint or a Hub repo id such as gpt2)")
    if not getattr(model, "can_predict", False):
        raise InputError("the checkpoint has no final norm and output head (unembedding): it "
                         "cannot predict tokens")
    if max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if prompt_length >= model.context_length:
        raise InputError(f"the prompt is {prompt_length} tokens, already at the context length "
                         f"{model.context_length}: there is no room to generate")


def choose(logits, sampling: Sampling, generator) -> int:
    """The next token from ``logits (V,)`` float32."""
    import torch

    if not sampling.sample:
        return int(torch.argmax(logits))
    scores = logits / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < scores.shape[-1]:
        kth = torch.topk(scores, sampling.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1:
        ordered, order = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative <= 1 - sampling.top_p
        drop[-1] = False  # keep at least the most likely token
        scores = scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(scores.softmax(-1), 1, generator=generator))


def generate(model, prompt_ids: list[int], max_new_tokens: int = 20, *,
             sampling: Sampling = Sampling(), layers: list[int] | None = None,
             ignore_eos: bool = False, top_k_report: int = 5,
             on_token: Callable[[int], None] | None = None) -> GenerationResult:
    """Generate up to ``max_new_tokens`` after ``prompt_ids`` with ``model``
    (``analysis.load_model``), keeping the rows of ``layers`` (default: all). Stops at the
    tokenizer's end-of-sequence token (unless ``ignore_eos``) or the context length.
    ``on_token(id)`` hears of each token as it is written (to print it)."""
    import torch

    check_can_generate(model, len(prompt_ids), max_new_tokens)
    sampling.check()
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    n_new = min(max_new_tokens, model.context_length - len(prompt_ids))
    total = len(prompt_ids) + n_new
    rows = np.zeros((len(layers), model.n_heads, n_new, total), dtype=np.float32)
    generator = torch.Generator().manual_seed(sampling.seed)
    eos = None if ignore_eos else model.tokenizer.eos_id
    cache = model.new_cache(total)
    new_ids, probabilities, alternatives = [], [], []
    step_ids, stopped = torch.tensor([prompt_ids]), "max_new_tokens"
    for g in range(n_new):
        logits, kept = model.decode(step_ids, cache, keep=layers)
        end = cache.length  # keys 0 .. end - 1: everything before the token being written
        for k, layer in enumerate(layers):
            rows[k, :, g, :end] = kept[layer][0, :, -1].float().cpu().numpy()  # (H, end)
        last = logits[0, -1].float()
        token = choose(last, sampling, generator)
        probs = last.softmax(-1)
        top = torch.topk(probs, min(top_k_report, probs.shape[-1]))
        new_ids.append(token)
        probabilities.append(float(probs[token]))
        alternatives.append([(int(i), float(p)) for p, i in zip(top.values, top.indices)])
        if on_token is not None:
            on_token(token)
        if eos is not None and token == eos:
            stopped = "eos"
            break
        step_ids = torch.tensor([[token]])
    else:
        if n_new < max_new_tokens:
            stopped = "context"
    n = len(new_ids)
    return GenerationResult(
        prompt_ids=list(prompt_ids), new_ids=new_ids, probabilities=probabilities,
        alternatives=alternatives, rows=np.ascontiguousarray(rows[:, :, :n, :len(prompt_ids) + n]),
        layers=layers, stopped=stopped, config={**model.describe(), "layers": layers})


class TextStream:
    """Token bytes -> text as it comes, without splitting a multi-byte character."""

    def __init__(self, tokenizer, write: Callable[[str], None]):
        self.tokenizer, self.write = tokenizer, write
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, token_id: int) -> None:
        if self.tokenizer.is_special(token_id):
            return
        text = self.decoder.decode(self.tokenizer.token_bytes([token_id])[0])
        if text:
            self.write(text)

    def close(self) -> None:
        if tail := self.decoder.decode(b"", final=True):
            self.write(tail)


def continuation_text(tokenizer, token_ids: list[int]) -> str:
    """The text of ``token_ids`` (special tokens left out), undecodable bytes replaced."""
    pieces = tokenizer.token_bytes([t for t in token_ids if not tokenizer.is_special(t)])
    return b"".join(pieces).decode("utf-8", errors="replace")
