"""The logical-axis rules: which mesh axes a named dimension is split over, and the documented
fallback when they do not divide it."""

import pytest
from jax.sharding import PartitionSpec as P

import chimera
from chimera.sharding.rules import RULES, partition_spec


@pytest.fixture(scope="module")
def mesh():
    return chimera.make_mesh(data=2, expert=2, tensor=2)


def test_named_dimensions_follow_the_rules(mesh):
    assert partition_spec(("embed", "heads", "head_dim"), (64, 8, 16), mesh) == P(None, "tensor", None)
    assert partition_spec(("experts", "embed", "mlp"), (8, 64, 32), mesh) == P("expert", None, "tensor")
    assert partition_spec(("batch", "sequence", "kv_heads", "head_dim"), (8, 32, 4, 16), mesh) == \
        P(("data", "expert"), None, "tensor", None)
    assert partition_spec(("vocab", "embed"), (256, 64), mesh) == P("tensor", None)


def test_unknown_and_unnamed_dimensions_are_replicated(mesh):
    assert partition_spec((None, "my_block_axis", "kv_lora"), (8, 8, 8), mesh) == P(None, None, None)


def test_a_dimension_the_axes_do_not_divide_keeps_the_longest_dividing_prefix(mesh):
    assert partition_spec(("batch",), (6,), mesh) == P("data")  # 6 = 2 x 3: data divides, data x expert not
    assert partition_spec(("batch",), (3,), mesh) == P(None)
    assert partition_spec(("heads",), (3,), mesh) == P(None)
    kv_replicated = chimera.make_mesh(tensor=8)  # 2 KV heads on tensor=8: replicated, 32 query heads split
    assert partition_spec(("embed", "kv_heads", "head_dim"), (64, 2, 16), kv_replicated) == P(None, None, None)
    assert partition_spec(("embed", "heads", "head_dim"), (64, 32, 16), kv_replicated) == P(None, "tensor", None)


def test_axes_of_one_device_are_left_out():
    mesh = chimera.make_mesh(data=8)
    assert partition_spec(("batch", "heads"), (8, 4), mesh) == P("data", None)


def test_a_mesh_axis_splits_one_dimension_of_an_array(mesh):
    """The first dimension that asks for an axis gets it; a later one is replicated."""
    assert partition_spec(("mlp", "mlp"), (32, 32), mesh) == P("tensor", None)


def test_experts_must_divide(mesh):
    """The expert-parallel MoE needs its experts split evenly: no fallback, a clear error."""
    with pytest.raises(ValueError, match=r"'experts' of size 6 must be split over mesh axes expert=4"):
        partition_spec(("experts", "embed", "mlp"), (6, 64, 32), chimera.make_mesh(expert=4, tensor=2))


def test_names_and_shape_must_agree(mesh):
    with pytest.raises(ValueError, match="do not match"):
        partition_spec(("embed",), (4, 4), mesh)


def test_custom_rules(mesh):
    rules = dict(RULES, embed=("tensor",))
    assert partition_spec(("vocab", "embed"), (256, 64), mesh, rules) == P("tensor", None)
    assert partition_spec(("embed", "vocab"), (64, 256), mesh, rules) == P("tensor", None)
