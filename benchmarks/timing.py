"""Wall-clock timing shared by the benchmark scripts (run as `python benchmarks/X.py`, which puts
this folder on the import path)."""

from __future__ import annotations

import statistics
import time

import jax

from chimera.runtime import bench


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
