"""Shared pieces of the attention-mixer tests: a float64 numpy reference written from the
math (projections, rotate-half RoPE, GQA softmax attention under a mask, learned sinks and
soft-capping), the tolerance a float32 block meets against it, a driver that feeds a block
its tokens in chunks on a schedule, and the DESIGN.md invariants through a small model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera
from chimera.runtime import costs


def assert_close(actual, expected):
    # float32 against float64: the budget of a few float32 roundings through the projections.
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=1e-5, atol=1e-5)


def context(starts, lengths, width):
    """Rows start at absolute position starts[b] and append lengths[b] of `width` tokens."""
    steps = np.arange(width)
    return chimera.Context(positions=jnp.asarray(np.asarray(starts)[:, None] + steps, jnp.int32),
                           valid=jnp.asarray(steps[None, :] < np.asarray(lengths)[:, None]))


def assert_only_written_change(before, after, written, changed=np.any):
    """One cache leaf [B, S, ...] before and after a call: the slots outside written [B, S]
    keep their bits, and in every written slot `changed` (np.any or np.all) of its values differ."""
    before, after = np.asarray(before), np.asarray(after)
    for b, slots in enumerate(np.asarray(written)):
        np.testing.assert_array_equal(after[b, ~slots], before[b, ~slots])
        differ = after[b, slots] != before[b, slots]  # [written, ...]
        assert changed(differ, axis=tuple(range(1, differ.ndim))).all()


# --- params ---

def random_params(block, seed=1):
    """Random numpy params (no PRNG compiles), biases and sink logits non-zero."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(block.init, jax.random.key(0))
    return {name: jnp.asarray(rng.normal(size=s.shape) * (2 if name == "sinks" else s.shape[0] ** -0.5), jnp.float32)
            for name, s in shapes.items()}


def init_params(block, randomise="b", seed=1):
    """block.init's params, those whose names start with a letter of `randomise` drawn from
    N(0, 1): init leaves biases (and sink logits) at zero, which would hide their use."""
    params = block.init(jax.random.key(0))
    rng = np.random.default_rng(seed)
    return {name: jnp.asarray(rng.normal(size=p.shape), jnp.float32) if name[0] in randomise else p
            for name, p in params.items()}


# --- the float64 reference ---

def float64(params):
    return {name: np.asarray(value, np.float64) for name, value in params.items()}


def qkv(p, x):
    """x [T, D] -> q [T, H, Dh], k, v [T, Hkv, Dh] before RoPE; p holds float64 params."""
    x = np.asarray(x, np.float64)
    q = np.einsum("td,dhk->thk", x, p["wq"]) + p["bq"]
    k = np.einsum("td,dhk->thk", x, p["wk"]) + p["bk"]
    v = np.einsum("td,dhk->thk", x, p["wv"]) + p["bv"]
    return q, k, v


def rope(z, positions, theta):
    """Rotate-half RoPE of z [T, heads, Dh] at positions [T]: pair dimension i with i + Dh/2,
    rotated by position * theta^(-2i/Dh)."""
    half = z.shape[-1] // 2
    angles = np.asarray(positions, np.float64)[:, None] * theta ** (-np.arange(half) * 2 / z.shape[-1])
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]  # [T, 1, Dh/2]
    z1, z2 = z[..., :half], z[..., half:]
    return np.concatenate([z1 * cos - z2 * sin, z2 * cos + z1 * sin], axis=-1)


def attend(q, k, v, allowed=None, softcap=None, sinks=None):
    """Softmax attention in float64: q [..., T, H, Dh], k and v [..., S, Hkv, Dh], allowed
    [..., T, S] (None: every key) -> [..., T, H, Dh]. Query head h reads KV head h // (H / Hkv)
    (consecutive query heads share a KV head); a learned sink (one logit per head) is one
    more term in the denominator, with no value."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    group = q.shape[-2] // k.shape[-2]
    k, v = np.repeat(k, group, axis=-2), np.repeat(v, group, axis=-2)  # [..., S, H, Dh]
    scores = np.einsum("...thk,...shk->...hts", q, k) / np.sqrt(q.shape[-1])
    if softcap is not None:
        scores = softcap * np.tanh(scores / softcap)
    if allowed is not None:
        scores = np.where(np.expand_dims(allowed, -3), scores, -np.inf)  # [..., H, T, S]
    sink = np.full((q.shape[-2], 1, 1), -np.inf) if sinks is None else np.asarray(sinks, np.float64)[:, None, None]
    top = np.maximum(scores.max(-1, keepdims=True), sink)
    weights = np.exp(scores - top)
    weights /= weights.sum(-1, keepdims=True) + np.exp(sink - top)
    return np.einsum("...hts,...shk->...thk", weights, v)


def output(p, out):
    """The output projection of per-head outputs [T, H, Dh] -> [T, D]."""
    return np.einsum("thk,hkd->td", out, p["wo"]) + p["bo"]


def attention_reference(block, params, x, allowed):
    """One whole sequence x [T, D] at positions 0..T-1 through an `attention`-family block
    whose query at i sees key j where allowed[i, j] -> (y [T, D], rotated k, v [T, Hkv, Dh])."""
    p = float64(params)
    q, k, v = qkv(p, x)
    positions = np.arange(len(x))
    q, k = rope(q, positions, block.rope_theta), rope(k, positions, block.rope_theta)
    out = attend(q, k, v, allowed, block.softcap, p["sinks"] if block.learned_sinks else None)
    return output(p, out), k, v


# --- driving a block ---

@functools.cache
def step(block):
    """The block's __call__, compiled once per (hashable, frozen) block."""
    return jax.jit(block.__call__)


def run(block, params, full, schedule, *, max_len, width, seed=0):
    """Feed row b of `full` [B, N, D] to the block in calls of schedule[i][b] tokens, from an
    empty state of max_len; multi-token calls are padded to `width` (one compile for all),
    with random garbage. Returns (y [B, N, D] at the fed positions, NaN elsewhere; final
    state; tokens held [B])."""
    batch, _, d_model = full.shape
    rng = np.random.default_rng(seed)
    state = block.init_state(batch, max_len, jnp.float32)
    held = np.zeros(batch, int)
    ys = np.full(full.shape, np.nan)
    for lengths in map(np.asarray, schedule):
        call_width = 1 if lengths.max() <= 1 else width  # width 1 takes the decode path
        chunk = rng.normal(size=(batch, call_width, d_model)).astype(np.float32)
        for b, n in enumerate(lengths):
            chunk[b, :n] = full[b, held[b]:held[b] + n]
        y, state = step(block)(params, jnp.asarray(chunk), state, context(held, lengths, call_width))
        for b, n in enumerate(lengths):
            ys[b, held[b]:held[b] + n] = y[b, :n]
        held += lengths
    return ys, state, held


def random_state(block, batch, rng):
    """A random float32 state of the block's init_state shapes (a recurrent block's incoming
    state): one rng.normal draw per leaf, in key order."""
    shapes = jax.eval_shape(lambda: block.init_state(batch, 1, jnp.float32))
    return {name: jnp.asarray(rng.normal(size=shapes[name].shape), jnp.float32) for name in sorted(shapes)}


# --- the DESIGN.md invariants through a model ---

def tiny_config(name, kind, **fields):
    """A 2-layer model (vocab 64, d_model 32) whose mixer is `kind`: 4 query heads on 2 KV
    heads of 8 dims unless `fields` say otherwise."""
    attn = {"kind": kind, "n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "rope_theta": 500.0, **fields}
    return chimera.ModelConfig.from_dict({
        "name": name, "vocab_size": 64, "d_model": 32, "n_layers": 2,
        "layers": [{"mixer": "attn", "ffn": "mlp"}], "mixers": {"attn": attn},
        "ffns": {"mlp": {"kind": "mlp", "d_ff": 64}}})


def preset_with(name, **attn):
    """The preset `name` as a dict, with these fields of mixers.attn replaced."""
    cfg = chimera.load_config(name).to_dict()
    cfg["mixers"]["attn"] = {**cfg["mixers"]["attn"], **attn}
    return cfg


def check_bad_config(preset, field, value, message):
    """The preset with mixers.attn.<field> set to value (None: removed) is refused by an error
    that names the field."""
    cfg = preset_with(preset, **{field: value})
    if value is None:
        del cfg["mixers"]["attn"][field]
    with pytest.raises(chimera.ConfigError, match=message) as e:
        chimera.ModelConfig.from_dict(cfg)
    assert str(e.value).startswith(f"mixers.attn.{field}:"), str(e.value)


def forward_setup(cfg, batch, length):
    """(model, params, random tokens [batch, length], forward logits): what the checks below take."""
    model = chimera.build(cfg)
    params = model.init(jax.random.key(1))
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, length)).astype(np.int32)
    return model, params, tokens, np.asarray(model.forward(params, tokens))


def padded(tokens, lengths, vocab, seed):
    """tokens [B, T] with each row's positions from lengths[b] on replaced by random garbage."""
    garbage = np.random.default_rng(seed).integers(0, vocab, tokens.shape)
    return np.where(np.arange(tokens.shape[1])[None, :] < lengths[:, None], tokens, garbage).astype(np.int32)


def recurrent(state):
    """The per-layer states of a DecodeState (mixers' and stateful feed-forwards'), without lengths."""
    return state.layers, state.ffn_layers


def check_prompt_then_decode(model, params, tokens, want, prompt, max_len, assert_logits=assert_close):
    """A prompt of `prompt` tokens, then one token at a time, give forward's logits `want`
    (compared by assert_logits). Returns the final state."""
    logits, state = model.extend(params, model.init_state(len(tokens), max_len), tokens[:, :prompt], all_logits=True)
    assert_logits(logits, want[:, :prompt])
    for t in range(prompt, tokens.shape[1]):
        logits, state = model.extend(params, state, tokens[:, t:t + 1])
        assert_logits(logits, want[:, t])
    return state


def check_chunked_extend(model, params, tokens, want, sizes, max_len, assert_logits=assert_close):
    """Chunks of these sizes, one after another, give forward's logits `want` (compared by
    assert_logits)."""
    state, start = model.init_state(len(tokens), max_len), 0
    for size in sizes:
        logits, state = model.extend(params, state, tokens[:, start:start + size], all_logits=True)
        assert_logits(logits, want[:, start:start + size])
        start += size


def check_ragged_batch_matches_alone(model, params, tokens, want, lengths, max_len, assert_logits=assert_close):
    """A ragged prompt batch (padding of garbage) gives each row its own logits and state;
    decoding on together (rows at different positions) still matches each row alone. Logits
    are compared by assert_logits, states by assert_close."""
    batch, vocab = len(tokens), model.config.vocab_size
    logits, state = model.extend(params, model.init_state(batch, max_len), padded(tokens, lengths, vocab, seed=1),
                                 lengths, all_logits=True)
    nxt = np.random.default_rng(9).integers(0, vocab, (batch, 1)).astype(np.int32)
    together, _ = model.extend(params, state, nxt)
    for b, n in enumerate(lengths):
        assert_logits(logits[b, :n], want[b, :n])
        _, alone = model.extend(params, model.init_state(1, max_len), padded(tokens, lengths, vocab, seed=4)[b:b + 1],
                                lengths[b:b + 1])
        for ours, theirs in zip(jax.tree.leaves(recurrent(state)), jax.tree.leaves(recurrent(alone)), strict=True):
            assert_close(ours[b], theirs[0])
        alone_logits, _ = model.extend(params, alone, nxt[b:b + 1])
        assert_logits(together[b], alone_logits[0])


def check_padding_is_inert(model, params, tokens, lengths, max_len):
    """Two different garbage paddings give bit-identical logits (at valid positions) and states."""
    vocab = model.config.vocab_size
    (logits_a, state_a), (logits_b, state_b) = (
        model.extend(params, model.init_state(len(tokens), max_len), padded(tokens, lengths, vocab, seed), lengths,
                     all_logits=True)
        for seed in (2, 3))
    valid = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    np.testing.assert_array_equal(np.asarray(logits_a)[valid], np.asarray(logits_b)[valid])
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
        np.testing.assert_array_equal(a, b)


def check_engine_greedy(model, params, greedy_reference, new_tokens, max_len):
    """The Engine's greedy continuations of three random prompts (3, 12 and 17 tokens) are the
    cache-free greedy reference's. Returns the Engine's outputs."""
    vocab = model.config.vocab_size
    prompts = [list(map(int, np.random.default_rng(i).integers(0, vocab, n))) for i, n in enumerate([3, 12, 17])]
    outs = chimera.Engine(model, params, max_batch=4, max_len=max_len).generate(
        prompts, max_new_tokens=new_tokens, sampling=chimera.Sampling(temperature=0.0))
    assert [o.tokens for o in outs] == greedy_reference(model, params, prompts, new_tokens)
    return outs


def check_bounded_state(model, allocated_bytes, bound, max_lens=(1024, 65536)):
    """The model's state is the same at both max_lens (short, long) and takes allocated_bytes,
    all of which costs.state_bytes counts from a context of `bound` tokens on."""
    short, long = (jax.eval_shape(lambda n=n: model.init_state(1, n)) for n in max_lens)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), recurrent(short)) == jax.tree.map(lambda x: (x.shape, x.dtype),
                                                                                          recurrent(long))
    allocated = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(recurrent(long)))
    assert allocated == allocated_bytes
    assert costs.state_bytes(model, max_lens[1]) == costs.state_bytes(model, bound) == allocated
