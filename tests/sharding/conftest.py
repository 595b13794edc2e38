"""Fixtures of the sharding tests."""

import jax
import pytest

from chimera.sharding import all_reduce


@pytest.fixture
def psum_for_kernel(monkeypatch):
    """Every mesh counts as prepared and the kernel's sum is `lax.psum`; returns the list of the
    shapes it summed."""
    summed = []

    def psum(partial, mesh):
        summed.append(partial.shape)
        return jax.lax.psum(partial, "tensor")

    monkeypatch.setattr(all_reduce, "prepared", lambda mesh: True)
    monkeypatch.setattr(all_reduce, "prepare_if_wanted", lambda mesh: True)
    monkeypatch.setattr(all_reduce, "sum_over_tensor", psum)
    return summed
