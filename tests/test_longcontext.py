"""The long-context engine: every reduction equal to the same reduction of the whole matrix's
float64 softmax, for every family's twist (grouped heads, windows shorter than the text,
softcap with interleaved windows, QK-norm, learned positions), at block sizes that do not
divide the text; a single sharp weight survives pooling at every resolution; short texts
are what they always were."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from helpers import make_family_checkpoint, make_hf_checkpoint, write_bpe_tokenizer
from typer.testing import CliRunner

from attnviz.analyses.attention import analyze_ids, load_model
from attnviz.analyses.longcontext import (
    LayerReduction,
    analyze_long,
    analyze_text,
    binned,
    log_bins,
)
from attnviz.analyses.stats import head_stats
from attnviz.cli import app
from attnviz.core.config import ModelConfig
from attnviz.core.errors import InputError
from attnviz.models.engine import attend

T = 1500  # the whole (H, T, T) float64 matrix fits: the reference
VOCAB = 300
GEMMA2 = dict(vocab_size=VOCAB, max_position_embeddings=2048, pad_token_id=None,
              bos_token_id=None, eos_token_id=None, hidden_size=64, intermediate_size=128,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              query_pre_attn_scalar=16, num_hidden_layers=4, sliding_window=200,
              attn_logit_softcapping=20.0)


def _gemma2(folder: Path) -> Path:
    torch.manual_seed(5)
    model = transformers.AutoModelForCausalLM.from_config(transformers.Gemma2Config(**GEMMA2),
                                                          attn_implementation="eager")
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.uniform_(-0.3, 0.3) if "norm" in name else param.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    write_bpe_tokenizer(folder, vocab_size=VOCAB, bos="<bos>")
    return folder


BUILDERS = {
    "gpt2": lambda f: make_hf_checkpoint(f, n_layer=2, n_head=4, n_embd=64, n_positions=2048),
    "llama-gqa": lambda f: make_family_checkpoint(f, "llama", std=0.4, heads=4, kv_heads=2),
    "mistral-window": lambda f: make_family_checkpoint(f, "mistral", std=0.4, sliding_window=300),
    "qwen3-qk-norm": lambda f: make_family_checkpoint(f, "qwen3", std=0.4),
    "gemma2-softcap-windows": _gemma2,
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    return {name: build(root / name) for name, build in BUILDERS.items()}


floors: list[float] = []  # per layer of the last reference: the tolerance of a weight


def reference(model, token_ids, layers, block=1):
    """Each layer's weights ``(H, T, T)`` as a float64 softmax of the scores the model
    computes (its own float32 queries and keys, scale and softcap), from the inputs the
    engine's run gave each layer — the run being checked (its tiles, of ``block``: the
    same float32 sums of every layer's output). ``floors`` gets each layer's tolerance,
    1e-6 (NaN when a score passes 200: a float32 score is then only known to ~1e-5)."""
    n = len(token_ids)
    sinks = [LayerReduction(model.n_heads, n, block, maps=()) for _ in layers]
    floors.clear()
    runs = model.run(torch.tensor([token_ids]), layers, reduce=sinks)
    out = []
    for attn_input, _, attn in runs:
        queries, keys, _ = attn.project(attn_input)
        keys = keys.repeat_interleave(queries.shape[1] // keys.shape[1], dim=1)
        scores = (queries @ keys.transpose(2, 3)) * attn.scale
        if attn.softcap is not None:
            scores = torch.tanh(scores / attn.softcap) * attn.softcap
        i, j = np.arange(n)[:, None], np.arange(n)[None, :]
        hidden = j > i if attn.window is None else (j > i) | (j <= i - attn.window)
        s = scores[0].double().numpy()
        s[:, hidden] = -np.inf
        top = float(np.abs(s[np.isfinite(s)]).max())
        s -= s.max(axis=-1, keepdims=True)
        w = np.exp(s)
        out.append(w / w.sum(axis=-1, keepdims=True))
        floors.append(1e-6 if top < 200 else float("nan"))
    return out


def pooled(a: np.ndarray, b: int):
    """Block max and block mean (over the cells inside the matrix) of ``(H, T, T)``."""
    heads, n = a.shape[0], a.shape[-1]
    p = -(-n // b)
    padded = np.zeros((heads, p * b, p * b))
    padded[:, :n, :n] = a
    blocks = padded.reshape(heads, p, b, p, b)
    cells = np.minimum(b, n - np.arange(p) * b)
    return blocks.max(axis=(2, 4)), blocks.sum(axis=(2, 4)) / (cells[:, None] * cells[None, :])


def by_distance(a: np.ndarray) -> np.ndarray:
    n = a.shape[-1]
    i, j = np.tril_indices(n)
    return np.stack([np.bincount(i - j, weights=head[i, j], minlength=n) for head in a])


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILDERS)
def test_every_reduction_equals_the_float64_softmax_of_the_whole_matrix(checkpoints, name):
    model = load_model(ModelConfig(), str(checkpoints[name]))
    token_ids = np.random.default_rng(7).integers(0, VOCAB, T).tolist()
    layers = list(range(model.n_layers))
    long = analyze_long(model, token_ids, layers, resolution=173, sink_tokens=5, span=(611, 700))
    assert T % long.block and long.block == 9  # blocks that do not divide the text
    expected = reference(model, token_ids, layers, long.block)
    a = long.arrays
    for li, w in enumerate(expected):
        floor = floors[li]
        assert floor == 1e-6  # (scores up to 200: float32 still carries 1e-6 of a weight)
        top, mean = pooled(w, long.block)
        np.testing.assert_allclose(a["weights_max"][li], top, atol=floor, rtol=0)
        np.testing.assert_allclose(a["weights_mean"][li], mean, atol=floor, rtol=0)
        np.testing.assert_allclose(a["window"][li], w[:, 611:700, 611:700], atol=floor, rtol=0)
        np.testing.assert_allclose(a["row_max"][li], w.max(axis=-1), atol=floor, rtol=0)
        entropy = -(w * np.log(np.where(w > 0, w, 1))).sum(axis=-1)
        np.testing.assert_allclose(a["entropy"][li], entropy, atol=20 * floor, rtol=0)
        # sums over up to 1,500 queries: relative
        np.testing.assert_allclose(a["received"][li], w.sum(axis=1), rtol=floor, atol=floor)
        np.testing.assert_allclose(a["distance"][li], by_distance(w), rtol=floor, atol=floor)
        columns = head_stats(w)
        stats = long.stats()
        for column, values in columns.items():
            np.testing.assert_allclose(stats[column][li], values, rtol=floor, atol=floor,
                                       err_msg=column)
        alpha = np.stack([w[:, j:, j].mean(axis=-1) for j in range(5)], axis=-1)
        np.testing.assert_allclose(long.sink_alpha[li], alpha, rtol=floor, atol=floor)
        np.testing.assert_allclose(long.sink_mass[li], w[:, :, :5].sum(-1).mean(-1), atol=floor)
    assert max((w.max(axis=-1) >= 0.5).mean() for w in expected) > 0.3  # peaked: demanding
    windows = [model.window(i) for i in layers]
    if name in ("mistral-window", "gemma2-softcap-windows"):
        assert any(w is not None and w < T for w in windows)  # the window cuts the text


def test_a_single_sharp_weight_far_from_the_diagonal_survives_every_resolution():
    n, heads, hd = 997, 3, 16
    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(1, heads, n, hd, generator=gen) * 0.1
    keys = torch.randn(1, heads, n, hd, generator=gen) * 0.1
    values = torch.randn(1, heads, n, hd, generator=gen)
    queries[0, 1, 900] = keys[0, 1, 33] * 400  # query 900 of head 1 looks at key 33 alone
    for resolution in (1, 2, 7, 64, 333, 996):
        block = -(-n // resolution)
        sink = LayerReduction(heads, n, block, maps=("max", "mean"))
        attend(queries, keys, values, start=0, scale=None, softcap=None, window=None,
               reduce=sink)
        sink.finish()
        top = sink.maps["max"][1, 900 // block, 33 // block]
        assert float(top) > 0.99, resolution
        if 900 // block > 0:  # (a block of row 0 holds its weight of 1 on key 0)
            assert float(sink.maps["max"][0, 900 // block, 33 // block]) < 0.5  # head 0: none


@pytest.mark.parametrize("window, softcap", [(None, None), (50, None), (None, 5.0)])
def test_the_engine_holds_tiles_not_the_matrix(monkeypatch, window, softcap):
    """Small tiles or large, fused first pass or not: the same reductions and output, and
    never a tile larger than asked or keys outside the window."""
    from attnviz.models import engine

    n, heads, hd = 300, 4, 8
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, heads, n, hd, generator=gen) * 2 for _ in range(3))
    k = k[:, :2]  # grouped: two query heads per key/value head
    v = v[:, :2]
    one = LayerReduction(heads, n, 4, span=(100, 160))
    context_one, _ = attend(q, k, v, start=0, scale=0.7, softcap=softcap, window=window,
                            reduce=one)
    seen = []
    many = LayerReduction(heads, n, 4, span=(100, 160))
    monkeypatch.setattr(engine, "TILE_CELLS", 2 * 8 * 24)
    monkeypatch.setattr(engine, "TILE_ROWS", 8)

    def spy(tile):
        seen.append(tile.weights.shape)
        many(tile)

    spy.align = 4
    context_many, _ = attend(q, k, v, start=0, scale=0.7, softcap=softcap, window=window,
                             reduce=spy)
    one.finish(), many.finish()  # (the worker threads' sums gathered)
    assert len(seen) > 100
    for group, rows, keys in seen:
        assert group == 2 and rows <= 8 and keys <= 24
    torch.testing.assert_close(context_many, context_one, rtol=0, atol=1e-5)
    for name in ("entropy", "received", "distance", "top_log", "window"):
        torch.testing.assert_close(getattr(many, name), getattr(one, name), rtol=1e-5,
                                   atol=1e-6)
    torch.testing.assert_close(many.maps["max"], one.maps["max"], rtol=0, atol=1e-6)
    torch.testing.assert_close(many.maps["mean"], one.maps["mean"], rtol=0, atol=1e-6)
    # and the whole matrix, as the engine computes it for a short text
    _, whole = attend(q, k, v, start=0, scale=0.7, softcap=softcap, window=window)
    w = whole[0].double()
    torch.testing.assert_close(one.received, w.sum(dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one.window.double(), w[:, 100:160, 100:160], rtol=0, atol=1e-6)


def test_a_short_text_is_the_whole_matrix_as_always(checkpoints):
    folder = str(checkpoints["llama-gqa"])
    token_ids = np.random.default_rng(3).integers(0, VOCAB, 300).tolist()
    text = "The cat sat on the mat. " * 30
    whole = analyze_text(text, weights=folder, layer="all")
    from attnviz.analyses.attention import analyze

    np.testing.assert_array_equal(whole.weights, analyze(text, weights=folder, layer="all").weights)
    # a layer nobody keeps still gives the next one the same input as before: byte-equal
    deep = analyze_ids(token_ids, weights=folder, layer="2")
    every = analyze_ids(token_ids, weights=folder, layer="all")
    np.testing.assert_array_equal(deep.weights[0], every.weights[2])


def test_log_bins_sum_the_distances():
    distance = np.arange(10.0)
    edges = log_bins(10)
    assert edges.tolist() == [0, 1, 2, 4, 8, 10]
    assert binned(distance, edges).tolist() == [0, 1, 5, 22, 17]


def run(*args):
    return CliRunner().invoke(app, list(map(str, args)), env={"COLUMNS": "120"})


def test_heatmap_draws_a_long_text_pooled_with_its_statistics(checkpoints, tmp_path):
    folder = checkpoints["mistral-window"]
    text = tmp_path / "long.txt"
    text.write_text(" ".join(f"w{i % 97}" for i in range(250)))
    out = tmp_path / "maps"
    result = run("heatmap", "--file", text, "--weights", folder, "--layer", "0,2",
                 "--resolution", "200", "-o", out, "--format", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    block = document["pooled"]["block"]
    n = len(document["tokens"])
    assert n > 200 and block == -(-n // 200)
    names = sorted(Path(f).relative_to(out).as_posix() for f in document["files"])
    assert "layer_00/stats.png" in names and "layer_02/head_03.png" in names
    assert "model.png" in names
    heads = document["heads"]
    assert len(heads) == 2 * 4 and {"sink_mass", "entropy", "previous_token"} <= set(heads[0])
    model = load_model(ModelConfig(), str(folder))
    from attnviz.analyses.attention import encode_text

    ids = encode_text(model, text.read_text())
    expected = reference(model, ids, [0])[0]
    stats = head_stats(expected)
    for h in range(4):
        assert heads[h]["layer"] == 0 and heads[h]["head"] == h
        assert heads[h]["entropy"] == pytest.approx(stats["entropy"][h], abs=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--resolution", "0"], "--resolution must be between 1"),
    (["--resolution", "100000"], "--resolution must be between 1"),
    (["--sink-tokens", "5000"], "--sink-tokens must be at least 1"),
    (["--weighting", "norm"], "--weighting norm needs every weight"),
    (["--exclude-first"], "--exclude-first needs every weight"),
    (["--annotate"], "--annotate needs every weight"),
    (["--view", "lines"], "--view lines needs every weight"),
])
def test_bad_long_context_options_are_one_error_line(checkpoints, tmp_path, args, message):
    text = tmp_path / "long.txt"
    text.write_text(" ".join(f"w{i % 97}" for i in range(300)))
    out = tmp_path / "maps"
    result = run("heatmap", "--file", text, "--weights", checkpoints["llama-gqa"], "-o", out,
                 *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())


def test_a_text_longer_than_the_context_is_refused_by_its_length(checkpoints, tmp_path):
    text = tmp_path / "long.txt"
    text.write_text(" ".join(f"w{i % 97}" for i in range(2100)))  # > 2048 positions
    result = run("heatmap", "--file", text, "--weights", checkpoints["llama-gqa"],
                 "-o", tmp_path / "o")
    assert result.exit_code == 2
    assert "longer than the context length 2048" in result.output


def test_sink_tokens_must_leave_queries():
    with pytest.raises(InputError, match="--sink-tokens"):
        analyze_long(load_model(ModelConfig(n_heads=2, d_model=16)), [1, 2, 3], [0], sink_tokens=3)


def long_text(tmp_path, words: int = 250) -> Path:
    text = tmp_path / "long.txt"
    text.write_text(" ".join(f"w{i % 97}" for i in range(words)))
    return text


def test_export_of_a_long_text_writes_the_documented_arrays(checkpoints, tmp_path):
    folder, text = checkpoints["llama-gqa"], long_text(tmp_path)
    out = tmp_path / "long.npz"
    result = run("export", "--file", text, "--weights", folder, "--layer", "0,2",
                 "--resolution", "100", "--sink-tokens", "3", "--tokens", "40:90", "-o", out)
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    n, b = len(saved["token_ids"]), int(saved["block"])
    p = -(-n // b)
    assert n > 100 and b == -(-n // 100)
    assert saved["weights_max"].shape == saved["weights_mean"].shape == (2, 4, p, p)
    for name in ("entropy", "row_max", "received", "distance"):
        assert saved[name].shape == (2, 4, n), name
    assert saved["sink_mass"].shape == (2, 4) and saved["sink_alpha"].shape == (2, 4, 3)
    assert saved["weights"].shape == (2, 4, 50, 50)  # the exact window
    assert saved["weights_positions"].tolist() == list(range(40, 90))
    assert saved["distance_binned"].sum() == pytest.approx(saved["distance"].sum())
    assert "weights_mean" in saved and saved["layers"].tolist() == [0, 2]
    # the same text whole (every weight, --full-weights): each array is its reduction
    full = tmp_path / "full.npz"
    assert run("export", "--file", text, "--weights", folder, "--layer", "0,2",
               "--resolution", "100", "--full-weights", "-o", full).exit_code == 0
    w = np.load(full)["weights"].astype(np.float64)  # (2, 4, n, n)
    np.testing.assert_allclose(saved["received"], w.sum(axis=2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(saved["weights"], w[:, :, 40:90, 40:90], atol=1e-5)
    np.testing.assert_allclose(saved["sink_mass"], w[..., :3].sum(-1).mean(-1), atol=1e-6)


def test_export_refuses_a_file_larger_than_the_disk_before_writing(checkpoints, tmp_path,
                                                                   monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    out = tmp_path / "full.npz"
    result = run("export", "--file", long_text(tmp_path), "--weights",
                 checkpoints["llama-gqa"], "--layer", "all", "--full-weights", "-o", out)
    assert result.exit_code == 2 and "its disk has" in result.output
    assert not out.exists() and not list(tmp_path.glob(".full.npz*"))


def test_compare_heads_of_a_long_text_gives_the_whole_texts_statistics(checkpoints, tmp_path):
    folder, text = checkpoints["mistral-window"], long_text(tmp_path)
    result = run("compare-heads", "--file", text, "--weights", folder, "--layer", "1",
                 "--resolution", "64", "--format", "json", "-o", tmp_path / "p.png",
                 "--head", "2")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    n = len(document["tokens"])
    assert document["pooled"]["block"] == -(-n // 64)
    model = load_model(ModelConfig(), str(folder))
    expected = head_stats(reference(model, [t["id"] for t in document["tokens"]], [1],
                                    document["pooled"]["block"])[0])
    for row in document["heads"]:
        h = row["head"]
        assert row["mean_distance"] == pytest.approx(expected["mean_distance"][h], rel=1e-5)
        assert row["previous_token"] == pytest.approx(expected["previous_token"][h], abs=1e-6)
        assert 0 <= row["sink_mass"] <= 1
    assert (tmp_path / "p.png").stat().st_size > 0


@pytest.mark.parametrize("exclude_first, exclude_self", [(False, False), (True, True)])
def test_scan_scores_a_long_prompt_through_the_tiles_as_the_whole_matrix(
        checkpoints, monkeypatch, exclude_first, exclude_self):
    from attnviz.analyses import scanning

    model = load_model(ModelConfig(), str(checkpoints["mistral-window"]))
    rng = np.random.default_rng(5)
    # repeated segments: duplicate and induction patterns to find
    segment = rng.integers(0, VOCAB, 60).tolist()
    prompts = [scanning.Prompt(0, "", (segment * 6)[:347]),
               scanning.Prompt(1, "", rng.integers(0, VOCAB, 290).tolist())]
    options = dict(exclude_first=exclude_first, exclude_self=exclude_self)
    whole = scanning.scan(model, prompts, [0, 2], **options)
    monkeypatch.setattr(scanning, "LONG_PROMPT", 100)  # both prompts through the engine
    tiled = scanning.scan(model, prompts, [0, 2], **options)
    for name in scanning.COLUMNS:
        np.testing.assert_allclose(tiled.mean[name], whole.mean[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    for name in ("duplicate_token_head", "induction_head", "previous_token_head"):
        assert (whole.mean[name] > 1e-4).all(), name  # the patterns are there: not 0 = 0


def test_the_python_api_returns_a_long_result_that_shows_itself(tmp_path):
    import attnviz
    from attnviz.analyses.longcontext import LongResult

    text = " ".join(["the cat sat on the mat"] * 300)  # 1,800 GPT-2 tokens
    short = attnviz.analyze(text, context_length=2048, resolution=1800)
    result = attnviz.analyze(text, context_length=2048, resolution=200, tokens="100:140")
    assert isinstance(result, LongResult) and result.block == 9
    assert short.weights.shape == (1, 12, 1800, 1800)  # a resolution of the whole text: as ever
    np.testing.assert_allclose(result.exact_window().weights,
                               short.weights[..., 100:140, 100:140], atol=1e-6)
    np.testing.assert_allclose(result.arrays["received"][0],
                               short.weights[0].astype(np.float64).sum(axis=1), rtol=1e-5)
    bundle = result._repr_mimebundle_()
    assert "pooled 9×9" in bundle["text/html"] and "sink_mass" in bundle["text/html"]
    assert bundle["image/png"].startswith("iVBORw0K")  # base64 of a PNG
    result.save(tmp_path / "long.html")
    assert "Heads that look farthest" in (tmp_path / "long.html").read_text()


@pytest.mark.parametrize("n_keys, window, with_bias", [(300, None, False), (300, 40, True),
                                                         (170, None, True)])
def test_the_engine_attends_without_the_causal_mask(monkeypatch, n_keys, window, with_bias):
    """An encoder's self-attention (every key, or a window on both sides) and
    cross-attention over another text's keys, with an additive bias (T5's relative
    positions): the whole matrix, the tiles and the fused kernel all equal a float64
    softmax of the unmasked scores."""
    from attnviz.models import engine

    n, heads, hd = 300, 4, 8
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, heads, n, hd, generator=gen) * 2
    k, v = (torch.randn(1, 2, n_keys, hd, generator=gen) * 2 for _ in range(2))
    table = torch.randn(heads, n + n_keys, generator=gen) * 3
    bias = (lambda q_lo, q_hi, k_lo, k_hi: table[:, (torch.arange(k_lo, k_hi)[None, :]
            - torch.arange(q_lo, q_hi)[:, None]) + n]) if with_bias else None
    scores = (q.double() @ k.double().repeat_interleave(2, 1).transpose(2, 3)) * 0.7
    if with_bias:
        scores += bias(0, n, 0, n_keys).double()
    if window is not None:
        distance = (torch.arange(n_keys)[None, :] - torch.arange(n)[:, None]).abs()
        scores.masked_fill_(distance >= window, float("-inf"))
    expected = torch.softmax(scores, dim=-1)  # (1, H, T, Tk)
    expected_context = expected @ v.double().repeat_interleave(2, 1)

    context, whole = attend(q, k, v, start=0, scale=0.7, softcap=None, window=window,
                            causal=False, bias=bias)
    torch.testing.assert_close(whole.double(), expected, rtol=0, atol=5e-6)  # float32
    torch.testing.assert_close(context.double(), expected_context, rtol=0, atol=1e-5)

    monkeypatch.setattr(engine, "TILE_CELLS", 2 * 8 * 24)
    monkeypatch.setattr(engine, "TILE_ROWS", 8)
    gathered = torch.zeros(heads, n, n_keys, dtype=torch.float64)

    def collect(tile):
        rows, keys = tile.weights.shape[1:]
        gathered[tile.heads, tile.q_start:tile.q_start + rows,
                 tile.k_start:tile.k_start + keys] += tile.weights.double()

    collect.align = 4
    context_tiles, _ = attend(q, k, v, start=0, scale=0.7, softcap=None, window=window,
                              causal=False, bias=bias, reduce=collect)
    torch.testing.assert_close(gathered, expected[0], rtol=0, atol=5e-6)
    torch.testing.assert_close(context_tiles.double(), expected_context, rtol=0, atol=1e-5)
    monkeypatch.setattr(engine, "CHUNK_BYTES", 0)  # only the output: fused when it can be
    context_only, none = attend(q, k, v, start=0, scale=0.7, softcap=None, window=window,
                                causal=False, bias=bias, keep=False)
    assert none is None
    torch.testing.assert_close(context_only.double(), expected_context, rtol=0, atol=1e-5)
