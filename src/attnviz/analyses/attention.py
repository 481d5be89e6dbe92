"""Text + model options -> ``AttentionResult``: the Python API every command wraps.

>>> from attnviz.analyses.attention import analyze
>>> result = analyze("Your journey starts with one step")
>>> result.weights.shape            # (layers, heads, query_pos, key_pos)
(1, 12, 6, 6)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from attnviz.analyses.describe import one_line
from attnviz.core.config import ModelConfig
from attnviz.core.errors import AttnvizWarning, InputError
from attnviz.core.views import Displayable
from attnviz.core.words import counted
from attnviz.text import inputs
from attnviz.text.chat import chat_prompt
from attnviz.text.gpt2_bpe import token_label, token_text

_FLOAT32 = 4


class LazyArrays(Mapping):
    """A read-only mapping of arrays built by ``build()`` the first time it is read."""

    def __init__(self, build: Callable[[], dict[str, np.ndarray]]):
        self._build, self._arrays = build, None

    def _get(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = self._build()
        return self._arrays

    def __getitem__(self, key: str) -> np.ndarray:
        return self._get()[key]

    def __iter__(self):
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


@dataclass(repr=False)
class AttentionResult(Displayable):
    """Attention of one text, as numpy arrays; shown in a notebook as the interactive report
    (see ``attnviz.display.notebook``).

    ``weights``: ``(L, H, T, T)`` float32 for the ``L`` layers in ``layers`` —
    ``[layer, head, query_pos, key_pos]``. ``attn_inputs``: ``(L, T, d_model)``, what each
    attention layer received. ``params``: ``W_query``/``W_key``/``W_value`` as
    ``(L, d_out, d_in)`` and, with biases, ``b_query``/``b_key``/``b_value`` as ``(L, d_out)``.

    Three kinds of attention (``attention``): ``"decoder"`` — causal self-attention (every
    decoder-only model; the keys after each query are masked), ``"encoder"`` — bidirectional
    self-attention (every key seen, apart from those outside a window on either side), and
    ``"cross"`` — the queries' text attends to another text: ``key_token_ids`` and
    ``key_raw_tokens`` are that text's tokens and ``weights`` is ``(L, H, Tq, Tk)``
    (``Tq = n_tokens`` rows, ``Tk = n_keys`` columns; ``key_inputs`` ``(L, Tk, d_kv)`` what the
    keys and values were computed from). For self-attention they are None: the keys are
    the queries' own tokens. ``key_labels``, ``key_tokens()`` and ``n_keys`` read either.
    ``special_ids``: the ids of the tokenizer's special tokens ([CLS], [SEP], <s>): marked
    ``"special": true`` in ``tokens()``. ``pair_start``: a sentence pair (``--pair``): the
    absolute position of the second sentence's first token (None: one text).
    """

    token_ids: list[int]
    weights: np.ndarray
    layers: list[int]
    attn_inputs: np.ndarray
    params: Mapping[str, np.ndarray]
    config: dict
    raw_tokens: list[bytes] = field(repr=False, default_factory=list)
    scales: list[float] = field(default_factory=list)  # per layer: what Q·Kᵀ was multiplied by
    # (start, stop) when this is a window of the text (see ``crop``): positions are absolute
    window: tuple[int, int] | None = None
    # Per layer of ``layers``: the sliding window W (query i sees keys i-W+1 .. i, itself
    # included), or None for plain causal attention. Empty: None for every layer.
    windows: list[int | None] = field(default_factory=list)
    # Per head: the key/value head it reads (grouped-query attention: query head h reads
    # h // (n_heads / n_kv_heads)). Empty: every head has its own.
    kv_heads: list[int] = field(default_factory=list)
    bos: bool = False  # token 0 (of the whole text) is the BOS the tokenizer prepended
    # Per layer: the attention module that computed it (for steps' recomputation); not data.
    modules: list = field(default_factory=list, repr=False, compare=False)
    # A pooled map of a long text (``attnviz.analyses.longcontext``): each cell is a block of
    # ``block`` x ``block`` (query, key) pairs of a text of ``text_length`` tokens, holding
    # the block's largest (or mean) weight; token_ids/raw_tokens are the blocks' first.
    block: int = 1
    text_length: int = 0
    attention: str = "decoder"  # "decoder" (causal), "encoder" (bidirectional) or "cross"
    key_token_ids: list[int] | None = None  # cross: the other text's tokens (None: self)
    key_raw_tokens: list[bytes] | None = field(repr=False, default=None)
    key_inputs: np.ndarray | None = field(repr=False, default=None)  # cross: (L, Tk, d_kv)
    special_ids: frozenset = frozenset()
    pair_start: int | None = None  # absolute position of a pair's second sentence

    @property
    def causal(self) -> bool:
        """True for causal self-attention (the keys after each query masked)."""
        return self.attention == "decoder"

    @property
    def cross(self) -> bool:
        """True when the keys are another text's (``weights`` ``(L, H, Tq, Tk)``)."""
        return self.key_token_ids is not None

    @property
    def n_keys(self) -> int:
        """Columns of each head: the other text's tokens (cross), else ``n_tokens``."""
        return len(self.key_token_ids) if self.cross else self.n_tokens

    @property
    def key_labels(self) -> list[str]:
        """The columns' labels: the other text's tokens (cross), else ``token_labels``."""
        if not self.cross:
            return self.token_labels
        return [token_label(raw) for raw in self.key_raw_tokens]

    def key_tokens(self) -> list[dict] | None:
        """As ``tokens()`` for the other text of cross-attention (positions from 0); None
        for self-attention."""
        if not self.cross:
            return None
        return token_records(self.key_token_ids, self.key_raw_tokens,
                             special_ids=self.special_ids)

    @property
    def pair_boundary(self) -> int | None:
        """The row (and column) of a pair's second sentence in this result (a window's own
        coordinates), or None: one text, or the window does not hold both sentences."""
        if self.pair_start is None:
            return None
        first = self.window[0] if self.window else 0
        boundary = self.pair_start - first
        return boundary if 0 < boundary < self.n_tokens else None

    @property
    def length(self) -> int:
        """Tokens of the text shown: ``n_tokens``, or the pooled text's ``text_length``."""
        return self.text_length if self.block > 1 else self.n_tokens

    def layer_window(self, layer_index: int) -> int | None:
        """The sliding window of ``layers[layer_index]`` (None: plain causal)."""
        return self.windows[layer_index] if layer_index < len(self.windows) else None

    @property
    def grouped(self) -> bool:
        """True when heads share key/value heads (grouped-query attention)."""
        return bool(self.kv_heads) and len(set(self.kv_heads)) < len(self.kv_heads)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def n_heads(self) -> int:
        return self.weights.shape[1]

    @property
    def token_labels(self) -> list[str]:
        """Display labels; in a window each starts with its absolute position ("12: ␣store")."""
        if self.window is None:
            return [token_label(raw) for raw in self.raw_tokens]
        return [f"{self.window[0] + i}: {token_label(raw)}" for i, raw in enumerate(self.raw_tokens)]

    def tokens(self) -> list[dict]:
        """One record per token: position (absolute, also in a window), id, text, label
        (visible whitespace), bytes."""
        records = token_records(self.token_ids, self.raw_tokens,
                                self.window[0] if self.window else 0, self.bos,
                                special_ids=self.special_ids)
        if self.pair_start is not None:  # which sentence of the pair each token is in
            for record in records:
                record["sentence"] = int(record["position"] >= self.pair_start)
        return records

    def __repr__(self) -> str:
        window = f", tokens {self.window[0]}:{self.window[1]}" if self.window else ""
        return f"<attnviz attention of {one_line(self)}{window}>"

    def to_numpy(self) -> np.ndarray:
        """``weights``: ``(L, H, T, T)`` float32, ``[layer, head, query, key]``
        (``(L, H, Tq, Tk)`` for cross-attention)."""
        return self.weights

    def to_pandas(self):
        """One row per (layer, head, query, key) with ``key <= query`` (what the causal mask
        leaves; every pair for an encoder's or cross-attention): the positions, both
        tokens' labels and the weight. Needs pandas."""
        pd = import_pandas()
        n_layers, n_heads, n, n_keys = self.weights.shape
        if self.causal:
            queries, keys = np.tril_indices(n)
        else:
            queries, keys = (a.reshape(-1) for a in np.indices((n, n_keys)))
        first = self.window[0] if self.window else 0
        labels = np.array([token_label(raw) for raw in self.raw_tokens], dtype=object)
        key_labels = np.array(self.key_labels, dtype=object) if self.cross else labels
        count = len(queries)
        frame = {
            "layer": np.repeat(np.array(self.layers), n_heads * count),
            "head": np.tile(np.repeat(np.arange(n_heads), count), n_layers),
            "query": np.tile(queries + first, n_layers * n_heads),
            "key": np.tile(keys + (0 if self.cross else first), n_layers * n_heads),
            "query_token": np.tile(labels[queries], n_layers * n_heads),
            "key_token": np.tile(key_labels[keys], n_layers * n_heads),
            "weight": self.weights[:, :, queries, keys].reshape(-1),
        }
        if not self.causal:
            frame["attention"] = self.attention
        return pd.DataFrame(frame)

    def row_fields(self) -> dict:
        """What every JSON/CSV row of this result adds: ``{"attention": kind}`` for an
        encoder's or cross-attention, nothing for causal self-attention (a decoder-only
        model's rows are as they always were)."""
        return {} if self.causal else {"attention": self.attention}


def import_pandas():
    """pandas, imported when a result is turned into a DataFrame (an optional dependency)."""
    try:
        import pandas
    except ImportError:
        raise InputError("to_pandas() needs pandas: pip install pandas") from None
    return pandas


def token_records(token_ids: list[int], raw_tokens: list[bytes], first: int = 0,
                  bos: bool = False, special_ids: frozenset = frozenset()) -> list[dict]:
    """``bos``: position 0 is the beginning-of-sequence token the tokenizer added (marked
    ``"bos": true``; ``first`` must then be 0 for it to be shown). ``special_ids``: tokens
    with these ids are marked ``"special": true`` ([CLS], [SEP], <s>)."""
    records = [
        {
            "position": first + i,
            "id": tid,
            "text": token_text(raw),
            "label": token_label(raw),
            "bytes": len(raw),
        }
        for i, (tid, raw) in enumerate(zip(token_ids, raw_tokens))
    ]
    if bos and first == 0 and records:
        records[0]["bos"] = True
    for record in records:
        if record["id"] in special_ids:
            record["special"] = True
    return records


def token_arrays(records: list[dict], prefix: str = "") -> dict[str, np.ndarray]:
    """What ``export`` writes of one text's ``tokens()`` records: ``{prefix}token_ids``
    (int64), ``{prefix}tokens`` (their text) and ``{prefix}positions`` (int64, absolute)."""
    return {f"{prefix}token_ids": np.asarray([t["id"] for t in records], dtype=np.int64),
            f"{prefix}tokens": np.asarray([t["text"] for t in records], dtype=str),
            f"{prefix}positions": np.asarray([t["position"] for t in records], dtype=np.int64)}


def result_arrays(result: AttentionResult, single: bool = False) -> dict[str, np.ndarray]:
    """``export``'s arrays of a whole result: ``weights`` ``(L, H, Tq, Tk)`` (``(H, Tq, Tk)``
    when ``single``), ``layers``, the queries' ``token_ids``/``tokens``/``positions`` and,
    for cross-attention, the keys' as ``key_token_ids``/``key_tokens``/``key_positions``."""
    arrays = {"weights": result.weights[0] if single else result.weights,
              **token_arrays(result.tokens()),
              "layers": np.asarray(result.layers, dtype=np.int64)}
    if result.cross:
        arrays.update(token_arrays(result.key_tokens(), "key_"))
    return arrays


def check_window_syntax(spec: str) -> tuple[int | None, int | None]:
    """``--tokens A:B`` (Python slice syntax; either side may be left out) -> (A, B)."""
    parts = spec.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start, stop = (int(p) if p.strip() else None for p in parts)
    except ValueError:
        raise InputError(f"--tokens takes a window A:B in Python slice syntax (0:20, 5:, -20:, "
                         f":-1), got {spec!r}") from None
    return start, stop


def parse_window(spec: str | None, n_tokens: int) -> tuple[int, int] | None:
    """``--tokens A:B`` -> the absolute (start, stop) of queries and keys A..B-1 of a text
    of ``n_tokens`` tokens, like ``range(n_tokens)[A:B]`` (negatives count from the end);
    None for the whole text. An empty window is refused."""
    if spec is None:
        return None
    start, stop, _ = slice(*check_window_syntax(spec)).indices(n_tokens)
    if stop <= start:
        raise InputError(f"--tokens {spec} selects no tokens: the text has {n_tokens} "
                         f"(positions 0-{n_tokens - 1}; negative numbers count from the end)")
    return start, stop


def crop(result: AttentionResult, start: int, stop: int) -> AttentionResult:
    """Queries and keys ``start..stop-1`` of ``result``: the attention of the whole text,
    cut afterwards (not recomputed on the window). ``weights`` becomes ``(L, H, W, W)``;
    rows keep the weights the model gave, so when ``start > 0`` (or, without the causal
    mask, ``stop < T``) they sum to less than 1 (what went to the keys outside the window
    is not shown). Positions stay absolute. Cross-attention: only the queries are cut,
    ``(L, H, W, Tk)``: the keys are another text's."""
    first = result.window[0] if result.window else 0
    keys = slice(None) if result.cross else slice(start, stop)
    return replace(
        result,
        token_ids=result.token_ids[start:stop],
        weights=np.ascontiguousarray(result.weights[..., start:stop, keys]),
        attn_inputs=np.ascontiguousarray(result.attn_inputs[:, start:stop]),
        raw_tokens=result.raw_tokens[start:stop],
        window=(first + start, first + stop),
    )


def parse_layers(layer: str | int | list, n_layers: int) -> list[int]:
    """``"all"`` -> every layer; ``"5"``/``5`` -> ``[5]``; ``"3,5"`` or ``["3", "5"]``
    (a repeated ``--layer``) -> ``[3, 5]``; each checked against ``n_layers``."""
    if layer is None or layer == []:
        layer = 0
    parts = [p.strip() for item in (layer if isinstance(layer, (list, tuple)) else [layer])
             for p in str(item).split(",")]
    if any(p.lower() == "all" for p in parts):
        if len(parts) > 1:
            raise InputError(f"--layer all cannot be combined with other layers, got "
                             f"{','.join(parts)}")
        return list(range(n_layers))
    layers = []
    for part in parts:
        try:
            index = int(part)
        except ValueError:
            raise InputError(f"--layer must be a layer number, a list such as 3,5, or 'all'; "
                             f"got {part!r}") from None
        if not 0 <= index < n_layers:
            what = "random mode has one layer (0)" if n_layers == 1 else (
                f"the checkpoint has {n_layers} layers (0-{n_layers - 1})"
            )
            raise InputError(f"--layer {index} is out of range: {what}")
        if index in layers:
            raise InputError(f"--layer {index} is given twice")
        layers.append(index)
    return layers


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable), or 8 GiB when it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def check_fits(n_layers: int, n_heads: int, n_tokens: int, n_keys: int | None = None) -> None:
    """Refuse before computing when the weights could not fit in memory (``n_keys``: the
    columns of cross-attention; ``n_tokens`` by default)."""
    cells = n_tokens * (n_tokens if n_keys is None else n_keys)
    weights_bytes = n_layers * n_heads * cells * _FLOAT32
    # scores + softmax output + the numpy copy live at once for a layer, then the result
    needed = weights_bytes + 2 * n_heads * cells * _FLOAT32
    if needed > available_memory():
        raise InputError(
            f"{n_tokens} tokens x {n_heads} heads x {n_layers} layer(s) need about "
            f"{needed / 2**30:.1f} GiB for the attention weights, more than the "
            f"{available_memory() / 2**30:.1f} GiB available; use a shorter text or one --layer"
        )


def check_length(n_tokens: int, context_length: int, option: str) -> None:
    if n_tokens > context_length:
        raise InputError(
            f"the text is {n_tokens} tokens, longer than the context length {context_length}; "
            f"shorten it{option}"
        )


def analyze(
    text: str,
    config: ModelConfig | None = None,
    *,
    weights: str | None = None,
    layer: str | int = 0,
    allow_special: bool = False,
    heads: list[int] | None = None,
    tokens: str | None = None,
    progress=None,
    pair: str | None = None,
    cross: str | None = None,
) -> AttentionResult:
    """Tokenize ``text`` and return the attention weights of the chosen layer(s).

    Random mode (``weights=None``): seeded embeddings + one freshly initialised
    attention layer configured by ``config`` (GPT-2 small by default). Pretrained mode:
    ``weights`` is a GPT-2 checkpoint or Hub repo id (see ``attnviz.models``);
    ``config``'s sizes are ignored and ``layer`` picks a layer number, a list (``"3,5"``)
    or ``"all"``. ``heads``, when given, is checked against the model's head count before
    any heavy work. ``tokens="A:B"`` (``--tokens``): the whole text is computed, then
    queries and keys A..B-1 are kept (see ``crop``). ``progress(stage, done, total)``, when
    given, hears of each block read and run (see ``attnviz.files.progress``). ``pair``: a
    second sentence (an encoder model's sentence pair); ``cross``: a second text whose
    tokens are the keys (random mode's cross-attention; see ``encode_inputs``).
    """
    check_text(text)
    model = load_model(config, weights)
    options = config or ModelConfig()
    inputs = encode_inputs(model, text, allow_special, options.bos, options.chat, pair=pair,
                           cross=cross)
    window = parse_window(tokens, len(inputs["token_ids"]))
    result = analyze_with(model, layer=layer, heads=heads, progress=progress, **inputs)
    return crop(result, *window) if window else result


def encode_inputs(model, text: str, allow_special: bool = False, bos: bool = True,
                  chat: bool = False, *, pair: str | None = None,
                  cross: str | None = None) -> dict:
    """``text`` (and a second text) as ``analyze_with``'s inputs: ``{"token_ids": ...}``,
    plus for a sentence pair (``pair``: the second sentence, encoded with the first as the
    model's tokenizer encodes a pair) ``token_types`` (the segment of each token: BERT's
    ``token_type_ids``) and ``pair_start`` (the second sentence's first position), or for
    cross-attention (``cross``: the second text, random mode) its ``key_ids``."""
    if pair is not None:
        if model.attention_kind != "encoder" or not hasattr(
                model.tokenizer, "encode_pair"):
            raise InputError("--pair encodes a sentence pair for an encoder model (BERT, "
                             "RoBERTa, DistilBERT, ModernBERT); this model is a decoder: give "
                             "one text")
        check_text(text)
        if not pair:
            raise InputError("--pair is empty: give the second sentence")
        token_ids, token_types, pair_start = model.tokenizer.encode_pair(
            text, pair, allow_special=allow_special)
        check_ids(model, token_ids)
        if len(token_ids) > model.context_length:
            raise InputError(f"the text and --pair are {len(token_ids)} tokens together, more "
                             f"than the model's {model.context_length} positions; shorten them")
        return {"token_ids": token_ids, "token_types": token_types, "pair_start": pair_start}
    token_ids = encode_text(model, text, allow_special, bos, chat)
    if cross is None:
        return {"token_ids": token_ids}
    if not cross:
        raise InputError("--cross is empty: give the second text, whose tokens are the keys")
    if model.describe()["mode"] != "random":
        raise InputError("--cross is random mode's cross-attention module: drop --weights, or "
                         "--cross")
    key_ids = model.tokenizer.encode(cross, allow_special=allow_special, add_bos=bos)
    check_ids(model, key_ids)
    return {"token_ids": token_ids, "key_ids": key_ids}


def check_text(text: str) -> None:
    """Refuse a text that is empty or only whitespace (``text.inputs.check_text``)."""
    inputs.check_text(text)


def encode_text(model, text: str, allow_special: bool = False, bos: bool = True,
                chat: bool = False) -> list[int]:
    """``text`` in ``model``'s own token ids (its tokenizer: GPT-2's for GPT-2 and random
    mode), with the beginning-of-sequence token the tokenizer adds unless ``bos=False``;
    every id checked against the model's embedding table. ``chat``: the text as one user
    message of the tokenizer's chat template, encoded as transformers' ``apply_chat_template``
    encodes it (the template's special tokens read as such, nothing added around it)."""
    check_text(text)
    if chat:
        text, allow_special, bos = chat_prompt(model.tokenizer, text), True, False
    token_ids = model.tokenizer.encode(text, allow_special=allow_special, add_bos=bos)
    check_ids(model, token_ids)
    warn_unknown(model.tokenizer, text, token_ids)
    return token_ids


def warn_unknown(tokenizer, text: str, token_ids: list[int]) -> None:
    """One warning naming the words the model cannot represent (its unknown token)."""
    words = tokenizer.unknown_words(text, token_ids)
    if words:
        unk = token_text(tokenizer.token_bytes([tokenizer.unk_id])[0])
        shown = ", ".join(repr(w) for w in words[:8]) + (" …" if len(words) > 8 else "")
        warnings.warn(f"{counted(token_ids.count(tokenizer.unk_id), 'token')} of the text "
                      f"became the unknown token {unk}, which the model cannot tell apart: "
                      f"{shown}", AttnvizWarning, stacklevel=2)


def check_ids(model, token_ids: list[int]) -> None:
    """Refuse ids the embedding table has no row for (a tokenizer larger than the model's)."""
    rows = model.vocab_size
    if token_ids and max(token_ids) >= rows:
        bad = next(t for t in token_ids if t >= rows)
        raise InputError(f"token id {bad} is outside the model's embedding table ({rows} rows): "
                         "the tokenizer does not belong to this model (see --tokenizer)")


def load_model(config: ModelConfig | None = None, weights: str | None = None, *,
               seq2seq: bool = False):
    """The model behind every command: ``RandomModel`` or ``models.forward.Transformer`` (a
    checkpoint's header only; blocks are read when run). Both have ``n_layers``, ``n_heads``,
    ``context_length``, ``describe()``, ``attn_scale(layer)`` and
    ``run(token_ids (B, T), layers) -> [(attn_input (B, T, d), weights (B, H, T, T), module)]``.
    ``config.offline``/``progress`` steer a Hub download, ``config.device`` the forward pass.
    An encoder–decoder checkpoint (``models.seq2seq.EncoderDecoder``) is refused unless the
    caller shows its kinds of attention (``seq2seq=True``: ``analyses.seq2seq``)."""
    config = config or ModelConfig()
    device = resolve_device(config.device)
    if weights is None:
        from attnviz.models.random_model import RandomModel

        return RandomModel(config, device=device)
    from attnviz import models
    from attnviz.models.forward import Transformer

    # The head count a checkpoint may not record (a lone .safetensors, the book's .pth):
    # taken from --heads, or from a ModelConfig whose n_heads is not the default.
    given = "n_heads" in config.explicit or config.n_heads != ModelConfig().n_heads
    n_heads = config.n_heads if given else None
    ckpt = models.load(weights, n_heads=n_heads, offline=config.offline,
                       quiet=not config.progress, tokenizer=config.tokenizer,
                       book_config=config.book_config, preset=config.book_preset)
    if config.book_preset and not ckpt.layout.startswith("book-"):
        warnings.warn(f"--preset ignored: the checkpoint sets the model (a --preset such as "
                      f"{config.book_preset!r} names a config for the book's state dicts)",
                      AttnvizWarning, stacklevel=2)
    if getattr(ckpt.spec, "n_decoder_layers", None) is not None:
        from attnviz.models.seq2seq import EncoderDecoder

        model = EncoderDecoder(ckpt, device=device)
        if not seq2seq:
            check_not_seq2seq(model)
        return model
    return Transformer(ckpt, device=device)


def resolve_device(device: str) -> str:
    """``cpu``, ``cuda`` (refused when there is none) or ``auto`` (cuda when available)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here (use cpu or auto)")
    if device not in ("cpu", "cuda"):
        raise InputError(f"--device must be cpu, cuda or auto, got {device!r}")
    return device


def analyze_ids(
    token_ids: list[int],
    config: ModelConfig | None = None,
    *,
    weights: str | None = None,
    layer: str | int = 0,
    heads: list[int] | None = None,
    progress=None,
) -> AttentionResult:
    """``analyze`` for token ids that are already known."""
    if not token_ids:
        raise InputError("there are no tokens to analyse")
    model = load_model(config, weights)
    return analyze_with(model, token_ids, layer, heads, progress)


def checked_layers(model, n_tokens: int, layer: str | int | list,
                   heads: list[int] | None = None) -> list[int]:
    """The layers ``layer`` names, once ``model`` can run them on ``n_tokens`` tokens and
    ``heads`` (when given) exist."""
    layers = parse_layers(layer, model.n_layers)
    check_heads(heads, model.n_heads)
    hint = " or raise --context-length" if model.describe()["mode"] == "random" else (
        " (the checkpoint's n_positions)")
    check_length(n_tokens, model.context_length, hint)
    return layers


def check_not_seq2seq(model) -> None:
    """Refuse an encoder–decoder (T5, BART, Marian) where one stack of layers is read: the
    commands that show its three kinds of attention take it (analyses.seq2seq)."""
    if getattr(model, "is_seq2seq", False):
        raise InputError(f"--weights: {model.describe()['family']} is an encoder–decoder; this "
                         "command reads decoder-only models and encoders (encoder–decoders: "
                         "heatmap, compare-heads, export, report, steps, scan, why and generate "
                         "with --attention and --decoder-text; attnviz.analyze with "
                         "decoder_text=)")


def analyze_with(model, token_ids: list[int], layer: str | int = 0,
                 heads: list[int] | None = None, progress=None, *,
                 key_ids: list[int] | None = None, token_types: list[int] | None = None,
                 pair_start: int | None = None) -> AttentionResult:
    """Run ``model`` (from ``load_model``) on one text and collect the chosen layers.
    The weights are written by the forward pass straight into one ``(L, H, T, T)``
    float32 array: no per-layer tensors stacked and copied afterwards. ``key_ids``,
    ``token_types``, ``pair_start``: a second text (see ``encode_inputs``); with
    ``key_ids`` the weights are cross-attention's ``(L, H, T, Tk)``."""
    import torch

    layers = checked_layers(model, len(token_ids), layer, heads)
    n = len(token_ids)
    n_keys = n if key_ids is None else len(key_ids)
    if key_ids is not None:
        if not key_ids:
            raise InputError("--cross has no tokens: give a second text")
        check_length(n_keys, model.context_length, " (--cross's text; raise --context-length)")
    check_fits(len(layers), model.n_heads, n, n_keys)
    # (L, H, T, Tk); numpy backs a large array with transparent huge pages by itself
    weights = np.empty((len(layers), model.n_heads, n, n_keys), dtype=np.float32)
    second = {}
    if key_ids is not None:
        second["key_ids"] = torch.tensor([key_ids])
    if token_types is not None:
        second["token_types"] = torch.tensor([token_types])
    per_layer = model.run(torch.tensor([token_ids]), layers,
                          weights_out=torch.from_numpy(weights)[:, None],  # (L, 1, H, T, Tk)
                          progress=progress, **second)
    cross = key_ids is not None
    kind = "cross" if cross else model.attention_kind
    return AttentionResult(
        token_ids=token_ids,
        weights=weights,
        layers=layers,
        attn_inputs=_to_numpy([x[0] for x, _, _ in per_layer]),
        # copied out of the model only when read
        params=LazyArrays(lambda: stacked_params([attn for _, _, attn in per_layer])),
        config={**model.describe(), "layers": layers},
        raw_tokens=model.tokenizer.token_bytes(token_ids),
        scales=[model.attn_scale(i) for i in layers],
        windows=[model.window(i) for i in layers],
        kv_heads=list(model.kv_heads),
        bos=starts_with_bos(model, token_ids),
        modules=[attn for _, _, attn in per_layer],
        attention=kind,
        key_token_ids=list(key_ids) if cross else None,
        key_raw_tokens=model.tokenizer.token_bytes(key_ids) if cross else None,
        key_inputs=_to_numpy([model.embed_keys(key_ids)] * len(layers)) if cross else None,
        special_ids=special_ids(model, token_ids + (key_ids or [])) if kind != "decoder" else
        frozenset(),
        pair_start=pair_start,
    )


def special_ids(model, token_ids: list[int]) -> frozenset:
    """Which of ``token_ids`` the model's tokenizer calls special ([CLS], [SEP], <s>)."""
    return frozenset(t for t in set(token_ids) if model.tokenizer.is_special(t))


def check_causal(model, command: str,
                 instead: str = "use heatmap, compare-heads, export or steps") -> None:
    """Refuse an encoder (bidirectional attention) for a command made for causal decoders."""
    if model.attention_kind != "decoder":
        family = model.describe().get("family", "this model")
        raise InputError(f"{command} is made for causal self-attention, and {family} is an "
                         f"encoder (bidirectional): {instead}")


def starts_with_bos(model, token_ids: list[int]) -> bool:
    bos_id = model.tokenizer.bos_id
    return bos_id is not None and bool(token_ids) and token_ids[0] == bos_id


@dataclass
class LayerStream:
    """The attention weights of one text, one layer at a time: what ``analyze`` returns as
    ``weights``, for a caller that writes each layer out and never holds them all (export
    of every layer of a large model). ``shape`` is that of ``analyze``'s ``weights``,
    ``(L, H, T, T)``; iterating runs the model and yields each layer's ``(H, T, T)``
    float32 array in ``layers`` order, cut to ``window`` (see ``crop``)."""

    model: object
    all_token_ids: list[int]  # the whole text: the window is cut after the forward pass
    layers: list[int]
    window: tuple[int, int] | None = None
    progress: Callable | None = None

    @property
    def token_ids(self) -> list[int]:
        return self.all_token_ids[slice(*self.window)] if self.window else self.all_token_ids

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n = len(self.token_ids)
        return len(self.layers), self.model.n_heads, n, n

    def tokens(self) -> list[dict]:
        """As ``AttentionResult.tokens``: absolute positions in a window."""
        ids = self.token_ids
        return token_records(ids, self.model.tokenizer.token_bytes(ids),
                             self.window[0] if self.window else 0,
                             starts_with_bos(self.model, self.all_token_ids))

    def param_names(self) -> list[str]:
        """The names ``params()`` will have (``AttentionResult.params``'s)."""
        biased = self.model.describe()["qkv_bias"]
        return [f"{kind}_{name}" for name in ("query", "key", "value")
                for kind in ("W", "b")[: 1 + biased]]

    def __iter__(self):
        for weights, _, _ in self.with_inputs():
            yield weights  # (H, T, T)

    def with_inputs(self):
        """Iterate as ``__iter__`` does, yielding ``(weights (H, T, T), attn_input (T, d),
        module)`` for each layer: what the layer received and the attention module that
        computed it, cut to the window as the weights are."""
        import torch

        cut = slice(*self.window) if self.window else slice(None)
        waiting, next_k = {}, 0  # layers computed before the one due next (--layer 5,3)
        self._inputs, self._modules, self._params = {}, {}, None  # gathered on the way
        ids = torch.tensor([self.all_token_ids])
        for k, attn_input, weights, module in self.model.iter_run(ids, self.layers,
                                                                   progress=self.progress):
            waiting[k] = np.ascontiguousarray(weights[0, :, cut, cut].float().cpu().numpy())
            self._inputs[k], self._modules[k] = attn_input[0, cut], module  # (T, d), small
            while next_k in waiting:
                yield waiting.pop(next_k), self._inputs[next_k], self._modules[next_k]
                next_k += 1

    def attn_inputs(self) -> np.ndarray:
        """``(L, T, d_model)`` as ``AttentionResult.attn_inputs``, once iterated."""
        return _to_numpy([self._inputs[k] for k in range(len(self.layers))])

    def params(self) -> dict[str, np.ndarray]:
        """As ``AttentionResult.params``, once iterated."""
        if self._params is None:
            self._params = stacked_params([self._modules[k] for k in range(len(self.layers))])
        return self._params


def analyze_layers(
    text: str,
    config: ModelConfig | None = None,
    *,
    weights: str | None = None,
    layer: str | int = 0,
    allow_special: bool = False,
    tokens: str | None = None,
    progress=None,
) -> LayerStream:
    """``analyze``'s weights as a ``LayerStream``: the same checks now, the forward pass
    when it is iterated, one layer in memory at a time."""
    check_text(text)
    model = load_model(config, weights)
    token_ids = encode_text(model, text, allow_special, bos=(config or ModelConfig()).bos,
                            chat=(config or ModelConfig()).chat)
    return layer_stream(model, token_ids, layer, tokens, progress)


def layer_stream(model, token_ids: list[int], layer: str | int = 0, tokens: str | None = None,
                 progress=None) -> LayerStream:
    """``analyze_layers`` for the token ids of a model already read (``load_model``)."""
    window = parse_window(tokens, len(token_ids))
    layers = checked_layers(model, len(token_ids), layer)
    check_fits(1, model.n_heads, len(token_ids))  # one layer at a time
    return LayerStream(model, token_ids, layers, window, progress)


def check_heads(heads: list[int] | None, n_heads: int) -> None:
    for h in heads or []:
        if not 0 <= h < n_heads:
            raise InputError(f"--head {h} is out of range: the model has {n_heads} heads "
                             f"(0-{n_heads - 1})")


def stacked_params(modules) -> dict[str, np.ndarray]:
    """``W_query``/``W_key``/``W_value`` (and ``b_*``) of each attention module, stacked:
    ``(L, d_out, d_in)`` and ``(L, d_out)``."""
    from attnviz.models.random_model import projections_of

    params: dict[str, list] = {}
    for attn in modules:
        for name, value in projections_of(attn).items():
            params.setdefault(name, []).append(value)
    return {k: _to_numpy(v) for k, v in params.items()}


def _to_numpy(tensors) -> np.ndarray:
    return np.stack([t.detach().cpu().numpy() for t in tensors]).astype(np.float32, copy=False)
