"""What every head does over many prompts: statistics and detector scores per prompt,
aggregated to mean, standard deviation and count per (layer, head).

>>> from attnviz.analyses.attention import load_model
>>> from attnviz.core.config import ModelConfig
>>> model = load_model(ModelConfig(n_heads=4, d_model=32))
>>> corpus = tokenize_corpus([(1, "a b a b"), (2, "The cat sat on the mat")], 1024)
>>> result = scan(model, corpus.prompts, [0])
>>> result.mean["induction_head"].shape  # (layers, heads)
(1, 4)
>>> int(result.count["entropy"][0, 0])
2

Prompts are run in batches: sorted by length, right-padded to the longest prompt of the
batch and cropped back. Right-padding is exact for causal attention (no position attends
to the padding after it), and for an encoder, whose queries see every key, the padding
keys are hidden (``models.engine.attend``'s key mask): a prompt's numbers do not depend on
its batch. An encoder's rows are scored as ``stats.head_stats`` scores ``"encoder"`` rows
(docs/heads.md); an encoder–decoder's three kinds: ``analyses.scan_seq2seq``. Memory is
bounded by one batch: per-prompt values are folded into running float64 sums (Chan's
parallel form of Welford's algorithm) and dropped.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attnviz.analyses.attention import check_fits, encode_text, import_pandas
from attnviz.analyses.describe import layer_text
from attnviz.analyses.detectors import DETECTORS
from attnviz.analyses.induction import induction_probe
from attnviz.analyses.longcontext import Detect, analyze_long, head_stats
from attnviz.analyses.stats import COLUMNS as STAT_COLUMNS
from attnviz.core.errors import InputError
from attnviz.core.views import Displayable
from attnviz.text.gpt2_bpe import encode as gpt2_encode
from attnviz.text.inputs import decode_utf8, read_file_bytes, stdin_bytes, strip_bom

COLUMNS = (*STAT_COLUMNS, *DETECTORS)  # every per-prompt, per-head value
TOP_COLUMNS = (*DETECTORS, "first_token")  # the detectors the table ranks heads by
CROSS_TOP = ("first_token", "max_weight")  # cross-attention has no detector (two texts)


def top_columns(attention: str | None) -> tuple[str, ...]:
    """What the table ranks the heads of one kind of attention by."""
    return CROSS_TOP if attention == "cross" else TOP_COLUMNS
PAD_ID = 0  # any id the embedding has works: causal attention never looks right
DEFAULT_BATCH_SIZE = 16
LONG_PROMPT = 1024  # a longer prompt is scored alone, a tile at a time (never its T x T)
WEIGHTS_BUDGET = 256 * 2**20  # bytes of float32 weights one batch may hold (all layers)
SLICE = 256  # prompts: batches stay within a slice; shards are made of whole slices


@dataclass
class Prompt:
    index: int  # 0-based position among the prompts kept
    line: int  # 1-based line of the file / stdin, or argument number
    token_ids: list[int]
    truncated: bool = False
    target_ids: list[int] | None = None  # an encoder–decoder's: what its decoder reads


# ---------------------------------------------------------------------------- input


def split_lines(data: bytes, source: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of UTF-8 ``data`` (a byte order mark dropped); only ``\\n``
    (and ``\\r\\n``) end a line, so a U+2028 inside a prompt stays in it."""
    text = strip_bom(decode_utf8(data, source))
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.removesuffix("\r")


def jsonl_texts(lines: Iterable[tuple[int, str]], source: str,
                targets: bool = False) -> Iterator[tuple]:
    """The ``"text"`` field of every JSON Lines record (blank lines skipped); with
    ``targets``, ``(number, text, target)``: the record's ``"target"`` string or None."""
    for number, line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{source} line {number}: not valid JSON ({exc.msg}); JSON Lines "
                             "needs one object per line") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise InputError(f'{source} line {number}: no "text" string in the record (JSON '
                             'Lines prompts look like {"text": "..."})')
        if not targets:
            yield number, text
            continue
        target = record.get("target")
        if target is not None and not (isinstance(target, str) and target.strip()):
            raise InputError(f'{source} line {number}: "target" must be a non-empty string (what '
                             "an encoder–decoder's decoder reads), or left out")
        yield number, text, target


def read_corpus(prompts: list[str] | None, file: Path | None, jsonl: bool = False,
                limit: int | None = None, option: str = "--file",
                targets: bool = False) -> tuple[list[tuple], str]:
    """``(records, where)``: ``(line number, text)`` of every non-empty prompt, and how
    to name a line in a message (``"--file p.txt line"``). From ``prompts`` (arguments, or
    ``["-"]`` for standard input) or ``file`` (one prompt a line; JSON Lines with a
    ``"text"`` field when ``jsonl`` or the name ends in ``.jsonl``), the first ``limit``.
    ``option``: how messages name the file's option. ``targets``: JSON Lines records also
    give their ``"target"`` (``(line, text, target or None)``; see ``jsonl_texts``)."""
    prompts = prompts or []
    if file is not None and prompts:
        raise InputError("give prompts as arguments, '-' for standard input, or --file; not both")
    if "-" in prompts and len(prompts) > 1:
        raise InputError("'-' reads the prompts from standard input; give no other prompts with it")
    if file is not None and str(file) == "-":
        data, source = stdin_bytes("the prompts"), "standard input"
    elif file is not None:
        data = read_file_bytes(file, option)
        source, jsonl = f"{option} {file}", jsonl or file.suffix.lower() == ".jsonl"
    elif prompts == ["-"]:
        data, source = stdin_bytes("the prompts"), "standard input"
    elif prompts:
        if jsonl:
            raise InputError("--jsonl applies to --file or '-' (standard input), not to arguments")
        records = [(i, text) for i, text in enumerate(prompts, start=1) if text.strip()]
        return _non_empty(records[:limit], "the arguments"), "argument"
    else:
        raise InputError("no prompts given: attnviz scan \"a prompt\" \"another\", '-' for "
                         "standard input (one prompt a line), or --file PATH")
    lines = split_lines(data, source)
    records = jsonl_texts(lines, source, targets) if jsonl else lines
    kept = []
    for record in records:
        if limit is not None and len(kept) >= limit:
            break
        if record[1].strip():
            kept.append(record)
    return _non_empty(kept, source), f"{source} line"


def _non_empty(records: list, source: str) -> list:
    if not records:
        raise InputError(f"{source} holds no prompts (empty lines are skipped)")
    return records


@dataclass
class Corpus:
    prompts: list[Prompt]
    truncated: int = 0  # prompts cut to the context length (--truncate)
    one_token: int = 0  # prompts skipped: one token has no previous token to score

    @property
    def n_tokens(self) -> int:
        return sum(len(p.token_ids) for p in self.prompts)


def tokenize_corpus(records: list[tuple[int, str]], context_length: int, *,
                    truncate: bool = False, allow_special: bool = False,
                    where: str = "line", encode: Callable[[str], list[int]] | None = None) -> Corpus:
    """Token ids of every record, by ``encode`` (a model's tokenizer, see
    ``analysis.encode_text``; default GPT-2's, ``allow_special`` as given). A prompt longer
    than the context is refused with its line number, or cut to the first
    ``context_length`` tokens with ``truncate``; one-token prompts are skipped (the
    detectors need a previous token)."""
    if encode is None:
        def encode(text: str) -> list[int]:
            return gpt2_encode(text, allow_special=allow_special)
    prompts, truncated, one_token = [], 0, 0
    for number, text, *_ in records:  # a JSON Lines target is an encoder–decoder's
        token_ids = encode(text)
        cut = len(token_ids) > context_length
        if cut and not truncate:
            raise InputError(f"{where} {number}: the prompt is {len(token_ids)} tokens, "
                             f"longer than the context length {context_length}; shorten it "
                             "or pass --truncate")
        if len(token_ids) < 2:
            one_token += 1
            continue
        truncated += cut
        prompts.append(Prompt(len(prompts), number, token_ids[:context_length], cut))
    if not prompts:
        raise InputError("no prompt has two tokens or more; every detector needs a previous "
                         "token")
    return Corpus(prompts, truncated, one_token)


def model_corpus(model, records: list[tuple[int, str]], *, truncate: bool = False,
                 allow_special: bool = False, bos: bool = True, chat: bool = False,
                 where: str = "line") -> Corpus:
    """``tokenize_corpus`` in ``model``'s own tokens: its tokenizer (``bos``: with the BOS it
    adds; ``chat``: each prompt a user message of its chat template) and its context length."""
    return tokenize_corpus(records, model.context_length, truncate=truncate, where=where,
                           encode=lambda text: encode_text(model, text, allow_special, bos=bos,
                                                           chat=chat))


# ---------------------------------------------------------------------------- batches


def plan_batches(prompts: Iterable[Prompt], batch_size: int, n_layers: int,
                 n_heads: int) -> list[list[Prompt]]:
    """Up to ``batch_size`` prompts a batch and at most ``WEIGHTS_BUDGET`` bytes of weights,
    within each slice of ``SLICE`` prompts (by index; longest first in a slice, so a batch
    too big for memory shows early). A batch never spans two slices: a shard (whole slices)
    or a resumed run (whole batches done) is batched as the whole scan is, so every prompt
    gets the very numbers it gets there."""
    slices: dict[int, list[Prompt]] = {}
    for prompt in prompts:
        slices.setdefault(prompt.index // SLICE, []).append(prompt)
    return [batch for key in sorted(slices)
            for batch in _greedy_batches(slices[key], batch_size, n_layers, n_heads)]


def _greedy_batches(prompts: list[Prompt], batch_size: int, n_layers: int,
                    n_heads: int) -> list[list[Prompt]]:
    ordered = sorted(prompts, key=lambda p: len(p.token_ids), reverse=True)
    batches: list[list[Prompt]] = []
    for prompt in ordered:
        if batches:
            batch = batches[-1]
            longest = len(batch[0].token_ids)
            size = (len(batch) + 1) * n_layers * n_heads * longest**2 * 4
            if len(batch) < batch_size and size <= WEIGHTS_BUDGET:
                batch.append(prompt)
                continue
        batches.append([prompt])
    return batches


def padded_ids(batch: list[Prompt]):
    """``(token_ids (B, T) long, lengths (B,) long)``, right-padded with ``PAD_ID``."""
    return padded([p.token_ids for p in batch])


def padded(sequences: list[list[int]]):
    """``padded_ids`` of plain id lists (an encoder–decoder's targets, too)."""
    import torch

    lengths = torch.tensor([len(ids) for ids in sequences])
    out = torch.full((len(sequences), int(lengths.max())), PAD_ID, dtype=torch.long)
    for b, ids in enumerate(sequences):
        out[b, : len(ids)] = torch.tensor(ids)
    return out, lengths


def batch_patterns(token_ids, lengths, *, exclude_first: bool = False,
                   exclude_self: bool = False):
    """``(B, T*T, 4)`` float64: for each prompt of a right-padded batch, the cells a
    TransformerLens "mul" score sums, flattened — the kept cells (real query rows, minus
    the excluded key 0 / diagonal), and the previous-token, duplicate-token and induction
    patterns restricted to them. The same for every layer of the batch."""
    import torch

    n_batch, n = token_ids.shape
    pos = torch.arange(n, device=token_ids.device)
    kept = (pos[None, :] < lengths[:, None])[:, :, None].expand(n_batch, n, n).clone()
    if exclude_first:
        kept[:, :, 0] = False
    if exclude_self:
        kept &= ~torch.eye(n, dtype=torch.bool, device=token_ids.device)
    duplicate = (token_ids[:, :, None] == token_ids[:, None, :]).tril(-1)  # j < i, same token
    induction = torch.zeros_like(duplicate)
    induction[..., 1:] = duplicate[..., :-1]  # one key to the right
    previous = pos[:, None] - pos[None, :] == 1  # (T, T): j = i - 1
    patterns = torch.stack([kept, kept & previous, kept & duplicate, kept & induction], dim=-1)
    return patterns.to(torch.float64).view(n_batch, n * n, 4)


def batch_scores(weights, lengths, patterns, attention: str = "decoder",
                 key_lengths=None) -> dict:
    """Every value of ``COLUMNS`` for a right-padded batch, all heads at once.

    ``weights (B, H, T, T)``, ``lengths (B,)``: prompt ``b`` is ``weights[b, :, :t, :t]``
    with ``t = lengths[b]``, and every weight on a padding key is 0 (the causal mask, or an
    encoder's key mask); ``patterns`` from ``batch_patterns``. Returns name -> ``(B, H)``
    float64 tensor; the definitions are ``stats.head_stats``'s for ``attention``
    (``"decoder"``, ``"encoder"``: normalised by every key) and ``detectors``'s, computed
    on the cropped matrices. ``"cross"``: see ``cross_scores``.
    """
    import torch

    if attention == "cross":
        return cross_scores(weights, lengths, key_lengths)
    a = weights.to(torch.float64).contiguous()  # (B, H, T, T)
    n_batch, n_heads, n, _ = a.shape
    pos = torch.arange(n, device=a.device, dtype=torch.float64)
    lengths = lengths.to(a.device)
    rows = (pos[None, :] < lengths[:, None]).to(torch.float64)  # (B, T): query i is real
    rows1 = rows[:, 1:]  # real queries i >= 1
    t = lengths.to(torch.float64)[:, None]  # (B, 1)

    def mean_rows(values, mask, count):  # (B, H, R) -> (B, H): mean over the real rows
        return (values * mask[:, None, :]).sum(-1) / count

    # Row reductions, each (B, H, T). A padded key j >= t has weight 0 in every real row
    # (causal or key mask), so a real row's sum over all T keys is its sum over the cropped row.
    row_entropy = -torch.special.xlogy(a, a).sum(-1)
    moments = (a.view(-1, n) @ torch.stack([torch.ones_like(pos), pos], dim=1)).view(
        n_batch, n_heads, n, 2)  # sum_j A_ij, sum_j j A_ij
    if attention == "decoder":  # H_i / ln(i + 1): the keys row i could see
        normalized = mean_rows(row_entropy[..., 1:] / torch.log(pos[1:] + 1.0), rows1, t - 1)
    else:  # an encoder's row sees all t keys: H_i / ln t
        normalized = mean_rows(row_entropy[..., 1:], rows1, t - 1) / torch.log(t)
    out = {
        "entropy": mean_rows(row_entropy, rows, t),
        "normalized_entropy": normalized,
        "max_weight": mean_rows(a.amax(-1), rows, t),
        "self": mean_rows(a.diagonal(dim1=-2, dim2=-1), rows, t),
        "previous_token": mean_rows(a.diagonal(offset=-1, dim1=-2, dim2=-1), rows1, t - 1),
        "first_token": mean_rows(a[..., 1:, 0], rows1, t - 1),
        "mean_distance": mean_rows(pos * moments[..., 0] - moments[..., 1], rows, t),
    }
    # TransformerLens "mul": sum(A' * D) / sum(A'), A' = A without the excluded cells, so
    # sum(A' * D) = sum(A * (D and kept)): the four sums in one batched product.
    sums = torch.bmm(a.view(n_batch, n_heads, n * n), patterns.to(a.device))  # (B, H, 4)
    for k, name in enumerate(DETECTORS, start=1):
        out[name] = sums[..., k] / sums[..., 0]
    return out


def cross_scores(weights, lengths, key_lengths) -> dict:
    """``batch_scores`` of cross-attention ``weights (B, H, Tq, Tk)``: query rows
    ``:lengths[b]``, keys ``:key_lengths[b]`` (the padding keys weigh 0). As
    ``stats.head_stats``'s ``"cross"``: entropy, ``normalized_entropy`` (H_i / ln Tk),
    ``max_weight`` and ``first_token`` (weight on the other text's first token) are means
    over every query row; ``self``, ``previous_token``, ``mean_distance`` and the
    detectors would compare positions of two texts: NaN."""
    import torch

    a = weights.to(torch.float64)  # (B, H, Tq, Tk)
    n_batch, n_heads, n, _ = a.shape
    pos = torch.arange(n, device=a.device)
    rows = (pos[None, :] < lengths.to(a.device)[:, None]).to(torch.float64)[:, None, :]  # (B, 1, Tq)
    t = lengths.to(a.device, torch.float64)[:, None]  # (B, 1)
    n_keys = key_lengths.to(a.device, torch.float64)[:, None]  # (B, 1)

    def mean_rows(values):  # (B, H, Tq) -> (B, H): mean over the real query rows
        return (values * rows).sum(-1) / t

    entropy = mean_rows(-torch.special.xlogy(a, a).sum(-1))
    nan = torch.full((n_batch, n_heads), float("nan"), dtype=torch.float64, device=a.device)
    out = {name: nan for name in COLUMNS}
    out.update({
        "entropy": entropy,
        "normalized_entropy": torch.where(n_keys > 1, entropy / torch.log(n_keys), nan),
        "max_weight": mean_rows(a.amax(-1)),
        "first_token": mean_rows(a[..., 0]),
    })
    return out


# ---------------------------------------------------------------------------- aggregation


class RunningStats:
    """Count, mean and sum of squared deviations of values of shape ``shape``, fed a batch
    ``(B, *shape)`` at a time (Chan et al.'s merge of Welford's algorithm, float64); NaN
    values are left out."""

    def __init__(self, shape: tuple[int, ...]):
        self.count = np.zeros(shape, dtype=np.int64)
        self.mean = np.zeros(shape)
        self.m2 = np.zeros(shape)

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        valid = ~np.isnan(values)
        n_batch = valid.sum(axis=0)
        if not n_batch.any():
            return
        safe_n = np.maximum(n_batch, 1)
        filled = np.where(valid, values, 0.0)
        batch_mean = filled.sum(axis=0) / safe_n
        batch_m2 = (np.where(valid, values - batch_mean, 0.0) ** 2).sum(axis=0)
        self.combine(n_batch, batch_mean, batch_m2)

    def combine(self, count: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        """Fold in the statistics of another set of values (Chan et al.'s update): the
        result is that of both sets together."""
        total = self.count + count
        delta = mean - self.mean
        weight = np.where(total > 0, count / np.maximum(total, 1), 0.0)
        self.mean = self.mean + delta * weight
        self.m2 = self.m2 + m2 + delta**2 * self.count * weight
        self.count = total

    @property
    def std(self) -> np.ndarray:
        """Sample standard deviation (n - 1); NaN with fewer than two values."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 1, np.sqrt(self.m2 / (self.count - 1)), np.nan)

    @property
    def mean_or_nan(self) -> np.ndarray:
        return np.where(self.count > 0, self.mean, np.nan)


@dataclass(repr=False)
class ScanResult(Displayable):
    """Per (layer, head): ``mean``, ``std`` (sample, n - 1) and ``count`` of every value in
    ``COLUMNS``, each ``(L, H)``; ``induction_probe`` ``(L, H)`` when asked for. Shown in a
    notebook as the top heads per detector and the detector maps."""

    layers: list[int]
    n_heads: int
    n_prompts: int
    n_tokens: int
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    count: dict[str, np.ndarray]
    induction_probe: np.ndarray | None = None
    kv_heads: list[int] = field(default_factory=list)  # per head, for grouped-query models
    # per column: the sums of squared deviations behind ``std`` (what a partial stores)
    m2: dict[str, np.ndarray] = field(default_factory=dict)
    # None: a decoder-only model's heads (rows as they always were); else the kind of
    # attention scored, "encoder", "decoder" or "cross", which every row and top entry names
    attention: str | None = None

    @property
    def columns(self) -> list[str]:
        return list(COLUMNS)

    def __repr__(self) -> str:
        kind = f", {self.attention} attention" if self.attention else ""
        return (f"<attnviz scan of {self.n_prompts} prompts ({self.n_tokens} tokens), "
                f"{layer_text(self.layers)} × {self.n_heads} heads{kind}>")

    def to_numpy(self, column: str = "induction_head") -> np.ndarray:
        """The mean of ``column`` (a detector, a statistic or ``induction_probe``) per head:
        ``(L, H)``."""
        if column == "induction_probe":
            if self.induction_probe is None:
                raise InputError("no induction probe in this scan: run it with induction=True")
            return self.induction_probe
        if column not in self.mean:
            raise InputError(f"unknown column {column!r}; choose one of "
                             f"{', '.join(COLUMNS)} or induction_probe")
        return self.mean[column]

    def to_pandas(self):
        """``rows()`` as a DataFrame: one row per (layer, head). Needs pandas."""
        return import_pandas().DataFrame(self.rows())

    def rows(self) -> list[dict]:
        """One record per (layer, head): ``layer``, ``head``, ``count`` (prompts scored),
        ``<column>_mean`` and ``<column>_std``, and ``induction_probe`` when computed."""
        rows = []
        for li, layer in enumerate(self.layers):
            for h in range(self.n_heads):
                row = {"layer": layer, "head": h, **self._kind(),
                       **({"kv_head": self.kv_heads[h]} if self.kv_heads else {}),
                       "count": int(self.count["entropy"][li, h])}
                for name in COLUMNS:
                    row[f"{name}_mean"] = _number(self.mean[name][li, h])
                    row[f"{name}_std"] = _number(self.std[name][li, h])
                if self.induction_probe is not None:
                    row["induction_probe"] = _number(self.induction_probe[li, h])
                rows.append(row)
        return rows

    def top(self, column: str, k: int) -> list[dict]:
        """The ``k`` heads with the highest mean ``column`` (``induction_probe`` too):
        ``layer``, ``head``, ``mean``, ``std`` (None for the probe)."""
        if column == "induction_probe":
            means, stds = self.induction_probe, np.full_like(self.induction_probe, np.nan)
        else:
            means, stds = self.mean[column], self.std[column]
        flat = np.where(np.isnan(means), -np.inf, means).reshape(-1)
        order = np.argsort(-flat, kind="stable")[:k]
        return [{"layer": self.layers[i // self.n_heads], "head": int(i % self.n_heads),
                 **self._kind(), **({"kv_head": self.kv_heads[i % self.n_heads]} if self.kv_heads else {}),
                 "mean": _number(means.flat[i]), "std": _number(stds.flat[i])} for i in order]


    def _kind(self) -> dict:
        return {"attention": self.attention} if self.attention else {}


def _number(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


# ---------------------------------------------------------------------------- the scan


def scan(
    model,
    prompts: Iterable[Prompt],
    layers: list[int],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    exclude_first: bool = False,
    exclude_self: bool = False,
    on_prompt: Callable[[Prompt, dict[str, np.ndarray]], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    done: dict[int, dict[str, np.ndarray]] | None = None,
) -> ScanResult:
    """Run ``model`` (``analysis.load_model``) on every prompt and aggregate per head.

    ``on_prompt(prompt, values)`` gets each prompt's values (name -> ``(L, H)`` float64) as
    soon as its batch is done (prompts come longest first); ``on_batch(n_prompts, n_tokens)``
    reports progress after each batch. ``done``: prompt index -> values of prompts an
    earlier, interrupted run scored (``--resume``): folded in, not run again.
    """
    if getattr(model, "is_seq2seq", False):
        raise InputError("an encoder–decoder has three kinds of attention: scan it with "
                         "attnviz.analyses.scan_seq2seq.scan_seq2seq")
    encoder = model.attention_kind == "encoder"  # bidirectional: its padding keys hidden
    if encoder and model.describe().get("mode") == "random":
        raise InputError("scan reads checkpoints of encoders (BERT …); the random model's "
                         "bidirectional attention is not scanned: drop --bidirectional")
    prompts = list(prompts)
    shape = (len(layers), model.n_heads)
    running = {name: RunningStats(shape) for name in COLUMNS}
    done = done or {}
    if done:
        for name in COLUMNS:  # (n_done, L, H), in prompt order
            running[name].update(np.stack([done[i][name] for i in sorted(done)]))
    todo = [p for p in prompts if p.index not in done]
    # one at a time, through the engine's tiles (a decoder's rows or an encoder's)
    for prompt in [p for p in todo if len(p.token_ids) > LONG_PROMPT]:
        values = long_prompt_values(model, prompt.token_ids, layers, exclude_first,
                                    exclude_self)
        for name in COLUMNS:
            running[name].update(values[name][None])
        if on_prompt is not None:
            on_prompt(prompt, values)
        if on_batch is not None:
            on_batch(1, len(prompt.token_ids))
    todo = [p for p in todo if len(p.token_ids) <= LONG_PROMPT]
    for batch in plan_batches(todo, batch_size, len(layers), model.n_heads):
        token_ids, lengths = padded_ids(batch)
        patterns = batch_patterns(token_ids, lengths, exclude_first=exclude_first,
                                  exclude_self=exclude_self)
        values = {name: np.empty((len(batch), *shape)) for name in COLUMNS}  # (B, L, H)
        run = model.run(token_ids, layers, **({"lengths": lengths} if encoder else {}))
        for li, (_, weights, _) in enumerate(run):
            scores = batch_scores(weights, lengths, patterns, model.attention_kind)
            for name in COLUMNS:
                values[name][:, li] = scores[name].cpu().numpy()
        for name in COLUMNS:
            running[name].update(values[name])
        if on_prompt is not None:
            for b, prompt in enumerate(batch):
                on_prompt(prompt, {name: values[name][b] for name in COLUMNS})
        if on_batch is not None:
            on_batch(len(batch), int(lengths.sum()))
    return ScanResult(
        layers=list(layers),
        n_heads=model.n_heads,
        n_prompts=len(prompts),
        n_tokens=sum(len(p.token_ids) for p in prompts),
        mean={name: running[name].mean_or_nan for name in COLUMNS},
        std={name: running[name].std for name in COLUMNS},
        count={name: running[name].count for name in COLUMNS},
        kv_heads=list(model.kv_heads),
        m2={name: running[name].m2 for name in COLUMNS},
        attention="encoder" if encoder else None,
    )


def long_prompt_values(model, token_ids: list[int], layers: list[int], exclude_first: bool,
                       exclude_self: bool) -> dict[str, np.ndarray]:
    """Every value of ``COLUMNS`` for one prompt longer than ``LONG_PROMPT`` tokens, name ->
    ``(L, H)``: the engine's reductions of its every weight (``analyses.longcontext``),
    the same definitions as ``batch_scores``."""
    long = analyze_long(model, token_ids, layers, resolution=len(token_ids), sink_tokens=1,
                        maps=(), detect=Detect.of(token_ids, exclude_first, exclude_self))
    a = long.arrays
    both = {} if long.causal else {"ahead": a["ahead"], "origin": a["origin"]}  # an encoder's
    values = head_stats(a["entropy"], a["row_max"], a["received"], a["distance"], **both)
    values.update({name: a["detectors"][:, k] for k, name in enumerate(DETECTORS)})
    return {name: values[name] for name in COLUMNS}


def top_table(result, detectors: list[str], k: int) -> list[dict]:
    """Rank r's row holds, per detector, the r-th best head and its mean ± std."""
    tops = {name: result.top(name, k) for name in detectors}
    rows = []
    for rank in range(min(k, len(result.layers) * result.n_heads)):
        row = {"rank": rank + 1}
        for name in detectors:
            entry = tops[name][rank]
            head = f"L{entry['layer']} H{entry['head']}"
            mean = "—" if entry["mean"] is None else f"{entry['mean']:.3f}"
            spread = "" if entry["std"] is None else f" ± {entry['std']:.3f}"
            row[name] = f"{head}  {mean}{spread}"
        rows.append(row)
    return rows


def scan_corpus(model, corpus: Corpus, layers: list[int], *, induction_seed: int | None = None,
                **options) -> ScanResult:
    """``scan`` of every prompt of ``corpus`` once the attention fits in memory, plus the
    induction probe (``induction.induction_probe``, seeded) unless ``induction_seed`` is
    None. ``options``: ``scan``'s."""
    short = [len(p.token_ids) for p in corpus.prompts if len(p.token_ids) <= LONG_PROMPT]
    if short:  # (longer prompts go through the engine's tiles, one at a time)
        check_fits(len(layers), model.n_heads, max(short))
    result = scan(model, corpus.prompts, layers, **options)
    if induction_seed is not None:
        result.induction_probe = induction_probe(model, layers, induction_seed, fit=True)
    return result


def prompt_record(prompt: Prompt, values: dict[str, np.ndarray], layers: list[int]) -> dict:
    """The ``--per-prompt`` JSON line of one prompt: each value as ``[layer][head]``."""
    return {
        "index": prompt.index,
        "line": prompt.line,
        "n_tokens": len(prompt.token_ids),
        "truncated": prompt.truncated,
        "layers": layers,
        "scores": {name: [[_number(v) for v in row] for row in values[name]] for name in COLUMNS},
    }


class PromptLog:
    """``--per-prompt``: a first line with the run's fingerprint (``header``, see
    ``attnviz.analyses.scan_runs``), then one complete JSON line per prompt, each written with one
    system call; on any failure the file is cut back to its last complete line.
    ``resume_at``: the bytes of complete lines an earlier run left (``--resume``): the file
    is cut there and appended to, its header kept."""

    def __init__(self, path: Path | None, layers: list[int], header: dict | None = None,
                 resume_at: int | None = None, record: Callable | None = None):
        self.path, self.layers = path, layers
        # (prompt, values) -> the prompt's line; an encoder–decoder's has its kinds
        self.record = record or (lambda prompt, values: prompt_record(prompt, values, layers))
        self.header, self.resume_at = header, resume_at
        self.fd = None
        self.complete = 0  # bytes of complete lines

    def __enter__(self):
        if self.path is not None:
            if self.resume_at is not None:
                self.fd = os.open(self.path, os.O_WRONLY)
                os.ftruncate(self.fd, self.resume_at)
                os.lseek(self.fd, 0, os.SEEK_END)
                self.complete = self.resume_at
            else:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
                if self.header is not None:
                    self._write_line(self.header)
        return self

    def _write_line(self, record: dict) -> None:
        line = (json.dumps(record, allow_nan=False) + "\n").encode()
        view = memoryview(line)
        while view:
            view = view[os.write(self.fd, view):]
        self.complete += len(line)

    def write(self, prompt: Prompt, values: dict[str, np.ndarray]) -> None:
        self._write_line(self.record(prompt, values))

    def __exit__(self, kind, value, tb):
        if self.fd is not None:
            if kind is not None:
                os.ftruncate(self.fd, self.complete)
            os.close(self.fd)
        return False
