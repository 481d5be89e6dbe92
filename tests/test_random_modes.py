"""Random mode's other kinds of attention: ``--bidirectional`` (the multi-head module without
the causal mask) and ``--cross "second text"`` (``CrossAttention``: queries from the text,
keys and values from the second), checked against an unmasked softmax recomputed in float64
and against ``torch.nn.MultiheadAttention``; their commands, steps and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import small_options

from attnviz.analyses.attention import analyze
from attnviz.core.attention import CrossAttention, MultiHeadAttention, wrapper_from_fused
from attnviz.core.config import ModelConfig

TEXT, SECOND = "The cat sat on the mat", "Le chat était assis sur le tapis"


@pytest.mark.parametrize("heads,d_model,bias", [(4, 32, False), (3, 24, True), (12, 768, False)])
def test_bidirectional_weights_equal_an_unmasked_softmax_recomputed_in_float64(heads, d_model, bias):
    config = ModelConfig(n_heads=heads, d_model=d_model, qkv_bias=bias, bidirectional=True)
    result = analyze(TEXT, config)
    assert result.attention == "encoder" and result.weights.shape == (1, heads, 6, 6)
    x = result.attn_inputs[0].astype(np.float64)  # (T, d)
    head_dim = d_model // heads

    def project(name):
        out = x @ result.params[f"W_{name}"][0].T.astype(np.float64)
        return out + result.params[f"b_{name}"][0] if bias else out

    q, k = project("query"), project("key")
    for h in range(heads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        scores = q[:, cols] @ k[:, cols].T / np.sqrt(head_dim)
        expected = np.exp(scores - scores.max(-1, keepdims=True))
        expected /= expected.sum(-1, keepdims=True)
        np.testing.assert_allclose(result.weights[0, h], expected, atol=1e-6)
    assert (result.weights[0] > 0).all()  # nothing masked: every key has weight


def test_the_wrapper_of_selfattention_heads_equals_the_fused_module_without_the_mask():
    torch.manual_seed(0)
    fused = MultiHeadAttention(16, 16, 32, num_heads=4, causal=False).eval()
    wrapper = wrapper_from_fused(fused)
    x = torch.randn(2, 7, 16)
    _, fused_weights = fused(x, return_weights=True)
    _, wrapped = wrapper(x, return_weights=True)
    torch.testing.assert_close(wrapped, fused_weights, rtol=0, atol=1e-6)
    upper = torch.ones(7, 7, dtype=torch.bool).triu(1)
    assert (fused_weights[..., upper] > 0).all()  # the cells the causal mask would hide
    config = ModelConfig(n_heads=4, d_model=32, bidirectional=True)
    a = analyze(TEXT, config).weights
    b = analyze(TEXT, ModelConfig(n_heads=4, d_model=32, bidirectional=True, impl="wrapper")).weights
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("d_in,d_context,heads", [(32, 32, 4), (32, 20, 4), (48, 12, 6)])
def test_cross_attention_equals_torch_multihead_attention_per_head(d_in, d_context, heads):
    torch.manual_seed(1)
    cross = CrossAttention(d_in, d_in, heads, d_context=d_context, qkv_bias=True).eval()
    reference = torch.nn.MultiheadAttention(d_in, heads, kdim=d_context, vdim=d_context,
                                            batch_first=True).eval()
    with torch.no_grad():
        if d_context == d_in:  # one packed projection
            reference.in_proj_weight.copy_(torch.cat([cross.W_query.weight, cross.W_key.weight,
                                                      cross.W_value.weight]))
        else:
            reference.q_proj_weight.copy_(cross.W_query.weight)
            reference.k_proj_weight.copy_(cross.W_key.weight)
            reference.v_proj_weight.copy_(cross.W_value.weight)
        reference.in_proj_bias.copy_(torch.cat([cross.W_query.bias, cross.W_key.bias,
                                                cross.W_value.bias]))
        reference.out_proj.weight.copy_(cross.out_proj.weight)
        reference.out_proj.bias.copy_(cross.out_proj.bias)
    x, context = torch.randn(2, 5, d_in) * 3, torch.randn(2, 9, d_context) * 3
    with torch.no_grad():
        out, weights = cross(x, context, return_weights=True)
        expected_out, expected = reference(x, context, context, need_weights=True,
                                           average_attn_weights=False)
    assert weights.shape == (2, heads, 5, 9)
    torch.testing.assert_close(weights, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=1e-5)


@pytest.mark.parametrize("d_in", [None, 20])
def test_cross_mode_equals_torch_on_the_embedded_texts(d_in):
    config = ModelConfig(n_heads=4, d_model=32, cross_d_in=d_in)
    result = analyze(TEXT, config, cross=SECOND)
    assert result.attention == "cross" and result.cross
    n_keys = len(result.key_token_ids)
    assert result.weights.shape == (1, 4, 6, n_keys) and n_keys > 6
    assert result.key_inputs.shape == (1, n_keys, d_in or 32)
    reference = torch.nn.MultiheadAttention(32, 4, kdim=d_in or 32, vdim=d_in or 32,
                                            bias=False, batch_first=True).eval()
    p = {k: torch.from_numpy(v[0]) for k, v in result.params.items()}
    with torch.no_grad():
        if d_in is None:
            reference.in_proj_weight.copy_(torch.cat([p["W_query"], p["W_key"], p["W_value"]]))
        else:
            reference.q_proj_weight.copy_(p["W_query"])
            reference.k_proj_weight.copy_(p["W_key"])
            reference.v_proj_weight.copy_(p["W_value"])
        x = torch.from_numpy(result.attn_inputs)
        keys = torch.from_numpy(result.key_inputs)
        _, expected = reference(x, keys, keys, average_attn_weights=False)
    np.testing.assert_allclose(result.weights, expected.numpy(), atol=1e-6)
    # with the same width, the cross module's projections are the self-attention module's
    if d_in is None:
        np.testing.assert_array_equal(result.params["W_query"], analyze(TEXT, config).params["W_query"])


def test_heatmap_cross_writes_rectangular_pictures_and_says_which_kind(cli, tmp_path):
    out = tmp_path / "cross"
    result = cli("heatmap", TEXT, "--cross", SECOND, *small_options(), "--out", out,
                 "--format", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["attention"] == "cross"
    assert [t["text"] for t in document["key_tokens"]][:2] == ["Le", " chat"]
    assert len(document["files"]) == 5 and (out / "heads.png").exists()
    csv = cli("heatmap", TEXT, "--bidirectional", *small_options(), "--out", tmp_path / "b",
              "--format", "csv")
    assert csv.stdout.splitlines()[0] == "file,layer,head,attention"
    assert csv.stdout.splitlines()[1].endswith(",0,0,encoder")


def test_compare_heads_of_cross_attention_leaves_out_positional_statistics(cli):
    result = cli("compare-heads", TEXT, "--cross", SECOND, *small_options(), "--format", "json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["heads"]
    assert {r["attention"] for r in rows} == {"cross"}
    assert all(r["self"] is None and r["mean_distance"] is None for r in rows)
    assert all(0 < r["first_token"] < 1 for r in rows)


def test_export_cross_writes_both_texts_tokens_and_the_rectangular_weights(cli, tmp_path):
    path = tmp_path / "cross.npz"
    result = cli("export", TEXT, "--cross", SECOND, "--cross-d-in", "20", *small_options(),
                 "-o", path, "--include-params")
    assert result.exit_code == 0, result.stderr
    arrays = np.load(path)
    expected = analyze(TEXT, ModelConfig(n_heads=4, d_model=32, cross_d_in=20), cross=SECOND)
    np.testing.assert_array_equal(arrays["weights"], expected.weights[0])
    assert list(arrays["key_token_ids"]) == expected.key_token_ids
    assert str(arrays["attention"]) == "cross" and arrays["W_key"].shape == (32, 20)
    assert arrays["key_input"].shape == (len(expected.key_token_ids), 20)


def test_steps_without_the_mask_has_no_mask_step_and_equals_the_module(cli, tmp_path):
    result = cli("steps", TEXT, "--bidirectional", "--head", "1", *small_options(),
                 "-o", tmp_path / "s.png", "--format", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert "masked" not in document["matrices"]
    assert document["formulas"]["weights"] == "A = softmax(S / √d_k)"
    expected = analyze(TEXT, ModelConfig(n_heads=4, d_model=32, bidirectional=True)).weights[0, 1]
    np.testing.assert_allclose(np.array(document["matrices"]["weights"]), expected, atol=1e-6)
    assert (tmp_path / "s.png").stat().st_size > 0


def test_steps_of_cross_attention_take_keys_and_values_from_the_second_text(cli, tmp_path):
    result = cli("steps", TEXT, "--cross", SECOND, "--head", "2", *small_options(),
                 "-o", tmp_path / "c.png", "--format", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    expected = analyze(TEXT, ModelConfig(n_heads=4, d_model=32), cross=SECOND)
    n_keys = len(expected.key_token_ids)
    assert document["shapes"]["scores"] == [6, n_keys] and document["shapes"]["keys"] == [n_keys, 8]
    assert document["formulas"]["keys"] == "K = X₂·W_K"
    np.testing.assert_allclose(np.array(document["matrices"]["weights"]), expected.weights[0, 2],
                               atol=1e-6)


@pytest.mark.parametrize("args,message", [
    (["--cross", SECOND, "--weights", "gpt2"], "--cross is random mode's"),
    (["--bidirectional", "--weights", "gpt2"], "--bidirectional is random mode's"),
    (["--cross-d-in", "8"], "--cross-d-in is the width of --cross's second input"),
    (["--pair", "It was tired"], "--pair encodes a sentence pair for an encoder model"),
    (["--cross", SECOND, "--bidirectional"], "--cross has no causal mask to remove"),
    (["--cross", ""], "--cross is empty"),
    (["--cross", SECOND, "--view", "lines"], "--view lines draws causal self-attention"),
    (["--cross", SECOND, "--view", "rollout"], "--view rollout follows one text"),
    (["--cross", SECOND, "--weighting", "norm"], "--weighting norm weighs a text's keys"),
])
def test_every_bad_combination_is_one_error_line(cli, tmp_path, args, message):
    sizes = [] if "--weights" in args else small_options()
    result = cli("heatmap", TEXT, *sizes, "--out", tmp_path / "x", *args)
    assert result.exit_code == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    assert not (tmp_path / "x").exists()


def test_a_long_cross_attention_text_is_refused_by_name_not_pooled(cli, tmp_path):
    # (a long --bidirectional text is pooled: tests/test_longcontext_encoders.py)
    result = cli("heatmap", "word " * 40, "--cross", SECOND, *small_options(),
                 "--resolution", "16", "--out", tmp_path / "x")
    assert result.exit_code == 2
    assert "made for self-attention" in result.stderr and "--resolution" in result.stderr
    assert not (tmp_path / "x").exists()


def test_a_long_causal_text_still_gives_its_rows_without_the_kind(cli):
    # a LongResult (pooled statistics) answers what an AttentionResult says of its kind
    result = cli("compare-heads", "word " * 40, *small_options(), "--resolution", "16",
                 "--format", "json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["heads"]
    assert rows and all("attention" not in row for row in rows) and "sink_mass" in rows[0]
