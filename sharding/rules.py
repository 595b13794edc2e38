"""Logical-axis rules: which mesh axes each logical axis name of a parameter or state leaf
is split over, and what happens when a mesh axis does not divide the dimension.

Blocks name their dimensions (`param_axes()` / `state_axes()`: vocab, embed, heads, ...);
`RULES` maps a name to the mesh axes it may be split over, in order of preference. A name
not in `RULES` (embed, head_dim, sequence, q_lora, kv_lora, rope_head_dim, None, or a custom
block's own) is replicated.

The fallback for a dimension a mesh axis does not divide (documented in the README): the
dimension keeps the longest prefix of its rule's axes whose product divides it, and is
replicated when none does. Replicating is always correct, it only costs memory and speed:
with 2 KV heads on tensor=8 the KV heads (and their cache) are replicated while the 32 query
heads are still split. Exception: a name in `REQUIRED` must be divided by its axes (the
expert-parallel MoE assumes its experts are split), so a mesh that cannot is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from jax.sharding import Mesh, PartitionSpec

RULES: Mapping[str, tuple[str, ...]] = {
    # Sequences over data, and over expert too: the expert axis, idle in attention and dense
    # layers, serves as more data parallelism there, as the MoE splits its tokens over both.
    "batch": ("data", "expert"),
    # Megatron-style tensor parallelism: activations stay whole on `embed`; each device holds a
    # slice of the heads / hidden units and one all-reduce per block sums the partial outputs.
    "vocab": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "ssm_inner": ("tensor",),
    "experts": ("expert",),
}

REQUIRED = frozenset({"experts"})


def mesh_axes_for(name: str | None, size: int, mesh: Mesh, taken: Sequence[str] = (),
                  rules: Mapping[str, tuple[str, ...]] = RULES) -> tuple[str, ...]:
    """The mesh axes a dimension of logical `name` and `size` is split over: its rule's axes
    that exist in the mesh with more than one device and are not `taken` by another dimension
    of the same array, cut to the longest prefix whose product divides `size`."""
    wanted = [axis for axis in rules.get(name, ()) if mesh.shape.get(axis, 1) > 1 and axis not in taken]
    axes = list(wanted)
    while axes and size % math.prod(mesh.shape[axis] for axis in axes):
        axes.pop()
    if name in REQUIRED and len(axes) < len(wanted):
        split = " x ".join(f"{axis}={mesh.shape[axis]}" for axis in wanted)
        raise ValueError(f"dimension {name!r} of size {size} must be split over mesh axes {split}, "
                         f"which do not divide it")
    return tuple(axes)


def partition_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                   rules: Mapping[str, tuple[str, ...]] = RULES) -> PartitionSpec:
    """The PartitionSpec of an array whose dimensions have logical `names` and `shape`."""
    if len(names) != len(shape):
        raise ValueError(f"axis names {tuple(names)} do not match an array of shape {tuple(shape)}")
    spec, taken = [], []
    for name, size in zip(names, shape):
        axes = mesh_axes_for(name, size, mesh, taken, rules)
        taken += axes
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)
