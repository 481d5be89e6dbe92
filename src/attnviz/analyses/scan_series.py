"""Heads across checkpoints: one corpus scanned by several checkpoints — the training
checkpoints of one model (Pythia's ``step1000`` … revisions, the snapshots of
`attnviz train`) or different models — and what changed.

>>> expand_weights(["EleutherAI/pythia-70m"], "step0:2000:1000")
['EleutherAI/pythia-70m@step0', 'EleutherAI/pythia-70m@step1000', 'EleutherAI/pythia-70m@step2000']
>>> step_of("EleutherAI/pythia-160m@step3000"), step_of("run/step-000500"), step_of("gpt2")
(3000, 500, None)

Every checkpoint scans the same prompts, tokenized once per tokenizer (checkpoints whose
tokenizer files hold the same bytes share the tokens), one checkpoint in memory at a time;
each checkpoint's rows are those `attnviz scan` gives for it alone. Checkpoints of the same
shape (layers × heads) are compared head by head; of different shapes, by detector
summaries (the best head of each layer, the number of heads over a threshold).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnviz.analyses.scanning import ScanResult
from attnviz.core.errors import AttnvizError, InputError

THRESHOLD = 0.5  # a head "is" a detector's head from this score on (the summaries' count)
_RANGE = re.compile(r"^([A-Za-z_-]*?)(\d+):(\d+):(\d+)$")
_PATH_STEP = re.compile(r"(?:^|[^A-Za-z])(?:step|iter|checkpoint)[-_]?0*(\d+)$", re.I)


@dataclass
class CheckpointScan:
    """One checkpoint's scan: ``name`` as given (``repo@revision``, a path), the training
    ``step`` parsed from it (None when it names none), what the model is (``config``)."""

    name: str
    step: int | None
    config: dict
    result: ScanResult

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.result.layers), self.result.n_heads


def parse_revisions(spec: str) -> list[str]:
    """``step1000,step2000`` or ``step0:143000:8000`` (prefix, start:stop:step, stop
    included when on the grid), or several of either joined by commas."""
    revisions = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        match = _RANGE.match(part)
        if match is None:
            if ":" in part:
                raise InputError(f"--revisions {part!r}: a range is PREFIX START:STOP:STEP, e.g. "
                                 "step0:143000:8000")
            revisions.append(part)
            continue
        prefix, start, stop, step = match.group(1), *map(int, match.group(2, 3, 4))
        if step < 1 or stop < start:
            raise InputError(f"--revisions {part!r}: the range is empty (START <= STOP, STEP >= 1)")
        revisions += [f"{prefix}{n}" for n in range(start, stop + 1, step)]
    if not revisions:
        raise InputError("--revisions names no revision")
    return revisions


def expand_weights(weights: Sequence[str], revisions: str | None) -> list[str]:
    """The checkpoints to scan: every ``--weights``, or one repo at every ``--revisions``."""
    names = list(weights)
    if revisions is not None:
        if len(names) != 1 or "@" in names[0]:
            raise InputError("--revisions takes one --weights REPO (without @revision): "
                             "the revisions are of that repo")
        names = [f"{names[0]}@{revision}" for revision in parse_revisions(revisions)]
    seen = set()
    for name in names:
        if name in seen:
            raise InputError(f"--weights {name} is given twice")
        seen.add(name)
    return names


def step_of(name: str) -> int | None:
    """The training step a checkpoint's name gives: its revision's trailing number
    (``…@step3000``), or a folder named ``step-000500`` / ``checkpoint-500``."""
    if "@" in name:
        found = re.search(r"(\d+)$", name.rsplit("@", 1)[1])
        return int(found.group(1)) if found else None
    found = _PATH_STEP.search(Path(name.rstrip("/")).name)
    return int(found.group(1)) if found else None


def tokenizer_key(tokenizer, context_length: int) -> tuple:
    """Checkpoints with equal keys tokenize a corpus alike (files compared by content)."""
    source = Path(tokenizer.source)
    digest = (hashlib.sha256(source.read_bytes()).hexdigest() if source.is_file()
              else tokenizer.source)
    return tokenizer.kind, digest, context_length


def scan_series(names: Sequence[str], load: Callable[[str], object],
                tokenize: Callable[[object], object], scan_one: Callable,
                on_checkpoint: Callable[[int, str], None] | None = None) -> list[CheckpointScan]:
    """Scan with every checkpoint of ``names``, one in memory at a time.

    ``load(name)``: the model (``analysis.load_model``); ``tokenize(model)``: the corpus in
    its tokens (called once per ``tokenizer_key``); ``scan_one(model, corpus)``: its
    ``ScanResult``. Every checkpoint is opened (and a Hub one downloaded) before any is
    scanned, so one that cannot be read stops the run before the work, named."""
    for name in names:
        try:
            load(name)
        except AttnvizError as exc:
            others = "" if len(names) == 1 else "; no checkpoint was scanned"
            raise type(exc)(f"{exc}{others}") from None
    corpora: dict[tuple, object] = {}
    done: list[CheckpointScan] = []
    for i, name in enumerate(names):
        if on_checkpoint is not None:
            on_checkpoint(i, name)
        try:
            model = load(name)
            key = tokenizer_key(model.tokenizer, model.context_length)
            if key not in corpora:
                corpora[key] = tokenize(model)
            result = scan_one(model, corpora[key])
        except AttnvizError as exc:
            scanned = ", ".join(c.name for c in done) or "none"
            raise type(exc)(f"{name}: {exc} (checkpoints scanned before it: {scanned}; "
                            "nothing was written)") from None
        done.append(CheckpointScan(name, step_of(name), {**model.describe()}, result))
        del model  # one checkpoint's blocks in memory at a time
    return done


def same_shape(series: Sequence[CheckpointScan]) -> bool:
    return len({c.shape for c in series}) == 1 and len({tuple(c.result.layers) for c in series}) == 1


def scores(checkpoint: CheckpointScan, detector: str) -> np.ndarray:
    """``(L, H)`` mean score of ``detector`` (or the induction probe)."""
    result = checkpoint.result
    return result.induction_probe if detector == "induction_probe" else result.mean[detector]


def changes(series: Sequence[CheckpointScan], detector: str, k: int) -> list[dict]:
    """The ``k`` heads whose score changed most from the first checkpoint to the last (same
    shape only): layer, head, first, last, change, and the largest score on the way."""
    stacked = np.stack([scores(c, detector) for c in series])  # (C, L, H)
    change = stacked[-1] - stacked[0]
    order = np.argsort(-np.abs(np.nan_to_num(change, nan=0.0)), axis=None, kind="stable")[:k]
    layers, n_heads = series[0].result.layers, series[0].result.n_heads
    return [{"layer": layers[i // n_heads], "head": int(i % n_heads),
             "first": _number(stacked[0].flat[i]), "last": _number(stacked[-1].flat[i]),
             "change": _number(change.flat[i]),
             "max": _number(np.nanmax(stacked[:, i // n_heads, i % n_heads]))} for i in order]


def summary(checkpoint: CheckpointScan, detector: str, threshold: float = THRESHOLD) -> dict:
    """What can be compared between models of different shapes: the best head of each layer
    and the number of heads scoring ``threshold`` or more."""
    values = scores(checkpoint, detector)
    layers = checkpoint.result.layers
    best = []
    for li, layer in enumerate(layers):
        row = np.nan_to_num(values[li], nan=-np.inf)
        head = int(np.argmax(row))
        best.append({"layer": layer, "head": head, "score": _number(values[li, head])})
    top = max(best, key=lambda b: -np.inf if b["score"] is None else b["score"])
    return {"best": top, "best_per_layer": best,
            "over_threshold": int(np.sum(np.nan_to_num(values, nan=-np.inf) >= threshold)),
            "threshold": threshold}


def top_heads_over_series(series: Sequence[CheckpointScan], detector: str, k: int) -> list[tuple[int, int]]:
    """``(layer index, head)`` of the ``k`` heads with the highest score at any checkpoint."""
    stacked = np.nan_to_num(np.stack([scores(c, detector) for c in series]), nan=-np.inf)
    order = np.argsort(-stacked.max(0), axis=None, kind="stable")[:k]
    n_heads = series[0].result.n_heads
    return [(int(i // n_heads), int(i % n_heads)) for i in order]


def _number(value) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value
