"""Model configuration: GPT-2 small defaults, validated once, here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from attnviz.core.errors import InputError

GPT2_VOCAB_SIZE = 50257
IMPLEMENTATIONS = ("fused", "wrapper")
# Random-mode sizes of the GPT-2 family: (heads, d_model, context_length).
PRESETS = {
    "gpt2": (12, 768, 1024),
    "gpt2-medium": (16, 1024, 1024),
    "gpt2-large": (20, 1280, 1024),
    "gpt2-xl": (25, 1600, 1024),
}
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
    preset: str | None = None  # the --preset the sizes came from, if any
    # Random mode's other kinds of attention: --bidirectional (self-attention without the
    # causal mask) and --cross-d-in (the width of --cross's second input; None: d_model).
    bidirectional: bool = False
    cross_d_in: int | None = None
    # The options the user gave explicitly (field names): they win over a preset, and
    # --heads sets the head count of checkpoints that do not record it.
    explicit: frozenset = field(default=frozenset(), compare=False, repr=False)
    # How to get and run the model, not what it is: Hub downloads (--offline, progress
    # bars) and the device of the forward pass.
    offline: bool = field(default=False, compare=False, repr=False)
    progress: bool = field(default=False, compare=False, repr=False)
    device: str = field(default="cpu", compare=False, repr=False)
    # --tokenizer: a tokenizer.json / tokenizer.model for a checkpoint that has none;
    # --no-bos: do not prepend the beginning-of-sequence token the tokenizer adds.
    tokenizer: str | None = field(default=None, compare=False, repr=False)
    bos: bool = field(default=True, compare=False, repr=False)
    # --chat: the text is one user message in the model's chat template.
    chat: bool = field(default=False, compare=False, repr=False)
    # What a state dict of the book's Llama3Model / Qwen3Model / Gemma3Model does not record:
    # --book-config cfg.json, or --preset naming one of the book's published configs.
    book_config: str | None = field(default=None, compare=False, repr=False)
    book_preset: str | None = field(default=None, compare=False, repr=False)

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
        if self.cross_d_in is not None and (not isinstance(self.cross_d_in, int)
                                            or self.cross_d_in < 1):
            raise InputError(f"--cross-d-in must be a positive integer, got {self.cross_d_in}")
        if self.impl not in IMPLEMENTATIONS:
            raise InputError(f"--impl must be one of {', '.join(IMPLEMENTATIONS)}, got {self.impl!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def as_dict(self) -> dict:
        described = {**asdict(self), "head_dim": self.head_dim}
        for run_option in ("explicit", "offline", "progress", "device", "tokenizer", "bos",
                           "chat", "book_config", "book_preset"):
            del described[run_option]
        if self.preset is None:
            del described["preset"]
        for kind, default in (("bidirectional", False), ("cross_d_in", None)):
            if described[kind] == default:  # what it always was: causal self-attention
                del described[kind]
        return described

    @classmethod
    def from_options(cls, preset: str | None = None, explicit: frozenset = frozenset(),
                     **sizes) -> ModelConfig:
        """A config from command-line values: ``preset`` sets heads, d_model and context
        length, except those in ``explicit`` (options the user typed)."""
        if preset is not None:
            if preset not in PRESETS:
                raise InputError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
            for name, value in zip(("n_heads", "d_model", "context_length"), PRESETS[preset]):
                if name not in explicit:
                    sizes[name] = value
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in sizes.items() if k in known}, preset=preset,
                   explicit=frozenset(explicit))


def _nearest_divisor(n: int, near: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - near), d))


def config_for(weights, *, heads: int = 12, d_model: int = 768, context_length: int = 1024,
               seed: int = 123, qkv_bias: bool = False, impl: str = "fused",
               preset: str | None = None, offline: bool = False, progress: bool = True,
               device: str = "cpu", tokenizer=None, bos: bool = True, chat: bool = False,
               book_config=None,
               explicit: frozenset = frozenset()) -> ModelConfig:
    """The ``ModelConfig`` of the model options every command (and ``attnviz.load``)
    takes, spelled as on the command line; ``explicit``: the option names the user gave.
    With ``weights`` the checkpoint sets the model: ``preset`` then names one of the book's
    configs (``book_preset``) and only ``heads`` (for files that do not record the head
    count) is kept of the sizes."""
    book_preset = None
    if weights:
        # The ignored random-mode sizes are not checked either (a warning must not call an
        # option ignored and then fail on it), and --heads alone is not checked against
        # the random-mode --d-model.
        book_preset, preset = preset, None
        d_model, context_length = heads * 64, 1024
        explicit = frozenset(explicit) - {"d_model", "context_length", "preset"}
    for name, value in (("tokenizer", tokenizer), ("book_config", book_config),
                        ("chat", chat or None)):
        if value is not None and not weights:
            raise InputError(f"--{name.replace('_', '-')} goes with --weights: random mode "
                             "reads GPT-2's tokens and sizes")
    config = ModelConfig.from_options(
        preset=preset,
        explicit=frozenset({"heads": "n_heads"}.get(n, n) for n in explicit),
        n_heads=heads, d_model=d_model, context_length=context_length, seed=seed,
        qkv_bias=qkv_bias, impl=impl, offline=offline, progress=progress, device=device)

    return replace(config, bos=bos, chat=chat, tokenizer=None if tokenizer is None else str(tokenizer),
                   book_config=None if book_config is None else str(book_config),
                   book_preset=book_preset)
