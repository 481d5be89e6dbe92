"""Encoder–decoders (T5, BART, Marian): the three kinds of attention of one source text and
one target, and generation with each new token's cross-attention over the source.

>>> result = analyze_seq2seq(model, "translate English to German: The house is small.",
...                          decoder_text="Das Haus ist klein.")   # doctest: +SKIP
>>> result.cross.weights.shape      # (layers, heads, decoder tokens, source tokens)
(6, 8, 7, 13)

- ``encoder``: the encoder's self-attention over the source, bidirectional ``(L, H, S, S)``;
- ``decoder``: the decoder's self-attention, causal ``(L, H, T, T)``;
- ``cross``: the decoder's queries over the encoder's output ``(L, H, T, S)``.

The decoder reads its start token, then the target's tokens (teacher forcing): the
target's labels shifted right, as in training — a final ``</s>`` is what the model
predicts last, not what it reads. Without a target the decoder reads its start token only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from attnviz.analyses.attention import (
    AttentionResult,
    check_heads,
    check_ids,
    check_text,
    parse_layers,
    token_records,
)
from attnviz.analyses.beams import beam_search
from attnviz.analyses.decoding import Processors, decoding_for
from attnviz.analyses.generation import Sampling, Written, write_tokens
from attnviz.core.errors import InputError
from attnviz.core.views import Displayable

KINDS = ("encoder", "decoder", "cross")
CHOICES = (*KINDS, "all")


def is_seq2seq(model) -> bool:
    return getattr(model, "is_seq2seq", False)


def model_kinds(model) -> tuple[str, ...]:
    """The kinds of attention ``model`` has: all three for an encoder–decoder, "encoder"
    for a bidirectional encoder, "decoder" for a causal decoder-only model."""
    if is_seq2seq(model):
        return KINDS
    return (model.attention_kind,)  # "decoder" (causal) or "encoder" (bidirectional)


def check_attention(model, attention: str | None, decoder_text: str | None,
                    shown: tuple[str, ...] = CHOICES) -> tuple[str, ...]:
    """The kinds ``--attention`` asks for (default: every kind the model has), refused by
    name when the model has no such attention or the command cannot show it (``shown``);
    ``--decoder-text`` refused for a model without a decoder that reads a second text."""
    own = model_kinds(model)
    described = model.describe()
    family = ("the random model" if described.get("mode") == "random" else
              described.get("family", "gpt2"))  # GPT-2's description has no family
    what = ("an encoder–decoder" if is_seq2seq(model) else
            "an encoder (bidirectional, no decoder)" if own == ("encoder",) else "decoder-only")
    if decoder_text is not None and not is_seq2seq(model):
        raise InputError(f"--decoder-text needs an encoder–decoder model (t5, bart, marian): "
                         f"{family} is {what}")
    if attention is None:
        return tuple(k for k in own if k in shown or "all" in shown)
    if attention not in CHOICES:
        raise InputError(f"--attention must be one of {', '.join(CHOICES)}, got {attention!r}")
    if attention not in shown:
        raise InputError(f"--attention {attention}: this command shows "
                         f"{' or '.join(shown)} attention")
    if attention == "all":
        return own
    if attention not in own:
        raise InputError(f"--attention {attention}: {family} is {what}; it has no "
                         f"{attention} attention (it has {', '.join(own)})")
    return (attention,)


def decoder_ids(model, decoder_text: str | None, allow_special: bool = False,
                specials: bool = True) -> list[int]:
    """What the decoder reads: its start token, then ``decoder_text``'s tokens (the labels
    shifted right: a final end-of-sequence token dropped), tokenized as the target text is
    (Marian: with its ``target.spm``)."""
    start = [model.spec.decoder_start_id]
    if decoder_text is None:
        return start
    if not decoder_text:
        raise InputError("--decoder-text is empty: give the target text, or leave the option "
                         "out to start the decoder from its start token only")
    labels = model.tokenizer.decoder_tokenizer().encode(  # Marian's target.spm
        decoder_text, allow_special=allow_special, add_bos=specials)
    if labels and labels[-1] == model.spec.eos_id:
        labels = labels[:-1]
    ids = start + labels
    check_ids(model, ids)
    return ids


def check_length(model, ids: list[int], what: str, resolution: int | None = None) -> None:
    """Refuse a text (``what``: "the text", "--decoder-text") past the model's positions
    (BART's and Marian's tables) or past ``--resolution``: the pooled maps of long texts are
    made for one model's self-attention (a decoder's or an encoder's), not yet for an
    encoder–decoder's stacks, so its attention is shown whole or not at all."""
    from attnviz.analyses.longcontext import RESOLUTION

    limit = model.context_length
    if limit is not None and len(ids) > limit:
        raise InputError(f"{what} is {len(ids)} tokens, past the model's {limit} positions "
                         "(its max_position_embeddings); shorten it")
    chosen = resolution or RESOLUTION
    if len(ids) > chosen:
        raise InputError(f"{what} is {len(ids)} tokens, more than --resolution {chosen}: an "
                         "encoder–decoder's attention is shown whole (the pooled maps of long "
                         "texts are not made for its stacks yet); shorten it")


@dataclass(repr=False)
class Seq2SeqResult(Displayable):
    """The attention of one source and one target: an ``AttentionResult`` per kind asked
    for (None for the others); ``source_ids``, ``target_ids`` (what the decoder read).
    Shown in a notebook as the page with the switch between the kinds
    (``attnviz.display.notebook``)."""

    source_ids: list[int]
    target_ids: list[int]
    encoder: AttentionResult | None
    decoder: AttentionResult | None
    cross: AttentionResult | None
    config: dict = field(default_factory=dict)
    source_raw: list[bytes] = field(default_factory=list)
    target_raw: list[bytes] = field(default_factory=list)
    special_ids: frozenset = frozenset()
    pair_start: int | None = None  # an encoder's sentence pair: the second sentence's start

    def tokens(self) -> list[dict]:
        """The source's token records (as ``AttentionResult.tokens``: with a pair, each
        token's ``"sentence"``, 0 or 1)."""
        records = token_records(self.source_ids, self.source_raw, special_ids=self.special_ids)
        if self.pair_start is not None:
            for record in records:
                record["sentence"] = int(record["position"] >= self.pair_start)
        return records

    def decoder_tokens(self) -> list[dict]:
        """What the decoder read, as token records (its start token first)."""
        return token_records(self.target_ids, self.target_raw, special_ids=self.special_ids)

    @property
    def kinds(self) -> list[str]:
        return [k for k in KINDS if getattr(self, k) is not None]

    def of(self, kind: str) -> AttentionResult:
        return getattr(self, kind)

    def __repr__(self) -> str:
        return (f"<attnviz encoder–decoder attention: {len(self.source_ids)} source × "
                f"{len(self.target_ids)} decoder tokens, {', '.join(self.kinds)}>")


def analyze_seq2seq(model, text: str, decoder_text: str | None = None, *, layer="0",
                    kinds: tuple[str, ...] = KINDS, heads: list[int] | None = None,
                    allow_special: bool = False, specials: bool = True,
                    resolution: int | None = None) -> Seq2SeqResult:
    """The ``kinds`` of attention of ``model`` (an ``EncoderDecoder``) on ``text`` and
    ``decoder_text``, for the layers ``layer`` names (``"all"``: each stack's every layer)."""
    source, target = encode_texts(model, text, decoder_text, allow_special, specials)
    return analyze_seq2seq_ids(model, source, target, layer=layer, kinds=kinds, heads=heads,
                               resolution=resolution)


def encode_texts(model, text: str, decoder_text: str | None, allow_special: bool = False,
                 specials: bool = True) -> tuple[list[int], list[int]]:
    """The ids of the source ``text`` and what the decoder reads (``decoder_ids``)."""
    check_text(text)
    source = model.tokenizer.encode(text, allow_special=allow_special, add_bos=specials)
    check_ids(model, source)
    return source, decoder_ids(model, decoder_text, allow_special, specials)


def stack_layers(model, layer, kinds) -> dict[str, list[int]]:
    """The layers of each stack asked for: the encoder's for "encoder", the decoder's for
    "decoder" and "cross" (one layer holds both)."""
    counts = {"encoder": model.n_layers, "decoder": model.n_decoder_layers}
    stacks = {"encoder" if k == "encoder" else "decoder" for k in kinds}
    found = {}
    for stack in sorted(stacks):
        try:
            found[stack] = parse_layers(layer, counts[stack])
        except InputError as err:  # name the stack: T5 stacks may differ
            raise InputError(f"{err} of the {stack}") from None
    return found


def analyze_seq2seq_ids(model, source: list[int], target: list[int], *, layer="0",
                        kinds: tuple[str, ...] = KINDS, heads: list[int] | None = None,
                        resolution: int | None = None) -> Seq2SeqResult:
    """``analyze_seq2seq`` for token ids already known."""
    import torch

    check_heads(heads, model.n_heads)
    check_length(model, source, "the text", resolution)
    check_length(model, target, "--decoder-text", resolution)
    layers = stack_layers(model, layer, kinds)
    memory, encoder = model.encode(torch.tensor([source]), keep=layers.get("encoder", ()))
    decoder = cross = {}
    if "decoder" in layers:
        _, decoder, cross = model.decode(torch.tensor([target]), memory, keep=layers["decoder"],
                                         logits=False)
    raw_source, raw_target = (model.tokenizer.token_bytes(ids) for ids in (source, target))
    config = model.describe()
    special = frozenset(i for i in {*source, *target} if model.tokenizer.is_special(i))

    def result(kind: str, kept: dict, stack: str, queries, keys) -> AttentionResult | None:
        if kind not in kinds:
            return None
        chosen = layers[stack]
        weights = np.stack([kept[i][0].float().cpu().numpy() for i in chosen])  # (L, H, Tq, Tk)
        return kind_result(kind, weights, chosen, queries, keys,
                           {**config, "layers": chosen, "attention": kind}, model.attn_scale(0),
                           special)

    source_tokens, target_tokens = (source, raw_source), (target, raw_target)
    return Seq2SeqResult(
        source_ids=source, target_ids=target,
        encoder=result("encoder", encoder, "encoder", source_tokens, source_tokens),
        decoder=result("decoder", decoder, "decoder", target_tokens, target_tokens),
        cross=result("cross", cross, "decoder", target_tokens, source_tokens),
        config=config, source_raw=raw_source, target_raw=raw_target, special_ids=special)


def encoder_result(result: AttentionResult) -> Seq2SeqResult:
    """An encoder model's self-attention (BERT …, random ``--bidirectional``; with its
    sentence pair) as a ``Seq2SeqResult`` of the one kind "encoder" and no decoder: what the
    page with the switch between kinds shows of it (``display.seq2seq_report``)."""
    if result.attention != "encoder" or result.window is not None or result.block > 1:
        raise ValueError("encoder_result takes an encoder's whole self-attention")
    return Seq2SeqResult(
        source_ids=list(result.token_ids), target_ids=[], encoder=result, decoder=None,
        cross=None, config=result.config, source_raw=list(result.raw_tokens), target_raw=[],
        special_ids=result.special_ids, pair_start=result.pair_start)


def kind_result(kind: str, weights: np.ndarray, layers: list[int], queries, keys, config: dict,
                scale: float, special_ids: frozenset = frozenset()) -> AttentionResult:
    """One kind's ``AttentionResult``: ``queries`` and ``keys`` are ``(ids, raw tokens)``;
    for cross-attention they differ (a rectangular result, ``(L, H, Tq, Tk)``)."""
    (query_ids, query_raw), (key_ids, key_raw) = queries, keys
    n_layers, _, n_queries, _ = weights.shape
    other = {}
    if kind == "cross":
        other = {"key_token_ids": list(key_ids), "key_raw_tokens": list(key_raw)}
    return AttentionResult(
        token_ids=list(query_ids), weights=weights, layers=layers,
        attn_inputs=np.zeros((n_layers, n_queries, 0), dtype=np.float32), params={},
        config=config, raw_tokens=list(query_raw), scales=[scale] * n_layers, attention=kind,
        special_ids=special_ids, **other)


@dataclass
class Seq2SeqGeneration:
    """What an encoder–decoder wrote for a source — greedily, sampled, or by beam search —
    as its generation config and the options say (``analyses.decoding``): ``new_ids`` (the
    end-of-sequence token included when it came), each token's probability and
    alternatives, and the attention that produced each one. Row ``g`` of ``cross[l, h]`` is
    the cross-attention over the source of the decoder query that wrote new token ``g``
    (the alignment picture); of ``decoder[l, h]``, its self-attention over the decoder's
    tokens so far (later ones 0). After a beam search these are the rows of the chosen
    sequence, from one teacher-forced pass of the decoder over it."""

    source_ids: list[int]
    start_id: int
    new_ids: list[int]
    probabilities: list[float]
    alternatives: list[list[tuple[int, float]]]
    cross: np.ndarray  # (L, H, N, S) float32
    decoder: np.ndarray  # (L, H, N, N) float32: query g over the decoder's tokens 0 .. g
    layers: list[int]
    stopped: str  # "eos", "max_new_tokens" or "context" (the decoder's positions ran out)
    config: dict = field(default_factory=dict)
    generation: dict = field(default_factory=dict)  # the settings that applied (decoding)
    num_beams: int = 1
    score: float | None = None  # beam search: the sequence's score (transformers' sequences_scores)

    @property
    def decoder_ids(self) -> list[int]:
        """What the decoder read: its start token, then each token it wrote but the last."""
        return [self.start_id, *self.new_ids[:-1]]


def seq2seq_decoding(model, sampling=None, **settings):
    """The generation settings of an encoder–decoder (``analyses.decoding.decoding_for``:
    its generation config, ``settings`` given in their place), its end-of-sequence token
    and decoder start as the model's config names them where the generation config does
    not. With sampling, one sequence is drawn: the file's ``num_beams`` does not apply."""
    decoding = decoding_for(model, defaults={"eos_token_id": model.spec.eos_id}, **settings)
    if sampling is not None and sampling.sample and decoding.num_beams > 1:
        if "num_beams" in decoding.given:
            raise InputError("--num-beams cannot be combined with --sample: beam search "
                             "keeps the most likely sequences, sampling draws one")
        decoding = replace(decoding, num_beams=1)
    return decoding


def generate_seq2seq(model, source_ids: list[int], max_new_tokens: int | None = None, *,
                     sampling=None, layers: list[int] | None = None, ignore_eos: bool = False,
                     top_k_report: int = 5, on_token=None, **settings) -> Seq2SeqGeneration:
    """Encode ``source_ids`` once, then write from the decoder's start token as the
    checkpoint's generation config says (``settings``, by transformers' names, override
    it: ``num_beams=4, length_penalty=2.0``; ``max_new_tokens`` None: the file's
    ``max_new_tokens`` or ``max_length``, else 20), keeping the rows of the decoder
    ``layers`` (default: all). Greedy (``num_beams`` 1), one step at a time over the cache
    (the encoder's keys and values computed once); sampled with ``sampling``; or a beam
    search, whose chosen sequence the decoder then reads once (teacher forcing) for its
    rows. Stops at the end-of-sequence token unless ``ignore_eos``. The ids are those of
    transformers' ``generate(do_sample=False)`` with the same settings."""
    import torch

    sampling = sampling or Sampling()
    sampling.check()
    decoding = seq2seq_decoding(model, sampling, max_new_tokens=max_new_tokens, **settings)
    check_length(model, source_ids, "the text")
    start = next(i for i in (decoding.decoder_start_token_id, decoding.bos_token_id,
                             model.spec.decoder_start_id) if i is not None)
    max_length, n_new = decoding.lengths(1, model.context_length)
    layers = list(range(model.n_decoder_layers)) if layers is None else list(layers)
    processors = Processors(decoding, 1, max_length)
    eos = () if ignore_eos else decoding.eos_ids
    memory, _ = model.encode(torch.tensor([source_ids]))
    if decoding.num_beams > 1:
        return _beam_generation(model, source_ids, memory, start, decoding, processors,
                                max_length, n_new, layers, not ignore_eos, top_k_report,
                                on_token)
    cross = np.zeros((len(layers), model.n_heads, n_new, len(source_ids)), dtype=np.float32)
    own = np.zeros((len(layers), model.n_heads, n_new, n_new), dtype=np.float32)
    cache = model.new_cache(n_new)

    def advance(g: int, token: int | None):
        logits, kept_self, kept_cross = model.decode(
            torch.tensor([[start if token is None else token]]), memory, keep=layers,
            cache=cache, last_only=True)
        for k, layer in enumerate(layers):
            cross[k, :, g] = kept_cross[layer][0, :, -1].float().cpu().numpy()  # (H, S)
            own[k, :, g, :g + 1] = kept_self[layer][0, :, -1].float().cpu().numpy()  # (H, g + 1)
        return logits[0, -1]

    written = write_tokens(advance, [start], n_new, sampling=sampling, processors=processors,
                           eos_ids=eos, top_k_report=top_k_report, on_token=on_token)
    n = len(written.new_ids)
    return Seq2SeqGeneration(
        source_ids=list(source_ids), start_id=start, new_ids=written.new_ids,
        probabilities=written.probabilities, alternatives=written.alternatives,
        cross=np.ascontiguousarray(cross[:, :, :n]), decoder=np.ascontiguousarray(own[:, :, :n, :n]),
        layers=layers, stopped=_stopped(written.ended, n, max_length - 1, n_new),
        config={**model.describe(), "layers": layers}, generation=decoding.summary())


def _stopped(ended: bool, n: int, wanted: int, steps: int) -> str:
    if ended:
        return "eos"
    return "context" if n == steps and steps < wanted else "max_new_tokens"


def _beam_generation(model, source_ids, memory, start, decoding, processors, max_length,
                     n_new, layers, stop_at_eos, top_k_report, on_token) -> Seq2SeqGeneration:
    """Beam search (``analyses.beams``) over the cache of ``num_beams`` decoders, then one
    teacher-forced pass over the chosen sequence for its rows, probabilities and
    alternatives (the same numbers a greedy step computes, for the prefix chosen)."""
    import torch

    beams = decoding.num_beams
    wide = memory.repeat(beams)
    cache = model.new_cache(n_new)

    def step(token_ids, origin):
        if origin is not None:
            for layer in cache:
                layer.reorder(origin)
        logits, _, _ = model.decode(token_ids, wide, cache=cache, last_only=True)
        return logits[:, -1]

    best = beam_search(step, [start], decoding, processors, min(max_length, n_new + 1),
                       stop_at_eos)
    new_ids = best.ids[1:]
    read = [start, *new_ids[:-1]]
    logits, own, cross = model.decode(torch.tensor([read]), memory, keep=layers)
    written = Written()
    for g, token in enumerate(new_ids):
        written.add(logits[0, g], token, top_k_report)
        if on_token is not None:
            on_token(token)
    n = len(new_ids)

    def rows(kept):
        return np.ascontiguousarray(np.stack([kept[layer][0].float().cpu().numpy()
                                              for layer in layers]))

    ended = stop_at_eos and bool(new_ids) and new_ids[-1] in decoding.eos_ids
    return Seq2SeqGeneration(
        source_ids=list(source_ids), start_id=start, new_ids=new_ids,
        probabilities=written.probabilities, alternatives=written.alternatives,
        cross=rows(cross), decoder=rows(own), layers=layers,
        stopped=_stopped(ended, n, max_length - 1, n_new),
        config={**model.describe(), "layers": layers}, generation=decoding.summary(),
        num_beams=beams, score=best.score)
