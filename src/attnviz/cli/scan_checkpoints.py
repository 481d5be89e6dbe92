"""`attnviz scan` with several checkpoints (``--weights`` repeated, a glob, or
``--revisions``): every checkpoint's scores, what changed, and the pictures across them."""

from __future__ import annotations

import glob
import time
from pathlib import Path

from attnviz.analyses.describe import layer_text
from attnviz.core.errors import InputError
from attnviz.core.words import counted
from attnviz.files.progress import ScanProgress


def _is_checkpoint_path(text: str) -> bool:
    path = Path(text)
    return (path.is_dir() and (path / "config.json").is_file()) or (
        path.is_file() and path.suffix in (".safetensors", ".pth", ".pt", ".bin"))


def checkpoint_names(weights: list[str] | None, revisions: str | None,
                     prompts: list[str] | None, file: Path | None) -> tuple[list[str], list[str] | None]:
    """The checkpoints to scan and the prompts left: a quoted glob in ``--weights`` is
    expanded here, and the checkpoint paths an unquoted glob (``--weights run/step-*``)
    spread over the prompt arguments are taken back as more ``--weights``."""
    from attnviz.analyses.scan_series import expand_weights

    names = []
    for name in weights or []:
        if any(c in name for c in "*?[") and not Path(name).exists():
            found = sorted(glob.glob(name))
            if not found:
                raise InputError(f"--weights {name}: the pattern matches no file or folder")
            names += found
        else:
            names.append(name)
    if names and prompts and all(_is_checkpoint_path(p) for p in prompts):
        names, prompts = names + list(prompts), None
    if revisions is None and len(names) <= 1:
        return names, prompts
    return expand_weights(names, revisions), prompts


def scan_checkpoints(output, fmt: str, names: list[str], records, where: str, *, config, layer,
                     truncate: bool, allow_special: bool, batch_size: int, exclude_first: bool,
                     exclude_self: bool, induction: bool, top: int, plot_dir: Path | None,
                     progress: str | None) -> None:
    from attnviz.analyses import scan_series
    from attnviz.analyses import scanning as scan
    from attnviz.analyses.attention import load_model, parse_layers
    from attnviz.analyses.induction import check_induction_probe

    options = {"exclude_first": exclude_first, "exclude_self": exclude_self}
    corpus_info: dict[str, dict] = {}

    def load(name: str):
        model = load_model(config, name)
        parse_layers(layer, model.n_layers)  # refused before any checkpoint is scanned
        if induction:
            check_induction_probe(model, fit=True)
        return model

    def tokenize(model):
        corpus = scan.model_corpus(model, records, truncate=truncate,
                                   allow_special=allow_special, bos=config.bos,
                                   chat=config.chat, where=where)
        if corpus.one_token:
            output.warning(f"skipped {corpus.one_token} one-token prompt(s): the detectors need "
                           "a previous token")
        return corpus

    def scan_one(model, corpus):
        with ScanProgress(len(corpus.prompts), corpus.n_tokens, show=progress) as bar:
            result = scan.scan_corpus(model, corpus, parse_layers(layer, model.n_layers),
                                      batch_size=batch_size, on_batch=bar.advance,
                                      induction_seed=config.seed if induction else None,
                                      **options)
        corpus_info[id(result)] = {"truncated": corpus.truncated,
                                   "skipped_one_token": corpus.one_token}
        return result

    started = time.perf_counter()
    series = scan_series.scan_series(
        names, load, tokenize, scan_one,
        on_checkpoint=lambda i, name: output.message(f"Scanning with {name} "
                                                     f"({i + 1}/{len(names)})…"))
    seconds = time.perf_counter() - started
    detectors = list(scan.TOP_COLUMNS) + (["induction_probe"] if induction else [])
    same = scan_series.same_shape(series)
    if not same:
        shapes = ", ".join(sorted({f"{counted(n_l, 'layer')} × {counted(n_h, 'head')}" for n_l, n_h in
                                   (c.shape for c in series)}))
        output.message(f"The checkpoints differ in shape ({shapes}): they are compared by "
                       "detector summaries (each layer's best head, the heads over "
                       f"{scan_series.THRESHOLD}), not head by head")
    files = []
    if plot_dir is not None:
        from attnviz.pictures.series import save_series_plots

        files = [str(p) for p in save_series_plots(plot_dir, series, detectors)]
    document = {
        "checkpoints": [{"checkpoint": c.name, "step": c.step, "config": c.config,
                         "layers": c.result.layers, "prompts": c.result.n_prompts,
                         "tokens": c.result.n_tokens, **corpus_info[id(c.result)],
                         "heads": c.result.rows(),
                         "top": {d: c.result.top(d, top) for d in detectors},
                         "summary": {d: scan_series.summary(c, d) for d in detectors}}
                        for c in series],
        "same_shape": same,
        "options": options,
    }
    if same:
        document["changes"] = {d: scan_series.changes(series, d, top) for d in detectors}
    if files:
        document["files"] = files
    if fmt == "json":
        output.json(document)
    elif fmt == "csv":
        rows = [{"checkpoint": c.name, "step": c.step, **row}
                for c in series for row in c.result.rows()]
        columns = list(dict.fromkeys(key for row in rows for key in row))
        output.csv(rows, columns)
    else:
        _tables(output, series, detectors, top, same)
        first = series[0].result
        output.line(f"{counted(len(series), 'checkpoint')}, {counted(first.n_prompts, 'prompt')}, "
                    f"{layer_text(first.layers)}, {seconds:.1f} s")
    for f in files:
        output.message(f"Wrote {f}")


def _score(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def _tables(output, series, detectors: list[str], top: int, same: bool) -> None:
    """Same shape: per detector, the heads that changed most. Otherwise: per checkpoint and
    detector, its best head and the heads over the threshold."""
    from attnviz.analyses import scan_series
    from attnviz.pictures.series import label

    if same:
        first, last = label(series[0]), label(series[-1])
        for detector in detectors:
            rows = [{"rank": rank, "head": f"L{c['layer']} H{c['head']}",
                     first: _score(c["first"]), last: _score(c["last"]),
                     "change": "—" if c["change"] is None else f"{c['change']:+.3f}",
                     "max": _score(c["max"])}
                    for rank, c in enumerate(scan_series.changes(series, detector, top), start=1)]
            output.table(rows, ["rank", "head", first, last, "change", "max"], keys=["rank"],
                         title=f"{detector}: most changed, {first} → {last}")
        return
    for detector in detectors:
        rows = []
        for c in series:
            found = scan_series.summary(c, detector)
            best = found["best"]
            rows.append({"checkpoint": c.name, "best head": f"L{best['layer']} H{best['head']}",
                         "score": _score(best["score"]),
                         f"heads ≥ {found['threshold']}": found["over_threshold"]})
        output.table(rows, list(rows[0]), keys=["checkpoint"],
                     title=f"{detector}: each checkpoint's best head")
