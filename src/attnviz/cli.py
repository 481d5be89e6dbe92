"""The ``attnviz`` command line: parse -> call the Python API -> present -> exit code.

Heavy modules (torch, matplotlib) are imported inside the commands that need them, so
``attnviz --help`` and ``attnviz tokens`` start fast. Errors are handled in one place
(``_Group``): ``Error: <what>`` on one line of stderr, exit 2 for bad usage or input,
1 for a failure while running, 130 when interrupted.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Annotated, Literal

import typer
from typer._click.exceptions import (  # Typer >= 0.29 vendors click
    ClickException,
    NoArgsIsHelpError,
    UsageError,
)
from typer.core import TyperGroup

from attnviz import __version__
from attnviz.config import ModelConfig
from attnviz.errors import AttnvizError, InputError
from attnviz.inputs import read_text

_debug = {"on": False}  # set per invocation by _Group.main and --debug


def _error(message: str) -> None:
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While a command runs, SIGTERM behaves like Ctrl-C: temporaries are removed, exit
    code 130. The previous handler comes back afterwards (for in-process callers)."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Group(TyperGroup):
    """Turns every failure into one ``Error:`` line and the right exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ClickException, typer.Exit, typer.Abort):
            raise
        except AttnvizError as exc:
            if _debug["on"]:
                traceback.print_exc()
            _error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _error("interrupted; no partial files were left behind")
            raise typer.Exit(130) from None
        except BrokenPipeError:  # e.g. `attnviz tokens ... | head`
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the final flush
            raise typer.Exit(0) from None
        except Exception as exc:
            if _debug["on"]:
                traceback.print_exc()
            _error(f"unexpected failure: {type(exc).__name__}: {exc} (rerun with --debug "
                   "for the traceback, and please report it)")
            raise typer.Exit(1) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        _debug["on"] = bool(os.environ.get("ATTNVIZ_DEBUG"))  # --debug may turn it on
        try:
            with _sigterm_as_interrupt():
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:  # bare `attnviz`: the help, as a success
            sys.stdout.write(exc.format_message() + "\n")
            code = 0
        except ClickException as exc:  # usage errors: one line, not a boxed panel
            hint = ""
            if isinstance(exc, UsageError) and exc.ctx is not None:
                hint = f" (see '{exc.ctx.command_path} --help')"
            _error(exc.format_message().replace("Value error, ", "") + hint)
            code = exc.exit_code
        except typer.Abort:
            _error("interrupted")
            code = 130
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=_Group,
    name="attnviz",
    help="See what the heads of GPT-2 style causal self-attention attend to: per-head "
    "heatmap PNGs, head statistics, and JSON/CSV for scripts. Runs offline.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=True,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"attnviz {__version__}")
        raise typer.Exit()


def _set_debug(value: bool) -> None:
    if value:
        _debug["on"] = True


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True,
                     help="Show the version and exit."),
    ] = False,
) -> None:
    """See what the heads of GPT-2 style causal self-attention attend to."""


# Options shared by the commands, spelled once.
TextArg = Annotated[
    str | None,
    typer.Argument(help="The text to analyse; '-' reads it from standard input.",
                   show_default=False),
]
FileOpt = Annotated[
    Path | None,
    typer.Option("--file", "-f", help="Read the text from this UTF-8 file.", show_default=False),
]
HeadsOpt = Annotated[int, typer.Option("--heads", min=1, help="Number of attention heads.")]
DModelOpt = Annotated[int, typer.Option("--d-model", min=1, help="Embedding width d_model.")]
ContextOpt = Annotated[
    int, typer.Option("--context-length", min=1, help="Longest text, in tokens.")
]
SeedOpt = Annotated[
    int, typer.Option("--seed", min=0, max=2**63 - 1, help="Seed of the random weights.")
]
QkvBiasOpt = Annotated[
    bool, typer.Option("--qkv-bias/--no-qkv-bias", help="Biases in the query/key/value projections.")
]
ImplOpt = Annotated[
    Literal["fused", "wrapper"],
    typer.Option("--impl",
                 help="MultiHeadAttention (fused) or MultiHeadAttentionWrapper: same numbers."),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option("--weights", metavar="PATH", help="A GPT-2 checkpoint (HF folder, .safetensors file, or a "
                 "model name in the local Hugging Face cache) instead of random weights.",
                 show_default=False),
]
LayerOpt = Annotated[
    str, typer.Option("--layer", metavar="L|all", help="Layer to show (0-based), or 'all' (with --weights).")
]
AllowSpecialOpt = Annotated[
    bool, typer.Option("--allow-special", help="Read <|endoftext|> in the text as the special "
                       "token 50256 (by default it is plain text).")
]
HeadOpt = Annotated[
    list[int] | None,
    typer.Option("--head", min=0, metavar="I", help="A head to draw (repeatable); default: every head.",
                 show_default=False),
]
CmapOpt = Annotated[str, typer.Option("--cmap", help="Matplotlib colormap.")]
DpiOpt = Annotated[int, typer.Option("--dpi", help="Resolution of the PNGs (30-600).")]
ScaleOpt = Annotated[
    Literal["sqrt", "linear"],
    typer.Option("--scale",
                 help="Colour scale of the weights (0..1): sqrt shows small weights better."),
]
FormatOpt = Annotated[
    Literal["table", "json", "csv"],
    typer.Option("--format",
                 help="Output format on stdout."),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print only results: no progress or notes.")
]
DebugOpt = Annotated[
    bool,
    typer.Option("--debug", callback=_set_debug, is_eager=True, expose_value=False,
                 help="Show tracebacks (also ATTNVIZ_DEBUG=1)."),
]


# The random-mode model options, shared by every command that runs the model: a command
# declares `config: ModelOptions = None` and @model_options puts the six options in its
# place and hands it the validated ModelConfig.
ModelOptions = ModelConfig | None
_MODEL_OPTIONS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
    for name, annotation, default in (
        ("heads", HeadsOpt, 12),
        ("d_model", DModelOpt, 768),
        ("context_length", ContextOpt, 1024),
        ("seed", SeedOpt, 123),
        ("qkv_bias", QkvBiasOpt, False),
        ("impl", ImplOpt, "fused"),
    )
]


def model_options(command):
    """Replace the command's ``config`` parameter by the model options (one spelling of
    them for every command); the command receives ``config=ModelConfig(...)``."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != "config"]

    @functools.wraps(command)
    def wrapper(**kwargs):
        sizes = {p.name: kwargs.pop(p.name) for p in _MODEL_OPTIONS}
        changed = [p.name for p in _MODEL_OPTIONS if sizes[p.name] != p.default and p.name != "seed"]
        if kwargs.get("weights") and changed and not kwargs.get("quiet"):
            flags = ", ".join("--" + name.replace("_", "-") for name in changed)
            sys.stderr.write(f"Warning: {flags} ignored: with --weights the checkpoint sets the model\n")
        kwargs["config"] = ModelConfig(
            n_heads=sizes["heads"], d_model=sizes["d_model"], context_length=sizes["context_length"],
            seed=sizes["seed"], qkv_bias=sizes["qkv_bias"], impl=sizes["impl"],
        )
        return command(**kwargs)

    parameters = own + _MODEL_OPTIONS
    wrapper.__signature__ = signature.replace(parameters=parameters)
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper


def _check_out_dir(out: Path) -> None:
    """Fail before any work when ``out`` cannot become a folder of PNGs (it is created
    only when there is something to write)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"--out {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--out {out} is not writable; choose another folder with --out")


@app.command()
@model_options
def heatmap(
    text: TextArg = None,
    file: FileOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs.")] = Path(
        "attnviz-out"
    ),
    head: HeadOpt = None,
    cmap: CmapOpt = "viridis",
    dpi: DpiOpt = 100,
    scale: ScaleOpt = "sqrt",
    config: ModelOptions = None,
    weights: WeightsOpt = None,
    layer: LayerOpt = "0",
    allow_special: AllowSpecialOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write one heatmap PNG per head (head_00.png ...) and an overview grid (heads.png)."""
    from attnviz.output import Output

    output = Output("json" if as_json else "table", quiet)
    source = read_text(text, file)
    from attnviz import plot

    plot.check_cmap(cmap)
    plot.check_dpi(dpi)
    _check_out_dir(out)
    from attnviz.analysis import analyze

    result = analyze(source, config, weights=weights, layer=layer, allow_special=allow_special,
                     heads=head)
    output.message(f"Drawing {result.n_tokens} tokens × {result.n_heads} heads…")
    files = plot.write_heatmaps(result, out, heads=head, cmap=cmap, dpi=dpi, scale=scale)
    rows = [{"file": str(f.path), "layer": f.layer, "head": f.head} for f in files]
    document = {"files": [r["file"] for r in rows], "tokens": result.tokens(),
                "config": result.config}
    if as_json:
        output.json(document)
        return
    output.table(rows, ["file", "layer", "head"], title=f"Wrote {len(rows)} PNGs to {out}")
    output.mapping(_config_summary(result.config), title="Model")


def _config_summary(config: dict) -> dict:
    keys = ("mode", "weights", "n_heads", "d_model", "head_dim", "context_length", "seed",
            "qkv_bias", "impl", "layers")
    return {k: config[k] for k in keys if k in config}


@app.command()
def tokens(
    text: TextArg = None,
    file: FileOpt = None,
    allow_special: AllowSpecialOpt = False,
    fmt: FormatOpt = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show the GPT-2 tokenization: position, id, text (visible whitespace), bytes."""
    from attnviz.analysis import token_records
    from attnviz.output import Output
    from attnviz.tokenizer import encode, token_bytes

    output = Output(fmt, quiet)
    token_ids = encode(read_text(text, file), allow_special=allow_special)
    records = token_records(token_ids, token_bytes(token_ids))
    output.emit({"tokens": records}, records, ["position", "id", "label", "bytes"]
                if fmt == "table" else ["position", "id", "text", "label", "bytes"],
                title=f"{len(records)} GPT-2 tokens")


def _check_file_target(path: Path, option: str) -> None:
    """Fail before any work when ``path`` cannot be written."""
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise InputError(f"{option} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: the folder {parent} is not writable")


@app.command("compare-heads")
@model_options
def compare_heads(
    text: TextArg = None,
    file: FileOpt = None,
    sort_by: Annotated[str | None, typer.Option("--sort-by", help="Column to sort by: head, "
                       "layer, entropy, normalized_entropy, max_weight, self, previous_token, "
                       "first_token, mean_distance (or induction). Default: layer, head.",
                       show_default=False)] = None,
    desc: Annotated[bool, typer.Option("--desc", help="Sort in descending order.")] = False,
    similarity: Annotated[bool, typer.Option("--similarity", help="Add the head x head "
                          "Jensen-Shannon divergence matrix.")] = False,
    induction: Annotated[bool, typer.Option("--induction", help="Add each head's induction "
                         "score (meaningful with --weights).")] = False,
    plot_path: Annotated[Path | None, typer.Option("--plot", help="Write the --head heads "
                         "(default 0 and 1) side by side to this PNG.", show_default=False)] = None,
    similarity_plot: Annotated[Path | None, typer.Option("--similarity-plot", help="Write "
                               "the similarity matrix to this PNG.", show_default=False)] = None,
    head: HeadOpt = None,
    cmap: CmapOpt = "viridis",
    dpi: DpiOpt = 100,
    scale: ScaleOpt = "sqrt",
    config: ModelOptions = None,
    weights: WeightsOpt = None,
    layer: LayerOpt = "0",
    allow_special: AllowSpecialOpt = False,
    fmt: FormatOpt = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compare the heads: entropy, focus, self / previous / first-token attention, distance."""
    from attnviz.output import Output
    from attnviz.stats import COLUMNS

    output = Output(fmt, quiet)
    columns = ["layer", "head", *COLUMNS] + (["induction"] if induction else [])
    if sort_by is not None and sort_by not in columns:
        raise InputError(f"--sort-by {sort_by!r} is not a column; choose one of "
                         f"{', '.join(columns)}")
    source = read_text(text, file)
    if plot_path or similarity_plot:
        from attnviz import plot

        plot.check_cmap(cmap)
        plot.check_dpi(dpi)
        for path, option in ((plot_path, "--plot"), (similarity_plot, "--similarity-plot")):
            if path:
                _check_file_target(path, option)
    from attnviz.analysis import analyze, induction_scores
    from attnviz.output import sort_rows
    from attnviz.stats import head_rows
    from attnviz.stats import similarity as js_matrix

    result = analyze(source, config, weights=weights, layer=layer, allow_special=allow_special,
                     heads=head)
    plot_heads = list(dict.fromkeys(head)) if head else list(range(min(2, result.n_heads)))
    rows = head_rows(result.weights, result.layers)
    if induction:
        output.message("Scoring induction on a repeated random sequence…")
        scores = induction_scores(config, weights=weights, layer=layer, seed=config.seed)
        for row, score in zip(rows, scores.reshape(-1)):
            row["induction"] = float(score)
    rows = sort_rows(rows, sort_by, desc)
    document = {"heads": rows, "tokens": result.tokens(), "config": result.config}
    matrices = [js_matrix(w) for w in result.weights] if similarity or similarity_plot else []
    if similarity:
        document["similarity"] = matrices[0] if len(matrices) == 1 else matrices
    files = []
    if plot_path:
        from attnviz import plot

        figure = plot.HeatmapFigure(result.token_labels, len(plot_heads), cmap, dpi, scale)
        where = f"layer {result.layers[0]}, " if result.config["mode"] == "pretrained" else ""
        figure.save(plot_path, [result.weights[0, h] for h in plot_heads],
                    [f"{where}head {h}" for h in plot_heads])
        files.append(str(plot_path))
    if similarity_plot:
        from attnviz import plot

        plot.save_similarity(similarity_plot, matrices[0],
                             f"Head similarity (JS divergence), layer {result.layers[0]}", dpi)
        files.append(str(similarity_plot))
    if files:
        document["files"] = files
    shown = columns if len(result.layers) > 1 or result.config["mode"] == "pretrained" else columns[1:]
    if fmt == "csv" and similarity:
        shown = shown + [f"js_{h}" for h in range(result.n_heads)]
        for row in rows:
            matrix = matrices[result.layers.index(row["layer"])]
            row.update({f"js_{g}": float(matrix[row["head"], g]) for g in range(result.n_heads)})
    styles = {}
    if fmt == "table":
        focused = min(range(len(rows)), key=lambda i: rows[i]["entropy"])
        broadest = max(range(len(rows)), key=lambda i: rows[i]["entropy"])
        styles = {focused: "bold green", broadest: "yellow"}
    output.emit(document, rows, shown, title=f"Head statistics, {result.n_tokens} tokens", styles=styles)
    if fmt != "table":
        return
    name = lambda r: (f"layer {r['layer']} " if len(result.layers) > 1 else "") + f"head {r['head']}"  # noqa: E731
    output.stdout.print(f"most focused: {name(rows[focused])} (lowest entropy, "
                        f"{rows[focused]['entropy']:.3f} nats); broadest: {name(rows[broadest])} "
                        f"({rows[broadest]['entropy']:.3f} nats)", markup=False)
    if similarity:
        for layer_index, matrix in zip(result.layers, matrices):
            sim_rows = [{"head": h, **{str(g): float(matrix[h, g]) for g in range(len(matrix))}}
                        for h in range(len(matrix))]
            output.table(sim_rows, ["head", *map(str, range(len(matrix)))],
                         title=f"Jensen-Shannon divergence between heads (bits), layer {layer_index}")
    for f in files:
        output.message(f"Wrote {f}")


@app.command()
@model_options
def export(
    text: TextArg = None,
    file: FileOpt = None,
    output_path: Annotated[Path, typer.Option("--output", "-o", help="The .npz file to write.",
                           show_default=False)] = ...,
    include_params: Annotated[bool, typer.Option("--include-params", help="Also export the "
                              "attention input and the query/key/value weights.")] = False,
    config: ModelOptions = None,
    weights: WeightsOpt = None,
    layer: LayerOpt = "0",
    allow_special: AllowSpecialOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Save the attention weights (and optionally the inputs and parameters) as .npz."""
    import numpy as np

    from attnviz.fileio import atomic_write
    from attnviz.output import Output

    output = Output("table", quiet)
    source = read_text(text, file)
    _check_file_target(output_path, "--output")
    from attnviz.analysis import analyze

    result = analyze(source, config, weights=weights, layer=layer, allow_special=allow_special)
    single = str(layer).strip().lower() != "all"
    pick = (lambda a: a[0]) if single else (lambda a: a)  # noqa: E731
    arrays = {
        "weights": pick(result.weights).astype(np.float32),
        "token_ids": np.asarray(result.token_ids, dtype=np.int64),
        "tokens": np.asarray([t["text"] for t in result.tokens()], dtype=str),
        "layers": np.asarray(result.layers, dtype=np.int64),
    }
    if include_params:
        arrays["attn_input"] = pick(result.attn_inputs)
        arrays.update({name: pick(value) for name, value in result.params.items()})
    with atomic_write(output_path) as f:
        np.savez(f, **arrays)
    rows = [{"array": k, "shape": "x".join(map(str, v.shape)) or "scalar", "dtype": str(v.dtype)}
            for k, v in arrays.items()]
    output.table(rows, ["array", "shape", "dtype"], title=f"Wrote {output_path}")


@app.command()
@model_options
def info(
    config: ModelOptions = None,
    weights: WeightsOpt = None,
    fmt: FormatOpt = "table",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show the model configuration, parameter counts, versions and tokenizer data."""
    import platform
    from importlib.metadata import version

    from attnviz import tokenizer
    from attnviz.output import Output

    output = Output(fmt, quiet)
    if weights is None:
        from attnviz.model import RandomModel

        model_info = RandomModel(config, mask_length=1).describe()
    else:
        from attnviz import checkpoint

        model_info = checkpoint.load(weights).describe()
    document = {
        "config": model_info,
        "versions": {name: version(name) for name in ("attnviz", "torch", "tiktoken",
                                                       "matplotlib", "typer", "rich", "numpy")}
        | {"python": platform.python_version()},
        "tokenizer": {"data": str(tokenizer.bpe_data_dir()),
                      "cache": str(tokenizer.cache_file())},
    }
    rows = [{"key": f"{section}.{k}" if fmt == "csv" else k, "value": v}
            for section, values in document.items() for k, v in values.items()]
    if fmt == "table":
        for section, values in document.items():
            output.mapping(values, title=section.capitalize())
    else:
        output.emit(document, rows, ["key", "value"])


def main() -> None:
    app()
