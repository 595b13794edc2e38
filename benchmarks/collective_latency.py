"""Latency of the all-reduces a tensor-parallel decode step makes: a chain of N dependent
all-reduces of a [batch, d_model] activation, with one small matmul between each (the shape
of a Megatron block at batch 1), against the same chain without the all-reduces.

    python benchmarks/collective_latency.py --devices 2 [--chain 64] [--d-model 4096] [--json out.json] [--trace DIR]

Run it under different XLA_FLAGS / NCCL_* settings to see what the per-collective cost is;
it prints microseconds per all-reduce = (chain with - chain without) / N. `--trace DIR` also
profiles one call of the chain with all-reduces and prints its kernels, which shows how XLA
ran the all-reduce (an NCCL kernel, or XLA's own `all_reduce_*` kernel) under those settings,
and keeps two chains' host and device events in DIR/window.json.gz.

Under chimera's GPU decode options (runtime/gpu_options.py) in XLA_FLAGS the chain's program
fails to instantiate its CUDA graph (JAX 0.11.2; the decode loops do not): drop `WHILE` from
`--xla_gpu_enable_command_buffer` to time captured all-reduces here.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from timing import median_seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--chain", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--loops", type=int, default=32, help="chains per call (a while loop, like decode)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reduce-dtype", default="float32", help="dtype of the all-reduced partial sums")
    parser.add_argument("--json")
    parser.add_argument("--trace", help="write a profile of one chain call here and print its kernels")
    args = parser.parse_args()
    mesh = jax.make_mesh((args.devices,), ("tensor",), devices=jax.devices()[:args.devices])
    d, width = args.d_model, 4 * args.d_model // args.devices
    key = jax.random.key(0)
    w_in = jax.random.normal(key, (args.devices * width, d), jnp.bfloat16) * d ** -0.5  # [F, D] split on F
    w_out = jax.random.normal(key, (d, args.devices * width), jnp.bfloat16) * width ** -0.5  # [D, F]
    x = jnp.ones((args.batch, d), jnp.bfloat16)
    w_out = jax.device_put(w_out, NamedSharding(mesh, P(None, "tensor")))
    w_in = jax.device_put(w_in, NamedSharding(mesh, P("tensor", None)))
    x = jax.device_put(x, NamedSharding(mesh, P()))

    def chain(reduce: bool):
        def block(x, w_out, w_in):  # per device: x [B, D] whole, w_out [D, F/n], w_in [F/n, D]
            for _ in range(args.chain):
                h = x @ w_out  # [B, F/n]
                y = (h @ w_in).astype(args.reduce_dtype)  # [B, D] partial sum
                if reduce:
                    y = jax.lax.psum(y, "tensor")
                x = (x.astype(jnp.float32) + y).astype(jnp.bfloat16)
            return x

        step = jax.shard_map(block, mesh=mesh, in_specs=(P(), P(None, "tensor"), P("tensor", None)),
                             out_specs=P(), check_vma=False)

        @jax.jit
        def run(x, w_out, w_in):
            return jax.lax.fori_loop(0, args.loops, lambda _, x: step(x, w_out, w_in), x)
        return run

    with_reduce = median_seconds(chain(True), (x, w_out, w_in), repeats=args.repeats)
    without = median_seconds(chain(False), (x, w_out, w_in), repeats=args.repeats)
    n = args.chain * args.loops
    result = {"devices": args.devices, "d_model": d, "batch": args.batch, "chain": args.chain,
              "reduce_dtype": args.reduce_dtype, "loops": args.loops, "ms_per_chain_with": with_reduce / args.loops * 1e3,
              "ms_per_chain_without": without / args.loops * 1e3,
              "us_per_all_reduce": (with_reduce - without) / n * 1e6,
              "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "nccl": {k: v for k, v in os.environ.items() if k.startswith("NCCL_")},
              "device": jax.devices()[0].device_kind, "jax_version": jax.__version__}
    print(json.dumps(result))
    if args.trace:
        from profile_decode import kernel_summary, save_window  # this folder is on the path (run as a script)
        run = chain(True)
        with jax.profiler.trace(args.trace, create_perfetto_trace=True):
            jax.block_until_ready(run(x, w_out, w_in))
        print(kernel_summary(pathlib.Path(args.trace), top=12, steps=args.loops))
        save_window(pathlib.Path(args.trace), pathlib.Path(args.trace) / "window.json.gz", steps=args.loops)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
