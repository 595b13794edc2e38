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
from chimera.runtime import costs

D_MODEL, HEAD_DIM, N_HEADS, WINDOW, MAX_LEN = 32, 8, 4, 4, 32

BLOCKS = {
    "gqa": dict(n_kv_heads=2),
    # GPT-OSS-style learned sinks (and a soft-cap) on the window: the sinks join every softmax.
    "mqa-learned-sinks": dict(n_kv_heads=1, learned_sinks=True, softcap=4.0),
}


def random_params(block, seed=1):
    """Random numpy params (no PRNG compiles), biases and sink logits non-zero."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(block.init, jax.random.key(0))
    return {name: jnp.asarray(rng.normal(size=s.shape) * (2 if name == "sinks" else s.shape[0] ** -0.5), jnp.float32)
            for name, s in shapes.items()}


@pytest.fixture(scope="module", params=list(BLOCKS))
def setup(request):
    block = SlidingWindowAttention(d_model=D_MODEL, n_heads=N_HEADS, head_dim=HEAD_DIM, window=WINDOW,
                                   rope_theta=500.0, qkv_bias=True, out_bias=True, **BLOCKS[request.param])
    return block, random_params(block)


def reference(block, params, x):
    """One whole sequence x [T, D] at positions 0..T-1 -> (y [T, D], rotated k, v [T, Hkv, Dh]), float64."""
    p = {name: np.asarray(value, np.float64) for name, value in params.items()}
    x = np.asarray(x, np.float64)
    q = np.einsum("td,dhk->thk", x, p["wq"]) + p["bq"]
    k = np.einsum("td,dhk->thk", x, p["wk"]) + p["bk"]
    v = np.einsum("td,dhk->thk", x, p["wv"]) + p["bv"]

    # Rotate-half RoPE: pair dimension i with i + Dh/2, rotated by position * theta^(-2i/Dh).
    half = block.head_dim // 2
    positions = np.arange(len(x))
    angles = positions[:, None] * block.rope_theta ** (-np.arange(half) * 2 / block.head_dim)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]  # [T, 1, Dh/2]

    def rope(z):
        z1, z2 = z[..., :half], z[..., half:]
        return np.concatenate([z1 * cos - z2 * sin, z2 * cos + z1 * sin], axis=-1)

    q, k = rope(q), rope(k)
    group = block.n_heads // block.n_kv_heads  # query head h reads KV head h // group
    scores = np.einsum("qhk,shk->hqs", q, np.repeat(k, group, axis=1)) / np.sqrt(block.head_dim)
    if block.softcap is not None:
        scores = block.softcap * np.tanh(scores / block.softcap)
    query, key = positions[:, None], positions[None, :]
    scores = np.where((key <= query) & (key > query - block.window), scores, -np.inf)  # [H, T, S]
    # A learned sink is one more logit per head in the denominator, with no value.
    sink = p["sinks"][:, None, None] if block.learned_sinks else np.full((block.n_heads, 1, 1), -np.inf)
    top = np.maximum(scores.max(-1, keepdims=True), sink)
    weights = np.exp(scores - top)
    weights /= weights.sum(-1, keepdims=True) + np.exp(sink - top)
    out = np.einsum("hqs,shk->qhk", weights, np.repeat(v, group, axis=1))
    return np.einsum("qhk,hkd->qd", out, p["wo"]) + p["bo"], k, v


def assert_close(actual, expected):
    # float32 against float64: the budget of a few float32 roundings through two projections.
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=1e-5, atol=1e-5)


def context(starts, lengths, width):
    """Rows start at absolute position starts[b] and append lengths[b] of `width` tokens."""
    steps = np.arange(width)
    return chimera.Context(positions=jnp.asarray(np.asarray(starts)[:, None] + steps, jnp.int32),
                           valid=jnp.asarray(steps[None, :] < np.asarray(lengths)[:, None]))


@functools.cache
def step(block):
    return jax.jit(block.__call__)


WIDE = 11  # every multi-token call is padded to this width: one compile for all of them


def run(block, params, full, schedule, seed=0):
    """Feed row b of `full` [B, N, D] to the block in calls of schedule[i][b] tokens, from an
    empty state; each call's padding is random garbage. Returns (y [B, N, D] at the fed
    positions, NaN elsewhere; final state; tokens held [B])."""
    batch = full.shape[0]
    rng = np.random.default_rng(seed)
    state = block.init_state(batch, MAX_LEN, jnp.float32)
    held = np.zeros(batch, int)
    ys = np.full(full.shape, np.nan)
    for lengths in map(np.asarray, schedule):
        width = 1 if lengths.max() <= 1 else WIDE  # width 1 takes the decode path
        chunk = rng.normal(size=(batch, width, D_MODEL)).astype(np.float32)
        for b, n in enumerate(lengths):
            chunk[b, :n] = full[b, held[b]:held[b] + n]
        y, state = step(block)(params, jnp.asarray(chunk), state, context(held, lengths, width))
        for b, n in enumerate(lengths):
            ys[b, held[b]:held[b] + n] = y[b, :n]
        held += lengths
    return ys, state, held


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
    for name in ("k", "v"):
        before, after = np.asarray(state[name]), np.asarray(new_state[name])
        for b in range(3):
            written = np.zeros(WINDOW, bool)
            written[np.arange(starts[b], starts[b] + lengths[b]) % WINDOW] = True
            np.testing.assert_array_equal(after[b, ~written], before[b, ~written])
            assert (after[b, written] != before[b, written]).any(axis=(1, 2)).all()

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

def config_with(**attn):
    cfg = chimera.load_config("mistral-tiny").to_dict()
    cfg["mixers"]["attn"] = {**cfg["mixers"]["attn"], **attn}
    return cfg


@pytest.mark.parametrize("field, value, message", [
    ("window", 0, "must be positive"),
    ("window", -8, "must be positive"),
    ("window", 2.5, "expected an integer"),
    ("window", None, "is required"),
    ("n_kv_heads", 3, "does not divide n_heads"),  # the `attention` checks still apply
    ("softcap", -1.0, "must be positive"),
])
def test_bad_config_names_the_field(field, value, message):
    cfg = config_with(**{field: value})
    if value is None:
        del cfg["mixers"]["attn"][field]
    with pytest.raises(chimera.ConfigError, match=message) as e:
        chimera.ModelConfig.from_dict(cfg)
    assert str(e.value).startswith(f"mixers.attn.{field}:"), str(e.value)


# --- the DESIGN.md invariants through a model ---

B, T = 3, 20  # sequences of 20 tokens through a window of 8


@pytest.fixture(scope="module")
def model_setup():
    cfg = chimera.load_config("mistral-tiny")
    model = chimera.build(cfg)
    params = model.init(jax.random.key(1))
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    return model, params, tokens, np.asarray(model.forward(params, tokens))


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
    model, params, tokens, reference = model_setup
    state = model.init_state(B, 64)
    logits, state = model.extend(params, state, tokens[:, :prompt], all_logits=True)
    assert_close(logits, reference[:, :prompt])
    for t in range(prompt, T):
        logits, state = model.extend(params, state, tokens[:, t:t + 1])
        assert_close(logits, reference[:, t])
    for layer in state.layers:
        assert layer["k"].shape == (B, 8, 2, 16)


def test_chunked_extend_matches_forward(model_setup):
    model, params, tokens, reference = model_setup
    state, start = model.init_state(B, 64), 0
    for size in (3, 13, 3):  # 13 > window, after a prefix
        logits, state = model.extend(params, state, tokens[:, start:start + size], all_logits=True)
        assert_close(logits, reference[:, start:start + size])
        start += size


LENGTHS = np.array([T, 5, 13])


def padded(tokens, seed):
    garbage = np.random.default_rng(seed).integers(0, 256, tokens.shape)
    return np.where(np.arange(T)[None, :] < LENGTHS[:, None], tokens, garbage).astype(np.int32)


def test_ragged_batch_matches_alone(model_setup):
    """A ragged prompt batch gives each row its own logits and ring; decoding on together
    (rows at different positions) still matches each row alone."""
    model, params, tokens, reference = model_setup
    logits, state = model.extend(params, model.init_state(B, 64), padded(tokens, 1), LENGTHS, all_logits=True)
    nxt = np.random.default_rng(9).integers(0, 256, (B, 1)).astype(np.int32)
    together, _ = model.extend(params, state, nxt)
    for b, n in enumerate(LENGTHS):
        assert_close(logits[b, :n], reference[b, :n])
        _, alone = model.extend(params, model.init_state(1, 64), padded(tokens, 4)[b:b + 1], LENGTHS[b:b + 1])
        for ours, theirs in zip(jax.tree.leaves(state.layers), jax.tree.leaves(alone.layers), strict=True):
            assert_close(ours[b], theirs[0])
        alone_logits, _ = model.extend(params, alone, nxt[b:b + 1])
        assert_close(together[b], alone_logits[0])


def test_padding_is_inert(model_setup):
    """Two different garbage paddings give bit-identical logits (at valid positions) and states."""
    model, params, tokens, _ = model_setup
    (logits_a, state_a), (logits_b, state_b) = (
        model.extend(params, model.init_state(B, 64), padded(tokens, seed), LENGTHS, all_logits=True)
        for seed in (2, 3))
    valid = np.arange(T)[None, :] < LENGTHS[:, None]
    np.testing.assert_array_equal(np.asarray(logits_a)[valid], np.asarray(logits_b)[valid])
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
        np.testing.assert_array_equal(a, b)


def test_engine_generate_matches_greedy_reference(model_setup, greedy_reference):
    model, params, _, _ = model_setup
    prompts = [list(map(int, np.random.default_rng(i).integers(0, 256, n))) for i, n in enumerate([3, 12, 17])]
    outs = chimera.Engine(model, params, max_batch=4, max_len=64).generate(
        prompts, max_new_tokens=10, sampling=chimera.Sampling(temperature=0.0))
    assert [o.tokens for o in outs] == greedy_reference(model, params, prompts, 10)
    assert [o.finish_reason for o in outs] == ["length"] * 3


def test_state_size_does_not_depend_on_max_len(model_setup):
    model, _, _, _ = model_setup
    short, long = (jax.eval_shape(lambda n=n: model.init_state(1, n)) for n in (1024, 65536))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), short.layers) == jax.tree.map(lambda x: (x.shape, x.dtype),
                                                                                      long.layers)
    allocated = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(long.layers))
    assert allocated == 2 * 2 * 8 * 2 * 16 * 4  # layers x (k, v) x window x kv heads x head_dim x float32
    assert costs.state_bytes(model, 65536) == costs.state_bytes(model, 8) == allocated
