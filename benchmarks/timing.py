"""Wall-clock timing shared by the benchmark scripts (run as `python benchmarks/X.py`, which puts
this folder on the import path)."""

from __future__ import annotations

import math
import statistics
import time

import jax

import chimera
from chimera.runtime import bench
from chimera.runtime.cli import int_list, mesh_sizes


def median_seconds(fn, args, warmup: int = 1, repeats: int = 20) -> float:
    """Median seconds of `fn(*args)` over `repeats` device-synchronised calls, after `warmup`
    calls (the first compiles). Includes JAX's per-call dispatch (~0.1 ms on the lent GPUs)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def marginal_ms_per_step(ms_per_step: dict[int, float]) -> float | None:
    """ms per decode step between the shortest and longest generation: `ms_per_step[gen]` is bench's
    figure for a call of gen tokens (gen - 1 steps), so per-call costs cancel. None for one length."""
    short, long = min(ms_per_step), max(ms_per_step)
    if long == short:
        return None
    return (ms_per_step[long] * (long - 1) - ms_per_step[short] * (short - 1)) / (long - short)


def decode_ms_per_step(config, params, gens, repeats: int, batch: int = 1, prompt_len: int = 128, mesh=None,
                       decode_chunk: int = 1) -> dict[int, float]:
    """bench's ms per decode step for each generation length in `gens` (`marginal_ms_per_step`'s input)."""
    return {gen: bench.bench_batch(config, params, batch, prompt_len, gen, repeats, mesh=mesh,
                                   decode_chunk=decode_chunk).decode_ms_per_step for gen in gens}


def add_layout_arguments(parser):
    """The arguments of the scripts that time a config's decode calls on one device and a mesh."""
    parser.add_argument("--config", required=True)
    parser.add_argument("--mesh", type=mesh_sizes, help="also run on this mesh of the first devices")
    parser.add_argument("--no-single", action="store_true", help="skip the one-device runs")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--gens", type=int_list, default=[32, 160])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--json")


def layouts(args) -> list:
    """What `add_layout_arguments` asked to time on: None (one device) unless --no-single, then the
    --mesh over the first devices."""
    meshes = [] if args.no_single else [None]
    if args.mesh:
        meshes.append(chimera.make_mesh(**args.mesh, devices=jax.devices()[:math.prod(args.mesh.values())]))
    return meshes
