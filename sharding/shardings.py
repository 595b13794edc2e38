"""Sharding trees for a model's params and decode state on a mesh, from the logical axis
names its blocks declare (`Model.param_axes()`, each block's `state_axes()`), by `rules.RULES`.

A block without `state_axes` gets its state split over the batch only (every state leaf is
batch-major); one without `param_axes` has its params replicated (`Model.param_axes`).
"""

from __future__ import annotations

import functools
import math

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from chimera.runtime.model import Model, is_stateful
from chimera.runtime.state import DecodeState
from chimera.sharding.rules import RULES, partition_spec


def tree_shardings(axes, shapes, mesh: Mesh, what: str):
    """A tree of NamedShardings: each leaf of `shapes` (arrays or ShapeDtypeStructs) split by
    the logical names at the same place in `axes`. `what` names the tree in errors."""
    # `shapes` leads: an axes tuple is a leaf there, and a stateless layer's None matches None.
    def leaf(path, shape, names):
        try:
            return NamedSharding(mesh, partition_spec(names, shape.shape, mesh))
        except ValueError as e:
            raise ValueError(f"{what}{jax.tree_util.keystr(path)}: {e}") from None
    return jax.tree_util.tree_map_with_path(leaf, shapes, axes)


def param_shardings(model: Model, mesh: Mesh):
    """The params' tree (as `model.init` makes it) of NamedShardings."""
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    return tree_shardings(model.param_axes(), shapes, mesh, "params")


def batch_only_axes(state):
    """Axes for a block that declares none: batch on axis 0, the rest replicated."""
    return jax.tree.map(lambda x: ("batch",) + (None,) * (x.ndim - 1), state)


def block_state_axes(block, state):
    return block.state_axes() if hasattr(block, "state_axes") else batch_only_axes(state)


def state_shardings(model: Model, mesh: Mesh, batch_size: int, max_len: int) -> DecodeState:
    """A DecodeState of NamedShardings for `model.init_state(batch_size, max_len)`."""
    shapes = jax.eval_shape(functools.partial(model.init_state, batch_size, max_len))
    layers = tuple(block_state_axes(mixer, state) for (mixer, _), state in zip(model.blocks, shapes.layers))
    ffn_layers = tuple(block_state_axes(ffn, state) if is_stateful(ffn) else None
                       for (_, ffn), state in zip(model.blocks, shapes.ffn_layers))
    axes = DecodeState(layers=layers, lengths=("batch",), max_len=max_len, ffn_layers=ffn_layers)
    return tree_shardings(axes, shapes, mesh, "state")


def batch_sharding(mesh: Mesh, batch_size: int) -> NamedSharding:
    """For a per-row array of `batch_size` rows (tokens [B, T], lengths [B], ...): split over
    the batch, the other dimensions replicated."""
    return NamedSharding(mesh, partition_spec(("batch",), (batch_size,), mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_shards(mesh: Mesh) -> int:
    """How many ways a batch can be split at most: the product of the mesh axes of its rule."""
    return math.prod(mesh.shape.get(axis, 1) for axis in RULES["batch"])
