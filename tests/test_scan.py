"""`attnviz scan`: detector scores against plain loops and transformers, exact batching,
streaming aggregates, interrupted per-prompt output, and the command line."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import make_hf_checkpoint

from attnviz.analyses import detectors
from attnviz.analyses import scanning as scan
from attnviz.analyses.attention import analyze_ids, load_model
from attnviz.analyses.induction import induction_probe, induction_scores
from attnviz.analyses.stats import head_stats
from attnviz.core.config import ModelConfig
from attnviz.text.gpt2_bpe import encode

SMALL = ModelConfig(n_heads=4, d_model=32)
PROMPTS = [
    "The cat sat on the mat. The cat sat on the mat again.",
    "a b c a b c a b c",
    "Hello, world!",
    "one two three four five six seven one two three four five six seven",
    "Mr and Mrs Dursley, of number four, Privet Drive, were proud to say",
    "x y",
    "the the the the",
]


def corpus(texts=PROMPTS, context_length=1024):
    return scan.tokenize_corpus(list(enumerate(texts, start=1)), context_length).prompts


def per_prompt_values(model, prompts, layers, **options):
    """prompt index -> name -> (L, H), collected through the on_prompt callback."""
    seen = {}
    result = scan.scan(model, prompts, layers,
                       on_prompt=lambda p, v: seen.__setitem__(p.index, v), **options)
    return result, seen


# ---------------------------------------------------------------- independent references


def loop_scores(a, token_ids, exclude_first=False, exclude_self=False):
    """TransformerLens's detectors for one head ``a`` (T x T), as plain Python loops."""
    n = len(token_ids)
    kept = [[0.0 if (exclude_first and j == 0) or (exclude_self and i == j) else float(a[i][j])
             for j in range(n)] for i in range(n)]
    total = sum(sum(row) for row in kept)
    previous = sum(kept[i][i - 1] for i in range(1, n))
    duplicate = sum(kept[i][j] for i in range(n) for j in range(i) if token_ids[j] == token_ids[i])
    induction = sum(kept[i][j + 1] for i in range(n) for j in range(i)
                    if token_ids[j] == token_ids[i])
    ratio = (lambda x: x / total) if total else (lambda x: math.nan)
    return {"previous_token_head": ratio(previous), "duplicate_token_head": ratio(duplicate),
            "induction_head": ratio(induction),
            "first_token": sum(float(a[i][0]) for i in range(1, n)) / (n - 1)}


def transformer_lens_patterns(token_ids):
    """The three patterns written the way transformer_lens/head_detector.py builds them."""
    tokens = torch.tensor([token_ids])
    n = tokens.shape[-1]
    previous = torch.zeros(n, n)
    previous[1:, :-1] = torch.eye(n - 1)
    eq = np.equal(tokens.repeat(n, 1).numpy(), tokens.repeat(n, 1).numpy().T).astype(int)
    np.fill_diagonal(eq, 0)
    duplicate = torch.tril(torch.as_tensor(eq).float())
    rolled = torch.roll(duplicate, shifts=1, dims=1)
    induction = torch.tril(torch.cat((torch.zeros(n, 1), rolled[:, 1:]), dim=1))
    return {"previous_token_head": torch.tril(previous).numpy(),
            "duplicate_token_head": duplicate.numpy(), "induction_head": induction.numpy()}


def hf_attentions(folder, token_ids):
    import transformers

    model = transformers.GPT2Model.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(torch.tensor([token_ids]), output_attentions=True)
    return np.stack([a[0].numpy() for a in out.attentions])  # (L, H, T, T)


# ---------------------------------------------------------------- detectors


@pytest.mark.parametrize("text", PROMPTS + ["a a a b a a b", "<|endoftext|> x <|endoftext|> x"])
def test_patterns_are_transformer_lens_patterns(text):
    token_ids = encode(text)
    ours = detectors.patterns(token_ids)
    for name, expected in transformer_lens_patterns(token_ids).items():
        np.testing.assert_array_equal(ours[name], expected, err_msg=name)


def test_patterns_by_hand():
    ours = detectors.patterns([7, 8, 7, 8, 8])
    assert np.argwhere(ours["previous_token_head"]).tolist() == [[1, 0], [2, 1], [3, 2], [4, 3]]
    assert np.argwhere(ours["duplicate_token_head"]).tolist() == [[2, 0], [3, 1], [4, 1], [4, 3]]
    # shifted one key right: the token after the earlier copy (and itself, for 8 8)
    assert np.argwhere(ours["induction_head"]).tolist() == [[2, 1], [3, 2], [4, 2], [4, 4]]


@pytest.mark.parametrize("exclude_first", [False, True])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_scan_scores_equal_plain_loops(exclude_first, exclude_self):
    model = load_model(SMALL)
    prompts = corpus()
    _, values = per_prompt_values(model, prompts, [0], exclude_first=exclude_first,
                                  exclude_self=exclude_self, batch_size=4)
    assert sorted(values) == list(range(len(prompts)))
    for prompt in prompts:
        weights = analyze_ids(prompt.token_ids, SMALL).weights[0]  # (H, T, T)
        for h in range(SMALL.n_heads):
            expected = loop_scores(weights[h].tolist(), prompt.token_ids, exclude_first, exclude_self)
            for name, value in expected.items():
                got = values[prompt.index][name][0, h]
                if math.isnan(value):  # "x y" with both exclusions keeps nothing: 0/0
                    assert math.isnan(got), (prompt.line, h, name)
                else:
                    assert got == pytest.approx(value, abs=1e-6), (prompt.line, h, name)
        stats = head_stats(weights)
        for name, column in stats.items():
            np.testing.assert_allclose(values[prompt.index][name][0], column, atol=1e-6, err_msg=name)


def test_scan_scores_equal_scores_of_transformers_attentions(hf_checkpoint):
    model = load_model(None, str(hf_checkpoint))
    prompts = corpus(PROMPTS[:5])
    _, values = per_prompt_values(model, prompts, [0, 1, 2], batch_size=3)
    for prompt in prompts:
        attentions = hf_attentions(hf_checkpoint, prompt.token_ids)  # (L, H, T, T)
        for layer in range(3):
            for h in range(attentions.shape[1]):
                expected = loop_scores(attentions[layer, h].tolist(), prompt.token_ids)
                for name, value in expected.items():
                    assert values[prompt.index][name][layer, h] == pytest.approx(value, abs=1e-5)


def exact_previous_token_checkpoint(folder, head=2, n_embd=64, n_head=4):
    """A transformers GPT-2 whose layer-0 head ``head`` attends to position i-1 by a huge
    margin: token embeddings are zero, position i is (cos θi, sin θi, -cos θi, -sin θi, 0…)
    (LayerNorm only rescales it), keys read the angle θj and queries the angle θ(i-1), so
    the score c·cos θ(i-1-j) peaks at j = i-1."""
    import transformers

    make_hf_checkpoint(folder, n_layer=3, n_head=n_head, n_embd=n_embd, seed=5)
    model = transformers.GPT2Model.from_pretrained(folder)
    theta = math.pi / 64  # prompts stay under 64 tokens: cos is monotone over the range
    d, head_dim = n_embd, n_embd // n_head
    ln_scale = 1 / math.sqrt(2 / d + model.config.layer_norm_epsilon)
    strength = 4e5  # logit margin c (1 - cos θ) / sqrt(head_dim) ≈ 120
    with torch.no_grad():
        model.wte.weight.zero_()
        angles = theta * torch.arange(model.config.n_positions, dtype=torch.float64)
        model.wpe.weight.zero_()
        model.wpe.weight[:, :4] = torch.stack(
            [angles.cos(), angles.sin(), -angles.cos(), -angles.sin()], dim=1).float()
        w = model.h[0].attn.c_attn.weight  # (d, 3d): x @ w, columns q | k | v
        q = slice(head * head_dim, (head + 1) * head_dim)
        k = slice(d + q.start, d + q.stop)
        w[:, q] = 0.0
        w[:, k] = 0.0
        model.h[0].attn.c_attn.bias[q] = 0.0
        model.h[0].attn.c_attn.bias[k] = 0.0
        c, s = math.cos(theta), math.sin(theta)
        # q = c (cos θ(i-1), sin θ(i-1)) = c R(-θ) (cos θi, sin θi)
        w[0, q.start], w[1, q.start] = strength * c / ln_scale, strength * s / ln_scale
        w[0, q.start + 1], w[1, q.start + 1] = -strength * s / ln_scale, strength * c / ln_scale
        w[0, k.start], w[1, k.start + 1] = 1 / ln_scale, 1 / ln_scale
    model.save_pretrained(folder)
    return folder


def test_exact_previous_token_head_is_ranked_first(tmp_path):
    folder = exact_previous_token_checkpoint(tmp_path / "prev", head=2)
    model = load_model(None, str(folder))
    prompts = corpus(PROMPTS[:5])
    result = scan.scan(model, prompts, [0, 1, 2])
    best = result.top("previous_token_head", 2)
    assert (best[0]["layer"], best[0]["head"]) == (0, 2)
    # a perfect previous-token head scores (T-1)/T: row 0 has no previous token
    perfect = np.mean([(len(p.token_ids) - 1) / len(p.token_ids) for p in prompts])
    assert best[0]["mean"] == pytest.approx(perfect, abs=1e-6)
    assert result.mean["previous_token"][0, 2] == pytest.approx(1.0, abs=1e-6)
    assert best[1]["mean"] < perfect - 0.05


# ---------------------------------------------------------------- batching and aggregation


def moderate_checkpoint(folder, std=0.12):
    """3 layers, weights ~ N(0, std): attention far from uniform, activations moderate."""
    import transformers

    torch.manual_seed(0)
    model = transformers.GPT2Model(transformers.GPT2Config(n_layer=3, n_head=4, n_embd=64,
                                                           n_positions=128))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln_" not in name:
                param.normal_(0.0, std)
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("where", ["random", "checkpoint", "sharp-layer-0"])
def test_padding_changes_nothing(where, hf_checkpoint, tmp_path):
    """A prompt's numbers are the same in a right-padded batch of mixed lengths as alone.
    (Batching changes the order of float32 sums: on the deliberately sharp fixture that
    rounding, not the padding, grows past 1e-6 after a layer or two, so its deeper layers
    are checked on a moderate checkpoint instead.)"""
    model, layers = {
        "random": lambda: (load_model(ModelConfig()), [0]),
        "checkpoint": lambda: (load_model(None, str(moderate_checkpoint(tmp_path))), [0, 1, 2]),
        "sharp-layer-0": lambda: (load_model(None, str(hf_checkpoint)), [0]),
    }[where]()
    prompts = corpus()
    together, batched = per_prompt_values(model, prompts, layers, batch_size=16)
    alone, single = per_prompt_values(model, prompts, layers, batch_size=1)
    assert sorted(batched) == sorted(single) == list(range(len(prompts)))
    for i in single:
        for name in scan.COLUMNS:
            np.testing.assert_allclose(batched[i][name], single[i][name], atol=1e-6, err_msg=name)
    for name in scan.COLUMNS:
        np.testing.assert_allclose(together.mean[name], alone.mean[name], atol=1e-6)
    assert max(together.mean["max_weight"].reshape(-1)) > 0.3  # not a trivial uniform model


def test_batches_are_bounded_by_size_and_memory(monkeypatch):
    prompts = [scan.Prompt(i, i + 1, [1] * n) for i, n in enumerate([5, 50, 7, 300, 20, 9])]
    batches = scan.plan_batches(prompts, 2, n_layers=1, n_heads=1)
    assert [[len(p.token_ids) for p in b] for b in batches] == [[300, 50], [20, 9], [7, 5]]
    monkeypatch.setattr(scan, "WEIGHTS_BUDGET", 12 * 12 * 300**2 * 4)  # one 300-token prompt
    batches = scan.plan_batches(prompts, 16, n_layers=12, n_heads=12)
    assert [len(b) for b in batches] == [1, 5]


def test_aggregates_are_mean_and_sample_std_of_the_prompts():
    model = load_model(SMALL)
    prompts = corpus()
    result, values = per_prompt_values(model, prompts, [0], batch_size=3)
    for name in scan.COLUMNS:
        stacked = np.stack([values[i][name] for i in sorted(values)])  # (N, L, H)
        np.testing.assert_allclose(result.mean[name], stacked.mean(0), atol=1e-12)
        np.testing.assert_allclose(result.std[name], stacked.std(0, ddof=1), atol=1e-12)
        assert (result.count[name] == len(prompts)).all()


def test_running_stats_skip_nan_and_survive_large_offsets():
    rng = np.random.default_rng(0)
    values = 1e6 + rng.normal(size=(1000, 3))  # sum of squares would lose the spread
    values[::7, 1] = np.nan
    running = scan.RunningStats((3,))
    for start in range(0, len(values), 64):
        running.update(values[start : start + 64])
    np.testing.assert_allclose(running.mean_or_nan, np.nanmean(values, 0), rtol=1e-12)
    np.testing.assert_allclose(running.std, np.nanstd(values, 0, ddof=1), rtol=1e-9)
    assert running.count.tolist() == [1000, 1000 - len(range(0, 1000, 7)), 1000]


def test_induction_probe_matches_transformers_attention_on_the_same_probe(hf_checkpoint):
    """The probe (50 random ids from numpy's default_rng(seed), repeated) scored on
    transformers' own attentions: query i of the second copy -> key i - 50 + 1."""
    import torch
    from transformers import GPT2Model

    model = load_model(None, str(hf_checkpoint))
    probe = induction_probe(model, [0, 1, 2], seed=7)
    assert probe.shape == (3, 4)
    np.testing.assert_allclose(induction_scores(weights=str(hf_checkpoint), layer="all", seed=7),
                               probe, atol=0)
    first = np.random.default_rng(7).integers(0, 50256, size=50).tolist()
    hf = GPT2Model.from_pretrained(hf_checkpoint, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = hf(torch.tensor([first + first]), output_attentions=True).attentions
    expected = [[np.mean([float(a[0, h, i, i - 49]) for i in range(50, 100)]) for h in range(4)]
                for a in attentions]
    np.testing.assert_allclose(probe, expected, atol=1e-5)


def test_scan_fits_the_induction_probe_to_a_short_context(cli):
    """scan shortens the probe to the context (compare-heads refuses instead); a context
    that cannot hold two tokens twice is refused before the scan."""
    args = [*PROMPTS[:2], "--heads", "2", "--d-model", "8", "--induction", "--format", "json"]
    result = cli("scan", *args, "--context-length", "64")
    assert result.exit_code == 0, result.stderr
    probe = [row["induction_probe"] for row in json.loads(result.stdout)["heads"]]
    model = load_model(ModelConfig(n_heads=2, d_model=8, context_length=64))
    expected = induction_probe(model, [0], seed=123, period=32)
    np.testing.assert_allclose(probe, expected.reshape(-1), atol=1e-9)
    assert not np.allclose(expected, induction_probe(model, [0], seed=123, period=20))
    refused = cli("scan", *args, "--context-length", "3")
    assert refused.exit_code == 2 and refused.stdout == ""
    assert refused.stderr == ("Error: --induction needs a context of at least 4 tokens, the "
                              "model has 3\n")
    compare = cli("compare-heads", "one two", "--heads", "2", "--d-model", "8",
                  "--context-length", "64", "--induction")
    assert compare.exit_code == 2 and "probe of 100 tokens" in compare.stderr


# ---------------------------------------------------------------- per-prompt output


def test_prompt_log_keeps_only_complete_lines(tmp_path, monkeypatch):
    from attnviz.analyses.scanning import PromptLog

    model = load_model(SMALL)
    prompts = corpus()
    path = tmp_path / "out.jsonl"
    real_write, calls = os.write, []

    def half_then_interrupt(fd, data):
        calls.append(1)
        if len(calls) == 3:  # the third line: half of it lands, then Ctrl-C
            real_write(fd, bytes(data[: len(data) // 2]))
            raise KeyboardInterrupt
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt), PromptLog(path, [0]) as log:
        scan.scan(model, prompts, [0], batch_size=1, on_prompt=log.write)
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 2 and all(line.endswith("\n") for line in lines)
    assert [json.loads(line)["n_tokens"] for line in lines] == sorted(
        (len(p.token_ids) for p in prompts), reverse=True)[:2]


def test_sigint_leaves_valid_json_lines_and_exit_130(tmp_path):
    words = "the of and to in is was for on that with as by at from".split()
    rng = np.random.default_rng(1)
    lines = [" ".join(rng.choice(words, size=40)) for _ in range(4000)]
    (tmp_path / "many.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "attnviz", "scan", "--file", "many.txt", "--per-prompt", str(out),
         "--batch-size", "1", "--format", "json"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # also in a background job
    deadline = time.monotonic() + 120
    while (not out.exists() or out.stat().st_size == 0) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stdout == ""  # no half result on stdout
    assert stderr.strip().splitlines()[-1].startswith("Error: interrupted")
    text = out.read_text()
    assert text.endswith("\n")
    header, *records = [json.loads(line) for line in text.splitlines()]
    assert header["format"] == "attnviz-scan-log" and header["fingerprint"]["corpus"]["prompts"] == 4000
    assert 1 <= len(records) < len(lines)
    assert all(r["n_tokens"] == 40 and len(r["scores"]["induction_head"][0]) == 12 for r in records)


# ---------------------------------------------------------------- command line


def test_json_has_one_row_per_layer_and_head(cli, hf_checkpoint, tmp_path):
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS[:4]) + "\n\n")
    result = cli("scan", "--file", tmp_path / "p.txt", "--weights", hf_checkpoint, "--layer", "all",
                 "--format", "json", "--per-prompt", tmp_path / "each.jsonl", "--top", "2")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    pairs = [(layer, h) for layer in range(3) for h in range(4)]
    assert [(r["layer"], r["head"]) for r in document["heads"]] == pairs
    assert document["prompts"] == 4 and all(r["count"] == 4 for r in document["heads"])
    assert {"previous_token_head_mean", "induction_head_std", "entropy_mean"} <= set(document["heads"][0])
    assert len(document["top"]["induction_head"]) == 2
    best = max(document["heads"], key=lambda r: r["duplicate_token_head_mean"])
    assert document["top"]["duplicate_token_head"][0]["mean"] == best["duplicate_token_head_mean"]
    header, *records = [json.loads(line) for line in (tmp_path / "each.jsonl").read_text().splitlines()]
    assert header["fingerprint"]["layers"] == [0, 1, 2]
    assert sorted(r["line"] for r in records) == [1, 2, 3, 4]
    mean = np.mean([r["scores"]["previous_token_head"] for r in records], axis=0)
    table = np.array([r["previous_token_head_mean"] for r in document["heads"]]).reshape(3, 4)
    np.testing.assert_allclose(mean, table, atol=1e-12)
    assert "scanned" not in result.stderr  # piped: no progress unless asked


def test_csv_and_table(cli):
    result = cli("scan", *PROMPTS[:3], "--heads", "4", "--d-model", "32", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.startswith("layer,head,count,entropy_mean,entropy_std,")
    assert len(rows) == 4 and rows[0].startswith("0,0,3,")
    result = cli("scan", *PROMPTS[:3], "--heads", "4", "--d-model", "32", "--top", "3", "--induction")
    assert result.exit_code == 0, result.stderr
    assert "previous_token_head" in result.stdout and "induction_probe" in result.stdout
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["rank", "previous_token_head", "duplicate_token_head",
                                "induction_head", "first_token", "induction_probe"]
    assert [line.split()[0] for line in lines[2:5]] == ["1", "2", "3"]
    assert lines[5].startswith("3 prompts, ")


def test_stdin_jsonl_limit_and_truncate(cli, tmp_path):
    data = "\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(PROMPTS)) + "\n"
    result = cli("scan", "-", "--jsonl", "--limit", "3", "--heads", "4", "--d-model", "32",
                 "--format", "json", input=data)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["prompts"] == 3
    (tmp_path / "p.jsonl").write_text(data)
    result = cli("scan", "--file", tmp_path / "p.jsonl", "--heads", "4", "--d-model", "32",
                 "--context-length", "8", "--truncate", "--format", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    longer = sum(len(encode(t)) > 8 for t in PROMPTS)
    assert document["truncated"] == longer == 4 and document["tokens"] <= 8 * len(PROMPTS)


def test_progress_lines_when_forced_and_silence_when_quiet(cli):
    args = ["scan", *PROMPTS, "--heads", "4", "--d-model", "32", "--format", "json"]
    forced = cli(*args, "--progress")
    assert forced.exit_code == 0
    assert f"scanned {len(PROMPTS)}/{len(PROMPTS)} prompts" in forced.stderr
    assert cli(*args, "--progress", "--quiet").stderr == ""


def test_plot_writes_one_labelled_map_per_detector(cli, tmp_path, hf_checkpoint):
    result = cli("scan", *PROMPTS[:3], "--weights", hf_checkpoint, "--layer", "all", "--plot",
                 tmp_path / "maps", "--induction", "--quiet")
    assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "maps").iterdir() if p.name != ".attnviz-manifest.json")
    assert names == ["duplicate_token_head.png", "first_token.png", "induction_head.png",
                     "induction_probe.png", "previous_token_head.png"]
    assert (tmp_path / "maps" / ".attnviz-manifest.json").is_file()  # what the next run removes
    assert all((tmp_path / "maps" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)


def test_score_map_figure_labels_axes_and_cells():
    from attnviz.pictures.scan import score_map_figure

    scores = np.arange(12, dtype=float).reshape(3, 4) / 12
    scores[1, 2] = np.nan
    fig = score_map_figure(scores, [0, 5, 7], "induction", "mean score")
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("head", "layer")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "5", "7"]
    cells = [t.get_text() for t in ax.texts]
    assert len(cells) == 11 and "0.92" in cells  # NaN cell left empty
    big = score_map_figure(np.zeros((48, 25)), list(range(48)), "xl", "mean score")
    assert len(big.axes[0].texts) == 0  # too many cells to write numbers in


@pytest.mark.parametrize("case", ["long", "jsonl", "empty", "both", "argument-long"])
def test_input_errors_are_one_line_exit_2(cli, tmp_path, case):
    (tmp_path / "long.txt").write_text("short one\n\n" + " ".join(["word"] * 40) + "\nfine\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n\n{"text": 3}\n')
    (tmp_path / "empty.txt").write_text("\n  \n\n")
    args = {
        "long": ["--file", tmp_path / "long.txt", "--context-length", "16"],
        "jsonl": ["--file", tmp_path / "bad.jsonl"],
        "empty": ["--file", tmp_path / "empty.txt"],
        "both": ["some text", "--file", tmp_path / "long.txt"],
        "argument-long": ["ok", " ".join(["word"] * 40), "--context-length", "16"],
    }[case]
    expected = {
        "long": f"--file {tmp_path / 'long.txt'} line 3: the prompt is 40 tokens",
        "jsonl": f'--file {tmp_path / "bad.jsonl"} line 3: no "text" string',
        "empty": "holds no prompts",
        "both": "not both",
        "argument-long": "argument 2: the prompt is 40 tokens",
    }[case]
    result = cli("scan", *args, "--heads", "4", "--d-model", "32")
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], result.stderr


def test_invalid_json_line_is_named(cli, tmp_path):
    (tmp_path / "p.jsonl").write_text('{"text": "ok"}\n{"text": "unterminated\n')
    result = cli("scan", "--file", tmp_path / "p.jsonl")
    assert result.exit_code == 2
    assert "line 2: not valid JSON" in result.stderr


def test_one_token_prompts_are_skipped_with_a_warning(cli):
    result = cli("scan", "Hi", "two tokens", "--heads", "4", "--d-model", "32", "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["skipped_one_token"] == 1
    assert "Warning: skipped 1 one-token prompt" in result.stderr


def test_byte_order_mark_crlf_and_unicode_line_separator(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "first prompt"}\r\n\r\n{"text": "a\xe2\x80\xa8b c"}\r\n')
    records, where = scan.read_corpus(None, path)
    assert records == [(1, "first prompt"), (3, "a\u2028b c")]
    assert where == f"--file {path} line"
    (tmp_path / "p.txt").write_bytes(b"one\xe2\x80\xa8two\r\nthree\n")
    records, _ = scan.read_corpus(None, tmp_path / "p.txt", limit=1)
    assert records == [(1, "one\u2028two")]
