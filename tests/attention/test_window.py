"""Sliding-window attention: the block against a float64 numpy reference written from the
math (projections, rotate-half RoPE, GQA, a query at p sees p - window < j <= p, optional
learned sinks and soft-capping), its ring-buffer state, and the DESIGN.md invariants
through a model built from the `mistral-tiny` preset."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera
import chimera.attention.window  # noqa: F401  (registers the `sliding_window` kind)
from chimera.attention.window import SlidingWindowAttention, ring_slots
import mixer_harness
from mixer_harness import (assert_close, assert_only_written_change, attention_reference, check_bad_config,
                           check_bounded_state, check_chunked_extend, check_engine_greedy, check_padding_is_inert,
                           check_prompt_then_decode, check_ragged_batch_matches_alone, context, forward_setup,
                           random_params, step)

D_MODEL, HEAD_DIM, N_HEADS, WINDOW, MAX_LEN = 32, 8, 4, 4, 32

BLOCKS = {
    "gqa": dict(n_kv_heads=2),
    # GPT-OSS-style learned sinks (and a soft-cap) on the window: the sinks join every softmax.
    "mqa-learned-sinks": dict(n_kv_heads=1, learned_sinks=True, softcap=4.0),
}


@pytest.fixture(scope="module", params=list(BLOCKS))
def setup(request):
    block = SlidingWindowAttention(d_model=D_MODEL, n_heads=N_HEADS, head_dim=HEAD_DIM, window=WINDOW,
                                   rope_theta=500.0, qkv_bias=True, out_bias=True, **BLOCKS[request.param])
    return block, random_params(block)


def reference(block, params, x):
    """One whole sequence x [T, D] at positions 0..T-1 -> (y [T, D], rotated k, v [T, Hkv, Dh]),
    float64; a query at p sees p - window < j <= p."""
    query, key = np.arange(len(x))[:, None], np.arange(len(x))[None, :]
    return attention_reference(block, params, x, (key <= query) & (key > query - block.window))


WIDE = 11  # every multi-token call is padded to this width: one compile for all of them
run = functools.partial(mixer_harness.run, max_len=MAX_LEN, width=WIDE)


SCHEDULES = {  # calls of (tokens appended per row); the window is 4
    "prefill": [[11, 3, 7]],  # longer than the window in one call, ragged
    "prefill-then-decode": [[6, 2, 9]] + [[1, 1, 1]] * 5 + [[1, 0, 1], [0, 1, 1]],  # rows idle some steps
    "chunks": [[3, 0, 5], [9, 6, 2], [1, 1, 1], [5, 10, 4]],  # chunks > window from non-zero starts
}


@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=list(SCHEDULES))
def test_matches_reference(setup, schedule):
    """Outputs at every valid position, and the ring: position p in slot p % window for
    the last `window` positions, never-written slots still empty."""
    block, params = setup
    full = np.random.default_rng(2).normal(size=(3, 20, D_MODEL)).astype(np.float32)
    ys, state, held = run(block, params, full, schedule)
    assert state["k"].shape == state["v"].shape == (3, WINDOW, block.n_kv_heads, HEAD_DIM)
    for b, n in enumerate(held):
        y_ref, k_ref, v_ref = reference(block, params, full[b, :n])
        assert_close(ys[b, :n], y_ref)
        for p in range(max(n - WINDOW, 0), n):
            assert_close(state["k"][b, p % WINDOW], k_ref[p])
            assert_close(state["v"][b, p % WINDOW], v_ref[p])
        assert not np.asarray(state["k"][b, n:]).any()  # n < window: slots n.. never written


def test_padding_leaves_ring_bit_identical(setup):
    """Over a ring of garbage, only the slots of each row's last `window` valid tokens
    change; a row appending nothing, or a call of all padding, changes nothing."""
    block, params = setup
    rng = np.random.default_rng(3)
    state = {name: jnp.asarray(rng.normal(size=(3, WINDOW, block.n_kv_heads, HEAD_DIM)), jnp.float32)
             for name in ("k", "v")}
    starts, lengths = np.array([2, 7, 0]), np.array([3, 0, 6])
    x = jnp.asarray(rng.normal(size=(3, WIDE, D_MODEL)), jnp.float32)
    _, new_state = step(block)(params, x, state, context(starts, lengths, WIDE))
    written = np.zeros((3, WINDOW), bool)
    for b in range(3):
        written[b, np.arange(starts[b], starts[b] + lengths[b]) % WINDOW] = True
    for name in ("k", "v"):
        assert_only_written_change(state[name], new_state[name], written)

    _, same = step(block)(params, x, state, context(starts, [0, 0, 0], WIDE))
    for name in ("k", "v"):
        np.testing.assert_array_equal(np.asarray(same[name]), np.asarray(state[name]))


def test_window_covering_the_sequence_is_full_attention():
    """A window at least as long as the sequence masks nothing: plain causal `attention`
    (learned sinks and soft-cap included)."""
    fields = dict(d_model=D_MODEL, n_heads=N_HEADS, head_dim=HEAD_DIM, **BLOCKS["mqa-learned-sinks"])
    wide, full = SlidingWindowAttention(**fields, window=WIDE), chimera.Attention(**fields)
    params = random_params(full)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, WIDE, D_MODEL)), jnp.float32)
    ctx = context([0, 0], [WIDE, 7], WIDE)
    y_window, _ = step(wide)(params, x, wide.init_state(2, MAX_LEN, jnp.float32), ctx)
    y_full, _ = step(full)(params, x, full.init_state(2, MAX_LEN, jnp.float32), ctx)
    np.testing.assert_allclose(np.asarray(y_window[0]), np.asarray(y_full[0]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y_window[1, :7]), np.asarray(y_full[1, :7]), rtol=1e-5, atol=1e-5)


def test_ring_slots_are_distinct():
    """A call longer than the ring writes only each row's last `slots` valid tokens, one per
    slot (XLA does not order duplicate scatter indices); padding and the rest are dropped."""
    starts, lengths, slots = np.array([0, 6, 3, 2]), np.array([11, 5, 4, 0]), 4
    slot = np.asarray(ring_slots(context(starts, lengths, 11), slots))  # [B, T]
    for b in range(4):
        kept = np.arange(max(lengths[b] - slots, 0), lengths[b])  # indices of the last <= 4 valid tokens
        np.testing.assert_array_equal(slot[b, kept], (starts[b] + kept) % slots)
        assert (np.delete(slot[b], kept) == slots).all()


# --- state size and costs ---

@pytest.mark.parametrize("max_len", [1, 3, WINDOW, 1024, 65536])
def test_state_never_exceeds_the_window(max_len):
    block = SlidingWindowAttention(d_model=D_MODEL, n_heads=N_HEADS, n_kv_heads=2, window=WINDOW)
    state = jax.eval_shape(lambda: block.init_state(2, max_len, jnp.bfloat16))
    assert state["k"].shape == state["v"].shape == (2, min(max_len, WINDOW), 2, HEAD_DIM)
    assert state["k"].dtype == jnp.bfloat16


@pytest.mark.parametrize("context_len", [1, 3, WINDOW, 5, 4096])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_state_bytes_matches_init_state(context_len, dtype):
    block = SlidingWindowAttention(d_model=D_MODEL, n_heads=N_HEADS, n_kv_heads=2, window=WINDOW)
    state = jax.eval_shape(lambda: block.init_state(1, context_len, dtype))
    assert block.state_bytes(context_len, dtype) == sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def test_flops_stop_growing_at_the_window():
    block = SlidingWindowAttention(d_model=D_MODEL, n_heads=N_HEADS, n_kv_heads=2, window=WINDOW)
    full = chimera.Attention(d_model=D_MODEL, n_heads=N_HEADS, n_kv_heads=2)
    assert block.flops_per_token(1) == full.flops_per_token(1)
    assert block.flops_per_token(WINDOW - 1) < block.flops_per_token(WINDOW)
    assert block.flops_per_token(WINDOW) == block.flops_per_token(1000) == full.flops_per_token(WINDOW)


# --- configs ---

@pytest.mark.parametrize("field, value, message", [
    ("window", 0, "must be positive"),
    ("window", -8, "must be positive"),
    ("window", 2.5, "expected an integer"),
    ("window", None, "is required"),
    ("n_kv_heads", 3, "does not divide n_heads"),  # the `attention` checks still apply
    ("softcap", -1.0, "must be positive"),
])
def test_bad_config_names_the_field(field, value, message):
    check_bad_config("mistral-tiny", field, value, message)


# --- the DESIGN.md invariants through a model ---

B, T = 3, 20  # sequences of 20 tokens through a window of 8


@pytest.fixture(scope="module")
def model_setup():
    return forward_setup(chimera.load_config("mistral-tiny"), B, T)


def test_preset(model_setup):
    model, _, _, _ = model_setup
    cfg = model.config
    assert cfg.name == "mistral-tiny" and cfg.dtype == "float32" and cfg.vocab_size == 256 and cfg.d_model == 64
    assert cfg.n_layers == 2
    for mixer, ffn in model.blocks:
        assert type(mixer) is SlidingWindowAttention
        assert mixer.window == 8 and mixer.n_kv_heads < mixer.n_heads  # GQA
        assert type(ffn) is chimera.GatedMLP
    assert chimera.ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("prompt", [13, 3])  # longer and shorter than the window
def test_prompt_then_token_by_token_matches_forward(model_setup, prompt):
    state = check_prompt_then_decode(*model_setup, prompt, max_len=64)
    for layer in state.layers:
        assert layer["k"].shape == (B, 8, 2, 16)


def test_chunked_extend_matches_forward(model_setup):
    check_chunked_extend(*model_setup, sizes=(3, 13, 3), max_len=64)  # 13 > window, after a prefix


LENGTHS = np.array([T, 5, 13])


def test_ragged_batch_matches_alone(model_setup):
    """Each row gets its own logits and ring, also decoding on together."""
    check_ragged_batch_matches_alone(*model_setup, LENGTHS, max_len=64)


def test_padding_is_inert(model_setup):
    model, params, tokens, _ = model_setup
    check_padding_is_inert(model, params, tokens, LENGTHS, max_len=64)


def test_engine_generate_matches_greedy_reference(model_setup, greedy_reference):
    model, params, _, _ = model_setup
    outs = check_engine_greedy(model, params, greedy_reference, new_tokens=10, max_len=64)
    assert [o.finish_reason for o in outs] == ["length"] * 3


def test_state_size_does_not_depend_on_max_len(model_setup):
    # layers x (k, v) x window x kv heads x head_dim x float32
    check_bounded_state(model_setup[0], 2 * 2 * 8 * 2 * 16 * 4, bound=8)
