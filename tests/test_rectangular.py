"""Results whose keys are not the queries' own causal past: an encoder's bidirectional
self-attention (square, nothing masked, a window on both sides), cross-attention (queries
of one text over another's keys, ``(L, H, Tq, Tk)``) and sentence pairs — the result, its
statistics and rows, and every picture of it, checked through what is drawn."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from attnviz.analyses.attention import AttentionResult, crop
from attnviz.analyses.stats import head_rows, head_stats
from attnviz.pictures import cells, forms, plot
from attnviz.pictures.colours import weight_colormap


def rows_summing_to_one(shape, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.random(shape).astype(np.float32) ** 4 + 1e-3
    return (w / w.sum(-1, keepdims=True)).astype(np.float32)


def make_result(attention="encoder", n=6, n_keys=None, layers=(0,), heads=3, pair_start=None,
                windows=(), seed=0):
    n_keys = n if n_keys is None else n_keys
    cross = attention == "cross"
    return AttentionResult(
        token_ids=list(range(10, 10 + n)),
        weights=rows_summing_to_one((len(layers), heads, n, n_keys), seed),
        layers=list(layers),
        attn_inputs=np.zeros((len(layers), n, 4), np.float32),
        params={},
        config={"mode": "random"},
        raw_tokens=[f"q{i}".encode() for i in range(n)],
        windows=list(windows),
        attention=attention,
        key_token_ids=list(range(50, 50 + n_keys)) if cross else None,
        key_raw_tokens=[f"k{j}".encode() for j in range(n_keys)] if cross else None,
        special_ids=frozenset({10}),
        pair_start=pair_start,
    )


def test_a_cross_result_has_its_keys_own_tokens_and_shape():
    result = make_result("cross", n=4, n_keys=7)
    assert result.weights.shape == (1, 3, 4, 7)
    assert (result.cross, result.causal, result.n_tokens, result.n_keys) == (True, False, 4, 7)
    assert result.key_labels == [f"k{j}" for j in range(7)]
    assert [t["id"] for t in result.key_tokens()] == list(range(50, 57))
    assert result.tokens()[0]["special"] is True and "special" not in result.tokens()[1]
    assert result.row_fields() == {"attention": "cross"}
    square = make_result("decoder")
    assert (square.cross, square.key_tokens(), square.row_fields()) == (False, None, {})
    assert square.key_labels == square.token_labels


def test_a_window_of_a_cross_result_cuts_the_queries_only():
    result = make_result("cross", n=6, n_keys=5)
    cut = crop(result, 2, 4)
    assert cut.weights.shape == (1, 3, 2, 5)
    np.testing.assert_array_equal(cut.weights, result.weights[:, :, 2:4])
    assert cut.key_token_ids == result.key_token_ids
    square = crop(make_result("encoder", n=6), 1, 4)
    assert square.weights.shape == (1, 3, 3, 3)


def test_export_arrays_of_a_cross_result_name_both_texts():
    from attnviz.analyses.attention import result_arrays

    result = make_result("cross", n=3, n_keys=5, layers=(0, 2))
    arrays = result_arrays(result)
    assert arrays["weights"].shape == (2, 3, 3, 5)
    assert list(arrays["key_token_ids"]) == list(range(50, 55))
    assert list(arrays["key_tokens"]) == [f"k{j}" for j in range(5)]
    assert list(arrays["positions"]) == [0, 1, 2] and list(arrays["layers"]) == [0, 2]
    single = result_arrays(make_result("encoder", n=4), single=True)
    assert single["weights"].shape == (3, 4, 4) and "key_tokens" not in single


def test_pandas_rows_of_an_encoder_hold_every_pair_and_say_which_kind():
    pytest.importorskip("pandas")
    frame = make_result("encoder", n=5).to_pandas()
    assert len(frame) == 3 * 25 and set(frame["attention"]) == {"encoder"}
    cross = make_result("cross", n=3, n_keys=4).to_pandas()
    assert len(cross) == 3 * 12 and cross["key_token"].iloc[3] == "k3"
    assert len(make_result("decoder", n=5).to_pandas()) == 3 * 15


def test_a_pair_says_which_sentence_each_token_is_in():
    result = make_result("encoder", n=6, pair_start=4)
    assert [t["sentence"] for t in result.tokens()] == [0, 0, 0, 0, 1, 1]
    assert result.pair_boundary == 4
    assert crop(result, 1, 5).pair_boundary == 3
    assert crop(result, 4, 6).pair_boundary is None  # the window holds the second sentence only


def test_statistics_of_bidirectional_rows_use_every_key_and_signed_distances():
    n = 5
    ahead = np.zeros((1, n, n), np.float32)  # every query on the key after it (the last: itself)
    for i in range(n):
        ahead[0, i, min(i + 1, n - 1)] = 1.0
    stats = head_stats(ahead, "encoder")
    assert stats["mean_distance"][0] == pytest.approx(-(n - 1) / n)  # looks ahead: negative
    assert stats["previous_token"][0] == 0.0
    uniform = np.full((1, n, n), 1 / n, np.float32)
    assert head_stats(uniform, "encoder")["normalized_entropy"][0] == pytest.approx(1.0)
    assert head_stats(uniform, "decoder")["normalized_entropy"][0] > 1.0  # causal: i + 1 keys


def test_statistics_of_cross_attention_leave_out_what_compares_positions():
    w = rows_summing_to_one((2, 3, 8))
    stats = head_stats(w, "cross")
    for name in ("self", "previous_token", "mean_distance"):
        assert np.isnan(stats[name]).all()
    np.testing.assert_allclose(stats["first_token"], w[:, :, 0].mean(-1))
    rows = head_rows(w[None], [0], attention="cross")
    assert rows[0]["attention"] == "cross" and rows[0]["self"] is None
    assert list(rows[0])[:3] == ["layer", "head", "attention"]
    assert "attention" not in head_rows(rows_summing_to_one((1, 2, 4, 4)), [0])[0]


def test_unmasked_hides_nothing_or_the_keys_outside_a_window_on_both_sides():
    w = rows_summing_to_one((6, 6))
    assert not np.ma.getmaskarray(cells.unmasked(w)).any()
    mask = np.ma.getmaskarray(cells.unmasked(w, 2))
    i, j = np.indices((6, 6))
    np.testing.assert_array_equal(mask, np.abs(i - j) >= 2)
    # masked() leaves an unmasked panel alone: the causal mask is not added back
    assert not np.ma.getmaskarray(cells.masked(cells.unmasked(w))).any()


def test_exclude_first_of_bidirectional_rows_renormalises_every_row():
    w = rows_summing_to_one((4, 4))
    view = cells.exclude_first(cells.unmasked(w), causal=False)
    assert np.ma.getmaskarray(view)[:, 0].all() and not np.ma.getmaskarray(view)[:, 1:].any()
    np.testing.assert_allclose(view.sum(axis=1), 1.0, rtol=1e-6)


def pixel_colours(path):
    return {tuple(p) for p in np.asarray(Image.open(path).convert("RGBA")).reshape(-1, 4)}


def mask_pixels(path) -> int:
    """Pixels of the mask colour (a few more come from anti-aliased text)."""
    pixels = np.asarray(Image.open(path).convert("RGBA")).reshape(-1, 4)
    return int((pixels == np.array(mask_rgba(), np.uint8)).all(axis=1).sum())


def mask_rgba(cmap="viridis"):
    colormap, _ = weight_colormap(cmap)
    return tuple(colormap(np.ma.masked_all(1), bytes=True)[0])


def test_encoder_pictures_mask_nothing_and_name_no_mask(tmp_path):
    result = make_result("encoder", n=6, layers=(0, 1))
    files = plot.write_heatmaps(result, tmp_path / "encoder", dpi=60)
    plot.write_heatmaps(make_result("decoder", n=6, layers=(0, 1)), tmp_path / "decoder", dpi=60)
    assert len(files) == 2 * (3 + 1) + 1
    for f in files:
        causal = tmp_path / "decoder" / f.path.relative_to(tmp_path / "encoder")
        assert mask_pixels(f.path) * 50 < mask_pixels(causal), f.path
    form = forms.Form.of(result)
    assert form.mask_label([None]) is None and form.rows is None


def test_an_encoders_local_layer_masks_the_keys_outside_its_window_in_the_mask_colour(tmp_path):
    result = make_result("encoder", n=12, windows=[3])
    form = forms.Form.of(result)
    assert form.mask_label([3]) == "outside\nwindow ±2"
    panel = form.view(result.weights[0, 0], 3)
    i, j = np.indices((12, 12))
    np.testing.assert_array_equal(np.ma.getmaskarray(panel), np.abs(i - j) >= 3)
    plot.write_heatmaps(result, tmp_path, dpi=60)
    plot.write_heatmaps(make_result("encoder", n=12), tmp_path / "global", dpi=60)
    assert mask_pixels(tmp_path / "head_00.png") > 50 * mask_pixels(tmp_path / "global" / "head_00.png")


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_cross_pictures_have_query_rows_and_the_other_texts_columns(tmp_path, fmt):
    result = make_result("cross", n=3, n_keys=9, layers=(0, 1), heads=2)
    files = plot.write_heatmaps(result, tmp_path, dpi=60, image_format=fmt)
    assert len(files) == 2 * (2 + 1) + 1
    if fmt == "png":
        width, height = Image.open(tmp_path / "layer_00" / "head_00.png").size
        assert width > height  # 9 key columns, 3 query rows
        assert mask_pixels(tmp_path / "layer_00" / "head_00.png") < 200
    else:
        svg = (tmp_path / "layer_00" / "head_00.svg").read_text()
        assert "key token of the other text" in svg and "k8" in svg and "q2" in svg


def test_the_cross_figure_labels_queries_down_the_side_and_keys_along_the_top():
    result = make_result("cross", n=3, n_keys=5)
    form = forms.Form.of(result)
    from attnviz.pictures.heatmap import HeatmapFigure

    figure = HeatmapFigure(form.columns, rows=form.rows, mask_label=None)
    assert [t.get_text() for t in figure.row_labels] == ["q0", "q1", "q2"]
    assert [t.get_text() for t in figure.col_labels[0]] == [f"k{j}" for j in range(5)]
    rgba = figure.render([form.view(result.weights[0, 0], None)], ["t"])
    assert rgba.shape[2] == 4


def test_compare_and_the_notebook_overview_draw_cross_heads(tmp_path):
    result = make_result("cross", n=4, n_keys=6)
    path = plot.save_compare(tmp_path / "pair.png", result, [0, 1], dpi=60)
    assert Image.open(path).size[0] > 0
    png = plot.overview_png(result, dpi=40)
    assert png.startswith(b"\x89PNG")
    with pytest.raises(Exception, match="--view lines draws causal"):
        plot.save_compare(tmp_path / "lines.png", result, [0], view="lines")


def test_a_pair_draws_a_line_before_the_second_sentences_row_and_column(tmp_path):
    result = make_result("encoder", n=8, pair_start=5)
    form = forms.Form.of(result)
    assert form.rows.marked_from == 5 and form.rows.marked_rows_from == 5
    line = np.uint32(cells.rgba_word("#ffffff"))
    colormap, _ = weight_colormap("viridis")
    from matplotlib.colors import Normalize

    words = cells.boundary_words(form.view(result.weights[0, 0], None), 80, 80, colormap,
                                 Normalize(0, 1), 5, [line, line], row_before=5)
    full_rows = np.flatnonzero((words == line).all(axis=1))
    full_cols = np.flatnonzero((words == line).all(axis=0))
    assert len(full_rows) == 2 and len(full_cols) == 2  # one line each way, two pixels wide
    assert abs(full_rows[0] - 5 * 78 / 8) <= 1 and abs(full_cols[0] - 5 * 78 / 8) <= 1
    files = plot.write_heatmaps(result, tmp_path, dpi=60)
    assert len(files) == 3 + 1
