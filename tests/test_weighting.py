"""Value-weighted attention (Kobayashi et al. 2020) and attention rollout (Abnar & Zuidema
2020), checked against plain-loop recomputations from exported arrays and the checkpoints'
own tensors: a tiny GPT-2, a Llama with grouped key/value heads, and random mode."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import make_family_checkpoint, one_layer, small_options
from matplotlib import colormaps
from matplotlib.colors import PowerNorm
from PIL import Image

from attnviz.analyses import weighting
from attnviz.pictures import heatmap, plot
from attnviz.pictures.colours import Measure
from attnviz.pictures.norms import norm_pictures

TEXT = "When Mary and John went to the store, John gave a drink to"
LLAMA_TEXT = "The cat sat on the mat. The dog sat on the log. Mary and John"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """Two layers, 4 query heads reading 2 key/value heads (grouped-query attention)."""
    return make_family_checkpoint(tmp_path_factory.mktemp("llama-gqa"), "llama", n_layers=2,
                                  heads=4, kv_heads=2, std=0.25)


def checkpoint_tensors(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def export(cli, tmp_path, *args, name="w.npz"):
    path = tmp_path / name
    done = cli("export", *args, "-o", path, "-q")
    assert done.exit_code == 0, done.stderr
    return one_layer(np.load(path), args)


def loop_norms(weights, attn_input, w_value, b_value, w_out, kv_of):
    """N[l, h, i, j] = ||alpha_ij * W_O[:, h] (W_V[kv(h)] x_j + b_V[kv(h)])||, one vector at a
    time: python loops over layers, heads, keys and queries."""
    n_layers, n_heads, n, _ = weights.shape
    head_dim = w_out[0].shape[-1] // n_heads
    out = np.zeros_like(weights, dtype=np.float64)
    for layer in range(n_layers):
        for h in range(n_heads):
            kv = kv_of(h)
            rows = slice(kv * head_dim, (kv + 1) * head_dim)
            out_slice = w_out[layer][:, h * head_dim:(h + 1) * head_dim].astype(np.float64)
            for j in range(n):
                value = w_value[layer][rows].astype(np.float64) @ attn_input[layer][j]
                if b_value is not None:
                    value = value + b_value[layer][rows]
                length = np.sqrt(np.sum((out_slice @ value) ** 2))
                for i in range(n):
                    out[layer, h, i, j] = weights[layer, h, i, j] * length
    return out


def loop_rollout(rows):
    """R = A~_L ... A~_0, A~ = (mean_h A + I) / 2 with its rows renormalised: a loop of
    matrix products over the layers."""
    n = rows.shape[-1]
    result = np.eye(n)
    for layer in rows.astype(np.float64):
        mean = sum(layer[h] for h in range(layer.shape[0])) / layer.shape[0]
        mixed = 0.5 * mean + 0.5 * np.eye(n)
        for i in range(n):
            mixed[i] /= mixed[i].sum()
        result = mixed @ result
    return result


def peaked(weights):
    """Random weights spread until attention is peaked: the strongest key of a row (after
    the first) holds most of it, so norms and rollout are far from uniform."""
    return float(weights[:, :, 1:].max(-1).mean())


# ------------------------------------------------------------------------------ norms


def test_gpt2_norms_equal_a_plain_loop_over_the_checkpoint(cli, tmp_path, hf_checkpoint):
    arrays = export(cli, tmp_path, TEXT, "--weights", hf_checkpoint, "--layer", "all",
                    "--weighting", "norm", "--include-params")
    assert peaked(arrays["weights"]) > 0.6
    tensors = checkpoint_tensors(hf_checkpoint)
    n_layers = arrays["weights"].shape[0]
    # GPT-2's Conv1D stores c_proj as (in, out): W_O is its transpose, (d_model, H * hd)
    w_out = [tensors[f"h.{layer}.attn.c_proj.weight"].T for layer in range(n_layers)]
    expected = loop_norms(arrays["weights"], arrays["attn_input"], arrays["W_value"],
                          arrays["b_value"], w_out, kv_of=lambda h: h)
    n = len(arrays["token_ids"])
    assert arrays["norms"].shape == arrays["weights"].shape == (3, 4, n, n) and n > 10
    assert arrays["norms"].dtype == np.float32
    np.testing.assert_allclose(arrays["norms"], expected, rtol=2e-5, atol=1e-6)
    # the norms are not the weights: the length of each key's value reweighs them
    lengths = arrays["norms"][:, :, -1, :] / np.maximum(arrays["weights"][:, :, -1, :], 1e-30)
    assert lengths.std() > 0.05 * lengths.mean()
    assert np.all(np.triu(arrays["norms"], 1) == 0)  # the masked future stays 0


def test_llama_grouped_kv_heads_read_their_own_value_head(cli, tmp_path, llama):
    arrays = export(cli, tmp_path, LLAMA_TEXT, "--weights", llama, "--layer", "all",
                    "--weighting", "norm", "--include-params")
    assert peaked(arrays["weights"]) > 0.55
    tensors = checkpoint_tensors(llama)
    w_out = [tensors[f"model.layers.{layer}.self_attn.o_proj.weight"] for layer in range(2)]
    n_heads, n_kv = 4, arrays["W_value"].shape[1] // (w_out[0].shape[1] // 4)
    assert n_kv == 2
    group = n_heads // n_kv
    expected = loop_norms(arrays["weights"], arrays["attn_input"], arrays["W_value"], None,
                          w_out, kv_of=lambda h: h // group)
    np.testing.assert_allclose(arrays["norms"], expected, rtol=2e-5, atol=1e-6)
    # reading kv head h % n_kv instead (heads 1 and 2 swapped) would give other numbers
    wrong = loop_norms(arrays["weights"], arrays["attn_input"], arrays["W_value"], None, w_out,
                       kv_of=lambda h: h % n_kv)
    assert np.abs(wrong - expected).max() > 1e-2


@pytest.mark.parametrize("impl,bias", [("fused", True), ("wrapper", False)])
def test_random_mode_norms_use_out_proj_of_the_seeded_module(cli, tmp_path, impl, bias):
    import torch

    from attnviz.core.attention import MultiHeadAttention

    flags = ["--qkv-bias"] if bias else []
    arrays = export(cli, tmp_path, "Your journey starts with one step today", *small_options(4, 32),
                    "--seed", "7", "--impl", impl, *flags, "--weighting", "norm",
                    "--include-params")
    with torch.random.fork_rng(devices=[]):  # the module random mode builds, independently
        torch.manual_seed(7)
        module = MultiHeadAttention(32, 32, 16, num_heads=4, qkv_bias=bias)
    np.testing.assert_array_equal(arrays["W_value"], module.W_value.weight.detach().numpy())
    w_out = module.out_proj.weight.detach().numpy()
    expected = loop_norms(arrays["weights"][None], arrays["attn_input"][None],
                          arrays["W_value"][None], arrays["b_value"][None] if bias else None,
                          [w_out], kv_of=lambda h: h)[0]
    assert arrays["norms"].shape == (4, 7, 7)
    np.testing.assert_allclose(arrays["norms"], expected, rtol=2e-5, atol=1e-6)


def test_library_norms_equal_the_export_and_survive_a_window(cli, tmp_path, hf_checkpoint):
    from attnviz.analyses.attention import analyze

    arrays = export(cli, tmp_path, TEXT, "--weights", hf_checkpoint, "--layer", "1",
                    "--weighting", "norm")
    result = analyze(TEXT, weights=str(hf_checkpoint), layer="1")
    np.testing.assert_allclose(weighting.norm_weights(result)[0], arrays["norms"], rtol=1e-6)
    # --tokens A:B: the norms of the whole text, cut (not recomputed on the window)
    cut = export(cli, tmp_path, TEXT, "--weights", hf_checkpoint, "--layer", "1",
                 "--weighting", "norm", "--tokens", "4:11", name="cut.npz")
    np.testing.assert_allclose(cut["norms"], arrays["norms"][:, 4:11, 4:11], rtol=1e-6)


def test_renormalized_rows_are_probabilities():
    norms = np.array([[[[2.0, 0.0], [1.0, 3.0]]]], dtype=np.float32)
    rows = weighting.renormalized(norms)
    np.testing.assert_allclose(rows, [[[[1.0, 0.0], [0.25, 0.75]]]])
    assert np.all(weighting.renormalized(np.zeros((1, 1, 2, 2))) == 0)  # no NaN from 0 / 0


@pytest.mark.parametrize("value,top", [(0.37, 0.4), (0.4, 0.4), (4.1, 5.0), (1.0, 1.0),
                                       (0.0, 1.0), (123.0, 150.0), (2.2, 2.5)])
def test_colour_top_is_a_round_number_above_the_largest_norm(value, top):
    assert weighting.colour_top(np.array([0.0, value])) == top


# ---------------------------------------------------------------------------- rollout


def test_rollout_equals_a_loop_of_matrix_products(cli, tmp_path, hf_checkpoint):
    arrays = export(cli, tmp_path, TEXT, "--weights", hf_checkpoint, "--layer", "all",
                    "--rollout", "--weighting", "norm")
    np.testing.assert_array_equal(arrays["rollout_layers"], [0, 1, 2])
    expected = loop_rollout(weighting.renormalized(arrays["norms"]))  # --weighting norm
    np.testing.assert_allclose(arrays["rollout"], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(arrays["rollout"].sum(-1), 1.0, atol=1e-5)
    plain = export(cli, tmp_path, TEXT, "--weights", hf_checkpoint, "--layer", "all",
                   "--rollout", name="plain.npz")
    expected = loop_rollout(plain["weights"])
    np.testing.assert_allclose(plain["rollout"], expected, rtol=1e-5, atol=1e-7)
    assert np.abs(plain["rollout"] - arrays["rollout"]).max() > 1e-3  # the weighting matters
    # through layers 0-1 only: --layer 1
    upto = export(cli, tmp_path, TEXT, "--weights", hf_checkpoint, "--layer", "1", "--rollout",
                  name="upto.npz")
    np.testing.assert_allclose(upto["rollout"], loop_rollout(plain["weights"][:2]), rtol=1e-5,
                               atol=1e-7)


def test_llama_rollout_and_a_window_of_it(cli, tmp_path, llama):
    arrays = export(cli, tmp_path, LLAMA_TEXT, "--weights", llama, "--layer", "all", "--rollout")
    whole = loop_rollout(arrays["weights"])
    np.testing.assert_allclose(arrays["rollout"], whole, rtol=1e-5, atol=1e-7)
    cut = export(cli, tmp_path, LLAMA_TEXT, "--weights", llama, "--layer", "all", "--rollout",
                 "--tokens", "5:15", name="cut.npz")
    # computed on the whole text, then cut (a rollout of the cut weights would differ)
    np.testing.assert_allclose(cut["rollout"], whole[5:15, 5:15], rtol=1e-5, atol=1e-7)
    assert np.abs(loop_rollout(cut["weights"]) - whole[5:15, 5:15]).max() > 1e-3


@pytest.mark.parametrize("spec,expected", [(None, [0, 1, 2]), (["all"], [0, 1, 2]), (["1"], [0, 1]),
                                           (["0,1"], [0, 1]), (["0"], [0])])
def test_rollout_layers_run_from_zero_to_the_deepest(spec, expected):
    assert weighting.rollout_layers(spec, 3) == expected


def test_rollout_layers_refuse_a_list_with_a_gap():
    from attnviz.core.errors import InputError

    with pytest.raises(InputError, match="cannot take the layers 1,2"):
        weighting.rollout_layers(["1,2"], 3)


# --------------------------------------------------------------------------- heatmap


def cell_centres(figure, n, i, j):
    ax = figure.axes[0]
    x, y = ax.transData.transform((j, i))
    return int(figure.canvas.get_width_height()[1] - y), int(x)


def test_heatmap_rollout_writes_one_picture_of_the_loop_rollout(cli, tmp_path, hf_checkpoint):
    out = tmp_path / "out"
    done = cli("heatmap", TEXT, "--weights", hf_checkpoint, "--view", "rollout", "--out", out,
               "--json", "--no-annotate")
    assert done.exit_code == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["files"] == [str(out / "rollout.png")]
    assert sorted(p.name for p in out.iterdir()) == [".attnviz-manifest.json", "rollout.png"]
    assert document["config"]["rollout"] == {"layers": [0, 1, 2], "weighting": "attention"}
    arrays = export(cli, tmp_path, TEXT, "--weights", hf_checkpoint, "--layer", "all")
    expected = loop_rollout(arrays["weights"])
    labels = [t["label"] for t in document["tokens"]]
    n = len(labels)
    title = f"Attention rollout through layers 0–2, {n} tokens"
    figure = heatmap.HeatmapFigure(labels, 1, annotate=False, extra_texts=[title],
                                   measure=plot.ROLLOUT, axis_labels=plot.ROLLOUT_AXES)
    figure.render([expected.astype(np.float32)], [title])
    assert figure.titles[0].get_text() == title
    pixels = np.asarray(Image.open(out / "rollout.png").convert("RGBA"))
    norm = PowerNorm(0.5, 0.0, 1.0)
    for i, j in [(0, 0), (5, 0), (9, 3), (n - 1, n - 1), (n - 1, 7), (n - 2, n - 3)]:
        y, x = cell_centres(figure, n, i, j)
        colour = np.array(colormaps["viridis"](norm(expected[i, j]), bytes=True))
        np.testing.assert_allclose(pixels[y, x], colour, atol=3, err_msg=f"cell {i},{j}")


def test_heatmap_norm_draws_the_norms_on_their_own_scale(cli, tmp_path, llama):
    out = tmp_path / "out"
    done = cli("heatmap", LLAMA_TEXT, "--weights", llama, "--layer", "1", "--weighting", "norm",
               "--head", "2", "--out", out, "--json")
    assert done.exit_code == 0, done.stderr
    document = json.loads(done.stdout)
    top = document["config"]["weighting"]["top"]
    assert document["config"]["weighting"]["name"] == "norm"
    arrays = export(cli, tmp_path, LLAMA_TEXT, "--weights", llama, "--layer", "1",
                    "--weighting", "norm")
    norms = arrays["norms"]
    assert top == weighting.colour_top(norms) and norms.max() <= top < 2 * norms.max()
    labels = [t["label"] for t in document["tokens"]]
    measure = Measure(weighting.NORM_LABEL, top, " · value-weighted")
    figure = heatmap.HeatmapFigure(labels, 1, extra_texts=["t"], measure=measure)
    named = weighting.NORM_LABEL[:-1]  # the label goes on as "(…, √ scale)"
    colorbar = [ax for ax in figure.fig.axes if ax.get_ylabel().startswith(named)]
    assert len(colorbar) == 1
    ticks = [t.get_text() for t in colorbar[0].get_yticklabels()]
    assert ticks[0] == "0" and ticks[-1] == f"{top:g}"
    figure.render([norms[2]], ["t"])
    pixels = np.asarray(Image.open(out / "head_02.png").convert("RGBA"))
    scale = PowerNorm(0.5, 0.0, top)
    n = norms.shape[-1]
    for i, j in [(0, 0), (7, 0), (12, 3), (n - 1, n - 1), (n - 1, 2)]:
        y, x = cell_centres(figure, n, i, j)
        colour = np.array(colormaps["viridis"](scale(norms[2, i, j]), bytes=True))
        np.testing.assert_allclose(pixels[y, x], colour, atol=3, err_msg=f"cell {i},{j}")


def test_heatmap_titles_say_value_weighted(tmp_path, hf_checkpoint):
    from attnviz.analyses.attention import analyze

    result = analyze(TEXT, weights=str(hf_checkpoint), layer="all")
    shown, measure = norm_pictures(result)
    files = plot.write_heatmaps(shown, tmp_path, heads=[0], measure=measure, annotate=True)
    assert [f.path.name for f in files][-1] == "model.png"
    assert measure.title == " · value-weighted" and measure.label == weighting.NORM_LABEL
    figure = heatmap.HeatmapFigure(result.token_labels, 1, measure=measure, annotate=True)
    figure.render([shown.weights[0, 0]], ["t"])
    printed = [t.get_text() for t in figure.cell_texts[0] if t.get_text()]
    decimals = measure.decimals
    assert printed[0] == f"{shown.weights[0, 0, 0, 0]:.{decimals}f}"


def test_norm_lines_view_uses_opacity_norm_over_top(cli, tmp_path, hf_checkpoint):
    done = cli("heatmap", "Your journey starts", "--weights", hf_checkpoint, "--weighting", "norm",
               "--view", "lines", "--head", "1", "--out", tmp_path / "l", "--json")
    assert done.exit_code == 0, done.stderr
    top = json.loads(done.stdout)["config"]["weighting"]["top"]
    values = np.array([[0.0, 0.0], [top / 2, top]], dtype=np.float32)
    np.testing.assert_allclose(plot.lines_panel(values, Measure("n", top)), [[0, 0], [0.5, 1]])
    assert plot.lines_note("", Measure("‖α·f(x)‖ (value-weighted)", top)) == f"opacity = ‖α·f(x)‖ / {top:g}"


# ----------------------------------------------------------------------- compare-heads


def test_compare_heads_norm_statistics_are_those_of_renormalised_rows(cli, tmp_path, hf_checkpoint):
    done = cli("compare-heads", TEXT, "--weights", hf_checkpoint, "--layer", "2", "--weighting",
               "norm", "--similarity", "--format", "json")
    assert done.exit_code == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["config"]["weighting"]["name"] == "norm"
    assert "renormalised to sum 1" in document["config"]["weighting"]["use"]
    norms = export(cli, tmp_path, TEXT, "--weights", hf_checkpoint, "--layer", "2",
                   "--weighting", "norm")["norms"].astype(np.float64)
    plain = json.loads(cli("compare-heads", TEXT, "--weights", hf_checkpoint, "--layer", "2",
                           "--format", "json").stdout)
    n = norms.shape[-1]
    for h, row in enumerate(document["heads"]):
        rows = [norms[h, i] / norms[h, i].sum() for i in range(n)]
        entropy = np.mean([-sum(p * np.log(p) for p in r if p > 0) for r in rows])
        previous = np.mean([rows[i][i - 1] for i in range(1, n)])
        distance = np.mean([sum(rows[i][j] * (i - j) for j in range(n)) for i in range(n)])
        assert row["entropy"] == pytest.approx(entropy, rel=1e-5)
        assert row["max_weight"] == pytest.approx(np.mean([r.max() for r in rows]), rel=1e-5)
        assert row["self"] == pytest.approx(np.mean([rows[i][i] for i in range(n)]), rel=1e-5)
        assert row["previous_token"] == pytest.approx(previous, rel=1e-5)
        assert row["mean_distance"] == pytest.approx(distance, rel=1e-5)
        assert row["entropy"] != pytest.approx(plain["heads"][h]["entropy"], rel=1e-3)
    assert len(document["similarity"][0]) == 4 and document["similarity"][0][0][0] == 0


def test_compare_heads_plot_draws_the_norms(cli, tmp_path, hf_checkpoint):
    plain, weighted = tmp_path / "a.png", tmp_path / "n.png"
    for path, extra in ((plain, []), (weighted, ["--weighting", "norm"])):
        done = cli("compare-heads", TEXT, "--weights", hf_checkpoint, "-o", path, *extra)
        assert done.exit_code == 0, done.stderr
    assert plain.read_bytes() != weighted.read_bytes()
    assert Image.open(weighted).size[0] > 400


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args,message", [
    (["heatmap", TEXT, "--weighting", "foo"], "'foo' is not one of"),
    (["compare-heads", TEXT, "--weighting", "foo"], "'foo' is not one of"),
    (["export", TEXT, "--weighting", "foo", "-o", "{tmp}/w.npz"], "'foo' is not one of"),
    (["report", TEXT, "--weighting", "foo", "-o", "{tmp}/r.html"], "'foo' is not one of"),
    (["heatmap", TEXT, "--view", "rollout", "--layer", "1,2", "--weights", "{ckpt}"],
     "cannot take the layers 1,2"),
    (["heatmap", TEXT, "--view", "rollout", "--head", "1"], "drop --head"),
    (["heatmap", TEXT, "--weighting", "norm", "--exclude-first"], "give one of them"),
    (["compare-heads", TEXT, "--view", "rollout", "-o", "{tmp}/p.png"],
     "'rollout' is not one of 'heatmap', 'lines'"),
    (["export", TEXT, "--rollout", "--layer", "0,2", "--weights", "{ckpt}", "-o", "{tmp}/w.npz"],
     "--rollout multiplies every layer"),
    (["report", TEXT, "--rollout", "--layer", "2,1", "--weights", "{ckpt}", "-o", "{tmp}/r.html"],
     "--rollout multiplies every layer"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(cli, tmp_path, hf_checkpoint, args, message):
    out = tmp_path / "out"
    args = [a.format(tmp=tmp_path, ckpt=hf_checkpoint) for a in args]
    if args[0] == "heatmap":
        args += ["--out", str(out)]
    done = cli(*args)
    assert done.exit_code == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], done.stderr
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []  # no picture, file, folder or manifest


def test_default_weighting_changes_nothing(cli, tmp_path):
    """--weighting attention is the default: the same files, byte for byte."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("heatmap", "Hello world", *small_options(), "--out", a, "-q").exit_code == 0
    assert cli("heatmap", "Hello world", *small_options(), "--out", b, "-q", "--weighting",
               "attention").exit_code == 0
    assert (a / "heads.png").read_bytes() == (b / "heads.png").read_bytes()


def test_heatmap_rollout_of_a_window_keeps_absolute_positions(cli, tmp_path, llama):
    out = tmp_path / "out"
    done = cli("heatmap", LLAMA_TEXT, "--weights", llama, "--view", "rollout", "--tokens", "5:15",
               "--weighting", "norm", "--out", out, "--json", "--image-format", "svg")
    assert done.exit_code == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["window"] == {"start": 5, "stop": 15}
    assert [t["position"] for t in document["tokens"]] == list(range(5, 15))
    assert document["config"]["rollout"] == {"layers": [0, 1], "weighting": "norm"}
    svg = (out / "rollout.svg").read_text()
    assert "Value-weighted rollout through layers 0–1, 10 tokens" in svg
    assert "5: " in svg and "14: " in svg  # labels with their absolute positions


def test_heatmap_norm_table_names_the_colour_scale(cli, tmp_path):
    done = cli("heatmap", "Your journey starts", *small_options(), "--weighting", "norm",
               "--out", tmp_path / "o")
    assert done.exit_code == 0, done.stderr
    assert "value-weighted norms, colours 0-" in done.stdout
