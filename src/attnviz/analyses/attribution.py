"""Which heads matter for one prediction: direct logit attribution and ablation.

>>> result = attribute(model, token_ids, target=" Mary", contrast=" John")  # doctest: +SKIP
>>> result.dla.shape, result.ablation.shape        # (layers, heads) each
((12, 12), (12, 12))

The metric is the logit of ``target`` at ``position`` — or the logit difference target −
contrast (Wang et al. 2022's IOI convention) — before any final logit softcap.

**Direct logit attribution** (Elhage et al. 2021; TransformerLens's ``apply_ln_to_stack``):
the residual stream at the position is a sum of components — the embeddings, every head's
output (its context vector through its slice of ``out_proj``), each layer's output-projection
bias, every MLP's output. The final norm is applied to each with its statistics frozen at
the whole stream (LayerNorm: centred, divided by the stream's σ; RMSNorm: divided by its
RMS; then the norm's weight), its bias is one more component, and each is dotted with the
unembedding direction ``U[target] − U[contrast]``. The components add up to the metric.
A sandwich norm after the attention (Gemma) is frozen the same way at the layer's output.

**Ablation**: the metric's change when a head's output is removed — its context replaced
by zeros (``zero``) or by its mean over positions (``mean``: of the prompt, or of baseline
prompts) — and every later computation redone. One batch row per head of a layer, run from
that layer on, over the positions up to ``position`` only (causal: later ones cannot matter).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from attnviz.analyses.attention import import_pandas, token_records
from attnviz.core.errors import InputError
from attnviz.core.views import Displayable
from attnviz.text.gpt2_bpe import token_label

ABLATIONS = ("zero", "mean")
_CHUNK_BYTES = 256 * 2**20  # activations of one batch of ablation rows, at most


@dataclass(repr=False)
class AttributionResult(Displayable):
    """Shown in a notebook as the metric, the top heads and the two layers × heads maps."""

    token_ids: list[int]
    position: int  # absolute, 0-based: the prediction is of the token after this one
    target: int
    contrast: int | None
    metric: float  # logit[target] (- logit[contrast]) at the position, before a softcap
    predictions: list[tuple[int, float, float]]  # top-k: (id, probability, logit)
    dla: np.ndarray  # (L, H): each head's direct contribution to the metric
    ablation: np.ndarray  # (L, H): metric with the head ablated - metric
    attention: np.ndarray  # (L, H, position + 1): each head's row at the position
    components: dict[str, float]  # the rest of the decomposition (see ``decomposition``)
    ablate: str = "zero"
    baseline_prompts: int = 0  # prompts the mean ablation averaged over (0: the prompt)
    config: dict = field(default_factory=dict)
    # the model's tokenizer, for labels (not data)
    tokenizer: object = field(default=None, compare=False)

    def __repr__(self) -> str:
        metric = (describe_metric(self, self.tokenizer) if self.tokenizer is not None
                  else f"token {self.target}")
        return (f"<attnviz attribution of {metric} = {self.metric:.4f} at position "
                f"{self.position}, {self.n_layers} layers × {self.n_heads} heads>")

    def to_numpy(self, measure: str = "dla") -> np.ndarray:
        """``dla`` or ``ablation`` per head: ``(L, H)``."""
        if measure not in ("dla", "ablation"):
            raise InputError(f"measure must be dla or ablation, got {measure!r}")
        return getattr(self, measure)

    def to_pandas(self):
        """One row per (layer, head): ``dla``, ``ablation`` and ``key_<k>``, the head's
        weight on key k at the position (the CSV of `attnviz attribute`). Needs pandas."""
        return import_pandas().DataFrame(attribution_rows(self))

    @property
    def n_layers(self) -> int:
        return self.dla.shape[0]

    @property
    def n_heads(self) -> int:
        return self.dla.shape[1]

    def decomposition_total(self) -> float:
        """Every component's contribution added up: equals ``metric`` (up to rounding)."""
        return float(self.dla.sum(dtype=np.float64)) + sum(self.components.values())

    def top_heads(self, measure: str, k: int = 10) -> list[tuple[int, int, float]]:
        """The ``k`` heads with the largest ``|measure|`` (``dla`` or ``ablation``):
        ``(layer, head, value)``, largest first."""
        values = getattr(self, measure)
        order = np.argsort(-np.abs(values), axis=None, kind="stable")[:k]
        return [(int(i // self.n_heads), int(i % self.n_heads), float(values.flat[i]))
                for i in order]


def check_can_attribute(model) -> None:
    if model.describe().get("mode") == "random":
        raise InputError("attribute needs trained weights: random mode has no output head "
                         "(unembedding); pass --weights (a checkpoint or a Hub repo id such as "
                         "gpt2)")
    if not getattr(model, "can_predict", False):
        raise InputError("the checkpoint has no final norm and output head (unembedding): "
                         "attribute cannot compute a prediction")


def single_token(tokenizer, text: str, option: str) -> int:
    """The one token id ``text`` is, or ``InputError`` saying how it tokenizes."""
    if text == "":
        raise InputError(f"{option} is empty: give the token's text, e.g. {option} \" Mary\"")
    ids = tokenizer.encode(text, allow_special=True, add_bos=False)
    if tokenizer.unknown_words(text, ids):
        raise InputError(f"{option} {text!r} is the tokenizer's unknown token: the model cannot "
                         "tell it from any other unknown word; give a token in its vocabulary")
    if len(ids) != 1:
        pieces = " | ".join(f"{token_label(raw)} ({i})"
                            for i, raw in zip(ids, tokenizer.token_bytes(ids)))
        raise InputError(f"{option} {text!r} is {len(ids)} tokens, not one: {pieces}; give a "
                         "single token (mind the leading space: \" Mary\" is one GPT-2 token, "
                         "\"Mary\" another)")
    return ids[0]


def check_position(position: int, n_tokens: int, option: str = "--position") -> int:
    """``--position`` (or ``option``: negative counts from the end) -> absolute, or
    ``InputError``."""
    absolute = position + n_tokens if position < 0 else position
    if not 0 <= absolute < n_tokens:
        raise InputError(f"{option} {position} is out of range: the text has {n_tokens} "
                         f"tokens (0-{n_tokens - 1}; negative numbers count from the end)")
    return absolute


def resolve_metric(model, token_ids: list[int], target: str | None, contrast: str | None,
                   position: int) -> tuple[int | None, int | None]:
    """``--target``/``--contrast`` texts -> token ids (None: the top prediction / no
    contrast), refused before any work when they are not one token each, the same token,
    or ``position`` is outside the text; the model must have an output head."""
    check_can_attribute(model)
    check_position(position, len(token_ids))
    target_id = single_token(model.tokenizer, target, "--target") if target is not None else None
    contrast_id = (single_token(model.tokenizer, contrast, "--contrast")
                   if contrast is not None else None)
    if contrast_id is not None and contrast_id == target_id:
        raise InputError("--contrast is the target token itself: the logit difference would be "
                         "0; give another token")
    return target_id, contrast_id


class _Forward:
    """The clean forward pass of one text, recording what the decomposition needs.
    ``n_blocks``: run only the first blocks (``final`` is then the stream entering block
    ``n_blocks``), which the caller has made ready for these tokens (``Transformer.iter_run``
    does, for the blocks up to the layer it runs). ``token_types``: a sentence pair's
    segments (BERT)."""

    def __init__(self, model, token_ids: list[int], progress=None, n_blocks: int | None = None,
                 token_types: list[int] | None = None):
        if n_blocks is None:
            model.ready(len(token_ids), progress)
        types = None if token_types is None else torch.tensor([token_types])
        x = model.embed(torch.tensor([token_ids]), token_types=types)  # (1, T, d)
        self.embedding = x[0]
        self.inputs, self.contexts, self.weights, self.records = [], [], [], []
        for block in model.blocks[:n_blocks]:
            self.inputs.append(x)  # the residual stream entering the block
            contexts: list[torch.Tensor] = []
            record: dict = {}
            x, _, weights = block(x, edit=_keep(contexts), record=record)
            self.contexts.append(contexts[0][0])  # (T, nh·hd)
            self.weights.append(weights[0])  # (nh, T, T)
            self.records.append(record)
        self.final = x[0]  # (T, d): the residual stream the final norm reads


def _keep(store: list):
    def edit(context: torch.Tensor) -> torch.Tensor:
        store.append(context)
        return context
    return edit


def _frozen(norm, stream: torch.Tensor):
    """The norm ``norm`` as a linear map with its statistics taken from ``stream (..., d)``
    (one position ``(d,)``, or several ``(T, d)``: each its own statistics):
    ``apply(c (..., d)) -> (..., d)``, and its bias (None without one). Summed over
    components of ``stream``, ``apply`` plus the bias gives ``norm(stream)``. A LayerNorm's
    centring is linear: ``apply`` centres each component."""
    weight, spread = norm.weight, _spread(norm, stream)
    if isinstance(norm, torch.nn.LayerNorm):
        return (lambda c: (c - c.mean(-1, keepdim=True)) / spread * weight), norm.bias
    return (lambda c: c / spread * weight), getattr(norm, "bias", None)


def _spread(norm, stream: torch.Tensor) -> torch.Tensor:
    """What ``norm`` divides ``stream (..., d)`` by, ``(..., 1)``: LayerNorm's σ, RMSNorm's
    RMS (each with the norm's epsilon)."""
    if isinstance(norm, torch.nn.LayerNorm):
        return torch.sqrt(stream.var(-1, unbiased=False, keepdim=True) + norm.eps)
    return torch.sqrt(stream.pow(2).mean(-1, keepdim=True) + norm.eps)


def _head_outputs(attn, context: torch.Tensor) -> torch.Tensor:
    """``context (..., nh·hd)`` -> each head's output ``(..., nh, d)``: its slice of the
    context through its slice of ``out_proj`` (no bias), in the context's dtype."""
    return head_outputs(attn.out_proj.weight, context, attn.num_heads)


def head_outputs(out_weight: torch.Tensor, context: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``context (..., nh·hd)`` through ``out_weight (d, nh·hd)`` head by head:
    ``(..., nh, d)``, in the context's dtype."""
    hd = out_weight.shape[1] // n_heads
    w_o = out_weight.view(-1, n_heads, hd).to(context.dtype)  # (d, nh·hd) -> (d, nh, hd)
    return torch.einsum("...hk,dhk->...hd", context.view(*context.shape[:-1], n_heads, hd), w_o)


def decomposition(model, forward: _Forward, position: int, direction: torch.Tensor):
    """Direct logit attribution at ``position``: ``(dla (L, H), components)`` where
    components names the rest (``embeddings``, ``attn_bias.L``, ``mlp.L``,
    ``final_norm_bias``), each ``direction (d,) ·`` frozen-final-norm(component)."""
    norm, _ = model.output_head()
    final, final_bias = _frozen(norm, forward.final[position])
    dot = lambda v: final(v) @ direction  # noqa: E731 - (..., d) -> (...)
    components = {"embeddings": float(dot(forward.embedding[position]))}
    dla = np.zeros((model.n_layers, model.n_heads), dtype=np.float64)
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        heads = _head_outputs(attn, forward.contexts[layer][position])  # (nh, d)
        bias = attn.out_proj.bias
        if block.attn_out_norm is not None:  # a sandwich norm, frozen at the layer's output
            sandwich, sandwich_bias = _frozen(block.attn_out_norm,
                                              forward.records[layer]["attn_out"][0, position])
            heads = sandwich(heads)
            bias = (sandwich(bias) if bias is not None else 0) + (
                sandwich_bias if sandwich_bias is not None else 0)
            bias = None if isinstance(bias, int) else bias
        dla[layer] = dot(heads).double().numpy()
        if bias is not None:
            components[f"attn_bias.{layer}"] = float(dot(bias))
        components[f"mlp.{layer}"] = float(dot(forward.records[layer]["mlp_added"][0, position]))
    if final_bias is not None:
        components["final_norm_bias"] = float(final_bias @ direction)
    return dla, components


def _metric(model, stream: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``stream (..., d)`` at the position -> the metric ``(...)``, before a softcap."""
    norm, _ = model.output_head()
    return norm(stream) @ direction


def mean_contexts(model, prompts: list[list[int]]) -> list[torch.Tensor]:
    """Per layer, each head's context averaged over every position of ``prompts``:
    ``(nh·hd,)`` per layer — what a mean ablation puts in a head's place."""
    sums: list[torch.Tensor] | None = None
    count = 0
    for ids in prompts:
        forward = _Forward(model, ids)
        if sums is None:
            sums = [torch.zeros(c.shape[-1], dtype=torch.float64) for c in forward.contexts]
        for layer, context in enumerate(forward.contexts):
            sums[layer] += context.double().sum(0)
        count += len(ids)
    return [(s / count).float() for s in sums]


def ablation_effects(model, forward: _Forward, position: int, direction: torch.Tensor,
                     replacements: list[torch.Tensor] | None, clean: float,
                     progress=None) -> np.ndarray:
    """``(L, H)``: the metric with each head ablated, minus ``clean``. ``replacements``:
    per layer the ``(nh·hd,)`` context put in a head's place (None: zeros).
    ``progress(stage, done, total)`` hears of each batch of heads done."""
    n = position + 1
    nh, hd = model.n_heads, model.blocks[0].attn.head_dim
    d = forward.final.shape[-1]
    widest = max(d, model.spec.mlp_width, nh * hd, nh * n)
    rows_per_chunk = max(1, _CHUNK_BYTES // (4 * 4 * n * widest))
    effects = np.zeros((model.n_layers, nh), dtype=np.float64)
    with torch.inference_mode():
        for layer in range(model.n_layers):
            start = forward.inputs[layer][:, :n]  # (1, n, d)
            for first in range(0, nh, rows_per_chunk):
                heads = list(range(first, min(nh, first + rows_per_chunk)))
                x = start.expand(len(heads), n, d)
                fill = replacements[layer] if replacements is not None else None

                def edit(context, heads=heads, fill=fill):  # (b, n, nh·hd), row r: heads[r]
                    context = context.clone().view(len(heads), n, nh, hd)
                    for r, h in enumerate(heads):
                        context[r, :, h] = 0 if fill is None else fill.view(nh, hd)[h]
                    return context.view(len(heads), n, nh * hd)

                x, _, _ = model.blocks[layer](x, edit=edit)
                for block in model.blocks[layer + 1:]:
                    x, _, _ = block(x)
                metrics = _metric(model, x[:, position], direction)  # (rows,)
                effects[layer, first:first + len(heads)] = metrics.double().numpy() - clean
                if progress:
                    progress("Ablations", layer * nh + first + len(heads), model.n_layers * nh)
    return effects


def attribute(model, token_ids: list[int], *, position: int = -1, target: int | None = None,
              contrast: int | None = None, ablate: str = "zero",
              baseline: list[list[int]] | None = None, top_k: int = 10,
              progress=None) -> AttributionResult:
    """Rank every head of ``model`` (from ``analysis.load_model``) by what it does for the
    prediction after ``token_ids[position]`` (see the module docstring). ``target`` /
    ``contrast``: token ids (``target`` None: the top prediction). ``ablate``: ``zero`` or
    ``mean``; with ``mean``, ``baseline`` (token ids of prompts) gives the means, else the
    prompt itself does. ``progress(stage, done, total)``: see ``attnviz.files.progress``."""
    check_can_attribute(model)
    if ablate not in ABLATIONS:
        raise InputError(f"--ablate must be zero or mean, got {ablate!r}")
    position = check_position(position, len(token_ids))
    vocab = model.output_head()[1].shape[0]
    for option, token in (("--target", target), ("--contrast", contrast)):
        if token is not None and not 0 <= token < vocab:
            raise InputError(f"{option} token id {token} is outside the output head's "
                             f"{vocab} rows")
    with torch.inference_mode():
        forward = _Forward(model, token_ids, progress)
        norm, unembedding = model.output_head()
        logits = norm(forward.final[position]) @ unembedding.T  # (V,)
        softcap = model.spec.logit_softcap
        capped = torch.tanh(logits / softcap) * softcap if softcap is not None else logits
        probabilities = torch.softmax(capped.double(), -1)
        top = torch.topk(probabilities, min(top_k, vocab))
        predictions = [(int(i), float(p), float(capped[i])) for p, i in zip(*top)]
        if target is None:
            target = predictions[0][0]
        if contrast is not None and contrast == target:
            raise InputError("--contrast is the target token itself: the logit difference "
                             "would be 0; give another token")
        direction = unembedding[target] - (unembedding[contrast] if contrast is not None else 0)
        metric = float(logits[target] - (logits[contrast] if contrast is not None else 0))
        dla, components = decomposition(model, forward, position, direction)
        replacements = None
        if ablate == "mean":
            if baseline:
                replacements = mean_contexts(model, baseline)
            else:
                replacements = [c.double().mean(0).float() for c in forward.contexts]
        clean = float(_metric(model, forward.final[position], direction))
        ablation = ablation_effects(model, forward, position, direction, replacements, clean,
                                    progress)
        attention = np.stack([w[:, position, : position + 1].numpy() for w in forward.weights])
    return AttributionResult(
        token_ids=list(token_ids), position=position, target=target, contrast=contrast,
        metric=metric, predictions=predictions, dla=dla, ablation=ablation,
        attention=attention.astype(np.float32), components=components, ablate=ablate,
        baseline_prompts=len(baseline) if ablate == "mean" and baseline else 0,
        config={**model.describe(), "logit_softcap": softcap}, tokenizer=model.tokenizer,
    )


def token_info(tokenizer, token_id: int) -> dict:
    """``{"id", "text", "label"}`` of one token."""
    record = token_records([token_id], tokenizer.token_bytes([token_id]))[0]
    return {k: record[k] for k in ("id", "text", "label")}


def attribution_rows(result: AttributionResult) -> list[dict]:
    """One row per layer x head: ``dla``, ``ablation`` and ``key_<k>``, the head's weight
    on key k at the position (the CSV)."""
    rows = []
    for layer in range(result.n_layers):
        for head in range(result.n_heads):
            row = {"layer": layer, "head": head, "dla": float(result.dla[layer, head]),
                   "ablation": float(result.ablation[layer, head])}
            row.update({f"key_{k}": float(w) for k, w in enumerate(result.attention[layer, head])})
            rows.append(row)
    return rows


def token_labels(tokenizer, token_ids: list[int]) -> list[str]:
    """Display labels of ``token_ids`` (visible whitespace)."""
    return [token_label(raw) for raw in tokenizer.token_bytes(token_ids)]


def top_head_rows(result: AttributionResult, labels: list[str], measure: str, k: int) -> list[dict]:
    """The ``k`` heads with the largest ``|measure|``: rank, layer, head, dla, ablation and
    what the head looks at from the position (its heaviest key, labelled)."""
    rows = []
    for rank, (layer, head, _) in enumerate(result.top_heads(measure, k), start=1):
        weights = result.attention[layer, head]
        key = int(weights.argmax())
        rows.append({"rank": rank, "layer": layer, "head": head,
                     "dla": float(result.dla[layer, head]),
                     "ablation": float(result.ablation[layer, head]),
                     "looks at": f"{key}: {labels[key]} ({weights[key]:.2f})"})
    return rows


def describe_metric(result: AttributionResult, tokenizer) -> str:
    """``logit(␣Mary) - logit(␣John)``: the metric, for titles and tables."""
    target = token_info(tokenizer, result.target)["label"]
    if result.contrast is None:
        return f"logit({target})"
    return f"logit({target}) - logit({token_info(tokenizer, result.contrast)['label']})"


def attribution_document(result: AttributionResult, tokenizer) -> dict:
    """The JSON of `attribute` (schema: docs/attribution.md)."""
    tokens = token_records(result.token_ids, tokenizer.token_bytes(result.token_ids), 0,
                           tokenizer.bos_id is not None and result.token_ids[:1] == [tokenizer.bos_id])
    return {
        "position": result.position,
        "metric": {
            "kind": "logit" if result.contrast is None else "logit_difference",
            "target": token_info(tokenizer, result.target),
            "contrast": None if result.contrast is None else token_info(tokenizer, result.contrast),
            "value": result.metric,
        },
        "predictions": [{"rank": rank, **token_info(tokenizer, i), "probability": p, "logit": logit}
                        for rank, (i, p, logit) in enumerate(result.predictions, start=1)],
        "heads": [{"layer": layer, "head": head, "dla": float(result.dla[layer, head]),
                   "ablation": float(result.ablation[layer, head]),
                   "attention": result.attention[layer, head].tolist()}
                  for layer in range(result.n_layers) for head in range(result.n_heads)],
        "components": result.components,
        "decomposition_total": result.decomposition_total(),
        "ablate": result.ablate,
        "baseline_prompts": result.baseline_prompts,
        "tokens": tokens,
        "config": result.config,
    }


def report_data(result: AttributionResult, tokenizer) -> dict:
    """What the report's "heads that matter" view shows (docs/report.md): the metric, the
    predictions and the two ``(L, H)`` maps, for every layer of the model."""
    document = attribution_document(result, tokenizer)
    return {
        "position": result.position,
        "metric": document["metric"],
        "predictions": document["predictions"],
        "layers": list(range(result.n_layers)),
        "dla": result.dla.tolist(),
        "ablation": result.ablation.tolist(),
        "ablate": result.ablate,
        "decomposition_total": document["decomposition_total"],
    }
