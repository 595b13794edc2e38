"""init_sharded on 8 forced CPU devices (tests/conftest.py): `model.init`'s params bit for bit,
each leaf already in its `param_shardings` layout, which the Engine then keeps without a copy;
draw_params: the same tree, dtypes, layouts and distributions, and the same values on any mesh."""

import jax
import numpy as np
import pytest

import chimera
from chimera.sharding.init import draw_params, init_sharded
from chimera.sharding.shardings import param_shardings

# A dense transformer split over tensor and data; an MoE expert-parallel; a hybrid whose Mamba
# layers draw A_log and dt_bias through log/expm1 (values a jitted init would round differently).
CASES = [("llama-tiny", dict(tensor=2, data=4)), ("mixtral-tiny", dict(expert=4, tensor=2)),
         ("jamba-tiny", dict(expert=4, tensor=2))]


@pytest.mark.parametrize("preset,mesh_sizes", CASES, ids=[preset for preset, _ in CASES])
def test_init_sharded_is_init_in_param_shardings(preset, mesh_sizes):
    model = chimera.build(chimera.load_config(preset))
    mesh = chimera.make_mesh(**mesh_sizes)
    want = model.init(jax.random.key(7))
    got = init_sharded(model, jax.random.key(7), mesh)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    shardings = param_shardings(model, mesh)
    for (path, leaf), expected, sharding in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want),
                                                jax.tree.leaves(shardings)):
        name = jax.tree_util.keystr(path)
        assert leaf.sharding == sharding, name
        assert leaf.dtype == expected.dtype, name
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(expected), err_msg=name)


def test_engine_keeps_placed_params():
    """Params already in the Engine's layout are used as they are: no copy on any device."""
    model = chimera.build(chimera.load_config("llama-tiny"))
    mesh = chimera.make_mesh(tensor=2, data=4)
    params = init_sharded(model, jax.random.key(0), mesh)
    engine = chimera.Engine(model, params, max_batch=8, max_len=16, mesh=mesh)
    assert all(a is b for a, b in zip(jax.tree.leaves(engine.params), jax.tree.leaves(params)))


@pytest.mark.parametrize("preset,mesh_sizes", CASES, ids=[preset for preset, _ in CASES])
def test_draw_params_is_init_distribution_and_mesh_independent(preset, mesh_sizes):
    """Sharded draws equal the one-device draws bit for bit (partitionable threefry: a value does not
    depend on which device draws it), and every leaf matches `model.init`'s in shape, dtype and layout,
    with its mean and spread (a constant leaf, e.g. a norm's ones, exactly)."""
    model = chimera.build(chimera.load_config(preset))
    mesh = chimera.make_mesh(**mesh_sizes)
    want = model.init(jax.random.key(3))
    alone = draw_params(model, jax.random.key(3))
    got = draw_params(model, jax.random.key(3), mesh)
    assert jax.tree.structure(got) == jax.tree.structure(want) == jax.tree.structure(alone)
    shardings = param_shardings(model, mesh)
    for (path, leaf), one_device, expected, sharding in zip(
            jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(alone), jax.tree.leaves(want),
            jax.tree.leaves(shardings)):
        name = jax.tree_util.keystr(path)
        assert leaf.sharding == sharding, name
        assert leaf.dtype == expected.dtype and leaf.shape == expected.shape, name
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(one_device), err_msg=name)
        drawn, reference = np.asarray(leaf, np.float64), np.asarray(expected, np.float64)
        if reference.std() == 0:
            np.testing.assert_array_equal(drawn, reference, err_msg=name)
        else:  # the same distribution: moments within a few standard errors of init's
            bound = 6 * reference.std() / np.sqrt(reference.size) + 1e-6
            assert abs(drawn.mean() - reference.mean()) < bound + 0.05 * abs(reference.mean()), name
            assert abs(drawn.std() / reference.std() - 1) < 0.1 + 6 / np.sqrt(reference.size), name
