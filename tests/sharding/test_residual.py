"""sharding/residual.py: a block's output left unreduced over `tensor` and finished by the model (the
sum, the residual add and the RMS norm in one kernel). The kernel needs NVIDIA GPUs with peer access
(checked on them: benchmarks/all_reduce.py, gpu_runs.sh); here `lax.psum`, then runtime/norm.py's
add and norm, stand in for it inside the same shard_map (tests/sharding/conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera
from chimera.runtime.linear import linear
from chimera.sharding import all_reduce, residual
from sharding_cases import MAX_LEN, NEW_TOKENS, PROMPTS, greedy_tokens, random_params, tensor_mesh

SPEC = "btf,fd->btd"


def reference_add_rms_norm(x, w, before, weight, eps=1e-6):
    """float64 from the same rounded inputs: (before + x . w, its RMS norm times weight)."""
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    after = f64(before) + np.einsum(SPEC, f64(x), f64(w))
    return after, after / np.sqrt(np.mean(after ** 2, axis=-1, keepdims=True) + eps) * f64(weight)


@pytest.mark.parametrize("preset,fused", [("llama-tiny", True), ("deepseek-moe-tiny", True),
                                          ("local-global-tiny", False), ("rwkv7-tiny", False)])
def test_decoding_equals_one_device(preset, fused, psum_for_kernel):
    """llama: every layer's sums fused; deepseek-moe: the shared expert's output summed for the MoE to
    add; local-global (post-norms) and rwkv7 (layer norm, no row-parallel output): sums alone."""
    model = chimera.build(chimera.load_config(preset))
    params = random_params(model)
    want = greedy_tokens(model, params)
    assert greedy_tokens(model, params, tensor_mesh(2)) == want
    assert bool(psum_for_kernel.fused) == fused


@pytest.mark.parametrize("preset", ["llama-tiny", "deepseek-moe-tiny"])
def test_one_row_decoding_equals_one_device(preset, psum_for_kernel):
    """One prompt: every step a single row, whose zero row the fused norm writes for the next products and
    whose output projections are K-splits (deepseek-moe: the shared expert's, summed for the MoE to add)."""
    model = chimera.build(chimera.load_config(preset))
    params = random_params(model)

    def tokens(mesh=None):
        engine = chimera.Engine(model, params, max_batch=1, max_len=MAX_LEN, mesh=mesh)
        return engine.generate(PROMPTS[:1], max_new_tokens=NEW_TOKENS)[0].tokens

    want = tokens()
    assert tokens(tensor_mesh(2)) == want
    # the decode steps' one-row sums, each device's partial as float32 K-splits
    assert (residual.SPLITS, 2, model.config.d_model) in psum_for_kernel.fused


def test_a_one_row_norm_hands_the_next_product_its_zero_row(psum_for_kernel):
    """Of one row the kernel writes the zero row under the normed row and the next product multiplies
    both as they are: nothing pads the kernel's output."""
    rng = np.random.default_rng(2)
    mesh = tensor_mesh(2)
    x = jnp.asarray(rng.standard_normal((1, 1, 64)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((64, 32)) / 8, jnp.float32)
    before = jnp.asarray(rng.standard_normal((1, 1, 32)), jnp.float32)
    weight = jnp.asarray(rng.standard_normal(32), jnp.float32)
    w_next = jnp.asarray(rng.standard_normal((32, 16)), jnp.float32)

    def step(x, w, before, weight, w_next):
        with all_reduce.summing_on(mesh):
            y = residual.row_parallel_output(SPEC, x, w, split="f")
            _, normed = residual.add_rms_norm(before, y, weight, 1e-6)
            return linear("btd,de->bte", normed, w_next)

    with jax.set_mesh(mesh):
        outer = jax.make_jaxpr(step)(x, w, before, weight, w_next).eqns
        got = jax.jit(step)(x, w, before, weight, w_next)
    # the pads left are inside the shard_maps: x's for the partial products, the stand-in's zero row
    assert [eqn.primitive.name for eqn in outer] == ["shard_map", "shard_map", "slice", "dot_general", "slice"]
    _, normed = reference_add_rms_norm(x, w, before, weight)
    np.testing.assert_allclose(np.asarray(got, np.float64), normed @ np.asarray(w_next, np.float64),
                               rtol=1e-5, atol=1e-5)


def test_an_output_is_unreduced_only_under_the_kernel(psum_for_kernel):
    rng = np.random.default_rng(0)
    x, w = jnp.asarray(rng.standard_normal((1, 1, 64)), jnp.float32), jnp.asarray(rng.standard_normal((64, 32)), jnp.float32)
    assert isinstance(residual.row_parallel_output(SPEC, x, w, split="f"), jax.Array)  # no mesh traced
    mesh = tensor_mesh(2)

    def output(x, w):
        with all_reduce.summing_on(mesh):
            return residual.row_parallel_output(SPEC, x, w, split="f")

    rows = jnp.asarray(rng.standard_normal((3, 1, 64)), jnp.float32)
    with jax.set_mesh(mesh):
        y = jax.jit(output)(x, w)  # an Unreduced is a pytree: it leaves jit
        # one row: each device's K-splits over its 32 of K, above the zero row's
        assert isinstance(y, residual.Unreduced) and y.partials.shape == (2, residual.SPLITS, 2, 32)
        total = residual.finished(y)
        y_rows = jax.jit(output)(rows, w)
        assert y_rows.splits == 1 and y_rows.partials.shape == (2, 3, 1, 32)
        total_rows = residual.finished(y_rows)
    np.testing.assert_allclose(np.asarray(total), np.asarray(x @ w), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(total_rows), np.asarray(rows @ w), rtol=1e-5, atol=1e-5)
    assert residual.finished(total) is total


@pytest.mark.parametrize("spec,x_shape,w_shape", [("btf,fd->btd", (1, 1, 48), (48, 16)),
                                                  ("bthk,hkd->btd", (1, 1, 4, 6), (4, 6, 16))])
def test_split_product_is_the_one_row_product_by_slices_of_k(spec, x_shape, w_shape):
    """The down form and the attention output's (two contracted letters): [splits, 2, D] float32, the
    splits adding up to the product, row 1 the zero row's."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal(w_shape), jnp.bfloat16)
    assert residual.split_count(spec, x, n_ranks=1) == residual.SPLITS
    splits = residual.split_product(x, w, residual.SPLITS)
    assert splits.shape == (residual.SPLITS, 2, 16) and splits.dtype == jnp.float32
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    want = np.einsum(spec, f64(x), f64(w)).reshape(16)
    np.testing.assert_allclose(f64(splits[:, 0]).sum(axis=0), want, rtol=1e-5, atol=1e-5)
    k_slices = f64(x).reshape(residual.SPLITS, -1), f64(w).reshape(residual.SPLITS, -1, 16)
    np.testing.assert_allclose(f64(splits[:, 0]), np.einsum("sk,skd->sd", *k_slices), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(splits[:, 1]), 0)


def test_split_count_takes_one_row_products_of_a_divisible_k_only():
    row, rows = jnp.zeros((1, 1, 64)), jnp.zeros((2, 1, 64))
    assert residual.split_count("btf,fd->btd", row, n_ranks=2) == residual.SPLITS
    assert residual.split_count("btf,fd->btd", rows, n_ranks=2) == 1  # more than one row: XLA's product
    assert residual.split_count("btf,fd->btd", jnp.zeros((1, 1, 36)), n_ranks=2) == 1  # 18 a device
    assert residual.split_count("btf,df->btd", row, n_ranks=2) == 1  # K does not start w


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_add_rms_norm_is_the_sum_the_add_and_the_norm(dtype, psum_for_kernel):
    rng = np.random.default_rng(1)
    mesh = tensor_mesh(4)
    x = jnp.asarray(rng.standard_normal((3, 1, 64)), dtype)
    w = jnp.asarray(rng.standard_normal((64, 32)) / 8, dtype)
    before = jnp.asarray(rng.standard_normal((3, 1, 32)), dtype)
    weight = jnp.asarray(rng.standard_normal(32), dtype)

    def fused(x, w, before, weight):
        with all_reduce.summing_on(mesh):
            return residual.add_rms_norm(before, residual.row_parallel_output(SPEC, x, w, split="f"), weight, 1e-6)

    with jax.set_mesh(mesh):
        after, normed = jax.jit(fused)(x, w, before, weight)
    assert psum_for_kernel.fused == [(3, 1, 32)]
    # float64 from the same rounded inputs; bfloat16's tolerance is its rounding (XLA may keep the sum
    # in float32 into the norm: xla_allow_excess_precision)
    tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    want_after, want_normed = reference_add_rms_norm(x, w, before, weight)
    np.testing.assert_allclose(f64(after), want_after, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(f64(normed), want_normed, rtol=tolerance, atol=tolerance)


def test_what_one_kernel_takes():
    def fuses(rows, width, dtype=jnp.bfloat16, weight_dtype=None, partial_dtype=None):
        before = jax.ShapeDtypeStruct((rows, 1, width), dtype)
        partials = jax.ShapeDtypeStruct((2, rows, 1, width), partial_dtype or dtype)
        weight = jax.ShapeDtypeStruct((width,), weight_dtype or dtype)
        return residual.fuses(before, residual.Unreduced(partials, tensor_mesh(2)), weight)

    assert fuses(1, 4096) and fuses(all_reduce.MAX_ROWS, 8192) and fuses(16, 4096, jnp.float32)
    assert not fuses(all_reduce.MAX_ROWS + 1, 4096)  # more rows than its workspace holds
    assert not fuses(1, 8200)  # a row over MAX_ROW_BYTES
    assert not fuses(1, 4100)  # a row of 8200 bytes: not in 16-byte lines
    assert not fuses(1, 4096, jnp.float32, weight_dtype=jnp.bfloat16)
    assert not fuses(1, 4096, partial_dtype=jnp.float32)
    assert not fuses(1, 4096, jnp.int32)
