"""Model invariants from DESIGN.md: incremental `extend` == `forward`, a ragged batch gives
each row what it gives alone, padding is inert, the state is a batch-major pytree, and bad
inputs raise ValueError.

Shapes are shared across tests (batch 3, 12 tokens, max_len 16) so jit compiles rarely.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera

B, T, MAX_LEN = 3, 12, 16

# MQA, tied embeddings, 3 layers from a 2-entry pattern (the last repetition partial, and
# one layer without an ffn), a GeLU MLP and a different RoPE base: a second shape of model.
VARIANT = {
    "name": "mqa-tied",
    "vocab_size": 96,
    "d_model": 32,
    "n_layers": 3,
    "tie_embeddings": True,
    "layers": [{"mixer": "attn", "ffn": "mlp"}, {"mixer": "attn"}],
    "mixers": {"attn": {"kind": "attention", "n_heads": 4, "n_kv_heads": 1, "head_dim": 8, "rope_theta": 500.0}},
    "ffns": {"mlp": {"kind": "mlp", "d_ff": 64, "activation": "gelu"}},
}


@pytest.fixture(scope="module", params=["llama-tiny", "variant"])
def setup(request):
    if request.param == "llama-tiny":
        cfg = chimera.load_config("llama-tiny")
    else:
        cfg = chimera.ModelConfig.from_dict(VARIANT)
    model = chimera.build(cfg)
    return model, model.init(jax.random.key(1))


@pytest.fixture(scope="module")
def tokens(setup):
    model, _ = setup
    return random_tokens(model, (B, T), seed=0)


@pytest.fixture(scope="module")
def reference(setup, tokens):
    """`forward` logits [B, T, V]: the no-cache reference every cached path must reproduce."""
    model, params = setup
    return np.asarray(model.forward(params, tokens))


def random_tokens(model, shape, seed):
    return np.random.default_rng(seed).integers(0, model.config.vocab_size, shape).astype(np.int32)


def assert_close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-5, atol=1e-5)


def assert_rows_equal(state_a, row_a, state_b, row_b, exact=False):
    """Row `row_a` of every leaf of state_a equals row `row_b` of state_b."""
    for a, b in zip(jax.tree.leaves(state_a.layers), jax.tree.leaves(state_b.layers), strict=True):
        if exact:
            np.testing.assert_array_equal(np.asarray(a[row_a]), np.asarray(b[row_b]))
        else:
            assert_close(a[row_a], b[row_b])
    assert int(state_a.lengths[row_a]) == int(state_b.lengths[row_b])


# --- extend == forward ---

def test_forward_shape(setup, reference):
    model, _ = setup
    assert reference.shape == (B, T, model.config.vocab_size)
    assert reference.dtype == np.float32
    assert np.isfinite(reference).all()


def test_prompt_then_token_by_token_matches_forward(setup, tokens, reference):
    model, params = setup
    prompt = 5
    state = model.init_state(B, MAX_LEN)
    logits, state = model.extend(params, state, tokens[:, :prompt])
    assert logits.shape == (B, model.config.vocab_size)
    assert_close(logits, reference[:, prompt - 1])
    for t in range(prompt, T):
        logits, state = model.extend(params, state, tokens[:, t:t + 1])
        assert_close(logits, reference[:, t])
        np.testing.assert_array_equal(state.lengths, [t + 1] * B)


# Few distinct chunk sizes (each compiles): 12, 4, 1, 7.
@pytest.mark.parametrize("chunks", [[T], [4, 4, 4], [1, 4, 7], [4, 1, 7]])
def test_chunked_extend_matches_forward(setup, tokens, reference, chunks):
    """Chunks of T > 1 after a prefix must attend to the cache and within the chunk."""
    model, params = setup
    state = model.init_state(B, MAX_LEN)
    start = 0
    for size in chunks:
        logits, state = model.extend(params, state, tokens[:, start:start + size], all_logits=True)
        assert logits.shape == (B, size, model.config.vocab_size)
        assert_close(logits, reference[:, start:start + size])
        start += size
    np.testing.assert_array_equal(state.lengths, [T] * B)


# --- ragged batches and padding ---

LENGTHS = np.array([T, 5, 9])


def padded(tokens, lengths, seed):
    """tokens with every slot past lengths[b] overwritten by random in-vocabulary garbage."""
    garbage = np.random.default_rng(seed).integers(0, 64, tokens.shape)
    keep = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return np.where(keep, tokens, garbage).astype(np.int32)


def test_ragged_batch_matches_alone(setup, tokens, reference):
    model, params = setup
    logits, state = model.extend(params, model.init_state(B, MAX_LEN), padded(tokens, LENGTHS, 1), LENGTHS)
    np.testing.assert_array_equal(state.lengths, LENGTHS)
    # Each row's last logits are the forward logits at its last token: rows do not mix.
    assert_close(logits, reference[np.arange(B), LENGTHS - 1])

    alone_states = []
    for b, n in enumerate(LENGTHS):
        alone_logits, alone = model.extend(params, model.init_state(1, MAX_LEN), tokens[b:b + 1, :n])
        assert_close(logits[b], alone_logits[0])
        assert_rows_equal(state, b, alone, 0)
        alone_states.append(alone)

    # Decoding on together (rows at different positions) still matches each row alone.
    for step in range(3):
        nxt = random_tokens(model, (B, 1), seed=10 + step)
        logits, state = model.extend(params, state, nxt)
        for b in range(B):
            alone_logits, alone_states[b] = model.extend(params, alone_states[b], nxt[b:b + 1])
            assert_close(logits[b], alone_logits[0])


def test_ragged_all_logits_match_forward_on_valid_positions(setup, tokens, reference):
    model, params = setup
    logits, _ = model.extend(params, model.init_state(B, MAX_LEN), padded(tokens, LENGTHS, 2), LENGTHS,
                             all_logits=True)
    for b, n in enumerate(LENGTHS):
        assert_close(logits[b, :n], reference[b, :n])


def test_padding_is_inert(setup, tokens):
    """Two different garbage paddings give bit-identical states and logits, now and later."""
    model, params = setup
    runs = []
    for seed in (3, 4):
        state = model.init_state(B, MAX_LEN)
        logits, state = model.extend(params, state, padded(tokens, LENGTHS, seed), LENGTHS)
        later, _ = model.extend(params, state, tokens[:, :1])
        runs.append((logits, state, later))
    (logits_a, state_a, later_a), (logits_b, state_b, later_b) = runs
    assert not np.array_equal(padded(tokens, LENGTHS, 3), padded(tokens, LENGTHS, 4))  # the test means something
    np.testing.assert_array_equal(logits_a, logits_b)
    for b in range(B):
        assert_rows_equal(state_a, b, state_b, b, exact=True)
    np.testing.assert_array_equal(later_a, later_b)


def test_empty_row_leaves_state_unchanged(setup, tokens):
    model, params = setup
    _, before = model.extend(params, model.init_state(B, MAX_LEN), tokens[:, :4])
    lengths = np.array([3, 0, 2])
    logits, after = model.extend(params, before, padded(tokens[:, 4:7], lengths, 5), lengths)
    assert np.isnan(np.asarray(logits[1])).all()
    assert np.isfinite(np.asarray(logits)[[0, 2]]).all()
    assert_rows_equal(after, 1, before, 1, exact=True)
    np.testing.assert_array_equal(after.lengths, [7, 4, 6])


# --- the state ---

def test_lengths_count_tokens(setup, tokens):
    model, params = setup
    state = model.init_state(B, MAX_LEN)
    assert state.lengths.dtype == jnp.int32
    np.testing.assert_array_equal(state.lengths, [0, 0, 0])
    _, state = model.extend(params, state, tokens[:, :5], np.array([5, 1, 0]))
    np.testing.assert_array_equal(state.lengths, [5, 1, 0])
    _, state = model.extend(params, state, tokens[:, :1])
    np.testing.assert_array_equal(state.lengths, [6, 2, 1])


def test_every_state_leaf_is_batch_major(setup, tokens):
    model, params = setup
    state = model.init_state(B, MAX_LEN)
    assert state.batch_size == B and state.max_len == MAX_LEN
    assert len(state.layers) == model.config.n_layers
    _, extended = model.extend(params, state, tokens)
    for s in (state, extended):
        leaves = jax.tree.leaves(s)
        assert leaves
        assert all(leaf.shape[0] == B for leaf in leaves)


def test_select(setup, tokens):
    """A selected sub-batch decodes exactly as those rows do inside the full batch."""
    model, params = setup
    _, state = model.extend(params, model.init_state(B, MAX_LEN), padded(tokens, LENGTHS, 6), LENGTHS)
    rows = np.array([2, 0])
    sub = state.select(rows)
    assert sub.batch_size == 2 and sub.max_len == MAX_LEN
    for i, b in enumerate(rows):
        assert_rows_equal(sub, i, state, b, exact=True)

    nxt = random_tokens(model, (B, 1), seed=7)
    full_logits, _ = model.extend(params, state, nxt)
    sub_logits, sub_next = model.extend(params, sub, nxt[rows])
    assert_close(sub_logits, full_logits[rows])
    np.testing.assert_array_equal(sub_next.lengths, LENGTHS[rows] + 1)


# --- jit ---

def test_state_is_a_pytree_through_jit(setup, tokens):
    model, params = setup
    step = jax.jit(lambda p, s, t: model.extend_unchecked(p, s, t))
    state = model.init_state(B, MAX_LEN)
    jit_logits, jit_state = step(params, state, jnp.asarray(tokens[:, :4]))
    ref_logits, ref_state = model.extend(params, state, tokens[:, :4])
    assert isinstance(jit_state, chimera.DecodeState)
    assert jax.tree.structure(jit_state) == jax.tree.structure(state)
    assert jit_state.max_len == MAX_LEN
    assert_close(jit_logits, ref_logits)
    for b in range(B):
        assert_rows_equal(jit_state, b, ref_state, b)
    # The jitted state feeds straight back in.
    jit_logits, _ = step(params, jit_state, jnp.asarray(tokens[:, 4:8]))
    ref_logits, _ = model.extend(params, ref_state, tokens[:, 4:8])
    assert_close(jit_logits, ref_logits)


def test_extend_and_forward_under_user_jit(setup, tokens, reference):
    """Traced inputs skip the concrete checks but compute the same thing."""
    model, params = setup
    assert_close(jax.jit(model.forward)(params, tokens), reference)

    state = model.init_state(B, MAX_LEN)
    extend = jax.jit(lambda p, s, t, n: model.extend(p, s, t, n))
    logits, new_state = extend(params, state, padded(tokens, LENGTHS, 8), LENGTHS)
    assert_close(logits, reference[np.arange(B), LENGTHS - 1])
    np.testing.assert_array_equal(new_state.lengths, LENGTHS)


# --- bad inputs ---

def with_token(tokens, value):
    out = tokens.copy()
    out[1, 3] = value
    return out


BAD_EXTENDS = {
    "negative token": (lambda m, tok: (with_token(tok, -1), None), "vocabulary"),
    "token == vocab": (lambda m, tok: (with_token(tok, m.config.vocab_size), None), "vocabulary"),
    "negative length": (lambda m, tok: (tok, np.array([T, -1, 2])), r"lengths\[1\] = -1 is outside \[0, 12\]"),
    "length > T": (lambda m, tok: (tok, np.array([T, T + 1, 2])), r"lengths\[1\] = 13 is outside \[0, 12\]"),
    "lengths too long": (lambda m, tok: (tok, np.array([T] * (B + 1))), "lengths must have shape"),
    "lengths 2-D": (lambda m, tok: (tok, np.full((B, 1), T)), "lengths must have shape"),
    "tokens 1-D": (lambda m, tok: (tok[0], None), r"\[batch, time\]"),
    "tokens 3-D": (lambda m, tok: (tok[:, :, None], None), r"\[batch, time\]"),
    "float tokens": (lambda m, tok: (tok.astype(np.float32), None), "integers"),
    "batch mismatch": (lambda m, tok: (tok[:2], None), "batch"),
}


@pytest.mark.parametrize("case", BAD_EXTENDS, ids=list(BAD_EXTENDS))
def test_extend_rejects_bad_inputs(setup, tokens, case):
    model, params = setup
    make, message = BAD_EXTENDS[case]
    bad_tokens, lengths = make(model, tokens.copy())
    with pytest.raises(ValueError, match=message):
        model.extend(params, model.init_state(B, MAX_LEN), bad_tokens, lengths)


def test_extend_rejects_passing_max_len(setup, tokens):
    model, params = setup
    _, state = model.extend(params, model.init_state(B, MAX_LEN), tokens)  # 12 of 16 slots used
    with pytest.raises(ValueError, match="max_len"):
        model.extend(params, state, tokens[:, :5])
    # Only the row that would overflow matters; one that fits in a ragged call is fine.
    with pytest.raises(ValueError, match="sequence 2 .*max_len 16"):
        model.extend(params, state, tokens[:, :5], np.array([4, 0, 5]))
    _, ok = model.extend(params, state, tokens[:, :5], np.array([4, 0, 4]))
    np.testing.assert_array_equal(ok.lengths, [16, 12, 16])


@pytest.mark.parametrize("bad", ["negative token", "token == vocab", "tokens 1-D"])
def test_forward_rejects_bad_tokens(setup, tokens, bad):
    model, params = setup
    make, message = BAD_EXTENDS[bad]
    with pytest.raises(ValueError, match=message):
        model.forward(params, make(model, tokens.copy())[0])


@pytest.mark.parametrize("batch_size, max_len", [(0, MAX_LEN), (-1, MAX_LEN), (B, 0)])
def test_init_state_rejects_empty(setup, batch_size, max_len):
    model, _ = setup
    with pytest.raises(ValueError, match=">= 1"):
        model.init_state(batch_size, max_len)
