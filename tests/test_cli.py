"""The command line as a user and a shell script see it: files, stdout, stderr, exit codes."""

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import SHORT_TEXT, small_options
from PIL import Image

from attnviz.text.gpt2_bpe import encode

ATTNVIZ = [sys.executable, "-m", "attnviz"]


def run(*args, input=None, env=None, cwd=None):
    """A real process, stdout piped (not a terminal)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*ATTNVIZ, *map(str, args)], input=input, capture_output=True,
                          env=full_env, cwd=cwd, timeout=300)


# --- heatmap ----------------------------------------------------------------------------

def test_heatmap_writes_one_png_per_head_and_an_overview(cli, tmp_path):
    out = tmp_path / "figs"
    result = cli("heatmap", SHORT_TEXT, "--out", out)
    assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == [f"head_{h:02d}.png" for h in range(12)] + ["heads.png"]
    for name in names:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 200
    assert "head_11.png" in result.stdout
    assert "Error" not in result.stderr


def test_heatmap_selected_heads_only(cli, tmp_path):
    result = cli("heatmap", SHORT_TEXT, "--out", tmp_path, "--head", 3, "--head", 10)
    assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == ["head_03.png", "head_10.png", "heads.png"]


def test_heatmap_is_reproducible_byte_for_byte(cli, tmp_path):
    for folder in ("a", "b"):
        assert cli("heatmap", SHORT_TEXT, "--out", tmp_path / folder, "--seed", 7).exit_code == 0
    for png in (tmp_path / "a").iterdir():
        assert png.read_bytes() == (tmp_path / "b" / png.name).read_bytes()
    cli("heatmap", SHORT_TEXT, "--out", tmp_path / "c", "--seed", 8)
    assert (tmp_path / "c" / "head_00.png").read_bytes() != (tmp_path / "a" / "head_00.png").read_bytes()


def test_heatmap_json(cli, tmp_path):
    result = cli("heatmap", SHORT_TEXT, "--out", tmp_path, "--json", *small_options())
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"files", "tokens", "config"}
    assert len(doc["files"]) == 5 and all(os.path.isfile(f) for f in doc["files"])
    assert [t["id"] for t in doc["tokens"]] == encode(SHORT_TEXT)
    assert doc["config"]["n_heads"] == 4 and doc["config"]["d_model"] == 32


def test_heatmap_options_reach_the_model(cli, tmp_path):
    result = cli("heatmap", SHORT_TEXT, "--out", tmp_path, "--json", "--heads", 3, "--d-model",
                 24, "--qkv-bias", "--impl", "wrapper", "--cmap", "magma", "--dpi", 72)
    doc = json.loads(result.stdout)
    assert doc["config"]["qkv_bias"] is True and doc["config"]["impl"] == "wrapper"
    with Image.open(tmp_path / "head_00.png") as small:
        small_size = small.size
    cli("heatmap", SHORT_TEXT, "--out", tmp_path / "big", "--heads", 3, "--d-model", 24, "--dpi", 144)
    with Image.open(tmp_path / "big" / "head_00.png") as big:
        assert big.size[0] == pytest.approx(2 * small_size[0], abs=2)


# --- tokens -----------------------------------------------------------------------------

TOKEN_TEXTS = [SHORT_TEXT, "  tabs\tnewline\n café 🙂 中文 <|endoftext|>", "x"]


@pytest.mark.parametrize("text", TOKEN_TEXTS)
def test_tokens_json_matches_canonical_gpt2(cli, canonical_gpt2, text):
    result = cli("tokens", text, "--format", "json")
    assert result.exit_code == 0, result.stderr
    tokens = json.loads(result.stdout)["tokens"]
    assert [t["id"] for t in tokens] == canonical_gpt2.encode_ordinary(text)
    assert [t["position"] for t in tokens] == list(range(len(tokens)))
    raw = [canonical_gpt2.decode_single_token_bytes(t["id"]) for t in tokens]
    assert [t["bytes"] for t in tokens] == [len(r) for r in raw]
    assert b"".join(raw).decode() == text


def test_tokens_json_shape(cli):
    tokens = json.loads(cli("tokens", SHORT_TEXT, "--format", "json").stdout)["tokens"]
    assert tokens[0] == {"position": 0, "id": 7120, "text": "Your", "label": "Your", "bytes": 4}
    assert tokens[1]["text"] == " journey" and tokens[1]["label"] == "␣journey"


def test_tokens_csv(cli):
    result = cli("tokens", "a b\tc", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [int(r["id"]) for r in rows] == encode("a b\tc")
    assert rows[1]["text"] == " b" and rows[1]["label"] == "␣b"


def test_tokens_table_shows_visible_whitespace(cli):
    result = cli("tokens", "hi there\n")
    assert result.exit_code == 0
    assert "␣there" in result.stdout and "↵" in result.stdout


def test_allow_special(cli):
    plain = json.loads(cli("tokens", "<|endoftext|>", "--format", "json").stdout)["tokens"]
    special = json.loads(cli("tokens", "<|endoftext|>", "--format", "json", "--allow-special").stdout)
    assert len(plain) > 1 and 50256 not in [t["id"] for t in plain]
    assert [t["id"] for t in special["tokens"]] == [50256]


# --- input sources ----------------------------------------------------------------------

def test_stdin_dash_drops_one_trailing_newline(cli):
    piped = json.loads(cli("tokens", "-", "--format", "json", input="hello world\n").stdout)
    assert [t["id"] for t in piped["tokens"]] == encode("hello world")
    kept = json.loads(cli("tokens", "-", "--format", "json", input="hello\n\n").stdout)
    assert [t["id"] for t in kept["tokens"]] == encode("hello\n")


def test_file_option(cli, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("from a file\n", encoding="utf-8")
    doc = json.loads(cli("tokens", "--file", path, "--format", "json").stdout)
    assert [t["id"] for t in doc["tokens"]] == encode("from a file")


# --- compare-heads ----------------------------------------------------------------------

def test_compare_heads_json_matches_an_independent_recomputation(cli, tmp_path):
    npz = tmp_path / "w.npz"
    assert cli("export", SHORT_TEXT, "-o", npz).exit_code == 0
    result = cli("compare-heads", SHORT_TEXT, "--format", "json", "--similarity")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) >= {"heads", "tokens", "config", "similarity"}
    weights = np.load(npz)["weights"][0].astype(np.float64)  # (1, H, T, T): layer 0
    n = weights.shape[-1]
    assert [row["head"] for row in doc["heads"]] == list(range(12))
    for row in doc["heads"]:
        a = weights[row["head"]]
        entropy = np.mean([-sum(p * np.log(p) for p in a[i] if p > 0) for i in range(n)])
        assert row["entropy"] == pytest.approx(entropy, abs=1e-6)
        assert row["max_weight"] == pytest.approx(np.mean([max(a[i]) for i in range(n)]), abs=1e-6)
        assert row["self"] == pytest.approx(np.mean([a[i, i] for i in range(n)]), abs=1e-6)
        assert row["previous_token"] == pytest.approx(np.mean([a[i, i - 1] for i in range(1, n)]), abs=1e-6)
        assert row["first_token"] == pytest.approx(np.mean([a[i, 0] for i in range(1, n)]), abs=1e-6)
        distance = np.mean([sum(a[i, j] * (i - j) for j in range(n)) for i in range(n)])
        assert row["mean_distance"] == pytest.approx(distance, abs=1e-6)
    js = np.array(doc["similarity"])[0]  # [layer][head][head], one layer here
    assert doc["layers"] == [0] and js.shape == (12, 12)
    assert np.allclose(js, js.T) and np.allclose(np.diag(js), 0)


def test_compare_heads_single_token_gives_null_not_nan(cli):
    result = cli("compare-heads", "Hi", "--format", "json", *small_options())
    assert result.exit_code == 0, result.stderr
    assert "NaN" not in result.stdout
    row = json.loads(result.stdout)["heads"][0]
    assert row["previous_token"] is None and row["first_token"] is None and row["self"] == 1.0


@pytest.mark.parametrize("column", ["entropy", "mean_distance", "first_token"])
@pytest.mark.parametrize("desc", [False, True])
def test_compare_heads_sort(cli, column, desc):
    args = ["compare-heads", SHORT_TEXT, "--format", "json", "--sort-by", column]
    values = [r[column] for r in json.loads(cli(*args, *(["--desc"] if desc else [])).stdout)["heads"]]
    assert values == sorted(values, reverse=desc)


def test_compare_heads_csv_and_table(cli):
    rows = list(csv.DictReader(io.StringIO(cli("compare-heads", SHORT_TEXT, "--format", "csv").stdout)))
    assert len(rows) == 12 and float(rows[0]["entropy"]) > 0
    table = cli("compare-heads", SHORT_TEXT).stdout
    assert "entropy" in table and "most focused: head" in table


def test_compare_heads_plots(cli, tmp_path):
    pair, sim = tmp_path / "pair.png", tmp_path / "sim.png"
    result = cli("compare-heads", SHORT_TEXT, "-o", pair, "--head", 2, "--head", 5, "--head", 7,
                 "--similarity-plot", sim, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["files"] == [str(pair), str(sim)]
    with Image.open(pair) as three, Image.open(sim) as matrix:
        assert three.size[0] > 2.2 * three.size[1] and matrix.size[0] > 200
    default = tmp_path / "default.png"
    assert cli("compare-heads", SHORT_TEXT, "-o", default).exit_code == 0
    assert default.is_file()


# --- export -----------------------------------------------------------------------------

@pytest.mark.parametrize("qkv_bias", [False, True])
def test_export_arrays_reproduce_the_weights(cli, tmp_path, qkv_bias):
    path = tmp_path / "out.npz"
    args = ["export", SHORT_TEXT, "-o", path, "--include-params", *small_options(4, 32)]
    result = cli(*args, *(["--qkv-bias"] if qkv_bias else []))
    assert result.exit_code == 0, result.stderr
    data = np.load(path)
    assert data["weights"].dtype == np.float32 and data["weights"].shape == (1, 4, 6, 6)
    assert data["token_ids"].tolist() == encode(SHORT_TEXT)
    assert data["tokens"].tolist()[1] == " journey"
    assert data["attn_input"].shape == (1, 6, 32) and data["W_query"].shape == (1, 32, 32)
    assert ("b_query" in data) == qkv_bias
    x = data["attn_input"][0].astype(np.float64)
    q = x @ data["W_query"][0].T + (data["b_query"][0] if qkv_bias else 0)
    k = x @ data["W_key"][0].T + (data["b_key"][0] if qkv_bias else 0)
    for h in range(4):
        s = q[:, h * 8 : (h + 1) * 8] @ k[:, h * 8 : (h + 1) * 8].T / np.sqrt(8)
        s[np.triu_indices(6, 1)] = -np.inf
        expected = np.exp(s - s.max(1, keepdims=True))
        expected /= expected.sum(1, keepdims=True)
        np.testing.assert_allclose(data["weights"][0, h], expected, atol=1e-5)


# --- info, version, help ----------------------------------------------------------------

def test_info_json(cli):
    doc = json.loads(cli("info", "--format", "json").stdout)
    config = doc["config"]
    assert config["n_heads"] == 12 and config["head_dim"] == 64
    assert config["attention_parameters"] == 4 * 768 * 768 + 768  # Wq, Wk, Wv, out_proj (+ bias)
    assert config["embedding_parameters"] == (50257 + 1024) * 768
    assert doc["versions"]["attnviz"] and doc["versions"]["torch"]
    assert doc["tokenizer"]["data"].endswith("data")


def test_info_csv_and_table(cli):
    rows = list(csv.DictReader(io.StringIO(cli("info", "--format", "csv", "--qkv-bias").stdout)))
    values = {r["key"]: r["value"] for r in rows}
    assert values["config.attention_parameters"] == str(4 * 768 * 768 + 4 * 768)
    assert "head_dim" in cli("info").stdout


def test_version(cli):
    from attnviz import __version__

    for flag in ("--version", "-V"):
        result = cli(flag)
        assert result.exit_code == 0 and result.stdout.strip() == f"attnviz {__version__}"


def test_every_command_has_help_text(cli):
    top = cli("--help")
    assert top.exit_code == 0
    for command in ("heatmap", "compare-heads", "tokens", "export", "info"):
        assert command in top.stdout
        result = cli(command, "-h")
        assert result.exit_code == 0 and "Usage" in result.stdout
        assert len(result.stdout.splitlines()) > 5


def test_help_does_not_import_torch_or_matplotlib():
    code = ("import sys; from attnviz.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'matplotlib', 'tiktoken') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "[]"


# --- real processes through pipes -------------------------------------------------------

def test_python_dash_m_pipes_json_with_nothing_else_on_stdout(tmp_path):
    proc = run("compare-heads", "-", "--format", "json", *small_options(), input=SHORT_TEXT.encode())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["heads"]
    proc = run("heatmap", SHORT_TEXT, "--out", tmp_path, "--json", *small_options())
    assert json.loads(proc.stdout)["files"]


def test_piped_tables_have_no_ansi_or_box_art(tmp_path):
    for args in (["tokens", SHORT_TEXT], ["compare-heads", SHORT_TEXT, *small_options()], ["info"],
                 ["heatmap", SHORT_TEXT, "--out", tmp_path, *small_options()]):
        proc = run(*args, env={"FORCE_COLOR": "", "TERM": "xterm-256color"})
        assert proc.returncode == 0, proc.stderr
        assert b"\x1b[" not in proc.stdout and b"\x1b[" not in proc.stderr
        assert not any(ch in proc.stdout.decode() for ch in "┏━│╇─")


def test_quiet_leaves_only_results(tmp_path):
    proc = run("heatmap", SHORT_TEXT, "--out", tmp_path, "--quiet", *small_options())
    assert proc.returncode == 0 and proc.stderr == b""
    assert b"head_00.png" in proc.stdout


def test_force_color_colours_and_no_color_wins():
    args = ["compare-heads", SHORT_TEXT, *small_options()]
    coloured = run(*args, env={"FORCE_COLOR": "1"})
    assert b"\x1b[32m" in coloured.stdout or b"\x1b[1;32m" in coloured.stdout  # the focused head
    plain = run(*args, env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert plain.returncode == 0
    assert b"32m" not in plain.stdout and b"33m" not in plain.stdout


def test_shell_completion():
    shown = run("--show-completion", "bash")
    assert shown.returncode == 0 and b"_attnviz_completion" in shown.stdout
    env = {"_ATTNVIZ_COMPLETE": "complete_bash", "COMP_WORDS": "attnviz comp", "COMP_CWORD": "1"}
    assert run(env=env).stdout.split() == [b"compare-heads"]
    env = {"_ATTNVIZ_COMPLETE": "complete_bash", "COMP_WORDS": "attnviz heatmap --cm", "COMP_CWORD": "2"}
    assert run(env=env).stdout.split() == [b"--cmap"]


def test_bare_command_prints_help_and_succeeds(cli):
    result = cli()
    assert result.exit_code == 0 and "heatmap" in result.stdout and result.stderr == ""


def test_only_the_console_entry_point_tunes_garbage_collection(cli):
    """The program makes full collections rare and freezes what lives at exit (its
    imports' millions of objects, docs/benchmarks.md); in-process callers keep theirs."""
    import gc

    before = gc.get_threshold()
    cli(["tokens", "hi"])
    assert gc.get_threshold() == before
    code = ("import atexit, gc, sys\n"
            "from attnviz.cli import main\n"
            "atexit.register(lambda: print(gc.get_threshold()[2], gc.get_freeze_count() > 0))\n"
            "sys.argv = ['attnviz', 'tokens', 'hi', '--format', 'json']\n"
            "main()\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    full, frozen = run.stdout.split()[-2:]
    assert int(full) == 10 * before[2] and frozen == "True"


# --- the picture options, spelled once (cli/options.py: picture_options) ----------------

PICTURE_FLAGS = ["--cmap", "--dpi", "--scale", "--view", "--image-format", "--exclude-first",
                 "--annotate", "--title", "--font"]
STEPS_PICTURE_FLAGS = ["--cmap", "--dpi", "--scale", "--image-format", "--title", "--font"]


def help_options(cli, command: str) -> dict[str, str]:
    """``--help``'s options, in order: first flag -> its declaration and help text, with
    the line wrapping undone."""
    result = cli(command, "--help")
    assert result.exit_code == 0, result.stderr
    options, current = {}, None
    for line in result.stdout.split("Options:", 1)[1].splitlines():
        if line.startswith("  -"):
            current = line.split()[0]
            options[current] = line.strip()
        elif line.strip() and current is not None:
            options[current] += " " + line.strip()
    return {flag: " ".join(text.split()) for flag, text in options.items()}


def test_picture_options_have_one_spelling_in_every_command(cli):
    heatmap, compare, steps = (help_options(cli, c) for c in ("heatmap", "compare-heads", "steps"))
    assert [f for f in heatmap if f in PICTURE_FLAGS] == PICTURE_FLAGS
    for flag in PICTURE_FLAGS:  # (heatmap's --view also offers the rollout)
        assert heatmap[flag] == compare[flag] or flag == "--view", flag
    assert compare["--view"].startswith("--view <heatmap|lines> ")
    assert [f for f in steps if f in PICTURE_FLAGS] == STEPS_PICTURE_FLAGS
    for flag in STEPS_PICTURE_FLAGS:
        assert steps[flag] == heatmap[flag], flag
    assert heatmap["--dpi"] == "--dpi <int> Resolution of the PNGs (30-600). [default: 100]"
    assert heatmap["--annotate"].startswith("--annotate / --no-annotate Print the weights")
    # Where each command declares them: right after its own options, before the model's.
    order = list(heatmap)
    assert order[order.index("--head") + 1: order.index("--weights")] == PICTURE_FLAGS
    order = list(compare)
    assert order[order.index("--head") + 1: order.index("--weights")] == PICTURE_FLAGS
    order = list(steps)
    assert order[order.index("--dropout") + 1: order.index("--weights")] == STEPS_PICTURE_FLAGS


def picture_command(command: str, folder, *options) -> list:
    """``command`` drawing into ``folder`` with a small random model."""
    target = {"heatmap": ["--out", folder / "out"],
              "compare-heads": ["-o", folder / "plot.png"],
              "steps": ["--head", 0, "--output", folder / "steps.png"]}[command]
    return [command, SHORT_TEXT, *target, *options, *small_options()]


@pytest.mark.parametrize("options, message", [
    (["--cmap", "nope"], "Error: unknown colormap 'nope'; did you mean copper, copper_r, bone?"),
    (["--dpi", 5], "Error: --dpi 5 is outside the sensible range 30-600"),
    (["--title", "{x}"], "Error: --title '{x}': only {head}, {layer} and {tokens} can be filled in ('x')"),
])
def test_a_bad_picture_option_is_the_same_error_everywhere(cli, tmp_path, options, message):
    for command in ("heatmap", "compare-heads", "steps"):
        folder = tmp_path / command
        folder.mkdir()
        result = cli(*picture_command(command, folder, *options))
        assert (result.exit_code, result.stderr, result.stdout) == (2, message + "\n", ""), command
        assert list(folder.iterdir()) == [], command  # refused before any work
    # compare-heads draws nothing without --plot: the picture options are not checked
    result = cli("compare-heads", SHORT_TEXT, *options, "--format", "json", *small_options())
    assert result.exit_code == 0 and json.loads(result.stdout)["heads"]


def test_compare_heads_without_a_picture_does_not_import_matplotlib():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom attnviz.cli import app\n"
            f"r = CliRunner().invoke(app, ['compare-heads', {SHORT_TEXT!r}, '--cmap', 'nope', "
            "'--heads', '2', '--d-model', '8'])\n"
            "print(r.exit_code, 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["0", "False"], out.stderr


def picture_file(command: str, folder, suffix: str = ".png"):
    return {"heatmap": folder / "out" / f"head_00{suffix}", "compare-heads": folder / "plot.png",
            "steps": folder / "steps.png"}[command]


@pytest.mark.parametrize("command", ["heatmap", "compare-heads", "steps"])
def test_the_picture_options_reach_the_drawing(cli, tmp_path, command):
    sizes = {}
    for dpi in (50, 100):
        folder = tmp_path / f"dpi{dpi}"
        folder.mkdir()
        assert cli(*picture_command(command, folder, "--dpi", dpi)).exit_code == 0
        with Image.open(picture_file(command, folder)) as image:
            sizes[dpi] = image.size
    assert sizes[100][0] == pytest.approx(2 * sizes[50][0], abs=2)
    assert sizes[100][1] == pytest.approx(2 * sizes[50][1], abs=2)

    grey = tmp_path / "grey"
    grey.mkdir()
    assert cli(*picture_command(command, grey, "--dpi", 50, "--cmap", "gray")).exit_code == 0
    assert picture_file(command, grey).read_bytes() != picture_file(command, tmp_path / "dpi50").read_bytes()

    svg = tmp_path / "svg"
    svg.mkdir()
    args = picture_command(command, svg, "--image-format", "svg", "--title", "Probe {head}")
    if command != "heatmap":  # a file name without a suffix takes --image-format
        args[args.index(picture_file(command, svg))] = svg / "picture"
    assert cli(*args).exit_code == 0
    written = svg / "picture" if command != "heatmap" else picture_file(command, svg, ".svg")
    text = written.read_text()
    assert text.startswith("<?xml") and "<svg" in text and "Probe 0" in text
