"""sharding/embedding.py: the vocab-split lookup equals plain indexing, on 8 CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera
from chimera.sharding.embedding import lookup


@pytest.mark.parametrize("mesh_sizes, vocab", [(dict(tensor=2, data=4), 64), (dict(tensor=8), 64),
                                               (dict(tensor=8), 60)])  # 60: not split, plain path
def test_lookup_equals_indexing(mesh_sizes, vocab):
    mesh = chimera.make_mesh(**mesh_sizes)
    table = jax.random.normal(jax.random.key(0), (vocab, 16))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, vocab, (8, 5)), jnp.int32)
    tokens = tokens.at[0, :].set(jnp.array([0, vocab - 1, vocab // 2, vocab // 2 - 1, vocab // 2 + 1]))
    with jax.set_mesh(mesh):
        rows = jax.jit(lookup)(table, tokens)
    np.testing.assert_array_equal(np.asarray(rows), np.asarray(table)[np.asarray(tokens)])
