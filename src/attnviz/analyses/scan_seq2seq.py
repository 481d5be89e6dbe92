"""``attnviz scan`` of an encoder–decoder (T5, BART, Marian): every head of each kind of
attention asked for — the encoder's self-attention over the source, the decoder's over
what it reads, the cross-attention of the decoder's queries over the source — scored per
prompt and aggregated per head, one ``ScanResult`` per kind (``attention`` names it).

The corpus's texts are the sources. A JSON Lines record's ``"target"`` is what the
decoder reads (its start token, then the target's tokens: ``seq2seq.decoder_ids``, teacher
forcing as ``heatmap --decoder-text``); without one the decoder reads its start token only,
so its self-attention is a single weight of 1 and its cross-attention one row per prompt.

Batches are right-padded on both sides: the encoder's padding keys are hidden from the
encoder and from the cross-attention (``EncoderDecoder.encode``'s ``lengths``), the
decoder's are behind its causal mask. The definitions are ``scanning.batch_scores``':
``"encoder"`` rows as an encoder's, ``"decoder"`` as a causal model's, ``"cross"`` as
``stats.head_stats``'s cross rows (no self, previous token, distance or detectors).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from attnviz.analyses.attention import check_ids
from attnviz.analyses.scanning import (
    COLUMNS,
    Corpus,
    Prompt,
    RunningStats,
    ScanResult,
    _number,
    batch_patterns,
    batch_scores,
    padded,
    plan_batches,
)
from attnviz.analyses.seq2seq import KINDS, decoder_ids, stack_layers
from attnviz.core.errors import InputError


def seq2seq_corpus(model, records: list[tuple], *, truncate: bool = False,
                   allow_special: bool = False, specials: bool = True,
                   where: str = "line") -> Corpus:
    """The sources (and JSON Lines targets) of ``records`` (``(line, text[, target])``)
    in ``model``'s tokens, as ``heatmap`` of an encoder–decoder reads a text and a
    ``--decoder-text``. A source past the model's positions is refused by its line (or cut
    with ``truncate``); a target past them is refused; one-token sources are skipped."""
    limit = model.context_length  # None: T5's relative positions have no table
    prompts, truncated, one_token = [], 0, 0
    for number, text, *rest in records:
        target = rest[0] if rest else None
        source = model.tokenizer.encode(text, allow_special=allow_special, add_bos=specials)
        check_ids(model, source)
        cut = limit is not None and len(source) > limit
        if cut and not truncate:
            raise InputError(f"{where} {number}: the prompt is {len(source)} tokens, past the "
                             f"model's {limit} positions; shorten it or pass --truncate")
        if len(source) < 2:
            one_token += 1
            continue
        read = decoder_ids(model, target, allow_special, specials)
        if limit is not None and len(read) > limit:
            raise InputError(f'{where} {number}: the "target" is {len(read)} tokens with the '
                             f"decoder's start token, past the model's {limit} positions; "
                             "shorten it")
        truncated += cut
        prompts.append(Prompt(len(prompts), number, source[:limit] if cut else source, cut,
                              target_ids=read))
    if not prompts:
        raise InputError("no prompt has two tokens or more; every detector needs a previous "
                         "token")
    return Corpus(prompts, truncated, one_token)


def kind_layers(model, layer, kinds: tuple[str, ...]) -> dict[str, list[int]]:
    """The layers each kind is scored in: the encoder's for "encoder", the decoder's for
    "decoder" and "cross" (``seq2seq.stack_layers``, which names the stack it refuses)."""
    stacks = stack_layers(model, layer, kinds)
    return {kind: stacks["encoder" if kind == "encoder" else "decoder"] for kind in kinds}


def scan_seq2seq(model, prompts: Iterable[Prompt], layers: dict[str, list[int]], *,
                 batch_size: int = 16, exclude_first: bool = False, exclude_self: bool = False,
                 on_prompt: Callable[[Prompt, dict], None] | None = None,
                 on_batch: Callable[[int, int], None] | None = None) -> dict[str, ScanResult]:
    """Run ``model`` (an ``EncoderDecoder``) on every prompt (``seq2seq_corpus``'s) and
    aggregate per head, for each kind of ``layers`` (kind -> its layers, ``kind_layers``):
    kind -> ``ScanResult``. ``on_prompt(prompt, {kind: {name: (L, H)}})`` as each batch is
    done; ``on_batch(n_prompts, n_source_tokens)`` after it."""
    prompts = list(prompts)
    kinds = [k for k in KINDS if k in layers]
    shapes = {kind: (len(layers[kind]), model.n_heads) for kind in kinds}
    running = {kind: {name: RunningStats(shapes[kind]) for name in COLUMNS} for kind in kinds}
    keep_encoder = layers.get("encoder", [])
    keep_decoder = sorted({*layers.get("decoder", []), *layers.get("cross", [])})
    n_kept = len(keep_encoder) + 2 * len(keep_decoder)
    options = {"exclude_first": exclude_first, "exclude_self": exclude_self}
    for batch in plan_batches(prompts, batch_size, max(n_kept, 1), model.n_heads):
        source, source_lengths = padded([p.token_ids for p in batch])  # (B, S), (B,)
        target, target_lengths = padded([p.target_ids for p in batch])  # (B, T), (B,)
        memory, encoder = model.encode(source, keep=keep_encoder, lengths=source_lengths)
        decoder = cross = {}
        if keep_decoder:
            _, decoder, cross = model.decode(target, memory, keep=keep_decoder, logits=False)
        kept = {"encoder": encoder, "decoder": decoder, "cross": cross}
        queries = {"encoder": (source, source_lengths), "decoder": (target, target_lengths),
                   "cross": (target, target_lengths)}
        values = {}
        for kind in kinds:
            ids, lengths = queries[kind]
            patterns = None if kind == "cross" else batch_patterns(ids, lengths, **options)
            found = {name: np.empty((len(batch), *shapes[kind])) for name in COLUMNS}  # (B, L, H)
            for li, layer in enumerate(layers[kind]):
                scores = batch_scores(kept[kind][layer], lengths, patterns, kind,
                                      key_lengths=source_lengths)
                for name in COLUMNS:
                    found[name][:, li] = scores[name].cpu().numpy()
            for name in COLUMNS:
                running[kind][name].update(found[name])
            values[kind] = found
        if on_prompt is not None:
            for b, prompt in enumerate(batch):
                on_prompt(prompt, {kind: {name: values[kind][name][b] for name in COLUMNS}
                                   for kind in kinds})
        if on_batch is not None:
            on_batch(len(batch), int(source_lengths.sum()))
    n_source = sum(len(p.token_ids) for p in prompts)
    n_target = sum(len(p.target_ids) for p in prompts)
    return {kind: ScanResult(
        layers=list(layers[kind]), n_heads=model.n_heads, n_prompts=len(prompts),
        n_tokens=n_source if kind == "encoder" else n_target,
        mean={name: running[kind][name].mean_or_nan for name in COLUMNS},
        std={name: running[kind][name].std for name in COLUMNS},
        count={name: running[kind][name].count for name in COLUMNS},
        m2={name: running[kind][name].m2 for name in COLUMNS}, attention=kind)
        for kind in kinds}


def seq2seq_record(prompt: Prompt, values: dict, layers: dict[str, list[int]]) -> dict:
    """The ``--per-prompt`` line of one prompt of an encoder–decoder: per kind its layers
    and each value as ``[layer][head]``."""
    return {
        "index": prompt.index,
        "line": prompt.line,
        "n_tokens": len(prompt.token_ids),
        "decoder_tokens": len(prompt.target_ids),
        "truncated": prompt.truncated,
        "attention": {kind: {"layers": layers[kind],
                             "scores": {name: [[_number(v) for v in row] for row in found[name]]
                                        for name in COLUMNS}}
                      for kind, found in values.items()},
    }
