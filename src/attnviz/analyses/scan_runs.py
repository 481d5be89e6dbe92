"""Scans that survive a crash and split over machines.

- **Fingerprint**: what makes two scans the same scan — the model's description, the layers,
  the detector options and the corpus (its prompts' token ids, hashed). The first line of a
  ``--per-prompt`` log holds it, and so does every partial.
- **Resume** (``--per-prompt FILE --resume``): the complete lines of an interrupted run's log
  are read back (a line cut by a crash is dropped), those prompts are not run again, and
  their values are folded into the aggregates as if they had been computed now.
- **Shards** (``--shard K/N``): the prompts, in corpus order, cut into slices of
  ``SHARD_SLICE`` (256); shard K (0-based) takes slices K, K + N, K + 2N … — the same
  prompts whatever the batch size, and batched as the whole scan batches them (batches
  never span slices), so each prompt's numbers are the whole scan's to the last bit.
  ``--partial FILE.json`` writes a shard's aggregates (count, mean and M2 per statistic
  and head), and ``merge`` combines partials with Chan et al.'s parallel update of
  Welford's algorithm: the merged result equals one scan of the whole corpus (counts
  exactly, means and stds to rounding).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnviz.analyses import scanning as scan
from attnviz.analyses.scanning import COLUMNS, SLICE, Prompt, RunningStats, ScanResult
from attnviz.core.errors import InputError
from attnviz.files.fileio import write_bytes
from attnviz.files.output import clean

LOG_FORMAT = "attnviz-scan-log"
PARTIAL_FORMAT = "attnviz-scan-partial"
VERSION = 1
SHARD_SLICE = SLICE  # prompts per slice of a shard (the scan's batches never span two)


# ----------------------------------------------------------------------- fingerprints


def corpus_digest(prompts: Sequence[Prompt]) -> str:
    """sha256 of every prompt's line number, truncation and token ids (and an
    encoder–decoder's target ids), in corpus order."""
    digest = hashlib.sha256()
    for p in prompts:
        fields = [p.line, p.truncated, p.token_ids]
        if p.target_ids is not None:
            fields.append(p.target_ids)
        digest.update(json.dumps(fields).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def fingerprint(model_description: dict, layers: list[int], options: dict,
                prompts: Sequence[Prompt]) -> dict:
    """What must agree for two runs to be parts of one scan (see the module docstring);
    not the device: a scan may go on, or a shard run, on another."""
    return clean({
        "model": {k: v for k, v in model_description.items() if k != "device"},
        "layers": list(layers),
        "options": options,
        "corpus": {"prompts": len(prompts), "tokens": sum(len(p.token_ids) for p in prompts),
                   "sha256": corpus_digest(prompts)},
    })


def differences(expected: dict, found: dict, prefix: str = "") -> list[str]:
    """The dotted names of the fields that differ (``corpus.sha256``, ``model.weights``)."""
    names = []
    for key in sorted(set(expected) | set(found)):
        a, b = expected.get(key), found.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            names.append(f"{prefix}{key}")
    return names


def _describe_differences(names: list[str], expected: dict, found: dict) -> str:
    def value(d, name):
        for part in name.split("."):
            d = d.get(part) if isinstance(d, dict) else None
        return d

    shown = [f"{n} ({value(found, n)!r} there, {value(expected, n)!r} here)"
             if n != "corpus.sha256" else "the prompts' tokens" for n in names[:4]]
    more = f" and {len(names) - 4} more" if len(names) > 4 else ""
    return ", ".join(shown) + more


# ----------------------------------------------------------------------------- resume


def log_header(fp: dict) -> dict:
    return {"format": LOG_FORMAT, "version": VERSION, "fingerprint": fp}


def read_log(path: Path, fp: dict, batches: list[list[Prompt]]
             ) -> tuple[dict[int, dict[str, np.ndarray]], int | None]:
    """``--resume``: ``(done, resume_at)`` — the values of the prompts of every batch (of
    ``batches``, the run's plan) whose lines are all in the log, and the bytes of the log up
    to the last of them (None: start afresh, the file is missing or a crash came before its
    first line was whole). The lines of a batch cut short by a crash are dropped: the batch
    runs again whole, so each prompt gets the numbers of an uninterrupted run. A log of
    another run is refused, naming what differs."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        raise InputError(f"--per-prompt {path}: cannot read it to resume ({exc.strerror or exc})") from None
    lines, start = [], 0
    while (stop := data.find(b"\n", start)) >= 0:  # a crash may leave half a line at the end
        lines.append((data[start:stop], stop + 1))
        start = stop + 1
    if not lines:
        return {}, None
    try:
        header = json.loads(lines[0][0])
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != LOG_FORMAT:
        raise InputError(f"--resume: {path} is not a per-prompt log of an attnviz scan (its "
                         "first line has no fingerprint); give the file an interrupted "
                         "`scan --per-prompt` wrote, or drop --resume to overwrite it")
    if header.get("fingerprint") != fp:
        names = differences(fp, header.get("fingerprint") or {})
        raise InputError(f"--resume: {path} is the log of another scan: "
                         f"{_describe_differences(names, fp, header.get('fingerprint') or {})} "
                         "differ; rerun with the same corpus, model and options, or drop --resume")
    logged: list[tuple[int, dict[str, np.ndarray], int]] = []  # (index, values, end offset)
    for number, (line, end) in enumerate(lines[1:], start=2):
        try:
            record = json.loads(line)
            values = {name: np.array(record["scores"][name], dtype=np.float64) for name in COLUMNS}
            logged.append((int(record["index"]), values, end))  # a null (0/0) became NaN
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise InputError(f"--resume: {path} line {number} is not a prompt record; the log "
                             "is damaged (drop --resume to start again)") from None
    seen = {index for index, _, _ in logged}
    whole = {p.index for batch in batches if all(q.index in seen for q in batch) for p in batch}
    done, resume_at = {}, lines[0][1]
    for index, values, end in logged:  # batch order: a cut batch's lines come last
        if index not in whole:
            break
        done[index], resume_at = values, end
    return done, resume_at


# ----------------------------------------------------------------------------- shards


def parse_shard(spec: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N``."""
    try:
        k, n = (int(part) for part in spec.split("/"))
    except ValueError:
        raise InputError(f"--shard takes K/N (shard K of N, 0-based: 0/4 … 3/4), got {spec!r}") from None
    if n < 1 or not 0 <= k < n:
        raise InputError(f"--shard {spec} is out of range: K must be 0 … N-1 (0-based, e.g. "
                         f"--shard 0/{max(n, 1)} … --shard {max(n, 1) - 1}/{max(n, 1)})")
    return k, n


def shard_prompts(prompts: Sequence[Prompt], k: int, n: int) -> list[Prompt]:
    """Shard ``k`` of ``n``: the prompts of slices k, k + n, … (``SHARD_SLICE`` each)."""
    return [p for p in prompts if (p.index // SHARD_SLICE) % n == k]


# --------------------------------------------------------------------------- partials


def partial_document(result: ScanResult, fp: dict, shard: tuple[int, int], corpus_info: dict,
                     config: dict) -> dict:
    """A shard's aggregates: everything ``merge`` needs to rebuild the whole scan."""
    return clean({
        "format": PARTIAL_FORMAT,
        "version": VERSION,
        "fingerprint": fp,
        "shard": {"index": shard[0], "count": shard[1]},
        "prompts": result.n_prompts,
        "tokens": result.n_tokens,
        "corpus": corpus_info,  # truncated / skipped_one_token, of the whole corpus
        "layers": result.layers,
        "n_heads": result.n_heads,
        "kv_heads": result.kv_heads,
        **({"attention": result.attention} if result.attention else {}),
        "config": config,
        # per column, (L, H) each: exact float64 (JSON keeps every bit of a double)
        "stats": {name: {"count": result.count[name].tolist(),
                         "mean": np.where(result.count[name] > 0, result.mean[name], 0.0).tolist(),
                         "m2": result.m2[name].tolist()} for name in COLUMNS},
    })


def write_partial(path: Path, document: dict) -> None:
    write_bytes(path, (json.dumps(document, allow_nan=True) + "\n").encode())


def read_partial_json(path: Path, what: str, form: str) -> dict:
    """A ``--partial`` file of ``what`` (scan, needle) as JSON, checked to be of ``form``."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not a readable {what} partial ({exc}); was it written "
                         "whole?") from None
    if not isinstance(document, dict) or document.get("format") != form:
        raise InputError(f"{path} is not a {what} partial (written by `attnviz {what} "
                         "--partial`)")
    return document


def read_partial(path: Path) -> dict:
    document = read_partial_json(path, "scan", PARTIAL_FORMAT)
    try:
        for name in COLUMNS:
            stats = document["stats"][name]
            shape = np.shape(stats["count"])
            if not (np.shape(stats["mean"]) == np.shape(stats["m2"]) == shape
                    == (len(document["layers"]), document["n_heads"])):
                raise ValueError(name)
        int(document["shard"]["index"]), int(document["shard"]["count"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path} is a damaged scan partial (its statistics are incomplete)") from None
    return document


def merge(paths: Sequence[Path]) -> tuple[ScanResult, dict]:
    """Combine the partial files ``paths`` into the scan of the whole corpus: ``(result,
    first partial)``; see ``merge_documents``."""
    if not paths:
        raise InputError("nothing to merge: give the partial files, e.g. attnviz scan-merge "
                         "part-*.json")
    return merge_documents([(Path(p), read_partial(p)) for p in paths])


def check_shard_set(documents: Sequence[tuple[object, dict]], what: str,
                    describe=lambda names, first, other: ", ".join(names)) -> None:
    """Refuse ``(name, partial document)`` pairs that are not every shard of one ``what``
    (a scan, a needle grid) once: another fingerprint (``describe`` says what differs),
    another shard count, a shard given twice or missing."""
    first_path, first = documents[0]
    n = int(first["shard"]["count"])
    seen: dict[int, object] = {}
    for path, doc in documents:
        if doc["fingerprint"] != first["fingerprint"]:
            names = differences(first["fingerprint"], doc["fingerprint"])
            raise InputError(f"{path} is a partial of another {what} than {first_path}: "
                             f"{describe(names, first['fingerprint'], doc['fingerprint'])} "
                             "differ")
        if int(doc["shard"]["count"]) != n:
            raise InputError(f"{path} is shard {doc['shard']['index']}/{doc['shard']['count']}, "
                             f"{first_path} one of {n}: the shards of one {what} share N")
        k = int(doc["shard"]["index"])
        if k in seen:
            raise InputError(f"shard {k}/{n} is given twice: {seen[k]} and {path}")
        seen[k] = path
    missing = [k for k in range(n) if k not in seen]
    if missing:
        raise InputError(f"shard(s) {', '.join(f'{k}/{n}' for k in missing)} missing: a merge "
                         f"needs all {n} (got {', '.join(f'{k}/{n}' for k in sorted(seen))})")


def merge_documents(documents: Sequence[tuple[object, dict]]) -> tuple[ScanResult, dict]:
    """Combine ``(name, partial document)`` pairs (``partial_document``'s) into the scan of
    the whole corpus: ``(result, first partial)``. Refused: partials of different scans
    (naming what differs), shard counts that disagree, a missing or repeated shard."""
    check_shard_set(documents, "scan", _describe_differences)
    first = documents[0][1]
    shape = (len(first["layers"]), first["n_heads"])
    merged = {name: RunningStats(shape) for name in COLUMNS}
    for _, doc in sorted(documents, key=lambda item: item[1]["shard"]["index"]):
        for name in COLUMNS:
            stats = doc["stats"][name]
            merged[name].combine(np.array(stats["count"], dtype=np.int64),
                                 np.array(stats["mean"], dtype=np.float64),
                                 np.array(stats["m2"], dtype=np.float64))
    result = ScanResult(
        layers=list(first["layers"]), n_heads=int(first["n_heads"]),
        n_prompts=sum(int(d["prompts"]) for _, d in documents),
        n_tokens=sum(int(d["tokens"]) for _, d in documents),
        mean={name: merged[name].mean_or_nan for name in COLUMNS},
        std={name: merged[name].std for name in COLUMNS},
        count={name: merged[name].count for name in COLUMNS},
        kv_heads=list(first.get("kv_heads") or []),
        m2={name: merged[name].m2 for name in COLUMNS},
        attention=first.get("attention"),
    )
    return result, first


def scan_partial(model, records: list[tuple[int, str]], layers: list[int], shard: tuple[int, int],
                 *, batch_size: int = 16, exclude_first: bool = False, exclude_self: bool = False,
                 truncate: bool = False, allow_special: bool = False, bos: bool = True) -> dict:
    """Shard ``shard`` of the corpus ``records`` (``(line, text)``, as ``scan.read_corpus``
    gives) scanned by ``model``: its partial document, as ``scan --shard --partial`` writes."""
    corpus = scan.model_corpus(model, records, truncate=truncate, allow_special=allow_special,
                               bos=bos)
    options = {"exclude_first": exclude_first, "exclude_self": exclude_self}
    described = {**model.describe(), "layers": list(layers), "device": str(model.device)}
    fp = fingerprint(described, layers, options, corpus.prompts)
    chosen = shard_prompts(corpus.prompts, *shard)
    result = scan.scan(model, chosen, layers, batch_size=batch_size, exclude_first=exclude_first,
                       exclude_self=exclude_self)
    info = {"truncated": corpus.truncated, "skipped_one_token": corpus.one_token}
    return partial_document(result, fp, shard, info, described)
