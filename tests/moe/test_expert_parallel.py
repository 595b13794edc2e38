"""Expert parallelism over 8 forced CPU devices (tests/conftest.py): the block traced under a
mesh with an `expert` axis gives the single-device result; without one it stays local."""

import collections
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera
from chimera.moe.moe import MoE

D = 16
MESHES = {"expert8": dict(expert=8), "data2_expert4": dict(data=2, expert=4), "expert4_tensor2": dict(expert=4, tensor=2)}
BLOCKS = {
    "dropless": MoE(D, n_experts=8, top_k=2, d_ff=12),
    "capacity_tiled": MoE(D, n_experts=8, top_k=2, d_ff=12, capacity_factor=0.75, grouped_matmul="tiled"),
    # gather on each device's received rows (auto takes ragged_dot here: they outnumber its experts)
    "deepseek_shared": MoE(D, n_experts=16, top_k=4, d_ff=8, router="sigmoid_group", n_group=4, topk_group=2,
                           n_shared_experts=1, shared_expert_gate=True, routed_scaling_factor=2.5,
                           grouped_matmul="gather"),
}


def inputs(batch, length, n_valid, seed=0):
    """x [B, T, D] and a Context whose row b holds n_valid[b] tokens (15 tokens: not a multiple of 8)."""
    x = jnp.asarray(np.random.default_rng(seed).normal(size=(batch, length, D)), jnp.float32)
    valid = jnp.asarray(np.arange(length)[None, :] < np.asarray(n_valid)[:, None])
    return x, chimera.Context(positions=jnp.zeros((batch, length), jnp.int32), valid=valid)


def random_params(block, seed=3):
    """Normal params of the block's shapes, matrices scaled by their fan-in, vectors (biases,
    gates) by 0.3; no PRNG compiles."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * (s.shape[-2] ** -0.5 if s.ndim > 1 else 0.3),
                                              jnp.float32), jax.eval_shape(block.init, jax.random.key(0)))


@functools.cache
def single_device(name):
    """(block, params, x, ctx, its single-device output): 3 rows of 5, 2 and 4 valid tokens."""
    block = BLOCKS[name]
    params = random_params(block)
    x, ctx = inputs(3, 5, [5, 2, 4])
    return block, params, x, ctx, np.asarray(jax.jit(block.__call__)(params, x, ctx))


@pytest.mark.parametrize("name,mesh", [
    ("dropless", "expert8"), ("dropless", "data2_expert4"), ("capacity_tiled", "expert8"),
    ("capacity_tiled", "expert4_tensor2"), ("deepseek_shared", "expert8"), ("deepseek_shared", "expert4_tensor2")])
def test_equals_single_device(name, mesh):
    block, params, x, ctx, want = single_device(name)
    call = jax.jit(block.__call__)
    with jax.set_mesh(chimera.make_mesh(**MESHES[mesh])):
        assert "all_to_all" in str(call.trace(params, x, ctx).jaxpr)  # the expert-parallel path
        y = call(params, x, ctx)
    valid = np.asarray(ctx.valid)
    np.testing.assert_allclose(np.asarray(y)[valid], want[valid], rtol=1e-6, atol=1e-6)
    if block.capacity_factor is not None:  # the capacity binds: what is dropped must agree too
        assert int(jax.jit(block.route_stats)(params, x, ctx.valid).dropped) > 0


def test_no_expert_axis_stays_local():
    block = BLOCKS["dropless"]
    params = jax.eval_shape(block.init, jax.random.key(0))
    x, ctx = inputs(1, 4, [4])
    for mesh in (None, chimera.make_mesh(data=8), chimera.make_mesh(data=4, tensor=2)):
        if mesh is None:
            jaxpr = jax.make_jaxpr(block.__call__)(params, x, ctx)
        else:
            with jax.set_mesh(mesh):
                jaxpr = jax.make_jaxpr(block.__call__)(params, x, ctx)
        assert "all_to_all" not in str(jaxpr)


def test_experts_must_divide_over_the_expert_axis():
    block = MoE(D, n_experts=6, top_k=2, d_ff=12)
    params = jax.eval_shape(block.init, jax.random.key(0))
    x, ctx = inputs(1, 4, [4])
    with jax.set_mesh(chimera.make_mesh(expert=4, tensor=2)), pytest.raises(ValueError, match="n_experts 6"):
        jax.make_jaxpr(block.__call__)(params, x, ctx)


def test_model_forward_under_the_mesh():
    """A whole model (attention + MoE layers) under data=2 x expert=4 gives the single-device logits."""
    cfg = chimera.ModelConfig.from_dict({
        "name": "moe-ep", "vocab_size": 64, "d_model": 32, "n_layers": 2, "layers": [{"mixer": "attn", "ffn": "moe"}],
        "mixers": {"attn": {"kind": "attention", "n_heads": 4, "n_kv_heads": 2, "head_dim": 8}},
        "ffns": {"moe": {"kind": "moe", "n_experts": 8, "top_k": 2, "d_ff": 16}}})
    single, sharded = chimera.build(cfg), chimera.build(cfg)  # separate jit caches
    params = single.init(jax.random.key(1, impl="unsafe_rbg"))  # eager, no threefry compiles
    tokens = np.random.default_rng(0).integers(0, 64, (3, 7)).astype(np.int32)
    want = single.forward(params, tokens)
    with jax.set_mesh(chimera.make_mesh(data=2, expert=4)):
        logits = sharded.forward(params, tokens)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mesh", ["expert8", "expert4_tensor2"])
def test_one_token_keeps_the_router_whole(mesh):
    """A decode step of batch 1 (one token, replicated as the rest of the model holds it): the
    compiled block exchanges its assignments (all-to-alls) and brings the token's output back
    with one all-reduce (plus one over `tensor` for its d_ff shards), and splits nothing else.
    Left alone, XLA split the router's logits over the experts to match the padded token split,
    and the softmax and top_k over that split axis cost four more small all-reduces."""
    block = BLOCKS["dropless"]
    params = random_params(block)
    x, ctx = inputs(1, 1, [1])
    with jax.set_mesh(chimera.make_mesh(**MESHES[mesh])):
        hlo = jax.jit(block.__call__).lower(params, x, ctx).compile().as_text()
    collectives = collections.Counter(re.findall(r"[ )](all-reduce|all-gather|all-to-all)(?:-start)?\(", hlo))
    assert collectives["all-reduce"] == (2 if "tensor" in mesh else 1), collectives
    assert collectives["all-gather"] == 0, collectives
