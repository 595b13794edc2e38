"""The flash-decoding kernel (attention/decode_kernel.py), run in Pallas interpret mode on the
CPU, against its jnp reference and a float64 numpy softmax; and its wiring into `attention`."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera
from chimera.attention.decode_kernel import decode_attention, decode_attention_reference
from chimera.runtime.protocol import MIXERS
from mixer_harness import preset_with
from sharding_cases import greedy_tokens, random_params

SLOTS, HEAD_DIM = 200, 16  # 200: a multiple of no splits * block_k below, so the last block crosses S
# 1 slot, block boundaries (16, 32, 64), a non-multiple, the full cache, an empty row.
LENGTHS = np.array([1, 32, 37, 64, 200, 0], np.int32)
LAYOUTS = {"gqa": (8, 2), "mqa": (4, 1), "mha": (4, 4)}  # (n_heads, n_kv_heads)


def random_inputs(n_heads, n_kv_heads, seed=0):
    """q [B, H, Dh], k and v [B, S, Hkv, Dh], float32 numpy."""
    rng = np.random.default_rng(seed)
    batch = len(LENGTHS)
    q = rng.normal(size=(batch, n_heads, HEAD_DIM)).astype(np.float32)
    k, v = rng.normal(size=(2, batch, SLOTS, n_kv_heads, HEAD_DIM)).astype(np.float32)
    return q, k, v


def numpy_attention(q, k, v, lengths, scale):
    """float64 softmax attention of each row's query heads over the row's first lengths[b]
    slots of their KV head; zeros for an empty row."""
    groups = q.shape[1] // k.shape[2]
    out = np.zeros(q.shape)
    for b, n in enumerate(lengths):
        for h in range(q.shape[1] if n else 0):
            keys, values = k[b, :n, h // groups].astype(np.float64), v[b, :n, h // groups].astype(np.float64)
            logits = scale * keys @ q[b, h].astype(np.float64)  # [n]
            p = np.exp(logits - logits.max())
            out[b, h] = p @ values / p.sum()
    return out


@pytest.mark.parametrize("layout, block_k, splits", [
    ("gqa", 32, 3),  # 3 splits of a row's slots; the last block of the full row crosses S
    ("gqa", 16, 1),  # one program per (row, KV head) walks every block
    ("gqa", 64, None),  # default splits
    ("mqa", 32, 4),
    ("mha", 16, 2),
])
def test_kernel_matches_reference_and_float64(layout, block_k, splits):
    q, k, v = random_inputs(*LAYOUTS[layout])
    scale = HEAD_DIM ** -0.5
    args = (jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(LENGTHS))
    out = decode_attention(*args, scale=scale, block_k=block_k, splits=splits, interpret=True)
    ref = decode_attention_reference(*args, scale=scale)
    assert out.shape == q.shape and out.dtype == jnp.float32
    want = numpy_attention(q, k, v, LENGTHS, scale)
    # float32 against float64: a few roundings of O(1) values; the online softmax adds a rescale or two.
    np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ref, np.float64), want, rtol=1e-5, atol=1e-5)
    assert not np.asarray(out[LENGTHS == 0]).any()  # an empty row: zeros, not NaN


def test_kernel_ignores_slots_past_the_length():
    """Garbage (even NaN) past each row's length changes nothing: those slots are never used."""
    q, k, v = random_inputs(8, 2, seed=1)
    past = np.arange(SLOTS)[None, :] >= LENGTHS[:, None]  # [B, S]
    k_bad, v_bad = k.copy(), v.copy()
    k_bad[past], v_bad[past] = np.nan, np.nan
    run = lambda k, v: decode_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(LENGTHS),
                                        scale=0.25, block_k=32, splits=3, interpret=True)
    np.testing.assert_array_equal(run(k_bad, v_bad), run(k, v))


def test_kernel_bfloat16_matches_reference():
    q, k, v = (jnp.asarray(a, jnp.bfloat16) for a in random_inputs(8, 2, seed=2))
    lengths = jnp.asarray(LENGTHS)
    out = decode_attention(q, k, v, lengths, scale=0.25, block_k=32, splits=2, interpret=True)
    ref = decode_attention_reference(q, k, v, lengths, scale=0.25)
    assert out.dtype == jnp.bfloat16
    # Both round probabilities to bfloat16 before the value sum (~3 significant digits), the
    # kernel unnormalised and per block, the reference normalised: a few bfloat16 ulps apart.
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), rtol=2e-2, atol=2e-2)


def test_kernel_rejects_unsupported_shapes():
    q, k, v = (jnp.asarray(a) for a in random_inputs(4, 2))
    lengths = jnp.asarray(LENGTHS)
    with pytest.raises(ValueError, match="head_dim"):
        decode_attention(q[..., :8], k[..., :8], v[..., :8], lengths, scale=1.0, interpret=True)
    with pytest.raises(ValueError, match="block_k"):
        decode_attention(q, k, v, lengths, scale=1.0, block_k=24, interpret=True)
    with pytest.raises(ValueError, match="lengths"):
        decode_attention(q, k, v, lengths[:2], scale=1.0, interpret=True)


# --- the wiring into `attention` ---

def test_decode_kernel_gives_the_xla_logits():
    """llama-tiny (float32) decoding one token at a time, with decode_kernel "pallas" and "xla",
    from one state of ragged rows whose caches hold random values, garbage past each row's
    length included: a padding row in a step, a row that fills its cache to the last slot."""
    models = {kind: chimera.build(chimera.ModelConfig.from_dict(preset_with("llama-tiny", decode_kernel=kind)))
              for kind in ("pallas", "xla")}
    rng = np.random.default_rng(0)
    # Random numpy params and caches: no PRNG or prefill compiles (interpret mode is slow enough).
    random = lambda shape, scale=1.0: jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)
    shapes = jax.eval_shape(models["xla"].init, jax.random.key(0))
    params = jax.tree.map(lambda s: random(s.shape, s.shape[0] ** -0.5) if len(s.shape) > 1 else jnp.ones(s.shape),
                          shapes)  # norm weights [D] at 1, as init leaves them
    max_len = 40  # not a multiple of block_k: the full row's one block crosses the cache's end
    empty = models["xla"].init_state(3, max_len)
    start = dataclasses.replace(empty, lengths=jnp.asarray([12, 5, 36], jnp.int32),
                                layers=jax.tree.map(lambda x: random(x.shape), empty.layers))
    steps = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], np.int32)  # row 2 ends holding max_len tokens
    tokens = rng.integers(0, 256, (len(steps), 3, 1)).astype(np.int32)

    logits, states = {}, {}
    for kind, model in models.items():
        state, logits[kind] = start, []
        for step_tokens, appended in zip(tokens, steps):
            step_logits, state = model.extend(params, state, step_tokens, lengths=appended)
            logits[kind].append(step_logits)
        states[kind] = state
    for a, b in zip(logits["pallas"], logits["xla"]):
        # float32, both at full precision: only the online softmax's summation order differs.
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # NaN (no new token) where both are
    for a, b in zip(jax.tree.leaves(states["pallas"]), jax.tree.leaves(states["xla"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    # The kernel runs in a decode step, not in a prefill.
    trace = lambda width: str(jax.make_jaxpr(models["pallas"].extend_unchecked)(
        params, start, jnp.zeros((3, width), jnp.int32)))
    assert "pallas_call" in trace(1) and "pallas_call" not in trace(2)


def block(kind="attention", **fields):
    """A mixer of the attention family, 4 query heads on 2 KV heads of 16 dims unless `fields` say otherwise."""
    defaults = {"sliding_window": {"window": 8}, "sink_attention": {"window": 8}, "h2o": {"budget": 8, "recent": 2},
                "block_sparse": {"block_size": 4}}
    spec = {"d_model": 64, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16, **defaults.get(kind, {}), **fields}
    return MIXERS[kind](**spec)


def test_auto_uses_the_kernel_only_where_it_computes_the_same(monkeypatch):
    assert not block().use_decode_kernel(1)  # on the CPU, "auto" keeps the XLA path
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert block().use_decode_kernel(1)
    assert not block().use_decode_kernel(2)  # prefill, chunked extend, verification blocks
    assert not block(decode_kernel="xla").use_decode_kernel(1)
    for kind in ("sliding_window", "sink_attention", "h2o", "block_sparse"):  # their own mask or attention
        assert not block(kind).use_decode_kernel(1), kind
    assert not block(softcap=30.0).use_decode_kernel(1)
    assert not block(learned_sinks=True).use_decode_kernel(1)
    assert not block(head_dim=8).use_decode_kernel(1)
    # Under a mesh, shard_map runs the kernel per device where a device holds whole KV-head groups.
    with jax.set_mesh(chimera.make_mesh(data=len(jax.devices()))):
        assert block().use_decode_kernel(1)
    with jax.set_mesh(chimera.make_mesh(data=4, tensor=2)):  # 4 query heads, 2 KV heads: 2 + 1 per device
        assert block().use_decode_kernel(1)
    with jax.set_mesh(chimera.make_mesh(data=2, tensor=4)):  # 2 KV heads cannot split 4 ways: replicated
        assert not block().use_decode_kernel(1)


@pytest.mark.parametrize("mesh_sizes", [dict(data=2, tensor=2), dict(tensor=4)])
def test_decode_kernel_on_a_mesh_decodes_as_one_device(mesh_sizes):
    """llama-tiny (4 query heads on 2 KV heads) with decode_kernel "pallas": on data=2 x tensor=2
    each device runs the kernel (under shard_map) on its rows and its KV head's query heads; on
    tensor=4, which cannot split the 2 KV heads, the XLA path runs. Greedy tokens equal one
    device's either way."""
    model = chimera.build(chimera.ModelConfig.from_dict(preset_with("llama-tiny", decode_kernel="pallas")))
    params = random_params(model)
    mesh = chimera.make_mesh(**mesh_sizes, devices=jax.devices()[:4])
    with jax.set_mesh(mesh):
        assert model.blocks[0][0].use_decode_kernel(1) == ("data" in mesh_sizes)
    assert greedy_tokens(model, params, mesh) == greedy_tokens(model, params)


@pytest.mark.parametrize("preset, fields", [
    ("llama-tiny", {"decode_kernel": "triton"}),
    ("llama-tiny", {"decode_kernel": "pallas", "softcap": 30.0}),
    ("llama-tiny", {"decode_kernel": "pallas", "head_dim": 8}),
    ("mistral-tiny", {"decode_kernel": "pallas"}),
])
def test_bad_decode_kernel_is_a_config_error(preset, fields):
    with pytest.raises(chimera.ConfigError, match=r"^mixers\.attn\.decode_kernel: "):
        chimera.ModelConfig.from_dict(preset_with(preset, **fields))
