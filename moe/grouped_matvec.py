"""A few rows, each through its own expert's gated MLP, with the experts' weights read in place:
the `gather` grouped matmul on a GPU (a decode step's M = batch x top_k rows, M <= E).

Gathering each row's expert weights into a copy before a batched matmul moves every routed
matrix three times (read, write, read again; BENCHMARKS.md session 19: Mixtral's experts at 2
rows ran at 1.2 TB/s of routed bytes on an H200). Here one Pallas (Triton) kernel multiplies
each row by its expert's matrix where it lies: grid (row, column block); program (m, n) reads row
m's expert id, skips the work for a row of no expert (its output is zeros, nothing read), and
runs down the expert's column block n, `block_k` rows at a time, accumulating in float32.
Triton's dot wants operands of >= 16 rows, so the row's slice is row 0 of a [16, block_k]
operand whose other rows are zero (memory-bound work: the idle rows read nothing). Gate and up
share one kernel (x read once, two accumulators).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from chimera.moe.mlp import ACTIVATIONS

ROWS = 16  # Triton's smallest dot operand
# Measured on an H200 (benchmarks/moe_gemv.py, Mixtral's 4096 x 14336 experts): 64 columns a
# program, 256 rows a step and no K-splits read 3.2-3.9 TB/s at 2-6 rows; 32 columns, 128 rows,
# 8 warps or 2-8 K-splits were slower. Wider blocks do not fit shared memory with 3 stages, and
# float32 weights take half the rows (their 256 asked for 274 KB of the 227 KB a block has).
# Sizes they do not divide take the largest power of 2 that does (DeepSeek-V2-Lite's 1408: 128).
BLOCK_N, BLOCK_K = 64, 256  # BLOCK_K for 2-byte weights


def _kernel(expert_ref, x_ref, *refs, block_k: int, n_experts: int):
    """expert_ref []: this row's expert (n_experts: none); x_ref [K]; then each weight's ref
    [E, K, block_n] and each output's [block_n] (float32)."""
    w_refs, o_refs = refs[:len(refs) // 2], refs[len(refs) // 2:]
    expert = expert_ref[...]

    @pl.when(expert < n_experts)
    def _():
        def step(i, accs):  # each [ROWS, block_n] float32
            start = pl.multiple_of(i * block_k, block_k)
            x = x_ref[pl.ds(start, block_k)].astype(w_refs[0].dtype)  # [block_k]
            rows = lax.broadcasted_iota(jnp.int32, (ROWS, block_k), 0)
            x = jnp.where(rows == 0, x[None, :], jnp.zeros((), x.dtype))  # [ROWS, block_k]: x in row 0
            return tuple(acc + plgpu.dot(x, w_ref[expert, pl.ds(start, block_k), :], allow_tf32=False)
                         for acc, w_ref in zip(accs, w_refs))

        zeros = jnp.zeros((ROWS, w_refs[0].shape[2]), jnp.float32)
        accs = lax.fori_loop(0, w_refs[0].shape[1] // block_k, step, (zeros,) * len(w_refs))
        for acc, o_ref in zip(accs, o_refs):
            o_ref[...] = acc.sum(axis=0)  # rows 1.. are zero

    @pl.when(expert >= n_experts)
    def _():
        for o_ref in o_refs:
            o_ref[...] = jnp.zeros(o_ref.shape, jnp.float32)


def _block(size: int, largest: int) -> int | None:
    """The largest power of 2 <= largest that divides size, if >= ROWS (Triton's blocks are powers of 2)."""
    block = largest
    while block >= ROWS and size % block:
        block //= 2
    return block if block >= ROWS else None


def _block_k(dtype) -> int:
    return max(ROWS, BLOCK_K * 2 // jnp.dtype(dtype).itemsize)


def fits(d_model: int, d_ff: int) -> bool:
    """Whether in_place_mlp takes experts of these sizes (each a multiple of 16)."""
    return d_model % ROWS == 0 and d_ff % ROWS == 0


def runs_here(d_model: int, d_ff: int) -> bool:
    """Whether `gather` takes the kernel where it is being traced: on a GPU, for experts of sizes
    it takes, in code that runs per device (no mesh, or inside a shard_map over every mesh axis
    of more than one device). XLA cannot split a Pallas call over a mesh: under one (the MoE
    without an `expert` axis, its d_ff split over `tensor`) it would gather every device's
    weights for it, so the copies run there instead, which XLA does split."""
    mesh = jax.sharding.get_abstract_mesh()
    per_device = mesh.empty or all(mesh.shape[axis] == 1 or axis in mesh.manual_axes for axis in mesh.axis_names)
    return jax.default_backend() == "gpu" and fits(d_model, d_ff) and per_device


def grouped_matvec(x, weights: tuple, expert, *, interpret: bool = False) -> list:
    """x [M, K], weights: each [E, K, N], expert [M] int32 in [0, E] (E: none) -> for each weight
    float32 [M, N]: row m times its expert's matrix (zeros for no expert). K and N: multiples of 16.
    interpret: run the kernel as jnp (any backend; the CPU tests)."""
    n_rows, size = x.shape
    n_experts, _, columns = weights[0].shape
    if any(w.shape != weights[0].shape for w in weights) or weights[0].shape[1] != size or expert.shape != (n_rows,):
        raise ValueError(f"need x [M, K], weights [E, K, N] alike and expert [M]; got x {x.shape}, "
                         f"weights {[w.shape for w in weights]}, expert {expert.shape}")
    block_n, block_k = _block(columns, BLOCK_N), _block(size, _block_k(weights[0].dtype))
    if block_n is None or block_k is None:
        raise ValueError(f"grouped_matvec: K {size} and N {columns} must be multiples of {ROWS}")
    w_spec = pl.BlockSpec((n_experts, size, block_n), lambda m, n: (0, 0, n))  # -> [E, K, block_n]
    out_spec = pl.BlockSpec((None, block_n), lambda m, n: (m, n))  # -> [block_n]
    return pl.pallas_call(
        functools.partial(_kernel, block_k=block_k, n_experts=n_experts),
        grid=(n_rows, columns // block_n),
        in_specs=[pl.BlockSpec((None,), lambda m, n: (m,)),  # expert -> []
                  pl.BlockSpec((None, size), lambda m, n: (m, 0))]  # x -> [K]
                 + [w_spec] * len(weights),
        out_specs=[out_spec] * len(weights),
        out_shape=[jax.ShapeDtypeStruct((n_rows, columns), jnp.float32)] * len(weights),
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=3),
        interpret=interpret,
        name="grouped_matvec",
    )(expert.astype(jnp.int32), x, *weights)


def in_place_mlp(rows, expert, experts, activation: str, *, interpret: bool = False):
    """rows [M, D], expert [M] in [0, E] (E: none) -> each row through its expert's gated MLP
    [M, D] in rows' dtype, zeros for rows of no expert; each product rounded to rows' dtype as
    `dispatch.copies_mlp`'s. experts: w_gate, w_up [E, D, F], w_down [E, F, D]."""
    gate, up = grouped_matvec(rows, (experts["w_gate"], experts["w_up"]), expert, interpret=interpret)  # [M, F]
    hidden = ACTIVATIONS[activation](gate.astype(rows.dtype)) * up.astype(rows.dtype)  # [M, F]
    (out,) = grouped_matvec(hidden, (experts["w_down"],), expert, interpret=interpret)  # [M, D]
    return out.astype(rows.dtype)
