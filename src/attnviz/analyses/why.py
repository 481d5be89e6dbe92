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

Encoders and encoder–decoders (``attention``: "encoder", "decoder", "cross"): a post-norm
model (BERT, RoBERTa, DistilBERT, BART, Marian) normalises the stream itself after each
addition; each such LayerNorm is frozen at its actual σ and applied to every component
already in the stream (the centring included), and its β becomes a component
(``bias.ln_emb``, ``bias.ln_attn3``, ``bias.ln_cross3``, ``bias.ln_mlp3``); BERT's token
type embedding is a component of its own (``type``). Cross-attention's query side is the
decoder's stream at the layer (its self-attention heads ``L3.H1``, earlier cross-attention
heads ``L2.X1``), its key side the encoder's output decomposed through the encoder
(``enc.…``): the two sides have different components (``key_names``) and texts
(``key_token_ids``). T5's relative position bias is added to the score as a term of its own
(``position_bias``), on neither side. The parts are computed in ``attnviz.analyses.why_parts``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import zip_longest

import numpy as np
import torch

from attnviz.analyses.attention import check_length, encode_inputs, import_pandas, token_records
from attnviz.analyses.attribution import check_position, token_labels
from attnviz.analyses.seq2seq import KINDS as SEQ2SEQ_KINDS
from attnviz.analyses.seq2seq import check_attention, encode_texts, is_seq2seq
from attnviz.analyses.seq2seq import check_length as check_stack
from attnviz.analyses.why_parts import (
    post_norm_parts,
    random_parts,
    seq2seq_parts,
    transformer_parts,
)
from attnviz.core.errors import InputError
from attnviz.core.views import Displayable

KINDS = ("decoder", "encoder", "cross")  # causal self-attention, bidirectional, cross


@dataclass(repr=False)
class WhyResult(Displayable):
    """The split of head (``layer``, ``head``)'s scores from ``query`` over ``keys``: each
    component's part of the query and of every key. Shown in a notebook as the score, the
    top pairs and the totals per component on each side."""

    token_ids: list[int]  # the query side's text (the decoder's, for cross-attention)
    layer: int
    head: int
    kv_head: int  # the key/value head the head reads (grouped-query attention)
    query: int
    key: int  # the key explained (default: the one the head attends to most)
    keys: list[int]  # the keys the query sees (causal mask, sliding window)
    components: list[str]  # the query side's names (rows); the key side's too unless key_names
    query_parts: np.ndarray  # (C_q, hd) float64: each component's part of the scaled query
    key_parts: np.ndarray  # (C_k, K, hd) float64: its part of the key at each of ``keys``
    model_scores: np.ndarray  # (K,) the forward pass's own scores (float32 q, k), before a softcap
    weights: np.ndarray  # (K,) the forward pass's attention weights over ``keys``
    softcap: float | None = None
    vector_error: float = 0.0  # max |Σ parts - the forward's q (k)| / max |q (k)|
    config: dict = field(default_factory=dict)
    tokenizer: object = field(default=None, compare=False)  # for labels (not data)
    cells: WhyCells | None = field(default=None, compare=False)  # every cell, when asked
    attention: str = "decoder"  # "decoder" (causal self), "encoder" (bidirectional), "cross"
    key_names: list[str] | None = None  # the key side's names when they differ (cross)
    key_token_ids: list[int] | None = None  # the keys' text when it is another (cross)
    position_bias: np.ndarray | None = None  # (K,): T5's relative position bias, a term of its own
    token_types: list[int] | None = None  # a sentence pair's segments (BERT, --pair)

    def __repr__(self) -> str:
        return (f"<attnviz why: L{self.layer} H{self.head}, query {self.query} -> key "
                f"{self.key}: score {self.score:.4f} = {len(self.query_components)} x "
                f"{len(self.key_components)} contributions, weight {self.weight:.4f}>")

    @property
    def query_components(self) -> list[str]:
        return list(self.components)

    @property
    def key_components(self) -> list[str]:
        return list(self.components if self.key_names is None else self.key_names)

    @property
    def key_ids(self) -> list[int]:
        """The token ids of the keys' text (the query's own but for cross-attention)."""
        return self.token_ids if self.key_token_ids is None else self.key_token_ids

    def bias_at(self, key: int | None = None) -> float:
        """The relative position bias added to the score of ``key`` (0 without one)."""
        return 0.0 if self.position_bias is None else float(
            self.position_bias[self.key_index(key)])

    def key_index(self, key: int | None = None) -> int:
        """The column of ``key`` (default: ``self.key``) in ``keys``."""
        key = self.key if key is None else key
        if key not in self.keys:
            raise InputError(f"key {key} is not one the query sees: keys {self.keys[0]}-"
                             f"{self.keys[-1]}")
        return self.keys.index(key)

    def contributions(self, key: int | None = None) -> np.ndarray:
        """``(C_q, C_k)`` float64: entry (a, b) is query component a's part · key component
        b's part of the key ``key`` (default: ``self.key``); the entries add up to its score
        (less T5's relative position bias, a term of its own: ``bias_at``)."""
        return self.query_parts @ self.key_parts[:, self.key_index(key)].T

    @property
    def scores(self) -> np.ndarray:
        """``(K,)``: the split scores of every key (before a softcap), from the parts (and
        the position bias)."""
        scores = np.einsum("d,kd->k", self.query_parts.sum(0), self.key_parts.sum(0))
        return scores if self.position_bias is None else scores + self.position_bias

    @property
    def score(self) -> float:
        """The score of ``key``, before a softcap: the sum of ``contributions()`` (plus the
        relative position bias, T5)."""
        return float(self.contributions().sum()) + self.bias_at()

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
        rows, columns = self.query_components, self.key_components
        c = len(columns)
        return [(rows[i // c], columns[i % c], float(matrix.flat[i])) for i in order]

    def top_components(self, side: str, n: int = 10, key: int | None = None
                       ) -> list[tuple[str, float]]:
        """The ``n`` components of ``side`` (``query`` or ``key``) with the largest |total|."""
        totals = self.query_totals(key) if side == "query" else self.key_totals(key)
        names = self.query_components if side == "query" else self.key_components
        order = np.argsort(-np.abs(totals), kind="stable")[:n]
        return [(names[i], float(totals[i])) for i in order]

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


def visible_keys(query: int, window: int | None, attention: str = "decoder",
                 n_keys: int | None = None) -> list[int]:
    """The keys ``query`` sees: causal, ``0 .. query`` (or the last ``window`` of them);
    an encoder's, all ``n_keys`` (or those within ``window`` on either side:
    ``|j - i| < window``); cross-attention's, every one of the other text's ``n_keys``."""
    if attention == "decoder":
        return list(range(max(0, query - window + 1) if window else 0, query + 1))
    if attention == "encoder" and window:
        return list(range(max(0, query - window + 1), min(n_keys, query + window)))
    return list(range(n_keys))


def check_key(key: int, query: int, window: int | None, layer: int, attention: str = "decoder",
              n_keys: int | None = None) -> int:
    """``--key`` -> itself, or ``InputError`` when the query cannot see it."""
    keys = visible_keys(query, window, attention, n_keys)
    sees = f"query {query} sees keys {keys[0]}-{keys[-1]}"
    if key < 0 or (attention != "decoder" and key >= n_keys):
        whose = "the source's" if attention == "cross" else "the text's"
        raise InputError(f"--key {key} is out of range: {sees} ({whose} {n_keys} tokens)"
                         if attention != "decoder" else f"--key {key} is out of range: {sees}")
    if attention == "decoder" and key > query:
        raise InputError(f"--key {key} is after the query {query}: under the causal mask {sees}")
    if key not in keys:
        span = (f"sliding window of {window} tokens" if attention == "decoder" else
                f"local window of ±{window - 1} positions")
        raise InputError(f"--key {key} is outside layer {layer}'s {span}: {sees}")
    return key


def count_components(model, layer: int, attention: str = "decoder") -> tuple[int, int, int]:
    """``(query components, key components, head_dim)`` of a split at ``layer`` (at most:
    for size checks before it is computed): the embeddings, each earlier layer's heads,
    output bias, MLP and post-norm biases, and the layer's own biases."""
    if model.describe().get("mode") == "random":
        config = model.config
        count = 2 + int(config.qkv_bias)
        return count, count, config.d_model // config.n_heads
    spec = model.spec
    if getattr(model, "is_seq2seq", False):
        post, bias = int(not spec.pre_norm), int(spec.bias)
        embedded = 1 + int(spec.positions != "relative") + int(spec.embed_norm)
        encoder = embedded + spec.n_layers * (spec.n_heads + bias + 1 + 2 * post)
        decoder = embedded + (layer + 1) * (2 * spec.n_heads + 2 * bias + 1 + 3 * post)
        query = encoder if attention == "encoder" else decoder
        key = encoder if attention != "decoder" else decoder
        return query + bias, key + bias, spec.head_dim
    if spec.post_norm:  # embed, pos, type, bias.ln_emb; heads, bias.out, ln, mlp, ln
        count = 4 + layer * (spec.n_heads + int(spec.out_bias) + 3) + int(spec.qkv_bias)
        return count, count, spec.head_dim
    per_layer = spec.n_heads + int(spec.out_bias) + 1
    own = int(spec.norm == "layernorm") + int(spec.qkv_bias)
    count = 1 + int(spec.positions == "learned") + layer * per_layer + own
    return count, count, spec.head_dim


@dataclass(repr=False)
class WhyCells:
    """Every cell of the head at once (``why(..., every_query=True)``): each component's
    part of the scaled query and of the key at every position; the matrix of cell (i, j) is
    ``query_parts[:, i] @ key_parts[:, j].T`` (what the report computes when a cell is
    clicked), its score that matrix summed plus ``position_bias[i, j]`` (T5)."""

    query_parts: np.ndarray  # (C_q, T_q, hd) float64
    key_parts: np.ndarray  # (C_k, T_k, hd) float64
    weights: np.ndarray  # (T_q, T_k) float32: the head's attention weights
    window: int | None = None  # the layer's sliding (causal) or local (encoder) window
    attention: str = "decoder"
    position_bias: np.ndarray | None = None  # (T_q, T_k): T5's relative position bias


def attention_kind(model, attention: str | None = None, key_ids=None) -> str:
    """The kind of attention ``why`` explains: ``attention`` for an encoder–decoder
    (default ``cross``), random mode's ``cross`` with ``key_ids``, else the model's own."""
    if getattr(model, "is_seq2seq", False):
        return attention or "cross"
    if key_ids is not None:
        return "cross"
    return model.attention_kind


def layer_count(model, attention: str) -> int:
    """The layers of the stack ``attention`` lives in (an encoder–decoder's two differ)."""
    if getattr(model, "is_seq2seq", False) and attention != "encoder":
        return model.n_decoder_layers
    return model.n_layers


@dataclass
class WhyInputs:
    """What ``why`` reads of one text, checked: ``token_ids`` (an encoder–decoder's source),
    the ``kind`` of attention explained, ``extra`` (``why``'s ``decoder_ids``,
    ``token_types`` or ``key_ids``), and the ids of the queries' and the keys' positions."""

    token_ids: list[int]
    kind: str
    extra: dict
    query_ids: list[int]
    key_ids: list[int]

    def window(self, model, layer: int) -> int | None:
        """The sliding window of the keys of ``layer`` (cross-attention and encoder–decoder
        stacks have none)."""
        return (None if self.kind == "cross" or getattr(model, "is_seq2seq", False) else
                model.window(layer))


def why_inputs(model, text: str, *, attention: str | None = None,
               decoder_text: str | None = None, pair: str | None = None,
               cross: str | None = None, allow_special: bool = False, bos: bool = True,
               chat: bool = False) -> WhyInputs:
    """``text`` (and the second text of an encoder–decoder, a sentence pair or random
    mode's cross-attention) read for ``why``, the kind of attention chosen and every length
    checked, as ``attnviz why`` and ``attnviz.why`` both read them."""
    check_attention(model, attention, decoder_text, SEQ2SEQ_KINDS)  # one kind at a time
    if is_seq2seq(model):
        for value, option in ((pair, "--pair"), (cross, "--cross"), (chat or None, "--chat")):
            if value is not None:
                raise InputError(f"{option} is not supported for encoder–decoder models")
        kind = attention_kind(model, attention)
        token_ids, decoder_ids = encode_texts(model, text, decoder_text, allow_special, bos)
        check_stack(model, token_ids, "the text")
        check_stack(model, decoder_ids, "--decoder-text")
        query_ids = token_ids if kind == "encoder" else decoder_ids
        key_ids = decoder_ids if kind == "decoder" else token_ids
        return WhyInputs(token_ids, kind, {"decoder_ids": decoder_ids}, query_ids, key_ids)
    found = encode_inputs(model, text, allow_special, bos, chat, pair=pair, cross=cross)
    token_ids = found["token_ids"]
    extra = {k: found[k] for k in ("token_types", "key_ids") if k in found}
    kind = attention_kind(model, None, extra.get("key_ids"))
    hint = (" or raise --context-length" if model.describe().get("mode") == "random"
            else " (the checkpoint's context)")
    for ids in (token_ids, extra.get("key_ids") or []):
        check_length(len(ids), model.context_length, hint)
    return WhyInputs(token_ids, kind, extra, token_ids, extra.get("key_ids") or token_ids)


def why(model, token_ids: list[int], *, layer: int, head: int, query: int = -1,
        key: int | None = None, progress=None, every_query: bool = False,
        attention: str | None = None, token_types: list[int] | None = None,
        decoder_ids: list[int] | None = None, key_ids: list[int] | None = None) -> WhyResult:
    """Split head (``layer``, ``head``)'s scores from ``query`` (negative: from the end) of
    ``model`` (from ``analysis.load_model``) into components (see the module docstring),
    for every key the query sees; ``key`` (default: the one the head attends to most) is
    the one explained. ``every_query``: also every other cell's parts, in ``cells`` (the
    report's; the text's every position). ``progress(stage, done, total)``: see
    ``attnviz.files.progress``.

    An encoder–decoder: ``attention`` ("encoder", "decoder" or "cross", the default),
    ``token_ids`` the source and ``decoder_ids`` what the decoder reads (its start token
    first; the query's text for "decoder" and "cross"). An encoder: ``token_types``, a
    sentence pair's segments. Random mode: ``key_ids``, ``--cross``'s second text."""
    kind = attention_kind(model, attention, key_ids)
    seq2seq = getattr(model, "is_seq2seq", False)
    check_head(layer, head, layer_count(model, kind), model.n_heads)
    query_ids = list(decoder_ids) if seq2seq and kind != "encoder" else list(token_ids)
    other = list(token_ids) if seq2seq and kind == "cross" else key_ids
    key_text = query_ids if other is None else list(other)
    query = check_query(query, len(query_ids))
    window = None if seq2seq or kind == "cross" else model.window(layer)
    if key is not None:
        check_key(key, query, window, layer, kind, len(key_text))
    keys = visible_keys(query, window, kind, len(key_text))
    # causal: the tokens after the query change nothing for it
    ids = query_ids if every_query or kind != "decoder" or seq2seq else query_ids[:query + 1]
    queries = list(range(len(ids))) if every_query else [query]
    at_keys = list(range(len(key_text))) if every_query else keys
    bias = softcap = None
    with torch.inference_mode():
        if seq2seq:
            found = seq2seq_parts(model, list(token_ids), query_ids, kind, layer, head, queries,
                                  at_keys)
            *found, bias = found
        elif model.describe().get("mode") == "random":
            found = random_parts(model, ids, head, queries, at_keys, key_ids)
        elif model.spec.post_norm:
            found = post_norm_parts(model, ids, layer, head, queries, at_keys, token_types,
                                    progress)
        else:
            found = transformer_parts(model, ids, layer, head, queries, at_keys, progress)
        parts, kv_head, actual_q, actual_k, weights, softcap = found
        query_parts, key_parts = parts.arrays()
        actual_q, actual_k = actual_q.cpu().numpy(), actual_k.cpu().numpy()
        weights = weights.float().cpu().numpy()  # (T_q, T_k)
        bias = None if bias is None else bias.cpu().numpy()  # (Q, K)
    error = max(_relative(query_parts.sum(0), actual_q), _relative(key_parts.sum(0), actual_k))
    cells = None
    if every_query:
        cells = WhyCells(query_parts, key_parts, weights, window, kind, bias)
        query_parts, actual_q = query_parts[:, [query]], actual_q[[query]]
        key_parts, actual_k = key_parts[:, keys], actual_k[keys]
        bias = None if bias is None else bias[[query]][:, keys]
    row = weights[query, keys]
    if key is None:
        key = keys[int(np.argmax(row))]
    names, key_names = parts.names
    model_scores = actual_k @ actual_q[0] + (0 if bias is None else bias[0])
    return WhyResult(
        token_ids=query_ids, layer=layer, head=head, kv_head=kv_head, query=query,
        key=key, keys=keys, components=list(names), query_parts=query_parts[:, 0],
        key_parts=key_parts, model_scores=model_scores, weights=row, softcap=softcap,
        vector_error=error, config=model.describe(), tokenizer=model.tokenizer, cells=cells,
        attention=kind, key_names=None if key_names == names else list(key_names),
        key_token_ids=None if other is None else key_text,
        position_bias=None if bias is None else bias[0], token_types=token_types)


def _relative(parts: np.ndarray, actual: np.ndarray) -> float:
    return float(np.abs(parts - actual).max() / max(float(np.abs(actual).max()), 1e-30))


def pair_rows(result: WhyResult, key: int | None = None) -> list[dict]:
    """One row per (query component, key component) of ``key``: ``contribution``."""
    matrix = result.contributions(key)
    return [{"query_component": a, "key_component": b, "contribution": float(matrix[i, j])}
            for i, a in enumerate(result.query_components)
            for j, b in enumerate(result.key_components)]


def matrix_rows(result: WhyResult) -> list[dict]:
    """The CSV of ``why``: one row per query component, one column per key component."""
    matrix = result.contributions()
    return [{"query_component": a, **{b: float(matrix[i, j])
                                      for j, b in enumerate(result.key_components)}}
            for i, a in enumerate(result.query_components)]


def key_rows(result: WhyResult) -> list[dict]:
    """The CSV of ``why --key all``: one row per key-side component, its total at each key
    (``key_<j>``)."""
    totals = result.key_totals_by_key()
    return [{"component": name, **{f"key_{j}": float(totals[c, k]) for k, j in enumerate(result.keys)}}
            for c, name in enumerate(result.key_components)]


def _tokens(result: WhyResult, ids: list[int]) -> list[dict]:
    tokenizer = result.tokenizer
    bos = tokenizer.bos_id is not None and ids[:1] == [tokenizer.bos_id]
    marked = result.attention != "decoder" or result.config.get("architecture") == "encoder-decoder"
    special = getattr(tokenizer, "is_special", None) if marked else None  # as heatmap marks them
    records = token_records(ids, tokenizer.token_bytes(ids), 0, bos, special_ids=frozenset(
        i for i in ids if special is not None and special(i)))
    if result.token_types is not None and ids is result.token_ids:
        for record, segment in zip(records, result.token_types):
            record["sentence"] = int(segment)
    return records


def why_document(result: WhyResult, all_keys: bool = False, top: int = 10) -> dict:
    """The JSON of ``why`` (schema: docs/why.md)."""
    labels = token_labels(result.tokenizer, result.token_ids)
    key_labels = token_labels(result.tokenizer, result.key_ids)
    document = {
        "attention": result.attention,
        "layer": result.layer, "head": result.head, "kv_head": result.kv_head,
        "query": {"position": result.query, "label": labels[result.query]},
        "key": {"position": result.key, "label": key_labels[result.key]},
        "score": result.score,
        "model_score": result.model_score,
        "position_bias": None if result.position_bias is None else result.bias_at(),
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
            "labels": [key_labels[j] for j in result.keys],
            "scores": result.scores.tolist(),
            "weights": result.weights.tolist(),
            "key_totals": result.key_totals_by_key().tolist(),
        }
        if result.position_bias is not None:
            document["keys"]["position_bias"] = result.position_bias.tolist()
    document["tokens"] = _tokens(result, result.token_ids)
    if result.key_token_ids is not None:
        document["key_tokens"] = _tokens(result, result.key_token_ids)
    document["config"] = result.config
    return document


def why_arrays(result: WhyResult) -> dict[str, np.ndarray]:
    """What ``why -o FILE.npz`` holds (docs/why.md)."""
    arrays = {
        "contributions": result.contributions(),
        "components": np.array(result.query_components),
        "key_components": np.array(result.key_components),
        "query_parts": result.query_parts,
        "key_parts": result.key_parts,
        "keys": np.array(result.keys, dtype=np.int64),
        "scores": result.scores,
        "model_scores": result.model_scores,
        "weights": result.weights,
        "key_totals": result.key_totals_by_key(),
        "token_ids": np.array(result.token_ids, dtype=np.int64),
        "head": np.array([result.layer, result.head, result.query, result.key], dtype=np.int64),
        "attention": np.array(result.attention),
    }
    if result.key_token_ids is not None:
        arrays["key_token_ids"] = np.array(result.key_token_ids, dtype=np.int64)
    if result.position_bias is not None:
        arrays["position_bias"] = result.position_bias
    return arrays


def head_name(result: WhyResult, labels: list[str]) -> str:
    """``L18 H6, query 60 (␣the) -> key 11 (␣cat)``: titles and the table's first line
    (``labels``: the query's text; an encoder–decoder's kind and cross-attention's source
    named: ``cross L1 H2, query 3 (␣Haus) -> source key 4 (␣house)``)."""
    key_labels = labels if result.key_token_ids is None else token_labels(
        result.tokenizer, result.key_token_ids)
    kind = f"{result.attention} " if result.config.get("architecture") == "encoder-decoder" else ""
    source = "source key" if result.attention == "cross" else "key"
    return (f"{kind}L{result.layer} H{result.head}, query {result.query} "
            f"({labels[result.query]}) -> {source} {result.key} ({key_labels[result.key]})")


def score_line(result: WhyResult) -> str:
    """The score, how exactly the parts add up to the forward's, the weight, the softcap."""
    rows, columns = len(result.query_components), len(result.key_components)
    bias = ("" if result.position_bias is None else
            f" + the relative position bias {result.bias_at():.4f}")
    line = (f"score {result.score:.4f} = the sum of {rows} x {columns} contributions{bias} (the "
            f"forward pass's own score: {result.model_score:.4f}); weight {result.weight:.4f}")
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
            for rank, ((q, qv), (k, kv)) in enumerate(
                zip_longest(query, key, fillvalue=("", None)), start=1)]


def key_table_rows(result: WhyResult, labels: list[str], top: int, per_key: int = 3) -> list[dict]:
    """``--key all``: the ``top`` keys by weight, each with its score and its ``per_key``
    largest key-side totals (``labels``: the query's text; cross-attention's keys are
    labelled from the source)."""
    if result.key_token_ids is not None:
        labels = token_labels(result.tokenizer, result.key_token_ids)
    totals, scores, names = result.key_totals_by_key(), result.scores, result.key_components
    rows = []
    for column in np.argsort(-result.weights, kind="stable")[:top]:
        order = np.argsort(-np.abs(totals[:, column]), kind="stable")[:per_key]
        rows.append({"key": result.keys[column], "token": labels[result.keys[column]],
                     "weight": float(result.weights[column]), "score": float(scores[column]),
                     "top key-side components": ", ".join(
                         f"{names[c]} {totals[c, column]:+.3f}" for c in order)})
        if result.position_bias is not None:
            rows[-1]["position bias"] = float(result.position_bias[column])
    return rows
