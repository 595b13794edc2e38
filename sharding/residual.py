"""A block's tensor-parallel output, summed where the residual stream takes it.

A block whose output projection is split over `tensor` (attention's and MLA's `wo`, the gated MLP's
`w_down`) leaves each device a partial product. The model sums them, adds the sum to the residual
stream and RMS-normalises the result for the next block: after chimera's all-reduce XLA ran that as
2-3 more kernels of ~1.3 µs each, twice a layer (BENCHMARKS.md, session 11). Under chimera's
all-reduce (all_reduce.py) `row_parallel_output` therefore hands the model the partial products
unsummed, as an `Unreduced`, and `add_rms_norm` sums, adds and normalises them in one kernel
(all_reduce.cu's add_rms_norm_kernel). Of one row each device's partial is SPLITS float32 products
over slices of K, which the kernel sums too: XLA's split-K GEMM would otherwise sum its splits in a
kernel of its own before the custom call. Anywhere else a block's output is the array
`row_parallel_linear` makes.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from chimera.runtime.linear import linear, remember_two_rows
from chimera.runtime.norm import rms_norm
from chimera.sharding import all_reduce


SPLITS = 4  # K-splits of a one-row output product, summed by the kernel (BENCHMARKS.md, session 17)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Unreduced:
    """A block output [B, T, D] not yet summed over `tensor`: partials [tensor, B, T, D], split over
    `tensor` of `mesh` (device i holds partials[i], its own partial product). Of one row the partials
    may be K-splits instead: [tensor, splits, 2, D] float32 (row 1 the zero row's), `out` the summed
    output's shape and dtype. `finished` sums it."""
    partials: jax.Array
    mesh: Mesh = dataclasses.field(metadata={"static": True})
    out: jax.ShapeDtypeStruct | None = dataclasses.field(default=None, metadata={"static": True})

    @property
    def splits(self) -> int:
        """K-splits a device's partial is made of (1: the partial product itself)."""
        return 1 if self.out is None else self.partials.shape[1]

    @property
    def dtype(self):
        return np.dtype(self.partials.dtype if self.out is None else self.out.dtype)


def split_count(spec: str, x, n_ranks: int) -> int:
    """SPLITS for a one-row product `spec` (x [.., K...] . w [K..., D]: its contracted letters end x's and
    start w's) whose K a device divides by SPLITS; else 1."""
    x_letters, w_letters = spec.split("->")[0].split(",")
    contracted = "".join(letter for letter in x_letters if letter in w_letters and letter not in spec.split("->")[1])
    n = len(contracted)
    if (not n or not x_letters.endswith(contracted) or not w_letters.startswith(contracted)
            or math.prod(x.shape[:-n]) != 1):
        return 1
    return SPLITS if (math.prod(x.shape[-n:]) // n_ranks) % SPLITS == 0 else 1


def split_product(x, w, splits: int):
    """One row x [1, .., K...] times w [K..., D] as `splits` products over K-slices in float32: [splits, 2, D],
    row 1 the product of a zero row (XLA strength-reduces one-row products otherwise: runtime/linear.py).
    XLA runs one GEMM of split-K and sums its splits in a kernel of its own before a custom call; these
    the fused kernel sums."""
    k = x.size
    w_rows = w.reshape(k, -1)  # [K, D]
    x_slices = jnp.pad(x.reshape(splits, 1, k // splits), [(0, 0), (0, 1), (0, 0)])  # [S, 2, K/S]
    w_slices = w_rows.reshape(splits, k // splits, w_rows.shape[-1])  # [S, K/S, D]
    return jnp.einsum("smk,skd->smd", x_slices, w_slices, preferred_element_type=jnp.float32)  # [S, 2, D]


def sum_of_splits(splits, out: jax.ShapeDtypeStruct):
    """`split_product`'s [S, 2, D] -> the one-row product it splits, of out's shape and dtype."""
    return splits[:, 0].sum(axis=0).reshape(out.shape).astype(out.dtype)


def row_parallel_output(spec: str, x, w, split: str):
    """A block's output `linear(spec, x, w)`, `split` (a letter of `spec`, contracted) split over
    `tensor`: an `Unreduced` where chimera's all-reduce would sum it (`all_reduce.applies`), for the
    model to finish with the residual add and norm; else `all_reduce.row_parallel_linear`'s array.
    Return it from the block as it is; to compute with it, take `finished(y)`."""
    mesh = all_reduce.active_mesh()
    if not all_reduce.applies(mesh, spec, x, w, split):
        return all_reduce.row_parallel_linear(spec, x, w, split)

    splits = split_count(spec, x, mesh.shape["tensor"])

    def local(x_slice, w_slice):
        if splits > 1:
            return split_product(x_slice, w_slice, splits)[None]  # [1, S, 2, D]
        return linear(spec, x_slice, w_slice)[None]  # [1, B, T, D]: this device's partial product

    partials = jax.shard_map(local, mesh=mesh, in_specs=all_reduce.split_specs(spec, split),
                             out_specs=PartitionSpec("tensor"), check_vma=False)(x, w)
    if splits > 1:
        return Unreduced(partials, mesh, jax.eval_shape(functools.partial(linear, spec), x, w))
    return Unreduced(partials, mesh)


def finished(y):
    """A block's output as an array: an `Unreduced` summed by chimera's all-reduce, an array as it is."""
    if not isinstance(y, Unreduced):
        return y

    def local(partial):  # [1, B, T, D], or [1, S, 2, D] K-splits
        total = partial[0] if y.out is None else sum_of_splits(partial[0], y.out)
        return all_reduce.sum_over_tensor(total, y.mesh)

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
    `fuses`, with runtime/norm.py's arithmetic (the sum of squares in another order). Of one row
    (B x T = 1) the kernel also writes the zero row under `normed` that `linear` multiplies it with
    (runtime/linear.py), so no pad kernel follows it."""
    if not isinstance(y, Unreduced) or not fuses(residual, y, weight):
        residual = residual + finished(y)
        return residual, rms_norm(residual, weight, eps)
    zero_rows = 1 if residual.shape[0] * residual.shape[1] == 1 else 0

    def local(partial, residual, weight):  # [1, B, T, D], [B, T, D], [D]
        return sum_add_rms_norm(partial[0], residual, weight, eps, y.mesh, zero_rows, y.splits)

    replicated = PartitionSpec()
    residual, normed = jax.shard_map(local, mesh=y.mesh, in_specs=(PartitionSpec("tensor"), replicated, replicated),
                                     out_specs=(replicated, replicated), check_vma=False)(y.partials, residual, weight)
    if zero_rows:  # normed [2, 1, D]: the normed row over a zero row
        rows, normed = normed, normed[:1]
        remember_two_rows(normed, rows)
    return residual, normed


def sum_add_rms_norm(partial, residual, weight, eps: float, mesh: Mesh, zero_rows: int = 0, splits: int = 1):
    """Inside a shard_map over `mesh`: residual [B, T, D] + the sum of `partial` ([B, T, D], or of one row
    [splits, 2, D] float32 K-splits) over `tensor`, and its RMS norm by `weight`, by the kernel: (new
    residual [B, T, D], normed [B + zero_rows, T, D]), the normed rows followed by `zero_rows` rows of
    zeros."""
    shape = jax.ShapeDtypeStruct(residual.shape, residual.dtype)
    normed = jax.ShapeDtypeStruct((residual.shape[0] + zero_rows,) + residual.shape[1:], residual.dtype)
    return jax.ffi.ffi_call(all_reduce.ADD_RMS_NORM_TARGET, (shape, normed))(
        partial, residual, weight, groups=all_reduce.groups(mesh), group_size=np.int64(mesh.shape["tensor"]),
        eps=np.float32(eps), splits=np.int64(splits))
