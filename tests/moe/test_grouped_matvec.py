"""The in-place grouped one-row products (a Pallas kernel, run as jnp on the CPU) against float64
numpy, and `gather` taking them on a GPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from chimera.moe import dispatch, grouped_matvec
from chimera.sharding.mesh import make_mesh
from chimera.moe.mlp import ACTIVATIONS


def silu64(h):
    return h / (1 + np.exp(-h))


@pytest.mark.parametrize("size, columns", [(32, 64), (48, 80)])  # 48, 80: blocks of 16 (no 64 or 256 divides)
def test_products_equal_float64(size, columns):
    """Row m times its expert's matrix for two weights at once; a row of expert E (none) is zeros."""
    rng = np.random.default_rng(0)
    n_experts = 4
    x = rng.normal(size=(5, size)).astype(np.float32)
    weights = [rng.normal(size=(n_experts, size, columns)).astype(np.float32) for _ in range(2)]
    expert = np.array([2, 0, n_experts, 2, 3], np.int32)
    out = grouped_matvec.grouped_matvec(jnp.asarray(x), tuple(map(jnp.asarray, weights)), jnp.asarray(expert),
                                        interpret=True)
    for got, w in zip(out, weights):
        want = np.stack([x[m].astype(np.float64) @ w[e] if e < n_experts else np.zeros(columns)
                         for m, e in enumerate(expert)])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_mlp_equals_float64_and_gather():
    """in_place_mlp == the gated MLP in float64 and == copies_mlp on the rows it routes."""
    rng = np.random.default_rng(1)
    n_experts, d_model, d_ff = 3, 32, 48
    experts = {"w_gate": rng.normal(size=(n_experts, d_model, d_ff)) * d_model ** -0.5,
               "w_up": rng.normal(size=(n_experts, d_model, d_ff)) * d_model ** -0.5,
               "w_down": rng.normal(size=(n_experts, d_ff, d_model)) * d_ff ** -0.5}
    rows = rng.normal(size=(4, d_model))
    expert = np.array([0, 0, 2, n_experts])  # sorted, as gather's rows; the last routed nowhere
    got = grouped_matvec.in_place_mlp(jnp.asarray(rows, jnp.float32), jnp.asarray(expert, jnp.int32),
                                      {k: jnp.asarray(v, jnp.float32) for k, v in experts.items()}, "silu",
                                      interpret=True)
    want = np.zeros_like(rows)
    for m, e in enumerate(expert[:3]):
        hidden = silu64(rows[m] @ experts["w_gate"][e]) * (rows[m] @ experts["w_up"][e])
        want[m] = hidden @ experts["w_down"][e]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    sizes = jnp.asarray(np.bincount(expert, minlength=n_experts + 1)[:n_experts], jnp.int32)
    copies = dispatch.copies_mlp(jnp.asarray(rows, jnp.float32), sizes,
                                  {k: jnp.asarray(v, jnp.float32) for k, v in experts.items()}, "silu")
    np.testing.assert_allclose(got[:3], copies[:3], rtol=1e-5, atol=1e-5)


@pytest.fixture
def kernel_calls(monkeypatch):
    """The backend said to be a GPU, the kernel run as jnp: the list of the rows' shapes it was called with."""
    calls, kernel = [], grouped_matvec.in_place_mlp

    def kernel_as_jnp(*args):
        calls.append(args[0].shape)
        return kernel(*args, interpret=True)

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(grouped_matvec, "in_place_mlp", kernel_as_jnp)
    return calls


def test_gather_takes_the_kernel_on_a_gpu(kernel_calls):
    """With the backend a GPU, `gather` runs the kernel (here as jnp): rows past the groups come out
    zero instead of going through the last expert; sizes the kernel cannot block keep the copies."""
    rng = np.random.default_rng(2)
    experts = {"w_gate": jnp.asarray(rng.normal(size=(2, 16, 32)), jnp.float32),
               "w_up": jnp.asarray(rng.normal(size=(2, 16, 32)), jnp.float32),
               "w_down": jnp.asarray(rng.normal(size=(2, 32, 16)), jnp.float32)}
    rows = jnp.asarray(rng.normal(size=(3, 16)), jnp.float32)
    out = dispatch.gather_mlp(rows, jnp.array([1, 1], jnp.int32), experts, "silu")  # row 2: no expert
    assert kernel_calls == [(3, 16)]
    np.testing.assert_array_equal(out[2], 0)
    w = {k: np.asarray(v, np.float64) for k, v in experts.items()}
    for m in range(2):  # row m: expert m
        x = np.asarray(rows[m], np.float64)
        want = (silu64(x @ w["w_gate"][m]) * (x @ w["w_up"][m])) @ w["w_down"][m]
        np.testing.assert_allclose(out[m], want, rtol=1e-5, atol=1e-4)
    odd = {k: v[:, :12, :12] for k, v in experts.items()}  # 12: not a multiple of 16
    dispatch.gather_mlp(rows[:, :12], jnp.array([1, 1], jnp.int32), odd, "silu")
    assert kernel_calls == [(3, 16)]


def test_gather_under_a_mesh_takes_the_kernel_per_device_only(kernel_calls):
    """Under a mesh XLA partitions (tensor=2: the MoE without an `expert` axis) the Pallas call would
    need every device's weights, so the copies run; inside a shard_map over the mesh (the
    expert-parallel body) the kernel runs on each device's own experts."""
    mesh = make_mesh(tensor=2, devices=jax.devices()[:2])
    rng = np.random.default_rng(3)
    experts = {"w_gate": jnp.asarray(rng.normal(size=(2, 16, 32)), jnp.float32),
               "w_up": jnp.asarray(rng.normal(size=(2, 16, 32)), jnp.float32),
               "w_down": jnp.asarray(rng.normal(size=(2, 32, 16)), jnp.float32)}
    rows, sizes = jnp.asarray(rng.normal(size=(2, 16)), jnp.float32), jnp.array([1, 1], jnp.int32)
    alone = dispatch.gather_mlp(rows, sizes, experts, "silu")
    assert kernel_calls == [(2, 16)]
    with jax.set_mesh(mesh):
        partitioned = jax.jit(dispatch.gather_mlp, static_argnums=3)(rows, sizes, experts, "silu")
        assert kernel_calls == [(2, 16)]
        per_device = jax.jit(jax.shard_map(lambda r, s, e: dispatch.gather_mlp(r, s, e, "silu"), mesh=mesh,
                                           in_specs=(P(), P(), P()), out_specs=P(), check_vma=False))(
            rows, sizes, experts)
        assert kernel_calls == [(2, 16), (2, 16)]
    np.testing.assert_allclose(partitioned, alone, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(per_device, alone, rtol=1e-5, atol=1e-5)


def test_blocks_and_refusals():
    assert grouped_matvec.fits(4096, 14336) and grouped_matvec.fits(2048, 1408) and grouped_matvec.fits(16, 48)
    assert not grouped_matvec.fits(4096, 1400) and not grouped_matvec.fits(12, 64)
    x, w = jnp.zeros((2, 40)), jnp.zeros((3, 40, 64))
    with pytest.raises(ValueError, match="multiples of 16"):
        grouped_matvec.grouped_matvec(x, (w,), jnp.zeros((2,), jnp.int32), interpret=True)
    with pytest.raises(ValueError, match="expert \\[M\\]"):
        grouped_matvec.grouped_matvec(x[:, :32], (w[:, :32],), jnp.zeros((3,), jnp.int32), interpret=True)
