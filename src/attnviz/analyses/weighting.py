"""What a head moves, not only where it looks; and what the stack of layers mixes.

Tensors follow the convention of the rest of attnviz: ``[layer, head, query_pos, key_pos]``.

**Value-weighted attention** (Kobayashi et al. 2020, "Attention is Not Only a Weight:
Analyzing Transformers with Vector Norms"). Head ``h`` adds to query ``i``'s output
``Σ_j α_ij f_h(x_j)`` (plus the output projection's bias, which belongs to no key), where
``f_h(x_j) = W_O[:, h] v_{h,j}`` is key ``j``'s value sent through head ``h``'s slice of
the output projection: a ``d_model`` vector. What key ``j`` contributes is the vector
``α_ij f_h(x_j)``, and its length

    N[l, h, i, j] = ‖α_ij f_h(x_j)‖ = α_ij ‖f_h(x_j)‖

says how much of it arrives. A large weight on a key whose transformed value is short
(the first-token "sink" of trained models) moves little. Under grouped-query attention
query head ``h`` reads the value of key/value head ``h // (n_heads / n_kv_heads)``, as the
forward pass does. Norms are not probabilities: their rows do not sum to 1 and their size
depends on the model. ``renormalized`` divides each row by its sum when a statistic or the
rollout needs probability rows.

**Attention rollout** (Abnar & Zuidema 2020, "Quantifying Attention Flow in
Transformers"). With the residual connection, each layer passes on half of what it
attends to and half of the token itself:

    Ã_l = ½ · mean_h A_l + ½ · I   (rows renormalised to sum 1)
    R_0 = Ã_0,  R_l = Ã_l @ R_{l-1}

``R[i, j]`` after the last layer: how much position ``i``'s representation draws on input
token ``j``. Rollout runs through every layer from 0 up to a deepest one (``rollout_layers``
says which, for ``--layer``); ``weighting="norm"`` rolls out the renormalised norms instead
of the attention weights.

Every command goes through these functions: ``value_norms`` (one layer, from the module and
what it received), ``norm_weights`` (an ``AttentionResult``), ``rollout`` (matrices in
hand) and ``model_rollout`` (a forward pass, one layer in memory at a time).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from attnviz.analyses.attention import (
    check_causal,
    check_length,
    encode_text,
    load_model,
    parse_layers,
    parse_window,
    starts_with_bos,
    token_records,
)
from attnviz.core.config import ModelConfig
from attnviz.core.errors import InputError
from attnviz.text.gpt2_bpe import token_label

WEIGHTINGS = ("attention", "norm")
NORM_LABEL = "‖α·f(x)‖ (value-weighted)"  # what the colours of a picture of norms stand for
# What config["weighting"] says, per command, when the norms are in play.
STATISTICS_NOTE = "statistics of the rows of α_ij·‖f_h(x_j)‖ renormalised to sum 1"


def check_weighting(weighting: str) -> str:
    if weighting not in WEIGHTINGS:
        raise InputError(f"--weighting must be attention or norm, got {weighting!r}")
    return weighting


# ------------------------------------------------------------------------- value norms


def value_norms(module, attn_input) -> np.ndarray:
    """``(H, T)`` float64: ``‖f_h(x_j)‖`` for every head ``h`` and key ``j``, from one
    attention ``module`` (``models.forward.Attention``, or random mode's
    ``MultiHeadAttention``) and what it received, ``attn_input (T, d_model)``.

    ``‖W_O[:, h] v‖² = vᵀ (W_O[:, h]ᵀ W_O[:, h]) v``: one ``(head_dim, head_dim)`` Gram
    matrix per head instead of ``(H, T, d_model)`` transformed values, in float64."""
    import torch

    weight = module.out_proj.weight  # (d_model, n_heads · head_dim)
    x = torch.as_tensor(attn_input).to(weight.device, torch.float32)  # (T, d_model)
    n_heads, head_dim = module.num_heads, module.head_dim
    with torch.inference_mode():
        if hasattr(module, "project"):  # the forward's own projections (grouped kv heads)
            _, _, values = module.project(x[None])  # (1, nkv, T, hd)
        else:  # random mode: one value head per head
            num_tokens = x.shape[0]
            values = module.W_value(x[None]).view(1, num_tokens, n_heads, head_dim).transpose(1, 2)
        values = values[0].double()  # (nkv, T, hd)
        group = n_heads // values.shape[0]
        if group > 1:  # query head h reads kv head h // group
            values = values.repeat_interleave(group, dim=0)  # (H, T, hd)
        w_out = weight.double().view(weight.shape[0], n_heads, head_dim).transpose(0, 1)  # (H, d, hd)
        gram = w_out.transpose(1, 2) @ w_out  # (H, hd, hd)
        squared = torch.einsum("htk,hkl,htl->ht", values, gram, values)  # (H, T)
        return squared.clamp_min(0.0).sqrt().cpu().numpy()


def layer_norms(weights: np.ndarray, module, attn_input) -> np.ndarray:
    """One layer's ``(H, T, T)`` attention weights -> its ``(H, T, T)`` float32 norms
    ``α_ij ‖f_h(x_j)‖`` (0 wherever the weight is 0: the masked future stays 0)."""
    norms = value_norms(module, attn_input)  # (H, T): one length per key
    return (weights * norms[:, None, :]).astype(np.float32)


def norm_weights(result) -> np.ndarray:
    """``(L, H, T, T)`` float32 norms of an ``AttentionResult`` (``result.weights`` times the
    length of each key's transformed value). In a window (``--tokens A:B``) the keys are the
    window's, whose inputs ``attn_inputs`` holds, so the norms are those of the whole text, cut."""
    if not result.modules:
        raise InputError("value-weighted attention needs the attention modules of the run "
                         "(an AttentionResult from analyze)")
    return np.stack([layer_norms(result.weights[k], result.modules[k], result.attn_inputs[k])
                     for k in range(len(result.layers))])


def stream_norms(stream) -> Iterator[np.ndarray]:
    """The norms of an ``analysis.LayerStream``, one ``(H, T, T)`` layer at a time in its
    order (cut to its window): its forward pass is run again, one layer in memory."""
    for weights, attn_input, module in replace(stream, progress=None).with_inputs():
        yield layer_norms(weights, module, attn_input)


def renormalized(matrices: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (float32; a row summing to 0 stays 0): norms as
    probability rows, for the statistics of ``compare-heads`` and for the rollout."""
    matrices = np.asarray(matrices)
    sums = matrices.sum(axis=-1, keepdims=True, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rows = np.where(sums > 0, matrices / np.where(sums > 0, sums, 1.0), 0.0)
    return rows.astype(np.float32)


def probability_rows(result, weighting: str) -> np.ndarray:
    """``(L, H, T, T)`` rows a statistic can read: the attention weights, or the norms
    renormalised (``weighting="norm"``)."""
    check_weighting(weighting)
    return result.weights if weighting == "attention" else renormalized(norm_weights(result))


def colour_top(values: np.ndarray) -> float:
    """The top of a colour scale for ``values`` (>= 0): their maximum rounded up to a round
    number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times a power of ten), so the colorbar's
    ticks are round too; 1.0 when every value is 0."""
    largest = float(np.max(values)) if np.size(values) else 0.0
    if not largest > 0 or not math.isfinite(largest):
        return 1.0
    decade = 10.0 ** math.floor(math.log10(largest))
    for step in (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0):
        if largest <= step * decade * (1 + 1e-9):
            return float(f"{step * decade:.6g}")
    return 10.0 * decade


def weighting_config(weighting: str, what: str, **extra) -> dict:
    """What ``config["weighting"]`` holds with ``--weighting norm``: the method and, in
    ``what``, how this command uses it."""
    return {"name": weighting, "method": "Kobayashi et al. 2020: ‖α_ij·f_h(x_j)‖", "use": what,
            **extra}


# ---------------------------------------------------------------------------- rollout


def rollout_layers(layer, n_layers: int, default_all: bool = True,
                   option: str = "--view rollout") -> list[int]:
    """The layers a rollout runs through for ``--layer``: every layer from 0 to the deepest
    asked for. ``all`` (and, with ``default_all``, no ``--layer``): the whole model; one
    layer ``L``: layers 0..L; a list must be exactly 0..L (``0,1,2``) — any other list
    (``3,5``) is refused, since a rollout cannot skip a layer."""
    if layer is None or layer == []:
        layer = "all" if default_all else 0
    layers = parse_layers(layer, n_layers)
    if len(layers) == 1:
        return list(range(layers[0] + 1))
    if layers != list(range(len(layers))):
        raise InputError(f"{option} multiplies every layer from 0 up, so it cannot take the "
                         f"layers {','.join(map(str, layers))}: give --layer all, or one layer L "
                         f"(rollout through layers 0-L, e.g. --layer {max(layers)})")
    return layers


def rollout_step(rows: np.ndarray) -> np.ndarray:
    """One layer's ``(H, T, T)`` probability rows -> ``Ã = ½·mean_h A + ½·I``, rows
    renormalised to sum 1 (float64, ``(T, T)``)."""
    mean = np.asarray(rows, dtype=np.float64).mean(axis=0)  # (T, T)
    mixed = 0.5 * mean + 0.5 * np.eye(mean.shape[-1])
    return mixed / mixed.sum(axis=-1, keepdims=True)


def rollout(layers_rows: Iterable[np.ndarray]) -> np.ndarray:
    """``R = Ã_L ⋯ Ã_0`` (``(T, T)`` float64) of layers ``0..L``' ``(H, T, T)`` rows, in
    order (an ``(L, H, T, T)`` array or any iterable of them)."""
    result = None
    for rows in layers_rows:
        step = rollout_step(rows)
        result = step if result is None else step @ result  # R_l = Ã_l @ R_{l-1}
    if result is None:
        raise ValueError("a rollout needs at least one layer")
    return result


def model_rollout(model, token_ids: Sequence[int], layers: Sequence[int],
                  weighting: str = "attention", progress=None) -> np.ndarray:
    """The ``(T, T)`` rollout of ``model`` (from ``analysis.load_model``) on the whole text
    through ``layers`` (``0..L``, from ``rollout_layers``): one forward pass, one layer's
    weights in memory at a time; ``weighting="norm"`` rolls out the renormalised norms."""
    return model_rollouts(model, token_ids, layers, (weighting,), progress)[weighting]


def model_rollouts(model, token_ids: Sequence[int], layers: Sequence[int],
                   weightings: Sequence[str] = ("attention",), progress=None) -> dict:
    """``model_rollout`` of each of ``weightings``, from one forward pass: name -> ``(T, T)``."""
    import torch

    for name in weightings:
        check_weighting(name)
    if list(layers) != list(range(len(layers))):
        raise ValueError(f"a rollout runs through layers 0..L, got {list(layers)}")
    found: dict[str, np.ndarray] = {}
    ids = torch.tensor([list(token_ids)])
    for _, attn_input, weights, module in model.iter_run(ids, list(layers), progress=progress):
        alpha = weights[0].float().cpu().numpy()  # (H, T, T)
        for name in weightings:
            rows = alpha if name == "attention" else renormalized(
                layer_norms(alpha, module, attn_input[0].float().cpu()))
            step = rollout_step(rows)
            found[name] = step if name not in found else step @ found[name]  # Ã_l @ R_{l-1}
    return found


def rollout_title(layers: Sequence[int], weighting: str, n_tokens: int) -> str:
    """The picture's title: "Attention rollout through layers 0–11, 12 tokens"."""
    what = "Value-weighted rollout" if weighting == "norm" else "Attention rollout"
    through = f"layer {layers[0]}" if len(layers) == 1 else f"layers {layers[0]}–{layers[-1]}"
    return f"{what} through {through}, {n_tokens} token{'s' if n_tokens != 1 else ''}"


@dataclass
class RolloutResult:
    """The rollout of one text: ``matrix`` ``(T, T)`` (cut to ``window`` after it was
    computed on the whole text: rows then sum to less than 1 when keys before the window
    are cut), through ``layers``, of ``weighting``'s rows."""

    matrix: np.ndarray
    layers: list[int]
    weighting: str
    token_ids: list[int]
    raw_tokens: list[bytes] = field(repr=False, default_factory=list)
    config: dict = field(default_factory=dict)
    window: tuple[int, int] | None = None
    bos: bool = False

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def token_labels(self) -> list[str]:
        first = self.window[0] if self.window else None
        return [token_label(raw) if first is None else f"{first + i}: {token_label(raw)}"
                for i, raw in enumerate(self.raw_tokens)]

    def tokens(self) -> list[dict]:
        return token_records(self.token_ids, self.raw_tokens,
                             self.window[0] if self.window else 0, self.bos)

    @property
    def title(self) -> str:
        return rollout_title(self.layers, self.weighting, self.n_tokens)


def analyze_rollout(text: str, config=None, *, weights: str | None = None, layer=None,
                    allow_special: bool = False, tokens: str | None = None,
                    weighting: str = "attention", progress=None) -> RolloutResult:
    """``text`` -> its ``RolloutResult``: the model of ``config``/``weights`` run through
    ``rollout_layers(layer)`` (every layer without ``layer``), on the whole text, then cut
    to ``tokens="A:B"`` when given."""
    check_weighting(weighting)
    model = load_model(config, weights)
    check_causal(model, "--view rollout", "use --view heatmap")  # a lower-triangle product
    token_ids = encode_text(model, text, allow_special, bos=(config or ModelConfig()).bos,
                            chat=(config or ModelConfig()).chat)
    window = parse_window(tokens, len(token_ids))
    layers = rollout_layers(layer, model.n_layers)
    hint = " or raise --context-length" if model.describe()["mode"] == "random" else (
        " (the checkpoint's n_positions)")
    check_length(len(token_ids), model.context_length, hint)
    matrix = model_rollout(model, token_ids, layers, weighting, progress)
    cut = slice(*window) if window else slice(None)
    shown = token_ids[cut]
    rollout_config = {"layers": layers, "weighting": weighting}
    return RolloutResult(np.ascontiguousarray(matrix[cut, cut]), layers, weighting, shown,
                         model.tokenizer.token_bytes(shown),
                         {**model.describe(), "layers": layers, "rollout": rollout_config},
                         window, starts_with_bos(model, token_ids))
