"""Sampling: greedy, seeded randomness, and the top-k / top-p / min-p filters against
float64 numpy re-statements of their rules and against transformers' logits warpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from chimera.runtime.sampling import Sampling, filter_logits, sample


def random_logits(seed, batch, vocab, scale=2.0):
    return np.random.default_rng(seed).normal(0.0, scale, (batch, vocab)).astype(np.float32)


def keys(seed, n):
    return jax.random.split(jax.random.key(seed), n)


# --- numpy re-statements (float64) ---
# Each returns (filtered logits, margin): margin is how far each row is from the filter's
# decision boundary. Rows closer than float32 can resolve are left out of the comparisons.

def softmax64(logits):
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def np_top_k(logits, k):
    kth = np.sort(logits, axis=-1)[:, -k][:, None]
    return np.where(logits < kth, -np.inf, logits), np.full(len(logits), np.inf)


def np_top_p(logits, p):
    """Keep the smallest descending-probability prefix whose mass reaches p."""
    order = np.argsort(-logits, axis=-1)
    probs = softmax64(np.take_along_axis(logits, order, -1))
    mass_before = np.cumsum(probs, -1) - probs  # mass of the tokens ranked above each token
    keep = np.zeros(logits.shape, bool)
    np.put_along_axis(keep, order, mass_before < p, -1)
    margin = np.abs(mass_before - p).min(-1)
    return np.where(keep, logits, -np.inf), margin


def np_min_p(logits, m):
    """Keep tokens whose probability is at least m times the top token's."""
    log_ratio = logits - logits.max(-1, keepdims=True)  # log(p / p_max)
    finite = np.isfinite(logits)
    margin = np.where(finite, np.abs(log_ratio - np.log(m)), np.inf).min(-1)
    return np.where(log_ratio < np.log(m), -np.inf, logits), margin


def np_filter(logits, s):
    """The chain in Sampling's documented order: temperature, top-k, top-p, min-p."""
    out = logits.astype(np.float64) / s.temperature
    margin = np.full(len(out), np.inf)
    for active, fn, arg in [(0 < s.top_k < out.shape[-1], np_top_k, s.top_k),
                            (s.top_p < 1.0, np_top_p, s.top_p),
                            (s.min_p > 0.0, np_min_p, s.min_p)]:
        if active:
            out, m = fn(out, arg)
            margin = np.minimum(margin, m)
    return out, margin


def hf_filter(logits, s):
    warpers = LogitsProcessorList([TemperatureLogitsWarper(s.temperature)])
    if s.top_k > 0:
        warpers.append(TopKLogitsWarper(s.top_k))
    if s.top_p < 1.0:
        warpers.append(TopPLogitsWarper(s.top_p))
    if s.min_p > 0.0:
        warpers.append(MinPLogitsWarper(s.min_p))
    scores = torch.from_numpy(logits.astype(np.float64))
    return warpers(torch.zeros((len(logits), 1), dtype=torch.long), scores).numpy()


FILTERS = [
    Sampling(temperature=1.0),
    Sampling(temperature=0.7, top_k=1),
    Sampling(temperature=1.0, top_k=5),
    Sampling(temperature=1.3, top_k=40),
    Sampling(temperature=1.0, top_p=0.5),
    Sampling(temperature=1.0, top_p=0.9),
    Sampling(temperature=0.6, top_p=0.95),
    Sampling(temperature=1.0, top_p=0.01),  # only the top token survives
    Sampling(temperature=1.0, min_p=0.1),
    Sampling(temperature=2.0, min_p=0.5),
    Sampling(temperature=0.8, top_k=20, top_p=0.8, min_p=0.05),
]


def checked_rows(margin):
    """Rows whose decision is resolvable in float32; the test data must be mostly such rows."""
    ok = margin > 1e-5
    assert ok.mean() > 0.9
    return ok


@pytest.mark.parametrize("s", FILTERS, ids=repr)
def test_filter_matches_numpy(s):
    logits = random_logits(0, 64, 100)
    got = np.asarray(filter_logits(jnp.asarray(logits), s))
    want, margin = np_filter(logits, s)
    ok = checked_rows(margin)
    np.testing.assert_array_equal(np.isfinite(got)[ok], np.isfinite(want)[ok])
    # Surviving tokens keep their temperature-scaled logits; the rest are exactly -inf.
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-6)
    assert np.all(got[~np.isfinite(got)] == -np.inf)


@pytest.mark.parametrize("s", FILTERS, ids=repr)
def test_filter_matches_transformers(s):
    """Same set of surviving tokens as transformers' warpers applied in the same order."""
    logits = random_logits(1, 64, 100)
    got = np.asarray(filter_logits(jnp.asarray(logits), s))
    want = hf_filter(logits, s)
    ok = checked_rows(np_filter(logits, s)[1])
    np.testing.assert_array_equal(np.isfinite(got)[ok], np.isfinite(want)[ok])


def test_top_p_keeps_smallest_prefix_reaching_p():
    """A hand-checkable case: probabilities 0.5, 0.3, 0.15, 0.05."""
    logits = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]]))
    for top_p, kept in [(0.4, [1]), (0.79, [1, 3]), (0.81, [1, 2, 3]), (0.96, [0, 1, 2, 3])]:
        out = filter_logits(logits, Sampling(temperature=1.0, top_p=top_p))
        assert np.flatnonzero(np.isfinite(out[0])).tolist() == sorted(kept), top_p


def test_temperature_zero_is_argmax():
    logits = jnp.asarray(random_logits(2, 32, 1000))
    tokens = sample(logits, keys(0, 32), Sampling(temperature=0.0, top_k=5, top_p=0.5))
    assert tokens.dtype == jnp.int32
    np.testing.assert_array_equal(tokens, np.argmax(logits, -1))
    # Greedy ignores the keys.
    np.testing.assert_array_equal(sample(logits, keys(1, 32), Sampling()), tokens)


def test_seeded_determinism():
    """Same keys give the same tokens; other keys give other tokens (uniform over 1000)."""
    logits = jnp.zeros((64, 1000))
    s = Sampling(temperature=1.0)
    a = sample(logits, keys(0, 64), s)
    np.testing.assert_array_equal(a, sample(logits, keys(0, 64), s))
    b = sample(logits, keys(1, 64), s)
    assert (a != b).sum() > 50  # ~64 * 0.999 expected to differ
    assert len(np.unique(a)) > 50  # rows with their own keys are independent draws


def test_top_k_only_yields_top_k():
    """Many draws per row (each with its own key): every draw is in the row's top k,
    and at a high temperature all k of them turn up."""
    rows, k, draws = 4, 5, 2000
    logits = random_logits(3, rows, 50)
    tiled = jnp.asarray(np.repeat(logits, draws, axis=0))  # [rows * draws, V]
    tokens = np.asarray(sample(tiled, keys(0, rows * draws), Sampling(temperature=3.0, top_k=k)))
    tokens = tokens.reshape(rows, draws)
    for row, drawn in zip(logits, tokens):
        top = set(np.argsort(row)[-k:].tolist())
        assert set(drawn.tolist()) == top


@pytest.mark.parametrize("s", [
    Sampling(temperature=1.0),
    Sampling(temperature=0.5),
    Sampling(temperature=2.0),
    Sampling(temperature=1.5, top_k=3),
    Sampling(temperature=1.0, top_p=0.8),
], ids=repr)
def test_empirical_distribution(s):
    """Frequencies of 100k draws match softmax of the filtered logits / T (chi-square test).

    The thresholds are chi-square critical values at p = 1e-4; a wrong temperature or a
    filter off by one token gives statistics in the hundreds or more.
    """
    n = 100_000
    logits = np.array([2.0, 1.2, 0.7, 0.0, -0.6, -1.5], np.float32)
    tokens = sample(jnp.broadcast_to(logits, (n, 6)), keys(7, n), s)
    counts = np.bincount(np.asarray(tokens), minlength=6)
    expected = n * softmax64(np_filter(logits[None], s)[0])[0]
    live = expected > 0
    assert np.all(counts[~live] == 0)
    chi2 = ((counts[live] - expected[live]) ** 2 / expected[live]).sum()
    critical = {2: 18.42, 3: 21.11, 4: 23.51, 5: 25.74}[live.sum() - 1]  # by degrees of freedom
    assert chi2 < critical, (chi2, counts, expected.round())


@pytest.mark.parametrize("kwargs", [
    dict(temperature=-0.1),
    dict(temperature=float("nan")),
    dict(top_k=-1),
    dict(top_k=2.5),
    dict(top_p=0.0),
    dict(top_p=1.5),
    dict(top_p=-0.2),
    dict(min_p=1.5),
    dict(min_p=-0.1),
], ids=str)
def test_invalid_sampling_raises(kwargs):
    with pytest.raises(ValueError):
        Sampling(**kwargs)
