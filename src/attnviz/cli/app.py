"""The Typer app and its one error handler: every failure becomes one ``Error:`` line on
stderr and the right exit code (2 bad usage or input, 1 a failure while running, 130
interrupted, 0 for a closed pipe)."""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import re
import signal
import sys
import traceback
from typing import Annotated

import typer
from typer._click.exceptions import (  # Typer >= 0.29 vendors click
    ClickException,
    NoArgsIsHelpError,
    UsageError,
)
from typer.core import TyperGroup

from attnviz import __version__
from attnviz.core import startup
from attnviz.core.errors import AttnvizError
from attnviz.files import ledger

_debug = {"on": False}  # set per invocation by _Group.main and --debug
_typed: dict[str, str] = {}  # each spelling of an option given -> the one the user typed


def _as_typed(message: str) -> str:
    """An error names the option as the user typed it: ``-o x.txt``, not ``--output``."""
    for spelling, typed in _typed.items():
        if spelling != typed and spelling.startswith("--"):
            message = re.sub(rf"(?<![\w-]){re.escape(spelling)}(?![\w-])", typed, message)
    return message


def tune_gc_for_one_run() -> None:
    """Garbage collection for a process that runs one command and exits.

    Importing torch and matplotlib creates millions of objects that live until exit.
    Python's full collections walk every one of them, several times during a run and once
    more at exit: about 0.9 s of a 3.4 s ``heatmap`` of 64 tokens (docs/benchmarks.md).
    Young collections still free short-lived cycles; full ones become ten times rarer,
    and the one at exit skips the objects frozen just before it. Not for in-process
    callers (tests, notebooks): only the console entry point calls this.
    """
    young, middle, full = gc.get_threshold()
    gc.set_threshold(young, middle, full * 10)
    atexit.register(gc.freeze)


def _error(message: str) -> None:
    sys.stderr.write(f"Error: {_as_typed(message)}\n")
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


def _silence_stdout() -> None:
    """After a closed pipe: point fd 1 at /dev/null so that the final flush of what is
    still buffered cannot fail again (and turn the exit code into 120)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _flush_stdout() -> None:
    """Flush what the command left buffered: a full disk fails here as one clear error."""
    if sys.stdout is None:
        return
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise AttnvizError(f"cannot write to standard output: {exc.strerror or exc}") from None


def _refuse_repeated_options(command, args: list[str]) -> None:
    """An option that takes one value, given twice (``--seed 1 --seed 2``), is refused
    instead of silently keeping the last. Options that collect several values
    (``--layer``, ``--head`` where it is repeatable) may repeat."""
    single = {}  # option spelling -> (parameter, takes a value)
    for param in command.params:
        if getattr(param, "param_type_name", "") != "option" or param.multiple or param.count:
            continue
        for spelling in (*param.opts, *param.secondary_opts):
            single[spelling] = (param, not param.is_flag)
    takes_value = {s for p in command.params if getattr(p, "param_type_name", "") == "option"
                   and not p.is_flag for s in p.opts}
    seen: dict[str, str] = {}
    tokens = iter(args)
    for token in tokens:
        if token == "--":
            break
        spelling = token.split("=", 1)[0] if token.startswith("--") else token
        if spelling in single:
            param, _ = single[spelling]
            _typed.update({s: spelling for s in (*param.opts, *param.secondary_opts)})
            if param.name in seen:
                first = seen[param.name]
                said = (f"{first} is given twice" if first == spelling
                        else f"{first} and {spelling} are both given")
                raise UsageError(f"{said}; give it once (a repeated option does not silently "
                                 "keep the last value)", ctx=None)
            seen[param.name] = spelling
        if spelling in takes_value and "=" not in token:
            next(tokens, None)  # the option's value, whatever it looks like


class _Group(TyperGroup):
    """Turns every failure into one ``Error:`` line and the right exit code."""

    def invoke(self, ctx):
        try:
            if sys.stdout is None:  # started with stdout closed (`>&-`): nowhere for results
                raise AttnvizError("standard output is closed; to discard the results, "
                                   "redirect it instead: > /dev/null")
            value = super().invoke(ctx)
            _flush_stdout()
            return value
        except (ClickException, typer.Exit, typer.Abort):
            raise
        except AttnvizError as exc:
            if _debug["on"]:
                traceback.print_exc()
            _error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _error(ledger.interrupted())
            raise typer.Exit(130) from None
        except BrokenPipeError:  # e.g. `attnviz tokens ... | head`: the reader has enough
            _silence_stdout()
            raise typer.Exit(0) from None
        except OSError as exc:  # a full disk, a folder gone mid-run: the system's own words
            if _debug["on"]:
                traceback.print_exc()
            where = f"{exc.filename}: " if exc.filename else ""
            _error(f"{where}{exc.strerror or exc}")
            raise typer.Exit(1) from None
        except Exception as exc:
            if _debug["on"]:
                traceback.print_exc()
            _error(f"unexpected failure: {type(exc).__name__}: {exc} (rerun with --debug "
                   "for the traceback, and please report it)")
            raise typer.Exit(1) from None

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            _refuse_repeated_options(command, rest)
        return name, command, rest

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        startup.done()  # from here on, Ctrl-C is a KeyboardInterrupt the command cleans up after
        _debug["on"] = bool(os.environ.get("ATTNVIZ_DEBUG"))  # --debug may turn it on
        _typed.clear()
        ledger.begin()
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
    help="See what the heads of causal self-attention attend to (GPT-2, Llama 3, Qwen, Mistral, "
    "SmolLM, Pythia, GPT-Neo, Gemma, the book's models): per-head "
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


def set_debug(value: bool) -> None:
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
    """See what the heads of causal self-attention attend to."""

