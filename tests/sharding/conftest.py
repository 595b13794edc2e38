"""Fixtures of the sharding tests."""

import jax
import jax.numpy as jnp
import pytest

from chimera.runtime.norm import rms_norm
from chimera.sharding import all_reduce, residual


class Summed(list):
    """The shapes the kernel's sum took; `fused`: those its sum + residual add + RMS norm took."""

    def __init__(self):
        super().__init__()
        self.fused = []


@pytest.fixture
def psum_for_kernel(monkeypatch):
    """Every mesh counts as prepared, and `lax.psum` stands in for the kernels' sums (then the
    residual add and norm as runtime/norm.py computes them, and the zero rows asked for); returns a
    `Summed`."""
    summed = Summed()

    def psum(partial, mesh):
        summed.append(partial.shape)
        return jax.lax.psum(partial, "tensor")

    def psum_add_rms_norm(partial, before, weight, eps, mesh, zero_rows=0, splits=1):
        summed.fused.append(partial.shape)
        if splits > 1:  # [S, 2, D] float32 K-splits of one row
            partial = residual.sum_of_splits(partial, jax.ShapeDtypeStruct(before.shape, before.dtype))
        after = before + jax.lax.psum(partial, "tensor")
        normed = rms_norm(after, weight, eps)
        return after, jnp.pad(normed, [(0, zero_rows)] + [(0, 0)] * (normed.ndim - 1))

    monkeypatch.setattr(all_reduce, "prepared", lambda mesh: True)
    monkeypatch.setattr(all_reduce, "prepare_if_wanted", lambda mesh: True)
    monkeypatch.setattr(all_reduce, "sum_over_tensor", psum)
    monkeypatch.setattr(residual, "sum_add_rms_norm", psum_add_rms_norm)
    return summed
