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
from dataclasses import dataclass, field, replace

import numpy as np

from attnviz.analyses.decoding import Processors, decoding_for
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
    generation: dict = field(default_factory=dict)  # the settings that applied (decoding)

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


@dataclass
class Written:
    """What ``write_tokens`` wrote: each token, its probability and alternatives, and
    whether it stopped at an end-of-sequence token."""

    new_ids: list[int] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    alternatives: list[list[tuple[int, float]]] = field(default_factory=list)
    ended: bool = False

    def add(self, logits, token: int, top_k_report: int) -> None:
        """Token ``token`` written from ``logits (V,)``: its probability (softmax at
        temperature 1, before any processor) and the ``top_k_report`` most likely."""
        import torch

        probs = logits.float().softmax(-1)
        top = torch.topk(probs, min(top_k_report, probs.shape[-1]))
        self.new_ids.append(token)
        self.probabilities.append(float(probs[token]))
        self.alternatives.append([(int(i), float(p)) for p, i in zip(top.values, top.indices)])


def write_tokens(advance: Callable, ids: list[int], steps: int, *, sampling: Sampling,
                 processors=None, eos_ids=(), top_k_report: int = 5,
                 on_token: Callable[[int], None] | None = None) -> Written:
    """The one loop of greedy decoding and sampling, for decoder-only models and
    encoder–decoders alike: ``advance(g, token)`` runs the model (``token`` None at step 0:
    the prompt, or the decoder's start; then the token just written), keeps what it wants
    of the attention and returns the next token's logits ``(V,)``. ``ids``: what the
    processors (``analyses.decoding.Processors``) see, the prompt (or the decoder's start)
    first; the token is the argmax of the processed logits, or drawn from them (``sampling``).
    Stops after ``steps`` tokens or at one of ``eos_ids``."""
    import torch

    generator = torch.Generator().manual_seed(sampling.seed)
    written, token, ids = Written(), None, list(ids)
    for g in range(steps):
        last = advance(g, token).float()
        scores = last
        if processors is not None and processors.active:
            scores = processors(torch.tensor([ids]), last[None])[0]
        token = choose(scores, sampling, generator)
        ids.append(token)
        written.add(last, token, top_k_report)
        if on_token is not None:
            on_token(token)
        if token in eos_ids:
            written.ended = True
            break
    return written


def generate(model, prompt_ids: list[int], max_new_tokens: int = 20, *,
             sampling: Sampling = Sampling(), layers: list[int] | None = None,
             ignore_eos: bool = False, top_k_report: int = 5,
             on_token: Callable[[int], None] | None = None, **settings) -> GenerationResult:
    """Generate up to ``max_new_tokens`` after ``prompt_ids`` with ``model``
    (``analysis.load_model``), keeping the rows of ``layers`` (default: all). Stops at the
    end-of-sequence token (the generation config's, else the tokenizer's; unless
    ``ignore_eos``) or the context length. The checkpoint's generation config's logits
    processors apply (``analyses.decoding``; ``settings``, by transformers' names, override
    it: ``repetition_penalty=1.2``). ``on_token(id)`` hears of each token as it is written
    (to print it)."""
    import torch

    check_can_generate(model, len(prompt_ids), max_new_tokens)
    sampling.check()
    decoding = decoding_for(model, read_lengths=False, max_new_tokens=max_new_tokens,
                            defaults={"eos_token_id": model.tokenizer.eos_id}, **settings)
    if decoding.num_beams > 1:  # beam search is for encoder–decoders (analyses.beams)
        if "num_beams" in decoding.given:
            raise InputError("--num-beams: beam search is for encoder–decoder models (t5, "
                             "bart, marian); a decoder-only model writes greedily or with "
                             "--sample")
        decoding = replace(decoding, num_beams=1, unapplied=(*decoding.unapplied, "num_beams"))
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    max_length, _ = decoding.lengths(len(prompt_ids))
    n_new = min(max_new_tokens, model.context_length - len(prompt_ids))
    total = len(prompt_ids) + n_new
    rows = np.zeros((len(layers), model.n_heads, n_new, total), dtype=np.float32)
    cache = model.new_cache(total)

    def advance(g: int, token: int | None):
        step_ids = torch.tensor([prompt_ids] if token is None else [[token]])
        logits, kept = model.decode(step_ids, cache, keep=layers)
        end = cache.length  # keys 0 .. end - 1: everything before the token being written
        for k, layer in enumerate(layers):
            rows[k, :, g, :end] = kept[layer][0, :, -1].float().cpu().numpy()  # (H, end)
        return logits[0, -1]

    written = write_tokens(advance, prompt_ids, n_new, sampling=sampling,
                           processors=Processors(decoding, len(prompt_ids), max_length),
                           eos_ids=() if ignore_eos else decoding.eos_ids,
                           top_k_report=top_k_report, on_token=on_token)
    stopped = ("eos" if written.ended else "context" if n_new < max_new_tokens
               else "max_new_tokens")
    n = len(written.new_ids)
    return GenerationResult(
        prompt_ids=list(prompt_ids), new_ids=written.new_ids,
        probabilities=written.probabilities, alternatives=written.alternatives,
        rows=np.ascontiguousarray(rows[:, :, :n, :len(prompt_ids) + n]), layers=layers,
        stopped=stopped, config={**model.describe(), "layers": layers},
        generation=decoding.summary())


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
