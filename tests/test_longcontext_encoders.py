"""Long texts of encoders (bidirectional rows): every reduction of the engine's tiles equal
to the same reduction, in float64 numpy, of transformers' eager float32 attentions
(``output_attentions=True``) — a peaked ModernBERT with local (±W) and global layers, a BERT
with a sentence pair — and of the whole matrix of random mode's ``--bidirectional``; pooled
maps cover the whole square and never hide a peak; the commands draw, compare and export
them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from helpers import make_encoder_checkpoint, small_options

from attnviz.analyses.attention import load_model
from attnviz.analyses.longcontext import LayerReduction, analyze_long, binned, log_bins
from attnviz.analyses.stats import head_stats
from attnviz.core.config import ModelConfig
from attnviz.models import engine
from attnviz.models.engine import attend

T_MODERNBERT, T_BERT = 700, 600
# transformers' float32 arithmetic in another order (fused projections, one product of the
# whole matrix, its softmax) against the engine's tiles: a weight differs by up to ~1e-5 in
# the deeper layers (where the layers' inputs already differ by float32 rounding)
TOL = 2e-5
# ... and a sum over hundreds of queries of such weights (received, by distance, the
# statistics), whose errors share their sign where the layer's inputs differ: relative
SUM_TOL = 5e-5


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("long-encoders")
    return {
        # layers 0 and 2 global, 1 and 3 local: a window of ±32 keys, wider than a tile
        "modernbert": make_encoder_checkpoint(root / "modernbert", "modernbert", n_layers=4,
                                              std=0.4, positions=1024, local_attention=64),
        "bert": make_encoder_checkpoint(root / "bert", "bert", n_layers=2, std=0.5,
                                        positions=T_BERT + 40),
    }


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 16 rows x 40 keys: a window and every row span several."""
    monkeypatch.setattr(engine, "TILE_ROWS", 16)
    monkeypatch.setattr(engine, "TILE_CELLS", 16 * 40)


def eager(folder, token_ids, token_types=None) -> list[np.ndarray]:
    """transformers' eager float32 attentions, ``(H, T, T)`` float64 per layer."""
    model = transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    extra = {} if token_types is None else {"token_type_ids": torch.tensor([token_types])}
    with torch.no_grad():
        out = model(torch.tensor([token_ids]), output_attentions=True, **extra)
    return [a[0].double().numpy() for a in out.attentions]


def pooled(a: np.ndarray, b: int):
    """Block max and block mean (over the cells inside the matrix) of ``(H, T, T)``."""
    heads, n = a.shape[0], a.shape[-1]
    p = -(-n // b)
    padded = np.zeros((heads, p * b, p * b))
    padded[:, :n, :n] = a
    blocks = padded.reshape(heads, p, b, p, b)
    cells = np.minimum(b, n - np.arange(p) * b)
    return blocks.max(axis=(2, 4)), blocks.sum(axis=(2, 4)) / (cells[:, None] * cells[None, :])


def both_ways(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(H, T, T)`` -> the mass at each distance back (i - j) and ahead (j - i), ``(H, T)``
    each: the diagonal in both."""
    n = a.shape[-1]
    i, j = np.indices((n, n))
    back, ahead = i >= j, j >= i
    return (np.stack([np.bincount((i - j)[back], weights=h[back], minlength=n) for h in a]),
            np.stack([np.bincount((j - i)[ahead], weights=h[ahead], minlength=n) for h in a]))


def check_reductions(long, expected: list[np.ndarray], span, sinks: int, tol: float) -> None:
    """Every array of ``long`` against the same reduction of the whole matrices."""
    a, b = long.arrays, long.block
    stats = long.stats()
    for li, w in enumerate(expected):
        top, mean = pooled(w, b)
        np.testing.assert_allclose(a["weights_max"][li], top, atol=tol, rtol=0)
        np.testing.assert_allclose(a["weights_mean"][li], mean, atol=tol, rtol=0)
        np.testing.assert_allclose(a["window"][li], w[:, span[0]:span[1], span[0]:span[1]],
                                   atol=tol, rtol=0)
        np.testing.assert_allclose(a["row_max"][li], w.max(axis=-1), atol=tol, rtol=0)
        entropy = -(w * np.log(np.where(w > 0, w, 1))).sum(axis=-1)
        np.testing.assert_allclose(a["entropy"][li], entropy, atol=20 * tol, rtol=0)
        back, ahead = both_ways(w)
        # sums over hundreds of queries: relative
        np.testing.assert_allclose(a["received"][li], w.sum(axis=1), rtol=SUM_TOL, atol=tol)
        np.testing.assert_allclose(a["distance"][li], back, rtol=SUM_TOL, atol=tol)
        np.testing.assert_allclose(a["ahead"][li], ahead, rtol=SUM_TOL, atol=tol)
        for column, values in head_stats(w, "encoder").items():
            np.testing.assert_allclose(stats[column][li], values, rtol=SUM_TOL, atol=tol,
                                       err_msg=column)
        # an encoder's every query sees the first keys: alpha is the mean over all T
        np.testing.assert_allclose(long.sink_alpha[li], w[:, :, :sinks].mean(axis=1),
                                   rtol=SUM_TOL, atol=tol)
        np.testing.assert_allclose(long.sink_mass[li], w[:, :, :sinks].sum(-1).mean(-1),
                                   atol=tol)
    assert max((w.max(axis=-1) >= 0.5).mean() for w in expected) > 0.3  # peaked: demanding
    # the keys ahead carry real mass: a reduction of causal rows would miss it
    assert min(a["ahead"][li, :, 1:].sum(-1).min() for li in range(len(expected))) > 0.1 * long.n_tokens


def test_modernbert_local_and_global_layers_equal_transformers_eager(checkpoints, small_tiles):
    folder = checkpoints["modernbert"]
    model = load_model(ModelConfig(), str(folder))
    rng = np.random.default_rng(11)
    token_ids = [1, *rng.integers(5, model.vocab_size, T_MODERNBERT - 2).tolist(), 2]
    layers = list(range(model.n_layers))
    windows = [model.window(i) for i in layers]
    assert windows == [None, 33, None, 33]  # transformers' |j - i| <= local_attention // 2
    long = analyze_long(model, token_ids, layers, resolution=97, sink_tokens=3, span=(301, 389))
    assert T_MODERNBERT % long.block and long.block == 8  # blocks that do not divide the text
    assert long.attention == "encoder" and not long.causal
    expected = eager(folder, token_ids)
    check_reductions(long, expected, (301, 389), 3, TOL)
    # a local layer's pooled map: exactly 0 in the blocks wholly outside the window, and the
    # picture masks those and only those (they cannot hide a weight)
    drawn = long.pooled("max")
    assert drawn.attention == "encoder" and drawn.weights.shape[-1] == long.n_blocks
    from attnviz.pictures.families import cell_window
    from attnviz.pictures.forms import Form

    view = Form.of(drawn).view(drawn.weights[1, 0], cell_window(windows[1], long.block))
    mask = np.ma.getmaskarray(view)
    assert mask.any() and (long.arrays["weights_max"][1][:, mask] == 0).all()
    assert (long.arrays["weights_max"][1][:, ~mask].max(axis=0) > 0).all()
    glob = Form.of(drawn).view(drawn.weights[0, 0], None)
    assert not np.ma.getmaskarray(glob).any() and np.triu(drawn.weights[0], 1).max() > 0.5


def test_bert_sentence_pair_through_the_cli_equals_transformers_eager(checkpoints, cli,
                                                                      tmp_path):
    folder = checkpoints["bert"]
    words = "the cat sat on the mat and it was tired so it slept by the door".split()
    text = " ".join(words[(i * 7) % len(words)] for i in range(220))
    pair = " ".join(words[(i * 3) % len(words)] for i in range(220))
    out = tmp_path / "pair.npz"
    result = cli("export", text, "--pair", pair, "--weights", folder, "--layer", "all",
                 "--resolution", "64", "--sink-tokens", "2", "-o", out)
    assert result.exit_code == 0, result.stderr
    saved = np.load(out)
    token_ids, types = saved["token_ids"].tolist(), saved["token_types"].tolist()
    n = len(token_ids)
    assert n > 450 and 0 < types.index(1) < n and str(saved["attention"]) == "encoder"
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(text, pair)
    assert token_ids == encoded["input_ids"] and types == encoded["token_type_ids"]
    expected = eager(folder, token_ids, types)  # the segments change every weight
    b = int(saved["block"])
    assert b == -(-n // 64)
    for li, w in enumerate(expected):
        top, mean = pooled(w, b)
        np.testing.assert_allclose(saved["weights_max"][li], top, atol=TOL, rtol=0)
        np.testing.assert_allclose(saved["weights_mean"][li], mean, atol=TOL, rtol=0)
        back, ahead = both_ways(w)
        np.testing.assert_allclose(saved["distance"][li], back, rtol=SUM_TOL, atol=TOL)
        np.testing.assert_allclose(saved["distance_ahead"][li], ahead, rtol=SUM_TOL, atol=TOL)
        np.testing.assert_allclose(saved["received"][li], w.sum(axis=1), rtol=SUM_TOL, atol=TOL)
        np.testing.assert_allclose(saved["sink_alpha"][li], w[:, :, :2].mean(axis=1),
                                   rtol=SUM_TOL, atol=1e-6)
    edges = saved["distance_bins"]
    assert edges.tolist() == log_bins(n).tolist()
    np.testing.assert_allclose(saved["distance_ahead_binned"],
                               binned(saved["distance_ahead"], edges))
    assert max((w.max(axis=-1) >= 0.5).mean() for w in expected) > 0.3  # peaked
    refused = cli("export", text, "--pair", pair, "--weights", folder, "--resolution", "64",
                  "--full-weights", "-o", tmp_path / "every.npz")
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("Error: --full-weights") and not (tmp_path / "every.npz").exists()
    # compare-heads: the encoder's columns of the whole text, every row says its kind
    rows = cli("compare-heads", text, "--pair", pair, "--weights", folder, "--layer", "all",
               "--resolution", "64", "--format", "json")
    assert rows.exit_code == 0, rows.stderr
    document = json.loads(rows.stdout)
    assert [t["sentence"] for t in document["tokens"]] == types
    for row in document["heads"]:
        expected_stats = head_stats(expected[row["layer"]], "encoder")
        assert row["attention"] == "encoder"
        for column in ("entropy", "normalized_entropy", "first_token", "mean_distance",
                       "previous_token", "self"):
            # (a mean distance sums weights times distances of up to T tokens: a float32
            # weight's ~1e-6 times T; 1.5e-4 was seen at T ~ 500)
            near = 1e-5 * len(types) if column == "mean_distance" else 1e-6
            assert row[column] == pytest.approx(expected_stats[column][row["head"]], rel=SUM_TOL,
                                                abs=near), column


def test_the_exact_window_and_heatmap_of_a_long_modernbert_text(checkpoints, cli, tmp_path):
    folder = checkpoints["modernbert"]
    words = "the cat sat on the mat and a dog slept by the door while rain fell".split()
    text = tmp_path / "long.txt"
    text.write_text(" ".join(words[(i * 5) % len(words)] for i in range(200)))
    out = tmp_path / "maps"
    result = cli("heatmap", "--file", text, "--weights", folder, "--layer", "0,1",
                 "--resolution", "100", "--out", out, "--format", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    n = len(document["tokens"])
    assert n > 100 and document["attention"] == "encoder"
    assert document["tokens"][0].get("special") and document["tokens"][-1].get("special")
    assert all(h["attention"] == "encoder" for h in document["heads"])
    assert {"layer_00/stats.png", "layer_01/heads.png", "model.png"} <= {
        str(p.relative_to(out)) for p in out.rglob("*.png")}
    ids = [t["id"] for t in document["tokens"]]
    expected = eager(folder, ids)
    for h in document["heads"]:
        stats = head_stats(expected[h["layer"]], "encoder")
        assert h["mean_distance"] == pytest.approx(stats["mean_distance"][h["head"]], abs=1e-4)
        assert h["first_token"] == pytest.approx(stats["first_token"][h["head"]], abs=1e-6)
    window = cli("export", "--file", text, "--weights", folder, "--layer", "1",
                 "--resolution", "100", "--tokens", "200:260", "-o", tmp_path / "w.npz")
    assert window.exit_code == 0, window.stderr
    saved = np.load(tmp_path / "w.npz")
    np.testing.assert_allclose(saved["weights"][0], expected[1][:, 200:260, 200:260],
                               atol=TOL, rtol=0)
    assert saved["weights"][0].max() > 0.5


def test_a_single_sharp_weight_ahead_of_its_query_survives_every_resolution():
    n, heads, hd = 997, 3, 16
    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(1, heads, n, hd, generator=gen) * 0.1
    keys = torch.randn(1, heads, n, hd, generator=gen) * 0.1
    values = torch.randn(1, heads, n, hd, generator=gen)
    queries[0, 1, 33] = keys[0, 1, 900] * 400  # query 33 of head 1 looks at key 900 alone
    for resolution in (1, 2, 7, 64, 333, 996):
        block = -(-n // resolution)
        sink = LayerReduction(heads, n, block, maps=("max", "mean"), causal=False)
        attend(queries, keys, values, start=0, scale=None, softcap=None, window=None,
               reduce=sink, causal=False)
        sink.finish()
        assert float(sink.maps["max"][1, 33 // block, 900 // block]) > 0.99, resolution
        assert float(sink.ahead[1, 900 - 33]) > 0.99  # 867 keys ahead
        if 900 // block != 33 // block:
            assert float(sink.maps["max"][0, 33 // block, 900 // block]) < 0.5  # head 0: none


@pytest.mark.parametrize("window", [None, 30])
def test_bidirectional_tiles_of_any_size_give_the_same_reductions(monkeypatch, window):
    n, heads, hd = 300, 4, 8
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, heads, n, hd, generator=gen) * 2 for _ in range(3))
    k, v = k[:, :2], v[:, :2]  # grouped: two query heads per key/value head
    one = LayerReduction(heads, n, 4, span=(100, 160), causal=False)
    attend(q, k, v, start=0, scale=0.7, softcap=None, window=window, reduce=one, causal=False)
    seen = []
    many = LayerReduction(heads, n, 4, span=(100, 160), causal=False)
    monkeypatch.setattr(engine, "TILE_CELLS", 2 * 8 * 24)
    monkeypatch.setattr(engine, "TILE_ROWS", 8)

    def spy(tile):
        seen.append((tile.weights.shape, tile.q_start, tile.k_start))
        many(tile)

    spy.align = 4
    attend(q, k, v, start=0, scale=0.7, softcap=None, window=window, reduce=spy, causal=False)
    one.finish(), many.finish()
    assert len(seen) > 100 and all(g == 2 and r <= 8 and c <= 24 for (g, r, c), _, _ in seen)
    if window is not None:  # tiles skip the keys outside the window on both sides
        assert all(k0 > q0 - window - 8 and k0 < q0 + window + 8 for _, q0, k0 in seen)
    for name in ("entropy", "received", "distance", "ahead", "origin", "top_log", "window"):
        torch.testing.assert_close(getattr(many, name), getattr(one, name), rtol=1e-5,
                                   atol=1e-6)
    _, whole = attend(q, k, v, start=0, scale=0.7, softcap=None, window=window, causal=False)
    w = whole[0].double().numpy()
    back, ahead = both_ways(w)
    np.testing.assert_allclose(many.distance.numpy(), back, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(many.ahead.numpy(), ahead, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(many.origin.numpy(), w[:, 0, 0], atol=1e-6)


def test_random_bidirectional_long_text_equals_its_whole_matrix(cli, tmp_path):
    text = " ".join(f"w{i % 13}" for i in range(60))
    sizes = small_options()
    full = cli("export", text, "--bidirectional", *sizes, "-o", tmp_path / "full.npz")
    long = cli("export", text, "--bidirectional", *sizes, "--resolution", "16",
               "--full-weights", "-o", tmp_path / "long.npz")
    assert full.exit_code == 0 and long.exit_code == 0, long.stderr
    w = np.load(tmp_path / "full.npz")["weights"].astype(np.float64)  # (H, T, T): every weight
    saved = np.load(tmp_path / "long.npz")
    n = w.shape[-1]
    assert n > 16 and str(saved["attention"]) == "encoder"
    np.testing.assert_allclose(saved["weights"][0], w, atol=1e-6, rtol=0)  # --full-weights
    top, mean = pooled(w, int(saved["block"]))
    np.testing.assert_allclose(saved["weights_max"][0], top, atol=1e-6, rtol=0)
    np.testing.assert_allclose(saved["weights_mean"][0], mean, atol=1e-6, rtol=0)
    assert np.triu(top, 1).max() > 0  # the square, not a triangle
    back, ahead = both_ways(w)
    np.testing.assert_allclose(saved["distance"][0], back, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(saved["distance_ahead"][0], ahead, rtol=1e-5, atol=1e-6)
    rows = cli("compare-heads", text, "--bidirectional", *sizes, "--resolution", "16",
               "--format", "json")
    assert rows.exit_code == 0, rows.stderr
    expected = head_stats(w, "encoder")
    for row in json.loads(rows.stdout)["heads"]:
        assert row["attention"] == "encoder" and "sink_mass" in row
        for column, values in expected.items():
            assert row[column] == pytest.approx(values[row["head"]], rel=1e-5, abs=1e-6), column


def test_the_python_api_gives_an_encoders_long_result_that_shows_itself(checkpoints):
    import attnviz
    from attnviz.analyses.longcontext import LongResult

    text = " ".join(["the cat sat on the mat"] * 60)
    result = attnviz.analyze(text, weights=str(checkpoints["modernbert"]), layer="0,1",
                             resolution=50)
    assert isinstance(result, LongResult) and result.attention == "encoder"
    assert result.n_tokens > 50 and result.row_fields() == {"attention": "encoder"}
    assert "distance_ahead" in result.export_arrays()
    html = result._repr_mimebundle_()["text/html"]
    assert "(encoder)" in html and "farthest either way" in html


@pytest.mark.parametrize("exclude_first, exclude_self", [(False, False), (True, True)])
def test_scan_scores_a_long_encoder_prompt_through_the_tiles_as_the_whole_matrix(
        checkpoints, monkeypatch, exclude_first, exclude_self):
    from attnviz.analyses import scanning

    model = load_model(ModelConfig(), str(checkpoints["modernbert"]))
    rng = np.random.default_rng(5)
    segment = rng.integers(5, model.vocab_size, 60).tolist()  # repeats: duplicates, induction
    prompts = [scanning.Prompt(0, "", [1, *(segment * 6)[:345], 2]),
               scanning.Prompt(1, "", [1, *rng.integers(5, model.vocab_size, 288).tolist(), 2])]
    options = dict(exclude_first=exclude_first, exclude_self=exclude_self)
    whole = scanning.scan(model, prompts, [0, 1], **options)
    monkeypatch.setattr(scanning, "LONG_PROMPT", 100)  # both prompts through the engine
    tiled = scanning.scan(model, prompts, [0, 1], **options)
    assert tiled.attention == whole.attention == "encoder"
    for name in scanning.COLUMNS:
        np.testing.assert_allclose(tiled.mean[name], whole.mean[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    for name in ("duplicate_token_head", "induction_head", "previous_token_head"):
        assert (whole.mean[name] > 1e-4).all(), name  # the patterns are there: not 0 = 0
    assert (whole.mean["mean_distance"] < 0).any()  # signed: some heads look ahead


def test_a_pooled_maps_long_colour_bar_name_stays_beside_its_bar():
    """The overview's bar is short; "largest weight of each 8×8 block (√ scale)" is
    wrapped onto as many lines as it takes, never past the bar's ends (into the legend of
    the masked cells below it)."""
    from attnviz.pictures.colours import Measure
    from attnviz.pictures.grid import grid_figure

    w = np.random.default_rng(0).random((4, 40, 40)).astype(np.float32)
    measure = Measure(label="largest weight of each 8×8 block", block=8)
    grid = grid_figure(w[None], "g", measure=measure, mask_label="outside\nwindow ±64")
    renderer = grid.fig.canvas.get_renderer()
    (bar,) = [ax for ax in grid.fig.axes if ax.get_ylabel()]
    name = bar.yaxis.label
    assert name.get_text().startswith("largest weight of\n") and "√ scale" in name.get_text()
    box, frame = name.get_window_extent(renderer), bar.get_window_extent(renderer)
    assert frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1
