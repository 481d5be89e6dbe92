"""The attention classes against independent implementations: torch.nn.MultiheadAttention
and F.scaled_dot_product_attention, with weights copied in."""

import pytest
import torch
import torch.nn.functional as F

from attnviz.core.attention import (
    CausalAttention,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    SelfAttention,
    wrapper_from_fused,
)

CASES = [  # (d_in, d_out, num_heads, T, batch)
    (16, 16, 1, 5, 1),
    (32, 32, 4, 9, 2),
    (24, 48, 6, 17, 3),
    (64, 64, 8, 33, 1),
    (768, 768, 12, 40, 1),
    (32, 32, 4, 150, 2),  # longer than 128: beyond every small power of two
    (48, 48, 3, 128, 1),
]
# torch.nn.MultiheadAttention projects queries from embed_dim, so it needs d_in == d_out.
SQUARE_CASES = [case for case in CASES if case[0] == case[1]]
TOL = {"atol": 1e-5, "rtol": 1e-5}


def causal_bool_mask(n):
    return torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)


@pytest.mark.parametrize("d_in, d_out, num_heads, T, batch", SQUARE_CASES)
@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("seed", [0, 123])
def test_multihead_matches_torch_multiheadattention(d_in, d_out, num_heads, T, batch, qkv_bias, seed):
    torch.manual_seed(seed)
    ours = MultiHeadAttention(d_in, d_out, context_length=256, num_heads=num_heads, qkv_bias=qkv_bias)
    x = torch.randn(batch, T, d_in)
    ref = torch.nn.MultiheadAttention(d_out, num_heads, bias=True, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.W_query.weight, ours.W_key.weight, ours.W_value.weight]))
        if qkv_bias:
            ref.in_proj_bias.copy_(torch.cat([ours.W_query.bias, ours.W_key.bias, ours.W_value.bias]))
        else:
            ref.in_proj_bias.zero_()
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
        ref_out, ref_weights = ref(x, x, x, attn_mask=causal_bool_mask(T), need_weights=True,
                                   average_attn_weights=False)
        out, weights = ours(x, return_weights=True)
    assert weights.shape == (batch, num_heads, T, T)
    torch.testing.assert_close(weights, ref_weights, **TOL)
    torch.testing.assert_close(out, ref_out, **TOL)


@pytest.mark.parametrize("d_in, d_out, num_heads, T, batch", CASES)
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_context_matches_scaled_dot_product_attention(d_in, d_out, num_heads, T, batch, qkv_bias):
    torch.manual_seed(7)
    mha = MultiHeadAttention(d_in, d_out, context_length=T, num_heads=num_heads, qkv_bias=qkv_bias)
    x = torch.randn(batch, T, d_in)
    head_dim = d_out // num_heads

    def split(t):  # (b, T, d_out) -> (b, nh, T, hd)
        return t.view(batch, T, num_heads, head_dim).transpose(1, 2)

    with torch.no_grad():
        q, k, v = split(mha.W_query(x)), split(mha.W_key(x)), split(mha.W_value(x))
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        expected = mha.out_proj(expected.transpose(1, 2).reshape(batch, T, d_out))
        assert torch.allclose(mha(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("d_in, d_out, num_heads, T, batch", CASES)
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_wrapper_equals_fused_after_copying_weights(d_in, d_out, num_heads, T, batch, qkv_bias):
    torch.manual_seed(3)
    fused = MultiHeadAttention(d_in, d_out, T, num_heads=num_heads, qkv_bias=qkv_bias)
    wrapper = MultiHeadAttentionWrapper(d_in, d_out, T, num_heads=num_heads, qkv_bias=qkv_bias)
    hd = d_out // num_heads
    with torch.no_grad():  # copy by hand, independently of wrapper_from_fused
        for h, head in enumerate(wrapper.heads):
            for name in ("W_query", "W_key", "W_value"):
                getattr(head, name).weight.copy_(getattr(fused, name).weight[h * hd : (h + 1) * hd])
                if qkv_bias:
                    getattr(head, name).bias.copy_(getattr(fused, name).bias[h * hd : (h + 1) * hd])
        x = torch.randn(batch, T, d_in)
        ctx_w, weights_w = wrapper(x, return_weights=True)
        ctx_f, weights_f = fused.heads_context(x)
        built = wrapper_from_fused(fused)
        ctx_b, weights_b = built(x, return_weights=True)
    assert weights_w.shape == (batch, num_heads, T, T)
    torch.testing.assert_close(weights_w, weights_f, **TOL)
    torch.testing.assert_close(ctx_w, ctx_f, **TOL)
    torch.testing.assert_close(weights_b, weights_f, **TOL)
    torch.testing.assert_close(ctx_b, ctx_f, **TOL)


def test_causal_attention_matches_sdpa():
    torch.manual_seed(1)
    ca = CausalAttention(12, 8, context_length=10, qkv_bias=True)
    x = torch.randn(2, 10, 12)
    with torch.no_grad():
        ctx, weights = ca(x, return_weights=True)
        expected = F.scaled_dot_product_attention(ca.W_query(x), ca.W_key(x), ca.W_value(x), is_causal=True)
    assert weights.shape == (2, 10, 10)
    torch.testing.assert_close(ctx, expected, **TOL)


def test_self_attention_matches_sdpa_without_mask():
    torch.manual_seed(2)
    sa = SelfAttention(6, 4)
    x = torch.randn(3, 7, 6)
    with torch.no_grad():
        ctx, weights = sa(x, return_weights=True)
        expected = F.scaled_dot_product_attention(sa.W_query(x), sa.W_key(x), sa.W_value(x))
    torch.testing.assert_close(ctx, expected, **TOL)
    assert (weights > 0).all()  # no mask: every key is visible
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 7))


@pytest.mark.parametrize(
    "module",
    [
        lambda: CausalAttention(16, 16, 256),
        lambda: MultiHeadAttentionWrapper(16, 16, 256, num_heads=4),
        lambda: MultiHeadAttention(16, 16, 256, num_heads=4),
        lambda: MultiHeadAttention(16, 16, 256, num_heads=4, qkv_bias=True),
    ],
)
@pytest.mark.parametrize("T", [1, 2, 31, 32, 65, 200])
def test_rows_sum_to_one_and_future_is_exactly_zero(module, T):
    torch.manual_seed(T)
    m = module()
    with torch.no_grad():
        _, weights = m(torch.randn(2, T, 16), return_weights=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    upper = causal_bool_mask(T).expand_as(weights)
    assert (weights[upper] == 0).all()
    assert (weights[~upper] > 0).all()


def test_return_weights_false_returns_only_context():
    m = MultiHeadAttention(8, 8, 4, num_heads=2)
    out = m(torch.randn(1, 4, 8))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 4, 8)


@pytest.mark.parametrize("cls", [MultiHeadAttention, MultiHeadAttentionWrapper])
@pytest.mark.parametrize("d_out, heads", [(10, 3), (768, 7), (8, 0)])
def test_heads_must_divide_d_out(cls, d_out, heads):
    with pytest.raises(ValueError, match="divisible"):
        cls(8, d_out, 16, num_heads=heads)


def test_longer_than_context_is_a_value_error():
    m = MultiHeadAttention(8, 8, context_length=4, num_heads=2)
    with pytest.raises(ValueError, match="context length"):
        m(torch.randn(1, 5, 8))


def test_mask_is_a_buffer_not_a_parameter():
    m = MultiHeadAttention(8, 8, 4, num_heads=2)
    assert "mask" in dict(m.named_buffers())
    assert all("mask" not in name for name, _ in m.named_parameters())


def test_dropout_applies_in_training_only():
    torch.manual_seed(0)
    m = MultiHeadAttention(16, 16, 8, dropout=0.5, num_heads=2)
    x = torch.randn(1, 8, 16)
    m.train()
    _, w_train = m(x, return_weights=True)
    m.eval()
    _, w_eval = m(x, return_weights=True)
    assert not torch.allclose(w_train, w_eval)
    torch.testing.assert_close(w_eval.sum(-1), torch.ones(1, 2, 8))
