"""benchmarks/pallas_matvec.py (the Pallas one-row product, interpreted on the CPU) against a
float64 numpy product and chimera's own norm + projection; benchmarks/matvec_kernel.py's
in-model substitute for `runtime.linear.linear`."""

import functools
import importlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chimera.runtime.linear import linear
from chimera.runtime.norm import rms_norm

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


@pytest.fixture
def kernels(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their siblings
    return importlib.import_module("pallas_matvec")


def draw(k, n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(k).astype(np.float32), (1 + 0.2 * rng.standard_normal(k)).astype(np.float32),
            rng.standard_normal((k, n)).astype(np.float32))


@pytest.mark.parametrize("splits", [1, 4])
def test_matvec_partials_sum_to_the_product(kernels, splits):
    x, _, w = draw(256, 96)
    partials = kernels.matvec(jnp.asarray(x), jnp.asarray(w), block_n=32, block_k=32, splits=splits,
                              interpret=True)
    assert partials.shape == (splits, 96) and partials.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(partials).sum(0), x.astype(np.float64) @ w, rtol=1e-5, atol=1e-4)


def test_rms_norm_matvec_float32_matches_float64(kernels):
    x, g, w = draw(192, 64, seed=1)  # K not a power of 2: the norm's load is masked
    partials = kernels.rms_norm_matvec(jnp.asarray(x), jnp.asarray(g), jnp.asarray(w), eps=1e-5, block_n=16,
                                       block_k=64, splits=3, interpret=True)
    x64 = x.astype(np.float64)
    expected = (x64 / np.sqrt(np.mean(x64 * x64) + 1e-5) * g) @ w
    np.testing.assert_allclose(np.asarray(partials).sum(0), expected, rtol=1e-5, atol=1e-4)


def test_rms_norm_matvec_bfloat16_rounds_as_rms_norm(kernels):
    """In bf16 the kernel rounds the normalised x and its product with the weight as
    `runtime.norm.rms_norm` does, so it equals rms_norm + a float32-accumulated product
    up to summation order."""
    x, g, w = (jnp.asarray(a, jnp.bfloat16) for a in draw(256, 64, seed=2))
    got = kernels.rms_norm_matvec(x, g, w, eps=1e-5, block_n=32, block_k=64, splits=2, interpret=True).sum(0)
    expected = jnp.einsum("k,kn->n", rms_norm(x, g, 1e-5), w, preferred_element_type=jnp.float32)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    ({"block_n": 24}, "block_n must be a power of 2"),
    ({"block_n": 64}, "does not divide N"),
    ({"block_k": 64, "splits": 3}, "must divide K"),
])
def test_bad_block_shapes_are_refused(kernels, kwargs, message):
    x, _, w = draw(128, 32)
    with pytest.raises(ValueError, match=message):
        kernels.matvec(jnp.asarray(x), jnp.asarray(w), **({"block_n": 16, "block_k": 32} | kwargs), interpret=True)


def test_one_row_kernel_linear_equals_linear(kernels, monkeypatch):
    """The in-model substitute gives `linear`'s product for the blocks' projection specs."""
    harness = importlib.import_module("matvec_kernel")
    monkeypatch.setattr(harness, "matvec", functools.partial(kernels.matvec, interpret=True))
    monkeypatch.setattr(harness, "heuristic_config", lambda k, n, rule: {"block_n": 16, "block_k": 16, "splits": 2})
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (1, 1, 64))
    heads = jax.random.normal(keys[1], (1, 1, 4, 16))
    for spec, lhs, w in [("btd,dhk->bthk", x, jax.random.normal(keys[2], (64, 4, 16))),
                         ("bthk,hkd->btd", heads, jax.random.normal(keys[3], (4, 16, 64))),
                         ("btd,df->btf", x, jax.random.normal(keys[2], (64, 32)))]:
        got = harness.one_row_kernel_linear(spec, lhs, w)
        np.testing.assert_allclose(np.asarray(got), np.asarray(linear(spec, lhs, w)), rtol=1e-5, atol=1e-5)


def test_heuristic_config_fits_every_llama_product(kernels):
    harness = importlib.import_module("matvec_kernel")
    for k, n in [(4096, 4096), (4096, 1024), (4096, 14336), (14336, 4096), (2048, 4096), (7168, 4096)]:
        config = harness.heuristic_config(k, n)
        assert n % config["block_n"] == 0 and k % (config["splits"] * config["block_k"]) == 0


def test_replace_linear_reaches_every_block_product(monkeypatch):
    """decode_loop's experiments swap the products of every block module that makes one."""
    import chimera.attention.attention
    import chimera.attention.mla
    import chimera.moe.mlp
    import chimera.sharding.all_reduce
    import chimera.sharding.residual
    harness = importlib.import_module("matvec_kernel")
    modules = (chimera.attention.attention, chimera.attention.mla, chimera.moe.mlp, chimera.sharding.all_reduce,
               chimera.sharding.residual)
    for module in modules:
        monkeypatch.setattr(module, "linear", module.linear)
    calls = []
    harness.replace_linear(lambda spec, x, w: calls.append(spec) or w)
    assert all(module.linear("s", None, 1) == 1 for module in modules)
    assert calls == ["s"] * len(modules)
