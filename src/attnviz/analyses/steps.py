"""One head through the attention pipeline of chapter 3, every intermediate matrix kept.

>>> from attnviz.analyses.attention import analyze
>>> from attnviz.core.config import ModelConfig
>>> result = analyze("Your journey starts with one step", ModelConfig(n_heads=4, d_model=32))
>>> steps = head_steps(result, head=3)
>>> steps.queries.shape, steps.scores.shape, steps.context.shape   # (T, d_k), (T, T), (T, d_k)
((6, 8), (6, 6), (6, 8))
>>> bool(abs(steps.weights - result.weights[0, 3]).max() < 1e-6)
True

For head ``h`` with ``d_k = head_dim`` and ``X`` the ``(T, d_model)`` input of the layer::

    Q = X W_Q[h]ᵀ (+ b_Q[h])    K, V likewise           (T, d_k)
    S = Q Kᵀ                                            (T, T)  [query_pos, key_pos]
    S' = S / √d_k                                       (T, T)
    M = S' with -inf where key_pos > query_pos          (T, T)
    A = softmax(M) row by row                           (T, T)  rows sum to 1
    A_drop = dropout(A)   (only when asked)             (T, T)
    Z = A V  (A_drop V with dropout)                    (T, d_k)

Without the causal mask (``--bidirectional``, an encoder) there is no mask step, unless a
window on both sides hides the keys ``|j - i| >= W``; cross-attention (``--cross``) takes
K and V from the second text's input ``X₂`` (``(T_k, d_kv)``): ``S`` is ``(T, T_k)``.
A model that does not scale its scores (T5: the factor is 1) has no scale step. T5 adds
its relative position bias ``B`` (``(T, T_k)``, one learned number per distance bucket
and head) to the scores before the mask: a step of its own (``position_bias``, then
``biased_scores = S + B``). Encoder–decoders: ``attnviz.analyses.seq2seq_steps``.

Everything is recomputed from the layer's float32 input and parameters in float32, the
way the model computes it, so ``A`` is the model's weights (to float32 rounding: a
float64 re-derivation differs from the float32 model by up to ~1e-6 when scores are
large). The matrices are returned as float64 arrays holding those float32 values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from attnviz.analyses.attention import AttentionResult
from attnviz.core.errors import InputError

# The order in which the pipeline produces its matrices; JSON keys and figure panels follow it.
# The first four exist only where the model has the step: QK-norm (Qwen3) normalises the
# projected queries and keys, RoPE (Llama, Qwen, Mistral) rotates them.
STAGES = ("queries_projected", "keys_projected", "queries_unrotated", "keys_unrotated")
MATRICES = (*STAGES, "queries", "keys", "scores", "scaled", "position_bias", "biased_scores",
            "masked", "weights", "dropped", "values", "context")
# The (T, T_k) matrices, [query_pos, key_pos]: what a window of the queries cuts by rows.
SQUARE = ("scores", "scaled", "position_bias", "biased_scores", "masked", "weights", "dropped")


@dataclass
class HeadSteps:
    """Every matrix one head computes (float32 values in float64 numpy arrays).

    ``(T, d_k)``: ``queries``, ``keys``, ``values``, ``context``.
    ``(T, T)`` ``[query_pos, key_pos]``: ``scores``, ``scaled`` (None when the model does
    not scale: T5), ``position_bias`` and ``biased_scores`` (T5's relative position bias
    and the scores it is added to, else None), ``masked`` (``-inf`` in the future; None
    where nothing is hidden), ``weights``, and ``dropped`` (the weights after dropout, or
    None).
    """

    layer: int
    head: int
    head_dim: int
    scale: float  # scores are multiplied by this (1 / √d_k for GPT-2, 1 for T5)
    queries: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    scores: np.ndarray
    scaled: np.ndarray | None
    masked: np.ndarray | None
    weights: np.ndarray
    context: np.ndarray
    dropped: np.ndarray | None = None
    dropout: float | None = None
    seed: int | None = None
    biased: bool = False
    # Before QK-norm and before the rotation, ``(T, d_k)``, where the model has those steps.
    queries_projected: np.ndarray | None = None
    keys_projected: np.ndarray | None = None
    queries_unrotated: np.ndarray | None = None
    keys_unrotated: np.ndarray | None = None
    kv_head: int | None = None  # the key/value head this head reads (grouped-query models)
    window: int | None = None  # sliding window W: keys W or more back are masked too
    softcap: float | None = None
    rope: dict | None = None  # the rotation (RopeSpec.describe()), when the layer has one
    causal: bool = True  # False: an encoder's or cross-attention (no causal mask)
    cross: bool = False  # K and V from another text's input: (T_k, d_k)
    position_bias: np.ndarray | None = None  # (T, T_k): T5's relative position bias, this head's
    biased_scores: np.ndarray | None = None  # (T, T_k): the scores with the bias added
    # T5's bias: {"num_buckets", "max_distance", "bidirectional", "layer"} (the layer whose
    # table it is: the stack's first, shared by all its layers)
    relative: dict | None = None
    kind: str | None = None  # an encoder–decoder's attention: "encoder", "decoder" or "cross"

    @property
    def n_tokens(self) -> int:
        return self.scores.shape[0]

    @property
    def n_keys(self) -> int:
        return self.scores.shape[1]

    def hidden(self) -> np.ndarray:
        """``(T, T_k)`` bool: the cells the mask hides (none without the causal mask and a
        window)."""
        return hidden_cells(self.n_tokens, self.n_keys, self.window, self.causal)

    @property
    def divides_by_sqrt_dk(self) -> bool:
        return math.isclose(self.scale, 1.0 / math.sqrt(self.head_dim))

    def formulas(self) -> dict[str, str]:
        """Each matrix's formula, as the book writes it, keyed like ``matrices()``."""
        bias = " + b_{}" if self.biased else ""
        scaled = ("S" if self.scaled is None else
                  "S / √d_k" if self.divides_by_sqrt_dk else f"S × {self.scale:.4g}")
        if self.softcap is not None:
            scaled = f"{self.softcap:g}·tanh(({scaled}) / {self.softcap:g})"
        before_mask = scaled if self.position_bias is None else f"{scaled} + B"
        projected = {name: f"{'X₂' if self.cross and name == 'K' else 'X'}·W_{name}"
                     + bias.format(name) for name in ("Q", "K")}
        unrotated = dict(projected)
        if self.queries_projected is not None:
            unrotated = {name: f"RMSNorm({name}₀)" for name in ("Q", "K")}
        final = {name: f"RoPE({name}₁)" if self.rope else unrotated[name] for name in ("Q", "K")}
        formulas = {
            "queries_projected": f"Q₀ = {projected['Q']}",
            "keys_projected": f"K₀ = {projected['K']}",
            "queries_unrotated": f"Q₁ = {unrotated['Q']}",
            "keys_unrotated": f"K₁ = {unrotated['K']}",
            "queries": f"Q = {final['Q']}",
            "keys": f"K = {final['K']}",
            "scores": "S = Q·Kᵀ",
            "scaled": scaled,
            "position_bias": "B = b_h[bucket(j − i)]",
            "biased_scores": before_mask,
            "masked": (f"mask({before_mask})" if self.window is None else
                       f"mask_{self.window}({before_mask})" if self.causal else
                       f"mask_±{self.window - 1}({before_mask})"),
            "weights": (f"A = softmax(mask({before_mask}))" if self.masked is not None else
                        f"A = softmax({before_mask})"),
            "dropped": "" if self.dropout is None else f"dropout(A), p = {self.dropout:g}",
            "values": ("V = X₂·W_V" if self.cross else "V = X·W_V") + bias.format("V"),
            "context": f"Z = {'A' if self.dropped is None else 'dropout(A)'}·V",
        }
        return {name: formulas[name] for name in self.matrices()}

    def matrices(self) -> dict[str, np.ndarray]:
        """The matrices in pipeline order (``dropped`` only when dropout was applied)."""
        return {name: getattr(self, name) for name in MATRICES if getattr(self, name) is not None}


def score_scale(result: AttentionResult, layer_index: int, head_dim: int) -> float:
    """The factor the scores of ``result.layers[layer_index]`` are multiplied by before
    the mask and softmax — the one place the scale is decided.

    GPT-2 and the book divide by √d_k. A model that scales otherwise (GPT-2 configs with
    ``scale_attn_weights=false`` or ``scale_attn_by_inverse_layer_idx``) reports its
    factor per layer in ``result.scales`` (or ``config["attn_scale"]``), used when given.
    """
    scales = getattr(result, "scales", None) or []
    if layer_index < len(scales) and scales[layer_index] is not None:
        return float(scales[layer_index])
    if result.config.get("attn_scale") is not None:
        return float(result.config["attn_scale"])
    return 1.0 / math.sqrt(head_dim)


def causal_future(n_tokens: int, window: int | None = None) -> np.ndarray:
    """``(T, T)`` bool, True where key_pos > query_pos (the cells the mask hides) and, with
    a sliding window W, where key_pos <= query_pos - W."""
    hidden = np.triu(np.ones((n_tokens, n_tokens), dtype=bool), k=1)
    if window is not None:
        hidden |= np.tril(np.ones((n_tokens, n_tokens), dtype=bool), k=-window)
    return hidden


def hidden_cells(n_tokens: int, n_keys: int, window: int | None, causal: bool) -> np.ndarray:
    """``(T, T_k)`` bool, True where the mask hides the key: ``causal_future`` of causal
    attention; without the causal mask nothing, or with a window W the keys ``|j - i| >= W``."""
    if causal:
        return causal_future(n_tokens, window)
    if window is None:
        return np.zeros((n_tokens, n_keys), dtype=bool)
    queries, keys = np.indices((n_tokens, n_keys), sparse=True)
    return np.abs(keys - queries) >= window


def dropout_keep(shape: tuple[int, int], p: float, seed: int) -> np.ndarray:
    """The cells ``torch.nn.Dropout(p)`` keeps in a tensor of ``shape`` (bool), as drawn
    after ``torch.manual_seed(seed)`` — the book's ``torch.manual_seed(123);
    dropout(attn_weights)``. The global torch RNG is left as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        drop = torch.nn.Dropout(p).train()
        return (drop(torch.ones(shape)) != 0).numpy()


def check_dropout(p: float) -> None:
    if not (0.0 <= p < 1.0):
        raise InputError(f"--dropout must be a probability from 0 up to (not including) 1, got {p}")


def head_steps(
    result: AttentionResult,
    head: int,
    layer: int | None = None,
    dropout: float | None = None,
    seed: int = 123,
) -> HeadSteps:
    """Recompute head ``head`` of ``layer`` (default: the first layer in ``result``)
    step by step from the layer's input and projection weights.

    ``dropout``: apply ``nn.Dropout(dropout)`` (drawn with ``seed``) to the weights
    before the context, as the book does while training.
    """
    n_heads = result.n_heads
    if not 0 <= head < n_heads:
        raise InputError(f"--head {head} is out of range: the model has {n_heads} heads "
                         f"(0-{n_heads - 1})")
    if layer is None:
        layer = result.layers[0]
    if layer not in result.layers:
        raise InputError(f"layer {layer} was not computed (have {result.layers})")
    li = result.layers.index(layer)
    if dropout is not None:
        check_dropout(dropout)

    import torch

    x = torch.from_numpy(result.attn_inputs[li])  # (T, d_model) float32, as the model saw it
    # cross-attention: keys and values from the second text's input, (T_k, d_kv)
    x_kv = torch.from_numpy(result.key_inputs[li]) if result.cross else x
    d_out = result.params["W_query"].shape[1]
    head_dim = d_out // n_heads
    cols = slice(head * head_dim, (head + 1) * head_dim)

    def project(name: str) -> torch.Tensor:
        # The whole projection, as nn.Linear computed it in the model, then this head's slice.
        bias = result.params.get(f"b_{name}")
        source = x if name == "query" else x_kv
        full = torch.nn.functional.linear(source, torch.from_numpy(result.params[f"W_{name}"][li]),
                                          None if bias is None else torch.from_numpy(bias[li]))
        return full[:, cols]  # (T, d_k)

    module = result.modules[li] if li < len(result.modules) else None
    stages, kv_head = {}, None
    if hasattr(module, "project"):  # models.forward.Attention: QK-norm, RoPE, grouped heads
        with torch.inference_mode():
            q, k, v = module.project(x[None], stages)  # (1, nh, T, d_k), (1, nkv, T, d_k) x 2
        kv_head = head // (module.num_heads // module.num_kv_heads)
        queries, keys, values = q[0, head].clone(), k[0, kv_head].clone(), v[0, kv_head].clone()
        stages = {name: t[0, head if name.startswith("queries") else kv_head].clone()
                  for name, t in stages.items()}
    else:
        queries, keys, values = project("query"), project("key"), project("value")  # (T, d_k)
    scale = score_scale(result, li, head_dim)
    window, softcap = getattr(module, "window", None), getattr(module, "softcap", None)
    computed = pipeline(queries, keys, values, scale=scale, softcap=softcap, window=window,
                        causal=result.causal, dropout=dropout, seed=seed)

    out = as_float64
    return HeadSteps(
        layer=layer, head=head, head_dim=head_dim, scale=scale,
        queries=out(queries), keys=out(keys), values=out(values),
        **{name: out(t) for name, t in computed.items()},
        dropout=dropout, seed=seed if dropout is not None else None,
        biased="b_query" in result.params,
        **{name: out(t) for name, t in stages.items()},
        kv_head=kv_head if result.kv_heads else None, window=window, softcap=softcap,
        rope=module.rope.describe() if getattr(module, "rope", None) is not None else None,
        causal=result.causal, cross=result.cross,
    )


def pipeline(queries, keys, values, *, scale: float, softcap: float | None = None, bias=None,
             window: int | None = None, causal: bool = True, dropout: float | None = None,
             seed: int = 123) -> dict:
    """One head's steps after its projections, as torch float32 tensors keyed like
    ``HeadSteps``: ``queries (T, d_k)`` against ``keys``/``values (T_k, d_k)``; ``bias``
    ``(T, T_k)`` (T5's relative positions) added after the scale and softcap, as
    ``models.engine.attend`` adds it. ``scaled`` is None when nothing is scaled (factor 1,
    no softcap: T5), ``masked`` when nothing is hidden and the attention is not causal."""
    import torch

    scores = queries @ keys.T  # (T, T_k)
    # The scale is applied where the model applies it (see models.forward.Attention): to
    # the queries when it is a power of two, else to the scores. The same order keeps these
    # numbers the model's own, not merely close to them.
    exact = math.frexp(scale)[0] == 0.5
    scaled = (queries * scale) @ keys.T if exact else scores * scale
    if softcap is not None:
        scaled = torch.tanh(scaled / softcap) * softcap
    biased = scaled if bias is None else scaled + bias  # (T, T_k)
    hidden = hidden_cells(len(queries), len(keys), window, causal)
    # no mask step when nothing is hidden (an encoder's global layer, cross-attention)
    masked = biased.masked_fill(torch.from_numpy(hidden), float("-inf")) if hidden.any() or (
        causal) else None
    weights = torch.softmax(biased if masked is None else masked, dim=-1)  # (T, T_k)
    dropped = None
    if dropout is not None:
        keep = torch.from_numpy(dropout_keep(tuple(weights.shape), dropout, seed))
        dropped = torch.where(keep, weights / (1.0 - dropout), torch.zeros(()))
    context = (weights if dropped is None else dropped) @ values  # (T, d_k)
    return {"scores": scores, "scaled": None if scale == 1.0 and softcap is None else scaled,
            "position_bias": bias, "biased_scores": None if bias is None else biased,
            "masked": masked, "weights": weights, "dropped": dropped, "context": context}


def as_float64(t) -> np.ndarray | None:
    """A float32 tensor's values in a float64 array (what ``HeadSteps`` holds); None stays."""
    return None if t is None else t.numpy().astype(np.float64)
