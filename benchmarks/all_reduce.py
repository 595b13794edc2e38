"""chimera's all-reduce kernel (sharding/all_reduce.cu) against XLA's, alone: the same sums, and
the time of a chain of dependent sums inside one jitted program (as a decode step makes them).

    python benchmarks/all_reduce.py [--devices 2] [--width 4096] [--chain 64] [--rows 1,16]

Checks first that the kernel's sum equals `lax.psum`'s bit for bit (float32 and bfloat16, random
partial sums, many calls in a row so the epochs advance), then times per call: a shard_map whose
body sums its partial `--chain` times, each sum scaled and fed to the next, compiled with the
options a one-row tensor-parallel decode program gets, under the CLI's XLA_FLAGS.
"""

from __future__ import annotations

import argparse
import json

from chimera.runtime import gpu_options

gpu_options.set_xla_flags()  # before the backend starts, as the CLI does

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

import chimera  # noqa: E402
from chimera.runtime.cli import int_list  # noqa: E402
from chimera.sharding import all_reduce  # noqa: E402
from timing import median_seconds  # noqa: E402


def chain(mesh, length: int, use_kernel: bool, options: dict):
    """A jitted program: partial [tensor * rows, width] (a slice a device) -> its sum, taken
    `length` times in a row (each sum halved and fed to the next), [rows, width] replicated."""
    def total(partial):
        return all_reduce.sum_over_tensor(partial, mesh) if use_kernel else jax.lax.psum(partial, "tensor")

    def body(partial):
        for _ in range(length):
            partial = total(partial) * jnp.asarray(0.5, partial.dtype)
        return partial

    sharded = jax.shard_map(body, mesh=mesh, in_specs=PartitionSpec("tensor"), out_specs=PartitionSpec("tensor"),
                            check_vma=False)
    return jax.jit(sharded, compiler_options=options or None)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--chain", type=int, default=64)
    parser.add_argument("--rows", type=int_list, default=[1, 16])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json")
    args = parser.parse_args()
    mesh = chimera.make_mesh(tensor=args.devices, devices=jax.devices()[:args.devices])
    all_reduce.prepare(mesh)
    split = NamedSharding(mesh, PartitionSpec("tensor"))
    rng = np.random.default_rng(0)
    results = {"device": jax.devices()[0].device_kind, "devices": args.devices, "jax": jax.__version__, "rows": {}}

    for dtype in (jnp.float32, jnp.bfloat16):  # the sums, bit for bit, over 9 calls a program
        partial = jax.device_put(rng.standard_normal((args.devices * 4, args.width)).astype(dtype), split)
        ours, xla = (np.asarray(chain(mesh, 9, use_kernel, {})(partial)).astype(np.float32)
                     for use_kernel in (True, False))
        same = bool(np.array_equal(ours, xla))
        print(f"{jnp.dtype(dtype).name}: kernel == psum bit for bit: {same}", flush=True)
        results[f"equal_{jnp.dtype(dtype).name}"] = same

    options = gpu_options.decode_compiler_options(mesh, batch=1)
    for rows in args.rows:
        partial = jax.device_put(rng.standard_normal((args.devices * rows, args.width)).astype(jnp.bfloat16), split)
        row = {}
        for name, use_kernel in (("xla", False), ("chimera", True), ("xla_again", False), ("chimera_again", True)):
            empty, full = (chain(mesh, length, use_kernel, options) for length in (0, args.chain))
            seconds = median_seconds(full, (partial,), warmup=3, repeats=args.repeats)
            base = median_seconds(empty, (partial,), warmup=3, repeats=args.repeats)
            row[name] = (seconds - base) / args.chain * 1e6
            print(f"rows {rows} ({rows * args.width * 2} bytes a device), {name}: "
                  f"{row[name]:.2f} µs a sum (chain of {args.chain}: {seconds * 1e3:.3f} ms, none: {base * 1e3:.3f})",
                  flush=True)
        results["rows"][rows] = row
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
