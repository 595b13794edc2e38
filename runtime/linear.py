"""Projections by a weight matrix, written so that XLA lowers a one-row product as a GEMM.

A decode step at batch 1 multiplies a single row: x [1, 1, K] by W [K, N]. XLA's GPU
simplifier "strength-reduces" such a matrix-vector product to an elementwise multiply and a
reduction when it is small ((1 + N) x K below 10M elements: the k/v projections of an 8B model,
every attention projection of a 1B one, and most of a layer once tensor parallelism splits it).
On an H200 that reduction ran 2-3x slower than the GEMM (0.35-0.63 vs 0.85-1.5 TB/s on the
weight, `benchmarks/matvec_lowering.py`). Two rows are not a vector, so a single row is
padded with a zero row, multiplied, and the zero row's result dropped: a few KB more of work.

XLA fuses that pad into the kernel that makes the row, except where a custom call makes it
(chimera's fused sum + residual add + RMS norm, sharding/residual.py): there the pad is a kernel
of its own, ~1.2 µs twice a layer on 2 H200s. Such a call writes the zero row itself and says so
(`remember_two_rows`); `linear` then multiplies its two rows as they are.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax.numpy as jnp

# id(x) -> (x, its two rows) for the rows remembered while tracing `two_row_forms`; x is kept, so its id is not reused
_two_rows: contextvars.ContextVar[dict | None] = contextvars.ContextVar("two_rows", default=None)


def linear(spec: str, x, w):
    """`jnp.einsum(spec, x, w)` for x [B, T, ...] (B and T leading, as `spec` names them): the
    same product, computed over two rows when B x T is 1 (see the module docstring)."""
    if x.shape[0] * x.shape[1] != 1:
        return jnp.einsum(spec, x, w)
    return jnp.einsum(spec, two_rows(x), w)[:1]


def two_rows(x):
    """A one-row x [1, 1, ...] as two rows [2, 1, ...], row 1 zeros: the form `remember_two_rows`
    was given for x, else x padded."""
    known = (_two_rows.get() or {}).get(id(x))
    if known is not None and known[0] is x:
        return known[1]
    return jnp.pad(x, [(0, 1)] + [(0, 0)] * (x.ndim - 1))


def remember_two_rows(x, rows) -> None:
    """Within `two_row_forms`: `rows` [2, 1, ...] is x [1, 1, ...] over a zero row (made by the
    kernel that made x), for `linear` to multiply instead of padding x. Elsewhere nothing."""
    if x.shape[:2] != (1, 1) or rows.shape != (2,) + x.shape[1:] or rows.dtype != x.dtype:
        raise ValueError(f"two rows of {x.shape} {x.dtype} must be {(2,) + x.shape[1:]} {x.dtype}, "
                         f"got {rows.shape} {rows.dtype}")
    known = _two_rows.get()
    if known is not None:
        known[id(x)] = (x, rows)


@contextlib.contextmanager
def two_row_forms():
    """Trace in this context for `linear` to take the two rows `remember_two_rows` is given (the
    Engine's programs on a mesh chimera's all-reduce sums on are: all_reduce.summing_on)."""
    token = _two_rows.set({})
    try:
        yield
    finally:
        _two_rows.reset(token)
