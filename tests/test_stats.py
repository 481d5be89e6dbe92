"""Head statistics on matrices whose answers are known exactly, and the JS similarity against
a plain-Python recomputation."""

import math

import numpy as np
import pytest

from attnviz.analyses.stats import COLUMNS, head_rows, head_stats, induction_score, js_divergence, similarity


def uniform_causal(n):
    w = np.tril(np.ones((n, n)))
    return w / w.sum(axis=1, keepdims=True)


def previous_token(n):
    w = np.zeros((n, n))
    w[0, 0] = 1
    w[np.arange(1, n), np.arange(n - 1)] = 1
    return w


def first_token(n):
    w = np.zeros((n, n))
    w[:, 0] = 1
    return w


@pytest.mark.parametrize("n", [2, 5, 17])
def test_uniform_causal(n):
    s = head_stats(uniform_causal(n)[None])
    i = np.arange(n)
    assert s["entropy"][0] == pytest.approx(np.mean(np.log(i + 1)))
    assert s["normalized_entropy"][0] == pytest.approx(1.0)
    assert s["max_weight"][0] == pytest.approx(np.mean(1 / (i + 1)))
    assert s["self"][0] == pytest.approx(np.mean(1 / (i + 1)))
    assert s["previous_token"][0] == pytest.approx(np.mean(1 / (i[1:] + 1)))
    assert s["first_token"][0] == pytest.approx(np.mean(1 / (i[1:] + 1)))
    assert s["mean_distance"][0] == pytest.approx(np.mean(i / 2))


@pytest.mark.parametrize("n", [2, 6])
def test_identity(n):
    s = head_stats(np.eye(n)[None])
    assert s["entropy"][0] == 0
    assert s["normalized_entropy"][0] == 0
    assert s["max_weight"][0] == 1
    assert s["self"][0] == 1
    assert s["previous_token"][0] == 0
    assert s["first_token"][0] == 0
    assert s["mean_distance"][0] == 0


@pytest.mark.parametrize("n", [3, 8])
def test_previous_token_pattern(n):
    s = head_stats(previous_token(n)[None])
    assert s["previous_token"][0] == 1
    assert s["self"][0] == pytest.approx(1 / n)
    assert s["entropy"][0] == 0
    assert s["mean_distance"][0] == pytest.approx((n - 1) / n)
    assert s["first_token"][0] == pytest.approx(1 / (n - 1))  # only query 1's previous is 0


@pytest.mark.parametrize("n", [3, 8])
def test_first_token_pattern(n):
    s = head_stats(first_token(n)[None])
    assert s["first_token"][0] == 1
    assert s["mean_distance"][0] == pytest.approx(np.mean(np.arange(n)))
    assert s["max_weight"][0] == 1


def test_single_token_statistics_that_need_two_tokens_are_undefined():
    s = head_stats(np.ones((2, 1, 1)))
    for name in ("previous_token", "first_token", "normalized_entropy"):
        assert np.isnan(s[name]).all()
    assert (s["self"] == 1).all()
    rows = head_rows(np.ones((1, 2, 1, 1), dtype=np.float32), [0])
    assert rows[0]["previous_token"] is None and rows[1]["first_token"] is None


def test_vectorised_over_heads_equals_one_at_a_time():
    rng = np.random.default_rng(0)
    w = np.tril(rng.random((5, 9, 9)))
    w /= w.sum(-1, keepdims=True)
    together = head_stats(w)
    for h in range(5):
        alone = head_stats(w[h : h + 1])
        for name in COLUMNS:
            assert together[name][h] == pytest.approx(alone[name][0])


def js_reference(p, q):
    m = [(a + b) / 2 for a, b in zip(p, q)]
    kl = lambda x: sum(a * math.log2(a / c) for a, c in zip(x, m) if a > 0)  # noqa: E731
    return 0.5 * kl(p) + 0.5 * kl(q)


def test_js_divergence_bounds_and_reference():
    assert js_divergence(np.array([1.0, 0]), np.array([0, 1.0])) == pytest.approx(1.0)
    assert js_divergence(np.array([0.3, 0.7]), np.array([0.3, 0.7])) == pytest.approx(0.0)
    rng = np.random.default_rng(1)
    for _ in range(20):
        p, q = rng.random(6), rng.random(6)
        p[rng.random(6) < 0.3] = 0
        p, q = p / p.sum(), q / q.sum()
        assert js_divergence(p, q) == pytest.approx(js_reference(list(p), list(q)), abs=1e-12)


def test_similarity_matrix_is_mean_rowwise_js():
    w = np.stack([uniform_causal(6), previous_token(6), first_token(6), uniform_causal(6)])
    js = similarity(w)
    assert js.shape == (4, 4)
    assert np.allclose(np.diag(js), 0) and np.allclose(js, js.T)
    assert js[0, 3] == pytest.approx(0)
    expected = np.mean([js_reference(list(w[1, i]), list(w[2, i])) for i in range(6)])
    assert js[1, 2] == pytest.approx(expected)
    assert ((0 <= js) & (js <= 1)).all()


def test_induction_score():
    period, n = 4, 8
    w = np.zeros((2, n, n))
    w[0] = uniform_causal(n)
    for i in range(n):  # head 1: a perfect induction head in the second copy
        w[1, i, i - period + 1 if i >= period else 0] = 1
    scores = induction_score(w, period)
    assert scores[1] == 1
    assert scores[0] == pytest.approx(np.mean([1 / (i + 1) for i in range(period, n)]))


def test_head_rows_order_and_keys():
    w = np.stack([np.stack([uniform_causal(4), np.eye(4)])]).astype(np.float32)
    rows = head_rows(w, [7])
    assert [(r["layer"], r["head"]) for r in rows] == [(7, 0), (7, 1)]
    assert set(rows[0]) == {"layer", "head", *COLUMNS}
    assert rows[1]["self"] == 1.0
