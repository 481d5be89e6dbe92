"""The parts behind ``attnviz why`` (``attnviz.analyses.why``): each residual-stream
component's part of one head's scaled query and of its key, for every kind of model.

- **Pre-norm decoders and encoders** (GPT-2 … Gemma, ModernBERT; ``transformer_parts``): the
  stream entering layer L is a plain sum of components; the attention norm reads it with its
  statistics frozen, folded into the projection (``_Side``).
- **Post-norm encoders** (BERT, RoBERTa, DistilBERT; ``post_norm_parts``) and the post-norm
  stacks of BART and Marian (``seq2seq_parts``): every LayerNorm after an addition,
  ``LN(y) = γ ⊙ (y − mean(y)) / σ + β``, is frozen at its actual σ (per position) and
  applied to every component already in the stream — linear per position, the centring
  included — and its β joins the stream as a component of its own. The stream is kept as
  explicit components ``(k, T, d)`` (``_Stream``) through the layers.
- **Encoder–decoders** (``seq2seq_parts``): each stack is walked the same way (pre-norm T5,
  post-norm BART/Marian); cross-attention's query side is the decoder's stream at the layer
  (after its self-attention), its key side the encoder's output decomposed through the
  encoder (components named ``enc.…``, through T5's final norm frozen at its actual RMS).
  T5's relative position bias is added to the score as it is: a term of its own, on
  neither side (returned beside the parts).
- **Random mode** (``random_parts``): one attention layer on the token + position
  embeddings; ``--cross``: the query side is the text's, the key side the second text's.

Everything is float64 from the float32 forward pass's own activations.
"""

from __future__ import annotations

import torch

from attnviz.analyses.attribution import _Forward, _frozen, _head_outputs, _spread, head_outputs
from attnviz.models.forward import apply_rope


class _Side:
    """One side (``query`` or ``key``) of a head at some positions: a residual-stream
    component ``(k, n, d)`` -> its part of the query (key) vectors ``(k, n, hd)``, with the
    norm's statistics, the QK-norm's RMS and the rotation of each position frozen.

    The frozen norm is folded into the projection: with ``A = W · diag(norm weight)``,
    ``W · norm(c) = (c · Aᵀ) / spread`` per position, and a LayerNorm's centring is
    ``A``'s rows centred (``Σ (c_i − c̄) a_i = Σ c_i (a_i − ā)``): one product per component,
    no centred or scaled copies of it."""

    def __init__(self, weight, bias=None, spread=None, norm_bias=None, qk_scale=None,
                 rope=None, factor: float = 1.0):
        self.weight, self.bias = weight, bias  # (hd, d) with the norm folded in, (hd,) float64
        self.spread = spread  # (n, 1): what the norm divides each position by, or None
        self.norm_bias = norm_bias  # (hd,): the norm's bias through the projection, or None
        self.qk_scale = qk_scale  # (n, hd): QK-norm weight / the actual RMS, or None
        self.rope = rope  # (cos, sin), (n, rotary_dim) each, or None
        self.factor = factor  # the score's scale, on the query side

    @classmethod
    def reading(cls, linear, rows: slice, norm, stream: torch.Tensor | None,
                positions: list[int], factor: float = 1.0, rope=None, qk_scale=None) -> _Side:
        """The rows ``rows`` of ``linear`` reading ``norm(stream)`` at ``positions``, the
        norm frozen at ``stream (T, d)`` (None or ``nn.Identity``: the stream itself)."""
        weight = linear.weight[rows].double()  # (hd, d)
        bias = None if linear.bias is None else linear.bias[rows].double()
        if norm is None or isinstance(norm, torch.nn.Identity):
            return cls(weight, bias, None, None, qk_scale, rope, factor)
        folded = weight * norm.weight.double()
        if isinstance(norm, torch.nn.LayerNorm):
            folded = folded - folded.mean(-1, keepdim=True)
        norm_bias = getattr(norm, "bias", None)
        return cls(folded, bias, _spread(norm, stream[positions].double()),
                   None if norm_bias is None else weight @ norm_bias.double(), qk_scale, rope,
                   factor)

    @classmethod
    def of(cls, block, which: str, index: int, stream: torch.Tensor, stages: dict,
           positions: list[int]) -> _Side:
        """Side ``which`` of query head (or key/value head) ``index`` of a pre-norm
        ``block``, at ``positions``; ``stream (T, d)`` enters the block, ``stages`` from
        ``Attention.project`` (the projections before the QK-norm)."""
        attn = block.attn
        is_query = which == "query"
        linear, qk_norm = (attn.W_query, attn.q_norm) if is_query else (attn.W_key, attn.k_norm)
        rows = slice(index * attn.head_dim, (index + 1) * attn.head_dim)
        qk_scale = None
        if qk_norm is not None:
            projected = stages["queries_projected" if is_query else "keys_projected"]
            before = projected[0, index, positions].double()  # (n, hd)
            rms = torch.sqrt(before.pow(2).mean(-1, keepdim=True) + qk_norm.eps)
            qk_scale = qk_norm.weight.double() / rms
        rope = None
        if attn.rope is not None:
            rope = tuple(t[positions].double() for t in attn.rope_tables)
        return cls.reading(linear, rows, block.norm1, stream, positions,
                           attn.scale if is_query else 1.0, rope, qk_scale)

    def __call__(self, component: torch.Tensor) -> torch.Tensor:
        part = component @ self.weight.T  # (k, n, d) @ (d, hd) -> (k, n, hd)
        return self.finish(part if self.spread is None else part / self.spread)

    def finish(self, part: torch.Tensor) -> torch.Tensor:
        """A part of the projection ``(k, n, hd)`` through the QK-norm, RoPE and scale."""
        if self.qk_scale is not None:
            part = part * self.qk_scale
        if self.rope is not None:
            part = apply_rope(part, *self.rope)
        return part * self.factor

    def bias_parts(self, layer: int, n: int) -> list[tuple[str, torch.Tensor]]:
        """The parts of layer ``layer``'s own biases, ``(1, n, hd)`` each."""
        parts = []
        if self.norm_bias is not None:
            parts.append((f"bias.norm{layer}", self.finish(self.norm_bias.expand(1, n, -1))))
        if self.bias is not None:
            parts.append((f"bias.proj{layer}", self.finish(self.bias.expand(1, n, -1))))
        return parts


class _Parts:
    """The components' parts of the queries and of the keys, collected in order: the same
    stream on both sides (``add``), or each side its own (cross-attention)."""

    def __init__(self, query_side: _Side, key_side: _Side, queries: list[int], keys: list[int]):
        self.sides, self.positions = (query_side, key_side), (queries, keys)
        # consecutive positions (one query, or every one; the keys a query sees): views, not copies
        self.at = tuple(slice(p[0], p[-1] + 1) for p in (queries, keys))
        assert all(p == list(range(p[0], p[-1] + 1)) for p in (queries, keys))
        self.names: tuple[list[str], list[str]] = ([], [])  # query side, key side
        self.parts: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])  # (k, Q|K, hd) each

    def add(self, names: list[str], component: torch.Tensor) -> None:
        """Components ``(k, T, d)`` (float64) of the stream both sides read."""
        self.add_side(0, names, component)
        self.add_side(1, names, component)

    def add_side(self, side: int, names: list[str], component: torch.Tensor) -> None:
        """Components ``(k, T, d)`` of the stream side ``side`` (0 query, 1 key) reads."""
        self.names[side].extend(names)
        self.parts[side].append(self.sides[side](component[:, self.at[side]]))

    def add_biases(self, layer: int) -> None:
        for side in (0, 1):
            for name, part in self.sides[side].bias_parts(layer, len(self.positions[side])):
                self.names[side].append(name)
                self.parts[side].append(part)

    def arrays(self):
        """``(C_q, Q, hd)`` query parts and ``(C_k, K, hd)`` key parts (numpy float64)."""
        return tuple(torch.cat(p).cpu().numpy() for p in self.parts)


class _Stream:
    """A residual stream as explicit components, ``[(names, (k, T, d) float64)]``: what a
    post-norm model needs, since each LayerNorm after an addition transforms everything
    already in the stream."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix  # "enc.": the encoder's components, on cross-attention's key side
        self.groups: list[tuple[list[str], torch.Tensor]] = []

    def add(self, names: list[str], component: torch.Tensor) -> None:
        self.groups.append(([self.prefix + n for n in names], component.double()))

    def normalize(self, norm, actual: torch.Tensor, bias_name: str) -> None:
        """Every component through ``norm`` frozen at ``actual (T, d)``, what the norm
        actually read: centred (LayerNorm), divided by its position's σ (RMS), times the
        weight; the norm's bias joins the stream as ``bias_name``."""
        apply, bias = _frozen(norm, actual.double())
        self.groups = [(names, apply(c)) for names, c in self.groups]
        if bias is not None:
            self.add([bias_name], bias.double().expand(1, actual.shape[0], -1))

    def total(self) -> torch.Tensor:
        """``(T, d)``: the components summed."""
        return sum(c.sum(0) for _, c in self.groups)

    def into(self, parts: _Parts, side: int | None = None) -> None:
        for names, component in self.groups:
            if side is None:
                parts.add(names, component)
            else:
                parts.add_side(side, names, component)


def transformer_parts(model, ids: list[int], layer: int, head: int, queries: list[int],
                      keys: list[int], progress=None):
    """The parts of a pre-norm checkpoint's head at ``queries`` and ``keys``, the forward's
    own (scaled) queries and keys there, the head's weights ``(T, T)`` and its softcap."""
    n = len(ids)
    model.ready(n, progress, n_blocks=layer + 1)
    forward = _Forward(model, ids, n_blocks=layer)  # what each earlier block added
    block, stream = model.blocks[layer], forward.final  # (T, d): the stream entering the layer
    _, _, weights = block(stream[None], mlp=False)  # (1, nh, T, T): the layer's own weights
    attn = block.attn
    kv_head = head // (attn.num_heads // attn.num_kv_heads)
    stages: dict = {}
    projected_q, projected_k, _ = attn.project(block.norm1(stream[None]), stages)  # (1, nh|nkv, T, hd)
    parts = _Parts(_Side.of(block, "query", head, stream, stages, queries),
                   _Side.of(block, "key", kv_head, stream, stages, keys), queries, keys)
    embedding = forward.embedding.double()  # (T, d)
    positions = model.checkpoint.weights.positions(0, n)
    if positions is None:
        parts.add(["embed"], embedding[None])
    else:  # the table rows as embed added them: the two parts sum to its float32 output
        positions = positions.to(embedding.device).double()
        parts.add(["embed", "pos"], torch.stack([embedding - positions, positions]))
    for i, earlier in enumerate(model.blocks[:layer]):
        heads = _head_outputs(earlier.attn, forward.contexts[i].double()).transpose(0, 1)  # (nh, T, d)
        bias = earlier.attn.out_proj.bias
        bias = None if bias is None else bias.double().expand(1, n, -1)
        if earlier.attn_out_norm is not None:  # frozen at the layer's actual attention output
            sandwich, sandwich_bias = _frozen(earlier.attn_out_norm,
                                              forward.records[i]["attn_out"][0].double())
            heads = sandwich(heads)
            bias = None if bias is None else sandwich(bias)
            if sandwich_bias is not None:
                bias = sandwich_bias.double().expand(1, n, -1) + (0 if bias is None else bias)
        parts.add([f"L{i}.H{h}" for h in range(heads.shape[0])], heads)
        if bias is not None:
            parts.add([f"bias.out{i}"], bias)
        parts.add([f"mlp{i}"], forward.records[i]["mlp_added"][0].double()[None])
    parts.add_biases(layer)
    actual_q = projected_q[0, head, queries].double() * attn.scale  # (Q, hd)
    actual_k = projected_k[0, kv_head, keys].double()  # (K, hd)
    return parts, kv_head, actual_q, actual_k, weights[0, head], attn.softcap


def _layer_norm(tensors: dict, eps: float) -> torch.nn.LayerNorm:
    """``{"weight", "bias"}`` as a LayerNorm module (for ``_frozen``)."""
    norm = torch.nn.LayerNorm(tensors["weight"].shape[0], eps=eps)
    with torch.no_grad():
        norm.weight.copy_(tensors["weight"])
        norm.bias.copy_(tensors["bias"])
    return norm


def _embedded(stream: _Stream, terms: list[tuple[str, torch.Tensor]], norm, device) -> None:
    """The embedding terms ``[(name, (1, T, d))]`` into ``stream``, then through the
    embedding norm (when there is one) frozen at their actual float32 sum."""
    actual = None
    for name, term in terms:
        term = term.to(device)
        actual = term if actual is None else actual + term  # in embed's order: its very sum
        stream.add([name], term)
    if norm is not None:
        stream.normalize(norm.to(device), actual[0], "bias.ln_emb")


def post_norm_parts(model, ids: list[int], layer: int, head: int, queries: list[int],
                    keys: list[int], token_types: list[int] | None = None, progress=None):
    """``transformer_parts`` of a post-norm encoder (BERT, RoBERTa, DistilBERT): the stream
    entering layer L is the output of block L − 1's second LayerNorm; each component is
    carried through every LayerNorm after it (see the module docstring)."""
    n = len(ids)
    model.ready(n, progress, n_blocks=layer + 1)
    forward = _Forward(model, ids, n_blocks=layer, token_types=token_types)
    block, entering = model.blocks[layer], forward.final  # (T, d)
    _, _, weights = block(entering[None], mlp=False)  # (1, nh, T, T)
    attn = block.attn
    maps = model.checkpoint.weights
    types = None if token_types is None else torch.tensor([token_types])
    stream = _Stream()
    _embedded(stream, maps.embed_parts(torch.tensor([ids]), token_types=types),
              _layer_norm(maps.embed_norm(), model.spec.norm_eps), entering.device)
    for i, earlier in enumerate(model.blocks[:layer]):
        record = forward.records[i]
        heads = _head_outputs(earlier.attn, forward.contexts[i].double()).transpose(0, 1)  # (nh, T, d)
        stream.add([f"L{i}.H{h}" for h in range(heads.shape[0])], heads)
        if earlier.attn.out_proj.bias is not None:
            stream.add([f"bias.out{i}"], earlier.attn.out_proj.bias.expand(1, n, -1))
        stream.normalize(earlier.norm1, record["norm1_in"][0], f"bias.ln_attn{i}")
        stream.add([f"mlp{i}"], record["mlp_added"][0][None])
        stream.normalize(earlier.norm2, record["norm2_in"][0], f"bias.ln_mlp{i}")
    rows = slice(head * attn.head_dim, (head + 1) * attn.head_dim)
    parts = _Parts(_Side.reading(attn.W_query, rows, None, None, queries, attn.scale),
                   _Side.reading(attn.W_key, rows, None, None, keys), queries, keys)
    stream.into(parts)
    parts.add_biases(layer)
    actual_q = attn.W_query(entering)[queries, rows].double() * attn.scale  # (Q, hd)
    actual_k = attn.W_key(entering)[keys, rows].double()  # (K, hd)
    return parts, head, actual_q, actual_k, weights[0, head], None


def random_parts(model, ids: list[int], head: int, queries: list[int], keys: list[int],
                 key_ids: list[int] | None = None):
    """Random mode: the one attention layer on the token + position embeddings (causal, or
    ``--bidirectional``); with ``key_ids`` (``--cross``), its cross-attention module: the
    query side the text's embeddings, the key side the second text's."""
    second = None if key_ids is None else torch.tensor([key_ids])
    ((_, weights, attn),) = model.run(torch.tensor([ids]), [0], key_ids=second) if (
        second is not None) else model.run(torch.tensor([ids]), [0])
    device = attn.W_query.weight.device
    rows = slice(head * attn.head_dim, (head + 1) * attn.head_dim)
    parts = _Parts(_Side.reading(attn.W_query, rows, None, None, queries, attn.scale),
                   _Side.reading(attn.W_key, rows, None, None, keys), queries, keys)
    tokens, positions = (t.to(device) for t in model.embed_parts(ids))  # (T, d) each
    x = tokens + positions
    if key_ids is None:
        parts.add(["embed", "pos"], torch.stack([tokens, positions]).double())
        context = x
    else:
        key_tokens, key_positions = (t.to(device) for t in model.embed_parts(key_ids,
                                                                              model.key_width))
        parts.add_side(0, ["embed", "pos"], torch.stack([tokens, positions]).double())
        parts.add_side(1, ["embed", "pos"], torch.stack([key_tokens, key_positions]).double())
        context = key_tokens + key_positions
    parts.add_biases(0)
    with torch.inference_mode():
        actual_q = attn.W_query(x[queries])[:, rows].double() * attn.scale
        actual_k = attn.W_key(context[keys])[:, rows].double()
    return parts, head, actual_q, actual_k, weights[0, head], None


def _stack_stream(model, stack: str, ids: torch.Tensor, records: list[dict],
                  stop: tuple[int, str] | None = None, prefix: str = "") -> _Stream:
    """The residual stream of ``stack`` ("encoder" or "decoder") of an encoder–decoder as
    components: entering part ``stop = (layer, "self"|"cross"|"mlp")`` (before its norm,
    pre-norm), or after the last layer (before a final norm). ``records`` from
    ``EncoderDecoder.encode``/``decode``. Names: ``embed``, ``pos``, ``bias.ln_emb``,
    ``L3.H1`` (self-attention head), ``L3.X1`` (cross-attention head), ``bias.out3``,
    ``bias.xout3`` (their output biases), ``mlp3``, and post-norm ``bias.ln_attn3``,
    ``bias.ln_cross3``, ``bias.ln_mlp3`` (each LayerNorm's β)."""
    spec, layers = model.spec, model.stack(stack)
    stream = _Stream(prefix)
    terms, norm = model.embed_parts(ids, stack)
    _embedded(stream, terms, norm, model.device)
    n = ids.shape[1]
    for i, record in enumerate(records):
        module = layers[i]
        for part, letter, norm_name in (("self", "H", "attn"), ("cross", "X", "cross"),
                                        ("mlp", None, "mlp")):
            if stop == (i, part):
                return stream
            if part not in record:
                continue
            done = record[part]
            if part == "mlp":
                stream.add([f"mlp{i}"], done["out"][0][None])
            else:
                attn = module.self_attn if part == "self" else module.cross_attn
                heads = head_outputs(attn.o.weight, done["context"][0].double(), attn.n_heads)
                stream.add([f"L{i}.{letter}{h}" for h in range(attn.n_heads)], heads.transpose(0, 1))
                if attn.o.bias is not None:
                    stream.add([f"bias.{'out' if part == 'self' else 'xout'}{i}"],
                               attn.o.bias.expand(1, n, -1))
            if not spec.pre_norm:
                norm = getattr(module, f"{part}_norm")
                stream.normalize(norm, done["norm_in"][0], f"bias.ln_{norm_name}{i}")
    return stream


def seq2seq_parts(model, source_ids: list[int], target_ids: list[int], kind: str, layer: int,
                  head: int, queries: list[int], keys: list[int]):
    """The parts of head (``layer``, ``head``) of attention ``kind`` ("encoder", "decoder",
    "cross") of an encoder–decoder, the forward's own scaled queries and keys, the head's
    weights ``(T_q, T_k)``, no softcap (None), and T5's relative position bias ``(Q, K)``
    (None for BART, Marian and cross-attention). See the module docstring."""
    spec = model.spec
    source = torch.tensor([source_ids], device=model.device)
    encoder_records: list[dict] = []
    memory, kept = model.encode(source, keep=[layer] if kind == "encoder" else [],
                                records=encoder_records)
    stack, ids, records = "encoder", source, encoder_records
    if kind != "encoder":
        stack, ids, records = "decoder", torch.tensor([target_ids], device=model.device), []
        _, own, cross = model.decode(ids, memory, keep=[layer], logits=False, records=records)
        kept = own if kind == "decoder" else cross
    module = model.stack(stack)[layer]
    part = "cross" if kind == "cross" else "self"
    attn, norm = getattr(module, f"{part}_attn"), getattr(module, f"{part}_norm")
    norm = norm if spec.pre_norm else None
    entering = records[layer][part]["input"][0]  # (T, d): the stream the attention's norm reads
    rows = slice(head * attn.head_dim, (head + 1) * attn.head_dim)
    stream = _stack_stream(model, stack, ids, records, stop=(layer, part))
    query_side = _Side.reading(attn.q, rows, norm, entering, queries, spec.scale)
    with torch.inference_mode():
        read = norm(entering) if norm is not None else entering
        actual_q = attn.q(read)[queries, rows].double() * spec.scale  # (Q, hd)
    bias = None
    if kind == "cross":  # the keys: the encoder's output, through T5's final norm
        final = model.encoder_final_norm()
        parts = _Parts(query_side, _Side.reading(attn.k, rows, final, memory.final[0], keys),
                       queries, keys)
        stream.into(parts, 0)
        _stack_stream(model, "encoder", source, encoder_records, prefix="enc.").into(parts, 1)
        with torch.inference_mode():
            actual_k = attn.k(memory.hidden[0])[keys, rows].double()  # (K, hd)
    else:
        parts = _Parts(query_side, _Side.reading(attn.k, rows, norm, entering, keys), queries,
                       keys)
        stream.into(parts)
        with torch.inference_mode():
            actual_k = attn.k(read)[keys, rows].double()
        relative = model.relative_bias(stack)
        if relative is not None:  # (nh, T, T) -> the head's (Q, K), as the engine adds it
            n = ids.shape[1]
            bias = relative(0, n, 0, n)[head][queries][:, keys].double()
    parts.add_biases(layer)
    return parts, head, actual_q, actual_k, kept[layer][0, head], None, bias
