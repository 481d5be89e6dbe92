"""Needle grids split over machines, and published head labels to compare with.

- **Shards** (``needle --shard K/N``): the tests in grid order (needle, length, depth),
  shard K taking tests K, K + N, K + 2N …; ``--partial FILE.json`` writes every test of the
  shard whole (prompt, answer, each head's copies, streaming mass and pooled row) with the
  grid's fingerprint, and ``merge`` rebuilds the grid's result from all N partials: the
  same tests, so the same scores (means over the same numbers, to rounding).
- **Compare** (``needle --compare FILE``): Retrieval_Head's ``head_score/*.json``
  (``{"layer-head": [score per test]}``, a head's score the mean of its list) or
  DuoAttention's full-attention patterns (a TSV: a row per layer, a column per key/value
  head), against this run's retrieval scores: the overlap of the top heads and Spearman's
  rank correlation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnviz.analyses.needle import Needle, NeedleResult, TestPlan, TestResult
from attnviz.analyses.scan_runs import (
    check_shard_set,
    parse_shard,
    read_partial_json,
    write_partial,
)
from attnviz.core.errors import InputError
from attnviz.files.output import clean

PARTIAL_FORMAT = "attnviz-needle-partial"
VERSION = 1
TOP_K = 10  # heads compared by --compare

__all__ = ["parse_shard", "fingerprint", "shard_tests", "partial_document", "write_partial",
           "merge", "read_labels", "agreement"]


def fingerprint(described: dict, layers: list[int], options: dict, needles: list[Needle],
                lengths: list[int], depths: list[float], plans: Sequence[TestPlan]) -> dict:
    """What must agree for two runs to be shards of one grid: the model, layers, options,
    needles, lengths, depths and every test's prompt (hashed)."""
    digest = hashlib.sha256()
    for plan in plans:
        digest.update(json.dumps([plan.needle, plan.length, plan.depth, plan.prompt_ids,
                                  plan.answer_span]).encode() + b"\n")
    return clean({"model": {k: v for k, v in described.items() if k != "device"},
                  "layers": list(layers), "options": options,
                  "needles": [vars(n) for n in needles], "lengths": lengths, "depths": depths,
                  "tests": len(plans), "sha256": digest.hexdigest()})


def shard_tests(plans: Sequence[TestPlan], k: int, n: int) -> list[TestPlan]:
    """Shard ``k`` of ``n``: tests k, k + n, k + 2n … of the grid."""
    return [p for p in plans if p.index % n == k]


def test_record(test: TestResult) -> dict:
    p = test.plan
    return {"index": p.index, "needle": p.needle, "length": p.length, "depth": p.depth,
            "prompt_ids": p.prompt_ids, "needle_span": list(p.needle_span),
            "answer_span": list(p.answer_span), "max_new_tokens": p.max_new_tokens,
            "generated_ids": test.generated_ids, "recall": test.recall,
            "copies": test.copies, "streaming": test.streaming, "row": test.row,
            "sink": test.sink, "recent": test.recent, "top_keys": test.top_keys}


def test_from_record(record: dict) -> TestResult:
    plan = TestPlan(int(record["index"]), int(record["needle"]), int(record["length"]),
                    float(record["depth"]), list(record["prompt_ids"]),
                    tuple(record["needle_span"]), tuple(record["answer_span"]),
                    int(record["max_new_tokens"]))
    return TestResult(plan, list(record["generated_ids"]), float(record["recall"]),
                      np.array(record["copies"], dtype=np.float64),
                      np.array(record["streaming"], dtype=np.float64),
                      np.array(record["row"], dtype=np.float32),
                      int(record["sink"]), int(record["recent"]),
                      np.array(record["top_keys"], dtype=np.int32))


def partial_document(result: NeedleResult, fp: dict, shard: tuple[int, int]) -> dict:
    return clean({"format": PARTIAL_FORMAT, "version": VERSION, "fingerprint": fp,
                  "shard": {"index": shard[0], "count": shard[1]}, "layers": result.layers,
                  "n_heads": result.n_heads, "kv_heads": result.kv_heads,
                  "config": result.config, "tests": [test_record(t) for t in result.tests]})


def read_partial(path: Path) -> dict:
    document = read_partial_json(path, "needle", PARTIAL_FORMAT)
    if document.get("version") != VERSION:
        raise InputError(f"{path} is a needle partial of version {document.get('version')}; "
                         f"this attnviz reads version {VERSION}")
    return document


def merge(paths: Sequence[Path]) -> tuple[NeedleResult, dict]:
    """The partials of every shard of one grid -> ``(the grid's result, first partial)``.
    Refused: partials of different grids (naming what differs), shard counts that
    disagree, a shard missing or given twice."""
    if not paths:
        raise InputError("nothing to merge: give the partial files, e.g. attnviz needle-merge "
                         "part-*.json")
    documents = [(Path(p), read_partial(p)) for p in paths]
    check_shard_set(documents, "needle grid")
    first = documents[0][1]
    tests = sorted((test_from_record(r) for _, doc in documents for r in doc["tests"]),
                   key=lambda t: t.plan.index)
    fp = first["fingerprint"]
    result = NeedleResult(tests, [Needle(**n) for n in fp["needles"]], list(fp["lengths"]),
                          list(fp["depths"]), list(first["layers"]), int(first["n_heads"]),
                          list(first["kv_heads"]), first["config"])
    return result, first


# ---------------------------------------------------------------------------- compare


def read_labels(path: Path, n_layers: int, n_heads: int, n_kv_heads: int) -> tuple[str, np.ndarray]:
    """``(kind, labels)``: ``("retrieval_head", (L, H))`` from Retrieval_Head's JSON,
    ``("duoattention", (L, KV))`` from DuoAttention's TSV; refused when the shape is not
    the model's."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--compare {path}: cannot read it ({exc})") from None
    if text.lstrip().startswith("{"):
        try:
            document = json.loads(text)
            labels = np.zeros((n_layers, n_heads))
            for key, scores in document.items():
                layer, head = (int(x) for x in key.split("-"))
                labels[layer, head] = float(np.mean(scores)) if scores else 0.0
        except (json.JSONDecodeError, ValueError, AttributeError, TypeError):
            raise InputError(f"--compare {path}: expected Retrieval_Head's head scores, "
                             '{"layer-head": [scores, ...]}') from None
        except IndexError:
            raise InputError(f"--compare {path} names a head outside the model's {n_layers} "
                             f"layers x {n_heads} heads") from None
        return "retrieval_head", labels
    try:
        rows = [[float(x) for x in line.split()] for line in text.splitlines() if line.strip()]
        labels = np.array(rows, dtype=np.float64)
    except ValueError:
        raise InputError(f"--compare {path}: expected a JSON of Retrieval_Head or a TSV of "
                         "numbers (DuoAttention: a row per layer, a column per kv head)") from None
    if labels.ndim != 2 or labels.shape not in ((n_layers, n_kv_heads), (n_layers, n_heads)):
        raise InputError(f"--compare {path} is {labels.shape[0]} x "
                         f"{labels.shape[1] if labels.ndim == 2 else '?'}; the model has "
                         f"{n_layers} layers x {n_kv_heads} key/value heads")
    return "duoattention", labels


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (Spearman's)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def agreement(scores: np.ndarray, labels: np.ndarray, kv_heads: list[int], kind: str) -> dict:
    """Where ``scores (L, H)`` (this run's) and ``labels`` agree: the top ``TOP_K`` of each,
    their overlap and Spearman's rho. A ``(L, KV)`` table is met by each group's mean score."""
    if labels.shape != scores.shape:  # per key/value head: the group's mean
        groups = np.array(kv_heads)
        scores = np.stack([scores[:, groups == kv].mean(axis=1) for kv in range(labels.shape[1])],
                          axis=1)
    unit = "kv_head" if labels.shape[1] != len(kv_heads) else "head"
    k = min(TOP_K, scores.size)

    def top(values: np.ndarray) -> list[tuple[int, int]]:
        order = np.argsort(-values.ravel(), kind="stable")[:k]
        return [divmod(int(i), values.shape[1]) for i in order]

    ours, theirs = top(scores), top(labels)
    a, b = _ranks(scores.ravel()), _ranks(labels.ravel())
    rho = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else None
    return {"kind": kind, "unit": unit, "k": k,
            "ours": [{"layer": layer, unit: h} for layer, h in ours],
            "theirs": [{"layer": layer, unit: h} for layer, h in theirs],
            "overlap": len(set(ours) & set(theirs)),
            "both": [{"layer": layer, unit: h} for layer, h in ours if (layer, h) in set(theirs)],
            "spearman": rho}
