"""`attnviz steps`: every matrix of one head's pipeline, checked against independent
computations (float64 numpy, torch's scaled_dot_product_attention, MultiHeadAttention,
transformers), and the figure checked through what it draws."""

import json
import os

import numpy as np
import pytest
import torch
from helpers import SHORT_TEXT, one_layer, small_options

from attnviz.analyses.attention import analyze
from attnviz.analyses.steps import head_steps
from attnviz.core.config import ModelConfig
from attnviz.pictures.steps import build_panels, steps_figure

TT_PANELS = ("scores", "scaled", "masked", "weights")
EIGHT_PANELS = ("queries", "keys", "scores", "scaled", "masked", "weights", "values", "context")


def run_json(cli, *args):
    result = cli("steps", *args, "--format", "json", "-q")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def matrix(doc, name):
    """A JSON matrix as float64, -inf where it holds null (the masked scores)."""
    return np.array([[-np.inf if v is None else v for v in row] for row in doc["matrices"][name]])


def softmax_of_masked(scaled):
    """float64 reference: the causal mask with -inf, then a row-wise softmax."""
    s = scaled.copy()
    s[np.triu_indices(len(s), 1)] = -np.inf
    e = np.exp(s - s.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def sdpa_context(doc):
    """torch's fused attention on the same Q, K, V, in the model's float32."""
    q, k, v = (torch.from_numpy(matrix(doc, n)).float()[None, None]
               for n in ("queries", "keys", "values"))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                           scale=doc["scale"])
    return out[0, 0].numpy()


def exported(cli, tmp_path, *args):
    path = tmp_path / "export.npz"
    result = cli("export", *args, "-o", path, "--include-params", "-q")
    assert result.exit_code == 0, result.stderr
    return one_layer(np.load(path), args)


# --- the numbers ------------------------------------------------------------------------

@pytest.mark.parametrize("heads,d_model,qkv_bias,head", [(4, 32, False, 3), (4, 32, True, 0),
                                                         (2, 12, False, 1), (12, 768, False, 5)])
def test_random_mode_pipeline_reproduces_the_model(cli, tmp_path, heads, d_model, qkv_bias, head):
    options = [*small_options(heads, d_model), *(["--qkv-bias"] if qkv_bias else [])]
    doc = run_json(cli, SHORT_TEXT, "--head", head, "-o", tmp_path / "s.png", *options)
    data = exported(cli, tmp_path, SHORT_TEXT, *options)
    dk = d_model // heads
    assert doc["head_dim"] == dk and doc["scale"] == pytest.approx(1 / np.sqrt(dk))

    # Q, K, V are this head's columns of the exported projections (float64 reference)
    x = data["attn_input"].astype(np.float64)
    cols = slice(head * dk, (head + 1) * dk)
    for name, key in (("queries", "query"), ("keys", "key"), ("values", "value")):
        expected = x @ data[f"W_{key}"][cols].T.astype(np.float64)
        if qkv_bias:
            expected += data[f"b_{key}"][cols]
        np.testing.assert_allclose(matrix(doc, name), expected, atol=1e-5, rtol=1e-5)

    q, k, v = matrix(doc, "queries"), matrix(doc, "keys"), matrix(doc, "values")
    np.testing.assert_allclose(matrix(doc, "scores"), q @ k.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(matrix(doc, "scaled"), q @ k.T / np.sqrt(dk), rtol=1e-5, atol=1e-6)
    masked = matrix(doc, "masked")
    assert np.isneginf(masked[np.triu_indices(6, 1)]).all()
    assert np.isfinite(masked[np.tril_indices(6)]).all()

    weights = softmax_of_masked(matrix(doc, "scaled"))  # softmax(mask(QKᵀ/√d_k)), float64
    np.testing.assert_allclose(weights, data["weights"][head], atol=1e-6)
    np.testing.assert_allclose(matrix(doc, "weights"), data["weights"][head], atol=1e-6)
    assert (matrix(doc, "weights")[np.triu_indices(6, 1)] == 0).all()

    context = matrix(doc, "context")
    np.testing.assert_allclose(context, matrix(doc, "weights") @ v, atol=1e-6)
    np.testing.assert_allclose(context, sdpa_context(doc), atol=1e-6)

    # ... and the per-head slice of MultiHeadAttention's context before out_proj
    from attnviz.core.attention import MultiHeadAttention

    mha = MultiHeadAttention(d_model, d_model, 6, num_heads=heads, qkv_bias=qkv_bias).eval()
    with torch.no_grad():
        for key in ("query", "key", "value"):
            getattr(mha, f"W_{key}").weight.copy_(torch.from_numpy(data[f"W_{key}"]))
            if qkv_bias:
                getattr(mha, f"W_{key}").bias.copy_(torch.from_numpy(data[f"b_{key}"]))
        heads_context, _ = mha.heads_context(torch.from_numpy(data["attn_input"])[None])
    np.testing.assert_allclose(context, heads_context[0, :, cols].numpy(), atol=1e-6)


def test_checkpoint_mode_pipeline_reproduces_the_model_and_transformers(cli, tmp_path,
                                                                         hf_checkpoint):
    import transformers

    text = "The cat sat on the mat because it was tired, and then it slept."
    options = ["--weights", hf_checkpoint, "--layer", "1"]
    data = exported(cli, tmp_path, text, *options)
    model = transformers.GPT2Model.from_pretrained(hf_checkpoint, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = model(torch.tensor([data["token_ids"].tolist()]), output_attentions=True).attentions
    for head in range(4):
        doc = run_json(cli, text, "--head", head, "-o", tmp_path / "s.png", *options)
        assert doc["layer"] == 1 and doc["head_dim"] == 16 and doc["scale"] == 0.25
        assert doc["formulas"]["queries"] == "Q = X·W_Q + b_Q"  # GPT-2 has biases
        weights = softmax_of_masked(matrix(doc, "scaled"))
        np.testing.assert_allclose(weights, data["weights"][head], atol=1e-6)
        np.testing.assert_allclose(matrix(doc, "weights"), data["weights"][head], atol=1e-6)
        np.testing.assert_allclose(matrix(doc, "weights"), attentions[1][0, head].numpy(), atol=1e-5)
        context = matrix(doc, "context")
        np.testing.assert_allclose(context, matrix(doc, "weights") @ matrix(doc, "values"), atol=1e-6)
        np.testing.assert_allclose(context, sdpa_context(doc), atol=1e-6)


def test_library_steps_are_the_models_own_numbers(hf_checkpoint):
    """Computed as the model does (float32, queries scaled first): identical, not just close."""
    result = analyze("The cat sat on the mat because it was tired", weights=str(hf_checkpoint),
                     layer=[0, 2])
    for layer_index, layer in enumerate(result.layers):
        for head in range(result.n_heads):
            steps = head_steps(result, head, layer=layer)
            assert steps.layer == layer
            np.testing.assert_array_equal(steps.weights, result.weights[layer_index, head])


def test_scale_comes_from_the_result_when_the_model_reports_one():
    result = analyze(SHORT_TEXT, ModelConfig(n_heads=4, d_model=32))
    result.scales = [0.5]  # e.g. a model that does not divide by √d_k
    steps = head_steps(result, 1)
    np.testing.assert_allclose(steps.scaled, steps.scores * 0.5, rtol=1e-6)
    assert steps.formulas()["scaled"] == "S × 0.5"


def test_scores_that_are_not_scaled_have_no_scale_step():
    result = analyze(SHORT_TEXT, ModelConfig(n_heads=4, d_model=32))
    result.scales = [1.0]  # e.g. GPT-2 with scale_attn_weights=false: S × 1 is no step
    steps = head_steps(result, 1)
    assert steps.scaled is None and "scaled" not in steps.matrices()
    assert steps.formulas()["weights"] == "A = softmax(mask(S))"
    np.testing.assert_array_equal(steps.masked[np.tril_indices(6)],
                                  steps.scores[np.tril_indices(6)])
    fig, _ = steps_figure(steps, result.token_labels)
    names = [ax.get_label() for ax in fig.axes]
    assert "scaled" not in names and "masked" in names
    assert "not scaled by 1/√d_k" in axes_by_name(fig)["scores"].get_title()


def test_csv_rows_of_an_encoder_and_of_cross_attention_name_their_kind(cli, tmp_path):
    for option, kind in ((["--bidirectional"], "encoder"), (["--cross", "Le chat"], "cross")):
        result = cli("steps", SHORT_TEXT, "--head", "0", *small_options(4, 32), *option, "-o",
                     tmp_path / "s.png", "--format", "csv")
        assert result.exit_code == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert lines[0] == "attention,step,matrix,formula,shape,min,max"
        assert {line.split(",")[0] for line in lines[1:]} == {kind}
    causal = cli("steps", SHORT_TEXT, "--head", "0", *small_options(4, 32), "-o",
                 tmp_path / "s.png", "--format", "csv")  # a decoder's rows are as they were
    assert causal.stdout.splitlines()[0] == "step,matrix,formula,shape,min,max"


# --- dropout ----------------------------------------------------------------------------

def test_dropout_is_nn_dropout_seeded_by_seed_and_feeds_the_context(cli, tmp_path):
    args = [SHORT_TEXT, "--head", "2", *small_options(4, 32), "--dropout", "0.5", "-o",
            tmp_path / "d.png"]
    doc = run_json(cli, *args, "--seed", "7")
    assert doc["dropout"] == {"p": 0.5, "seed": 7}
    assert list(doc["matrices"]) == ["queries", "keys", "scores", "scaled", "masked", "weights",
                                     "dropped", "values", "context"]
    weights, dropped = matrix(doc, "weights"), matrix(doc, "dropped")
    torch.manual_seed(7)  # the book: torch.manual_seed(123); dropout(attn_weights)
    expected = torch.nn.Dropout(0.5).train()(torch.from_numpy(weights).float()).numpy()
    np.testing.assert_allclose(dropped, expected, atol=1e-6)
    kept = dropped != 0
    assert 0 < kept[np.tril_indices(6)].sum() < 21  # some of the 21 visible weights dropped
    np.testing.assert_allclose(dropped[kept], 2 * weights[kept], rtol=1e-6)  # × 1/(1 - p)
    np.testing.assert_allclose(matrix(doc, "context"), dropped @ matrix(doc, "values"), atol=1e-6)
    assert not np.allclose(matrix(doc, "context"), weights @ matrix(doc, "values"))

    assert run_json(cli, *args, "--seed", "7")["matrices"] == doc["matrices"]  # deterministic
    other = run_json(cli, *args, "--seed", "8")
    assert other["matrices"]["dropped"] != doc["matrices"]["dropped"]


def test_dropout_leaves_the_global_torch_rng_alone():
    result = analyze(SHORT_TEXT, ModelConfig(n_heads=4, d_model=32))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    head_steps(result, 0, dropout=0.3, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_dropout_is_refused_with_weights(cli, tmp_path, hf_checkpoint):
    out = tmp_path / "s.png"
    result = cli("steps", SHORT_TEXT, "--head", "0", "--weights", hf_checkpoint, "--dropout",
                 "0.1", "-o", out)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("Error: --dropout") and "--weights" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("p", ["1", "1.5", "-0.1"])
def test_dropout_must_be_a_probability_below_one(cli, tmp_path, p):
    result = cli("steps", SHORT_TEXT, "--head", "0", "--dropout", p, "-o", tmp_path / "s.png")
    assert result.exit_code == 2 and "--dropout" in result.stderr and "Traceback" not in result.stderr


# --- bad input --------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--head", "4", *small_options(4, 32)], "Error: --head 4 is out of range: the model has 4 heads"),
    (["--head", "0", "--layer", "all"], "Error: steps follows one head of one layer"),
    (["--head", "0", "--layer", "0,1"], "Error: steps follows one head of one layer"),
    (["--head", "0", "--layer", "1"], "Error: --layer 1 is out of range"),
    (["--head", "0", "--cmap", "viridiss"], "Error: unknown colormap 'viridiss'"),
])
def test_bad_input_is_one_error_line_and_no_file(cli, tmp_path, args, message):
    out = tmp_path / "s.png"
    result = cli("steps", SHORT_TEXT, *args, "-o", out)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert result.stdout == "" and not out.exists()


def test_head_out_of_range_for_a_checkpoint(cli, tmp_path, hf_checkpoint):
    result = cli("steps", SHORT_TEXT, "--head", "4", "--weights", hf_checkpoint, "-o",
                 tmp_path / "s.png")
    assert result.exit_code == 2 and "--head 4 is out of range" in result.stderr


def test_head_is_required(cli):
    result = cli("steps", SHORT_TEXT)
    assert result.exit_code == 2 and "--head" in result.stderr


def test_too_many_tokens_for_the_figure(cli, tmp_path):
    result = cli("steps", "word " * 200, "--head", "0", "-o", tmp_path / "s.png")
    assert result.exit_code == 2 and "limited to 128 tokens" in result.stderr


# --- output -----------------------------------------------------------------------------

def test_json_shapes_and_tokens(cli, tmp_path):
    out = tmp_path / "s.png"
    doc = run_json(cli, SHORT_TEXT, "--head", "1", *small_options(4, 32), "-o", out)
    assert doc["file"] == str(out) and out.is_file()
    assert doc["head"] == 1 and doc["layer"] == 0 and doc["dropout"] is None
    expected = {"queries": [6, 8], "keys": [6, 8], "scores": [6, 6], "scaled": [6, 6],
                "masked": [6, 6], "weights": [6, 6], "values": [6, 8], "context": [6, 8]}
    assert doc["shapes"] == expected
    for name, shape in expected.items():
        assert list(matrix(doc, name).shape) == shape
    assert doc["matrices"]["masked"][0][1:] == [None] * 5  # -inf is null in JSON
    assert [t["text"] for t in doc["tokens"]][:2] == ["Your", " journey"]
    assert doc["config"]["n_heads"] == 4


def test_table_summarises_shapes_and_the_file(cli, tmp_path):
    out = tmp_path / "s.png"
    result = cli("steps", SHORT_TEXT, "--head", "1", *small_options(4, 32), "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "Layer 0, head 1: 6 tokens, d_k = 8" in result.stdout
    assert any(line.split() == ["file", str(out)] for line in result.stdout.splitlines())
    for formula, shape in (("S = Q·Kᵀ", "6 × 6"), ("Z = A·V", "6 × 8"), ("Q = X·W_Q", "6 × 8")):
        assert any(formula in line and shape in line for line in result.stdout.splitlines())
    assert "Drawing" in result.stderr  # progress on stderr, not stdout
    assert cli("steps", SHORT_TEXT, "--head", "1", *small_options(4, 32), "-o", out,
               "-q").stderr == ""


def test_same_input_same_bytes_and_format_by_suffix(cli, tmp_path):
    args = [SHORT_TEXT, "--head", "0", *small_options(4, 32), "-q"]
    first, second, svg = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.svg"
    for path in (first, second, svg):
        assert cli("steps", *args, "-o", path).exit_code == 0
    assert first.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert first.read_bytes() == second.read_bytes()
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "S = Q·Kᵀ" in text  # text kept as text
    pdf, titled = tmp_path / "d", tmp_path / "e.svg"
    assert cli("steps", *args, "-o", pdf, "--image-format", "pdf").exit_code == 0
    assert pdf.read_bytes().startswith(b"%PDF")
    assert cli("steps", *args, "-o", titled, "--title", "Head {head}, layer {layer}: {tokens} "
               "tokens").exit_code == 0
    assert "Head 0, layer 0: 6 tokens" in titled.read_text()


def test_written_atomically(cli, tmp_path, monkeypatch):
    out = tmp_path / "s.png"
    out.write_bytes(b"the previous figure")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    result = cli("steps", SHORT_TEXT, "--head", "0", *small_options(4, 32), "-o", out, "-q")
    assert result.exit_code == 1
    assert result.stderr == f"Error: cannot write {out}: No space left on device\n"
    assert out.read_bytes() == b"the previous figure"
    assert os.listdir(tmp_path) == ["s.png"]  # no temporary file left behind


def test_output_folder_must_exist(cli, tmp_path):
    result = cli("steps", SHORT_TEXT, "--head", "0", "-o", tmp_path / "nope" / "s.png")
    assert result.exit_code == 2 and "does not exist" in result.stderr


# --- the figure -------------------------------------------------------------------------

def small_steps(text=SHORT_TEXT, dropout=None, qkv_bias=False):
    result = analyze(text, ModelConfig(n_heads=4, d_model=32, qkv_bias=qkv_bias))
    return head_steps(result, 3, dropout=dropout, seed=1), result.token_labels


def axes_by_name(fig):
    return {ax.get_label(): ax for ax in fig.axes}


def test_figure_has_a_panel_per_step_titled_with_formula_and_shape():
    steps, labels = small_steps()
    fig, _ = steps_figure(steps, labels)
    axes = axes_by_name(fig)
    panels = [name for name in axes if not name.endswith("colorbar")]
    assert panels == list(EIGHT_PANELS)
    titles = {name: axes[name].get_title() for name in panels}
    for name, formula, shape in [
        ("queries", "Q = X·W_Q", "6 × 8  (T × d_k)"), ("keys", "K = X·W_K", "6 × 8"),
        ("scores", "S = Q·Kᵀ", "6 × 6  (T × T)"), ("scaled", "S / √d_k", "6 × 6"),
        ("masked", "mask(S / √d_k)", "6 × 6"), ("weights", "A = softmax(mask(S / √d_k))", "6 × 6"),
        ("values", "V = X·W_V", "6 × 8"), ("context", "Z = A·V", "6 × 8"),
    ]:
        assert titles[name].startswith(formula) and shape in titles[name], titles[name]
    assert "√d_k = √8" in titles["scaled"] and "−∞" in titles["masked"]
    # one colorbar per colour scale: Q|K, S, scaled|masked, A, V|Z
    assert [n for n in axes if n.endswith("colorbar")] == [
        "keys colorbar", "scores colorbar", "masked colorbar", "weights colorbar",
        "context colorbar"]
    # the pipeline reads left to right: the scores on the first row, the weights on the second
    boxes = {name: axes[name].get_position() for name in panels}
    first_row = [boxes[n] for n in EIGHT_PANELS[:5]]
    second_row = [boxes[n] for n in EIGHT_PANELS[5:]]
    for row in (first_row, second_row):
        assert all(a.x1 < b.x0 for a, b in zip(row, row[1:]))
        assert len({round(b.y0, 6) for b in row}) == 1
    assert second_row[0].y1 < first_row[0].y0
    # every T x T panel has the same size; every panel the same height (token rows line up)
    assert len({(round(boxes[n].width, 6), round(boxes[n].height, 6)) for n in TT_PANELS}) == 1
    assert len({round(b.height, 6) for b in boxes.values()}) == 1


def test_figure_labels_tokens_on_the_t_axes():
    steps, labels = small_steps()
    fig, canvas = steps_figure(steps, labels)
    canvas.draw()
    axes = axes_by_name(fig)
    for name in TT_PANELS:
        assert [t.get_text() for t in axes[name].get_xticklabels()] == labels
        assert all(t.get_rotation() == 90 for t in axes[name].get_xticklabels())
        assert axes[name].get_xlabel() == "key"
    for name in ("queries", "keys", "weights", "values"):  # first of a row, and the keys
        assert [t.get_text() for t in axes[name].get_yticklabels()] == labels
    assert axes["keys"].get_ylabel() == "key" and axes["queries"].get_ylabel() == "query"
    assert axes["context"].get_xlabel() == "d_k dimension"
    # labels do not run into each other or into the next panel's title
    renderer = canvas.get_renderer()
    ticks = [t.get_window_extent(renderer) for t in axes["scores"].get_yticklabels()]
    titles = [axes[n].title.get_window_extent(renderer) for n in EIGHT_PANELS]
    for a, b in zip(titles, titles[1:]):
        assert not a.overlaps(b)
    assert ticks == [] or all(not a.overlaps(b) for a, b in zip(ticks, ticks[1:]))


def cell_texts(ax):
    return [t.get_text() for t in ax.texts]


def test_small_figures_print_the_values_and_mark_minus_infinity():
    steps, labels = small_steps()
    fig, _ = steps_figure(steps, labels)
    axes = axes_by_name(fig)
    assert len(cell_texts(axes["scores"])) == 36
    masked = cell_texts(axes["masked"])
    assert masked.count("−∞") == 15 and len(masked) == 36
    weights = cell_texts(axes["weights"])
    assert len(weights) == 21 and weights[0] == "1.00"  # only the visible cells
    assert weights == [f"{steps.weights[i, j]:.2f}" for i in range(6) for j in range(i + 1)]
    assert cell_texts(axes["queries"]) == [f"{v:.2f}".replace("-", "−")
                                           for v in steps.queries.ravel()]  # d_k = 8 is small
    # the masked cells are drawn in a colour the diverging colormap never uses
    legend = fig.legends[0]
    assert any("−∞" in t.get_text() for t in legend.get_texts())


def test_large_figures_keep_the_cells_clean():
    steps, labels = small_steps("one two three four five six seven eight nine ten")
    fig, _ = steps_figure(steps, labels)
    assert all(cell_texts(ax) == [] for ax in fig.axes)


def test_wide_heads_print_no_numbers_in_the_t_by_d_k_panels():
    result = analyze(SHORT_TEXT)  # d_k = 64: a strip of colours, not 384 numbers
    fig, _ = steps_figure(head_steps(result, 3), result.token_labels)
    axes = axes_by_name(fig)
    assert cell_texts(axes["queries"]) == [] and len(cell_texts(axes["scores"])) == 36
    assert "6 × 64  (T × d_k)" in axes["values"].get_title()
    assert axes["queries"].get_position().width < axes["scores"].get_position().width


def test_dropout_panel_comes_between_the_weights_and_v():
    steps, labels = small_steps(dropout=0.5)
    fig, _ = steps_figure(steps, labels)
    axes = axes_by_name(fig)
    panels = [n for n in axes if not n.endswith("colorbar")]
    assert panels == ["queries", "keys", "scores", "scaled", "masked", "weights", "dropped",
                      "values", "context"]
    title = axes["dropped"].get_title()
    assert title.startswith("dropout(A), p = 0.5, seed 1") and "i.e. × 2" in title
    assert axes["context"].get_title().startswith("Z = dropout(A)·V")
    crosses = axes["dropped"].collections[0].get_offsets()  # one × per dropped visible cell
    dropped = [(i, j) for i in range(6) for j in range(i + 1) if steps.dropped[i, j] == 0]
    assert sorted((int(y), int(x)) for x, y in crosses) == dropped and dropped


def test_weights_panel_uses_the_heatmap_scale():
    steps, _ = small_steps()
    panels, scales = build_panels(steps, "magma", "linear")
    weights = next(p for p in panels if p.name == "weights")
    assert scales[weights.scale].colormap.name.startswith("magma")
    assert (scales[weights.scale].norm.vmin, scales[weights.scale].norm.vmax) == (0.0, 1.0)
    scores = next(p for p in panels if p.name == "scores")
    norm = scales[scores.scale].norm  # diverging, centred at 0
    assert norm.vmin == -norm.vmax == -np.abs(steps.scores).max()


def test_biased_projections_say_so():
    steps, labels = small_steps(qkv_bias=True)
    titles = {ax.get_label(): ax.get_title() for ax in steps_figure(steps, labels)[0].axes}
    assert titles["queries"].startswith("Q = X·W_Q + b_Q")
    assert titles["values"].startswith("V = X·W_V + b_V")
