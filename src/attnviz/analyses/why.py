"""Why a head attends where it does: one attention score split exactly into what the query
and the key carry (QK attribution).

>>> result = why(model, token_ids, layer=1, head=3, query=20)  # doctest: +SKIP
>>> result.contributions().shape  # (query components, key components)  # doctest: +SKIP
(32, 32)
>>> result.contributions().sum() == result.score  # the matrix adds up  # doctest: +SKIP
True

The residual stream entering layer L is a sum of components: the token embedding
(``embed``), the learned position embedding (``pos``, GPT-2 style), each earlier head's
output through its slice of the output projection (``L3.H7``), each earlier output
projection's bias (``bias.out3``) and each earlier MLP's output (``mlp3``). Freeze the
attention norm's statistics of every position at their actual values (LayerNorm: the
centring, which is linear, then the division by the position's σ; RMSNorm: the division by
its RMS), and the query of head (L, H) at position i is affine in the components; so is the
rest: QK-norm with its RMS frozen at the actual query (key) head, RoPE (the rotation of a
fixed position) and the scale. Component a gives a part ``u_a`` of the scaled query, component
b a part ``v_b`` of the key, layer L's own biases give two more (the norm's bias through the
projection, ``bias.norm{L}``; the projection's bias, ``bias.proj{L}``), and the score splits
exactly:

    s_ij = scale · q_i · k_j = Σ_a Σ_b u_a(i) · v_b(j)

A sandwich norm after the attention (Gemma 2/3) is not linear either: its RMS is frozen at
the layer's actual attention output, as ``attribute``'s direct logit attribution freezes it,
and each head's share then passes through it linearly. An MLP's output (after its own
sandwich norm) is one component as it is. A softcapped score (Gemma 2) is split before the
cap; the weight comes from ``cap · tanh(s / cap)``. Random mode has one attention layer on
seeded embeddings and no norm: its components are the token and position embeddings (and
the projection biases). Everything is computed in float64 from the float32 forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from attnviz.analyses.attention import import_pandas, token_records
from attnviz.analyses.attribution import (
    _Forward,
    _frozen,
    _head_outputs,
    _spread,
    check_position,
    token_labels,
)
from attnviz.core.errors import InputError
from attnviz.core.views import Displayable
from attnviz.models.forward import apply_rope


@dataclass(repr=False)
class WhyResult(Displayable):
    """The split of head (``layer``, ``head``)'s scores from ``query`` over ``keys``: each
    component's part of the query and of every key. Shown in a notebook as the score, the
    top pairs and the totals per component on each side."""

    token_ids: list[int]
    layer: int
    head: int
    kv_head: int  # the key/value head the head reads (grouped-query attention)
    query: int
    key: int  # the key explained (default: the one the head attends to most)
    keys: list[int]  # the keys the query sees (causal mask, sliding window)
    components: list[str]  # the same names on both sides: rows query, columns key
    query_parts: np.ndarray  # (C, hd) float64: each component's part of the scaled query
    key_parts: np.ndarray  # (C, K, hd) float64: its part of the key at each of ``keys``
    model_scores: np.ndarray  # (K,) the forward pass's own scores (float32 q, k), before a softcap
    weights: np.ndarray  # (K,) the forward pass's attention weights over ``keys``
    softcap: float | None = None
    vector_error: float = 0.0  # max |Σ parts - the forward's q (k)| / max |q (k)|
    config: dict = field(default_factory=dict)
    tokenizer: object = field(default=None, compare=False)  # for labels (not data)
    cells: WhyCells | None = field(default=None, compare=False)  # every cell, when asked

    def __repr__(self) -> str:
        return (f"<attnviz why: L{self.layer} H{self.head}, query {self.query} -> key "
                f"{self.key}: score {self.score:.4f} = {len(self.components)} x "
                f"{len(self.components)} contributions, weight {self.weight:.4f}>")

    @property
    def query_components(self) -> list[str]:
        return list(self.components)

    @property
    def key_components(self) -> list[str]:
        return list(self.components)

    def key_index(self, key: int | None = None) -> int:
        """The column of ``key`` (default: ``self.key``) in ``keys``."""
        key = self.key if key is None else key
        if key not in self.keys:
            raise InputError(f"key {key} is not one the query sees: keys {self.keys[0]}-"
                             f"{self.keys[-1]}")
        return self.keys.index(key)

    def contributions(self, key: int | None = None) -> np.ndarray:
        """``(C, C)`` float64: entry (a, b) is query component a's part · key component b's
        part of the key ``key`` (default: ``self.key``); the entries add up to its score."""
        return self.query_parts @ self.key_parts[:, self.key_index(key)].T

    @property
    def scores(self) -> np.ndarray:
        """``(K,)``: the split scores of every key (before a softcap), from the parts."""
        return np.einsum("d,kd->k", self.query_parts.sum(0), self.key_parts.sum(0))

    @property
    def score(self) -> float:
        """The score of ``key``, before a softcap: the sum of ``contributions()``."""
        return float(self.contributions().sum())

    @property
    def model_score(self) -> float:
        return float(self.model_scores[self.key_index()])

    @property
    def capped_score(self) -> float:
        """The score after the softcap (the score itself without one)."""
        if self.softcap is None:
            return self.score
        return float(self.softcap * np.tanh(self.score / self.softcap))

    @property
    def weight(self) -> float:
        return float(self.weights[self.key_index()])

    def query_totals(self, key: int | None = None) -> np.ndarray:
        """``(C,)``: each query component's part · the whole key (rows of the matrix summed)."""
        return self.query_parts @ self.key_parts[:, self.key_index(key)].sum(0)

    def key_totals(self, key: int | None = None) -> np.ndarray:
        """``(C,)``: the whole query · each key component's part (columns summed)."""
        return self.key_parts[:, self.key_index(key)] @ self.query_parts.sum(0)

    def key_totals_by_key(self) -> np.ndarray:
        """``(C, K)``: ``key_totals`` of every key the query sees — which components make
        each key attractive (the K-composition picture); column j sums to key j's score."""
        return np.einsum("d,ckd->ck", self.query_parts.sum(0), self.key_parts)

    def top_pairs(self, n: int = 10, key: int | None = None) -> list[tuple[str, str, float]]:
        """The ``n`` (query component, key component, contribution) with the largest
        |contribution|, largest first."""
        matrix = self.contributions(key)
        order = np.argsort(-np.abs(matrix), axis=None, kind="stable")[:n]
        c = len(self.components)
        return [(self.components[i // c], self.components[i % c], float(matrix.flat[i]))
                for i in order]

    def top_components(self, side: str, n: int = 10, key: int | None = None
                       ) -> list[tuple[str, float]]:
        """The ``n`` components of ``side`` (``query`` or ``key``) with the largest |total|."""
        totals = self.query_totals(key) if side == "query" else self.key_totals(key)
        order = np.argsort(-np.abs(totals), kind="stable")[:n]
        return [(self.components[i], float(totals[i])) for i in order]

    def to_numpy(self) -> np.ndarray:
        """``contributions()``: ``(C, C)``."""
        return self.contributions()

    def to_pandas(self):
        """One row per (query component, key component): ``contribution``. Needs pandas."""
        return import_pandas().DataFrame(pair_rows(self))


def parse_head(text: str, n_layers: int, n_heads: int) -> tuple[int, int]:
    """``--head L.H`` -> ``(layer, head)``, or ``InputError`` naming the allowed range."""
    layer_text, dot, head_text = str(text).partition(".")
    if not dot or not layer_text.strip().isdigit() or not head_text.strip().isdigit():
        raise InputError(f"--head must be LAYER.HEAD, e.g. 1.3 (layer 1, head 3), got {text!r}")
    return check_head(int(layer_text), int(head_text), n_layers, n_heads)


def check_head(layer: int, head: int, n_layers: int, n_heads: int) -> tuple[int, int]:
    if not 0 <= layer < n_layers:
        raise InputError(f"--layer {layer}: layer {layer} is out of range: the model has "
                         f"{n_layers} layer{'s' if n_layers != 1 else ''} (0-{n_layers - 1})")
    if not 0 <= head < n_heads:
        raise InputError(f"--head {head}: head {head} is out of range: layer {layer} has "
                         f"{n_heads} heads (0-{n_heads - 1})")
    return layer, head


def check_query(query: int, n_tokens: int) -> int:
    """``--query`` (negative counts from the end) -> absolute, or ``InputError``."""
    return check_position(query, n_tokens, "--query")


def visible_keys(query: int, window: int | None) -> list[int]:
    """The keys ``query`` sees: ``0 .. query``, or the last ``window`` of them."""
    return list(range(max(0, query - window + 1) if window else 0, query + 1))


def check_key(key: int, query: int, window: int | None, layer: int) -> int:
    """``--key`` -> itself, or ``InputError`` when the query cannot see it."""
    keys = visible_keys(query, window)
    if key < 0:
        raise InputError(f"--key {key} is out of range: query {query} sees keys "
                         f"{keys[0]}-{keys[-1]}")
    if key > query:
        raise InputError(f"--key {key} is after the query {query}: under the causal mask "
                         f"query {query} sees keys {keys[0]}-{keys[-1]}")
    if key < keys[0]:
        raise InputError(f"--key {key} is outside layer {layer}'s sliding window of {window} "
                         f"tokens: query {query} sees keys {keys[0]}-{keys[-1]}")
    return key


def count_components(model, layer: int) -> tuple[int, int]:
    """``(components, head_dim)`` of a split at ``layer``, known before it is computed (for
    size checks): the embeddings, each earlier layer's heads, output bias and MLP, and the
    layer's own biases."""
    if model.describe().get("mode") == "random":
        config = model.config
        return 2 + int(config.qkv_bias), config.d_model // config.n_heads
    spec = model.spec
    per_layer = spec.n_heads + int(spec.out_bias) + 1
    own = int(spec.norm == "layernorm") + int(spec.qkv_bias)
    return 1 + int(spec.positions == "learned") + layer * per_layer + own, spec.head_dim


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
    def of(cls, block, which: str, index: int, stream: torch.Tensor, stages: dict,
           positions: list[int]) -> _Side:
        """Side ``which`` of query head (or key/value head) ``index`` of ``block``, at
        ``positions``; ``stream (T, d)`` enters the block, ``stages`` from
        ``Attention.project`` (the projections before the QK-norm)."""
        attn, norm = block.attn, block.norm1
        is_query = which == "query"
        linear, qk_norm = (attn.W_query, attn.q_norm) if is_query else (attn.W_key, attn.k_norm)
        rows = slice(index * attn.head_dim, (index + 1) * attn.head_dim)
        weight = linear.weight[rows].double()  # (hd, d)
        folded = weight * norm.weight.double()
        if isinstance(norm, torch.nn.LayerNorm):
            folded = folded - folded.mean(-1, keepdim=True)
        norm_bias = getattr(norm, "bias", None)
        qk_scale = None
        if qk_norm is not None:
            projected = stages["queries_projected" if is_query else "keys_projected"]
            before = projected[0, index, positions].double()  # (n, hd)
            rms = torch.sqrt(before.pow(2).mean(-1, keepdim=True) + qk_norm.eps)
            qk_scale = qk_norm.weight.double() / rms
        rope = None
        if attn.rope is not None:
            rope = tuple(t[positions].double() for t in attn.rope_tables)
        return cls(folded, None if linear.bias is None else linear.bias[rows].double(),
                   _spread(norm, stream[positions].double()),
                   None if norm_bias is None else weight @ norm_bias.double(), qk_scale, rope,
                   attn.scale if is_query else 1.0)

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
    """The components' parts of the queries and of the keys, collected in order."""

    def __init__(self, query_side: _Side, key_side: _Side, queries: list[int], keys: list[int]):
        self.sides, self.queries, self.keys = (query_side, key_side), queries, keys
        # consecutive positions (one query, or every one; the keys a query sees): views, not copies
        self.at = tuple(slice(p[0], p[-1] + 1) for p in (queries, keys))
        assert all(p == list(range(p[0], p[-1] + 1)) for p in (queries, keys))
        self.names: list[str] = []
        self.query_parts: list[torch.Tensor] = []  # (k, Q, hd) each
        self.key_parts: list[torch.Tensor] = []  # (k, K, hd) each

    def add(self, names: list[str], component: torch.Tensor) -> None:
        """Components ``(k, T, d)`` (float64) of the stream at every position."""
        self.names += names
        self.query_parts.append(self.sides[0](component[:, self.at[0]]))
        self.key_parts.append(self.sides[1](component[:, self.at[1]]))

    def add_biases(self, layer: int) -> None:
        query, key = (side.bias_parts(layer, len(at))
                      for side, at in zip(self.sides, (self.queries, self.keys)))
        for (name, q), (_, k) in zip(query, key):
            self.names.append(name)
            self.query_parts.append(q)
            self.key_parts.append(k)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(C, Q, hd)`` query parts and ``(C, K, hd)`` key parts."""
        return torch.cat(self.query_parts).cpu().numpy(), torch.cat(self.key_parts).cpu().numpy()


def _transformer_parts(model, ids: list[int], layer: int, head: int, queries: list[int],
                       keys: list[int], progress=None):
    """The parts of a checkpoint's head at ``queries`` and ``keys`` (see the module
    docstring), the forward's own (scaled) queries and keys there, the head's weights
    ``(T, T)`` and its softcap."""
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


def _random_parts(model, ids: list[int], head: int, queries: list[int], keys: list[int]):
    """Random mode: the one attention layer on the token + position embeddings."""
    ((_, weights, attn),) = model.run(torch.tensor([ids]), [0])
    device = attn.W_query.weight.device
    tokens, positions = (t.to(device) for t in model.embed_parts(ids))  # (T, d) each
    rows = slice(head * attn.head_dim, (head + 1) * attn.head_dim)

    def side(linear, factor):
        return _Side(linear.weight[rows].double(),
                     None if linear.bias is None else linear.bias[rows].double(), factor=factor)

    parts = _Parts(side(attn.W_query, attn.scale), side(attn.W_key, 1.0), queries, keys)
    parts.add(["embed", "pos"], torch.stack([tokens, positions]).double())
    parts.add_biases(0)
    x = tokens + positions
    with torch.inference_mode():
        actual_q = attn.W_query(x[queries])[:, rows].double() * attn.scale
        actual_k = attn.W_key(x[keys])[:, rows].double()
    return parts, head, actual_q, actual_k, weights[0, head], None


@dataclass(repr=False)
class WhyCells:
    """Every cell of the head at once (``why(..., every_query=True)``): each component's
    part of the scaled query and of the key at every position; the matrix of cell (i, j) is
    ``query_parts[:, i] @ key_parts[:, j].T`` (what the report computes when a cell is
    clicked)."""

    query_parts: np.ndarray  # (C, T, hd) float64
    key_parts: np.ndarray  # (C, T, hd) float64
    weights: np.ndarray  # (T, T) float32: the head's attention weights
    window: int | None = None  # the layer's sliding window


def why(model, token_ids: list[int], *, layer: int, head: int, query: int = -1,
        key: int | None = None, progress=None, every_query: bool = False) -> WhyResult:
    """Split head (``layer``, ``head``)'s scores from ``query`` (negative: from the end) of
    ``model`` (from ``analysis.load_model``) into components (see the module docstring),
    for every key the query sees; ``key`` (default: the one the head attends to most) is
    the one explained. ``every_query``: also every other cell's parts, in ``cells`` (the
    report's; the text's every position). ``progress(stage, done, total)``: see
    ``attnviz.files.progress``."""
    check_head(layer, head, model.n_layers, model.n_heads)
    query = check_query(query, len(token_ids))
    window = model.window(layer)
    if key is not None:
        check_key(key, query, window, layer)
    keys = visible_keys(query, window)
    # causal: the tokens after the query change nothing for it
    ids = list(token_ids if every_query else token_ids[:query + 1])
    queries = list(range(len(ids))) if every_query else [query]
    at_keys = list(range(len(ids))) if every_query else keys
    with torch.inference_mode():
        if model.describe().get("mode") == "random":
            found = _random_parts(model, ids, head, queries, at_keys)
        else:
            found = _transformer_parts(model, ids, layer, head, queries, at_keys, progress)
        parts, kv_head, actual_q, actual_k, weights, softcap = found
        query_parts, key_parts = parts.arrays()
        actual_q, actual_k = actual_q.cpu().numpy(), actual_k.cpu().numpy()
        weights = weights.float().cpu().numpy()  # (T, T)
    error = max(_relative(query_parts.sum(0), actual_q), _relative(key_parts.sum(0), actual_k))
    cells = None
    if every_query:
        cells = WhyCells(query_parts, key_parts, weights, window)
        query_parts, actual_q = query_parts[:, [query]], actual_q[[query]]
        key_parts, actual_k = key_parts[:, keys], actual_k[keys]
    row = weights[query, keys]
    if key is None:
        key = keys[int(np.argmax(row))]
    return WhyResult(
        token_ids=list(token_ids), layer=layer, head=head, kv_head=kv_head, query=query,
        key=key, keys=keys, components=parts.names, query_parts=query_parts[:, 0],
        key_parts=key_parts, model_scores=actual_k @ actual_q[0], weights=row, softcap=softcap,
        vector_error=error, config=model.describe(), tokenizer=model.tokenizer, cells=cells)


def _relative(parts: np.ndarray, actual: np.ndarray) -> float:
    return float(np.abs(parts - actual).max() / max(float(np.abs(actual).max()), 1e-30))


def pair_rows(result: WhyResult, key: int | None = None) -> list[dict]:
    """One row per (query component, key component) of ``key``: ``contribution``."""
    matrix = result.contributions(key)
    return [{"query_component": a, "key_component": b, "contribution": float(matrix[i, j])}
            for i, a in enumerate(result.components) for j, b in enumerate(result.components)]


def matrix_rows(result: WhyResult) -> list[dict]:
    """The CSV of ``why``: one row per query component, one column per key component."""
    matrix = result.contributions()
    return [{"query_component": a, **{b: float(matrix[i, j]) for j, b in enumerate(result.components)}}
            for i, a in enumerate(result.components)]


def key_rows(result: WhyResult) -> list[dict]:
    """The CSV of ``why --key all``: one row per component, its key-side total at each key
    (``key_<j>``)."""
    totals = result.key_totals_by_key()
    return [{"component": name, **{f"key_{j}": float(totals[c, k]) for k, j in enumerate(result.keys)}}
            for c, name in enumerate(result.components)]


def why_document(result: WhyResult, all_keys: bool = False, top: int = 10) -> dict:
    """The JSON of ``why`` (schema: docs/why.md)."""
    tokenizer = result.tokenizer
    labels = token_labels(tokenizer, result.token_ids)
    document = {
        "layer": result.layer, "head": result.head, "kv_head": result.kv_head,
        "query": {"position": result.query, "label": labels[result.query]},
        "key": {"position": result.key, "label": labels[result.key]},
        "score": result.score,
        "model_score": result.model_score,
        "softcap": result.softcap,
        "capped_score": result.capped_score,
        "weight": result.weight,
        "vector_error": result.vector_error,
        "query_components": result.query_components,
        "key_components": result.key_components,
        "contributions": result.contributions().tolist(),
        "query_totals": result.query_totals().tolist(),
        "key_totals": result.key_totals().tolist(),
        "top_pairs": [{"query_component": a, "key_component": b, "contribution": v}
                      for a, b, v in result.top_pairs(top)],
    }
    if all_keys:
        document["keys"] = {
            "positions": list(result.keys),
            "labels": [labels[j] for j in result.keys],
            "scores": result.scores.tolist(),
            "weights": result.weights.tolist(),
            "key_totals": result.key_totals_by_key().tolist(),
        }
    bos = tokenizer.bos_id is not None and result.token_ids[:1] == [tokenizer.bos_id]
    document["tokens"] = token_records(result.token_ids, tokenizer.token_bytes(result.token_ids),
                                       0, bos)
    document["config"] = result.config
    return document


def why_arrays(result: WhyResult) -> dict[str, np.ndarray]:
    """What ``why -o FILE.npz`` holds (docs/why.md)."""
    return {
        "contributions": result.contributions(),
        "components": np.array(result.components),
        "query_parts": result.query_parts,
        "key_parts": result.key_parts,
        "keys": np.array(result.keys, dtype=np.int64),
        "scores": result.scores,
        "model_scores": result.model_scores,
        "weights": result.weights,
        "key_totals": result.key_totals_by_key(),
        "token_ids": np.array(result.token_ids, dtype=np.int64),
        "head": np.array([result.layer, result.head, result.query, result.key], dtype=np.int64),
    }


def head_name(result: WhyResult, labels: list[str]) -> str:
    """``L18 H6, query 60 (␣the) -> key 11 (␣cat)``: titles and the table's first line."""
    return (f"L{result.layer} H{result.head}, query {result.query} ({labels[result.query]}) "
            f"-> key {result.key} ({labels[result.key]})")


def score_line(result: WhyResult) -> str:
    """The score, how exactly the parts add up to the forward's, the weight, the softcap."""
    n = len(result.components)
    line = (f"score {result.score:.4f} = the sum of {n} x {n} contributions (the forward "
            f"pass's own score: {result.model_score:.4f}); weight {result.weight:.4f}")
    if result.softcap is not None:
        line += (f"; split before the softcap: {result.softcap:g}·tanh(score/{result.softcap:g}) "
                 f"= {result.capped_score:.4f}")
    return line


def pair_table_rows(result: WhyResult, top: int) -> list[dict]:
    """The ``top`` pairs: rank, query component, key component, contribution."""
    return [{"rank": rank, "query component": a, "key component": b, "contribution": v}
            for rank, (a, b, v) in enumerate(result.top_pairs(top), start=1)]


def side_table_rows(result: WhyResult, top: int) -> list[dict]:
    """The ``top`` components of each side by |total|, side by side."""
    query, key = result.top_components("query", top), result.top_components("key", top)
    return [{"rank": rank, "query side": q, "query total": qv, "key side": k, "key total": kv}
            for rank, ((q, qv), (k, kv)) in enumerate(zip(query, key), start=1)]


def key_table_rows(result: WhyResult, labels: list[str], top: int, per_key: int = 3) -> list[dict]:
    """``--key all``: the ``top`` keys by weight, each with its score and its ``per_key``
    largest key-side totals."""
    totals, scores = result.key_totals_by_key(), result.scores
    rows = []
    for column in np.argsort(-result.weights, kind="stable")[:top]:
        order = np.argsort(-np.abs(totals[:, column]), kind="stable")[:per_key]
        rows.append({"key": result.keys[column], "token": labels[result.keys[column]],
                     "weight": float(result.weights[column]), "score": float(scores[column]),
                     "top key-side components": ", ".join(
                         f"{result.components[c]} {totals[c, column]:+.3f}" for c in order)})
    return rows
