"""The `attention` mixer, called through the block protocol, against a float64 numpy
reference written from the math: causal GQA attention with rotate-half RoPE, and its options
(no RoPE; per-head q/k RMSNorm before RoPE, as Qwen3), which every variant inherits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera
from chimera.attention.attention import write_rows
from chimera.attention.h2o import H2OAttention
from chimera.attention.sinks import SinkAttention
from chimera.attention.sparse import BlockSparseAttention
from chimera.attention.window import SlidingWindowAttention
from mixer_harness import (assert_close, assert_only_written_change, attend, attention_reference, context, float64,
                           init_params, output, qkv, rope, run)

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


# --- options: no RoPE (Jamba), per-head q/k RMSNorm before RoPE (Qwen3) ---

# An epsilon of 1e-3 moves the normalised values by ~1e-3 relative: a block that ignored it would fail.
OPTIONS = {"no_rope": dict(use_rope=False), "qk_norm": dict(qk_norm=True, qk_norm_eps=1e-3),
           "qk_norm_no_rope": dict(use_rope=False, qk_norm=True, qk_norm_eps=1e-3)}
FIELDS = dict(d_model=D_MODEL, n_heads=N_HEADS, n_kv_heads=2, head_dim=HEAD_DIM, rope_theta=500.0, qkv_bias=True,
              out_bias=True)
# Calls of (row 0, row 1) tokens: ragged prefill, a chunk from different starts, decode steps.
SCHEDULE, WIDTH = [[5, 2], [3, 6], [1, 1], [1, 0]], 6


def rms(z, weight, eps):
    """float64 RMSNorm of z [..., Dh] over head_dim, times weight [Dh]."""
    return z / np.sqrt(np.mean(z * z, axis=-1, keepdims=True) + eps) * weight


def options_reference(block, params, x):
    """One sequence x [T, D] from position 0, causal, with the block's use_rope and qk_norm
    -> y [T, D] float64."""
    p = float64(params)
    q, k, v = qkv(p, x)
    if block.qk_norm:
        q, k = rms(q, p["q_norm"], block.qk_norm_eps), rms(k, p["k_norm"], block.qk_norm_eps)
    positions = np.arange(len(x))
    if block.use_rope:
        q, k = rope(q, positions, block.rope_theta), rope(k, positions, block.rope_theta)
    return output(p, attend(q, k, v, positions[:, None] >= positions[None, :]))


def check_against_options_reference(block):
    """Row b of random tokens fed on SCHEDULE gives the reference's outputs for its tokens."""
    params = init_params(block, randomise="bqk")  # biases and the q/k norm weights off their init
    lengths = np.sum(SCHEDULE, axis=0)
    full = random_x(2, lengths.max(), seed=7)
    ys, _, held = run(block, params, full, SCHEDULE, max_len=SLOTS, width=WIDTH)
    np.testing.assert_array_equal(held, lengths)
    for b, n in enumerate(lengths):
        assert_close(ys[b, :n], options_reference(block, params, full[b, :n]))


@pytest.mark.parametrize("options", list(OPTIONS), ids=list(OPTIONS))
def test_options_match_reference(options):
    check_against_options_reference(chimera.Attention(**FIELDS, **OPTIONS[options]))


# Each variant sized so that every earlier token stays visible: then it is full causal attention.
VARIANTS = {
    "sliding_window": lambda **f: SlidingWindowAttention(**f, window=SLOTS),
    "sink_attention": lambda **f: SinkAttention(**f, window=8, n_sinks=4),  # rope_positions "cache"
    "h2o": lambda **f: H2OAttention(**f, budget=SLOTS, recent=4),
    "block_sparse": lambda **f: BlockSparseAttention(**f, block_size=4, local_blocks=SLOTS),
}


@pytest.mark.parametrize("options", ["qk_norm", "qk_norm_no_rope"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_inherit_the_options(variant, options):
    check_against_options_reference(VARIANTS[variant](**FIELDS, **OPTIONS[options]))


def test_without_rope_the_order_of_earlier_tokens_does_not_matter():
    """No positional encoding: the newest token's output is a function of the set of tokens
    before it. With RoPE the order shows (the check can tell them apart)."""
    x = random_x(1, 7, seed=8)
    shuffled = np.concatenate([x[:, [3, 0, 5, 1, 4, 2]], x[:, 6:]], axis=1)
    ctx = context([0], [7], 7)

    def newest(block, tokens):
        params = init_params(block)
        y, _ = block(params, jnp.asarray(tokens), block.init_state(1, 7, jnp.float32), ctx)
        return np.asarray(y[0, -1], np.float64)

    no_rope = chimera.Attention(**FIELDS, use_rope=False)
    assert_close(newest(no_rope, shuffled), newest(no_rope, x))
    with_rope = chimera.Attention(**FIELDS)
    assert np.abs(newest(with_rope, shuffled) - newest(with_rope, x)).max() > 1e-3


def test_qk_norm_params_and_axes():
    block = chimera.Attention(**FIELDS, qk_norm=True)
    params = block.init(jax.random.key(0))
    for name in ("q_norm", "k_norm"):
        np.testing.assert_array_equal(params[name], np.ones(HEAD_DIM))  # the identity scale, as transformers
    axes = block.param_axes()
    assert set(axes) == set(params) and all(len(axes[name]) == params[name].ndim for name in params)
    assert axes["q_norm"] == axes["k_norm"] == ("head_dim",)
    assert "q_norm" not in chimera.Attention(**FIELDS).init(jax.random.key(0))


def test_option_config_errors():
    """Through a config, so the message names the field's path."""
    def config(**attn):
        return {"name": "t", "vocab_size": 16, "d_model": D_MODEL, "n_layers": 1, "layers": [{"mixer": "attn"}],
                "mixers": {"attn": {"kind": "attention", "n_heads": N_HEADS, "head_dim": HEAD_DIM, **attn}}}

    with pytest.raises(chimera.ConfigError, match=r"^mixers\.attn\.rope_scaling: is set but use_rope is false"):
        chimera.ModelConfig.from_dict(config(use_rope=False, rope_scaling={"type": "linear", "factor": 2.0}))
    with pytest.raises(chimera.ConfigError, match=r"^mixers\.attn\.qk_norm_eps: must be positive"):
        chimera.ModelConfig.from_dict(config(qk_norm=True, qk_norm_eps=0.0))
    with pytest.raises(chimera.ConfigError, match=r"^mixers\.attn\.head_dim: must be even for RoPE"):
        chimera.ModelConfig.from_dict(config(head_dim=7))
    # Without RoPE nothing pairs dimensions: an odd head_dim is fine.
    assert chimera.ModelConfig.from_dict(config(head_dim=7, use_rope=False)).mixer_blocks["attn"].head_dim == 7


def test_write_rows_writes_each_row_and_drops_out_of_range_slots():
    """write_rows == a numpy loop: new[b, t] lands at cache[b, slot[b, t]]; slots past the cache
    (padding tokens get S) are dropped, nothing clipped; under a mesh splitting the batch the
    compiled write exchanges nothing (each device writes its own rows)."""
    rng = np.random.default_rng(0)
    cache = rng.normal(size=(8, 6, 2, 3)).astype(np.float32)  # [B, S, Hkv, Dh]
    new = rng.normal(size=(8, 2, 2, 3)).astype(np.float32)  # [B, T, Hkv, Dh]
    slot = np.array([[0, 1], [5, 6], [6, 6], [2, 3], [4, 5], [1, 0], [3, 6], [0, 2]], np.int32)  # 6 = S: dropped
    want = cache.copy()
    for b, t in np.ndindex(slot.shape):
        if slot[b, t] < cache.shape[1]:
            want[b, slot[b, t]] = new[b, t]
    np.testing.assert_array_equal(write_rows(jnp.asarray(cache), jnp.asarray(slot), jnp.asarray(new)), want)

    mesh = chimera.make_mesh(data=4, devices=jax.devices()[:4])
    split = lambda a: jax.device_put(a, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))  # noqa: E731
    args = tuple(map(split, (cache, slot, new)))
    hlo = jax.jit(write_rows).lower(*args).compile().as_text()
    assert not any(op in hlo for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute")), hlo
    np.testing.assert_array_equal(jax.jit(write_rows)(*args), want)
