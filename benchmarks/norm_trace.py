"""EXPERIMENT (session 17): where the fused sum + add + norm kernel's time goes, from clock64 stamps it
takes (block 0, thread 0) at its stages, in a real decode loop.

    python benchmarks/norm_trace.py --config llama-3-8b --layers 8 --mesh tensor=2 --gen 64

Prints per stage the median (10th, 90th percentile) µs at the SM clock over the last decode calls.
"""

from __future__ import annotations

import argparse
import ctypes
import math

import jax
import numpy as np

import chimera
from chimera.runtime.cli import mesh_sizes
from chimera.runtime.engine import Engine
from chimera.runtime.model import build
from chimera.sharding import all_reduce
from chimera.sharding.init import draw_params

POINTS = 8
CALLS = 8192
STAGES = ["wait for the kernel before", "epoch load", "partial load (splits)", "send",
          "wait for the peers' lines", "add, sum of squares (cluster)", "norm, stores, cluster exit"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="llama-3-8b")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--mesh", type=mesh_sizes, default={"tensor": 2})
    parser.add_argument("--gen", type=int, default=64)
    parser.add_argument("--clock-mhz", type=float, default=1980.0)
    args = parser.parse_args()
    config = chimera.load_config(args.config).replace(dtype="bfloat16", n_layers=args.layers)
    model = build(config)
    mesh = chimera.make_mesh(**args.mesh, devices=jax.devices()[:math.prod(args.mesh.values())])
    params = draw_params(model, jax.random.key(0), mesh)
    engine = Engine(model, params, max_batch=1, max_len=128 + args.gen, mesh=mesh)
    prompt = list(np.random.default_rng(0).integers(0, config.vocab_size, 128))
    for _ in range(3):
        engine.generate([prompt], max_new_tokens=args.gen)
    lib = all_reduce.library()
    lib.chimera_norm_trace.restype = ctypes.c_int
    buffer = np.zeros((CALLS, POINTS), np.int64)
    calls_a_run = 2 * args.layers * (args.gen - 1)
    for device in mesh.devices.flat:
        calls = lib.chimera_norm_trace(device.local_hardware_id, buffer.ctypes.data_as(ctypes.c_void_p))
        last = [(calls - 1 - i) % CALLS for i in range(min(calls, calls_a_run, CALLS))]
        stamps = buffer[last].astype(np.float64) / args.clock_mhz  # [calls, points] µs after the first
        steps = np.diff(stamps, axis=1)
        print(f"device {device.local_hardware_id}: {calls} calls recorded, the last {len(last)} summarised")
        for stage, column in zip(STAGES, steps.T):
            p10, p50, p90 = np.percentile(column, [10, 50, 90])
            print(f"  {stage:32s} {p50:6.2f} µs ({p10:.2f}, {p90:.2f})")
        total = stamps[:, -1]
        print(f"  {'first to last stamp':32s} {np.median(total):6.2f} µs ({np.percentile(total, 10):.2f}, "
              f"{np.percentile(total, 90):.2f})")


if __name__ == "__main__":
    main()
