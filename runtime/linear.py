"""Projections by a weight matrix, written so that XLA lowers a one-row product as a GEMM.

A decode step at batch 1 multiplies a single row: x [1, 1, K] by W [K, N]. XLA's GPU
simplifier "strength-reduces" such a matrix-vector product to an elementwise multiply and a
reduction when it is small ((1 + N) x K below 10M elements: the k/v projections of an 8B model,
every attention projection of a 1B one, and most of a layer once tensor parallelism splits it).
On an H200 that reduction ran 2-3x slower than the GEMM (0.35-0.63 vs 0.85-1.5 TB/s on the
weight, `benchmarks/matvec_lowering.py`). Two rows are not a vector, so a single row is
padded with a zero row, multiplied, and the zero row's result dropped: a few KB more of work.
"""

from __future__ import annotations

import jax.numpy as jnp


def linear(spec: str, x, w):
    """`jnp.einsum(spec, x, w)` for x [B, T, ...] (B and T leading, as `spec` names them): the
    same product, computed over two rows when B x T is 1 (see the module docstring)."""
    if x.shape[0] * x.shape[1] != 1:
        return jnp.einsum(spec, x, w)
    padded = jnp.pad(x, [(0, 1)] + [(0, 0)] * (x.ndim - 1))  # [2, 1, ...]: row 1 is zeros
    return jnp.einsum(spec, padded, w)[:1]
