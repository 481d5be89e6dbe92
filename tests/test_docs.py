"""The examples in the docs are run, so the docs cannot rot. Fenced ```bash blocks are
executed (```sh blocks are illustrations that need files we do not have, e.g. GPT-2)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def bash_blocks():
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for i, match in enumerate(BLOCK.finditer(doc.read_text(encoding="utf-8"))):
            yield pytest.param(match.group(1), id=f"{doc.name}-{i}")


def test_docs_have_runnable_examples():
    names = {p.id.split("-")[0] for p in bash_blocks()}
    assert {"usage.md", "scripting.md", "heads.md"} <= names
    assert sum(1 for _ in bash_blocks()) >= 15


@pytest.mark.parametrize("script", list(bash_blocks()))
def test_doc_example_runs(script, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script}\n--- stderr:\n{proc.stderr}"
    assert proc.stdout.strip(), script
    assert "Error:" not in proc.stderr and "Traceback" not in proc.stderr


def test_readme_python_example():
    block = re.search(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    namespace: dict = {}
    exec(block.group(1), namespace)  # noqa: S102 - our own README
    result = namespace["result"]
    assert result.weights.shape == (1, 12, 6, 6)
    assert result.token_labels == ["Your", "␣journey", "␣starts", "␣with", "␣one", "␣step"]


def test_python_doc_examples_run(tmp_path):
    """docs/python.md's ```python blocks, run in order in one fresh interpreter, with "gpt2"
    served by the stand-in Hub on 127.0.0.1 (a tiny checkpoint with an output head)."""
    from helpers import make_hf_checkpoint
    from hub_server import HubServer, Repo

    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "docs" / "python.md").read_text(),
                        re.S | re.M)
    assert len(blocks) >= 3
    checkpoint = make_hf_checkpoint(tmp_path / "gpt2", n_layer=2, n_head=4, n_embd=64,
                                    lm_head=True, seed=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    work = tmp_path / "work"
    work.mkdir()
    with HubServer({"gpt2": Repo.from_folder(checkpoint)}) as hub:
        proc = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=work,
                              env={**env, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")},
                              capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    assert "(1, 12, 6, 6)" in proc.stdout and "attnviz.Model(gpt2 · 2 layers" in proc.stdout
    assert "(1, 4, 6, 6)" in proc.stdout  # the random model of heads=4, d_model=64
    assert (work / "ioi-report.html").read_text().startswith("<!DOCTYPE html>")
    assert (work / "ioi-heads.png").read_bytes().startswith(b"\x89PNG")


def test_readme_quick_start_is_two_commands():
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```bash\n(.*?)^```", quick, re.S | re.M)
    assert len(blocks) == 2
    assert 'attnviz heatmap "Your journey starts with one step"' in blocks[0]
    assert "pytest" in blocks[1]


# benchmarks/run.py's groups of rows (--only GROUP) -> the rows each gives, by the start of
# their names: together every row of SPEC section 7. One test per group, so that the groups
# run side by side (pytest-xdist) rather than one after another.
BENCHMARK_GROUPS = {
    "render": {"render 12 heads": 1},
    "process": {"`attnviz heatmap` on": 1},
    "tokenizer": {"tokenizer ready": 1},
    "attention": {"MultiHeadAttention vs MultiHeadAttentionWrapper": 1,
                  "MultiHeadAttention vs torch.nn.MultiheadAttention": 1},
    "memory": {"`attnviz heatmap` at T=": 1},
    "whole-model": {"`attnviz export --layer all`": 2, "`attnviz heatmap --layer all`": 2},
    "large": {"`attnviz heatmap --layer 0`": 1},
    "report": {"`attnviz report`": 2},
    "scan": {"`attnviz scan`": 3},
    # the other families (round 3): Llama-3.2-1B, SmolLM2, Pythia-160m
    "models": {"`attnviz heatmap --layer 0`": 1, "`attnviz export --layer all`": 1,
               "`attnviz scan --layer all`": 2, "`attnviz heatmap --layer all`": 1},
    # local models (GGUF): the real SmolLM2 file against transformers, a Llama-3.2-1B-shaped Q8_0
    "gguf": {"`attnviz heatmap --layer all`": 1, "`attnviz heatmap --layer 0`": 1},
    # long contexts: SmolLM2 at 8,192 tokens (export, heatmap), one 1B-shaped layer at 32,768
    "longcontext": {"`attnviz export --layer all --resolution": 1,
                    "`attnviz heatmap --layer all`, the same": 1,
                    "`attnviz export --layer 0 --resolution": 1,
                    # an encoder at its whole context: a ModernBERT-base shape at 8,192
                    "`attnviz heatmap --layer all` of a long encoder text": 1},
    # which heads find the needle: SmolLM2's passkey against Retrieval_Head's procedure
    "needle": {"`attnviz needle --chat`": 1, "`attnviz needle`, one passkey test": 1},
    # encoders (issue 40): a BERT-base shape at its whole context
    "encoders": {"`attnviz heatmap --layer all`": 1},
    # encoder–decoders (issue 40): a t5-small shape's three attentions against transformers
    "seq2seq": {"`attnviz export --attention all": 1},
}


def test_the_benchmark_groups_are_every_row_of_the_spec():
    total: dict[str, int] = {}
    for rows in BENCHMARK_GROUPS.values():
        for prefix, n in rows.items():
            total[prefix] = total.get(prefix, 0) + n
    assert total == {  # every row of SPEC section 7, by the start of its name: how many rows
        "render 12 heads": 1, "`attnviz heatmap` on": 1, "tokenizer ready": 1,
        "MultiHeadAttention vs MultiHeadAttentionWrapper": 1,
        "MultiHeadAttention vs torch.nn.MultiheadAttention": 1, "`attnviz heatmap` at T=": 1,
        "`attnviz export --layer all`": 3,
        # GPT-2 time and RSS, Pythia-160m time (models_bench), SmolLM2's GGUF time (gguf_bench),
        # BERT-base (encoders_bench)
        "`attnviz heatmap --layer all`": 5,
        # GPT-2 large, Llama-3.2-1B bf16 (models_bench), Llama-3.2-1B Q8_0 GGUF (gguf_bench)
        "`attnviz heatmap --layer 0`": 3, "`attnviz report`": 2, "`attnviz scan`": 3,
        "`attnviz scan --layer all`": 2,  # the other families (round 3): SmolLM2, Pythia-160m
        # long contexts (round 4): SmolLM2 at 8,192 tokens, a 1B-shaped layer at 32,768
        "`attnviz export --layer all --resolution": 1, "`attnviz heatmap --layer all`, the same": 1,
        "`attnviz heatmap --layer all` of a long encoder text": 1,  # ModernBERT-base at 8,192
        "`attnviz export --layer 0 --resolution": 1,
        "`attnviz needle --chat`": 1, "`attnviz needle`, one passkey test": 1,
        "`attnviz export --attention all": 1,  # encoder–decoders (issue 40)
    }
    helped = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--help"],
                            capture_output=True, text=True, timeout=120)
    listed = " ".join(helped.stdout.split()).split("run only these groups of rows: ")[1]
    assert listed.split(" (not with")[0].split(", ") == list(BENCHMARK_GROUPS)


@pytest.mark.parametrize("group", [pytest.param(g, marks=pytest.mark.slow)
                                   if g in ("models", "whole-model", "encoders")
                                   else g for g in BENCHMARK_GROUPS])
def test_benchmark_script_runs_at_tiny_sizes(group):
    """Benchmarks are not timed tests; this only keeps the script working."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke",
                           "--only", group], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| measure | baseline | attnviz | ratio | target | met |")
    measures = [row.strip("|").split("|")[0].strip() for row in rows[1:]]
    expected = BENCHMARK_GROUPS[group]
    # the longest prefix a row starts with names it ("`attnviz scan`" is not "`attnviz scan --…")
    found = {prefix: sum(max((p for p in expected if m.startswith(p)), key=len, default=None) == prefix
                         for m in measures) for prefix in expected}
    assert found == expected, measures
    assert len(measures) == sum(expected.values())
    for row in rows[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert re.search(r"\d", cells[1]) and re.search(r"\d", cells[2]) and cells[5] in ("yes", "**no**")


def test_module_docstring_examples():
    import doctest

    import attnviz.analyses.attention

    failures, tried = doctest.testmod(attnviz.analyses.attention)
    assert tried >= 3 and failures == 0


def test_benchmark_groups_run_alone():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--only",
                           "tokenizer,memory"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    measures = [line.split("|")[1].strip() for line in proc.stdout.splitlines()
                if line.startswith("| ") and "---" not in line][1:]
    assert [m.split(" ")[0] for m in measures] == ["tokenizer", "`attnviz"]
    refused = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--only", "nope"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "unknown group(s) nope" in refused.stderr
