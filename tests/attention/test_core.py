"""The shared softmax `attend` against a float64 numpy reference written from the math:
grouped KV heads, an arbitrary mask, Gemma-2 soft-capping and GPT-OSS learned sink logits."""

import jax.numpy as jnp
import numpy as np
import pytest

from chimera.attention.core import attend
import mixer_harness

B, T, S, H, DH = 2, 5, 7, 4, 8
SCALE = DH ** -0.5


def reference(q, k, v, mask, softcap=None, sinks=None):
    """q [B, T, H, Dh], k and v [B, S, Hkv, Dh], mask [B, T, S] -> [B, T, H, Dh], float64, from
    the shared numpy softmax attention (scale Dh ** -0.5 = SCALE). Rows with nothing visible
    come out NaN."""
    with np.errstate(invalid="ignore"):  # -inf - -inf on a fully masked row: NaN, as documented
        return mixer_harness.attend(q, k, v, mask, softcap, sinks)


def inputs(n_kv_heads, seed):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, T, H, DH)).astype(np.float32) * 2  # * 2: logits large enough to cap
    k = rng.normal(size=(B, S, n_kv_heads, DH)).astype(np.float32) * 2
    v = rng.normal(size=(B, S, n_kv_heads, DH)).astype(np.float32)
    mask = rng.random((B, T, S)) < 0.6
    mask[:, :, 0] = True  # every row sees something ...
    mask[1, 2] = False  # ... but this one: fully masked
    return q, k, v, mask


CASES = {  # (n_kv_heads, softcap, with_sinks): every layout, every feature, and both features at once
    "mha": (4, None, False),
    "gqa-softcap": (2, 3.0, False),
    "mqa-sinks": (1, None, True),
    "gqa-softcap-sinks": (2, 3.0, True),
}


@pytest.mark.parametrize("n_kv_heads, softcap, with_sinks", CASES.values(), ids=list(CASES))
def test_attend_matches_reference(n_kv_heads, softcap, with_sinks):
    q, k, v, mask = inputs(n_kv_heads, seed=n_kv_heads)
    # Sinks of both signs, one large enough to take most of the probability mass.
    sinks = np.array([-1.0, 0.5, 2.0, 6.0], np.float32) if with_sinks else None
    out = attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask), scale=SCALE,
                 softcap=softcap, sink_logits=None if sinks is None else jnp.asarray(sinks))
    assert out.shape == (B, T, H, DH) and out.dtype == jnp.float32
    expected = reference(q, k, v, mask, softcap, sinks)
    seen = mask.any(-1)  # [B, T]
    np.testing.assert_allclose(np.asarray(out, np.float64)[seen], expected[seen], rtol=1e-5, atol=1e-6)


def test_softcap_bounds_logits():
    """With a tiny cap every logit is within +-1e-6 whatever q.k: the softmax is uniform over
    the visible keys (to ~1e-6)."""
    q, k, v, mask = inputs(2, seed=5)
    out = attend(jnp.asarray(q * 100), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask), scale=SCALE, softcap=1e-6)
    uniform = np.einsum("bts,bskd->btkd", mask / np.maximum(mask.sum(-1, keepdims=True), 1), v.astype(np.float64))
    uniform = np.repeat(uniform, 2, axis=2)  # [B, T, H, Dh]: query head h reads KV head h // 2
    seen = mask.any(-1)
    np.testing.assert_allclose(np.asarray(out, np.float64)[seen], uniform[seen], rtol=1e-5, atol=1e-5)


def test_sink_only_lowers_weights():
    """A sink adds mass without a value: the output is the sink-free output times
    sum(exp(l)) / (sum(exp(l)) + exp(sink)), the probability the real keys keep."""
    q, k, v, mask = inputs(2, seed=6)
    sinks = np.full((H,), 1.5, np.float32)
    with_sink = np.asarray(attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask), scale=SCALE,
                                  sink_logits=jnp.asarray(sinks)), np.float64)
    without = np.asarray(attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask), scale=SCALE),
                         np.float64)
    logits = np.einsum("bthd,bshd->bhts", q.astype(np.float64), np.repeat(k, 2, axis=2).astype(np.float64)) * SCALE
    mass = np.where(mask[:, None], np.exp(logits), 0).sum(-1)  # [B, H, T]
    kept = (mass / (mass + np.exp(1.5))).transpose(0, 2, 1)[..., None]  # [B, T, H, 1]
    seen = mask.any(-1)
    np.testing.assert_allclose(with_sink[seen], (without * kept)[seen], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("softcap", [None, 3.0], ids=["plain", "softcap"])
@pytest.mark.parametrize("with_sinks", [False, True], ids=["", "sinks"])
def test_fully_masked_rows_are_finite(softcap, with_sinks):
    """A padding query sees nothing; its output is ignored but must not be NaN (NaN would
    poison everything it touches, e.g. through 0 * NaN in a later masked sum)."""
    q, k, v, _ = inputs(2, seed=7)
    mask = np.zeros((B, T, S), bool)
    sinks = jnp.zeros((H,)) if with_sinks else None
    for dtype in (jnp.float32, jnp.bfloat16):
        out = attend(jnp.asarray(q, dtype), jnp.asarray(k, dtype), jnp.asarray(v, dtype), jnp.asarray(mask),
                     scale=SCALE, softcap=softcap, sink_logits=sinks)
        assert out.dtype == dtype
        assert np.isfinite(np.asarray(out, np.float32)).all()
