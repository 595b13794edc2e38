"""Attention sinks (StreamingLLM): the block against a float64 numpy reference written from
the math for both RoPE schemes, its bounded state, and the DESIGN.md invariants through a
model built from the `sinks-tiny` preset (and its `original`-positions twin).

The rule restated: a query at position p sees K(p) = {j <= p : j < n_sinks or j > p - window}.
"original" rotates every token at its position; "cache" (StreamingLLM) lays K(p) out in
order as the cache and rotates each key at its index there, the query (the newest) at the
last index. Both are per-query rules, so chunking must not change any output.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera
import chimera.attention.sinks  # noqa: F401  (registers the `sink_attention` kind)
from chimera.attention.sinks import SinkAttention
from chimera.attention.window import SlidingWindowAttention
import mixer_harness
from mixer_harness import (assert_close, attend, check_bad_config, check_bounded_state, check_chunked_extend,
                           check_engine_greedy, check_prompt_then_decode, check_ragged_batch_matches_alone, context,
                           float64, forward_setup, output, preset_with, qkv, random_params, rope, step)

D_MODEL, HEAD_DIM, N_HEADS, N_SINKS, WINDOW, MAX_LEN = 32, 8, 4, 3, 4, 32
FIELDS = dict(d_model=D_MODEL, n_heads=N_HEADS, head_dim=HEAD_DIM, rope_theta=500.0, qkv_bias=True, out_bias=True)

BLOCKS = {
    "original": dict(rope_positions="original", n_kv_heads=2),
    "cache": dict(rope_positions="cache", n_kv_heads=2),
    # GPT-OSS learned sink logits and a soft-cap ride along on StreamingLLM's sinks.
    "cache-mqa-learned-sinks": dict(rope_positions="cache", n_kv_heads=1, learned_sinks=True, softcap=4.0),
}


def make_block(**fields):
    return SinkAttention(**{**FIELDS, "n_sinks": N_SINKS, "window": WINDOW, **fields})


@pytest.fixture(scope="module", params=list(BLOCKS))
def setup(request):
    block = make_block(**BLOCKS[request.param])
    return block, random_params(block)


def reference(block, params, x):
    """One whole sequence x [T, D] at positions 0..T-1 -> (y [T, D], k before RoPE, k rotated at
    its position, v [T, Hkv, Dh]), float64. One query at a time, straight from the rule."""
    p = float64(params)
    q, k, v = qkv(p, x)
    theta = block.rope_theta
    out = np.zeros_like(q)
    for t in range(len(x)):
        seen = [j for j in range(t + 1) if j < block.n_sinks or j > t - block.window]  # K(t), in order
        if block.rope_positions == "original":
            q_at, k_at = [t], seen
        else:  # StreamingLLM: positions within the cache
            q_at, k_at = [len(seen) - 1], range(len(seen))
        out[t] = attend(rope(q[t:t + 1], q_at, theta), rope(k[seen], k_at, theta), v[seen],
                        softcap=block.softcap, sinks=p["sinks"] if block.learned_sinks else None)[0]
    return output(p, out), k, rope(k, np.arange(len(x)), theta), v


WIDE = 11  # every multi-token call is padded to this width: one compile for all of them
run = functools.partial(mixer_harness.run, max_len=MAX_LEN, width=WIDE)


SCHEDULES = {  # calls of (tokens appended per row); n_sinks + window = 7
    "prefill": [[11, 3, 7]],  # past n_sinks + window in one call, ragged
    "prefill-then-decode": [[6, 2, 9]] + [[1, 1, 1]] * 5 + [[1, 0, 1], [0, 1, 1]],  # rows idle some steps
    "chunks": [[3, 0, 5], [9, 6, 2], [1, 1, 1], [5, 10, 4]],  # chunks > window from non-zero starts
}
FULL = np.random.default_rng(2).normal(size=(3, 20, D_MODEL)).astype(np.float32)


@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=list(SCHEDULES))
def test_matches_reference(setup, schedule):
    """Outputs at every valid position; the ring holds the last `window` positions at
    p % window and the sink buffer the first n_sinks, rotated ("original") or not ("cache")."""
    block, params = setup
    ys, state, held = run(block, params, FULL, schedule)
    assert state["k"].shape == (3, WINDOW, block.n_kv_heads, HEAD_DIM)
    assert state["sink_k"].shape == (3, N_SINKS, block.n_kv_heads, HEAD_DIM)
    for b, n in enumerate(held):
        y_ref, k_raw, k_rotated, v_ref = reference(block, params, FULL[b, :n])
        k_ref = k_rotated if block.rope_positions == "original" else k_raw
        assert_close(ys[b, :n], y_ref)
        for p in range(max(n - WINDOW, 0), n):
            assert_close(state["k"][b, p % WINDOW], k_ref[p])
            assert_close(state["v"][b, p % WINDOW], v_ref[p])
        for i in range(min(n, N_SINKS)):
            assert_close(state["sink_k"][b, i], k_ref[i])
            assert_close(state["sink_v"][b, i], v_ref[i])


def test_short_sequences_get_full_attention(setup):
    """Up to n_sinks + window tokens nothing is evicted: plain causal `attention`, both schemes."""
    block, params = setup
    full = chimera.Attention(**{k: v for k, v in block.__dict__.items()
                                if k not in ("window", "n_sinks", "rope_positions")})
    lengths = np.array([N_SINKS + WINDOW, 5, 2])
    x = jnp.asarray(np.random.default_rng(4).normal(size=(3, WIDE, D_MODEL)), jnp.float32)
    ctx = context([0, 0, 0], lengths, WIDE)
    y_sinks, _ = step(block)(params, x, block.init_state(3, MAX_LEN, jnp.float32), ctx)
    y_full, _ = step(full)(params, x, full.init_state(3, MAX_LEN, jnp.float32), ctx)
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(np.asarray(y_sinks[b, :n]), np.asarray(y_full[b, :n]), rtol=1e-5, atol=1e-5)


def test_schemes_differ_only_once_sinks_are_evicted_from_view():
    """The two RoPE schemes agree while a query sees everything (p < n_sinks + window) and
    differ after, when its sinks sit closer under "cache" than at their true distance."""
    block = make_block(**BLOCKS["original"])
    params = random_params(block)
    y_original = run(block, params, FULL, SCHEDULES["prefill"])[0]
    y_cache = run(make_block(**BLOCKS["cache"]), params, FULL, SCHEDULES["prefill"])[0]
    early, late = slice(0, N_SINKS + WINDOW), slice(N_SINKS + WINDOW, 11)
    np.testing.assert_allclose(y_cache[0, early], y_original[0, early], rtol=1e-5, atol=1e-5)
    assert (np.abs(y_cache[0, late] - y_original[0, late]).max(axis=-1) > 1e-3).all()


@pytest.mark.parametrize("scheme", ["original", "cache"])
def test_no_sinks_is_sliding_window(scheme):
    """n_sinks = 0 leaves the window alone; RoPE is relative, so under both schemes."""
    block = make_block(**BLOCKS[scheme], n_sinks=0)
    window = SlidingWindowAttention(**{k: v for k, v in block.__dict__.items()
                                       if k not in ("n_sinks", "rope_positions")})
    params = random_params(block)
    y_sinks, state, _ = run(block, params, FULL, SCHEDULES["prefill"])
    assert state["sink_k"].shape[1] == 0
    y_window = run(window, params, FULL, SCHEDULES["prefill"])[0]
    np.testing.assert_allclose(y_sinks, y_window, rtol=1e-5, atol=1e-5)


def test_padding_leaves_state_bit_identical(setup):
    """Over a state of garbage, a row appending nothing and a call of all padding change nothing;
    a row appending past its sinks leaves the sink buffer alone."""
    block, params = setup
    rng = np.random.default_rng(3)
    state = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32),
                         block.init_state(3, MAX_LEN, jnp.float32))
    starts, lengths = np.array([2, 7, 5]), np.array([3, 0, 6])
    x = jnp.asarray(rng.normal(size=(3, WIDE, D_MODEL)), jnp.float32)
    _, new_state = step(block)(params, x, state, context(starts, lengths, WIDE))
    for name in state:
        before, after = np.asarray(state[name]), np.asarray(new_state[name])
        np.testing.assert_array_equal(after[1], before[1])  # appended nothing
    np.testing.assert_array_equal(np.asarray(new_state["sink_k"][2]), np.asarray(state["sink_k"][2]))  # at 5..10
    changed = (np.asarray(new_state["sink_k"][0]) != np.asarray(state["sink_k"][0])).any(axis=(1, 2))
    np.testing.assert_array_equal(changed, [False, False, True])  # positions 2..4: only sink slot 2

    _, same = step(block)(params, x, state, context(starts, [0, 0, 0], WIDE))
    for name in state:
        np.testing.assert_array_equal(np.asarray(same[name]), np.asarray(state[name]))


# --- state size and costs ---

@pytest.mark.parametrize("max_len", [1, 3, 5, 1024, 65536])
def test_state_is_bounded_by_sinks_plus_window(max_len):
    state = jax.eval_shape(lambda: make_block(n_kv_heads=2).init_state(2, max_len, jnp.bfloat16))
    assert set(state) == {"k", "v", "sink_k", "sink_v"}
    assert state["k"].shape == state["v"].shape == (2, min(max_len, WINDOW), 2, HEAD_DIM)
    assert state["sink_k"].shape == state["sink_v"].shape == (2, min(max_len, N_SINKS), 2, HEAD_DIM)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in state.values())


@pytest.mark.parametrize("context_len", [1, 2, N_SINKS, 5, N_SINKS + WINDOW, 4096])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_state_bytes_matches_init_state(context_len, dtype):
    block = make_block(n_kv_heads=2)
    state = jax.eval_shape(lambda: block.init_state(1, context_len, dtype))
    assert block.state_bytes(context_len, dtype) == sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def test_flops_stop_growing_at_sinks_plus_window():
    block = make_block(n_kv_heads=2)
    assert block.flops_per_token(1) < block.flops_per_token(N_SINKS + WINDOW)
    assert block.flops_per_token(N_SINKS + WINDOW) == block.flops_per_token(10_000)


def test_state_axes_cover_the_state():
    block = make_block(n_kv_heads=2)
    state = block.init_state(1, MAX_LEN, jnp.float32)
    axes = block.state_axes()
    assert set(axes) == set(state)
    assert all(len(axes[name]) == state[name].ndim and axes[name][0] == "batch" for name in state)


# --- configs ---

@pytest.mark.parametrize("field, value, message", [
    ("window", 0, "must be positive"),
    ("window", None, "is required"),
    ("n_sinks", -1, "must be >= 0"),
    ("n_sinks", 2.0, "expected an integer"),
    ("rope_positions", "relative", "must be one of"),
    ("head_dim", 7, "must be even"),  # the `attention` checks still apply
])
def test_bad_config_names_the_field(field, value, message):
    check_bad_config("sinks-tiny", field, value, message)


def test_defaults():
    """StreamingLLM's defaults: 4 sinks, RoPE by cache index."""
    block = SinkAttention(d_model=D_MODEL, n_heads=N_HEADS, window=WINDOW)
    assert block.n_sinks == 4 and block.rope_positions == "cache"


# --- the DESIGN.md invariants through a model ---

B, T = 3, 20  # sequences of 20 tokens through 4 sinks + a window of 8


@functools.cache
def model_setup(scheme):
    """(model, params, tokens [B, T], forward logits) for the preset ("cache") or its "original" twin."""
    return forward_setup(chimera.ModelConfig.from_dict(preset_with("sinks-tiny", rope_positions=scheme)), B, T)


def test_preset():
    cfg = chimera.load_config("sinks-tiny")
    for mixer, _ in chimera.build(cfg).blocks:
        assert type(mixer) is SinkAttention
        assert (mixer.n_sinks, mixer.window, mixer.rope_positions) == (4, 8, "cache")
    assert chimera.ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("scheme", ["cache", "original"])
def test_prompt_then_token_by_token_matches_forward(scheme):
    """Also under "cache": every query is rotated by its own cache, however the tokens arrive."""
    check_prompt_then_decode(*model_setup(scheme), prompt=13, max_len=64)  # 13 > 4 + 8


@pytest.mark.parametrize("scheme", ["cache", "original"])
def test_chunked_extend_matches_forward(scheme):
    check_chunked_extend(*model_setup(scheme), sizes=(3, 13, 3), max_len=64)


def test_ragged_batch_matches_alone():
    """Each row gets its own logits and state (padding never written), also decoding on together."""
    check_ragged_batch_matches_alone(*model_setup("cache"), np.array([T, 5, 13]), max_len=64)


def test_engine_generate_matches_greedy_reference(greedy_reference):
    model, params, _, _ = model_setup("cache")
    check_engine_greedy(model, params, greedy_reference, new_tokens=10, max_len=64)


def test_state_size_does_not_depend_on_max_len():
    model = chimera.build(chimera.load_config("sinks-tiny"))
    # layers x (k, v) x (sinks + window) x kv heads x head_dim x f32
    check_bounded_state(model, 2 * 2 * (4 + 8) * 2 * 16 * 4, bound=12)
