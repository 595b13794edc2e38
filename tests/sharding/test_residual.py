"""sharding/residual.py: a block's output left unreduced over `tensor` and finished by the model (the
sum, the residual add and the RMS norm in one kernel). The kernel needs NVIDIA GPUs with peer access
(checked on them: benchmarks/all_reduce.py, gpu_runs.sh); here `lax.psum`, then runtime/norm.py's
add and norm, stand in for it inside the same shard_map (tests/sharding/conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera
from chimera.sharding import all_reduce, residual
from sharding_cases import MAX_LEN, NEW_TOKENS, PROMPTS, greedy_tokens, random_params, tensor_mesh

SPEC = "btf,fd->btd"


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


def test_an_output_is_unreduced_only_under_the_kernel(psum_for_kernel):
    rng = np.random.default_rng(0)
    x, w = jnp.asarray(rng.standard_normal((1, 1, 64)), jnp.float32), jnp.asarray(rng.standard_normal((64, 32)), jnp.float32)
    assert isinstance(residual.row_parallel_output(SPEC, x, w, split="f"), jax.Array)  # no mesh traced
    mesh = tensor_mesh(2)

    def output(x, w):
        with all_reduce.summing_on(mesh):
            return residual.row_parallel_output(SPEC, x, w, split="f")

    with jax.set_mesh(mesh):
        y = jax.jit(output)(x, w)  # an Unreduced is a pytree: it leaves jit
        assert isinstance(y, residual.Unreduced) and y.partials.shape == (2, 1, 1, 1, 32)  # one split: K is small
        total = residual.finished(y)
    np.testing.assert_allclose(np.asarray(total), np.asarray(x @ w), rtol=1e-5, atol=1e-5)
    assert residual.finished(total) is total


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
    assert psum_for_kernel.fused == [(1, 3, 1, 32)]
    # float64 from the same rounded inputs; bfloat16's tolerance is its rounding (XLA may keep the sum
    # in float32 into the norm: xla_allow_excess_precision)
    tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    want_after = f64(before) + np.einsum(SPEC, f64(x), f64(w))
    want_normed = want_after / np.sqrt(np.mean(want_after ** 2, axis=-1, keepdims=True) + 1e-6) * f64(weight)
    np.testing.assert_allclose(f64(after), want_after, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(f64(normed), want_normed, rtol=tolerance, atol=tolerance)


def test_what_one_kernel_takes():
    def fuses(rows, width, dtype=jnp.bfloat16, weight_dtype=None, output_dtype=None):
        before = jax.ShapeDtypeStruct((rows, 1, width), dtype)
        partials = jax.ShapeDtypeStruct((2, 1, rows, 1, width), output_dtype or dtype)
        weight = jax.ShapeDtypeStruct((width,), weight_dtype or dtype)
        y = residual.Unreduced(partials, tensor_mesh(2), np.dtype(output_dtype or dtype), rows)
        return residual.fuses(before, y, weight)

    assert fuses(1, 4096) and fuses(all_reduce.MAX_ROWS, 8192) and fuses(16, 4096, jnp.float32)
    assert not fuses(all_reduce.MAX_ROWS + 1, 4096)  # more rows than its workspace holds
    assert not fuses(1, 8200)  # a row over MAX_ROW_BYTES
    assert not fuses(1, 4100)  # a row of 8200 bytes: not in 16-byte lines
    assert not fuses(1, 4096, jnp.float32, weight_dtype=jnp.bfloat16)
    assert not fuses(1, 4096, output_dtype=jnp.float32)
    assert not fuses(1, 4096, jnp.int32)


def test_splits_for_a_one_row_product():
    assert [residual.splits_for(rows) for rows in (2048, 7168, 14336, 4096, 1024, 1000, 512)] == [4, 8, 8, 8, 2, 1, 1]


@pytest.mark.parametrize("spec,x_shape,w_shape", [("btd,df->btf", (1, 1, 2048), (2048, 96)),
                                                  ("bthk,hkd->btd", (1, 1, 8, 256), (8, 256, 64))])
def test_split_product_is_the_product(spec, x_shape, w_shape):
    """The K-splits' float32 partial products sum to the product (float64 from the same inputs); row 1,
    the zero row, is zeros."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal(w_shape) / 32, jnp.bfloat16)
    assert residual.splits_fit(spec, x, w)
    partials = residual.split_product(spec, x, w, 4)
    assert partials.shape == (4, 2) + partials.shape[2:] and partials.dtype == jnp.float32
    want = np.einsum(spec, np.asarray(x, np.float64), np.asarray(w, np.float64))
    np.testing.assert_allclose(np.asarray(partials[:, :1].sum(axis=0), np.float64), want, rtol=1e-5, atol=1e-5)
    assert not np.any(np.asarray(partials[:, 1]))
    assert residual.split_sum(partials, 1, jnp.bfloat16).dtype == jnp.bfloat16


def test_decoding_with_split_outputs_equals_one_device(monkeypatch, psum_for_kernel):
    """With K-splits forced on the tiny model (at least 8 rows of W a split), every fused call takes
    float32 splits and the tokens are one device's."""
    monkeypatch.setattr(residual, "MIN_SPLIT_ROWS", 8)
    model = chimera.build(chimera.load_config("llama-tiny"))
    params = random_params(model)

    def tokens(mesh):  # one prompt: one-row decode steps
        engine = chimera.Engine(model, params, max_batch=1, max_len=MAX_LEN, mesh=mesh)
        return engine.generate(PROMPTS[:1], max_new_tokens=NEW_TOKENS)[0].tokens

    assert tokens(tensor_mesh(2)) == tokens(None)
    one_row = [shape for shape in psum_for_kernel.fused if shape[-3] * shape[-2] <= 2]
    assert one_row and all(shape[0] > 1 for shape in one_row)
