"""XLA options for decoding on GPUs: the decode loop as CUDA graphs, collectives included.

A tensor-parallel decode step is ~65 graph segments and ~65 all-reduces per GPU. With XLA's
defaults each starts on its own (the collectives on a second stream, synchronised by events),
and a traced llama-3-8b tensor=2 step on 2 H200s sat idle ~630 µs per GPU between kernels, only
~140 µs of it waiting for the host to launch (BENCHMARKS.md). These options let XLA capture the
all-reduces (NCCL's: XLA's own one-shot all-reduce kernel cannot be captured in JAX 0.11's XLA,
so it is turned off) and the loop itself into CUDA graphs, so a step starts once. Captured
collectives run synchronously on the compute stream.

Two ways to apply them, both used by default:
- per program: `Engine` compiles its decode loop with `decode_compiler_options` (jit's
  `compiler_options`), which covers the compile-time choices (NCCL instead of the one-shot
  kernel, synchronous collectives, NCCL's symmetric buffers for one-row tensor-parallel steps);
- per process: `set_xla_flags` appends GPU_DECODE_OPTIONS (not the one-row options, which slow
  other programs) to XLA_FLAGS before the first backend starts. Only this way did the full gain
  show (llama-3-8b tensor=2 batch 1: 3.62 ms a step with XLA's defaults, 3.52 with per-program
  options, 3.30 with XLA_FLAGS), so part of the capture is decided from the process's flags at
  run time; the `chimera` CLI calls it. With NCCL_GRAPH_MIXING_SUPPORT=0 in the environment both
  capture every collective (CAPTURE_ALL_COLLECTIVES, below): a sharded decode loop is then one graph.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import subprocess
import sys
import warnings

import jax

GPU_DECODE_OPTIONS = {
    "xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,CONDITIONAL,"
                                     "COLLECTIVES,WHILE",
    "xla_gpu_enable_collectives_command_buffer_filter": "ALLREDUCE",
    "xla_gpu_experimental_use_collective_kernels": "",
    "xla_gpu_disable_async_collectives": "ALLREDUCE,ALLGATHER",
    "xla_gpu_graph_min_graph_size": 1,
}

# NCCL (>= 2.27) has low-latency symmetric-memory kernels for buffers that every rank registered at
# the same offset; XLA allocates the collectives' buffers that way with this option. Per step, in
# one lease of 2 H200s (BENCHMARKS.md): llama-3-8b tensor=2 batch 1 3.20 -> 2.96 ms, but batch 16
# 3.53 -> 3.67 and an 8-layer Mixtral over expert=2 4.03 -> 4.35 (batch 1) and 3.68 -> 4.23 (16).
# So only programs whose all-reduces carry one row's activation get it, and never process-wide.
ONE_ROW_TENSOR_PARALLEL_OPTIONS = {"xla_gpu_experimental_enable_nccl_symmetric_buffers": True}

# NCCL's default graph-mixing support orders every captured collective against uncaptured NCCL calls
# through extra graph nodes, which a graph holding a whole loop (a CUDA conditional node) cannot
# contain: with the decode step's all-gather captured as well as its all-reduces, the loop's graph
# fails to instantiate (CUDA_ERROR_INVALID_VALUE), so a sharded loop runs step by step from the host
# with only its all-reduces captured. With NCCL_GRAPH_MIXING_SUPPORT=0 in the environment (the user's
# choice, before NCCL starts) NCCL requires instead that no uncaptured NCCL call is issued while a
# graph launch holding NCCL calls is unfinished ("stream ordering is not sufficient"), so chimera then
# captures every collective (CAPTURE_ALL_COLLECTIVES) and the loop is one graph. On 2 H200s
# (BENCHMARKS.md, session 10; one lease, runs alternated), per step over 127 new tokens: llama-3-8b
# tensor=2 batch 1 3.06 -> 2.83 ms, batch 16 3.53 -> 3.30; Mixtral (8 layers) over expert=2, 63 new
# tokens: batch 1 4.04 -> 3.66, batch 16 3.71 -> 3.76; another lease showed no gain. It stays the
# user's choice: XLA runs the first execution of each command buffer uncaptured (a warm-up), which
# NCCL's condition does not allow for while another graph runs. The Engine waits for each program's
# inputs first when the variable is set (`Engine.settle`); programs of the user's own are not covered.
# A mesh split over `tensor` alone no longer needs it: chimera's all-reduce (sharding/all_reduce.py)
# leaves no NCCL call in such a decode loop, which XLA then captures whole under NCCL's default.
CAPTURE_ALL_COLLECTIVES = {"xla_gpu_enable_collectives_command_buffer_filter": "ALLCOLLECTIVES"}

# jaxlibs whose XLA was seen to accept every option (on the GPU machines, session 7): not asked again
ACCEPTING_JAXLIBS = ("0.11.2",)


def as_xla_flags(options: dict) -> list[str]:
    """Options as XLA_FLAGS words: `--name=value`, booleans as XLA spells them (true/false)."""
    return [f"--{name}={str(value).lower() if isinstance(value, bool) else value}" for name, value in options.items()]


def xla_flags_error(options: dict) -> str:
    """What XLA says when a process starts with `options` in XLA_FLAGS ("" when it accepts them),
    asked of a child process (~2-4 s): an option XLA does not parse aborts the process."""
    environ = {**os.environ, "XLA_FLAGS": " ".join(as_xla_flags(options)), "JAX_PLATFORMS": "cpu"}
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=environ, capture_output=True,
                           text=True, timeout=300)
    return "" if probe.returncode == 0 else probe.stderr.strip()[-500:] or f"exit {probe.returncode}"


@functools.cache
def jax_knows_options() -> bool:
    """Whether this jaxlib's XLA accepts every option chimera may use (GPU_DECODE_OPTIONS and
    ONE_ROW_TENSOR_PARALLEL_OPTIONS). An unknown option fails a compile, and in XLA_FLAGS aborts
    the process; XLA drops options between releases (jaxlib 0.11.2's binaries still name three it
    no longer parses). So: no below 0.11 (which lacks some), yes for ACCEPTING_JAXLIBS, and for
    any other XLA is asked (`xla_flags_error`), once per process (only GPU machines ask).
    CAPTURE_ALL_COLLECTIVES is asked with them (its filter value is the newer one)."""
    version = importlib.metadata.version("jaxlib")
    if tuple(int(part) for part in version.split(".")[:2] if part.isdigit()) < (0, 11):
        return False
    if version in ACCEPTING_JAXLIBS:
        return True
    error = xla_flags_error(GPU_DECODE_OPTIONS | CAPTURE_ALL_COLLECTIVES | ONE_ROW_TENSOR_PARALLEL_OPTIONS)
    if error:
        warnings.warn("this XLA does not accept chimera's GPU decode options (runtime/gpu_options.py); decoding "
                      f"with XLA's defaults. XLA said: {error[-300:]}", stacklevel=2)
    return not error


def cuda_plugin_installed() -> bool:
    """Whether a JAX CUDA plugin is installed: the options concern NVIDIA GPUs only."""
    names = ((distribution.metadata["Name"] or "").lower() for distribution in importlib.metadata.distributions())
    return any(re.fullmatch(r"jax[-_]cuda\d+[-_](plugin|pjrt)", name) for name in names)


def nccl_graph_mixing_off(environ=os.environ) -> bool:
    """Whether NCCL runs without graph-mixing support (NCCL reads its environment when the first
    communicator starts, after the decode programs compile)."""
    return environ.get("NCCL_GRAPH_MIXING_SUPPORT") == "0"


def gpu_decode_options(environ=os.environ) -> dict:
    """GPU_DECODE_OPTIONS, capturing every collective when NCCL runs without graph-mixing support."""
    options = dict(GPU_DECODE_OPTIONS)
    if nccl_graph_mixing_off(environ):
        options |= CAPTURE_ALL_COLLECTIVES
    return options


def default_compiler_options(devices) -> dict:
    """The options the Engine compiles its decode loop with on these devices: `gpu_decode_options`
    on GPUs with a jaxlib that knows them, else none."""
    on_gpu = all(device.platform == "gpu" for device in devices)
    return gpu_decode_options() if on_gpu and jax_knows_options() else {}


def one_row_tensor_parallel(mesh, batch: int) -> bool:
    """Whether a decode program of `batch` rows on `mesh` is the measured case for
    ONE_ROW_TENSOR_PARALLEL_OPTIONS: one row, split over `tensor` only."""
    return (mesh is not None and batch == 1 and mesh.shape["tensor"] > 1
            and mesh.shape["data"] == mesh.shape["expert"] == 1)


def decode_compiler_options(mesh, batch: int) -> dict:
    """The options chimera compiles a decode program of `batch` rows with: `default_compiler_options`
    for the mesh's devices (the default device without one), plus ONE_ROW_TENSOR_PARALLEL_OPTIONS
    where they help."""
    options = default_compiler_options(jax.devices()[:1] if mesh is None else mesh.devices.flat)
    if options and one_row_tensor_parallel(mesh, batch):
        options |= ONE_ROW_TENSOR_PARALLEL_OPTIONS
    return options


def set_xla_flags(environ=os.environ) -> bool:
    """Append `gpu_decode_options` to XLA_FLAGS, keeping any flag already set there. XLA reads
    XLA_FLAGS once, when the first backend starts, so this does nothing (and returns False)
    once a backend runs, without a CUDA plugin (the options only concern GPUs), or with an XLA
    that does not accept them (`jax_knows_options`)."""
    from jax._src import xla_bridge  # no public "have backends started" in JAX
    if xla_bridge.backends_are_initialized() or not cuda_plugin_installed() or not jax_knows_options():
        return False
    flags = environ.get("XLA_FLAGS", "").split()
    already = {flag.split("=")[0].lstrip("-") for flag in flags}
    flags += as_xla_flags({name: value for name, value in gpu_decode_options(environ).items() if name not in already})
    environ["XLA_FLAGS"] = " ".join(flags)
    return True
