"""runtime/linear.py: the einsum it stands for, whatever the row count; one row multiplied as two."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chimera.runtime.linear import linear, linears

SPECS = [("btd,df->btf", (3, 8), (8, 5)), ("btd,dhk->bthk", (3, 8), (8, 2, 4)), ("bthk,hkd->btd", (3, 2, 4), (2, 4, 6))]


@pytest.mark.parametrize("rows", [(1, 1), (1, 3), (2, 1), (4, 5)])
@pytest.mark.parametrize("spec,x_tail,w_shape", SPECS, ids=[spec for spec, _, _ in SPECS])
def test_linear_is_the_einsum(spec, x_tail, w_shape, rows):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(rows + x_tail[1:]).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    got = linear(spec, jnp.asarray(x), jnp.asarray(w))
    want = np.einsum(spec, x.astype(np.float64), w.astype(np.float64))
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def dot_row_counts(fn, *args) -> list[int]:
    """The leading (row) dimension of every dot's left operand in fn's jaxpr."""
    jaxpr = jax.make_jaxpr(fn)(*args)
    return [eqn.invars[0].aval.shape[0] for eqn in jaxpr.eqns if eqn.primitive.name == "dot_general"]


def test_one_row_is_multiplied_as_two():
    """A [1, 1, K] row reaches XLA as a two-row product (not a vector it would strength-reduce);
    more rows are left alone."""
    w = jnp.ones((16, 4))
    assert dot_row_counts(lambda x: linear("btd,df->btf", x, w), jnp.ones((1, 1, 16))) == [2]
    assert dot_row_counts(lambda x: linear("btd,df->btf", x, w), jnp.ones((1, 3, 16))) == [1]
    assert dot_row_counts(lambda x: linear("btd,df->btf", x, w), jnp.ones((4, 1, 16))) == [4]


def test_one_row_stays_one_where_xla_keeps_a_gemm():
    """Only products XLA would strength-reduce ((1 + N) x K below 10M) get the zero row: above it the
    pad would be a kernel of its own for nothing."""
    row = jax.ShapeDtypeStruct((1, 1, 4096), jnp.bfloat16)

    def rows_for(spec, w_shape, x=row):
        return dot_row_counts(lambda x, w: linear(spec, x, w), x, jax.ShapeDtypeStruct(w_shape, jnp.bfloat16))

    assert rows_for("btd,df->btf", (4096, 3072)) == [1]  # (1 + 3072) x 4096 = 12.6M: llama-3-8b's q/k/v at tensor=2
    assert rows_for("btd,df->btf", (4096, 2440)) == [2]  # 10.0M - 4096: just below
    assert rows_for("btd,df->btf", (4096, 2441)) == [1]  # 10.0M exactly and above
    heads = jax.ShapeDtypeStruct((1, 1, 16, 128), jnp.bfloat16)
    assert rows_for("bthk,hkd->btd", (16, 128, 4096), heads) == [2]  # K = 16 x 128 contracted: 8.4M


def test_products_of_one_input_share_the_zero_row():
    """q, k and v of one row: all two rows when any would be strength-reduced (XLA merges them), else all one."""
    def rows_for(*w_shapes):
        weights = [jax.ShapeDtypeStruct(shape, jnp.bfloat16) for shape in w_shapes]
        return dot_row_counts(lambda x, *ws: linears("btd,dhk->bthk", x, *ws),
                              jax.ShapeDtypeStruct((1, 1, 4096), jnp.bfloat16), *weights)

    assert rows_for((4096, 32, 128), (4096, 8, 128), (4096, 8, 128)) == [2, 2, 2]  # k and v: 4.2M each
    assert rows_for((4096, 32, 128), (4096, 32, 128)) == [1, 1]  # 16.8M each
