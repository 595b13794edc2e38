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
from chimera.runtime import costs

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


def random_params(block, seed=1):
    """Random numpy params (no PRNG compiles), biases and sink logits non-zero."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(block.init, jax.random.key(0))
    return {name: jnp.asarray(rng.normal(size=s.shape) * (2 if name == "sinks" else s.shape[0] ** -0.5), jnp.float32)
            for name, s in shapes.items()}


@pytest.fixture(scope="module", params=list(BLOCKS))
def setup(request):
    block = make_block(**BLOCKS[request.param])
    return block, random_params(block)


def rope(z, positions, block):
    """Rotate-half RoPE of z [N, heads, Dh] at positions [N]: pair dimension i with i + Dh/2,
    rotated by position * theta^(-2i/Dh)."""
    half = block.head_dim // 2
    angles = np.asarray(positions, np.float64)[:, None] * block.rope_theta ** (-np.arange(half) * 2 / block.head_dim)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]  # [N, 1, Dh/2]
    z1, z2 = z[..., :half], z[..., half:]
    return np.concatenate([z1 * cos - z2 * sin, z2 * cos + z1 * sin], axis=-1)


def reference(block, params, x):
    """One whole sequence x [T, D] at positions 0..T-1 -> (y [T, D], k before RoPE, k rotated at
    its position, v [T, Hkv, Dh]), float64. One query at a time, straight from the rule."""
    p = {name: np.asarray(value, np.float64) for name, value in params.items()}
    x = np.asarray(x, np.float64)
    q = np.einsum("td,dhk->thk", x, p["wq"]) + p["bq"]
    k = np.einsum("td,dhk->thk", x, p["wk"]) + p["bk"]
    v = np.einsum("td,dhk->thk", x, p["wv"]) + p["bv"]
    group = block.n_heads // block.n_kv_heads  # query head h reads KV head h // group
    out = np.zeros_like(q)
    for t in range(len(x)):
        seen = [j for j in range(t + 1) if j < block.n_sinks or j > t - block.window]  # K(t), in order
        if block.rope_positions == "original":
            q_at, k_at = [t], seen
        else:  # StreamingLLM: positions within the cache
            q_at, k_at = [len(seen) - 1], range(len(seen))
        q_t = rope(q[t:t + 1], q_at, block)[0]  # [H, Dh]
        k_t = np.repeat(rope(k[seen], k_at, block), group, axis=1)  # [S, H, Dh]
        scores = np.einsum("hk,shk->hs", q_t, k_t) / np.sqrt(block.head_dim)
        if block.softcap is not None:
            scores = block.softcap * np.tanh(scores / block.softcap)
        # A learned sink is one more logit per head in the denominator, with no value.
        sink = p["sinks"][:, None] if block.learned_sinks else np.full((block.n_heads, 1), -np.inf)
        top = np.maximum(scores.max(-1, keepdims=True), sink)
        weights = np.exp(scores - top)
        weights /= weights.sum(-1, keepdims=True) + np.exp(sink - top)
        out[t] = np.einsum("hs,shk->hk", weights, np.repeat(v[seen], group, axis=1))
    y = np.einsum("qhk,hkd->qd", out, p["wo"]) + p["bo"]
    return y, k, rope(k, np.arange(len(x)), block), v


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

def config_with(**attn):
    cfg = chimera.load_config("sinks-tiny").to_dict()
    cfg["mixers"]["attn"] = {**cfg["mixers"]["attn"], **attn}
    return cfg


@pytest.mark.parametrize("field, value, message", [
    ("window", 0, "must be positive"),
    ("window", None, "is required"),
    ("n_sinks", -1, "must be >= 0"),
    ("n_sinks", 2.0, "expected an integer"),
    ("rope_positions", "relative", "must be one of"),
    ("head_dim", 7, "must be even"),  # the `attention` checks still apply
])
def test_bad_config_names_the_field(field, value, message):
    cfg = config_with(**{field: value})
    if value is None:
        del cfg["mixers"]["attn"][field]
    with pytest.raises(chimera.ConfigError, match=message) as e:
        chimera.ModelConfig.from_dict(cfg)
    assert str(e.value).startswith(f"mixers.attn.{field}:"), str(e.value)


def test_defaults():
    """StreamingLLM's defaults: 4 sinks, RoPE by cache index."""
    block = SinkAttention(d_model=D_MODEL, n_heads=N_HEADS, window=WINDOW)
    assert block.n_sinks == 4 and block.rope_positions == "cache"


# --- the DESIGN.md invariants through a model ---

B, T = 3, 20  # sequences of 20 tokens through 4 sinks + a window of 8


@functools.cache
def model_setup(scheme):
    """(model, params, tokens [B, T], forward logits) for the preset ("cache") or its "original" twin."""
    cfg = chimera.ModelConfig.from_dict(config_with(rope_positions=scheme))
    model = chimera.build(cfg)
    params = model.init(jax.random.key(1))
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    return model, params, tokens, np.asarray(model.forward(params, tokens))


def test_preset():
    cfg = chimera.load_config("sinks-tiny")
    for mixer, _ in chimera.build(cfg).blocks:
        assert type(mixer) is SinkAttention
        assert (mixer.n_sinks, mixer.window, mixer.rope_positions) == (4, 8, "cache")
    assert chimera.ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("scheme", ["cache", "original"])
def test_prompt_then_token_by_token_matches_forward(scheme):
    """Also under "cache": every query is rotated by its own cache, however the tokens arrive."""
    model, params, tokens, reference = model_setup(scheme)
    state = model.init_state(B, 64)
    logits, state = model.extend(params, state, tokens[:, :13], all_logits=True)  # 13 > 4 + 8
    assert_close(logits, reference[:, :13])
    for t in range(13, T):
        logits, state = model.extend(params, state, tokens[:, t:t + 1])
        assert_close(logits, reference[:, t])


@pytest.mark.parametrize("scheme", ["cache", "original"])
def test_chunked_extend_matches_forward(scheme):
    model, params, tokens, reference = model_setup(scheme)
    state, start = model.init_state(B, 64), 0
    for size in (3, 13, 3):
        logits, state = model.extend(params, state, tokens[:, start:start + size], all_logits=True)
        assert_close(logits, reference[:, start:start + size])
        start += size


LENGTHS = np.array([T, 5, 13])


def padded(tokens, seed):
    garbage = np.random.default_rng(seed).integers(0, 256, tokens.shape)
    return np.where(np.arange(T)[None, :] < LENGTHS[:, None], tokens, garbage).astype(np.int32)


def test_ragged_batch_matches_alone():
    """A ragged prompt batch gives each row its own logits and state (padding never written);
    decoding on together (rows at different positions) still matches each row alone."""
    model, params, tokens, reference = model_setup("cache")
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


def test_engine_generate_matches_greedy_reference(greedy_reference):
    model, params, _, _ = model_setup("cache")
    prompts = [list(map(int, np.random.default_rng(i).integers(0, 256, n))) for i, n in enumerate([3, 12, 17])]
    outs = chimera.Engine(model, params, max_batch=4, max_len=64).generate(
        prompts, max_new_tokens=10, sampling=chimera.Sampling(temperature=0.0))
    assert [o.tokens for o in outs] == greedy_reference(model, params, prompts, 10)


def test_state_size_does_not_depend_on_max_len():
    model = chimera.build(chimera.load_config("sinks-tiny"))
    short, long = (jax.eval_shape(lambda n=n: model.init_state(1, n)) for n in (1024, 65536))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), short.layers) == jax.tree.map(lambda x: (x.shape, x.dtype),
                                                                                      long.layers)
    allocated = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(long.layers))
    assert allocated == 2 * 2 * (4 + 8) * 2 * 16 * 4  # layers x (k, v) x (sinks + window) x kv heads x head_dim x f32
    assert costs.state_bytes(model, 65536) == costs.state_bytes(model, 12) == allocated
