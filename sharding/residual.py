"""A block's tensor-parallel output, summed where the residual stream takes it.

A block whose output projection is split over `tensor` (attention's and MLA's `wo`, the gated MLP's
`w_down`) leaves each device a partial product. The model sums them, adds the sum to the residual
stream and RMS-normalises the result for the next block: after chimera's all-reduce XLA ran that as
2-3 more kernels of ~1.3 µs each, twice a layer (BENCHMARKS.md, session 11). Under chimera's
all-reduce (all_reduce.py) `row_parallel_output` therefore hands the model the partial products
unsummed, as an `Unreduced`, and `add_rms_norm` sums, adds and normalises them in one kernel
(all_reduce.cu's add_rms_norm_kernel). Anywhere else a block's output is the array
`row_parallel_linear` makes.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from chimera.runtime.linear import linear
from chimera.runtime.norm import rms_norm
from chimera.sharding import all_reduce


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Unreduced:
    """A block output [B, T, D] of `dtype` not yet summed over `tensor`: partials [tensor, S, B', T, D],
    split over `tensor` of `mesh` (device i holds partials[i]). Device i's partial product is
    `split_sum(partials[i], B, dtype)`: one split of `dtype`, or S K-splits in float32 over B' >= B rows
    (`split_product`), which the fused kernel sums itself. `finished` sums it."""
    partials: jax.Array
    mesh: Mesh = dataclasses.field(metadata={"static": True})
    dtype: np.dtype = dataclasses.field(metadata={"static": True})
    rows: int = dataclasses.field(metadata={"static": True})  # B


MAX_SPLITS = 8  # K-splits of a one-row output product, at most (benchmarks/unsplit_bench.py sets 1)
MIN_SPLIT_ROWS = 512  # rows of W a split, at least


def splits_for(rows: int) -> int:
    """K-splits for a one-row product over `rows` rows of W: the most (a power of 2 up to MAX_SPLITS)
    that divide it into at least MIN_SPLIT_ROWS each."""
    splits = 1
    while splits * 2 <= MAX_SPLITS and rows % (splits * 2) == 0 and rows // (splits * 2) >= MIN_SPLIT_ROWS:
        splits *= 2
    return splits


def split_product(spec: str, x, w, splits: int):
    """This device's product `linear(spec, x, w)` of one row x [1, 1, c...] as `splits` float32 partial
    products of K-slices, [splits, 2, 1, N...] (row 1 the zero row `linear` adds): XLA would split K itself
    and sum the splits in a kernel of its own, which the fused kernel does instead (`splits_fit`)."""
    out = jax.eval_shape(functools.partial(linear, spec), x, w)  # [1, 1, N...]
    rows = x.size
    x_slices = jnp.pad(x.reshape(splits, 1, rows // splits), [(0, 0), (0, 1), (0, 0)])  # [S, 2, K/S]
    w_slices = w.reshape(splits, rows // splits, w.size // rows)  # [S, K/S, N]
    partials = jnp.einsum("smk,skn->smn", x_slices, w_slices, preferred_element_type=jnp.float32)  # [S, 2, N]
    return partials.reshape((splits, 2) + out.shape[1:])  # [S, 2, 1, N...]


def splits_fit(spec: str, x, w) -> bool:
    """Whether `split_product` computes this product: one row, x's contracted dimensions leading w's."""
    inputs, output = spec.split("->")
    x_letters, w_letters = inputs.split(",")
    contracted = x_letters[2:]
    return (x.shape[0] * x.shape[1] == 1 and w_letters.startswith(contracted)
            and output == x_letters[:2] + w_letters[len(contracted):])


def row_parallel_output(spec: str, x, w, split: str):
    """A block's output `linear(spec, x, w)`, `split` (a letter of `spec`, contracted) split over
    `tensor`: an `Unreduced` where chimera's all-reduce would sum it (`all_reduce.applies`), for the
    model to finish with the residual add and norm; else `all_reduce.row_parallel_linear`'s array.
    Return it from the block as it is; to compute with it, take `finished(y)`."""
    mesh = all_reduce.active_mesh()
    if not all_reduce.applies(mesh, spec, x, w, split):
        return all_reduce.row_parallel_linear(spec, x, w, split)
    out = jax.eval_shape(functools.partial(linear, spec), x, w)
    rows = x.size // (x.shape[0] * x.shape[1]) // mesh.shape["tensor"]  # K on a device
    splits = splits_for(rows) if splits_fit(spec, x, w) else 1

    def local(x_slice, w_slice):  # this device's partial product: [1, S, B', T, D]
        if splits > 1:
            return split_product(spec, x_slice, w_slice, splits)[None]
        return linear(spec, x_slice, w_slice)[None, None]

    partials = jax.shard_map(local, mesh=mesh, in_specs=all_reduce.split_specs(spec, split),
                             out_specs=PartitionSpec("tensor"), check_vma=False)(x, w)
    return Unreduced(partials, mesh, np.dtype(out.dtype), out.shape[0])


def split_sum(partial, rows: int, dtype):
    """A device's partial product [B, T, D] of `dtype` from its K-splits [S, B', T, D] (`Unreduced`): the
    splits' first `rows` (B) rows summed in float32 and rounded; one split as it is."""
    if partial.shape[0] == 1:
        return partial[0]
    return partial.sum(axis=0)[:rows].astype(dtype)


def finished(y):
    """A block's output as an array: an `Unreduced` summed by chimera's all-reduce, an array as it is."""
    if not isinstance(y, Unreduced):
        return y

    def local(partial):  # [1, S, B', T, D]
        return all_reduce.sum_over_tensor(split_sum(partial[0], y.rows, y.dtype), y.mesh)

    return jax.shard_map(local, mesh=y.mesh, in_specs=PartitionSpec("tensor"), out_specs=PartitionSpec(),
                         check_vma=False)(y.partials)


def fuses(residual, y: Unreduced, weight) -> bool:
    """Whether one kernel takes `add_rms_norm`: one dtype throughout, rows of a multiple of 16 bytes up
    to all_reduce.MAX_ROW_BYTES, at most all_reduce.MAX_ROWS rows."""
    dtype = np.dtype(residual.dtype)
    row_bytes = residual.shape[-1] * dtype.itemsize
    return (y.dtype == dtype == np.dtype(weight.dtype)
            and all_reduce.size_takes(residual.shape[-1:], dtype) and row_bytes <= all_reduce.MAX_ROW_BYTES
            and residual.size // residual.shape[-1] <= all_reduce.MAX_ROWS)


def add_rms_norm(residual, y, weight, eps: float):
    """residual [B, T, D] + y (a block's output) and its `rms_norm` by weight [D]: (new residual,
    normed), both [B, T, D]. An `Unreduced` y is summed, added and normalised in one kernel where it
    `fuses`, with runtime/norm.py's arithmetic (the sum of squares in another order)."""
    if not isinstance(y, Unreduced) or not fuses(residual, y, weight):
        residual = residual + finished(y)
        return residual, rms_norm(residual, weight, eps)

    def local(partial, residual, weight):  # [1, S, B', T, D], [B, T, D], [D]
        return sum_add_rms_norm(partial[0], residual, weight, eps, y.mesh)

    replicated = PartitionSpec()
    return jax.shard_map(local, mesh=y.mesh, in_specs=(PartitionSpec("tensor"), replicated, replicated),
                         out_specs=(replicated, replicated), check_vma=False)(y.partials, residual, weight)


def sum_add_rms_norm(partial, residual, weight, eps: float, mesh: Mesh):
    """Inside a shard_map over `mesh`: residual [B, T, D] + the sum over `tensor` of this device's partial
    product (`split_sum` of `partial` [S, B', T, D]), and its RMS norm by `weight`, by the kernel."""
    shape = jax.ShapeDtypeStruct(residual.shape, residual.dtype)
    return jax.ffi.ffi_call(all_reduce.ADD_RMS_NORM_TARGET, (shape, shape))(
        partial, residual, weight, groups=all_reduce.groups(mesh), group_size=np.int64(mesh.shape["tensor"]),
        eps=np.float32(eps), splits=np.int64(partial.shape[0]))
