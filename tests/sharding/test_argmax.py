"""Greedy argmax over vocab-split logits through chimera's all-reduce (sharding/argmax.py), with
`lax.psum` standing in for the kernel (tests/sharding/conftest.py), against `jnp.argmax`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chimera.sharding import all_reduce
from chimera.sharding.argmax import argmax
from sharding_cases import tensor_mesh


def logits_with_edge_cases(vocab):
    """[6, vocab] float32: random rows, a tie across slices, a tie within one, a NaN, an all -inf row."""
    logits = np.random.default_rng(0).standard_normal((6, vocab)).astype(np.float32)
    logits[1, [3, vocab - 2]] = 9.0  # the same maximum in the first and last slice
    logits[2, [vocab // 2 + 1, vocab // 2 + 3]] = 9.0  # twice in one slice
    logits[3, vocab - 1] = np.nan  # NaN counts as the largest
    logits[3, 5] = 50.0
    logits[4] = -np.inf
    logits[5, vocab // 2:] += 100.0  # the winner in a later slice
    return logits


@pytest.mark.parametrize("tensor", [2, 4, 8])
def test_argmax_equals_jnp_argmax(tensor, psum_for_kernel):
    logits = logits_with_edge_cases(64)
    mesh = tensor_mesh(tensor)
    with jax.set_mesh(mesh), all_reduce.summing_on(mesh):
        got = jax.jit(argmax)(logits)
    assert psum_for_kernel == [(tensor, 6, 2)], "the kernel's path was not taken"
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.argmax(logits, axis=-1)))


def test_argmax_without_the_kernel_is_jnp_argmax(psum_for_kernel):
    logits = logits_with_edge_cases(64)
    np.testing.assert_array_equal(np.asarray(argmax(logits)), np.asarray(jnp.argmax(logits, axis=-1)))
    mesh = tensor_mesh(4)
    with jax.set_mesh(mesh), all_reduce.summing_on(mesh):  # 62 does not split 4 ways
        np.testing.assert_array_equal(np.asarray(jax.jit(argmax)(logits[:, :62])),
                                      np.asarray(jnp.argmax(logits[:, :62], axis=-1)))
    assert psum_for_kernel == []
