"""The options shared by the commands, spelled once (huggingface_hub's ``hf`` style), and
the checks every command makes before it does any work."""

from __future__ import annotations

import functools
import inspect
import os
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from attnviz.cli.app import set_debug
from attnviz.config import ModelConfig
from attnviz.errors import InputError

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
    typer.Option("--debug", callback=set_debug, is_eager=True, expose_value=False,
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


def check_out_dir(out: Path) -> None:
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


def check_file_target(path: Path, option: str) -> None:
    """Fail before any work when ``path`` cannot be written."""
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise InputError(f"{option} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: the folder {parent} is not writable")


