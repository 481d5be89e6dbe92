"""Random mode: seeded, reproducible, and what the attention layer saw is exported exactly."""

import numpy as np
import pytest
import torch
from helpers import SHORT_TEXT

from attnviz.analyses.attention import analyze, analyze_ids, parse_layers
from attnviz.core.attention import MultiHeadAttention
from attnviz.core.config import ModelConfig
from attnviz.core.errors import InputError
from attnviz.models.random_model import RandomModel, seeded_rows
from attnviz.text.gpt2_bpe import encode


def test_defaults_are_gpt2_small():
    config = ModelConfig()
    assert (config.n_heads, config.d_model, config.context_length, config.seed) == (12, 768, 1024, 123)
    assert config.head_dim == 64
    result = analyze(SHORT_TEXT)
    assert result.weights.shape == (1, 12, 6, 6)
    assert result.weights.dtype == np.float32
    assert result.token_ids == encode(SHORT_TEXT)


@pytest.mark.parametrize("seed", [0, 1, 123])
def test_same_seed_same_numbers_different_seed_different(seed):
    a = analyze(SHORT_TEXT, ModelConfig(seed=seed))
    b = analyze(SHORT_TEXT, ModelConfig(seed=seed))
    c = analyze(SHORT_TEXT, ModelConfig(seed=seed + 1))
    assert np.array_equal(a.weights, b.weights)
    assert not np.allclose(a.weights, c.weights)


def test_projection_weights_are_torch_default_init_under_the_seed():
    torch.manual_seed(123)
    reference = MultiHeadAttention(768, 768, 16, num_heads=12)
    model = RandomModel(ModelConfig())
    assert torch.equal(model.fused.W_query.weight, reference.W_query.weight)
    assert torch.equal(model.fused.out_proj.weight, reference.out_proj.weight)


def test_random_mode_does_not_disturb_the_global_rng():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    analyze(SHORT_TEXT, ModelConfig(d_model=32, n_heads=4))
    assert torch.equal(torch.rand(3), expected)


def test_embedding_rows_do_not_depend_on_the_rest_of_the_text():
    rows_a = seeded_rows(123, 0, [7, 100, 50255], 16)
    rows_b = seeded_rows(123, 0, [50255, 3], 16)
    assert torch.equal(rows_a[2], rows_b[0])
    assert rows_a.std() == pytest.approx(1.0, abs=0.35)


def test_attn_input_is_token_plus_position_embedding():
    config = ModelConfig(d_model=32, n_heads=4)
    result = analyze("one two two", config)
    ids = result.token_ids
    tok = seeded_rows(config.seed, 0, ids, 32).numpy()
    pos = seeded_rows(config.seed, 1, list(range(len(ids))), 32).numpy()
    assert np.array_equal(result.attn_inputs[0], tok + pos)
    # the same token at two positions differs only by its position embedding
    np.testing.assert_allclose(result.attn_inputs[0][1] - pos[1], result.attn_inputs[0][2] - pos[2],
                               atol=1e-6)


@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("heads, d_model", [(12, 768), (4, 32), (3, 24)])
def test_weights_recomputed_from_exported_arrays(qkv_bias, heads, d_model):
    """softmax(Q K^T / sqrt(d_head) + causal mask), in numpy float64, from the params."""
    result = analyze(SHORT_TEXT + " again and again", ModelConfig(n_heads=heads, d_model=d_model,
                                                                 qkv_bias=qkv_bias))
    x = result.attn_inputs[0].astype(np.float64)
    hd = d_model // heads
    q = x @ result.params["W_query"][0].T.astype(np.float64)
    k = x @ result.params["W_key"][0].T.astype(np.float64)
    if qkv_bias:
        q, k = q + result.params["b_query"][0], k + result.params["b_key"][0]
    else:
        assert "b_query" not in result.params
    n = x.shape[0]
    for h in range(heads):
        scores = q[:, h * hd : (h + 1) * hd] @ k[:, h * hd : (h + 1) * hd].T / np.sqrt(hd)
        scores[np.triu_indices(n, 1)] = -np.inf
        expected = np.exp(scores - scores.max(axis=1, keepdims=True))
        expected /= expected.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(result.weights[0, h], expected, atol=1e-5)


def test_wrapper_impl_gives_the_same_weights():
    fused = analyze(SHORT_TEXT, ModelConfig(impl="fused"))
    wrapper = analyze(SHORT_TEXT, ModelConfig(impl="wrapper"))
    np.testing.assert_allclose(wrapper.weights, fused.weights, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_heads": 5, "d_model": 768}, "does not divide"),
        ({"n_heads": 0}, "--heads must be a positive"),
        ({"d_model": -4}, "--d-model must be a positive"),
        ({"context_length": 0}, "--context-length"),
        ({"impl": "turbo"}, "--impl"),
        ({"seed": -1}, "--seed"),
        ({"seed": 2**64}, "--seed"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(InputError, match=message):
        ModelConfig(**kwargs)


def test_text_longer_than_context_says_how_long():
    with pytest.raises(InputError, match=r"9 tokens, longer than the context length 4"):
        analyze("one two three four five six seven eight nine", ModelConfig(context_length=4))


def test_huge_context_length_does_not_allocate_a_huge_mask():
    result = analyze(SHORT_TEXT, ModelConfig(context_length=10**6, d_model=32, n_heads=4))
    assert result.weights.shape == (1, 4, 6, 6)


def test_memory_estimate_refuses_before_computing(monkeypatch):
    import attnviz.analyses.attention as analysis

    monkeypatch.setattr(analysis, "available_memory", lambda: 10_000)
    with pytest.raises(InputError, match="GiB"):
        analyze_ids(list(range(200)), ModelConfig(d_model=32, n_heads=4))


@pytest.mark.parametrize("layer, n, expected", [("0", 1, [0]), (0, 1, [0]), ("all", 3, [0, 1, 2]),
                                                ("ALL", 2, [0, 1]), ("2", 3, [2])])
def test_parse_layers(layer, n, expected):
    assert parse_layers(layer, n) == expected


@pytest.mark.parametrize("layer, n, message", [("1", 1, "random mode has one layer"),
                                               ("-1", 3, "out of range"), ("x", 3, "layer number")])
def test_parse_layers_errors(layer, n, message):
    with pytest.raises(InputError, match=message):
        parse_layers(layer, n)


def test_head_out_of_range_is_refused_before_computing():
    with pytest.raises(InputError, match=r"--head 12 is out of range: the model has 12 heads"):
        analyze(SHORT_TEXT, heads=[0, 12])
