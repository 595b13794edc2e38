"""runtime/linear.py: the einsum it stands for, whatever the row count; one row multiplied as two, the
zero row a kernel wrote if it remembered one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chimera.runtime.linear import linear, remember_two_rows, two_row_forms

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


def pads(fn, *args) -> bool:
    """Whether fn's jaxpr pads anything (jnp.pad is a jit of its own holding a `pad`)."""
    return "pad[" in str(jax.make_jaxpr(fn)(*args))


def test_a_row_remembered_with_its_zero_row_is_multiplied_as_those_two_rows():
    """Within `two_row_forms` a one-row x whose two rows a kernel wrote (`remember_two_rows`) goes
    to the product as those rows, not padded again; the product's row is x's."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((1, 1, 16)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((16, 4)), jnp.float32)

    def product(rows):  # rows [2, 1, 16]: x over a zero row, as the fused kernel writes them
        row = rows[:1]
        remember_two_rows(row, rows)
        return linear("btd,df->btf", row, w)

    rows = jnp.concatenate([x, jnp.zeros_like(x)])
    with two_row_forms():
        assert not pads(lambda rows: product(rows), rows)
        got = product(rows)
    np.testing.assert_allclose(np.asarray(got), np.asarray(x) @ np.asarray(w), rtol=1e-5, atol=1e-5)
    # outside the context the row is padded as any other (a new function: jax caches a function's trace)
    assert pads(lambda rows: product(rows), rows)


def test_remembered_rows_must_be_the_row_over_one_more():
    x = jnp.ones((1, 1, 8))
    with two_row_forms():
        for rows in (jnp.ones((3, 1, 8)), jnp.ones((2, 1, 4)), jnp.ones((2, 1, 8), jnp.bfloat16)):
            with pytest.raises(ValueError, match="two rows of"):
                remember_two_rows(x, rows)
        with pytest.raises(ValueError, match="two rows of"):
            remember_two_rows(jnp.ones((2, 1, 8)), jnp.ones((3, 1, 8)))
