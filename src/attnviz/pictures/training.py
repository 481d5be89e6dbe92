"""The pictures of ``attnviz train``: the film of the induction circuit's two heads on one
probe at every snapshot (GIF, APNG, or MP4 through ffmpeg), and the detector scores of
every head against the training step (matplotlib without pyplot; files written atomically).

    write_film(frames, labels, records, DIR / "heads.gif")   # frames: (L, H, T, T) per snapshot
    write_detector_chart(records, DIR / "detectors.png")
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnviz.analyses import circuit
from attnviz.analyses.attention import analyze
from attnviz.analyses.detectors import DETECTORS
from attnviz.analyses.train_run import FILM_FORMATS, FILM_NAMES, RunSettings, film_probe
from attnviz.core.errors import AttnvizError, InputError
from attnviz.files.fileio import atomic_write, write_bytes
from attnviz.pictures.scan import figure_png

FRAME_MS, LAST_FRAME_MS = 300, 2500
LABEL_FONT = 8.0  # points: the heads' token labels, or their position numbers


def check_film_format(fmt: str) -> str:
    """The film's file name for ``fmt``; refused before any training when its writer is
    missing (mp4 needs ffmpeg on PATH)."""
    if fmt not in FILM_FORMATS:
        raise InputError(f"--film-format must be one of {', '.join(FILM_FORMATS)}, got {fmt!r}")
    if fmt == "mp4" and shutil.which("ffmpeg") is None:
        raise InputError("--film-format mp4 needs ffmpeg on PATH (not found); use gif or apng")
    return FILM_FORMATS[fmt]


def _figure(width: float, height: float, dpi: int):
    from attnviz.pictures.images import new_figure  # matplotlib: only once a picture is drawn

    return new_figure(width, height, dpi)[0]


def film_frames(frames: Sequence[np.ndarray], labels: list[str], records: Sequence[dict],
                dpi: int = 100, context: int | None = None, caption: str = "",
                scale: str = "sqrt"):
    """One RGB image (``(h, w, 3)`` uint8) per snapshot: the circuit's two heads side by
    side on the probe (the layer-0 previous-token head and the induction head, chosen at
    the end of the run, ``circuit.circuit_heads``), and under them the loss, the
    previous-token head's score and the induction head's score at every probed period
    (dashed: periods the training never used) up to that step, with the snapshots where
    the circuit forms shaded once they are reached. ``context``: the model's (which
    periods were held out; default twice the longest probed period); ``caption``: what the
    probe is, under the step; ``scale``: the weights' colour scale, √ as in every other
    picture. One figure is drawn once and its images updated, so every frame has the same
    layout."""
    from attnviz.pictures.colours import colorbar, make_norm, weight_colormap

    heads = circuit.circuit_heads(records[-1])
    (l0, h0), (l1, h1) = heads["previous_token"], heads["induction"]
    periods = [p for p in records[0].get("periods", {}) if p in records[-1].get("periods", {})]
    context = context or 2 * max((int(p) for p in periods), default=0)
    held_out = {str(p) for p in circuit.held_out_periods(context)}
    n = frames[0].shape[-1]
    fig = _figure(11.5, 9.2, dpi)  # heads large enough for 8 pt labels of the 30-token probe
    grid = fig.add_gridspec(2, 3, height_ratios=[4.4, 2.2], width_ratios=[1, 1, 0.05],
                            left=0.09, right=0.9, top=0.87, bottom=0.14, hspace=0.32, wspace=0.3)
    colormap, _ = weight_colormap("viridis")
    norm = make_norm(scale)
    future = ~np.tri(n, dtype=bool)  # (T, T): the keys after each query
    images, titles = [], []
    for column, (layer, head) in enumerate(((l0, h0), (l1, h1))):
        ax = fig.add_subplot(grid[0, column])
        image = ax.imshow(np.ma.masked_array(frames[0][layer, head], future), cmap=colormap,
                          norm=norm, interpolation="nearest")
        images.append((image, layer, head))
        titles.append(ax.set_title("", fontsize=9))
        if column == 0:  # the panel's size once its aspect is applied: the cells' pitch
            ax.apply_aspect()
            side_pt = ax.get_position().height * fig.get_figheight() * 72
            ticks, names, show_labels = film_ticks(labels, side_pt / n)
        ax.set_xticks(ticks, names, rotation=90 if show_labels else 0, fontsize=LABEL_FONT)
        ax.set_yticks(ticks, names, fontsize=LABEL_FONT)
        ax.tick_params(length=0)
        ax.set_xlabel("key (attended to)", fontsize=8)
        if column == 0:
            ax.set_ylabel("query (attending)", fontsize=8)
    colorbar(fig, fig.add_subplot(grid[0, 2]), norm, colormap)

    curve = fig.add_subplot(grid[1, :2])
    steps = [r["step"] for r in records]
    losses = [r["loss"] for r in records]
    (loss_line,) = curve.plot(steps, losses, color="tab:blue", lw=1.6, label="loss")
    curve.set_xlim(steps[0] - 0.02 * (steps[-1] - steps[0] or 1), steps[-1] * 1.02 or 1)
    curve.set_ylim(0, max(losses) * 1.05)
    curve.set_ylabel("loss", color="tab:blue", fontsize=8)
    curve.set_xlabel("training step", fontsize=8)
    curve.tick_params(labelsize=7)
    scores = curve.twinx()
    scores.set_ylim(0, 1.02)
    scores.set_ylabel("weight on the target", fontsize=8)
    scores.tick_params(labelsize=7)
    series = [(circuit.head_series(records, "previous_token", l0, h0),
               dict(color="tab:green", lw=1.6, label=f"L{l0} H{h0} previous token"))]
    for period in periods:
        dashed = period in held_out
        series.append((circuit.head_series(records, "induction", l1, h1, period),
                       dict(color="tab:orange", lw=0.9, alpha=0.75, ls="--" if dashed else "-")))
    series[1][1]["label"] = (f"L{l1} H{h1} induction, one line per period"
                             + (" (dashed: never trained)" if held_out & set(periods) else ""))
    lines = [(scores.plot(steps, values, **style)[0], values) for values, style in series]
    handles = [loss_line] + [line for line, _ in lines[:2]]
    curve.legend(handles, [h.get_label() for h in handles], fontsize=7, ncols=3,
                 loc="upper center", bbox_to_anchor=(0.5, -0.3), frameon=False)
    formed = circuit.formed_at(list(records), l1, h1)
    band = None
    if formed is not None:
        band = curve.axvspan(steps[max(formed - 1, 0)], steps[formed], color="0.5", alpha=0.2,
                             lw=0)
        band.set_visible(False)
        band_label = curve.text((steps[max(formed - 1, 0)] + steps[formed]) / 2, 1.02,
                                "the circuit forms", fontsize=7, color="0.3", ha="center",
                                va="bottom", transform=curve.get_xaxis_transform())
        band_label.set_visible(False)
    marker = curve.axvline(steps[0], color="0.3", lw=1, ls="--")
    heading = fig.suptitle("", fontsize=11)
    n_periods = len(periods)
    for i, (weights, record) in enumerate(zip(frames, records)):
        loss_line.set_data(steps[: i + 1], losses[: i + 1])  # the curves so far
        for line, values in lines:
            line.set_data(steps[: i + 1], values[: i + 1])
        for image, layer, head in images:
            image.set_data(np.ma.masked_array(weights[layer, head], future))
        previous = circuit.mean_over_periods(record, "previous_token")[l0, h0]
        induction = circuit.mean_over_periods(record, "induction")[l1, h1]
        titles[0].set_text(f"L{l0} H{h0}: the previous-token head\n"
                           f"weight on the token before: {previous:.2f}")
        titles[1].set_text(f"L{l1} H{h1}: the induction head\nweight on the token after the "
                           f"previous occurrence: {induction:.2f} (mean of {n_periods} periods)")
        if band is not None:
            band.set_visible(i >= formed)
            band_label.set_visible(i >= formed)
        marker.set_xdata([record["step"]])
        heading.set_text(f"step {record['step']:,}   ·   loss {record['loss']:.3f}"
                         + (f"\n{caption}" if caption else ""))
        fig.canvas.draw()
        yield np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def film_ticks(labels: Sequence[str], pitch: float) -> tuple[list[int], list[str], bool]:
    """(positions, their labels, whether they are tokens) along a film panel whose cells
    are ``pitch`` points apart: every token's label when LABEL_FONT fits a cell, else
    position numbers at a round step (1, 2, 5, 10, ...) whose labels do not touch."""
    n = len(labels)
    if pitch >= LABEL_FONT * 1.1:
        return list(range(n)), list(labels), True
    step = next(s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10**9)
                if s * pitch >= LABEL_FONT * 0.6 * len(str(n)) + LABEL_FONT * 0.8)
    return list(range(0, n, step)), [str(i) for i in range(0, n, step)], False


def write_film(frames: Sequence[np.ndarray], labels: list[str], records: Sequence[dict],
               path: Path, dpi: int = 100, progress=None, context: int | None = None,
               caption: str = "") -> Path:
    """The film at ``path``; its format from the name (``FILM_FORMATS``). ``progress``:
    an ``attnviz.files.progress`` callback, told of every frame drawn; ``context`` and
    ``caption`` as ``film_frames``."""
    from PIL import Image

    path = Path(path)
    pictures = []
    for picture in film_frames(frames, labels, records, dpi, context, caption):
        pictures.append(picture)
        if progress is not None:
            progress("Drawing the film", len(pictures), len(frames))
    if path.suffix == ".mp4":
        _write_mp4(pictures, path)
        return path
    images = [Image.fromarray(p) for p in pictures]
    durations = [FRAME_MS] * (len(images) - 1) + [LAST_FRAME_MS]
    kind = "GIF" if path.suffix == ".gif" else "PNG"
    with atomic_write(path) as f:
        images[0].save(f, format=kind, save_all=True, append_images=images[1:],
                       duration=durations, loop=0, **({"optimize": False} if kind == "GIF" else {}))
    return path


def _write_mp4(pictures: list[np.ndarray], path: Path) -> None:
    height, width, _ = pictures[0].shape
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    command = ["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-r", str(1000 / FRAME_MS), "-i", "-",
               "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-pix_fmt", "yuv420p", str(tmp)]
    hold = max(1, round(LAST_FRAME_MS / FRAME_MS))
    data = b"".join(p.tobytes() for p in pictures) + pictures[-1].tobytes() * (hold - 1)
    try:
        done = subprocess.run(command, input=data, capture_output=True)
        if done.returncode != 0:
            raise AttnvizError(f"ffmpeg could not write {path}: "
                               f"{done.stderr.decode(errors='replace').strip()[:300]}")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_detector_chart(records: Sequence[dict], path: Path, dpi: int = 100) -> Path:
    """``path``: the loss and, per detector, every head's score against the step (one
    colour per head, the same in every panel; layers told apart by line style)."""
    from matplotlib import colormaps

    steps = [r["step"] for r in records]
    n_layers = len(records[0]["scores"]["induction_head"])
    n_heads = len(records[0]["scores"]["induction_head"][0])
    fig = _figure(11, 7.5, dpi)
    fig.set_layout_engine("constrained")
    axes = fig.subplots(2, 2)
    loss = axes[0, 0]
    loss.plot(steps, [r["loss"] for r in records], color="black", lw=1.3)
    if min(r["loss"] for r in records) > 0:
        from matplotlib.ticker import FuncFormatter

        loss.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.1, 1, 6: not 10^-1
        loss.yaxis.set_major_formatter(plain)
        loss.yaxis.set_minor_formatter(plain)
    loss.set_title("training loss")
    palette = colormaps["tab10" if n_heads <= 10 else "tab20"]
    styles = ["-", "--", ":", "-."]
    for ax, detector in zip(axes.flat[1:], DETECTORS):
        values = np.array([r["scores"][detector] for r in records], dtype=float)  # (S, L, H)
        for layer in range(n_layers):
            for head in range(n_heads):
                ax.plot(steps, values[:, layer, head], color=palette(head % palette.N),
                        ls=styles[layer % len(styles)], lw=1.3,
                        label=f"L{layer} H{head}" if n_layers * n_heads <= 24 else None)
        ax.set_ylim(0, 1)
        ax.set_title(detector.replace("_", " ") + " score (on the probes)")
    for ax in axes.flat:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    if n_layers * n_heads <= 24:
        axes[1, 1].legend(fontsize=8, ncols=max(1, n_layers), loc="upper left")
    fig.suptitle("Heads through training")
    write_bytes(path, figure_png(fig))
    return path


def write_run_pictures(out: Path, settings: RunSettings, records: list[dict], film_name: str,
                   dpi: int = 100, progress=None) -> list[Path]:
    """The film (every snapshot's attention on the probe, read back from the snapshot
    folders, so a resumed run's film has every step) and detectors.png."""
    probe = film_probe(out, settings)
    frames, labels = [], []
    for done, record in enumerate(records, start=1):
        result = analyze(probe, weights=str(out / record["snapshot"]), layer="all")
        frames.append(result.weights)  # (L, H, T, T)
        labels = result.token_labels
        if progress is not None:
            progress("Reading snapshots", done, len(records))
    for name in FILM_NAMES:  # an earlier film of another format is not this run's
        if name != film_name:
            (out / name).unlink(missing_ok=True)
    return [write_film(frames, labels, records, out / film_name, dpi=dpi, progress=progress,
                       context=settings.model.n_positions, caption=_caption(settings)),
            write_detector_chart(records, out / "detectors.png", dpi=dpi)]


def _caption(settings: RunSettings) -> str:
    """What the film's probe is (nothing for --probe: the user knows)."""
    if settings.probe is not None:
        return ""
    period = circuit.film_period(settings.model.n_positions)
    never = period in circuit.held_out_periods(settings.model.n_positions)
    what = "pieces of the text" if settings.task == "text" else "random tokens"
    return (f"the probe: {period} {what} repeated twice (period {period}"
            + (", a period the training never used)" if never else ")"))
