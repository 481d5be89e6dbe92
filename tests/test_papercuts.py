"""What a new user trips over (issue 36), one test per class of defect: a flag means one
thing in every command; an error names the option the user typed and describes a file as
it is; Ctrl-C says what is on disk, also during start-up; no temporary names; a token the
model cannot represent is never silent; whitespace is not a text; no line ends in spaces;
one of a thing is singular; export's weights have the layer axis."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import typer
from helpers import make_family_checkpoint

from attnviz.cli import app
from attnviz.cli.options import DEPRECATED_OPTIONS
from attnviz.files import ledger
from attnviz.files.fileio import write_bytes

TEXT = "Your journey starts with one step"
SMALL = ["--heads", "4", "--d-model", "32"]
UNWRITABLE = Path("/proc/attnviz-test")  # not even root can create files in /proc


def commands():
    return typer.main.get_command(app).commands


def _kind(param) -> str:
    """What an option's value is: a file, a folder, a flag, or a value of its metavar."""
    if param.is_flag:
        return "flag"
    if "Path" in str(param.bare_type()):
        assert param.metavar is not None, f"{param.opts}: a path option must say FILE or DIR"
        assert re.fullmatch(r"DIR|PATH|FILE(\.\w+)?", param.metavar), param.metavar
        return {"DIR": "folder", "PATH": "file or folder"}.get(param.metavar, "file")
    return f"value {param.metavar}"


def test_a_flag_means_the_same_thing_in_every_command():
    """Every spelling of every visible option: one kind (file, folder, flag, or a value
    shown by the same metavar) across all commands. Hidden options are old spellings,
    each listed in DEPRECATED_OPTIONS with its replacement."""
    meanings = defaultdict(set)
    for name, command in commands().items():
        for param in command.params:
            if param.param_type_name != "option":
                continue
            if param.hidden:
                assert any(c == name and o.split()[0] in param.opts
                           for c, o in DEPRECATED_OPTIONS), (name, param.opts)
                continue
            for spelling in (*param.opts, *param.secondary_opts):
                meanings[spelling].add((_kind(param), name))
    clashes = {flag: sorted(uses) for flag, uses in meanings.items()
               if len({kind for kind, _ in uses}) > 1}
    assert not clashes
    # the convention of docs/usage.md
    assert {kind for kind, _ in meanings["-o"]} == {"file"}
    assert {kind for kind, _ in meanings["--output"]} == {"file"}
    assert {kind for kind, _ in meanings["--out"]} == {"folder"}
    assert {kind for kind, _ in meanings["--plot"]} == {"folder"}


def test_old_spellings_still_work_for_one_release_and_say_so(cli, tmp_path):
    result = cli("heatmap", TEXT, *SMALL, "-o", tmp_path / "figs", "--head", 0)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "figs" / "head_00.png").is_file()
    assert "Warning: -o is deprecated in heatmap" in result.stderr and "--out DIR" in result.stderr
    result = cli("compare-heads", TEXT, *SMALL, "--plot", tmp_path / "pair.png")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "pair.png").is_file() and "use -o/--output FILE" in result.stderr
    result = cli("why", TEXT, "--head", "0.3", "--query", 5)
    assert result.exit_code == 0 and "use --layer L --head H" in result.stderr
    new = cli("why", TEXT, "--layer", 0, "--head", 3, "--query", 5)
    assert new.exit_code == 0 and new.stdout == result.stdout and new.stderr == ""


@pytest.mark.parametrize("args, typed", [
    (["heatmap", TEXT, "--out", UNWRITABLE], "--out"),
    (["heatmap", TEXT, "-o", UNWRITABLE], "-o"),
    (["compare-heads", TEXT, "-o", Path("/proc") / "p.png"], "-o"),
    (["compare-heads", TEXT, "--output", Path("/proc") / "p.png"], "--output"),
    (["export", TEXT, "-o", Path("/proc") / "w.npz"], "-o"),
    (["report", TEXT, "--output", Path("/proc") / "r.html"], "--output"),
    (["steps", TEXT, "--head", "0", "-o", Path("/proc") / "s.png"], "-o"),
    (["scan", TEXT, "--plot", UNWRITABLE], "--plot"),
    (["attribute", TEXT, "--plot", UNWRITABLE], "--plot"),
    (["why", TEXT, "--layer", "0", "--head", "1", "--plot", UNWRITABLE], "--plot"),
    (["why", TEXT, "--layer", "0", "--head", "1", "--report", Path("/proc") / "w.html"], "--report"),
    (["generate", TEXT, "--max-new-tokens", "1", "--out", UNWRITABLE], "--out"),
    (["generate", TEXT, "--max-new-tokens", "1", "-o", Path("/proc") / "g.npz"], "-o"),
    (["train", "--out", UNWRITABLE], "--out"),
])
def test_an_unwritable_destination_is_refused_before_any_work_by_the_option_typed(cli, args,
                                                                                     typed):
    result = cli(*args)
    assert result.exit_code == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if not line.startswith("Warning:")]
    assert len(errors) == 1
    line = errors[0]
    assert line.startswith(f"Error: {typed} {args[args.index(typed) + 1]}")
    assert "not writable" in line and ".tmp" not in line


def test_a_file_name_that_says_another_format_is_refused(cli, tmp_path):
    for args, message in ((["export", TEXT, "-o", tmp_path / "w.txt"], "an .npz archive"),
                          (["report", TEXT, "-o", tmp_path / "r.png"], "an HTML page")):
        result = cli(*args)
        assert result.exit_code == 2 and message in result.stderr
    assert not list(tmp_path.iterdir())


def test_a_failed_write_names_the_file_asked_for_never_a_temporary():
    with pytest.raises(OSError) as failure:
        write_bytes(Path("/proc/r.html"), b"x")
    assert failure.value.filename == "/proc/r.html"
    assert ".tmp" not in str(failure.value)


@pytest.mark.parametrize("content, said", [
    (b"# attnviz\n\nSee what the heads attend to.\n", "it looks like text"),
    (b'{"model_type": "gpt2"}', "it looks like JSON"),
    (b"", "it is empty"),
    (bytes(range(256)) * 4, "its bytes are none of the formats attnviz reads"),
])
def test_weights_that_are_not_a_checkpoint_are_described_as_they_are(cli, tmp_path, content,
                                                                     said):
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    result = cli("heatmap", TEXT, "--weights", path, "--out", tmp_path / "figs")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {path} is not a checkpoint: {said}")
    assert "Python objects" not in result.stderr


def test_a_missing_file_is_not_looked_for_on_the_hub(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no README.md here: a typo'd path, not a repo id
    result = cli("heatmap", TEXT, "--weights", "README.md", "--out", tmp_path / "figs")
    assert result.exit_code == 2
    assert result.stderr == ("Error: --weights README.md: no such file or directory (nor a "
                             "Hugging Face repo id such as gpt2 or org/name)\n")


def test_whitespace_is_not_a_text(cli, tmp_path):
    for command in ("heatmap", "tokens", "compare-heads", "export", "report", "steps", "why",
                    "generate", "attribute"):
        result = cli(command, " \n\t ", *(["--head", "0"] if command == "steps" else
                       ["--layer", "0", "--head", "0"] if command == "why" else []),
                     "-o" if command in ("export", "report") else "--quiet",
                     *([tmp_path / "x.npz"] if command == "export" else
                       [tmp_path / "x.html"] if command == "report" else []))
        assert result.exit_code == 2, (command, result.stderr)
        assert result.stderr.startswith("Error: the text is only whitespace"), command
    assert not list(tmp_path.iterdir())


def test_the_ledger_says_what_an_interrupted_run_left():
    ledger.begin()
    assert ledger.interrupted() == "interrupted; nothing was written"
    ledger.plan(Path("out"), 13)
    for i in range(9):
        ledger.wrote(Path(f"out/layer_00/head_{i:02d}.png"))
    assert ledger.interrupted() == ("interrupted; 9 of 13 files written to out/; run the "
                                    "command again to finish")
    ledger.begin()
    ledger.wrote(Path("w.npz"))
    assert ledger.interrupted() == "interrupted; w.npz written"


def _attnviz(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "attnviz", *args], cwd=cwd,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_ctrl_c_mid_run_says_how_many_pictures_are_on_disk(tmp_path):
    out = tmp_path / "figs"
    text = " ".join(f"w{i}" for i in range(200))
    run = _attnviz("heatmap", text, "--out", str(out), "--heads", "48", cwd=tmp_path)
    deadline = time.monotonic() + 240
    while len(list(out.glob("head_*.png"))) < 3:
        assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()
        time.sleep(0.01)
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=60) == 130
    last = run.stderr.read().strip().splitlines()[-1]
    written = len(list(out.glob("head_*.png")))
    assert last == (f"Error: interrupted; {written} of 49 files written to {out}/; run the "
                    "command again to finish")


def test_ctrl_c_after_the_imports_before_the_command_is_one_line(tmp_path):
    """Start-up as the program sees it: attnviz imported, no command running yet."""
    script = ("import os, signal, sys, time; sys.argv[0] = '/usr/bin/attnviz'; import attnviz.cli; "
              "os.kill(os.getpid(), signal.SIGINT); time.sleep(30)")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert run.returncode == 130 and run.stderr == "Error: interrupted\n"
    # imported by a script or a notebook, attnviz leaves Ctrl-C to Python
    script = script.replace("sys.argv[0] = '/usr/bin/attnviz'; ", "")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert run.returncode == -signal.SIGINT and run.stderr.endswith("KeyboardInterrupt\n")


def test_ctrl_c_while_the_program_imports_its_commands_is_one_line():
    """The console script's own steps, interrupted inside the import of a command module
    (where a real Ctrl-C lands in the first ~100 ms): no traceback, exit code 130."""
    script = "\n".join([
        "import os, signal, sys",
        "sys.argv[0] = '/usr/bin/attnviz'",
        "class Interrupt:",
        "    def find_spec(self, name, path=None, target=None):",
        "        if name == 'attnviz.cli.heatmap':",
        "            os.kill(os.getpid(), signal.SIGINT)",
        "sys.meta_path.insert(0, Interrupt())",
        "from attnviz.cli import main",
        "main()"])
    run = subprocess.run([sys.executable, "-c", script, "tokens", TEXT], capture_output=True,
                         text=True, timeout=60,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (run.returncode, run.stderr, run.stdout) == (130, "Error: interrupted\n", "")


@pytest.fixture(scope="module")
def unk_checkpoint(tmp_path_factory):
    """A tiny Llama whose tokenizer (a word-level vocabulary) has an unknown token."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = make_family_checkpoint(tmp_path_factory.mktemp("unk"), "llama", n_layers=1,
                                    vocab_size=64, tokenizer=False)
    words = ["<unk>", "the", "cat", "sat", "on", "mat", "a", "dog", "Mary", "John", "gave"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)},
                                           unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>"}))
    return folder


def test_a_word_the_model_cannot_represent_is_never_silent(cli, unk_checkpoint, tmp_path):
    result = cli("heatmap", "the zebra sat on the xylophone zebra", "--weights", unk_checkpoint,
                 "--out", tmp_path / "figs")
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1
    assert "3 tokens" in warnings[0] and "<unk>" in warnings[0]
    assert "'zebra', 'xylophone'" in warnings[0]
    quiet = cli("heatmap", "the cat sat on the mat", "--weights", unk_checkpoint, "--out",
                tmp_path / "figs2")
    assert quiet.exit_code == 0 and "Warning" not in quiet.stderr
    for option in ("--target", "--contrast"):
        refused = cli("attribute", "Mary gave the cat a", "--weights", unk_checkpoint,
                      *(["--target", "dog"] if option == "--contrast" else []), option, "zebra")
        assert refused.exit_code == 2
        assert refused.stderr.startswith(f"Error: {option} 'zebra' is the tokenizer's unknown")


def _lines(result) -> list[str]:
    return (result.stdout + result.stderr).splitlines()


COMMANDS = {  # every command with a table, on a one-token text where it takes one
    "heatmap": ["heatmap", "hi", *SMALL, "--head", "0"],
    "tokens": ["tokens", "hi"],
    "compare-heads": ["compare-heads", "hi", *SMALL],
    "export": ["export", "hi", *SMALL],
    "info": ["info"],
    "scan": ["scan", "hi there", *SMALL],
    "report": ["report", "hi", *SMALL],
    "steps": ["steps", "hi", *SMALL, "--head", "0"],
    "generate": ["generate", "hi", "--max-new-tokens", "1", "--weights"],  # + a checkpoint
    "why": ["why", "hi", "--layer", "0", "--head", "1", "--query", "0"],
}


@pytest.mark.parametrize("name", COMMANDS)
def test_no_line_ends_in_spaces_and_one_is_singular(cli, tmp_path, name, monkeypatch,
                                                    hf_checkpoint):
    monkeypatch.chdir(tmp_path)
    args = COMMANDS[name] + ([hf_checkpoint] if name == "generate" else [])
    args += (["-o", tmp_path / "x.npz"] if name == "export" else
                             ["-o", tmp_path / "x.html"] if name == "report" else
                             ["-o", tmp_path / "x.png"] if name == "steps" else
                             ["--out", tmp_path / "figs"] if name == "heatmap" else [])
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    lines = _lines(result)
    assert lines and not [line for line in lines if line != line.rstrip()]
    plural_one = re.compile(r"(?<![\d.,])1 (\S+ )?(tokens|heads|layers|prompts|files)\b")
    assert not [line for line in lines if plural_one.search(line)]


def test_export_keeps_the_layer_axis_for_one_layer(cli, tmp_path):
    one, every = tmp_path / "one.npz", tmp_path / "all.npz"
    assert cli("export", TEXT, *SMALL, "--layer", "0", "-o", one).exit_code == 0
    weights = np.load(one)["weights"]
    assert weights.ndim == 4 and weights.shape[0] == 1  # (L, H, T, T), as attnviz.analyze has
    assert cli("export", TEXT, *SMALL, "--layer", "all", "-o", every).exit_code == 0
    np.testing.assert_array_equal(np.load(every)["weights"], weights)
