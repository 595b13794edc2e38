"""One-row products by chimera's CUDA kernel (gemv.cu) instead of XLA's GEMM.

XLA lowers a one-row product x [1, K] . W [K, N] as a split-K Triton GEMM over x and a zero row
(runtime/linear.py), then sums the splits in a kernel of its own; on 2 H200s those GEMMs ran the
tensor-parallel o and down products at 2.7-3.9 TB/s, with a ~1.3 µs reduction after each (BENCHMARKS.md,
session 12). gemv.cu reads W in one kernel that sums its splits itself and starts reading W before the
kernel before it has finished.

Used by `linear` for a product it `takes`: one row on a Hopper GPU, where XLA need not partition the
product (no mesh, or inside a shard_map), x's contracted dimensions leading W's; CHIMERA_GEMV=xla turns
it off. Built with nvcc on first use (runtime/nvcc.py).
"""

from __future__ import annotations

import ctypes
import functools
import os
import pathlib
import warnings

import jax
import numpy as np

from chimera.runtime import nvcc

SOURCE = pathlib.Path(__file__).with_name("gemv.cu")
TARGET = "chimera_gemv"
TILE_BYTES = 128  # of a row of W, a thread block's columns (gemv.cu's kLanes x 16)
DTYPES = (np.dtype(jax.numpy.bfloat16), np.dtype(np.float16), np.dtype(np.float32))


def choice(environ=os.environ) -> str:
    """CHIMERA_GEMV: "chimera" (the kernel where it applies) or "xla" (never)."""
    value = environ.get("CHIMERA_GEMV", "xla")
    if value not in ("chimera", "xla"):
        raise ValueError(f"CHIMERA_GEMV must be 'chimera' or 'xla', got {value!r}")
    return value


@functools.cache
def library() -> ctypes.CDLL:
    """The built library, its kernels loaded, its FFI target registered with XLA for CUDA."""
    lib = ctypes.CDLL(str(nvcc.build(SOURCE)))
    status = lib.chimera_gemv_load()
    if status:
        raise nvcc.Unavailable(f"loading gemv.cu's kernels failed (CUDA error {status})")
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.chimera_gemv), platform="CUDA")
    return lib


@functools.cache
def available() -> bool:
    """Whether the kernel runs here: every device a Hopper (or newer) GPU, the library built."""
    if jax.default_backend() != "gpu":
        return False
    if any(float(getattr(device, "compute_capability", 0)) < 9 for device in jax.local_devices()):
        return False
    try:
        library()
    except nvcc.Unavailable as e:
        warnings.warn(f"chimera's one-row product is unavailable ({e}); XLA's GEMM computes it", stacklevel=3)
        return False
    return True


def layout_fits(spec: str, x_shape, w_shape) -> bool:
    """Whether `spec` multiplies x [B, T, c...] by W [c..., n...] into [B, T, n...]: x's contracted
    dimensions are W's leading ones, in order, so W is a row-major [K, N] matrix."""
    inputs, output = spec.split("->")
    x_letters, w_letters = inputs.split(",")
    contracted = x_letters[2:]
    return (len(x_letters) == len(x_shape) and len(w_letters) == len(w_shape)
            and w_letters.startswith(contracted) and output == x_letters[:2] + w_letters[len(contracted):]
            and tuple(x_shape[2:]) == tuple(w_shape[:len(contracted)]))


def takes(spec: str, x, w) -> bool:
    """Whether `linear(spec, x, w)` is the kernel's: one row, one supported dtype, W's layout as
    `layout_fits`, whole 128-byte tiles of columns, no partitioning for XLA to do, the kernel here."""
    if x.shape[0] * x.shape[1] != 1 or np.dtype(x.dtype) != np.dtype(w.dtype) or np.dtype(x.dtype) not in DTYPES:
        return False
    if not layout_fits(spec, x.shape, w.shape):
        return False
    columns = w.size // x.size  # N
    if columns * np.dtype(w.dtype).itemsize % TILE_BYTES:
        return False
    mesh = jax.sharding.get_abstract_mesh()
    if not (mesh.empty or mesh.are_all_axes_manual):
        return False
    return choice() == "chimera" and available()


def product(spec: str, x, w):
    """`jnp.einsum(spec, x, w)` by the kernel, for a product it `takes`."""
    out_shape = jax.eval_shape(functools.partial(jax.numpy.einsum, spec), x, w).shape
    return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(out_shape, x.dtype))(x, w)
