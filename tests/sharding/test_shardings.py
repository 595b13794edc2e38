"""Param and decode-state shardings on 8 forced CPU devices (tests/conftest.py): what the rules
give the built-in blocks, and an Engine on a mesh decoding exactly what it decodes on one device."""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import chimera
from chimera.sharding.shardings import batch_sharding, param_shardings, state_shardings
from sharding_cases import PROMPTS, greedy_tokens, random_params

TINY = [name for name in chimera.list_presets() if name.endswith("-tiny")]
MESHES = {"tensor8": dict(tensor=8), "data4_tensor2": dict(data=4, tensor=2),
          "expert4_tensor2": dict(expert=4, tensor=2), "expert8": dict(expert=8)}


@functools.cache
def unsharded(preset):
    """(model, host params, greedy tokens on one device)."""
    model = chimera.build(chimera.load_config(preset))
    params = random_params(model)
    return model, params, greedy_tokens(model, params)


def specs(tree):
    return jax.tree.map(lambda s: s.spec, tree)


@pytest.mark.parametrize("mesh_name", MESHES)
@pytest.mark.parametrize("preset", TINY)
def test_greedy_tokens_sharded_equal_unsharded(preset, mesh_name):
    """Every tiny preset on every mesh the sharding issue names."""
    mesh = chimera.make_mesh(**MESHES[mesh_name])
    model, params, want = unsharded(preset)
    assert greedy_tokens(model, params, mesh) == want


def test_dense_transformer_layout():
    """llama-tiny: 4 query heads and 2 KV heads of 16, d_ff 128, vocab 256."""
    model = chimera.build(chimera.load_config("llama-tiny"))
    mesh = chimera.make_mesh(data=4, tensor=2)
    params, layer = specs(param_shardings(model, mesh)), specs(param_shardings(model, mesh))["layers"][0]
    assert params["embed"] == P("tensor", None) and params["lm_head"] == P(None, "tensor")
    assert layer["mixer"] == {"wq": P(None, "tensor", None), "wk": P(None, "tensor", None),
                              "wv": P(None, "tensor", None), "wo": P("tensor", None, None)}
    assert layer["ffn"] == {"w_gate": P(None, "tensor"), "w_up": P(None, "tensor"), "w_down": P("tensor", None)}
    assert layer["mixer_norm"] == P(None)
    state = state_shardings(model, mesh, batch_size=8, max_len=32)
    assert specs(state.layers[0]) == {"k": P("data", None, "tensor", None), "v": P("data", None, "tensor", None)}
    assert state.lengths.spec == P("data")


def test_heads_the_tensor_axis_does_not_divide_are_replicated():
    """The documented fallback: 4 heads and 2 KV heads on tensor=8 stay whole (so does the
    cache); the MLP (128) and vocabulary (256) are still split 8 ways."""
    model = chimera.build(chimera.load_config("llama-tiny"))
    mesh = chimera.make_mesh(tensor=8)
    layer = specs(param_shardings(model, mesh))["layers"][0]
    assert layer["mixer"]["wq"] == P(None, None, None) and layer["mixer"]["wk"] == P(None, None, None)
    assert layer["ffn"]["w_gate"] == P(None, "tensor")
    assert specs(state_shardings(model, mesh, 8, 32).layers[0])["k"] == P(None, None, None, None)


def test_moe_layout():
    """mixtral-tiny: 8 experts over `expert`, each expert's d_ff over `tensor`, the router whole;
    the batch over data x expert."""
    model = chimera.build(chimera.load_config("mixtral-tiny"))
    mesh = chimera.make_mesh(expert=4, tensor=2)
    ffn = specs(param_shardings(model, mesh))["layers"][0]["ffn"]
    assert ffn == {"router": P(None, None), "w_gate": P("expert", None, "tensor"),
                   "w_up": P("expert", None, "tensor"), "w_down": P("expert", "tensor", None)}
    assert state_shardings(model, mesh, 8, 32).lengths.spec == P("expert")
    assert state_shardings(chimera.build(chimera.load_config("mixtral-tiny")), chimera.make_mesh(data=2, expert=4),
                           8, 32).lengths.spec == P(("data", "expert"))


def test_recurrent_layouts():
    """Mamba's channels, Mamba-2's and RWKV-7's heads over `tensor`, in the params and the state."""
    mesh = chimera.make_mesh(data=4, tensor=2)
    mamba = chimera.build(chimera.load_config("mamba-tiny"))
    assert specs(param_shardings(mamba, mesh))["layers"][0]["mixer"]["in_x"] == P(None, "tensor")
    assert specs(state_shardings(mamba, mesh, 8, 32).layers[0]) == {"conv": P("data", None, "tensor"),
                                                                    "ssm": P("data", "tensor", None)}
    mamba2 = chimera.build(chimera.load_config("mamba2-tiny"))
    assert specs(state_shardings(mamba2, mesh, 8, 32).layers[0])["ssm"] == P("data", "tensor", None, None)
    rwkv = chimera.build(chimera.load_config("rwkv7-tiny"))
    assert specs(param_shardings(rwkv, mesh))["layers"][0]["mixer"]["w_r"] == P(None, "tensor", None)
    state = state_shardings(rwkv, mesh, 8, 32)
    assert specs(state.layers[0])["wkv"] == P("data", "tensor", None, None)
    assert specs(state.ffn_layers[0]) == {"shift": P("data", None)}  # the channel-mix's stateful ffn


def test_engine_places_params_by_the_shardings():
    model, params, _ = unsharded("mixtral-tiny")
    mesh = chimera.make_mesh(expert=4, tensor=2)
    engine = chimera.Engine(model, params, max_batch=8, max_len=32, mesh=mesh)
    for leaf, sharding in zip(jax.tree.leaves(engine.params), jax.tree.leaves(param_shardings(model, mesh))):
        assert leaf.sharding == sharding
    w_gate = engine.params["layers"][0]["ffn"]["w_gate"]  # [8, 64, 64]: 2 experts x half of d_ff per device
    assert {shard.data.shape for shard in w_gate.addressable_shards} == {(2, 64, 32)}


@functools.cache
def padded_engine():
    """llama-tiny on data=2 x expert=4 with max_batch 3."""
    model, params, _ = unsharded("llama-tiny")
    return chimera.Engine(model, params, max_batch=3, max_len=32, mesh=chimera.make_mesh(data=2, expert=4))


def test_batch_the_mesh_does_not_divide():
    """A batch the data x expert axes do not divide keeps the longest prefix of them that does
    (or none); Engine.generate pads its rows instead, to a multiple of data x expert."""
    mesh = chimera.make_mesh(data=2, expert=4)
    assert batch_sharding(mesh, 8).spec == P(("data", "expert"))
    assert batch_sharding(mesh, 6).spec == P("data")
    assert batch_sharding(mesh, 3).spec == P(None)
    want = unsharded("llama-tiny")[2]
    outs = padded_engine().generate(PROMPTS[:3], max_new_tokens=len(want[0]))  # 3 rows, padded to 8
    assert [out.tokens for out in outs] == want[:3]


def test_state_keeps_its_shardings_and_is_donated():
    """Prefill and decode take the state in its shardings, give it back in them (so the next
    call needs no copy) and consume the input buffers (updated in place)."""
    engine = padded_engine()  # the shapes generate compiled: 8 rows, 32 slots, 16-token chunks
    sampling, rows = chimera.Sampling(), np.arange(8, dtype=np.int32)
    want = state_shardings(engine.model, engine.mesh, 8, 32)
    state = engine.new_state(8, 32)
    for call in ("prefill", "decode"):
        before = jax.tree.leaves(state)
        if call == "prefill":
            state, first = engine.prefill(engine.params, state, np.ones((8, 16), np.int32), np.full(8, 5, np.int32),
                                          np.zeros(8, np.int32), rows, np.int32(0), sampling=sampling)
        else:
            *_, state = engine.decode(engine.params, state, first, np.ones(8, bool), rows, np.int32(0),
                                      np.full(8, -1, np.int32), np.int32(3), out_len=16, sampling=sampling)
        assert all(leaf.is_deleted() for leaf in before)
        assert all(leaf.sharding == sharding for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(want)))


def test_experts_the_mesh_does_not_divide_are_refused():
    """The expert-parallel MoE needs its experts split evenly: 8 experts on expert=3 is an error."""
    model, params, _ = unsharded("mixtral-tiny")
    mesh = chimera.make_mesh(expert=3, devices=jax.devices()[:3])
    with pytest.raises(ValueError, match=r"params\['layers'\]\[0\]\['ffn'\]\['w_down'\].*'experts' of size 8"):
        chimera.Engine(model, params, mesh=mesh)
