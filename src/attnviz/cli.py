"""The ``attnviz`` command line: parse -> call the Python API -> present -> exit code.

Heavy modules (torch, matplotlib) are imported inside the commands that need them, so
``attnviz --help`` and ``attnviz tokens`` start fast. Errors are handled in one place
(``_Group``): ``Error: <what>`` on one line of stderr, exit 2 for bad usage or input,
1 for a failure while running, 130 when interrupted.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Annotated, Literal, Optional

import click
import typer
from typer.core import TyperGroup

from attnviz import __version__
from attnviz.errors import AttnvizError, InputError

_debug = {"on": bool(os.environ.get("ATTNVIZ_DEBUG"))}


def _error(message: str) -> None:
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()


class _Group(TyperGroup):
    """Turns every failure into one ``Error:`` line and the right exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except AttnvizError as exc:
            if _debug["on"]:
                traceback.print_exc()
            _error(str(exc))
            raise click.exceptions.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _error("interrupted; no partial files were left behind")
            raise click.exceptions.Exit(130) from None
        except BrokenPipeError:  # e.g. `attnviz tokens ... | head`
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the final flush
            raise click.exceptions.Exit(0) from None
        except Exception as exc:
            if _debug["on"]:
                traceback.print_exc()
            _error(f"unexpected failure: {type(exc).__name__}: {exc} (rerun with --debug "
                   "for the traceback, and please report it)")
            raise click.exceptions.Exit(1) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:  # usage errors: one line, not a boxed panel
            hint = ""
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                hint = f" (see '{exc.ctx.command_path} --help')"
            _error(exc.format_message() + hint)
            code = exc.exit_code
        except click.Abort:
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
    Optional[str],
    typer.Argument(help="The text to analyse; '-' reads it from standard input.",
                   show_default=False),
]
FileOpt = Annotated[
    Optional[Path],
    typer.Option("--file", "-f", help="Read the text from this UTF-8 file.", show_default=False),
]
HeadsOpt = Annotated[int, typer.Option("--heads", min=1, help="Number of attention heads.")]
DModelOpt = Annotated[int, typer.Option("--d-model", min=1, help="Embedding width d_model.")]
ContextOpt = Annotated[
    int, typer.Option("--context-length", min=1, help="Longest text, in tokens.")
]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, help="Seed of the random weights.")]
QkvBiasOpt = Annotated[
    bool, typer.Option("--qkv-bias/--no-qkv-bias", help="Biases in the query/key/value projections.")
]
ImplOpt = Annotated[
    Literal["fused", "wrapper"],
    typer.Option("--impl",
                 help="MultiHeadAttention (fused) or MultiHeadAttentionWrapper: same numbers."),
]
WeightsOpt = Annotated[
    Optional[str],
    typer.Option("--weights", help="A GPT-2 checkpoint (HF folder, .safetensors file, or a "
                 "model name in the local Hugging Face cache) instead of random weights.",
                 show_default=False),
]
LayerOpt = Annotated[
    str, typer.Option("--layer", help="Layer to show (0-based), or 'all' (with --weights).")
]
AllowSpecialOpt = Annotated[
    bool, typer.Option("--allow-special", help="Read <|endoftext|> in the text as the special "
                       "token 50256 (by default it is plain text).")
]
HeadOpt = Annotated[
    Optional[list[int]],
    typer.Option("--head", min=0, help="A head to draw (repeatable); default: every head.",
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


def _install_sigterm() -> None:
    """SIGTERM behaves like Ctrl-C: temporaries are removed, exit code 130."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    if hasattr(signal, "SIGTERM"):
        try:
            signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread (e.g. some test runners)
            pass


def _model_config(heads, d_model, context_length, seed, qkv_bias, impl):
    from attnviz.config import ModelConfig

    return ModelConfig(n_heads=heads, d_model=d_model, context_length=context_length,
                       seed=seed, qkv_bias=qkv_bias, impl=impl)


def _prepare_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create --out {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"--out {out} is not writable; choose another folder with --out")


@app.command()
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
    heads: HeadsOpt = 12,
    d_model: DModelOpt = 768,
    context_length: ContextOpt = 1024,
    seed: SeedOpt = 123,
    qkv_bias: QkvBiasOpt = False,
    impl: ImplOpt = "fused",
    weights: WeightsOpt = None,
    layer: LayerOpt = "0",
    allow_special: AllowSpecialOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write one heatmap PNG per head (head_00.png ...) and an overview grid (heads.png)."""
    from attnviz.output import Output

    _install_sigterm()
    output = Output("json" if as_json else "table", quiet)
    source = _read(text, file)
    config = _model_config(heads, d_model, context_length, seed, qkv_bias, impl)
    from attnviz import plot

    plot.check_cmap(cmap)
    plot.check_dpi(dpi)
    _prepare_out_dir(out)
    from attnviz.analysis import analyze

    output.message("Running the attention model…")
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


def _read(text, file) -> str:
    from attnviz.inputs import read_text

    return read_text(text, file)


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
    token_ids = encode(_read(text, file), allow_special=allow_special)
    records = token_records(token_ids, token_bytes(token_ids))
    output.emit({"tokens": records}, records, ["position", "id", "label", "bytes"]
                if fmt == "table" else ["position", "id", "text", "label", "bytes"],
                title=f"{len(records)} GPT-2 tokens")


def main() -> None:
    app()
