"""Projections by a weight matrix, written so that XLA lowers a one-row product as a GEMM.

A decode step at batch 1 multiplies a single row: x [1, 1, K] by W [K, N]. XLA's GPU
simplifier "strength-reduces" such a matrix-vector product to an elementwise multiply and a
reduction when it is small ((1 + N) x K below 10M elements: the k/v projections of an 8B model,
every attention projection of a 1B one, and some of a layer once tensor parallelism splits it).
On an H200 that reduction ran 2-3x slower than the GEMM (0.35-0.63 vs 0.85-1.5 TB/s on the
weight, `benchmarks/matvec_lowering.py`). Two rows are not a vector, so such a single row is
padded with a zero row, multiplied, and the zero row's result dropped: a few KB more of work.
Larger products stay one row: XLA keeps them GEMMs, and the pad would be a kernel of its own
where the row comes from a custom call (sharding/residual.py's fused norm).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

STRENGTH_REDUCED_BELOW = 10_000_000  # (1 + N) x K elements: XLA's GPU simplifier threshold


def linear(spec: str, x, w):
    """`jnp.einsum(spec, x, w)` for x [B, T, ...] (B and T leading, as `spec` names them): the
    same product, computed over two rows when B x T is 1 and XLA would strength-reduce it."""
    return linears(spec, x, w)[0]


def linears(spec: str, x, *weights) -> list:
    """`[linear(spec, x, w) for w in weights]`, the zero row added to x once for all of them when any
    would be strength-reduced: XLA then merges the products of one input into one GEMM (the attention's
    q, k and v), which it does not for a one-row product beside two-row ones."""
    if x.shape[0] * x.shape[1] != 1 or not any(strength_reduced(spec, w) for w in weights):
        return [jnp.einsum(spec, x, w) for w in weights]
    padded = jnp.pad(x, [(0, 1)] + [(0, 0)] * (x.ndim - 1))  # [2, 1, ...]: row 1 is zeros
    # XLA's simplifier may move the slice into a product, making it one row again (seen where the row
    # comes from a custom call): the barrier keeps each product two rows.
    return [jax.lax.optimization_barrier(jnp.einsum(spec, padded, w))[:1] for w in weights]


def strength_reduced(spec: str, w) -> bool:
    """Whether XLA's GPU simplifier makes a one-row product by w a reduction: (1 + N) x K below
    STRENGTH_REDUCED_BELOW, N the size of w's output dimensions, K of those it contracts (per
    batch dimension: those x, w and the output share)."""
    inputs, output = spec.split("->")
    x_letters, w_letters = inputs.split(",")
    sizes = dict(zip(w_letters, w.shape))
    contracted = math.prod(sizes[letter] for letter in w_letters if letter in x_letters and letter not in output)
    kept = math.prod(sizes[letter] for letter in w_letters if letter not in x_letters)
    return (1 + kept) * contracted < STRENGTH_REDUCED_BELOW
