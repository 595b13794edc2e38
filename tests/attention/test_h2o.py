"""The `h2o` mixer (Heavy-Hitter Oracle eviction) against a float64 numpy re-statement of its
rule, and through the model and the Engine: budget >= the sequence is plain attention, the
state does not grow with max_len, ragged rows match each row alone, padding is inert."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera
import chimera.attention.h2o  # noqa: F401  (registers the kind)
from chimera.attention.h2o import H2OAttention, select
from mixer_harness import (assert_close, check_prompt_then_decode, context, float64, init_params, padded, qkv, rope,
                           tiny_config)

D_MODEL, HEAD_DIM, N_HEADS, MAX_LEN = 32, 8, 4, 32

# (n_kv_heads, budget, recent, extra fields): eviction with a recent window, pure heavy
# hitters (recent 0) with soft-capping and sinks, and a pure recent window (a sliding window).
VARIANTS = {
    "gqa-6-2": (2, 6, 2, {}),
    "mqa-5-0-softcap-sinks": (1, 5, 0, {"softcap": 2.0, "learned_sinks": True}),
    "gqa-4-4": (2, 4, 4, {}),
}


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def setup(request):
    """(block, params, jitted call) with biases and sinks randomised: init leaves them at zero."""
    n_kv_heads, budget, recent, extra = VARIANTS[request.param]
    block = H2OAttention(d_model=D_MODEL, n_heads=N_HEADS, n_kv_heads=n_kv_heads, head_dim=HEAD_DIM,
                         rope_theta=500.0, qkv_bias=True, out_bias=True, budget=budget, recent=recent, **extra)
    return block, init_params(block, randomise="bs"), jax.jit(block.__call__)


# --- the float64 reference ---

class ReferenceH2O:
    """One sequence's H2O cache as plain lists, float64, written from the rule in the docstring
    of chimera/attention/h2o.py: attend over held + new, add each key's received attention
    summed over all heads and new queries, then keep the `recent` newest and the highest
    scores (older first among equal scores)."""

    def __init__(self, block, params):
        self.block = block
        self.p = float64(params)
        self.pos, self.k, self.v, self.score = [], [], [], []

    def extend(self, x, positions):
        """x [n, D], positions [n] -> y [n, D]."""
        block, p = self.block, self.p
        q, k, v = qkv(p, x)
        q, k = rope(q, positions, block.rope_theta), rope(k, positions, block.rope_theta)
        pos = np.array(self.pos + list(positions))  # [N]
        keys, values = np.array(self.k + list(k)), np.array(self.v + list(v))  # [N, Hkv, Dh]
        group = block.n_heads // block.n_kv_heads
        y = np.zeros((len(positions), block.d_model))
        received = np.zeros(len(pos))
        for t, query_pos in enumerate(positions):
            seen = pos <= query_pos
            out = np.zeros((block.n_heads, block.head_dim))
            for h in range(block.n_heads):
                logits = keys[seen, h // group] @ q[t, h] * block.scale
                if block.softcap is not None:
                    logits = block.softcap * np.tanh(logits / block.softcap)
                exp = np.exp(logits - logits.max())
                denominator = exp.sum()
                if block.learned_sinks:
                    denominator += np.exp(p["sinks"][h] - logits.max())
                probs = exp / denominator
                out[h] = probs @ values[seen, h // group]
                received[seen] += probs
            y[t] = np.einsum("hk,hkd->d", out, p["wo"]) + p["bo"]

        score = np.array(self.score + [0.0] * len(positions)) + received
        keep = np.arange(len(pos))
        if len(pos) > block.budget:
            recent = [i for i in keep if pos[i] > pos.max() - block.recent]
            others = sorted((i for i in keep if i not in recent), key=lambda i: (-score[i], pos[i]))
            keep = recent + others[:block.budget - len(recent)]
        self.pos, self.k, self.v = [pos[i] for i in keep], [keys[i] for i in keep], [values[i] for i in keep]
        self.score = [score[i] for i in keep]
        return y


# --- helpers ---

def held(state, b):
    """Row b of a block state: {position: slot} of the slots in use."""
    pos = np.asarray(state["pos"][b])
    return {int(pos[s]): s for s in np.flatnonzero(pos >= 0)}


def assert_state_matches(state, b, ref):
    slot_of = held(state, b)
    assert sorted(slot_of) == sorted(int(p) for p in ref.pos)
    for p, k, v, score in zip(ref.pos, ref.k, ref.v, ref.score):
        assert_close(state["k"][b, slot_of[p]], k)
        assert_close(state["v"][b, slot_of[p]], v)
        assert_close(state["score"][b, slot_of[p]], score)


def run_schedule(block, params, call, schedule, seed):
    """Feed B rows through the block in calls of (width, lengths) and through one reference per
    row; after every call compare outputs and held state, and check idle rows are untouched."""
    batch = len(schedule[0][1])
    rng = np.random.default_rng(seed)
    refs = [ReferenceH2O(block, params) for _ in range(batch)]
    state = block.init_state(batch, MAX_LEN, jnp.float32)
    starts = np.zeros(batch, int)
    evicted = False
    for width, lengths in schedule:
        x = rng.normal(size=(batch, width, D_MODEL)).astype(np.float32)  # padding columns too
        y, new_state = call(params, jnp.asarray(x), state, context(starts, lengths, width))
        for b, n in enumerate(lengths):
            if n == 0:  # a row that appends nothing keeps its state bit for bit
                for name in state:
                    np.testing.assert_array_equal(np.asarray(new_state[name][b]), np.asarray(state[name][b]))
                continue
            y_ref = refs[b].extend(x[b, :n], starts[b] + np.arange(n))
            assert_close(y[b, :n], y_ref)
            assert_state_matches(new_state, b, refs[b])
            evicted |= len(refs[b].pos) < starts[b] + n
        state, starts = new_state, starts + np.asarray(lengths)
    assert evicted  # the budget was reached, so the rule was exercised


# --- the rule, against the reference ---

def test_token_by_token_matches_reference(setup):
    block, params, call = setup
    run_schedule(block, params, call, [(1, [1, 1, 1])] * 14, seed=2)


def test_ragged_chunks_match_reference(setup):
    """Prefill chunks wider than the budget, chunks that evict their own older tokens, decode
    steps among padding, rows that append nothing, and a row whose first call is empty.
    One width for every call: one compile."""
    block, params, call = setup
    schedule = [(9, [9, 4, 0]), (9, [1, 1, 1]), (9, [3, 0, 2]), (9, [2, 7, 9]), (9, [1, 1, 0]), (9, [1, 1, 1])]
    run_schedule(block, params, call, schedule, seed=3)


def test_select_rule():
    """The recent window first, then scores, the older position among equal scores; empty never."""
    key_pos = jnp.array([[4, 0, 2, -1, 5, 1, 3, 6]])
    score = jnp.array([[0.1, 0.5, 0.5, 9.0, 0.0, 0.5, 0.2, 0.0]])
    np.testing.assert_array_equal(select(key_pos, score, 4, recent=2),  # keeps 5, 6 (recent), 0, 1
                                  [[False, True, False, False, True, True, False, True]])
    np.testing.assert_array_equal(select(key_pos, score, 4, recent=0),  # 0, 1, 2 (ties: older), then 3
                                  [[False, True, True, False, False, True, True, False]])
    np.testing.assert_array_equal(select(key_pos, score, 8, recent=1), [np.asarray(key_pos[0]) >= 0])


# --- through the model ---
# Models live in module fixtures and calls share shapes, so each compiles only a few times.

B, T, MAX_LEN_MODEL = 3, 12, 16
LENGTHS = np.array([T, 5, 9])


def config(kind="h2o", **fields):
    return tiny_config("h2o-test", kind, **fields)


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, 64, (B, T)).astype(np.int32)


@pytest.fixture(scope="module")
def params():
    """The `attention` model's params: the very tree every h2o model takes."""
    return chimera.build(config("attention")).init(jax.random.key(1))


@pytest.fixture(scope="module")
def plain_logits(params, tokens):
    return np.asarray(chimera.build(config("attention")).forward(params, tokens))


@pytest.fixture(scope="module")
def evicting():
    """A model whose budget (4: 1 recent + 3 heavy hitters) is well below the sequences."""
    return chimera.build(config(budget=4, recent=1))


def test_budget_covering_the_sequence_is_full_attention(params, plain_logits, tokens):
    """budget == T (holding exactly the budget is not over it): nothing is evicted, so
    forward, a prompt and token-by-token decode all give the plain `attention` logits."""
    model = chimera.build(config(budget=T, recent=2))
    assert jax.tree.structure(model.init(jax.random.key(1))) == jax.tree.structure(params)
    np.testing.assert_allclose(model.forward(params, tokens), plain_logits, rtol=1e-5, atol=1e-5)

    state = check_prompt_then_decode(model, params, tokens, plain_logits, prompt=5, max_len=MAX_LEN_MODEL)
    for layer in state.layers:
        np.testing.assert_array_equal(np.sort(np.asarray(layer["pos"]), axis=1), np.tile(np.arange(T), (B, 1)))


def test_eviction_changes_later_logits(evicting, params, plain_logits, tokens):
    """Below the sequence length the budget matters (so the test above could not pass by
    ignoring it): a one-call prefill is still full attention, the next step is not."""
    prompt = np.full(B, T - 1)
    logits, state = evicting.extend(params, evicting.init_state(B, MAX_LEN_MODEL), tokens, prompt)
    np.testing.assert_allclose(logits, plain_logits[:, T - 2], rtol=1e-5, atol=1e-5)
    for layer in state.layers:  # the prompt was over the budget: 4 held of 11
        np.testing.assert_array_equal((np.asarray(layer["pos"]) >= 0).sum(axis=1), [4] * B)
    logits, _ = evicting.extend(params, state, tokens[:, T - 1:])
    assert np.abs(np.asarray(logits) - plain_logits[:, T - 1]).max() > 1e-2


def test_ragged_batch_with_eviction_matches_alone(evicting, params, tokens):
    """Rows of different lengths, prefilled together and decoded on together, match each row
    run as a batch of one (padded to the same width), eviction choices included."""
    model = evicting
    logits, state = model.extend(params, model.init_state(B, MAX_LEN_MODEL), padded(tokens, LENGTHS, 64, 1), LENGTHS)
    alone = [model.extend(params, model.init_state(1, MAX_LEN_MODEL), padded(tokens[b:b + 1], LENGTHS[b:b + 1], 64, 2),
                          LENGTHS[b:b + 1]) for b in range(B)]
    for step in range(4):
        for b in range(B):
            np.testing.assert_allclose(logits[b], alone[b][0][0], rtol=1e-5, atol=1e-5)
            for layer, alone_layer in zip(state.layers, alone[b][1].layers):
                np.testing.assert_array_equal(layer["pos"][b], alone_layer["pos"][0])
                for name in ("k", "v", "score"):
                    np.testing.assert_allclose(layer[name][b], alone_layer[name][0], rtol=1e-5, atol=1e-5)
        nxt = tokens[:, step:step + 1]
        logits, state = model.extend(params, state, nxt)
        alone = [model.extend(params, alone[b][1], nxt[b:b + 1]) for b in range(B)]


def test_engine_generates_with_eviction(evicting, params):
    """The Engine's batched prefill + on-device decode loop == greedy decoding with extend."""
    prompts = [[1, 2, 3, 4, 5], [9], [60, 61, 62]]
    engine = chimera.Engine(evicting, params, max_batch=4, max_len=MAX_LEN_MODEL)
    outs = engine.generate(prompts, max_new_tokens=8)

    buf, lengths = np.zeros((B, T), np.int32), np.array([len(p) for p in prompts])
    for b, prompt in enumerate(prompts):
        buf[b, :len(prompt)] = prompt
    logits, state = evicting.extend(params, evicting.init_state(B, MAX_LEN_MODEL), buf, lengths)
    expected = []
    for _ in range(8):
        expected.append(np.argmax(np.asarray(logits), axis=-1))
        logits, state = evicting.extend(params, state, expected[-1][:, None].astype(np.int32))
    assert [o.tokens for o in outs] == np.stack(expected, axis=1).tolist()
    assert all(o.finish_reason == "length" for o in outs)


def test_state_does_not_grow_with_max_len(evicting):
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), evicting.init_state(1, 1024).layers)
    huge = jax.eval_shape(lambda: evicting.init_state(1, 65536))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), huge.layers) == shapes
    assert shapes[0]["k"] == ((1, 4, 2, 8), jnp.float32) and shapes[0]["pos"] == ((1, 4), jnp.int32)
    assert shapes[0]["score"] == ((1, 4), jnp.float32)
    # Capacity below the budget: a sequence can never hold more, so fewer slots suffice.
    assert evicting.init_state(2, 3).layers[0]["k"].shape == (2, 3, 2, 8)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_state_bytes(dtype):
    block = config(budget=6, recent=2).layer_blocks()[0][0]
    real = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(block.init_state(1, 64, dtype)))
    assert block.state_bytes(6, dtype) == block.state_bytes(1000, dtype) == real
    assert block.state_bytes(3, dtype) == real // 2  # below the budget: the slots in use
    assert block.flops_per_token(1000) == block.flops_per_token(6) > block.flops_per_token(3)


# --- config ---

def test_preset_loads():
    cfg = chimera.load_config("h2o-tiny")
    block = cfg.layer_blocks()[0][0]
    assert isinstance(block, H2OAttention) and (block.budget, block.recent) == (64, 16)


@pytest.mark.parametrize("fields, field", [
    (dict(budget=0, recent=0), "mixers.attn.budget"),
    (dict(budget=-4, recent=0), "mixers.attn.budget"),
    (dict(budget="8", recent=2), "mixers.attn.budget"),
    (dict(recent=2), "mixers.attn.budget"),  # required
    (dict(budget=8, recent=-1), "mixers.attn.recent"),
    (dict(budget=8, recent=9), "mixers.attn.recent"),
    (dict(budget=8), "mixers.attn.recent"),  # required
    (dict(budget=8, recent=2, n_kv_heads=3), "mixers.attn.n_kv_heads"),  # Attention's own checks still run
])
def test_bad_config_names_the_field(fields, field):
    with pytest.raises(chimera.ConfigError) as error:
        config(**fields)
    assert error.value.field == field
