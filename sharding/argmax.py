"""Greedy argmax over logits whose vocabulary is split over `tensor`, without NCCL.

Left to XLA, `jnp.argmax` over vocab-split logits gathers them with NCCL, the one collective of a
tensor-parallel decode step that chimera's all-reduce (sharding/all_reduce.py) would not replace;
an uncaptured NCCL call in the loop keeps XLA from running the loop as one CUDA graph (runtime/
gpu_options.py). Here each device picks the best of its slice, and the kernel sums a table in which
each device filled its own row, which gathers the candidates exactly (the others add zeros).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from chimera.sharding import all_reduce

EXACT_INDICES = 1 << 24  # float32 holds every integer index below this


def argmax(logits: jax.Array) -> jax.Array:
    """logits [B, V] -> int32 [B], `jnp.argmax(logits, -1)`: the first index of the largest value
    (a NaN counts as largest). Through the kernel on a mesh traced `summing_on` that it serves."""
    mesh = all_reduce.active_mesh()
    batch, vocab = logits.shape
    if (not all_reduce.opens_shard_map(mesh) or vocab % mesh.shape["tensor"] or vocab >= EXACT_INDICES
            or not all_reduce.size_takes((mesh.shape["tensor"], batch, 2), jnp.float32)):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    n_ranks = mesh.shape["tensor"]

    def best_of_slices(block):  # block [B, V / n] this device's slice
        rank = jax.lax.axis_index("tensor")
        index = jnp.argmax(block, axis=-1)  # [B], first occurrence within the slice
        value = jnp.take_along_axis(block, index[:, None], axis=-1)[:, 0].astype(jnp.float32)  # [B]
        mine = jnp.stack([value, (index + rank * block.shape[-1]).astype(jnp.float32)], axis=-1)  # [B, 2]
        table = jnp.zeros((n_ranks, batch, 2), jnp.float32).at[rank].set(mine)
        table = all_reduce.sum_over_tensor(table, mesh)  # [n, B, 2]: every slice's candidate
        # ties go to the lower rank, whose slice holds the lower indices: the first occurrence overall
        winner = jnp.argmax(table[..., 0], axis=0)  # [B]
        return jnp.take_along_axis(table[..., 1], winner[None], axis=0)[0].astype(jnp.int32)

    return jax.shard_map(best_of_slices, mesh=mesh, in_specs=PartitionSpec(None, "tensor"),
                         out_specs=PartitionSpec(), check_vma=False)(logits)
