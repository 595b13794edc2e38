"""RoPE: frequencies as transformers computes them, the rotate-half rotation, and its
two defining properties (norm-preserving, relative)."""

import jax.numpy as jnp
import numpy as np
import pytest
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from chimera.attention.rope import RopeScaling, apply_rope, inverse_frequencies

LLAMA3 = dict(type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=8192)

CASES = {  # (head_dim, theta, scaling fields or None)
    "default-64": (64, 10000.0, None),
    "default-128": (128, 500000.0, None),
    "linear": (64, 10000.0, dict(type="linear", factor=4.0)),
    "llama3-128": (128, 500000.0, LLAMA3),  # Llama-3.1-8B
    "llama3-64": (64, 500000.0, dict(LLAMA3, factor=32.0)),  # Llama-3.2-1B
    "llama3-custom": (32, 10000.0, dict(LLAMA3, low_freq_factor=2.0, high_freq_factor=8.0,
                                        original_max_position_embeddings=256)),
}


def hf_inverse_frequencies(head_dim, theta, scaling):
    rope_parameters = {"rope_type": "default", "rope_theta": theta}
    if scaling is not None:
        rope_parameters |= {k: v for k, v in scaling.items() if k != "type"}
        rope_parameters["rope_type"] = scaling["type"]
    config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                         max_position_embeddings=131072, rope_parameters=rope_parameters)
    if scaling is None:  # transformers 5 keeps the default on the rotary class, not in the table
        inv_freq, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    else:
        inv_freq, _ = ROPE_INIT_FUNCTIONS[scaling["type"]](config)
    return inv_freq.double().numpy()


@pytest.mark.parametrize("head_dim, theta, scaling", CASES.values(), ids=CASES.keys())
def test_inverse_frequencies_match_transformers(head_dim, theta, scaling):
    got = inverse_frequencies(head_dim, theta, RopeScaling(**scaling) if scaling else None)
    want = hf_inverse_frequencies(head_dim, theta, scaling)
    assert got.dtype == np.float32 and got.shape == (head_dim // 2,)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("case", ["llama3-128", "llama3-64", "llama3-custom"])
def test_llama3_cases_cover_all_three_bands(case):
    """Guards the comparison above: each llama3 case has frequencies kept, smoothed and divided."""
    head_dim, theta, scaling = CASES[case]
    plain = inverse_frequencies(head_dim, theta, None).astype(np.float64)
    ratio = plain / inverse_frequencies(head_dim, theta, RopeScaling(**scaling))
    kept = np.isclose(ratio, 1.0, rtol=1e-6)
    divided = np.isclose(ratio, scaling["factor"], rtol=1e-6)
    assert kept.any() and divided.any() and (~kept & ~divided).any()


def rotate_half_reference(x, positions, inv_freq):
    """Hugging Face Llama's formula in float64: x * cos + rotate_half(x) * sin.

    The angle is the float32 product position * inv_freq, as transformers computes it
    (and as chimera's docstring says); everything after it is float64.
    """
    angles = (positions.astype(np.float32)[..., None] * inv_freq).astype(np.float64)  # [B, T, Dh/2]
    emb = np.concatenate([angles, angles], -1)[:, :, None, :]  # [B, T, 1, Dh]
    x1, x2 = np.split(x.astype(np.float64), 2, -1)
    rotated = np.concatenate([-x2, x1], -1)
    return x * np.cos(emb) + rotated * np.sin(emb)


def random_qk(seed, shape=(2, 16, 3, 64)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("scaling", [None, dict(type="linear", factor=4.0), LLAMA3], ids=str)
def test_apply_rope_matches_rotate_half(scaling):
    x = random_qk(0)
    positions = np.random.default_rng(1).integers(0, 20000, size=x.shape[:2]).astype(np.int32)
    inv_freq = inverse_frequencies(x.shape[-1], 500000.0, RopeScaling(**scaling) if scaling else None)
    got = apply_rope(jnp.asarray(x), jnp.asarray(positions), inv_freq)
    assert got.dtype == jnp.float32 and got.shape == x.shape
    want = rotate_half_reference(x, positions, inv_freq)
    err = np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want)
    assert err < 1e-5


def test_apply_rope_keeps_dtype():
    """bfloat16 in, bfloat16 out, close to the float32 rotation at bfloat16 precision."""
    x = random_qk(2)
    positions = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), x.shape[:2])
    inv_freq = inverse_frequencies(64, 10000.0, None)
    got = apply_rope(jnp.asarray(x, jnp.bfloat16), positions, inv_freq)
    assert got.dtype == jnp.bfloat16
    want = apply_rope(jnp.asarray(x), positions, inv_freq)
    err = np.linalg.norm(np.asarray(got, np.float32) - want) / np.linalg.norm(want)
    assert err < 1e-2  # bfloat16 has 8 mantissa bits (relative spacing 2**-8 = 3.9e-3)


def test_rotation_preserves_pair_norms():
    """Rotate-half pairs dimension i with i + Dh/2; each pair is rotated, so its norm is kept."""
    x = random_qk(3)
    positions = np.random.default_rng(4).integers(0, 4096, size=x.shape[:2]).astype(np.int32)
    y = np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(positions), inverse_frequencies(64, 10000.0, None)))

    def pair_norms(a):
        a1, a2 = np.split(a.astype(np.float64), 2, -1)
        return np.hypot(a1, a2)

    np.testing.assert_allclose(pair_norms(y), pair_norms(x), rtol=1e-5)
    assert not np.allclose(y, x, atol=1e-2)  # it did rotate


def test_score_depends_only_on_relative_position():
    """<rope(q, m), rope(k, n)> is a function of m - n alone (positions kept small so the
    float32 angles are exact to ~1e-6)."""
    q, k = random_qk(5, (2, 64))
    inv_freq = inverse_frequencies(64, 10000.0, None)

    def score(m, n):
        rq = apply_rope(jnp.asarray(q[None, None, None]), jnp.array([[m]]), inv_freq)  # [1, 1, 1, Dh]
        rk = apply_rope(jnp.asarray(k[None, None, None]), jnp.array([[n]]), inv_freq)
        return float(jnp.sum(rq * rk)) / (np.linalg.norm(q) * np.linalg.norm(k))

    for offset in [0, 1, 3, 17]:
        scores = [score(n + offset, n) for n in [0, 5, 23, 40]]
        np.testing.assert_allclose(scores, scores[0], atol=1e-5)
    # ...and it does depend on the offset (an identity "rotation" would pass the loop above).
    assert abs(score(3, 0) - score(0, 0)) > 1e-2
