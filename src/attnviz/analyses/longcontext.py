"""Long texts, exactly, in bounded memory: a layer's weights reduced tile by tile as the
engine computes them (``attnviz.models.engine``), never held whole. See docs/long-context.md.

What is kept, per layer and head (``T`` tokens, pooled blocks of ``b`` x ``b`` cells,
``P = ceil(T / b)``):

- ``weights_max``, ``weights_mean`` ``(H, P, P)``: the largest weight of each block, and its
  mean over the block's cells inside the ``(T, T)`` matrix (hidden cells count as 0; the
  last blocks are smaller when ``b`` does not divide ``T``);
- ``entropy`` ``(H, T)``: each query row's entropy, in nats; ``row_max`` ``(H, T)``: its
  largest weight;
- ``received`` ``(H, T)``: the attention each key receives, summed over the queries;
- ``distance`` ``(H, T)``: the attention mass at each distance back, ``Σ_i a[i, i - δ]``;
  without the causal mask (an encoder) also ``ahead`` ``(H, T)``, the mass at each distance
  ahead, ``Σ_i a[i, i + δ]`` (``ahead[0]`` is the diagonal, as ``distance[0]``);
- ``window`` ``(H, W, W)``: the exact weights of queries and keys ``A .. B - 1``
  (``--tokens A:B``), normalised over every key of the row, as the whole matrix has them.

Every statistic of ``attnviz.analyses.stats.head_stats`` follows from these exactly (the
same definitions), and the sink statistics too: ``sink_mass`` (the mean over queries of
the mass on the first k keys) and ``sink_alpha`` (Gu et al., ICLR 2025: the mean over
queries i >= j of ``a[i, j]``, for each of the first k keys j; an encoder's: over every
query).

An encoder's rows (``causal=False``: every key, or ModernBERT's local layers' window on both
sides) are reduced the same way: the tiles span every visible key, the pooled maps the whole
square.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from attnviz.analyses.attention import (
    AttentionResult,
    analyze_with,
    available_memory,
    check_text,
    checked_layers,
    crop,
    encode_inputs,
    load_model,
    parse_window,
    special_ids,
    starts_with_bos,
    token_records,
)
from attnviz.analyses.describe import one_line
from attnviz.core.config import ModelConfig
from attnviz.core.errors import InputError
from attnviz.core.views import Displayable

SINK_THRESHOLD = 0.3  # Gu et al.'s epsilon: a head has a sink at key j when alpha_j > 0.3


def block_size(n_tokens: int, resolution: int) -> int:
    """The side ``b`` of a pooled block: the smallest that gives at most ``resolution``
    cells a side."""
    return max(1, math.ceil(n_tokens / resolution))


class LayerReduction:
    """One layer's reductions (the module docstring), fed tile by tile by the engine
    (``attnviz.models.engine.Reduce``)."""

    def __init__(self, n_heads: int, n_tokens: int, block: int,
                 maps: tuple[str, ...] = ("max", "mean"), span: tuple[int, int] | None = None,
                 out: dict[str, np.ndarray] | None = None, detect: Detect | None = None,
                 causal: bool = True):
        """``out``: arrays to fill (this layer's slices of the result's), by name;
        ``detect``: also the sums of the head detectors (``scan``); ``causal=False``: the
        rows of an encoder, whose keys ahead of the query go to ``ahead``."""
        self.align, self.n_tokens, self.n_heads = block, n_tokens, n_heads
        pooled = math.ceil(n_tokens / block)
        out = out or {}

        def array(name: str, shape: tuple, dtype=torch.float32) -> torch.Tensor:
            if name in out:
                return torch.from_numpy(out[name]).zero_()
            return torch.zeros(shape, dtype=dtype)

        self.maps = {kind: array(f"weights_{kind}", (n_heads, pooled, pooled)) for kind in maps}
        self.entropy = torch.zeros(n_heads, n_tokens, dtype=torch.float64)
        self.top_log = torch.full((n_heads, n_tokens), -math.inf)  # ln of each row's largest
        # Σ over queries, by key and by distance (and the detectors' sums): a part per
        # worker thread (their rows differ, their keys and heads do not)
        self.parts: dict[int, tuple[torch.Tensor, ...]] = {}
        self.detect = detect
        self.found = torch.zeros(2, n_heads, dtype=torch.float64)  # duplicate, induction sums
        self.corner = torch.zeros(n_heads, dtype=torch.float64)  # a[1, 0], for exclude_first
        self.received = array("received", (n_heads, n_tokens), torch.float64)
        self.distance = array("distance", (n_heads, n_tokens), torch.float64)
        self.causal = causal
        self.ahead = None if causal else array("ahead", (n_heads, n_tokens), torch.float64)
        self.origin = torch.zeros(n_heads, dtype=torch.float64)  # a[0, 0]: an encoder's first_token
        self.out = out
        self.span = span
        self.window = (torch.zeros(n_heads, span[1] - span[0], span[1] - span[0])
                       if span is not None else None)

    def __call__(self, tile) -> None:
        """Take one tile (``attnviz.models.engine.Tile``)."""
        w, heads, q_start, k_start = tile.weights, tile.heads, tile.q_start, tile.k_start
        group, rows, n_keys = w.shape  # (G, R, K)
        q_rows = slice(q_start, q_start + rows)
        torch.maximum(self.top_log[heads, q_rows], tile.logs.amax(dim=-1),
                      out=self.top_log[heads, q_rows])
        # H = -Σ a ln a, with ln a = s - lse exactly: no logarithm per cell (logs is scratch)
        self.entropy[heads, q_rows] -= torch.mul(w, tile.logs, out=tile.logs).sum(dim=-1)
        ones = w.new_ones(group, 1, rows)
        received, distance, found, ahead = self._part(tile.worker)
        received[heads, k_start:k_start + n_keys] += torch.bmm(ones, w)[:, 0]
        if self.detect is not None:
            self._detectors(w, heads, q_start, k_start, found)
        if q_start == 0 and k_start == 0:
            self.origin[heads] = w[:, 0, 0].double()
        self._distances(tile, q_start - k_start, ones, distance, ahead)
        self._pool(w, heads, q_start, k_start)
        if self.window is not None:
            a, b = self.span
            lo, hi = max(a, q_start), min(b, q_start + rows)
            k_lo, k_hi = max(a, k_start), min(b, k_start + n_keys)
            if lo < hi and k_lo < k_hi:
                self.window[heads, lo - a:hi - a, k_lo - a:k_hi - a] = (
                    w[:, lo - q_start:hi - q_start, k_lo - k_start:k_hi - k_start])

    def _part(self, worker: int) -> tuple:
        """The worker's own ``(received, distance, found, ahead)`` (worker 0's are the
        result's; ``ahead`` None for causal rows)."""
        if worker not in self.parts:  # (each worker makes its own entry: no race)
            ours = (self.received, self.distance, self.found, self.ahead)
            self.parts[worker] = ours if worker == 0 else tuple(
                None if a is None else torch.zeros_like(a) for a in ours)
        return self.parts[worker]

    def _detectors(self, w: torch.Tensor, heads: slice, q_start: int, k_start: int,
                   found: torch.Tensor) -> None:
        """The tile's weight on the duplicate-token and induction patterns of
        ``attnviz.analyses.detectors`` (the kept cells only), and a[1, 0]."""
        d = self.detect
        rows, n_keys = w.shape[1], w.shape[2]
        query = torch.arange(q_start, q_start + rows)[:, None]
        key = torch.arange(k_start, k_start + n_keys)[None, :]
        token = d.token_ids[q_start:q_start + rows, None]
        duplicate = (token == d.token_ids[None, k_start:k_start + n_keys]) & (key < query)
        # the token before key j equals the query's: attend to what followed an earlier copy
        induction = (token == d.before[None, k_start:k_start + n_keys]) & (key <= query)
        if d.exclude_first:
            duplicate &= key != 0  # (induction never has key 0: no token comes before it)
        if d.exclude_self:
            induction &= key != query
        found[0, heads] += (w * duplicate).sum(dim=(1, 2))
        found[1, heads] += (w * induction).sum(dim=(1, 2))
        if k_start == 0 and q_start <= 1 < q_start + rows:
            self.corner[heads] = w[:, 1 - q_start, 0].double()

    def _distances(self, tile, lead: int, ones: torch.Tensor, distance: torch.Tensor,
                   ahead: torch.Tensor | None = None) -> None:
        """Add the tile's mass by distance. Row r is query ``k_start + lead + r``; its key at
        column c lies ``lead + r - c`` back. In ``tile.padded`` (each row between P >= R
        zeros) the view ``padded[g, r, r + m]`` (stride K + 2P + 1), m = 0 .. K + P - 1,
        holds column c = r + m - P of row r, ``lead + P - m`` back for every row: one sum
        over the rows gives every distance of the tile. A negative distance -δ (a key
        ahead, without the causal mask) goes to ``ahead[δ]``; δ = 0 to both."""
        padded = tile.padded
        group, rows, full = padded.shape
        pad = (full - tile.weights.shape[2]) // 2
        span = full - pad
        band = padded.as_strided((group, rows, span), (padded.stride(0), padded.stride(1) + 1, 1),
                                 padded.storage_offset())
        sums = torch.bmm(ones, band)[:, 0].flip(-1)  # distances lead + P - span + 1 .. lead + P
        first = lead + pad - span + 1
        lo, hi = max(first, 0), min(first + sums.shape[1], self.n_tokens)  # 0 <= δ < T
        if lo < hi:
            distance[tile.heads, lo:hi] += sums[:, lo - first:hi - first]
        if ahead is not None and first <= 0:  # δ = -first .. 0 ahead, largest first
            near = max(first, -(self.n_tokens - 1))  # δ < T
            stop = min(0, first + sums.shape[1] - 1)  # the nearest key ahead in the tile
            if near <= stop:
                ahead[tile.heads, -stop:-near + 1] += sums[:, near - first:stop - first + 1].flip(-1)

    def _pool(self, w: torch.Tensor, heads: slice, q_start: int, k_start: int) -> None:
        """Each block of the tile (aligned: its starts are multiples of b, its sides too but
        at the text's end): rows first, b contiguous rows at a time, then keys."""
        b = self.align
        group, rows, n_keys = w.shape
        if b > 1 and (rows % b or n_keys % b):  # the text's last blocks: zeros pad them
            padded = w.new_zeros(group, -(-rows // b) * b, -(-n_keys // b) * b)
            padded[:, :rows, :n_keys] = w
            w, rows, n_keys = padded, padded.shape[1], padded.shape[2]
        cells = (heads, slice(q_start // b, (q_start + rows) // b),
                 slice(k_start // b, (k_start + n_keys) // b))
        for kind, pooled in self.maps.items():
            if b == 1:
                pooled[cells] = w
            elif kind == "max":  # (G, R/b, b, K) -> (G, R/b, K) -> (G, R/b, K/b, b) -> (G, R/b, K/b)
                pooled[cells] = w.view(group, rows // b, b, n_keys).amax(2).view(
                    group, rows // b, n_keys // b, b).amax(-1)
            else:  # sums; divided by each block's cells inside the matrix in finish()
                pooled[cells] = w.view(group, rows // b, b, n_keys).sum(2).view(
                    group, rows // b, n_keys // b, b).sum(-1)

    def finish(self) -> dict[str, np.ndarray]:
        """The layer's arrays (filled into ``out``'s where given), by name."""
        if "mean" in self.maps and self.align > 1:  # block sums -> means over their cells
            b, n = self.align, self.n_tokens
            sides = torch.clamp(n - torch.arange(0, n, b), max=b).float()
            self.maps["mean"] /= sides[:, None] * sides[None, :]
        for worker, (received, distance, found, ahead) in self.parts.items():
            if worker != 0:
                self.received += received
                self.distance += distance
                self.found += found
                if ahead is not None:
                    self.ahead += ahead
        self.parts.clear()
        out = {f"weights_{kind}": pooled.numpy() for kind, pooled in self.maps.items()}
        out.update(entropy=self.entropy.float().numpy(), row_max=self.top_log.exp().numpy(),
                   received=self.received.numpy(), distance=self.distance.numpy(),
                   origin=self.origin.numpy())
        if self.ahead is not None:
            out["ahead"] = self.ahead.numpy()
        if self.window is not None:
            out["window"] = self.window.numpy()
        if self.detect is not None:
            out["detectors"] = self.detector_scores()
        for name, value in out.items():
            if name in self.out and not np.shares_memory(self.out[name], value):
                self.out[name][...] = value
        return out

    def detector_scores(self) -> np.ndarray:
        """``(3, H)``: TransformerLens's "mul" scores of ``DETECTORS`` (previous token,
        duplicate token, induction), from the sums: the kept attention is T, less key 0's
        column (``exclude_first``) and the diagonal (``exclude_self``), with a[0, 0] in
        both (1 behind the causal mask)."""
        d, n = self.detect, self.n_tokens
        received, distance = self.received, self.distance
        kept = torch.full_like(received[:, 0], float(n))
        previous = distance[:, 1].clone() if n > 1 else torch.zeros_like(kept)
        if d.exclude_first:
            kept -= received[:, 0]
            previous -= self.corner
        if d.exclude_self:
            kept -= distance[:, 0]
        if d.exclude_first and d.exclude_self:
            kept += 1.0 if self.causal else self.origin  # a[0, 0], taken out twice
        return (torch.stack([previous, self.found[0], self.found[1]]) / kept).numpy()


@dataclass(frozen=True)
class Detect:
    """What the detectors of a text need (``LayerReduction(detect=...)``)."""

    token_ids: torch.Tensor  # (T,) int64
    before: torch.Tensor  # (T,): the token before each one, -1 before the first
    exclude_first: bool = False
    exclude_self: bool = False

    @classmethod
    def of(cls, token_ids: list[int], exclude_first: bool = False,
           exclude_self: bool = False) -> Detect:
        ids = torch.tensor(token_ids, dtype=torch.int64)
        return cls(ids, torch.cat([torch.tensor([-1]), ids[:-1]]), exclude_first, exclude_self)


def sink_mass(received: np.ndarray, k: int) -> np.ndarray:
    """``(..., T)`` attention received -> ``(...)``: the mean over all T queries of the
    mass on the first ``k`` keys."""
    return received[..., :k].sum(axis=-1) / received.shape[-1]


def sink_alpha(received: np.ndarray, k: int, causal: bool = True) -> np.ndarray:
    """``(..., T)`` -> ``(..., k)``: for each of the first ``k`` keys j, the mean over the
    queries that see it (i >= j) of ``a[i, j]`` (Gu et al.'s alpha; the causal mask makes
    the sum over those queries the whole column's). ``causal=False`` (an encoder): every
    query sees key j, the mean is over all T."""
    n = received.shape[-1]
    return received[..., :k] / (n - np.arange(k) if causal else n)


def head_stats(entropy: np.ndarray, row_max: np.ndarray, received: np.ndarray,
               distance: np.ndarray, ahead: np.ndarray | None = None,
               origin: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``attnviz.analyses.stats.head_stats`` (the same columns and definitions) from the
    reductions of a head, ``(..., T)`` each -> ``(...)`` float64 each. ``ahead`` (the mass
    at each distance ahead) and ``origin`` (``a[0, 0]``, ``(...)``) given: an encoder's
    rows (``stats.head_stats(attention="encoder")``): the entropy normalised by ln T, the
    first token's weight without query 0's and a signed mean distance."""
    n = entropy.shape[-1]
    entropy = entropy.astype(np.float64)
    nan = np.full(entropy.shape[:-1], np.nan)
    encoder = ahead is not None
    if n > 1:
        visible = np.full(n - 1, float(n)) if encoder else np.arange(2, n + 1)
        normalized = (entropy[..., 1:] / np.log(visible)).mean(axis=-1)
        previous = distance[..., 1] / (n - 1)
        # query 0's weight on key 0 left out: 1 behind the causal mask
        first = (received[..., 0] - (origin if encoder else 1.0)) / (n - 1)
    else:
        normalized = previous = first = nan
    reach = (distance * np.arange(n)).sum(axis=-1)
    if encoder:  # signed: the keys ahead count negative
        reach -= (ahead * np.arange(n)).sum(axis=-1)
    return {
        "entropy": entropy.mean(axis=-1),
        "normalized_entropy": normalized,
        "max_weight": row_max.astype(np.float64).mean(axis=-1),
        "self": distance[..., 0] / n,
        "previous_token": previous,
        "first_token": first,
        "mean_distance": reach / n,
    }


def log_bins(n_tokens: int) -> np.ndarray:
    """Edges of distance bins 0, 1, 2-3, 4-7, ...: ``[0, 1, 2, 4, 8, ..., T]``."""
    edges = [0, 1]
    while edges[-1] < n_tokens:
        edges.append(min(edges[-1] * 2, n_tokens))
    return np.array(edges)


def binned(distance: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``(..., T)`` mass by distance -> ``(..., len(edges) - 1)``, summed within each bin."""
    return np.add.reduceat(distance, edges[:-1], axis=-1)


@dataclass(repr=False)
class LongResult(Displayable):
    """The attention of a long text, reduced (see the module docstring): every array is
    ``[layer, head, ...]`` for the layers in ``layers``. ``pooled("max")`` and
    ``exact_window()`` give ``AttentionResult``s that every picture draws."""

    token_ids: list[int]
    raw_tokens: list[bytes]
    layers: list[int]
    config: dict
    block: int  # b: the side of a pooled block
    sink_tokens: int  # k of the sink statistics
    arrays: dict[str, np.ndarray]  # weights_max/mean (L, H, P, P), entropy ... (L, H, T)
    windows: list[int | None] = field(default_factory=list)  # per layer: sliding window
    kv_heads: list[int] = field(default_factory=list)
    bos: bool = False
    span: tuple[int, int] | None = None  # --tokens A:B: arrays["window"] is (L, H, W, W)
    # "decoder" (causal rows) or "encoder" (every key seen, or a window on both sides:
    # arrays["ahead"] holds the mass at each distance ahead)
    attention: str = "decoder"
    special_ids: frozenset = frozenset()  # an encoder's [CLS], [SEP]: "special" in tokens()
    pair_start: int | None = None  # a sentence pair: the second sentence's first position
    token_types: list[int] | None = None  # ... and each token's segment

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def n_heads(self) -> int:
        return self.arrays["entropy"].shape[1]

    # Self-attention only (cross-attention's long text is refused before the forward
    # pass): what ``AttentionResult`` says of its kind, for the commands that ask either.
    cross = False

    @property
    def causal(self) -> bool:
        return self.attention == "decoder"

    def row_fields(self) -> dict:
        """As ``AttentionResult.row_fields``: ``{"attention": "encoder"}`` for an encoder."""
        return {} if self.causal else {"attention": self.attention}

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.n_tokens / self.block)

    def __repr__(self) -> str:
        return (f"<attnviz long-context attention of {one_line(self)}, pooled "
                f"{self.block}x{self.block}>")

    def tokens(self) -> list[dict]:
        """As ``AttentionResult.tokens``: with a pair, each token's ``"sentence"``."""
        records = token_records(self.token_ids, self.raw_tokens, 0, self.bos, self.special_ids)
        if self.pair_start is not None:
            for record in records:
                record["sentence"] = int(record["position"] >= self.pair_start)
        return records

    @property
    def sink_mass(self) -> np.ndarray:
        """``(L, H)``: the mean over queries of the mass on the first ``sink_tokens`` keys."""
        return sink_mass(self.arrays["received"], self.sink_tokens)

    @property
    def sink_alpha(self) -> np.ndarray:
        """``(L, H, k)``: Gu et al.'s alpha of each of the first ``sink_tokens`` keys."""
        return sink_alpha(self.arrays["received"], self.sink_tokens, self.causal)

    def stats(self) -> dict[str, np.ndarray]:
        """``attnviz.analyses.stats.head_stats``'s columns, ``(L, H)`` each (an encoder's
        as ``head_stats(attention="encoder")`` defines them), plus ``sink_mass``."""
        a = self.arrays
        both = {} if self.causal else {"ahead": a["ahead"], "origin": a["origin"]}
        return {**head_stats(a["entropy"], a["row_max"], a["received"], a["distance"], **both),
                "sink_mass": self.sink_mass}

    def export_arrays(self) -> dict[str, np.ndarray]:
        """What ``export`` writes (docs/long-context.md names each)."""
        a = self.arrays
        edges = log_bins(self.n_tokens)
        out = {k: a[k] for k in ("weights_max", "weights_mean") if k in a}
        out.update(block=np.array(self.block), entropy=a["entropy"], row_max=a["row_max"],
                   received=a["received"], distance=a["distance"],
                   distance_bins=edges, distance_binned=binned(a["distance"], edges),
                   sink_mass=self.sink_mass, sink_alpha=self.sink_alpha,
                   layers=np.array(self.layers), token_ids=np.array(self.token_ids))
        if not self.causal:  # an encoder: the distances ahead too, and its kind
            out.update(distance_ahead=a["ahead"], distance_ahead_binned=binned(a["ahead"], edges),
                       attention=np.asarray(self.attention))
            if self.token_types is not None:
                out["token_types"] = np.asarray(self.token_types, dtype=np.int64)
        if self.span is not None:
            out["window"] = a["window"]
            out["window_start"] = np.array(self.span[0])
        return out

    def block_labels(self) -> list[str]:
        """The label of each pooled block: the position of its first token."""
        return [str(i * self.block) for i in range(self.n_blocks)]

    def pooled(self, kind: str = "max") -> AttentionResult:
        """The pooled map ``weights_<kind>`` as an ``AttentionResult`` of ``P`` cells a side
        (``block`` set: each cell is a b x b block of the text; windows stay in tokens)."""
        return AttentionResult(
            token_ids=[self.token_ids[i * self.block] for i in range(self.n_blocks)],
            weights=self.arrays[f"weights_{kind}"], layers=self.layers,
            attn_inputs=np.empty((len(self.layers), 0, 0), dtype=np.float32), params={},
            config=self.config, raw_tokens=[label.encode() for label in self.block_labels()],
            windows=self.windows,
            kv_heads=self.kv_heads, block=self.block, text_length=self.n_tokens,
            attention=self.attention)

    def exact_window(self) -> AttentionResult:
        """Queries and keys ``span`` with their exact weights, as ``crop`` of the whole
        matrix gives them."""
        start, stop = self.span
        return AttentionResult(
            token_ids=self.token_ids[start:stop], weights=self.arrays["window"],
            layers=self.layers, attn_inputs=np.empty((len(self.layers), 0, 0), np.float32),
            params={}, config=self.config, raw_tokens=self.raw_tokens[start:stop],
            window=(start, stop), windows=self.windows, kv_heads=self.kv_heads, bos=self.bos,
            attention=self.attention, special_ids=self.special_ids, pair_start=self.pair_start)


def analyze_long(model, token_ids: list[int], layers: list[int], *, resolution: int = 1024,
                 sink_tokens: int = 4, maps: tuple[str, ...] = ("max", "mean"),
                 span: tuple[int, int] | None = None, detect: Detect | None = None,
                 progress=None, token_types: list[int] | None = None,
                 pair_start: int | None = None) -> LongResult:
    """Run ``model`` on ``token_ids`` once, reducing the weights of ``layers`` tile by tile:
    pooled maps at most ``resolution`` cells a side, the statistics, and the exact weights
    of the window ``span`` (queries and keys A .. B - 1) when given, and the head detectors'
    scores with ``detect``. An encoder's rows (``model.attention_kind``) are reduced as
    bidirectional; ``token_types``, ``pair_start``: its sentence pair (``encode_inputs``)."""
    n = len(token_ids)
    if not 0 < sink_tokens < n:
        raise InputError(f"--sink-tokens must be at least 1 and below the text's length "
                         f"({n} tokens), got {sink_tokens}")
    block = block_size(n, resolution)
    side, heads = math.ceil(n / block), model.n_heads
    attention = model.attention_kind  # "decoder" or "encoder"
    causal = attention == "decoder"
    shapes = {**{f"weights_{kind}": ((side, side), np.float32) for kind in maps},
              "entropy": ((n,), np.float32), "row_max": ((n,), np.float32),
              "received": ((n,), np.float64), "distance": ((n,), np.float64),
              "origin": ((), np.float64)}
    if not causal:
        shapes["ahead"] = ((n,), np.float64)
    if span is not None:
        shapes["window"] = ((span[1] - span[0],) * 2, np.float32)
    arrays = {name: np.zeros((len(layers), heads, *shape), dtype)
              for name, (shape, dtype) in shapes.items()}  # filled layer by layer, in place
    reductions = [LayerReduction(heads, n, block, maps, span,
                                 out={name: a[k] for name, a in arrays.items()}, detect=detect,
                                 causal=causal)
                  for k in range(len(layers))]
    detectors = [None] * len(layers)
    types = {} if token_types is None else {"token_types": torch.tensor([token_types])}
    for k, *_ in model.iter_run(torch.tensor([token_ids]), layers, progress=progress,
                                reduce=reductions, **types):
        detectors[k] = reductions[k].finish().get("detectors")
        reductions[k] = None  # each layer's inputs dropped as the next one runs
    if detect is not None:
        arrays["detectors"] = np.stack(detectors)  # (L, 3, H): DETECTORS' scores
    return LongResult(
        token_ids=token_ids, raw_tokens=model.tokenizer.token_bytes(token_ids), layers=layers,
        config={**model.describe(), "layers": layers}, block=block, sink_tokens=sink_tokens,
        arrays=arrays, windows=[model.window(i) for i in layers],
        kv_heads=list(model.kv_heads), bos=starts_with_bos(model, token_ids), span=span,
        attention=attention,
        special_ids=frozenset() if causal else special_ids(model, token_ids),
        pair_start=pair_start, token_types=token_types)


RESOLUTION = 1024  # a text of more tokens is shown pooled, at most this many cells a side


def check_resolution(resolution: int | None, n_tokens: int) -> int:
    """``--resolution`` checked against the text (None: the default, ``RESOLUTION``)."""
    if resolution is None:
        return RESOLUTION
    if not 1 <= resolution <= n_tokens:
        raise InputError(f"--resolution must be between 1 and the text's length ({n_tokens} "
                         f"tokens), got {resolution}")
    return resolution


def analyze_text(text: str, config=None, *, weights: str | None = None, layer="0",
                 allow_special: bool = False, heads: list[int] | None = None,
                 tokens: str | None = None, resolution: int | None = None,
                 sink_tokens: int = 4, maps: tuple[str, ...] = ("max", "mean"),
                 whole: str | None = None, progress=None, pair: str | None = None,
                 cross: str | None = None) -> AttentionResult | LongResult:
    """``analyze`` for a text of any length: the whole matrix (an ``AttentionResult``, as
    ``analyze`` returns it) when the text has at most ``resolution`` tokens (default
    ``RESOLUTION``), else the reduced attention of the whole text (a ``LongResult``, its
    ``span`` the window ``tokens`` names). ``whole``: the option that needs the whole
    matrix, refused (before the forward pass) for a text that would be reduced. ``pair``,
    ``cross``: a second text (``attention.encode_inputs``)."""
    check_text(text)
    options = config or ModelConfig()
    model = load_model(config, weights)
    inputs = encode_inputs(model, text, allow_special, options.bos, options.chat, pair=pair,
                           cross=cross)
    return analyze_tokens(model, layer=layer, heads=heads, tokens=tokens,
                          resolution=resolution, sink_tokens=sink_tokens, maps=maps,
                          whole=whole, progress=progress, **inputs)


def analyze_tokens(model, token_ids: list[int], *, layer="0", heads: list[int] | None = None,
                   tokens: str | None = None, resolution: int | None = None,
                   sink_tokens: int = 4, maps: tuple[str, ...] = ("max", "mean"),
                   whole: str | None = None, progress=None,
                   **second) -> AttentionResult | LongResult:
    """``analyze_text`` for the token ids of a model already read (``load_model``);
    ``second``: ``encode_inputs``' other entries (a pair, cross-attention's keys)."""
    n = len(token_ids)
    chosen = check_resolution(resolution, n)
    window = parse_window(tokens, n)
    if n <= chosen:
        result = analyze_with(model, token_ids, layer, heads, progress, **second)
        return crop(result, *window) if window else result
    if second.get("key_ids") is not None:
        raise InputError(f"the text is {n} tokens, more than --resolution {chosen}: a long "
                         f"text's pooled maps and statistics are made for self-attention, and "
                         f"this is cross-attention; raise --resolution to {n} to see every "
                         f"weight (memory grows as the square), or shorten the text")
    layers = checked_layers(model, n, layer, heads)
    if whole is not None:
        raise InputError(f"{whole} needs every weight of the text, shown whole: up to "
                         f"{chosen} tokens (--resolution), and this text has {n}")
    check_pooled_fits(len(layers), model.n_heads, n, block_size(n, chosen), len(maps), window)
    return analyze_long(model, token_ids, layers, resolution=chosen, sink_tokens=sink_tokens,
                        maps=maps, span=window, progress=progress,
                        token_types=second.get("token_types"),
                        pair_start=second.get("pair_start"))


def check_pooled_fits(n_layers: int, n_heads: int, n_tokens: int, block: int, n_maps: int,
                      window: tuple[int, int] | None) -> None:
    """Refuse before computing when even the pooled maps would not fit in memory."""
    side = math.ceil(n_tokens / block)
    cells = n_maps * side**2 + (0 if window is None else (window[1] - window[0]) ** 2)
    needed = n_layers * n_heads * (cells * 4 + n_tokens * 24)
    if needed > available_memory():
        raise InputError(
            f"{n_layers} layer(s) x {n_heads} heads of pooled maps {side} cells a side need "
            f"about {needed / 2**30:.1f} GiB, more than the "
            f"{available_memory() / 2**30:.1f} GiB available; lower --resolution or pick "
            f"layers with --layer")
