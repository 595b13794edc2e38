"""`chimera bench`: prefill and decode speed of a config with random weights, as ratios
to the device's physical limits (MBU for decode, MFU for prefill).

Times come from the Engine's own jitted prefill and decode loop, synchronised on the
device, warm-up (compilation) excluded, median of repeats.
"""

from __future__ import annotations

import dataclasses
import datetime
import statistics
import time

import jax
import numpy as np

from chimera.architectures.config import ModelConfig
from chimera.runtime import costs
from chimera.runtime.engine import STOP_SLOTS, Engine, bucket
from chimera.runtime.model import build
from chimera.runtime.sampling import Sampling
from chimera.sharding.init import draw_params

# device kind substring -> (spec memory bandwidth B/s, dense bf16 FLOP/s)
PEAKS = {"H200": (4.8e12, 989e12), "H100": (3.35e12, 989e12)}


def device_peaks(device) -> tuple[float | None, float | None]:
    for name, peaks in PEAKS.items():
        if name in device.device_kind:
            return peaks
    return None, None


@dataclasses.dataclass
class BenchResult:
    batch: int
    prompt_len: int
    gen: int
    compile_s: float
    prefill_ms: float
    decode_ms_per_step: float
    tokens_per_s: float
    bytes_per_step: int
    achieved_gb_s: float
    mbu: float | None
    prefill_flops: float
    prefill_tflop_s: float
    mfu: float | None
    compiler_options: dict  # the decode program's XLA options


def _timed(fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def bench_batch(config: ModelConfig, params, batch: int, prompt_len: int, gen: int, repeats: int,
                seed: int = 0, prefill_chunk: int = 2048, mesh=None, cache_len: int | None = None,
                decode_chunk: int = 1, compiler_options: dict | None = None) -> BenchResult:
    model = build(config)
    needed = prompt_len + gen
    if cache_len is not None and cache_len < needed:
        raise ValueError(f"cache_len {cache_len} is smaller than prompt {prompt_len} + gen {gen}")
    engine = Engine(model, params, max_batch=batch, max_len=max(needed, cache_len or 0), prefill_chunk=prefill_chunk,
                    mesh=mesh, decode_chunk=decode_chunk,
                    compiler_options=compiler_options)
    rng = np.random.default_rng(seed)
    tokens = np.zeros((batch, engine.pad_width(prompt_len)), np.int32)
    tokens[:, :prompt_len] = rng.integers(0, config.vocab_size, (batch, prompt_len), dtype=np.int32)
    lengths = np.full((batch,), prompt_len, np.int32)
    active = np.ones((batch,), bool)
    row_ids = np.arange(batch, dtype=np.int32)
    no_stop = np.full((STOP_SLOTS,), -1, np.int32)
    # By default the cache is sized to the request, as `generate` sizes it; a larger one shows
    # whether a step's cost follows the filled context or the cache.
    cache_len = cache_len or engine.cache_len(needed)
    greedy = Sampling()

    def prefill():
        return engine.prefill_prompts(tokens, lengths, cache_len, row_ids, np.int32(0), greedy)

    def decode(state, first):
        return engine.decode(engine.params, state, first, active, row_ids, np.int32(0), no_stop, np.int32(gen),
                             out_len=bucket(gen, 16), sampling=greedy)

    # Warm-up: the first calls compile; on a GPU XLA runs a program's command buffers (its CUDA graphs)
    # uncaptured at their first call and records them at the second, so two calls of each come
    # before the timed ones. Nothing may compile after them: loading any new program makes XLA drop
    # every recorded graph (np.min of a device array compiled a reduction here, and on 2 H200s the
    # timed tensor=2 calls then ran uncaptured and recorded again: ~13 ms a call, BENCHMARKS.md
    # session 18), so the tokens are checked on the host.
    (state, first), prefill_first = _timed(prefill)
    compiling, decode_first = _timed(lambda: decode(state, first))
    counts = [np.asarray(compiling[1])]  # [B] tokens each row produced
    del compiling, state, first  # released, as after the timed calls below
    state, first = prefill()
    counts.append(np.asarray(decode(state, first)[1]))
    del state, first
    for produced in counts:
        if int(produced.min()) != gen:
            raise RuntimeError(f"decode produced {produced} tokens, expected {gen} for every row")

    # Each call's outputs are released before the next, as `generate` releases them: outputs kept
    # alive make the next call's land elsewhere, and XLA then re-records the loop's CUDA graph
    # (BENCHMARKS.md, session 10).
    prefill_times, decode_times = [], []
    for _ in range(repeats):
        (state, first), seconds = _timed(prefill)
        prefill_times.append(seconds)
        decode_times.append(_timed(lambda: decode(state, first))[1])
        del state, first
    prefill_s = statistics.median(prefill_times)
    step_s = statistics.median(decode_times) / (gen - 1)  # the loop runs gen-1 steps after prefill's token

    # With a mesh the peaks are those of all its devices: MBU and MFU are then per device.
    n_devices = 1 if mesh is None else mesh.size
    bandwidth, flop_rate = device_peaks(jax.devices()[0])
    bandwidth, flop_rate = bandwidth and bandwidth * n_devices, flop_rate and flop_rate * n_devices
    step_bytes = costs.decode_bytes_per_step(model, batch, prompt_len + gen // 2)
    flops = costs.prefill_flops(model, batch, prompt_len)
    return BenchResult(
        batch=batch, prompt_len=prompt_len, gen=gen,
        compile_s=prefill_first + decode_first - prefill_s - step_s * (gen - 1),
        prefill_ms=prefill_s * 1e3,
        decode_ms_per_step=step_s * 1e3,
        tokens_per_s=batch / step_s,
        bytes_per_step=step_bytes,
        achieved_gb_s=step_bytes / step_s / 1e9,
        mbu=step_bytes / step_s / bandwidth if bandwidth else None,
        prefill_flops=flops,
        prefill_tflop_s=flops / prefill_s / 1e12,
        mfu=flops / prefill_s / flop_rate if flop_rate else None,
        compiler_options=engine.decode_options(batch),
    )


def run(config: ModelConfig, batches: list[int], prompt_lens: list[int], gen: int, repeats: int = 5,
        seed: int = 0, prefill_chunk: int = 2048, mesh=None, cache_len: int | None = None,
        decode_chunk: int = 1, compiler_options: dict | None = None) -> dict:
    """Benchmark `config` at each (prompt length, batch size); returns a JSON-ready report.
    A prompt length is the context already cached when decoding starts. With a mesh the
    Engine shards over it, and MBU/MFU are per device (bytes or FLOPs over all its devices'
    peaks)."""
    if min(prompt_lens) < 1 or gen < 2:
        raise ValueError(f"need prompt lengths >= 1 and gen >= 2, got {prompt_lens} and {gen}")
    model = build(config)
    # One jitted draw per layer kind; with a mesh each device draws only its own slices, so a
    # model larger than one device fits and nothing travels between devices. Only shapes and
    # magnitudes matter here, so the values need not be `model.init`'s.
    params = draw_params(model, jax.random.key(seed), mesh)
    device = jax.devices()[0]
    bandwidth, flop_rate = device_peaks(device)
    results = [bench_batch(config, params, b, n, gen, repeats, seed, prefill_chunk, mesh, cache_len, decode_chunk,
                           compiler_options)
               for n in prompt_lens for b in batches]
    return {
        "config": config.name,
        "dtype": config.dtype,
        "param_bytes": costs.param_bytes(model),
        "device": device.device_kind,
        "n_devices": 1 if mesh is None else mesh.size,
        "mesh": None if mesh is None else dict(mesh.shape),
        "peak_bandwidth_bytes_s": bandwidth,
        "peak_flop_s": flop_rate,
        "jax_version": jax.__version__,
        "prefill_chunk": prefill_chunk,
        "decode_chunk": decode_chunk,
        "cache_len": cache_len,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "results": [dataclasses.asdict(r) for r in results],
    }


def format_report(report: dict) -> str:
    bandwidth = report["peak_bandwidth_bytes_s"]
    peak = (f"peak {bandwidth / 1e12:.2f} TB/s, {report['peak_flop_s'] / 1e12:.0f} TFLOP/s bf16"
            if bandwidth else "peak bandwidth and FLOP/s unknown for this device: no MBU/MFU")
    mesh = report.get("mesh")
    where = report["device"] if not mesh else (f"{report['n_devices']} x {report['device']}, mesh "
                                               f"{', '.join(f'{k}={v}' for k, v in mesh.items())}, MBU/MFU per device")
    lines = [f"{report['config']} ({report['dtype']}, {report['param_bytes'] / 1e9:.4g} GB of weights) on "
             f"{where}; jax {report['jax_version']}; {peak}",
             f"{'context':>7} {'batch':>5} {'prefill ms':>11} {'decode ms/step':>15} {'tok/s':>9} {'GB/step':>8} "
             f"{'GB/s':>8} {'MBU':>6} {'TFLOP/s':>8} {'MFU':>6} {'compile s':>9}"]
    pct = lambda x: f"{100 * x:5.1f}%" if x is not None else "   n/a"  # noqa: E731
    for r in report["results"]:
        lines.append(f"{r['prompt_len']:>7} {r['batch']:>5} {r['prefill_ms']:>11.2f} {r['decode_ms_per_step']:>15.3f} "
                     f"{r['tokens_per_s']:>9.1f} {r['bytes_per_step'] / 1e9:>8.4g} {r['achieved_gb_s']:>8.1f} "
                     f"{pct(r['mbu'])} {r['prefill_tflop_s']:>8.2f} {pct(r['mfu'])} {r['compile_s']:>9.1f}")
    return "\n".join(lines)
