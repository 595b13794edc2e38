"""The `block_sparse` mixer: its mask against a scalar re-statement of the rule, its outputs
against float64 numpy masked attention (prefill, chunks over a cache, token by token), and
the DESIGN.md invariants through a model built from a config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera
import chimera.attention.sparse  # noqa: F401  (registers the kind)
from chimera.attention.sparse import BlockSparseAttention
from mixer_harness import (assert_close, attention_reference, check_prompt_then_decode, context, init_params, padded,
                           tiny_config)

D_MODEL, HEAD_DIM, N_HEADS, SLOTS = 32, 8, 4, 32

# Blocks of 4 (this block and the one before), 2 global tokens, and dilated segments of 8
# (every 3rd token) and 16 (every 5th): at 24 tokens most earlier keys are hidden.
PATTERN = dict(block_size=4, local_blocks=1, global_tokens=2, segment_lengths=(8, 16), dilations=(3, 5))


def sees(p, j, block_size, local_blocks, global_tokens, segment_lengths, dilations):
    """The rule for one (query position p, key position j), in plain Python."""
    if j > p:
        return False
    if p // block_size - j // block_size <= local_blocks or j < global_tokens:
        return True
    return any(p // w == j // w and (p - j) % r == 0 for w, r in zip(segment_lengths, dilations))


def make_block(n_kv_heads, **pattern):
    return BlockSparseAttention(d_model=D_MODEL, n_heads=N_HEADS, n_kv_heads=n_kv_heads, head_dim=HEAD_DIM,
                                rope_theta=500.0, qkv_bias=True, out_bias=True, **pattern)


# --- the mask ---

def test_mask_example():
    """Query 13 with blocks of 4 (1 back), 1 global token, every 3rd token of its 16-segment."""
    block = make_block(2, block_size=4, local_blocks=1, global_tokens=1, segment_lengths=(16,), dilations=(3,))
    mask = np.asarray(block.mask(jnp.array([[13]]), jnp.arange(20)))[0, 0]
    # global 0; dilated 1, 4, 7 (10 and 13 too); blocks 2 and 3 = 8..13; nothing after 13.
    assert np.flatnonzero(mask).tolist() == [0, 1, 4, 7, 8, 9, 10, 11, 12, 13]


@pytest.mark.parametrize("pattern", [
    PATTERN,
    dict(block_size=3, local_blocks=0, global_tokens=0, segment_lengths=(), dilations=()),
    dict(block_size=5, local_blocks=2, global_tokens=7, segment_lengths=(6, 12, 40), dilations=(2, 4, 7)),
], ids=["default", "blocks-only", "three-segments"])
def test_mask_matches_the_rule(pattern):
    """Every (query, key) pair up to 40, and query batches at different offsets (as in decode)."""
    block = make_block(2, **pattern)
    n = 40
    expected = np.array([[sees(p, j, **pattern) for j in range(n)] for p in range(n)])
    np.testing.assert_array_equal(block.mask(jnp.arange(n)[None], jnp.arange(n))[0], expected)
    queries = np.array([[3, 4, 5], [30, 31, 32], [39, 0, 17]])
    np.testing.assert_array_equal(block.mask(jnp.asarray(queries), jnp.arange(n)), expected[queries])


# --- the mixer against float64 numpy ---

@pytest.fixture(scope="module")
def setup():
    """(block, params, jitted call), GQA 4/2, with biases randomised: init leaves them at zero."""
    block = make_block(2, **PATTERN)
    return block, init_params(block), jax.jit(block.__call__)


def reference(block, params, x):
    """One sequence from position 0. x [T, D] -> (y [T, D] float64, masked by `sees`; the mask)."""
    n = len(x)
    allowed = np.array([[sees(i, j, **PATTERN) for j in range(n)] for i in range(n)])
    return attention_reference(block, params, x, allowed)[0], allowed


FULL = 24


@pytest.fixture(scope="module")
def sequences():
    return np.random.default_rng(2).normal(size=(3, FULL, D_MODEL)).astype(np.float32)


def test_prefill_then_chunks_match_reference(setup, sequences):
    """A ragged prefill, then ragged chunks from different positions over a cache whose slots
    past each row's length hold garbage (as after a rollback); one width, one compile."""
    block, params, call = setup
    refs = [reference(block, params, sequences[b]) for b in range(3)]
    assert not refs[0][1][np.tril_indices(FULL)].all()  # the mask hides keys: the test means something
    rng = np.random.default_rng(3)
    state = {name: jnp.asarray(rng.normal(size=(3, SLOTS, block.n_kv_heads, HEAD_DIM)), jnp.float32)
             for name in ("k", "v")}
    tail = rng.normal(size=(3, 10, D_MODEL)).astype(np.float32)  # what padding past the end reads
    extended = np.concatenate([sequences, tail], axis=1)  # [B, FULL + 10, D]
    starts = np.zeros(3, int)
    for lengths in ([10, 3, 0], [6, 10, 7], [8, 1, 10], [0, 10, 7]):
        x = np.stack([extended[b, starts[b]:starts[b] + 10] for b in range(3)])  # [B, 10, D]
        y, state = call(params, jnp.asarray(x), state, context(starts, lengths, 10))
        for b, n in enumerate(lengths):
            assert_close(y[b, :n], refs[b][0][starts[b]:starts[b] + n])
        starts = starts + lengths
    assert starts.tolist() == [FULL, FULL, FULL]


def test_token_by_token_matches_reference(setup, sequences):
    block, params, call = setup
    y_ref = np.stack([reference(block, params, sequences[b])[0] for b in range(3)])
    state = block.init_state(3, SLOTS, jnp.float32)
    for t in range(FULL):
        y, state = call(params, jnp.asarray(sequences[:, t:t + 1]), state, context([t] * 3, [1] * 3, 1))
        assert_close(y[:, 0], y_ref[:, t])


def test_flops_count_the_visible_keys():
    block = make_block(2, **PATTERN)
    projections = block.flops_per_token(1) - 4 * N_HEADS * HEAD_DIM  # a lone token sees itself
    for context_len in (1, 9, 24, 100):
        seen = sum(sees(context_len - 1, j, **PATTERN) for j in range(context_len))
        assert block.flops_per_token(context_len) == projections + 4 * N_HEADS * HEAD_DIM * seen
    assert block.flops_per_token(100) < chimera.Attention(d_model=D_MODEL, n_heads=N_HEADS, n_kv_heads=2,
                                                          head_dim=HEAD_DIM).flops_per_token(100)


# --- through the model ---

B, T, MAX_LEN = 3, 12, 16
LENGTHS = np.array([T, 5, 9])
MODEL_PATTERN = dict(block_size=2, local_blocks=1, global_tokens=1, segment_lengths=[8], dilations=[3])


def config(kind="block_sparse", **pattern):
    return tiny_config("sparse-test", kind, **pattern)


@pytest.fixture(scope="module")
def model_setup():
    model = chimera.build(config(**MODEL_PATTERN))
    return model, model.init(jax.random.key(1))


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, 64, (B, T)).astype(np.int32)


@pytest.fixture(scope="module")
def forward_logits(model_setup, tokens):
    model, params = model_setup
    return np.asarray(model.forward(params, tokens))


def test_forward_is_not_full_attention(model_setup, forward_logits, tokens):
    """The pattern changes the logits once it hides keys (so the tests below could not pass
    with a plain causal mask) and not before: positions 0-4 see every earlier key, 5 misses 1."""
    _, params = model_setup
    plain = np.asarray(chimera.build(config("attention")).forward(params, tokens))
    np.testing.assert_allclose(forward_logits[:, :5], plain[:, :5], rtol=1e-5, atol=1e-5)
    assert np.abs(forward_logits[:, 5] - plain[:, 5]).max() > 1e-3


def test_prompt_then_token_by_token_matches_forward(model_setup, forward_logits, tokens):
    model, params = model_setup
    check_prompt_then_decode(model, params, tokens, forward_logits, prompt=5, max_len=MAX_LEN)


def test_ragged_batch_matches_alone(model_setup, forward_logits, tokens):
    model, params = model_setup
    prompts = padded(tokens, LENGTHS, 64, seed=1)
    logits, state = model.extend(params, model.init_state(B, MAX_LEN), prompts, LENGTHS)
    np.testing.assert_allclose(logits, forward_logits[np.arange(B), LENGTHS - 1], rtol=1e-5, atol=1e-5)
    alone = [model.extend(params, model.init_state(1, MAX_LEN), prompts[b:b + 1], LENGTHS[b:b + 1])
             for b in range(B)]
    for step in range(3):
        for b in range(B):
            np.testing.assert_allclose(logits[b], alone[b][0][0], rtol=1e-5, atol=1e-5)
            for layer, alone_layer in zip(state.layers, alone[b][1].layers):
                n = LENGTHS[b] + step  # the slots this row has written
                np.testing.assert_allclose(layer["k"][b, :n], alone_layer["k"][0, :n], rtol=1e-5, atol=1e-5)
        nxt = tokens[:, step:step + 1]
        logits, state = model.extend(params, state, nxt)
        alone = [model.extend(params, alone[b][1], nxt[b:b + 1]) for b in range(B)]


def test_engine_matches_greedy_forward(model_setup, greedy_reference):
    model, params = model_setup
    prompts = [[1, 2, 3, 4, 5], [9], [60, 61, 62]]
    outs = chimera.Engine(model, params, max_batch=4, max_len=32).generate(prompts, max_new_tokens=7)
    assert [o.tokens for o in outs] == greedy_reference(model, params, prompts, 7)


# --- config ---

def test_preset_loads():
    block = chimera.load_config("sparse-tiny").layer_blocks()[0][0]
    assert isinstance(block, BlockSparseAttention)
    assert block.segment_lengths == (64, 256) and block.dilations == (4, 16)


@pytest.mark.parametrize("fields, field", [
    (dict(block_size=0), "mixers.attn.block_size"),
    (dict(), "mixers.attn.block_size"),  # required
    (dict(block_size=4, local_blocks=-1), "mixers.attn.local_blocks"),
    (dict(block_size=4, global_tokens=-2), "mixers.attn.global_tokens"),
    (dict(block_size=4, segment_lengths=[8, 16], dilations=[2]), "mixers.attn.dilations"),
    (dict(block_size=4, segment_lengths=[8, 0], dilations=[2, 2]), "mixers.attn.segment_lengths[1]"),
    (dict(block_size=4, segment_lengths=[8], dilations=[-3]), "mixers.attn.dilations[0]"),
    (dict(block_size=4, segment_lengths=8, dilations=[2]), "mixers.attn.segment_lengths"),  # not a list
    (dict(block_size=4, segment_lengths=[8.5], dilations=[2]), "mixers.attn.segment_lengths[0]"),
])
def test_bad_config_names_the_field(fields, field):
    with pytest.raises(chimera.ConfigError) as error:
        config(**fields)
    assert error.value.field == field
