"""The `attention` mixer, called through the block protocol, against a float64 numpy
reference written from the math: causal GQA attention with rotate-half RoPE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera
from mixer_harness import assert_close, assert_only_written_change, attention_reference, context, init_params

D_MODEL, HEAD_DIM, N_HEADS, SLOTS = 32, 8, 4, 24

LAYOUTS = {"mha": 4, "gqa": 2, "mqa": 1}  # n_kv_heads for n_heads = 4


def make_block(n_kv_heads, theta=10000.0):
    return chimera.Attention(d_model=D_MODEL, n_heads=N_HEADS, n_kv_heads=n_kv_heads, head_dim=HEAD_DIM,
                             rope_theta=theta, qkv_bias=True, out_bias=True)


@pytest.fixture(scope="module", params=list(LAYOUTS), ids=list(LAYOUTS))
def setup(request):
    """(block, params) with biases randomised."""
    block = make_block(LAYOUTS[request.param], theta=500.0)
    params = init_params(block)
    assert set(params) == {"wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo"}
    return block, params


def reference(block, params, x):
    """One sequence x [T, D] from position 0, causal: a query at i sees every key j <= i.
    -> (y [T, D], rotated k [T, Hkv, Dh], v [T, Hkv, Dh]), float64."""
    positions = np.arange(len(x))
    return attention_reference(block, params, x, positions[:, None] >= positions[None, :])


def random_x(batch, width, seed):
    return np.random.default_rng(seed).normal(size=(batch, width, D_MODEL)).astype(np.float32)


def test_state_layout(setup):
    block, _ = setup
    state = block.init_state(3, SLOTS, jnp.float32)
    for leaf in jax.tree.leaves(state):
        assert leaf.shape == (3, SLOTS, block.n_kv_heads, HEAD_DIM)
        assert leaf.dtype == jnp.float32


def test_prefill_matches_reference(setup):
    """A ragged prefill from an empty cache: outputs and cache contents at valid positions."""
    block, params = setup
    lengths = np.array([9, 4, 1])
    x = random_x(3, 9, seed=2)
    state = block.init_state(3, SLOTS, jnp.float32)
    y, new_state = block(params, jnp.asarray(x), state, context([0, 0, 0], lengths, 9))
    assert y.shape == x.shape
    for b, n in enumerate(lengths):
        y_ref, k_ref, v_ref = reference(block, params, x[b, :n])
        assert_close(y[b, :n], y_ref)
        assert_close(new_state["k"][b, :n], k_ref)
        assert_close(new_state["v"][b, :n], v_ref)
        # Padding is never written: the slots past each row's length are still the initial zeros.
        assert not np.asarray(new_state["k"][b, n:]).any()
        assert not np.asarray(new_state["v"][b, n:]).any()


def test_padding_leaves_cache_bit_identical(setup):
    """Over a cache of garbage, only the valid tokens' slots change; all-padding changes nothing."""
    block, params = setup
    rng = np.random.default_rng(3)
    state = {name: jnp.asarray(rng.normal(size=(3, SLOTS, block.n_kv_heads, HEAD_DIM)), jnp.float32)
             for name in ("k", "v")}
    starts, lengths = np.array([2, 7, 0]), np.array([3, 0, 5])
    x = jnp.asarray(random_x(3, 6, seed=4))
    _, new_state = block(params, x, state, context(starts, lengths, 6))
    slot = np.arange(SLOTS)
    written = (slot >= starts[:, None]) & (slot < (starts + lengths)[:, None])  # [B, S]
    for name in ("k", "v"):
        assert_only_written_change(state[name], new_state[name], written)

    _, same = block(params, x, state, context(starts, [0, 0, 0], 6))
    for name in ("k", "v"):
        np.testing.assert_array_equal(np.asarray(same[name]), np.asarray(state[name]))


def test_extend_from_nonzero_start_matches_reference(setup):
    """Rows holding different numbers of tokens append a chunk; stale slots past each row's
    length (as after a rollback) hold garbage that no query may see."""
    block, params = setup
    starts, lengths = np.array([5, 0, 11]), np.array([4, 6, 2])
    full = random_x(3, 17, seed=5)  # each row's whole sequence: prefix then chunk

    state = block.init_state(3, SLOTS, jnp.float32)
    _, state = block(params, jnp.asarray(full[:, :starts.max()]), state, context([0, 0, 0], starts, starts.max()))
    rng = np.random.default_rng(6)
    stale = np.arange(SLOTS)[None, :] >= starts[:, None]  # [B, S]
    state = {name: jnp.where(stale[:, :, None, None], rng.normal(size=cache.shape).astype(np.float32), cache)
             for name, cache in state.items()}

    width = lengths.max()
    chunk = np.stack([full[b, starts[b]:starts[b] + width] for b in range(3)])
    y, state = block(params, jnp.asarray(chunk), state, context(starts, lengths, width))
    for b in range(3):
        end = starts[b] + lengths[b]
        y_ref, k_ref, v_ref = reference(block, params, full[b, :end])
        assert_close(y[b, :lengths[b]], y_ref[starts[b]:])
        assert_close(state["k"][b, :end], k_ref)
        assert_close(state["v"][b, :end], v_ref)


@pytest.mark.parametrize("context_len", [1, 7, 128])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_state_bytes_matches_init_state(setup, context_len, dtype):
    block, _ = setup
    state = block.init_state(1, context_len, dtype)
    real = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
    assert block.state_bytes(context_len, dtype) == real
