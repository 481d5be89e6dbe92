"""Models, layers and results in one line, as every command and view names them."""

from __future__ import annotations

from pathlib import Path

from attnviz.core.words import counted


def layer_text(layers: list[int]) -> str:
    """``layer 3``, ``layers 0-11`` or ``layers 0,4,7``."""
    if len(layers) == 1:
        return f"layer {layers[0]}"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}-{layers[-1]}"
    return "layers " + ",".join(map(str, layers))


def model_name(described: dict) -> str:
    """``gpt2-tiny · 3 layers × 4 heads, d_model 64`` or ``random · 12 heads, d_model 768,
    seed 123``: a model in one line."""
    sizes = f"{counted(described.get('n_heads'), 'head')}, d_model {described.get('d_model')}"
    if described.get("mode") == "random":
        return f"random · {sizes}, seed {described.get('seed')}"
    weights = Path(described.get("weights", "?"))
    cached = [part for part in weights.parts if part.startswith("models--")]  # the Hub cache
    name = (described.get("repo") or (cached[-1][len("models--"):].replace("--", "/") if cached
                                      else weights.parent.name if weights.suffix else weights.name))
    if described.get("revision"):
        name += f"@{described['revision']}"
    return f"{name} · {counted(described.get('n_layers'), 'layer')} × {sizes}"


def one_line(result) -> str:
    """An ``AttentionResult`` in one line: tokens, layers, heads and the model."""
    return (f"{counted(result.n_tokens, 'token')}, {layer_text(result.layers)}, "
            f"{counted(result.n_heads, 'head')} · "
            f"{model_name(result.config)}")
