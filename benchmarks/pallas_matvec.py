"""An experiment (session 8, BENCHMARKS.md): one-row products x [K] @ W [K, N] as a Pallas
(Triton) kernel, optionally with the RMS norm that precedes a projection computed inside it.
Not used by chimera: in a llama-3-8b decode step on an H200 it ran slower than XLA's GEMMs
(`benchmarks/matvec_kernel.py`). Kept, tested, as the starting point of a fused decode layer.

A batch-1 decode step is a chain of one-row products, each preceded by small kernels XLA does
not fuse into its GEMMs (~16 of them a layer, ~1.3 µs each). `rms_norm_matvec` reads x,
normalises it and multiplies in one kernel, which would remove the norm's reduce and multiply
kernels in front of the qkv and gate/up products.

Grid (N / block_n, splits). Program (n, s) multiplies rows s * K/splits ... (s + 1) * K/splits
of W's column block n, `block_k` rows at a time, and writes its float32 partial sums; the
caller sums the splits (XLA fuses that sum into whatever consumes the product, as it does for
its own split-K GEMMs). Splitting K gives a product with few columns enough programs to keep
every SM reading. W is read in its own [K, N] layout: a column block is `block_n` contiguous
elements of each row.

Triton's dot wants both operands >= 16 rows: x's slice is the first row of a [16, block_k]
operand whose other rows are zero (memory-bound work: the idle rows cost no reads).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

ROWS = 16  # Triton's smallest dot operand


def _as_rows(x):
    """x [block_k] -> [ROWS, block_k]: x in row 0, zeros below."""
    rows = lax.broadcasted_iota(jnp.int32, (ROWS, x.shape[0]), 0)
    return jnp.where(rows == 0, x[None, :], jnp.zeros((), x.dtype))


def _partial_product(load_x, w_ref, o_ref, *, block_k: int):
    """o_ref [block_n] = sum over this program's rows k of x[k] * w_ref[k, :], in float32.
    load_x(start) -> x[start : start + block_k] as w's dtype; w_ref [K / splits, block_n]."""
    def step(i, acc):  # acc [ROWS, block_n] float32
        start = pl.multiple_of(i * block_k, block_k)
        w = w_ref[pl.ds(start, block_k), :]  # [block_k, block_n]
        return acc + plgpu.dot(_as_rows(load_x(start)), w, allow_tf32=False)

    acc = lax.fori_loop(0, w_ref.shape[0] // block_k, step, jnp.zeros((ROWS, w_ref.shape[1]), jnp.float32))
    o_ref[...] = acc.sum(axis=0)  # rows 1.. are zero


def _matvec_kernel(x_ref, w_ref, o_ref, *, block_k: int):
    """x_ref [K / splits] (this split's slice), w_ref [K / splits, block_n], o_ref [block_n]."""
    _partial_product(lambda start: x_ref[pl.ds(start, block_k)].astype(w_ref.dtype), w_ref, o_ref,
                     block_k=block_k)


def _rms_norm_matvec_kernel(x_ref, g_ref, w_ref, o_ref, *, block_k: int, eps: float):
    """x_ref, g_ref [K] (whole: every program needs x's norm); w_ref [K / splits, block_n]."""
    size = x_ref.shape[0]
    padded = pl.next_power_of_2(size)  # Triton's tensors have power-of-2 sizes
    # One load of all of x (a few KB): a loop of block loads here put its latency before every product.
    x = plgpu.load(x_ref.at[pl.ds(0, padded)], mask=jnp.arange(padded) < size, other=0).astype(jnp.float32)
    inv_rms = lax.rsqrt(jnp.sum(x * x) / size + eps)
    first = pl.program_id(1) * w_ref.shape[0]

    def load_x(start):  # runtime.norm.rms_norm's roundings: normalised in float32, cast, times g in x's dtype
        at = pl.ds(first + start, block_k)
        normalised = (x_ref[at].astype(jnp.float32) * inv_rms).astype(x_ref.dtype)
        return (g_ref[at].astype(jnp.float32) * normalised.astype(jnp.float32)).astype(x_ref.dtype).astype(w_ref.dtype)

    _partial_product(load_x, w_ref, o_ref, block_k=block_k)


def _check(x, w, block_n: int, block_k: int, splits: int):
    if x.ndim != 1 or w.ndim != 2 or x.shape[0] != w.shape[0]:
        raise ValueError(f"need x [K] and w [K, N], got x {x.shape} and w {w.shape}")
    size, columns = w.shape
    for name, value in (("block_n", block_n), ("block_k", block_k)):
        if value < ROWS or value & (value - 1):
            raise ValueError(f"{name} must be a power of 2 >= {ROWS}, got {value}")
    if columns % block_n:
        raise ValueError(f"block_n {block_n} does not divide N {columns}")
    if splits < 1 or size % (splits * block_k):
        raise ValueError(f"splits x block_k ({splits} x {block_k}) must divide K {size}")


def _call(kernel, operands, x_specs, w, *, block_n: int, splits: int, num_warps: int, num_stages: int,
          interpret: bool, name: str):
    size, columns = w.shape
    return pl.pallas_call(
        kernel,
        grid=(columns // block_n, splits),
        in_specs=x_specs + [pl.BlockSpec((size // splits, block_n), lambda n, s: (s, n))],  # w -> [K/splits, bn]
        out_specs=pl.BlockSpec((None, block_n), lambda n, s: (s, n)),  # -> [block_n]
        out_shape=jax.ShapeDtypeStruct((splits, columns), jnp.float32),
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name=name,
    )(*operands, w)  # [splits, N]


@functools.partial(jax.jit, static_argnames=("block_n", "block_k", "splits", "num_warps", "num_stages",
                                             "interpret"))
def matvec(x, w, *, block_n: int = 64, block_k: int = 256, splits: int = 1, num_warps: int = 4,
           num_stages: int = 3, interpret: bool = False):
    """x [K] @ w [K, N] -> float32 partial sums [splits, N] (their sum over axis 0 is the product).
    block_n, block_k: powers of 2 >= 16 dividing N and K / splits. interpret: run as jnp (any backend)."""
    _check(x, w, block_n, block_k, splits)
    x_spec = pl.BlockSpec((x.shape[0] // splits,), lambda n, s: (s,))  # -> this split's [K/splits]
    return _call(functools.partial(_matvec_kernel, block_k=block_k), (x,), [x_spec], w, block_n=block_n,
                 splits=splits, num_warps=num_warps, num_stages=num_stages, interpret=interpret, name="matvec")


@functools.partial(jax.jit, static_argnames=("eps", "block_n", "block_k", "splits", "num_warps", "num_stages",
                                             "interpret"))
def rms_norm_matvec(x, norm_weight, w, *, eps: float, block_n: int = 64, block_k: int = 256, splits: int = 1,
                    num_warps: int = 4, num_stages: int = 3, interpret: bool = False):
    """`runtime.norm.rms_norm(x, norm_weight, eps) @ w` for x, norm_weight [K], w [K, N] -> float32
    partial sums [splits, N], as `matvec`."""
    _check(x, w, block_n, block_k, splits)
    if norm_weight.shape != x.shape:
        raise ValueError(f"norm_weight must have x's shape {x.shape}, got {norm_weight.shape}")
    whole = pl.BlockSpec((x.shape[0],), lambda n, s: (0,))
    return _call(functools.partial(_rms_norm_matvec_kernel, block_k=block_k, eps=eps), (x, norm_weight),
                 [whole, whole], w, block_n=block_n, splits=splits, num_warps=num_warps, num_stages=num_stages,
                 interpret=interpret, name="rms_norm_matvec")
