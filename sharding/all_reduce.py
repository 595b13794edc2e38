"""chimera's all-reduce: a one-shot sum over NVLink peer memory for tensor-parallel decoding.

A tensor-parallel decode step sums two small partial products a layer across the `tensor` axis
(the attention's and the MLP's output projections: 8 KB a device for one row of an 8B model).
XLA hands them to NCCL, whose fastest kernel for that size took 4.9-5.0 µs a call on 2 H200s, 65
calls a step (BENCHMARKS.md, sessions 10-11). `all_reduce.cu` does it in one kernel of ~4 µs: every
rank writes its partial sum into its peers' memory as flagged lines, waits for theirs and adds all
ranks' values in rank order (so every device holds the same bits).

It is built here with nvcc on first use (into $CHIMERA_CACHE, default ~/.cache/chimera), called
through XLA's FFI, and needs one process driving every GPU of the mesh with peer access between
them. `prepare(mesh)` readies a mesh's devices (the Engine calls it on GPU meshes split over `tensor`
alone). Programs traced `summing_on` such a mesh (the Engine's are) then send it the sums of
`row_parallel_linear` and `psum` that fit its buffers. Anywhere else (CPU, no nvcc, other meshes,
larger sums) XLA's all-reduce does them, with the same result up to the order of a float sum.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import hashlib
import importlib.metadata
import math
import os
import pathlib
import shutil
import subprocess
import tempfile
import warnings

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from chimera.runtime.linear import linear, two_row_forms

SOURCE = pathlib.Path(__file__).with_name("all_reduce.cu")
TARGET = "chimera_all_reduce"
ADD_RMS_NORM_TARGET = "chimera_add_rms_norm"  # the sum fused with the residual add and RMS norm (residual.py)
MAX_BYTES = 256 * 1024  # a device's output, at most (all_reduce.cu's kSlotBytes)
MAX_RANKS = 8  # devices a group, at most (kMaxRanks)
MAX_ROWS = 64  # rows of one add_rms_norm call, at most (kMaxRows)
MAX_ROW_BYTES = 16 * 1024  # bytes of one of its rows, at most (kRowBytes)

# Machine code for Ampere and Hopper, and Hopper's PTX for newer GPUs to compile at load: one cached
# library serves every GPU a shared home directory may meet.
ARCHITECTURES = ("-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
                 "-gencode=arch=compute_90,code=compute_90")

_prepared: set[int] = set()  # CUDA ordinals whose workspace exists
_summing_on: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("summing_on", default=None)


class Unavailable(RuntimeError):
    """chimera's all-reduce cannot run here; the message says why."""


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("CHIMERA_CACHE", pathlib.Path.home() / ".cache" / "chimera"))


def find_nvcc() -> str:
    for candidate in (shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise Unavailable("nvcc not found (on PATH or in $CUDA_HOME/bin)")


def build() -> pathlib.Path:
    """The shared library, compiled from all_reduce.cu (for ARCHITECTURES) unless the cache has it."""
    nvcc = find_nvcc()
    source = SOURCE.read_bytes()
    words = " ".join([importlib.metadata.version("jaxlib"), nvcc, *ARCHITECTURES]).encode()
    key = hashlib.sha256(source + words).hexdigest()[:16]
    library = cache_dir() / f"all_reduce-{key}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
        built = pathlib.Path(scratch) / library.name
        command = [nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", *ARCHITECTURES,
                   "-diag-suppress", "940,2473", "-I", jax.ffi.include_dir(), str(SOURCE), "-o", str(built)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            raise Unavailable(f"nvcc failed on {SOURCE.name}: {result.stderr.strip()[-1000:]}")
        built.replace(library)  # atomic: another process may be building it too
    return library


@functools.cache
def library() -> ctypes.CDLL:
    """The built library, loaded, its FFI target registered with XLA for CUDA."""
    lib = ctypes.CDLL(str(build()))
    lib.chimera_all_reduce_init.restype = ctypes.c_char_p
    lib.chimera_all_reduce_init.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    sizes = (lib.chimera_all_reduce_max_bytes(), lib.chimera_all_reduce_max_ranks(),
             lib.chimera_all_reduce_max_rows(), lib.chimera_all_reduce_max_row_bytes())
    if sizes != (MAX_BYTES, MAX_RANKS, MAX_ROWS, MAX_ROW_BYTES):
        raise Unavailable("all_reduce.cu and all_reduce.py disagree on the buffer sizes")
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.chimera_all_reduce), platform="CUDA")
    jax.ffi.register_ffi_target(ADD_RMS_NORM_TARGET, jax.ffi.pycapsule(lib.chimera_add_rms_norm), platform="CUDA")
    return lib


def prepare(mesh: Mesh) -> None:
    """Ready `mesh`'s devices for chimera's all-reduce (a workspace on each, peer access between
    them); raises Unavailable saying why it cannot."""
    devices = list(mesh.devices.flat)
    if any(device.platform != "gpu" for device in devices):
        raise Unavailable("it runs on NVIDIA GPUs only")
    if any(device.process_index != jax.process_index() for device in devices):
        raise Unavailable("one process must drive every device of the mesh (peer memory is per process)")
    if mesh.shape["tensor"] > MAX_RANKS:
        raise Unavailable(f"at most {MAX_RANKS} devices a group, the mesh has tensor={mesh.shape['tensor']}")
    ordinals = [device.local_hardware_id for device in devices]
    error = library().chimera_all_reduce_init((ctypes.c_int * len(ordinals))(*ordinals), len(ordinals))
    if error:
        raise Unavailable(error.decode())
    _prepared.update(ordinals)


def prepared(mesh: Mesh) -> bool:
    return all(device.local_hardware_id in _prepared for device in mesh.devices.flat)


def groups(mesh: Mesh) -> np.ndarray:
    """The CUDA ordinals of each group of devices along `tensor` (the innermost axis), [n_groups * tensor]."""
    return np.asarray([device.local_hardware_id for device in mesh.devices.flat], np.int64)


def sum_over_tensor(partial: jax.Array, mesh: Mesh) -> jax.Array:
    """Inside a shard_map over `mesh`: the sum of `partial` over the `tensor` axis, by the kernel."""
    return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(partial.shape, partial.dtype))(
        partial, groups=groups(mesh), group_size=np.int64(mesh.shape["tensor"]))


@contextlib.contextmanager
def summing_on(mesh: Mesh):
    """Trace `row_parallel_linear` in this context with the kernel on `mesh` (prepared), where it
    applies; the Engine traces its programs so when it prepared the kernel."""
    token = _summing_on.set(mesh)
    try:
        with two_row_forms():  # the fused kernel writes the zero row of a one-row product (residual.py)
            yield
    finally:
        _summing_on.reset(token)


def active_mesh() -> Mesh | None:
    """The mesh being traced `summing_on`, if any."""
    return _summing_on.get()


def mesh_takes(mesh) -> bool:
    """Whether sums over `tensor` on `mesh` (the one traced `summing_on`, or None) go to the kernel:
    a mesh split over `tensor` alone whose devices are prepared."""
    if mesh is None or set(mesh.axis_names) != {"data", "expert", "tensor"}:
        return False
    return mesh.shape["tensor"] > 1 and mesh.shape["data"] * mesh.shape["expert"] == 1 and prepared(mesh)


def opens_shard_map(mesh) -> bool:
    """Whether a product traced now may open a shard_map over `mesh` whose sums go to the kernel: the
    mesh `mesh_takes`, and this is traced under it (not already inside a shard_map of it)."""
    return mesh is not None and mesh.abstract_mesh == jax.sharding.get_abstract_mesh() and mesh_takes(mesh)


def size_takes(shape, dtype) -> bool:
    """Whether the kernel takes a device's sum of this shape and dtype (its buffers, 16-byte lines)."""
    n_bytes = math.prod(shape) * np.dtype(dtype).itemsize
    return np.dtype(dtype) in (np.float32, np.float16, jax.numpy.bfloat16) and n_bytes % 16 == 0 and n_bytes <= MAX_BYTES


def applies(mesh, spec: str, x, w, split: str) -> bool:
    """Whether `row_parallel_linear` takes the kernel: traced under `mesh` (`summing_on`), which it
    `mesh_takes`, `split` divided by `tensor`, and an output the kernel `size_takes`."""
    if not opens_shard_map(mesh):
        return False
    x_letters = spec.split("->")[0].split(",")[0]
    if x.shape[x_letters.index(split)] % mesh.shape["tensor"]:
        return False  # replicated (rules.py's fallback): no sum to do
    out = jax.eval_shape(functools.partial(linear, spec), x, w)
    return size_takes(out.shape, out.dtype)


def psum(partial: jax.Array, axis_name) -> jax.Array:
    """Inside a shard_map: `lax.psum(partial, axis_name)`, by the kernel when the sum is over `tensor`
    of a mesh traced `summing_on`, which it `mesh_takes`, and the kernel `size_takes` it."""
    mesh = active_mesh()
    if axis_name in ("tensor", ("tensor",)) and mesh_takes(mesh) and size_takes(partial.shape, partial.dtype):
        return sum_over_tensor(partial, mesh)
    return jax.lax.psum(partial, axis_name)


def row_parallel_linear(spec: str, x, w, split: str):
    """`linear(spec, x, w)` where `split` (a letter of `spec`, contracted) is the dimension split over
    `tensor`: each device multiplies its slice and chimera's kernel sums the partial products when it
    `applies`; otherwise XLA inserts its own all-reduce, as for any product."""
    mesh = active_mesh()
    if not applies(mesh, spec, x, w, split):
        return linear(spec, x, w)

    def local(x_slice, w_slice):
        return sum_over_tensor(linear(spec, x_slice, w_slice), mesh)

    return jax.shard_map(local, mesh=mesh, in_specs=split_specs(spec, split), out_specs=PartitionSpec(),
                         check_vma=False)(x, w)


def split_specs(spec: str, split: str) -> tuple[PartitionSpec, PartitionSpec]:
    """The PartitionSpecs of x and w in `spec` with the letter `split` over `tensor`, the rest whole."""
    x_letters, w_letters = spec.split("->")[0].split(",")
    return (PartitionSpec(*("tensor" if letter == split else None for letter in x_letters)),
            PartitionSpec(*("tensor" if letter == split else None for letter in w_letters)))


def choice(environ=os.environ) -> str:
    """CHIMERA_ALL_REDUCE: "chimera" (the default: the kernel where it applies) or "xla" (never)."""
    value = environ.get("CHIMERA_ALL_REDUCE", "chimera")
    if value not in ("chimera", "xla"):
        raise ValueError(f"CHIMERA_ALL_REDUCE must be 'chimera' or 'xla', got {value!r}")
    return value


def prepare_if_wanted(mesh: Mesh, environ=os.environ) -> bool:
    """`prepare(mesh)` for a GPU mesh split over `tensor` alone unless CHIMERA_ALL_REDUCE=xla; a
    warning, and XLA's all-reduce, when it cannot. Returns whether the kernel is ready."""
    if choice(environ) == "xla" or mesh.shape["tensor"] == 1 or mesh.shape["data"] * mesh.shape["expert"] != 1:
        return False
    if any(device.platform != "gpu" for device in mesh.devices.flat):
        return False
    try:
        prepare(mesh)
    except Unavailable as e:
        warnings.warn(f"chimera's all-reduce is unavailable ({e}); XLA's all-reduce sums the tensor-parallel "
                      "products (CHIMERA_ALL_REDUCE=xla chooses that without trying)", stacklevel=3)
        return False
    return True
