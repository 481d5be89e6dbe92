"""The options shared by the commands, spelled once (huggingface_hub's ``hf`` style), and
the checks every command makes before it does any work."""

from __future__ import annotations

import functools
import inspect
import os
import sys
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Literal

import typer
from typer._click.core import ParameterSource  # Typer >= 0.29 vendors click

from attnviz.cli.app import set_debug
from attnviz.core.config import ModelConfig, config_for
from attnviz.core.errors import AttnvizWarning, InputError

TextArg = Annotated[
    str | None,
    typer.Argument(help="The text to analyse; '-' reads it from standard input.",
                   show_default=False),
]
FileOpt = Annotated[
    Path | None,
    typer.Option("--file", "-f", metavar="FILE",
                 help="Read the text from this UTF-8 file ('-': standard input).",
                 show_default=False),
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
    typer.Option("--weights", metavar="PATH|REPO", help="Real weights instead of random ones: a "
                 "GPT-2 checkpoint folder, .safetensors file, the book's GPTModel .pth, or a "
                 "Hugging Face repo id (gpt2, gpt2-medium, org/name@revision; downloaded once, "
                 "then read from the cache).", show_default=False),
]
LayerOpt = Annotated[
    list[str] | None,
    typer.Option("--layer", metavar="L|L,M|all", help="Layer(s) to show (0-based): a number, a "
                 "list (3,5 or a repeated --layer) or 'all'.  [default: 0]", show_default=False),
]
PresetOpt = Annotated[
    str | None,
    typer.Option("--preset", metavar="NAME",
                 help="Random mode: the sizes of gpt2, gpt2-medium, gpt2-large or gpt2-xl (heads, "
                 "d_model, context; explicit options win). With --weights, a state dict of the "
                 "book's classes: its published config (llama3.2-1b, llama3.2-3b, qwen3-0.6b, "
                 "qwen3-1.7b, gemma3-270m).", show_default=False),
]
OfflineOpt = Annotated[
    bool, typer.Option("--offline", help="Never use the network: a repo id must be in the local "
                       "Hugging Face cache (also HF_HUB_OFFLINE=1).")
]
DeviceOpt = Annotated[
    str, typer.Option("--device", metavar="cpu|cuda|auto", help="Where the forward pass runs.")
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", min=1, metavar="N", help="CPU threads for the forward pass "
                 "(torch.set_num_threads; default: torch's choice, one per core).",
                 show_default=False),
]
AllowSpecialOpt = Annotated[
    bool, typer.Option("--allow-special", help="Read special-token strings in the text "
                       "(<|endoftext|>, <|begin_of_text|>, <s> …) as the special tokens they name "
                       "(by default they are plain text).")
]
TokenizerOpt = Annotated[
    Path | None,
    typer.Option("--tokenizer", metavar="PATH", help="The tokenizer for --weights: a "
                 "tokenizer.json, Llama 3's tokenizer.model, or a folder holding one (default: "
                 "the checkpoint's own; GPT-2's built in).", show_default=False),
]
BookConfigOpt = Annotated[
    Path | None,
    typer.Option("--book-config", metavar="FILE.json", help="For a state dict of the book's "
                 "Llama3Model, Qwen3Model or Gemma3Model: its configuration dict saved as JSON "
                 "(the book's keys: emb_dim, n_heads, n_kv_groups, rope_base …).", show_default=False),
]
BosOpt = Annotated[
    bool, typer.Option("--bos/--no-bos", help="Prepend the beginning-of-sequence token the "
                       "model's tokenizer adds (Llama's <|begin_of_text|>; Qwen and GPT-2 add none).")
]
ChatOpt = Annotated[
    bool, typer.Option("--chat", help="Wrap the text as one user message in the model's chat "
                       "template, with the prompt for its answer (instruct models; the template "
                       "of its tokenizer_config.json or GGUF file).")
]
HeadOpt = Annotated[
    list[int] | None,
    typer.Option("--head", min=0, metavar="I", help="A head to draw (repeatable); default: every head.",
                 show_default=False),
]
BidirectionalOpt = Annotated[
    bool, typer.Option("--bidirectional", help="Random mode: self-attention without the causal "
                       "mask (the book's SelfAttention): every query sees every key.")
]
CrossOpt = Annotated[
    str | None,
    typer.Option("--cross", metavar="TEXT", help="Random mode: cross-attention from the text to "
                 "this second text, whose tokens are the keys and values (a CrossAttention "
                 "module); rectangular heatmaps, the text's tokens down the side.",
                 show_default=False),
]
CrossDInOpt = Annotated[
    int | None,
    typer.Option("--cross-d-in", min=1, metavar="N", help="With --cross: the width of the second "
                 "input, another modality's (default: --d-model).", show_default=False),
]
PairOpt = Annotated[
    str | None,
    typer.Option("--pair", metavar="TEXT", help="An encoder model (BERT, RoBERTa, DistilBERT, "
                 "ModernBERT): a second sentence, encoded with the text as a sentence pair "
                 "(token type ids where the model has them); the pictures mark the boundary.",
                 show_default=False),
]


def second_text(config: ModelConfig, weights: str | None, *, bidirectional: bool = False,
                cross: str | None = None, cross_d_in: int | None = None,
                pair: str | None = None) -> tuple[ModelConfig, dict]:
    """``--bidirectional``, ``--cross``, ``--cross-d-in`` and ``--pair`` checked together
    before any work: the config that runs them and ``{"pair": ..., "cross": ...}`` for
    ``analyze_text``."""
    from dataclasses import replace

    if weights is not None:
        if bidirectional:
            raise InputError("--bidirectional is random mode's: an encoder checkpoint (BERT, "
                             "RoBERTa, ModernBERT) is bidirectional by itself, and a decoder's "
                             "causal mask is part of the model; drop --bidirectional")
        if cross is not None:
            raise InputError("--cross is random mode's cross-attention module: drop --weights, "
                             "or --cross")
    elif pair is not None:
        raise InputError("--pair encodes a sentence pair for an encoder model: add --weights "
                         "(bert-base-uncased, roberta-base, a folder …)")
    if cross_d_in is not None and cross is None:
        raise InputError("--cross-d-in is the width of --cross's second input: add --cross TEXT")
    if cross is not None and bidirectional:
        raise InputError("--cross has no causal mask to remove: give --cross or --bidirectional")
    if cross is not None and pair is not None:
        raise InputError("--pair and --cross both give a second text: give one of them")
    config = replace(config, bidirectional=bidirectional, cross_d_in=cross_d_in)
    return config, {"pair": pair, "cross": cross}


def _check_tokens(value: str | None) -> str | None:
    if value is not None:
        from attnviz.analyses.attention import check_window_syntax

        check_window_syntax(value)
    return value


TokensOpt = Annotated[
    str | None,
    typer.Option("--tokens", metavar="A:B", callback=_check_tokens, help="Show only queries and "
                 "keys A..B-1 (Python slice syntax: 0:20, 5:, -20:) of the attention computed on "
                 "the whole text; positions stay absolute, and statistics use the cropped rows "
                 "as they are (they sum to less than 1 when keys before A are cut).",
                 show_default=False),
]
AttentionOpt = Annotated[
    str | None,
    typer.Option("--attention", metavar="encoder|decoder|cross|all", help="Which attention: an "
                 "encoder's self-attention (bidirectional), a decoder's (causal), cross-attention "
                 "(decoder queries over the encoder's keys), or all the model has (the default; "
                 "an encoder–decoder has all three; compare-heads and steps show one kind, by default "
                 "cross).",
                 show_default=False),
]
DecoderTextOpt = Annotated[
    str | None,
    typer.Option("--decoder-text", metavar="TEXT", help="Encoder–decoder models (T5, BART, "
                 "Marian): the target the decoder reads after its start token (teacher "
                 "forcing); without it the decoder reads its start token only.",
                 show_default=False),
]
ResolutionOpt = Annotated[
    int | None,
    typer.Option("--resolution", metavar="N", help="Cells a side of a long text's pooled maps "
                 "(default 1024): a text longer than N tokens is shown as blocks of b x b "
                 "weights, each the largest of its block (exact; the text is never cut).",
                 show_default=False),
]
SinkTokensOpt = Annotated[
    int, typer.Option("--sink-tokens", metavar="K", help="Long texts: the first K tokens "
                      "count as attention sinks in the statistics.")
]
CmapOpt = Annotated[str, typer.Option("--cmap", help="Matplotlib colormap.")]
DpiOpt = Annotated[int, typer.Option("--dpi", help="Resolution of the PNGs (30-600).")]
ScaleOpt = Annotated[
    Literal["sqrt", "linear", "log"],
    typer.Option("--scale",
                 help="Colour scale of the weights (0..1): sqrt shows small weights better, log "
                 "(1e-4..1) better still."),
]
ImageFormatOpt = Annotated[
    Literal["png", "svg", "pdf", "jpg"] | None,
    typer.Option("--image-format", help="Picture format (default png); a file name's suffix wins. "
                 "SVG and PDF keep the text as text.", show_default=False),
]
ViewOpt = Annotated[
    Literal["heatmap", "lines"],
    typer.Option("--view", help="heatmap, or lines: each query joined to its keys, opacity = "
                 "weight (up to 64 tokens)."),
]
ViewRolloutOpt = Annotated[  # heatmap's: also the rollout
    Literal["heatmap", "lines", "rollout"],
    typer.Option("--view", help="heatmap; lines: each query joined to its keys, opacity = "
                 "weight (up to 64 tokens); rollout: one picture of the attention rollout "
                 "through layers 0..L (every layer without --layer)."),
]
WeightingOpt = Annotated[
    Literal["attention", "norm"],
    typer.Option("--weighting", help="attention: the weights; norm: value-weighted attention "
                 "‖α·f(x)‖ (Kobayashi et al. 2020), each weight times the length of "
                 "its key's value through the head's output projection (docs/heads.md)."),
]
ExcludeFirstOpt = Annotated[
    bool, typer.Option("--exclude-first", help="Pictures only: drop key 0 (the first-token sink) and "
                       "renormalise each row, to see the rest. Numbers and exports are unchanged.")
]
AnnotateOpt = Annotated[
    bool | None,
    typer.Option("--annotate/--no-annotate", help="Print the weights in the cells (default: up to "
                 "12 tokens; at most 30).", show_default=False),
]
TitleOpt = Annotated[
    str | None,
    typer.Option("--title", help="Title of each picture; may use {head}, {layer}, {tokens}.",
                 show_default=False),
]
FontOpt = Annotated[
    str | None,
    typer.Option("--font", metavar="FILE|FAMILY", help="Font for the pictures; characters it lacks "
                 "fall back to an installed CJK font.", show_default=False),
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
        ("preset", PresetOpt, None),
        ("offline", OfflineOpt, False),
        ("device", DeviceOpt, "cpu"),
        ("threads", ThreadsOpt, None),
        ("tokenizer", TokenizerOpt, None),
        ("bos", BosOpt, True),
        ("chat", ChatOpt, False),
        ("book_config", BookConfigOpt, None),
    )
]
# Options that describe the random model: with --weights the checkpoint decides instead
# (--preset then names a book config, for the book's state dicts).
_RANDOM_ONLY = ("d_model", "context_length", "qkv_bias", "impl")
_CONFIG_OPTIONS = ("heads", "d_model", "context_length", "seed", "qkv_bias", "impl", "preset",
                   "offline", "device", "tokenizer", "bos", "chat", "book_config")


def model_options(command):
    """Replace the command's ``config`` parameter by the model options (one spelling of
    them for every command); the command receives ``config=ModelConfig(...)``. Notes the
    library raises as ``AttnvizWarning`` (what was assumed or ignored) become ``Warning:``
    lines on stderr, silenced by --quiet."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != "config"]
    shared = _MODEL_OPTIONS

    @functools.wraps(command)
    def wrapper(ctx: typer.Context, **kwargs):
        values = {p.name: kwargs.pop(p.name) for p in shared}
        explicit = {name for name in values
                    if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)}
        quiet = bool(kwargs.get("quiet"))
        ignored = [n for n in _RANDOM_ONLY if n in explicit] if kwargs.get("weights") else []
        if values.get("threads") is not None:
            import torch

            torch.set_num_threads(values["threads"])
        kwargs["config"] = config_for(
            kwargs.get("weights"), explicit=frozenset(explicit), progress=not quiet,
            **{name: values[name] for name in _CONFIG_OPTIONS})
        if ignored and not quiet:
            flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
            sys.stderr.write(f"Warning: {flags} ignored: with --weights the checkpoint sets the model\n")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if quiet else "always", AttnvizWarning)
            warnings.showwarning = _show_warning
            return command(**kwargs)

    context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    parameters = [context] + own + shared
    wrapper.__signature__ = signature.replace(parameters=parameters)
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, AttnvizWarning):
        sys.stderr.write(f"Warning: {message}\n")
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


# The picture options, shared by every command that draws: a command declares
# `picture: PictureOptions = None` and @picture_options puts the options in its place
# (in the order below) and hands it a Picture.
@dataclass(frozen=True)
class Picture:
    """What the picture options asked for. ``view``, ``exclude_first`` and ``annotate``
    keep their defaults on a command without them (``picture_options(full=False)``)."""

    cmap: str = "viridis"
    dpi: int = 100
    scale: str = "sqrt"
    view: str = "heatmap"
    image_format: str | None = None
    exclude_first: bool = False
    annotate: bool | None = None
    title: str | None = None
    font: str | None = None

    def check(self, rollout: bool = False) -> None:
        """Refuse a bad colormap, dpi, scale, title or font before any work (and put the
        font to use); imports matplotlib, so call it only when a picture will be drawn.
        ``--view rollout`` is refused unless the command draws it (``rollout``)."""
        from attnviz.pictures import checks

        if self.view == "rollout" and not rollout:
            raise InputError("--view rollout is one picture of the whole model: use attnviz "
                             "heatmap --view rollout")
        checks.check_picture_options(self.cmap, self.dpi, self.scale, self.title, self.font)

    def heatmap_args(self) -> dict:
        """The keyword arguments of plot.write_heatmaps and plot.save_compare."""
        return {"cmap": self.cmap, "dpi": self.dpi, "scale": self.scale, "view": self.view,
                "exclude_first_key": self.exclude_first, "annotate": self.annotate,
                "title": self.title}


PictureOptions = Picture | None
_PICTURE_OPTIONS = {
    "cmap": CmapOpt, "dpi": DpiOpt, "scale": ScaleOpt, "view": ViewOpt,
    "image_format": ImageFormatOpt, "exclude_first": ExcludeFirstOpt, "annotate": AnnotateOpt,
    "title": TitleOpt, "font": FontOpt,
}
_FULL_ONLY = ("view", "exclude_first", "annotate")  # how the weights are drawn: not for steps


def picture_options(*, full: bool = True, rollout: bool = False):
    """Replace the command's ``picture`` parameter, where it stands, by the picture
    options; the command receives ``picture=Picture(...)``. ``full=False`` leaves out
    --view, --exclude-first and --annotate; ``rollout``: --view offers rollout (heatmap's).
    Composes with @model_options either way."""
    chosen = [f for f in fields(Picture) if full or f.name not in _FULL_ONLY]
    annotations = {**_PICTURE_OPTIONS, **({"view": ViewRolloutOpt} if rollout else {})}
    names = [f.name for f in chosen]

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        parameters = list(signature.parameters.values())
        at = list(signature.parameters).index("picture")
        parameters[at:at + 1] = [
            inspect.Parameter(f.name, parameters[at].kind, default=f.default,
                              annotation=annotations[f.name])
            for f in chosen
        ]

        @functools.wraps(command)
        def wrapper(**kwargs):
            kwargs["picture"] = Picture(**{name: kwargs.pop(name) for name in names})
            return command(**kwargs)

        wrapper.__signature__ = signature.replace(parameters=parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate


def score_induction(output, config: ModelConfig, weights: str | None, layers: list[int],
                    weighting: str = "attention"):
    """``--induction`` of compare-heads and report: the ``(L, H)`` scores of
    ``induction.induction_probe``, refused before it runs when the context cannot hold it;
    ``weighting="norm"``: scored on the renormalised value-weighted rows."""
    from attnviz.analyses.attention import load_model
    from attnviz.analyses.induction import INDUCTION_PERIOD, check_induction_probe, induction_probe

    model = load_model(config, weights)
    check_induction_probe(model)
    output.message(f"Scoring induction on a repeated random sequence ({2 * INDUCTION_PERIOD} "
                   "tokens)…")
    if weighting == "attention":
        return induction_probe(model, layers, config.seed)
    return induction_probe(model, layers, config.seed, weighting=weighting)


def check_out_dir(out: Path, option: str) -> None:
    """Fail before any work when ``out`` cannot become a folder of pictures (it is created
    only when there is something to write); ``option`` is the one the user typed."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{option} {out} is a file, not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option} {out}: {existing} is a file, not a folder")
    if not _can_create_in(existing):
        raise InputError(f"{option} {out}: the folder {existing} is not writable; choose "
                         f"another with {option}")


NPZ = ((".npz",), "an .npz archive")
HTML = ((".html", ".htm"), "an HTML page")


def check_file_target(path: Path, option: str, kind: tuple[tuple[str, ...], str] | None = None
                      ) -> None:
    """Fail before any work when ``path`` cannot be written; ``option`` is the one the
    user typed. ``kind`` (``NPZ``, ``HTML``): refuse a name whose extension says another
    format (``-o weights.txt`` for an .npz archive): the name is how the next program
    opens the file."""
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name")
    if kind is not None and path.suffix.lower() not in kind[0]:
        raise InputError(f"{option} {path}: the file is {kind[1]}; name it {kind[0][0]}")
    parent = path.parent
    if not parent.is_dir():
        raise InputError(f"{option} {path}: the folder {parent} does not exist")
    if not _can_create_in(parent) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"{option} {path}: the folder {parent} is not writable")


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder``: tried, not guessed (``os.access`` says
    yes to root everywhere, also in /proc or on a read-only mount)."""
    import tempfile

    try:
        handle, name = tempfile.mkstemp(dir=folder, prefix=".attnviz-probe-")
    except OSError:
        return False
    os.close(handle)
    os.unlink(name)
    return True


DEPRECATED_OPTIONS = {  # (command, old spelling): the spelling that replaces it, until 0.3
    ("heatmap", "-o"): "--out DIR",
    ("compare-heads", "--plot"): "-o/--output FILE",
    ("why", "--head L.H"): "--layer L --head H",
}


def deprecated(command: str, old: str, reason: str) -> None:
    """Say once that ``old`` still works in ``command`` but will go (a ``Warning:`` line)."""
    warnings.warn(f"{old} is deprecated in {command} and will be removed in 0.3: {reason}; "
                  f"use {DEPRECATED_OPTIONS[command, old]}", AttnvizWarning, stacklevel=2)


