"""`attnviz train`'s run: its folder, the training loop, a snapshot with its scores every
K steps, and ``--resume``.

    DIR/run.json                  the settings (what --resume must match)
    DIR/tokenizer/                the run's tokenizer (copied into every snapshot)
    DIR/probes.txt                probe sequences, one a line: random tokens repeated twice at
                                  several periods (``circuit.probe_periods``)
    DIR/step-000000/ …            snapshots in the Hugging Face GPT-2 layout
    DIR/training.jsonl            one line per snapshot: step, loss, every head's scan scores
                                  and its circuit scores per period
    DIR/training_state.pt         model and optimiser at the last snapshot (for --resume)
    DIR/heads.gif, detectors.png  the film and the scores against the step (pictures.training)

The scores of a snapshot are ``attnviz scan --weights DIR/step-N --file DIR/probes.txt``'s
by construction: the saved snapshot is loaded and scanned as ``scan`` does; the per-period
scores (``circuit.period_scores``) come from the same loaded snapshot. Every batch is
drawn from (seed, step) alone and the state is saved with each snapshot, so a resumed run
ends bit-identical to one that was never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from attnviz.analyses import circuit, scanning
from attnviz.analyses.attention import load_model
from attnviz.analyses.detectors import DETECTORS, induction_from
from attnviz.analyses.training import TrainConfig, random_tokens
from attnviz.core.errors import InputError
from attnviz.files.fileio import UMASK, write_bytes
from attnviz.text import tokenization

TASKS = ("induction", "previous", "text")
RUN_FILE, STATE_FILE, LOG_FILE, PROBES_FILE = "run.json", "training_state.pt", "training.jsonl", "probes.txt"
TOKENIZER_DIR = "tokenizer"
SNAPSHOT = re.compile(r"step-(\d{6,})")
FILM_FORMATS = {"gif": "heads.gif", "apng": "heads.png", "mp4": "heads.mp4"}  # --film-format
FILM_NAMES = tuple(FILM_FORMATS.values())
# Threads of every run: a matrix product split over another count rounds differently, and
# a tiny model's training amplifies that; 2 is the fastest count for the default model.
TRAIN_THREADS = 2
BYTES = 256  # the alphabet of a byte-level BPE
REPEATS = 2  # a probe is a segment repeated twice (at each of circuit.probe_periods)


def snapshot_name(step: int) -> str:
    return f"step-{step:06d}"


@dataclass(frozen=True)
class RunSettings:
    model: TrainConfig = field(default_factory=TrainConfig)
    task: str = "induction"
    steps: int = 4000
    snapshot_every: int = 200
    text: str | None = None  # the --text file (task "text")
    probe: str | None = None  # the film's sequence (--probe); default: circuit.film_period's

    def record(self, text_sha256: str | None) -> dict:
        """What run.json holds: everything --resume must find unchanged, and ``steps``."""
        return {"task": self.task, "model": asdict(self.model), "steps": self.steps,
                "snapshot_every": self.snapshot_every, "probe": self.probe,
                "text": None if self.text is None else {"path": self.text, "sha256": text_sha256}}


@dataclass
class RunSummary:
    out: Path
    steps: int
    resumed_from: int | None
    seconds: float
    records: list[dict]  # the lines of training.jsonl
    context: int = TrainConfig().n_positions  # the model's, which sets the probed periods

    @property
    def last(self) -> dict:
        return self.records[-1]


def check_settings(settings: RunSettings) -> None:
    if settings.task not in TASKS:
        raise InputError(f"--task must be one of {', '.join(TASKS[:2])} (or --text FILE), "
                         f"got {settings.task!r}")
    c = settings.model
    if c.n_embd % c.n_head:
        raise InputError(f"--d-model {c.n_embd} is not divisible by --heads {c.n_head}")
    if c.n_positions < 4 * REPEATS:
        raise InputError(f"--context {c.n_positions}: at least {4 * REPEATS} tokens are needed "
                         f"(the probes repeat a segment {REPEATS} times)")
    if c.vocab_size < 8:
        raise InputError(f"--vocab {c.vocab_size}: at least 8 tokens are needed")
    if settings.task == "text" and c.vocab_size < BYTES:
        raise InputError(f"--vocab {c.vocab_size}: a byte-level tokenizer for --text needs at "
                         f"least {BYTES} tokens (one per byte)")


# ---------------------------------------------------------------------------- the folder


def _run_files(out: Path) -> list[Path]:
    """What a training run wrote into ``out`` (what --force removes)."""
    names = {RUN_FILE, STATE_FILE, LOG_FILE, PROBES_FILE, TOKENIZER_DIR, "detectors.png", *FILM_NAMES}
    return [p for p in out.iterdir() if p.name in names or SNAPSHOT.fullmatch(p.name)
            or (p.name.startswith(".step-") and p.name.endswith((".tmp", ".old")))]


def check_folder(out: Path, record: dict, *, resume: bool, force: bool) -> dict | None:
    """Whether ``out`` can take the run whose run.json is ``record``, changing nothing: the
    saved state to continue from with ``resume`` (None: start at step 0). Refuses a
    folder that holds another run (unless --resume or --force) or files that are not a
    run's."""
    if resume and force:
        raise InputError("--resume and --force: pass one (continue the run, or replace it)")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: this is a file, not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        if resume:
            raise InputError(f"--resume: {out} holds no training run to continue")
        return None
    if not (out / RUN_FILE).is_file():
        raise InputError(f"--out {out} is not empty and holds no training run ({RUN_FILE}); "
                         "choose a new or empty folder")
    if force:
        return None
    if not resume:
        raise InputError(f"--out {out} holds another training run; pass --resume to continue "
                         "it or --force to replace it")
    return _resumable_state(out, record)


def clear_folder(out: Path) -> None:
    """Remove what an earlier run wrote into ``out`` (--force) and nothing else."""
    if out.is_dir():
        for path in _run_files(out):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _resumable_state(out: Path, record: dict) -> dict:
    import torch

    try:
        saved = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"--resume: {out / RUN_FILE} cannot be read ({exc})") from None
    was, now = _flat(saved), _flat(record)
    differ = [key for key in now if key != "steps" and was.get(key) != now[key]]
    if differ:
        shown = "; ".join(f"{OPTION_NAMES.get(key, key)} {_shown(was.get(key))} in the run, "
                          f"{_shown(now[key])} now" for key in differ)
        raise InputError(f"--resume: the options differ from the run's ({shown}); resume with "
                         "the same options, or pass --force to start again")
    if not (out / STATE_FILE).is_file():
        raise InputError(f"--resume: {out / STATE_FILE} is missing, so the run cannot be "
                         "continued exactly; pass --force to start again")
    state = torch.load(out / STATE_FILE, weights_only=True)
    if state["step"] > record["steps"]:
        raise InputError(f"--resume: the run is at step {state['step']}, past --steps "
                         f"{record['steps']}")
    return state


OPTION_NAMES = {"n_layer": "--layers", "n_head": "--heads", "n_embd": "--d-model",
                "n_positions": "--context", "vocab_size": "--vocab", "mlp": "--mlp",
                "batch_size": "--batch-size", "lr": "--lr", "weight_decay": "--weight-decay",
                "seed": "--seed", "task": "--task", "snapshot_every": "--snapshot-every",
                "probe": "--probe", "text.path": "--text", "text.sha256": "the text's sha256"}


def _flat(record: dict) -> dict:
    """run.json's settings as ``{name: value}``: the model's fields and the text's at the top."""
    flat = {key: value for key, value in record.items() if key not in ("model", "text")}
    flat.update(record.get("model") or {})
    text = record.get("text")
    flat["text.path"] = text and text.get("path")
    flat["text.sha256"] = text and text.get("sha256")
    return flat


def _shown(value) -> str:
    return "(none)" if value is None else str(value)


def _write_json(path: Path, document: dict) -> None:
    write_bytes(path, (json.dumps(document, indent=2) + "\n").encode())


def _save_state(out: Path, step: int, model, optimizer) -> None:
    """The model and optimiser after ``step`` updates, replaced atomically."""
    import torch

    tmp = out / f".{STATE_FILE}.tmp"
    torch.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp)
    os.replace(tmp, out / STATE_FILE)


def read_log(out: Path, up_to: int | None = None) -> list[dict]:
    """The lines of training.jsonl (those of steps <= ``up_to``)."""
    path = out / LOG_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # the half-written last line of a killed run
            break
    return [r for r in records if up_to is None or r["step"] <= up_to]


# ---------------------------------------------------------------------------- tokens


def read_training_text(path: Path) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"--text {path}: no such file") from None
    except UnicodeDecodeError:
        raise InputError(f"--text {path}: not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"--text {path}: {exc.strerror}") from None
    if not text.strip():
        raise InputError(f"--text {path} is empty")
    return text


def build_tokenizer(settings: RunSettings, text: str | None, folder: Path) -> None:
    """Write the run's tokenizer into ``folder``: a word vocabulary for the synthetic
    tasks, a byte-level BPE trained on the text for --text."""
    from attnviz.analyses import training

    folder.mkdir(exist_ok=True)
    if text is None:
        training.save_word_tokenizer(training.word_vocabulary(settings.model.vocab_size), folder)
    else:
        training.save_text_tokenizer(text, settings.model.vocab_size, folder)


def _decoder(folder: Path) -> Callable[[list[int]], str]:
    """Token ids -> text, by the tokenizer's own decoder (words joined by spaces, bytes
    put back together)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json")).decode


def probe_lines(config: TrainConfig, decode, text_tokens: np.ndarray | None,
                encode=None) -> list[str]:
    """``PROBES_PER_PERIOD`` sequences per period of ``circuit.probe_periods``, in that
    order, as text: a segment of p tokens repeated twice. For the tasks, random ids
    (distinct, as the training draws them) from a stream the training batches never use;
    for --text, segments of the text (shortened when the text read back is longer)."""
    rng = np.random.default_rng([config.seed, 2**31])  # training batches use (seed, step)
    lines = []
    for period in circuit.probe_periods(config.n_positions):
        for _ in range(circuit.PROBES_PER_PERIOD):
            if text_tokens is None:
                segment = random_tokens(config, rng, 1)[0, :period]
            else:
                start = int(rng.integers(0, len(text_tokens) - period + 1))
                segment = text_tokens[start:start + period]
            line = _probe_line(segment, decode)
            # a text's segment, decoded and read again, may merge into more tokens than it was
            while (encode is not None and len(segment) > 2
                   and len(encode(line)) > config.n_positions):
                segment = segment[:-1]
                line = _probe_line(segment, decode)
            lines.append(line)
    return lines


def _probe_line(segment: np.ndarray, decode) -> str:
    return " ".join(decode(np.tile(segment, REPEATS).tolist()).split())  # one line, no edge spaces


def _fits(tokenizer, line: str, config: TrainConfig, what: str) -> list[int]:
    ids = tokenizer.encode(line)
    if len(ids) > config.n_positions:
        raise InputError(f"{what} is {len(ids)} tokens, longer than the context "
                         f"{config.n_positions}; shorten it or pass a larger --context")
    if len(ids) < 2:
        raise InputError(f"{what} needs two tokens or more")
    return ids


# ---------------------------------------------------------------------------- scores


def score_snapshot(folder: Path, records: list[tuple[int, str]]) -> tuple[dict, dict]:
    """Every head's mean scores on the probes, as ``attnviz scan`` computes them on the
    saved snapshot (column -> ``[layer][head]``), and its circuit scores per probed period
    (``circuit.period_scores``)."""
    model = load_model(None, str(folder))
    corpus = scanning.model_corpus(model, records)
    result = scanning.scan_corpus(model, corpus, list(range(model.n_layers)))
    scores = {name: np.round(result.mean[name], 8).tolist() for name in scanning.COLUMNS}
    return scores, circuit.period_scores(model, corpus.prompts)


# ---------------------------------------------------------------------------- the run


def train(out: Path, settings: RunSettings, *, resume: bool = False, force: bool = False,
          on_step: Callable[[int, float], None] | None = None,
          on_snapshot: Callable[[dict], None] | None = None) -> RunSummary:
    """Train, snapshot and score into ``out``; ``on_step(step, loss)`` after every update,
    ``on_snapshot(record)`` after every snapshot. A KeyboardInterrupt leaves the last
    complete snapshot, its log line and the state to resume from."""
    import torch

    from attnviz.analyses import training

    check_settings(settings)
    out = Path(out)
    text = read_training_text(Path(settings.text)) if settings.task == "text" else None
    sha = None if text is None else hashlib.sha256(text.encode()).hexdigest()
    record = settings.record(sha)
    state = check_folder(out, record, resume=resume, force=force)
    config = settings.model

    if state is None:  # everything is checked before the folder is touched
        staging = Path(tempfile.mkdtemp(prefix="attnviz-tokenizer-"))
        try:
            build_tokenizer(settings, text, staging)
            tokenizer = tokenization.load_tokenizer(staging / "tokenizer.json")
            text_tokens = _text_tokens(tokenizer, text, settings)
            config = config if text is None else _with_vocab(config, tokenizer)
            lines = probe_lines(config, _decoder(staging), text_tokens, tokenizer.encode)
            if settings.probe is not None:
                _fits(tokenizer, settings.probe, config, "--probe")
            for number, line in enumerate(lines, start=1):
                _fits(tokenizer, line, config, f"probe {number}")
            clear_folder(out)
            shutil.move(staging, out / TOKENIZER_DIR)
            os.chmod(out / TOKENIZER_DIR, 0o777 & ~UMASK)  # mkdtemp's 0700 is not the user's
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        write_bytes(out / PROBES_FILE, ("\n".join(lines) + "\n").encode())
    else:
        tokenizer = tokenization.load_tokenizer(out / TOKENIZER_DIR / "tokenizer.json")
        text_tokens = _text_tokens(tokenizer, text, settings)
        config = config if text is None else _with_vocab(config, tokenizer)
    _write_json(out / RUN_FILE, record)  # on --resume, a longer --steps is the one change
    tokenizer_dir = out / TOKENIZER_DIR
    probes = list(enumerate((out / PROBES_FILE).read_text(encoding="utf-8").splitlines(), 1))

    def batch(step: int):
        if settings.task == "induction":
            return training.induction_batch(config, step)
        if settings.task == "previous":
            return training.previous_batch(config, step)
        return training.text_batch(config, step, text_tokens)

    model = training.TinyGPT2(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    started = time.perf_counter()
    records = []

    def snapshot(step: int, loss: float) -> None:
        with _interrupt_deferred():  # the snapshot, its log line and the state: all or none
            folder = training.save_snapshot(model, out / snapshot_name(step),
                                            tokenizer_files=tokenizer_dir)
            scores, periods = score_snapshot(folder, probes)
            line = {"step": step, "loss": round(loss, 6), "snapshot": folder.name,
                    "seconds": round(time.perf_counter() - started, 3),
                    "scores": scores, "periods": periods}
            with open(out / LOG_FILE, "a", encoding="utf-8") as log:
                log.write(json.dumps(line) + "\n")
            _save_state(out, step, model, optimizer)
        records.append(line)
        if on_snapshot is not None:
            on_snapshot(line)

    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)  # the same numbers on any machine (threads split sums)
    try:
        if state is None:
            start = 0
            with torch.no_grad():
                snapshot(0, model.loss(*batch(0)).item())
        else:
            start = state["step"]
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            records = read_log(out, up_to=start)
            _write_log(out, records)  # lines past the state (a run killed mid-snapshot) go
        losses = []
        for step in range(start, settings.steps):
            loss = model.loss(*batch(step))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            done = step + 1
            if done % settings.snapshot_every == 0 or done == settings.steps:
                snapshot(done, float(np.mean(losses)))
                losses = []
            if on_step is not None:
                on_step(done, losses[-1] if losses else records[-1]["loss"])
    finally:
        torch.set_num_threads(threads)
    return RunSummary(out, settings.steps, state["step"] if state else None,
                      time.perf_counter() - started, records, config.n_positions)


@contextmanager
def _interrupt_deferred():
    """Ctrl-C or SIGTERM inside the block takes effect (as a KeyboardInterrupt) when it
    ends; a kill -9 can still cut it, and --resume then drops the log lines past the
    saved state."""
    received = []

    def hold(signum, frame):
        received.append(signum)

    try:
        previous = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        raise KeyboardInterrupt


def _text_tokens(tokenizer, text: str | None, settings: RunSettings) -> np.ndarray | None:
    """The text's token ids (None without --text), refused when too short to train on."""
    if text is None:
        return None
    tokens = np.array(tokenizer.encode(text), dtype=np.int64)
    need = settings.model.n_positions + 1
    if len(tokens) < need:
        raise InputError(f"--text {settings.text} is {len(tokens)} token"
                         f"{'s' if len(tokens) != 1 else ''}; training needs at "
                         f"least {need} (the context {need - 1} + 1): use a longer text or a "
                         "smaller --context")
    return tokens


def _with_vocab(config: TrainConfig, tokenizer) -> TrainConfig:
    return replace(config, vocab_size=tokenizer.vocab_size)


def _write_log(out: Path, records: list[dict]) -> None:
    write_bytes(out / LOG_FILE, "".join(json.dumps(r) + "\n" for r in records).encode())


# ---------------------------------------------------------------------------- pictures


def film_probe(out: Path, settings: RunSettings) -> str:
    """The film's sequence: --probe, else the first probe of ``circuit.film_period``."""
    if settings.probe is not None:
        return settings.probe
    lines = (out / PROBES_FILE).read_text(encoding="utf-8").splitlines()
    periods = circuit.probe_periods(settings.model.n_positions)
    index = periods.index(circuit.film_period(settings.model.n_positions))
    return lines[min(index * circuit.PROBES_PER_PERIOD, len(lines) - 1)]


def circuit_summary(records: list[dict], context: int) -> dict:
    """The circuit at the end of the run: the previous-token head of layer 0 and the
    induction head (``circuit.circuit_heads``), each with its score (mean over the probed
    periods) at step 0 and at the end, the induction head's per period, and the snapshot at
    which it formed (``circuit.formed_at``) with the loss before and after; ``context``:
    the model's, which says which periods were held out."""
    first, last = records[0], records[-1]
    heads = circuit.circuit_heads(last)
    held_out = set(circuit.held_out_periods(context))
    out = {}
    for kind, (layer, head) in heads.items():
        series = circuit.head_series(records, kind, layer, head)
        out[kind] = {"layer": layer, "head": head, "score_at_step_0": round(series[0], 6),
                     "score": round(series[-1], 6)}
    layer, head = heads["induction"]
    out["induction"]["periods"] = {
        period: {"score_at_step_0": round(scores["induction"][layer][head], 6),
                 "score": round(last["periods"][period]["induction"][layer][head], 6),
                 "trained": int(period) not in held_out}
        for period, scores in first.get("periods", {}).items() if period in last.get("periods", {})}
    formed = circuit.formed_at(records, layer, head)
    out["formed"] = None if formed is None else {
        "step": records[formed]["step"], "from_step": records[max(formed - 1, 0)]["step"],
        "loss_before": records[max(formed - 1, 0)]["loss"], "loss_after": records[formed]["loss"]}
    return out


def summary_document(summary: RunSummary, files: list[Path]) -> dict:
    """The run's JSON summary: the circuit (``circuit_summary``); per scan detector the best
    head at the end (for induction, of layer 1 on) and its score at step 0; the snapshots
    and the files."""

    first, last = summary.records[0], summary.last
    best = {}
    for name in DETECTORS:
        scores = np.array(last["scores"][name], dtype=float)  # (L, H)
        low = induction_from(len(scores)) if name == "induction_head" else 0
        layer, head = np.unravel_index(int(np.nanargmax(scores[low:])), scores[low:].shape)
        layer += low
        best[name] = {"layer": int(layer), "head": int(head), "score": float(scores[layer, head]),
                      "score_at_step_0": float(first["scores"][name][layer][head])}
    return {"out": str(summary.out), "steps": summary.steps, "resumed_from": summary.resumed_from,
            "seconds": round(summary.seconds, 3), "loss": last["loss"],
            "circuit": circuit_summary(summary.records, summary.context), "best": best,
            "snapshots": [str(summary.out / r["snapshot"]) for r in summary.records],
            "files": [str(f) for f in files]}
