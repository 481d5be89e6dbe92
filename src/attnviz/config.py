"""Model configuration: GPT-2 small defaults, validated once, here."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from attnviz.errors import InputError

GPT2_VOCAB_SIZE = 50257
IMPLEMENTATIONS = ("fused", "wrapper")
# How each size is spelled on the command line, for error messages.
_SIZE_FLAGS = {
    "n_heads": "--heads",
    "d_model": "--d-model",
    "context_length": "--context-length",
    "n_layers": "n_layers",
}


@dataclass(frozen=True)
class ModelConfig:
    """What the attention module looks like and how its random weights are drawn.

    The defaults are GPT-2 small's attention: 12 heads over d_model 768 (head_dim 64),
    a 1024-token context. ``impl`` picks ``MultiHeadAttention`` ("fused") or
    ``MultiHeadAttentionWrapper`` ("wrapper"); both give the same numbers.
    """

    n_heads: int = 12
    d_model: int = 768
    context_length: int = 1024
    seed: int = 123
    qkv_bias: bool = False
    impl: str = "fused"
    n_layers: int = 1  # random mode has one attention layer; checkpoints set their own

    def __post_init__(self) -> None:
        for name, flag in _SIZE_FLAGS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{flag} must be a positive integer, got {value}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise InputError(f"--seed must be an integer from 0 to 2**63 - 1, got {self.seed}")
        if self.d_model % self.n_heads != 0:
            raise InputError(
                f"--heads {self.n_heads} does not divide --d-model {self.d_model}: "
                f"each head gets d_model / heads dimensions (try --heads "
                f"{_nearest_divisor(self.d_model, self.n_heads)})"
            )
        if self.impl not in IMPLEMENTATIONS:
            raise InputError(f"--impl must be one of {', '.join(IMPLEMENTATIONS)}, got {self.impl!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def as_dict(self) -> dict:
        return {**asdict(self), "head_dim": self.head_dim}


def _nearest_divisor(n: int, near: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - near), d))
