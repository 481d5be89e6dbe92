"""One head of an encoder–decoder (T5, BART, Marian) through the attention pipeline: the
steps of ``attnviz.analyses.steps`` for each of its three kinds of attention.

>>> steps, result = seq2seq_head_steps(model, source_ids, target_ids, kind="cross",
...                                    layer=1, head=2)             # doctest: +SKIP
>>> steps.queries.shape, steps.keys.shape, steps.weights.shape   # (T_dec, d_k), (T_enc, d_k), ...
((7, 64), (13, 64), (7, 13))

- ``encoder``: Q, K and V from what the encoder layer hands its self-attention (T5: the
  hidden state after the layer's RMSNorm; BART, Marian: the layer's input, the norm comes
  after); no mask, ``(S, S)``.
- ``decoder``: the decoder layer's self-attention over what the decoder reads; the causal
  mask, ``(T, T)``.
- ``cross``: Q from the decoder's hidden state where the layer's cross-attention reads it
  (after its self-attention part), K and V from the encoder's output ``X₂`` (after T5's
  final norm), projected by this layer; no mask, ``(T, S)``.

T5 does not scale its scores (the factor is 1: no scale step) and adds its relative
position bias ``B``: one learned number per distance bucket and head, from the table of
each stack's first layer (block 0's ``relative_attention_bias``), added in every layer of
that stack to the self-attention scores; cross-attention has none. BART and Marian
multiply ``Q·Kᵀ`` by ``1/√d_k`` (as transformers 5 does; older versions scaled the queries
first, the same numbers to float32 rounding).

The numbers are computed from what the model's own forward pass handed the attention
(caught by a forward pre-hook on the layer's attention module) with that module's own
projections and the bias function the pass used, so ``steps.weights`` is the row of
``analyze_seq2seq`` (and of transformers' eager float32 attentions, to 1e-5).
"""

from __future__ import annotations

from attnviz.analyses.attention import check_heads
from attnviz.analyses.seq2seq import KINDS, Seq2SeqResult, analyze_seq2seq_ids, stack_layers
from attnviz.analyses.steps import HeadSteps, as_float64, pipeline


def stack_of(kind: str) -> str:
    """The stack whose layers hold ``kind``: the encoder's, or the decoder's (both its
    self-attention and its cross-attention)."""
    return "encoder" if kind == "encoder" else "decoder"


def seq2seq_head_steps(model, source: list[int], target: list[int], *, kind: str,
                       layer: int | str = 0, head: int = 0,
                       resolution: int | None = None) -> tuple[HeadSteps, Seq2SeqResult]:
    """Head ``head`` of ``layer`` (counted in ``kind``'s stack) of ``model`` (an
    ``EncoderDecoder``), step by step, for the source ids ``source`` and what the decoder
    reads, ``target``; and the ``Seq2SeqResult`` of that one kind and layer (the tokens,
    every head's weights)."""
    import torch

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    check_heads([head], model.n_heads)
    stack = stack_of(kind)
    [index] = stack_layers(model, str(layer), (kind,))[stack]
    block = model.stack(stack)[index]
    module = block.cross_attn if kind == "cross" else block.self_attn
    seen: dict = {}

    def catch(_module, args, kwargs):  # what the forward pass hands this attention
        seen.update(kwargs, x=args[0])

    handle = module.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        result = analyze_seq2seq_ids(model, source, target, layer=str(index), kinds=(kind,),
                                     heads=[head], resolution=resolution)
    finally:
        handle.remove()
    x = seen["x"]  # (1, T, d): the attention's input, float32, as the model computed it
    with torch.inference_mode():
        queries = module.heads(module.q(x))  # (1, nh, T, d_k)
        # cross-attention: the encoder's keys and values, as this layer projected them
        keys, values = seen.get("memory_kv") or module.keys_values(x)  # (1, nh, T_k, d_k) x 2
        make_bias = seen.get("bias")  # T5's self-attention: the stack's shared bias
        n_queries, n_keys = queries.shape[2], keys.shape[2]
        bias = None if make_bias is None else make_bias(0, n_queries, 0, n_keys)[head]  # (T, T_k)
        computed = pipeline(queries[0, head], keys[0, head], values[0, head],
                            scale=module.scale, bias=bias, causal=seen["causal"])
        matrices = {name: as_float64(t) for name, t in
                    {"queries": queries[0, head], "keys": keys[0, head],
                     "values": values[0, head], **computed}.items()}
    spec = model.spec
    relative = None
    if bias is not None:
        relative = {"num_buckets": spec.relative_buckets,
                    "max_distance": spec.relative_max_distance,
                    "bidirectional": kind == "encoder", "layer": 0}
    steps = HeadSteps(layer=index, head=head, head_dim=module.head_dim, scale=module.scale,
                      **matrices, biased=spec.bias, causal=seen["causal"],
                      cross=kind == "cross", relative=relative, kind=kind)
    return steps, result
