"""The `mla` mixer (DeepSeek Multi-head Latent Attention): naive and absorbed paths against
each other and against a float64 numpy reference written from the math; the compressed
latent cache; yarn RoPE against transformers; and the DESIGN.md model invariants."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera
from chimera.attention.mla import MLA
from chimera.attention.rope import RopeScaling, inverse_frequencies, rope_attention_factor
from mixer_harness import assert_close, assert_only_written_change, context, padded

D_MODEL, SLOTS = 32, 24

BLOCKS = {  # v_head_dim != qk_nope_head_dim, so a swapped W_UK / W_UV cannot pass
    "direct": dict(n_heads=4, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=6, v_head_dim=10,
                   rope_theta=500.0),
    "lora_interleaved": dict(n_heads=3, q_lora_rank=12, kv_lora_rank=20, qk_nope_head_dim=6, qk_rope_head_dim=8,
                             v_head_dim=4, rope_theta=500.0, rope_interleave=True),
}
PATHS = ["naive", "absorbed"]


def random_params(init, seed):
    """Random float32 params in the tree `init` builds (numpy draws: quicker than compiling
    init). Norms ~ U(0.5, 1.5), as ones would hide a skipped or swapped norm; embeddings
    ~ N(0, 1); matrices ~ N(0, 1 / fan_in), so activations stay O(1)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "norm" in name:
            return rng.uniform(0.5, 1.5, leaf.shape)
        if "embed" in name:
            return rng.normal(size=leaf.shape)
        fan_in = np.prod(leaf.shape[:-1]) if name.endswith("['wo']") else leaf.shape[0]  # wo: [H, dv, D]
        return rng.normal(size=leaf.shape) * fan_in ** -0.5

    shapes = jax.eval_shape(init, jax.random.key(0))
    return jax.tree_util.tree_map_with_path(lambda path, leaf: jnp.asarray(draw(path, leaf), jnp.float32), shapes)


@pytest.fixture(scope="module", params=list(BLOCKS))
def setup(request):
    block = MLA(d_model=D_MODEL, **BLOCKS[request.param])
    return block, random_params(block.init, seed=1)


def on_path(block, path):
    return dataclasses.replace(block, path=path)


@functools.partial(jax.jit, static_argnums=0)
def call(block, params, x, state, ctx):
    """The block's __call__, compiled (a frozen dataclass is a static, hashable argument)."""
    return block(params, x, state, ctx)


def reference(block, params, x, positions):
    """One sequence, float64. x [T, D], positions [T] -> (y [T, D], latent [T, R], rotated rope
    key [T, dr] in rotate-half layout, as the cache stores it)."""
    p = {name: np.asarray(value, np.float64) for name, value in params.items()}
    x = np.asarray(x, np.float64)

    def rms_norm(z, weight):
        return z / np.sqrt(np.mean(z * z, -1, keepdims=True) + block.norm_eps) * weight

    if block.q_lora_rank is None:
        q = np.einsum("td,dhk->thk", x, p["wq"])
    else:
        q = np.einsum("tr,rhk->thk", rms_norm(x @ p["wq_a"], p["q_norm"]), p["wq_b"])
    dn, dr = block.qk_nope_head_dim, block.qk_rope_head_dim
    q_nope, q_rope = q[..., :dn], q[..., dn:]
    latent = rms_norm(x @ p["wkv_a"], p["kv_norm"])  # the compressed c_kv
    k_rope = x @ p["wk_rope"]  # one rope key shared by all heads

    # RoPE rotates pair i = (first[i], second[i]) by position * theta^(-2i/dr): adjacent
    # dimensions when interleaved, else dimension i with i + dr/2.
    i = np.arange(dr // 2)
    first, second = (2 * i, 2 * i + 1) if block.rope_interleave else (i, i + dr // 2)
    angles = np.asarray(positions, np.float64)[:, None] * block.rope_theta ** (-2 * i / dr)  # [T, dr/2]

    def rope(z, cos, sin):
        out = z.copy()
        out[..., first] = z[..., first] * cos - z[..., second] * sin
        out[..., second] = z[..., second] * cos + z[..., first] * sin
        return out

    q_rope = rope(q_rope, np.cos(angles)[:, None], np.sin(angles)[:, None])
    k_rope = rope(k_rope, np.cos(angles), np.sin(angles))

    # Head h: key [latent @ W_UK[h] | k_rope], value latent @ W_UV[h].
    k_nope = np.einsum("sr,rhk->shk", latent, p["wk_b"])
    v = np.einsum("sr,rhv->shv", latent, p["wv_b"])
    scores = (np.einsum("thk,shk->hts", q_nope, k_nope) + np.einsum("the,se->hts", q_rope, k_rope)) / np.sqrt(dn + dr)
    scores = np.where(positions[None, :, None] >= positions[None, None, :], scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    y = np.einsum("thv,hvd->td", np.einsum("hts,shv->thv", weights, v), p["wo"])
    return y, latent, k_rope[:, np.concatenate([first, second])]


def random_x(batch, width, seed):
    return np.random.default_rng(seed).normal(size=(batch, width, D_MODEL)).astype(np.float32)


def garbage_state(block, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda leaf: jnp.asarray(rng.normal(size=leaf.shape), jnp.float32),
                        block.init_state(3, SLOTS, jnp.float32))


# --- the block ---

def test_state_is_the_compressed_latent(setup):
    """Per token the cache holds kv_lora_rank + qk_rope_head_dim elements, nothing per head."""
    block, _ = setup
    state = block.init_state(3, SLOTS, jnp.bfloat16)
    assert state["latent"].shape == (3, SLOTS, block.kv_lora_rank)
    assert state["k_rope"].shape == (3, SLOTS, block.qk_rope_head_dim)
    assert {leaf.dtype for leaf in jax.tree.leaves(state)} == {jnp.dtype(jnp.bfloat16)}
    per_token = block.kv_lora_rank + block.qk_rope_head_dim
    for context_len in (1, 7, 128):
        for dtype in (jnp.float32, jnp.bfloat16):
            state = block.init_state(1, context_len, dtype)
            real = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
            assert block.state_bytes(context_len, dtype) == real == context_len * per_token * jnp.dtype(dtype).itemsize


def test_absorbed_path_equals_naive(setup):
    """A ragged chunk over a cache of garbage (stale slots included): same output, same state."""
    block, params = setup
    state = garbage_state(block, seed=2)
    x, ctx = jnp.asarray(random_x(3, 5, seed=3)), context([4, 0, 11], [5, 2, 3], 5)
    y_naive, state_naive = call(on_path(block, "naive"), params, x, state, ctx)
    y_absorbed, state_absorbed = call(on_path(block, "absorbed"), params, x, state, ctx)
    valid = np.asarray(ctx.valid)
    np.testing.assert_allclose(np.asarray(y_absorbed)[valid], np.asarray(y_naive)[valid], rtol=1e-5, atol=1e-5)
    for name in ("latent", "k_rope"):
        np.testing.assert_array_equal(np.asarray(state_absorbed[name]), np.asarray(state_naive[name]))


@pytest.mark.parametrize("path", PATHS)
def test_prefill_matches_reference(setup, path):
    """A ragged prefill from an empty cache: outputs and cached latents at valid positions."""
    block, params = setup
    lengths = np.array([9, 4, 1])
    x = random_x(3, 9, seed=4)
    y, state = call(on_path(block, path), params, jnp.asarray(x), block.init_state(3, SLOTS, jnp.float32),
                    context([0, 0, 0], lengths, 9))
    assert y.shape == x.shape
    for b, n in enumerate(lengths):
        y_ref, latent_ref, k_rope_ref = reference(block, params, x[b, :n], np.arange(n))
        assert_close(y[b, :n], y_ref)
        assert_close(state["latent"][b, :n], latent_ref)
        assert_close(state["k_rope"][b, :n], k_rope_ref)
        for leaf in state.values():  # padding never reaches the cache: still the initial zeros
            assert not np.asarray(leaf[b, n:]).any()


@pytest.mark.parametrize("path", PATHS)
def test_extend_from_nonzero_start_matches_reference(setup, path):
    """Rows holding different numbers of tokens append a chunk; stale slots past each row's
    length (as after a rollback) hold garbage that no query may see."""
    block, params = setup
    starts, lengths = np.array([5, 0, 11]), np.array([4, 6, 2])
    full = random_x(3, 17, seed=5)  # each row's whole sequence: prefix then chunk
    state = block.init_state(3, SLOTS, jnp.float32)
    _, state = call(block, params, jnp.asarray(full[:, :starts.max()]), state,
                    context([0, 0, 0], starts, starts.max()))
    stale = np.arange(SLOTS)[None, :, None] >= starts[:, None, None]  # [B, S, 1]
    garbage = garbage_state(block, seed=6)
    state = {name: jnp.where(stale, garbage[name], cache) for name, cache in state.items()}

    width = lengths.max()
    chunk = np.stack([full[b, starts[b]:starts[b] + width] for b in range(3)])
    y, state = call(on_path(block, path), params, jnp.asarray(chunk), state, context(starts, lengths, width))
    for b in range(3):
        end = starts[b] + lengths[b]
        y_ref, latent_ref, k_rope_ref = reference(block, params, full[b, :end], np.arange(end))
        assert_close(y[b, :lengths[b]], y_ref[starts[b]:])
        assert_close(state["latent"][b, :end], latent_ref)
        assert_close(state["k_rope"][b, :end], k_rope_ref)


@pytest.mark.parametrize("path", PATHS)
def test_padding_leaves_cache_bit_identical(setup, path):
    """Only the valid tokens' slots change; an all-padding call changes nothing."""
    block, params = setup
    state = garbage_state(block, seed=7)
    starts, lengths = np.array([2, 7, 0]), np.array([3, 0, 5])
    x = jnp.asarray(random_x(3, 6, seed=8))
    mla = on_path(block, path)
    _, new_state = call(mla, params, x, state, context(starts, lengths, 6))
    slot = np.arange(SLOTS)
    written = (slot >= starts[:, None]) & (slot < (starts + lengths)[:, None])  # [B, S]
    for name in ("latent", "k_rope"):
        assert_only_written_change(state[name], new_state[name], written, changed=np.all)
    _, same = call(mla, params, x, state, context(starts, [0, 0, 0], 6))
    for name in ("latent", "k_rope"):
        np.testing.assert_array_equal(np.asarray(same[name]), np.asarray(state[name]))


def test_auto_path_is_a_static_choice_on_shapes():
    block = MLA(d_model=64, n_heads=4, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16)
    assert block.absorbs(1, 4096) and block.absorbs(4, 4096)  # decode steps, verification blocks
    assert not block.absorbs(4096, 4096) and not block.absorbs(64, 64)  # a prefill that fills the cache
    assert on_path(block, "naive").absorbs(1, 4096) is False
    assert on_path(block, "absorbed").absorbs(4096, 4096) is True


# --- yarn RoPE, as transformers computes it for DeepSeek ---

YARN = {  # (rope head dim, theta, yarn fields)
    "deepseek-v3": (64, 10000.0, dict(factor=40.0, original_max_position_embeddings=4096, beta_fast=32.0,
                                      beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0)),
    "mscale-ratio": (8, 500.0, dict(factor=4.0, original_max_position_embeddings=32, beta_fast=8.0, beta_slow=1.0,
                                    mscale=0.9, mscale_all_dim=0.6)),
    "no-truncate": (32, 10000.0, dict(factor=8.0, original_max_position_embeddings=256, truncate=False)),
}


def hf_yarn(head_dim, theta, scaling):
    """transformers' (inverse frequencies, cos/sin factor, DeepSeek softmax-scale multiplier),
    from the `rope_parameters` that `scaling.parameters()` writes."""
    from transformers import DeepseekV3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import yarn_apply_mscale
    rope_parameters = {"rope_type": "yarn", "rope_theta": theta, **scaling.parameters()}
    config = DeepseekV3Config(hidden_size=64, num_attention_heads=4, qk_rope_head_dim=head_dim,
                              max_position_embeddings=int(scaling.factor * scaling.original_max_position_embeddings),
                              rope_parameters=rope_parameters)
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](config)
    return inv_freq.double().numpy(), attention_factor, yarn_apply_mscale(config.rope_parameters, 1.0)


@pytest.mark.parametrize("head_dim, theta, fields", YARN.values(), ids=YARN.keys())
def test_yarn_matches_transformers(head_dim, theta, fields):
    scaling = RopeScaling(type="yarn", **fields)
    want_freq, want_factor, want_mscale = hf_yarn(head_dim, theta, scaling)
    got = inverse_frequencies(head_dim, theta, scaling)
    assert got.dtype == np.float32 and got.shape == (head_dim // 2,)
    np.testing.assert_allclose(got, want_freq, rtol=1e-6)
    assert rope_attention_factor(scaling) == pytest.approx(want_factor, rel=1e-12)
    block = MLA(d_model=64, n_heads=4, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=head_dim,
                v_head_dim=8, rope_theta=theta, rope_scaling=scaling)
    assert block.softmax_scale == pytest.approx((8 + head_dim) ** -0.5 * want_mscale, rel=1e-12)


def test_yarn_cases_cover_all_three_bands():
    """Guards the comparison above: frequencies kept, blended and divided by the factor all occur."""
    kept = divided = blended = False
    for head_dim, theta, fields in YARN.values():
        ratio = inverse_frequencies(head_dim, theta, None) / inverse_frequencies(
            head_dim, theta, RopeScaling(type="yarn", **fields))
        is_kept, is_divided = np.isclose(ratio, 1.0, rtol=1e-6), np.isclose(ratio, fields["factor"], rtol=1e-6)
        kept, divided = kept | is_kept.any(), divided | is_divided.any()
        blended |= (~is_kept & ~is_divided).any()
    assert kept and divided and blended
    assert rope_attention_factor(RopeScaling(type="yarn", **YARN["mscale-ratio"][2])) != 1.0


# --- through a model: DESIGN.md invariants ---

B, T, MAX_LEN = 3, 12, 16
CONFIG = {
    "name": "mla-test",
    "vocab_size": 96,
    "d_model": 32,
    "n_layers": 2,
    "layers": [{"mixer": "attn", "ffn": "mlp"}],
    "mixers": {"attn": {"kind": "mla", "n_heads": 4, "q_lora_rank": 16, "kv_lora_rank": 32, "qk_nope_head_dim": 8,
                        "qk_rope_head_dim": 8, "v_head_dim": 8, "rope_theta": 500.0, "rope_interleave": True,
                        "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8,
                                         "mscale": 1.0, "mscale_all_dim": 0.5}}},
    "ffns": {"mlp": {"kind": "mlp", "d_ff": 64}},
}


@pytest.fixture(scope="module")
def model_setup():
    model = chimera.build(chimera.ModelConfig.from_dict(CONFIG))
    params = random_params(model.init, seed=1)
    tokens = np.random.default_rng(0).integers(0, CONFIG["vocab_size"], (B, T)).astype(np.int32)
    return model, params, tokens, np.asarray(model.forward(params, tokens))


def test_forward_and_decode_take_different_paths(model_setup):
    """Guards the invariants below: forward runs the naive path, decode steps the absorbed one."""
    block = model_setup[0].config.mixer_blocks["attn"]
    assert not block.absorbs(T, T) and block.absorbs(1, MAX_LEN)


def test_prompt_then_token_by_token_matches_forward(model_setup):
    model, params, tokens, want = model_setup
    prompt = 5
    logits, state = model.extend(params, model.init_state(B, MAX_LEN), tokens[:, :prompt])
    assert_close(logits, want[:, prompt - 1])
    for t in range(prompt, T):
        logits, state = model.extend(params, state, tokens[:, t:t + 1])
        assert_close(logits, want[:, t])
    np.testing.assert_array_equal(state.lengths, [T] * B)


def test_ragged_batch_matches_each_row_alone(model_setup):
    model, params, tokens, want = model_setup
    lengths = np.array([T, 5, 9])
    prompts = padded(tokens, lengths, CONFIG["vocab_size"], seed=2)
    logits, state = model.extend(params, model.init_state(B, MAX_LEN), prompts, lengths)
    assert_close(logits, want[np.arange(B), lengths - 1])
    nxt = np.random.default_rng(3).integers(0, CONFIG["vocab_size"], (B, 1)).astype(np.int32)
    logits, state = model.extend(params, state, nxt)  # rows now at different positions
    for b, n in enumerate(lengths):  # alone: the row's own tokens, same width (one compile)
        _, alone = model.extend(params, model.init_state(1, MAX_LEN), tokens[b:b + 1], [n])
        alone_logits, alone = model.extend(params, alone, nxt[b:b + 1])
        assert_close(logits[b], alone_logits[0])
        for together, by_itself in zip(jax.tree.leaves(state.layers), jax.tree.leaves(alone.layers), strict=True):
            assert_close(together[b], by_itself[0])


def test_engine_generate_matches_cache_free_greedy(model_setup, greedy_reference):
    model, params, _, _ = model_setup
    prompts = [[5, 17, 3], [9], list(range(20, 31))]
    engine = chimera.Engine(model, params, max_batch=4, max_len=32)
    outs = engine.generate(prompts, max_new_tokens=6, sampling=chimera.Sampling(temperature=0.0))
    assert [out.tokens for out in outs] == greedy_reference(model, params, prompts, 6)
    assert all(out.finish_reason == "length" for out in outs)


def test_preset_builds():
    cfg = chimera.load_config("mla-tiny")
    block = cfg.mixer_blocks["attn"]
    assert isinstance(block, MLA) and block.q_lora_rank is not None
    assert chimera.ModelConfig.from_dict(cfg.to_dict()) == cfg
    model = chimera.build(cfg)
    params = jax.eval_shape(model.init, jax.random.key(0))
    logits = jax.eval_shape(model.forward, params, jnp.zeros((1, 3), jnp.int32))
    assert logits.shape == (1, 3, 256) and logits.dtype == jnp.float32


BAD = [  # (field, value) in mixers.attn; None removes the field
    ("qk_rope_head_dim", 7),
    ("q_lora_rank", 0),
    ("kv_lora_rank", None),
    ("v_head_dim", -4),
    ("path", "fast"),
    ("rope_interleave", "yes"),
    ("n_kv_heads", 2),
    ("norm_eps", 0.0),
]


@pytest.mark.parametrize("field, value", BAD, ids=[f for f, _ in BAD])
def test_bad_config_names_the_field(field, value):
    data = {**CONFIG, "mixers": {"attn": {**CONFIG["mixers"]["attn"], field: value}}}
    if value is None:
        del data["mixers"]["attn"][field]
    with pytest.raises(chimera.ConfigError) as err:
        chimera.ModelConfig.from_dict(data)
    assert err.value.field == f"mixers.attn.{field}"


def test_bad_yarn_config_names_the_field():
    attn = {**CONFIG["mixers"]["attn"]}
    attn["rope_scaling"] = {**attn["rope_scaling"], "beta_fast": 1.0, "beta_slow": 2.0}
    with pytest.raises(chimera.ConfigError) as err:
        chimera.ModelConfig.from_dict({**CONFIG, "mixers": {"attn": attn}})
    assert err.value.field == "mixers.attn.rope_scaling.beta_fast"
