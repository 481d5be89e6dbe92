"""The scripting contract (docs/scripting.md): tables never cut a number, closed pipes and
output errors, RFC 4180 CSV, checks before writes, one JSON shape, options that behave
alike, messages that say the truth, every layer drawn, and token windows (--tokens)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import SHORT_TEXT, small_options

ROOT = Path(__file__).resolve().parent.parent
SMALL = small_options()  # 4 heads, d_model 32
ATTNVIZ = [sys.executable, "-m", "attnviz"]


def run(args, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """attnviz in a real process (pipes, closed descriptors, /dev/full)."""
    return subprocess.run([*ATTNVIZ, *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                          timeout=300)


# ------------------------------------------------------------------ 9. tables are never cut


def parse_blocks(text: str, key: str) -> dict[tuple, dict[str, str]]:
    """Plain tables (possibly split into column blocks) -> {row key: {column: cell}}.
    A header line starts with ``key``; the rows under it are split on whitespace."""
    cells: dict[tuple, dict[str, str]] = {}
    header = None
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == key:
            header = words
        elif header and len(words) == len(header) and re.fullmatch(r"-?\d+", words[0]):
            cells.setdefault((words[0],), {}).update(zip(header, words))
        else:
            header = None
    return cells


@pytest.mark.parametrize("columns", [80, 40])
def test_similarity_and_statistics_tables_fold_into_blocks_that_fit(cli, columns):
    args = ["compare-heads", "one two three four five six seven", "--heads", 26, "--d-model", 52,
            "--similarity"]
    result = cli(*args, env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "…" not in out and "..." not in out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= columns
    doc = json.loads(cli(*args, "--format", "json").stdout)
    stats_part, similarity_part = out.split("most focused")
    stats = parse_blocks(stats_part, "head")
    for row in doc["heads"]:  # every statistic, whole, under its whole header
        shown = stats[(str(row["head"]),)]
        for name in ("entropy", "normalized_entropy", "max_weight", "previous_token", "mean_distance"):
            assert shown[name] == f"{row[name]:.4f}"
    matrix = parse_blocks(similarity_part, "head")
    js = doc["similarity"][0]
    assert len(matrix) == 26
    for h in range(26):
        assert [matrix[(str(h),)][str(g)] for g in range(26)] == [f"{v:.4f}" for v in js[h]]


def test_a_column_wider_than_the_terminal_is_printed_whole(cli):
    result = cli("info", "--heads", 2, "--d-model", 8, env={"COLUMNS": "12"})
    assert result.exit_code == 0, result.stderr
    assert "…" not in result.stdout
    doc = json.loads(cli("info", "--heads", 2, "--d-model", 8, "--format", "json").stdout)
    assert str(doc["config"]["embedding_parameters"]) in result.stdout.split()


def test_long_text_cells_fold_instead_of_being_cut(cli, tmp_path):
    folder = tmp_path / ("a-rather-long-folder-name-" * 3)
    result = cli("heatmap", SHORT_TEXT, *SMALL, "--head", 0, "--out", folder, env={"COLUMNS": "50"})
    assert result.exit_code == 0, result.stderr
    assert "…" not in result.stdout
    assert "head_00.png" in result.stdout.replace("\n", "").replace(" ", "")


# --------------------------------------------------------------- 10. closed pipes exit 0

PIPED = [
    ["tokens", SHORT_TEXT],
    ["tokens", SHORT_TEXT, "--format", "json"],
    ["tokens", SHORT_TEXT, "--format", "csv"],
    ["info", *SMALL],
    ["info", *SMALL, "--format", "json"],
    ["info", *SMALL, "--format", "csv"],
    ["compare-heads", SHORT_TEXT, *SMALL, "--similarity"],
    ["compare-heads", SHORT_TEXT, *SMALL, "--format", "json"],
    ["compare-heads", SHORT_TEXT, *SMALL, "--format", "csv"],
    ["heatmap", SHORT_TEXT, *SMALL, "--out", "{tmp}/h"],
    ["heatmap", SHORT_TEXT, *SMALL, "--out", "{tmp}/h", "--format", "json"],
    ["heatmap", SHORT_TEXT, *SMALL, "--out", "{tmp}/h", "--quiet"],
    ["export", SHORT_TEXT, *SMALL, "-o", "-"],
    ["export", SHORT_TEXT, *SMALL, "-o", "{tmp}/w.npz"],
    ["steps", SHORT_TEXT, *SMALL, "--head", "1", "-o", "{tmp}/s.png"],
    ["steps", SHORT_TEXT, *SMALL, "--head", "1", "-o", "{tmp}/s.png", "--format", "json"],
    ["report", SHORT_TEXT, *SMALL, "-o", "{tmp}/r.html", "--format", "json"],
]


@pytest.mark.parametrize("args", PIPED, ids=lambda a: " ".join(a[:1] + a[-2:]))
def test_a_pipe_closed_by_the_reader_exits_0(args, tmp_path):
    args = [str(a).format(tmp=tmp_path) for a in args]
    proc = subprocess.Popen([*ATTNVIZ, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first byte: every write fails
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, stderr
    assert "Error" not in stderr and "Traceback" not in stderr and "Exception" not in stderr


def test_info_into_head_exits_0():
    proc = subprocess.run(["bash", "-c", "set -o pipefail; \"$@\" info | head -1", "_", *ATTNVIZ],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() and proc.stderr == ""


# -------------------------------------------------------------------- 11. RFC 4180 CSV


def test_csv_round_trips_any_token_text(cli):
    text = 'say "hi", then\r\nleave\ra,b\n"'
    doc = json.loads(cli("tokens", text, "--format", "json").stdout)
    out = cli("tokens", text, "--format", "csv").stdout_bytes.decode()
    records = list(csv.DictReader(io.StringIO(out, newline="")))
    assert [r["text"] for r in records] == [t["text"] for t in doc["tokens"]]
    assert [int(r["position"]) for r in records] == list(range(len(doc["tokens"])))
    assert out.endswith("\r\n") and out.count("\r\n") >= len(records) + 1
    assert any("\r" in t["text"] for t in doc["tokens"])  # the case that broke


# ------------------------------------------------------------------ 12. output errors


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_a_full_disk_on_stdout_is_one_clear_error(fmt):
    with open("/dev/full", "w") as full:
        proc = run(["tokens", SHORT_TEXT, "--format", fmt], stdout=full)
    stderr = proc.stderr.decode()
    assert proc.returncode == 1
    assert stderr.splitlines() == ["Error: cannot write to standard output: No space left on device"]


@pytest.mark.parametrize("command", [["tokens", SHORT_TEXT], ["heatmap", SHORT_TEXT, *SMALL]])
def test_a_closed_stdout_is_one_clear_error_before_any_work(command, tmp_path):
    proc = subprocess.run(["bash", "-c", '"$@" >&-', "_", *ATTNVIZ, *command], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "Error: standard output is closed; to discard the results, redirect it instead: > /dev/null"]
    assert list(tmp_path.iterdir()) == []  # heatmap wrote nothing


# ------------------------------------------------------------- 13. checks before writes


def test_heatmap_refuses_an_oversized_overview_before_the_first_picture(cli, tmp_path):
    out = tmp_path / "out"
    # 400 heads: the per-head picture fits, the heads overview (drawn last) does not
    result = cli("heatmap", "a b", "--heads", 400, "--d-model", 400, "--head", 0, "--dpi", 200,
                 "--out", out)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1].startswith("Error: the image would be")
    assert not out.exists()


def test_compare_heads_checks_the_similarity_picture_before_writing_the_pair(cli, tmp_path):
    pair, sim = tmp_path / "pair.png", tmp_path / "sim.png"
    result = cli("compare-heads", "a b", "--heads", 24, "--d-model", 48, "--dpi", 600,
                 "-o", pair, "--similarity-plot", sim)
    assert result.exit_code == 2 and "the image would be" in result.stderr
    assert not pair.exists() and not sim.exists()


# --------------------------------------------------------------- 14. consistent shapes


@pytest.mark.parametrize("layer", ["1", "0,2", "all"])
def test_similarity_is_always_layer_head_head(cli, hf_checkpoint, layer):
    result = cli("compare-heads", SHORT_TEXT, "--weights", hf_checkpoint, "--layer", layer,
                 "--similarity", "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    layers = {"1": [1], "0,2": [0, 2], "all": [0, 1, 2]}[layer]
    assert doc["layers"] == layers
    assert np.asarray(doc["similarity"]).shape == (len(layers), 4, 4)


def test_random_mode_has_one_layer_in_the_same_shape(cli):
    doc = json.loads(cli("compare-heads", SHORT_TEXT, *SMALL, "--similarity", "--format", "json").stdout)
    assert doc["layers"] == [0] and np.asarray(doc["similarity"]).shape == (1, 4, 4)


def test_csv_has_a_layer_column_in_every_mode(cli, hf_checkpoint):
    for extra in ([], ["--weights", str(hf_checkpoint), "--layer", "all"]):
        out = cli("compare-heads", SHORT_TEXT, *SMALL, *extra, "--format", "csv").stdout
        assert out.startswith("layer,head,")


def _scripting_blocks():
    text = (ROOT / "docs" / "scripting.md").read_text(encoding="utf-8")
    return [b for b in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M) if "compare-heads" in b]


def test_scripting_recipes_work_with_every_layer_of_a_checkpoint(hf_checkpoint, tmp_path):
    blocks = _scripting_blocks()
    assert len(blocks) >= 4
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for block in blocks:
        script = block.replace("attnviz compare-heads",
                               f"attnviz compare-heads --weights {hf_checkpoint} --layer all")
        proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and proc.stdout.strip(), f"{script}\n{proc.stderr}"
        assert "Error" not in proc.stderr and "null" not in proc.stdout


# --------------------------------------------------- 15. options that look alike behave alike


def test_heatmap_takes_format_json_and_json_as_its_alias(cli, tmp_path):
    by_format = cli("heatmap", SHORT_TEXT, *SMALL, "--out", tmp_path / "a", "--format", "json")
    by_alias = cli("heatmap", SHORT_TEXT, *SMALL, "--out", tmp_path / "a", "--json")
    assert by_format.exit_code == by_alias.exit_code == 0
    assert json.loads(by_format.stdout) == json.loads(by_alias.stdout)
    rows = list(csv.DictReader(io.StringIO(
        cli("heatmap", SHORT_TEXT, *SMALL, "--out", tmp_path / "a", "--format", "csv").stdout)))
    assert [r["head"] for r in rows][:4] == ["0", "1", "2", "3"]
    clash = cli("heatmap", SHORT_TEXT, "--json", "--format", "csv", "--out", tmp_path / "b")
    assert clash.exit_code == 2 and "disagree" in clash.stderr


def test_file_dash_reads_standard_input_and_a_bom_is_dropped(cli):
    plain = json.loads(cli("tokens", "Hello world", "--format", "json").stdout)
    for args in (["--file", "-"], ["-"]):
        result = cli("tokens", *args, "--format", "json", input="\ufeffHello world\n".encode())
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout) == plain


def test_bom_is_dropped_from_a_file(cli, tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffHello world".encode())
    assert cli("tokens", "--file", path, "--format", "json").stdout == \
        cli("tokens", "Hello world", "--format", "json").stdout


def test_export_to_stdout_is_the_npz_and_nothing_else(tmp_path):
    proc = run(["export", SHORT_TEXT, *SMALL, "-o", "-"])
    assert proc.returncode == 0, proc.stderr
    arrays = np.load(io.BytesIO(proc.stdout))
    run(["export", SHORT_TEXT, *SMALL, "-o", tmp_path / "w.npz"])
    on_disk = np.load(tmp_path / "w.npz")
    assert set(arrays) == set(on_disk)
    for name in arrays:
        assert np.array_equal(arrays[name], on_disk[name])


def test_quiet_prints_only_the_written_paths(cli, tmp_path):
    out = tmp_path / "figs"
    heat = cli("heatmap", SHORT_TEXT, *SMALL, "--out", out, "--head", 1, "--quiet")
    assert heat.exit_code == 0 and heat.stderr == ""
    assert heat.stdout.splitlines() == [str(out / "head_01.png"), str(out / "heads.png")]
    npz = tmp_path / "w.npz"
    exp = cli("export", SHORT_TEXT, *SMALL, "-o", npz, "-q")
    assert exp.exit_code == 0 and exp.stdout.splitlines() == [str(npz)] and exp.stderr == ""
    steps = cli("steps", SHORT_TEXT, *SMALL, "--head", 0, "-o", tmp_path / "s.png", "-q")
    assert steps.stdout.splitlines() == [str(tmp_path / "s.png")]


@pytest.mark.parametrize("args", [
    ["tokens", SHORT_TEXT, "--format", "json", "--format", "csv"],
    ["compare-heads", SHORT_TEXT, "--seed", "1", "--seed=2"],
    ["heatmap", SHORT_TEXT, "--annotate", "--no-annotate"],
    ["steps", SHORT_TEXT, "--head", "1", "--head", "2"],
    ["export", SHORT_TEXT, "-o", "a.npz", "--output", "b.npz"],
])
def test_a_single_valued_option_given_twice_is_refused(cli, args):
    result = cli(*args)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and "give it once" in result.stderr


def test_repeatable_options_may_repeat(cli, tmp_path):
    result = cli("heatmap", SHORT_TEXT, *SMALL, "--head", 0, "--head", 2, "--out", tmp_path, "-q")
    assert result.exit_code == 0, result.stderr
    # and a value that looks like an option is a value, not a repetition
    titled = cli("heatmap", SHORT_TEXT, *SMALL, "--head", 0, "--title", "--seed", "--seed", 3,
                 "--out", tmp_path, "-q")
    assert titled.exit_code == 0, titled.stderr


# ------------------------------------------------------- 16. messages that say the truth


def test_induction_with_a_short_context_names_the_probe(cli):
    result = cli("compare-heads", "a b", *SMALL, "--context-length", 64, "--induction")
    assert result.exit_code == 2
    assert "probe of 100 tokens" in result.stderr and "the text is" not in result.stderr


def test_sort_by_induction_asks_for_induction(cli):
    result = cli("compare-heads", SHORT_TEXT, "--sort-by", "induction")
    assert result.exit_code == 2 and "add --induction" in result.stderr


def test_an_option_called_ignored_never_fails_the_run(cli, hf_checkpoint):
    for extra in (["--d-model", "100"], ["--preset", "bogus"]):
        result = cli("compare-heads", SHORT_TEXT, "--weights", hf_checkpoint, *extra, "--format", "json")
        assert result.exit_code == 0, result.stderr
        assert f"Warning: {extra[0]} ignored" in result.stderr


def test_compare_heads_head_is_described_and_checked_for_what_it_does(cli, tmp_path):
    help_text = " ".join(cli("compare-heads", "--help").stdout.split())
    assert "A head to draw in the --output picture" in help_text and "always lists every head" in help_text
    result = cli("compare-heads", SHORT_TEXT, "--head", 3)
    assert result.exit_code == 2 and "add -o FILE" in result.stderr


# ------------------------------------------------------------- 17. every layer is drawn


def test_similarity_plot_draws_every_layer(cli, hf_checkpoint, tmp_path):
    sim = tmp_path / "sim.svg"
    result = cli("compare-heads", SHORT_TEXT, "--weights", hf_checkpoint, "--layer", "all",
                 "--similarity-plot", sim)
    assert result.exit_code == 0, result.stderr
    svg = sim.read_text()
    assert all(f">layer {i}<" in svg or f"layer {i}</text>" in svg or f"layer {i}" in svg
               for i in range(3))
    assert svg.count("<g id=\"axes_") >= 4  # three panels and the colorbar


def test_compare_plot_draws_every_layer_and_lines_refuse_several(cli, hf_checkpoint, tmp_path):
    pair = tmp_path / "pair.svg"
    result = cli("compare-heads", SHORT_TEXT, "--weights", hf_checkpoint, "--layer", "0,2",
                 "-o", pair, "--head", 1)
    assert result.exit_code == 0, result.stderr
    svg = pair.read_text()
    assert "layer 0, head 1" in svg and "layer 2, head 1" in svg
    lines = cli("compare-heads", SHORT_TEXT, "--weights", hf_checkpoint, "--layer", "all",
                "-o", tmp_path / "l.png", "--view", "lines")
    assert lines.exit_code == 2 and "one --layer" in lines.stderr
    assert not (tmp_path / "l.png").exists()


# ------------------------------------------------------------- issue 14.4: token windows


def _export(cli, tmp_path, *args):
    path = tmp_path / f"w{len(list(tmp_path.iterdir()))}.npz"
    result = cli("export", SHORT_TEXT, *SMALL, "-o", path, *args)
    assert result.exit_code == 0, result.stderr
    arrays = dict(np.load(path))
    for name in ("weights", "attn_input"):  # one layer: (1, ...), as attnviz.analyze has it
        if name in arrays:
            assert arrays[name].shape[0] == 1
            arrays[name] = arrays[name][0]
    return arrays


@pytest.mark.parametrize("spec, rows", [("2:5", [2, 3, 4]), ("-3:", [3, 4, 5]), (":2", [0, 1]),
                                        ("1:-1", [1, 2, 3, 4])])
def test_a_window_is_the_whole_text_computation_cropped(cli, tmp_path, spec, rows):
    full = _export(cli, tmp_path)
    window = _export(cli, tmp_path, "--tokens", spec, "--include-params")
    keep = np.asarray(rows)
    assert np.array_equal(window["weights"], full["weights"][:, keep][:, :, keep])
    assert window["positions"].tolist() == rows
    assert window["tokens"].tolist() == full["tokens"][keep].tolist()
    assert window["attn_input"].shape[0] == len(rows)


def test_window_statistics_use_the_cropped_rows_and_say_so(cli, tmp_path):
    full = _export(cli, tmp_path)["weights"]
    result = cli("compare-heads", SHORT_TEXT, *SMALL, "--tokens", "2:6", "--format", "json")
    doc = json.loads(result.stdout)
    assert doc["window"] == {"start": 2, "stop": 6}
    assert [t["position"] for t in doc["tokens"]] == [2, 3, 4, 5]
    for row in doc["heads"]:
        a = full[row["head"]].astype(np.float64)[2:6, 2:6]  # rows that no longer sum to 1
        assert row["self"] == pytest.approx(np.mean(np.diag(a)), abs=1e-6)
        assert row["first_token"] == pytest.approx(np.mean(a[1:, 0]), abs=1e-6)
        assert row["max_weight"] == pytest.approx(np.mean(a.max(axis=1)), abs=1e-6)
    table = cli("compare-heads", SHORT_TEXT, *SMALL, "--tokens", "2:6").stdout
    assert "window: tokens 2-5" in " ".join(table.split())


def test_windows_in_heatmap_steps_and_report(cli, tmp_path):
    heat = cli("heatmap", SHORT_TEXT, *SMALL, "--tokens", "3:", "--head", 0, "--out", tmp_path / "h",
               "--image-format", "svg", "--format", "json")
    assert heat.exit_code == 0, heat.stderr
    assert json.loads(heat.stdout)["window"] == {"start": 3, "stop": 6}
    assert "3: ␣with" in (tmp_path / "h" / "head_00.svg").read_text()
    full = _export(cli, tmp_path)["weights"]
    steps = cli("steps", SHORT_TEXT, *SMALL, "--head", 2, "--tokens", "1:4", "-o", tmp_path / "s.png",
                "--format", "json")
    doc = json.loads(steps.stdout)
    assert doc["window"] == {"start": 1, "stop": 4}
    assert np.allclose(doc["matrices"]["weights"], full[2, 1:4, 1:4], atol=1e-6)
    report = cli("report", SHORT_TEXT, *SMALL, "--tokens", "-2:", "-o", tmp_path / "r.html",
                 "--format", "json")
    assert json.loads(report.stdout)["window"] == {"start": 4, "stop": 6}


@pytest.mark.parametrize("spec, message", [("3:3", "selects no tokens"), ("10:", "selects no tokens"),
                                           ("1:2:3", "Python slice syntax"), ("a:b", "Python slice syntax")])
def test_bad_windows_are_refused(cli, tmp_path, spec, message):
    result = cli("heatmap", SHORT_TEXT, *SMALL, "--tokens", spec, "--out", tmp_path / "o")
    assert result.exit_code == 2 and message in result.stderr
    assert not (tmp_path / "o").exists()


def test_a_failed_file_write_is_one_clear_error(cli, tmp_path, monkeypatch):
    import errno

    from attnviz.files import fileio

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("attnviz.pictures.heatmap.write_bytes", full_disk)
    monkeypatch.setattr(fileio, "write_bytes", full_disk)
    result = cli("compare-heads", SHORT_TEXT, *SMALL, "-o", tmp_path / "p.png")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"Error: {tmp_path / 'p.png'}: No space left on device"]


def test_json_keeps_each_row_of_values_on_one_line_and_reads_back():
    from attnviz.files.output import clean, to_json

    document = {"a": [[0.25, None, 1], [True, "x\n\"y\"", -3e-8]], "empty": [], "none": {},
                "text": "中文 ␣", "rows": [{"k": [1, 2]}, {"k": []}], "n": 0}
    text = to_json(clean(document))
    assert json.loads(text) == document
    lines = text.splitlines()
    assert '    [0.25, null, 1],' in lines and '    [true, "x\\n\\"y\\"", -3e-08]' in lines
    assert '      "k": [1, 2]' in lines and '  "empty": [],' in lines and '  "none": {},' in lines


def test_steps_json_is_a_line_per_matrix_row(cli, tmp_path):
    out = cli("steps", "one two three four five six seven", "--head", "0", "-o",
              tmp_path / "s.png", "--format", "json", "--heads", "2", "--d-model", "8")
    assert out.exit_code == 0, out.stderr
    document = json.loads(out.stdout)
    n = len(document["matrices"]["weights"])
    assert n == 7
    # a row of the weights matrix: one line holding every value of the row
    lines = [line.strip().rstrip(",") for line in out.stdout.splitlines()]
    rows = [line for line in lines if line.startswith("[") and line.endswith("]")
            and line.count(",") == n - 1]
    assert len(rows) == 4 * n  # scores, scaled, masked, weights: a line per row
