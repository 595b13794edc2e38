"""chimera's all-reduce kernel (sharding/all_reduce.cu) against XLA's, alone: the same sums, and
the time of a chain of dependent sums inside one jitted program (as a decode step makes them).

    python benchmarks/all_reduce.py [--devices 2] [--width 4096] [--chain 64] [--rows 1,16]

Checks first that the kernel's sum equals `lax.psum`'s bit for bit (float32 and bfloat16, random
partial sums, many calls in a row so the epochs advance), and that the fused kernel
(sharding/residual.py: the sum, the residual add and the RMS norm) gives the residual XLA's sum and
add give, bit for bit, and the norm XLA computes from that residual, up to the order of its sum of
squares (counted: elements that differ, and by how many units in the last place), and that one
row's float32 K-splits give the residual their sum in split order gives, bit for bit. Then times per
call: a shard_map whose body sums its partial `--chain` times, each sum scaled and fed to the next
(or, for the norms, each normed output the next partial and each residual the next), compiled with
the options a one-row tensor-parallel decode program gets, under the CLI's XLA_FLAGS.
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
from chimera.runtime.norm import rms_norm  # noqa: E402
from chimera.sharding import all_reduce, residual  # noqa: E402
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


EPS = 1e-5


def norm_chain(mesh, length: int, fused: bool, options: dict):
    """A jitted program: (partial [tensor * rows, width], residual [rows, width], weight [width]) ->
    `length` times (residual, normed) = residual + the partials' sum and its RMS norm, the normed
    output the next partial; by the fused kernel, or the kernel's sum and XLA's add and norm."""
    def body(partial, before, weight):
        for _ in range(length):
            if fused:
                before, partial = residual.sum_add_rms_norm(partial, before, weight, EPS, mesh)
            else:
                before = before + all_reduce.sum_over_tensor(partial, mesh)
                partial = rms_norm(before, weight, EPS)
        return before, partial

    replicated = PartitionSpec()
    sharded = jax.shard_map(body, mesh=mesh, in_specs=(PartitionSpec("tensor"), replicated, replicated),
                            out_specs=(replicated, PartitionSpec("tensor")), check_vma=False)
    return jax.jit(sharded, compiler_options=options or None)


def ulps(got, want, dtype) -> int:
    """The largest distance between got and want in units in the last place of `dtype`."""
    as_int = {2: np.int16, 4: np.int32}[np.dtype(dtype).itemsize]
    a, b = (np.asarray(v).astype(dtype).view(as_int).astype(np.int64) for v in (got, want))
    return int(np.max(np.abs(a - b)))


def check_fused(mesh, devices: int, width: int, rng, results: dict):
    """The fused kernel against the kernel's sum and XLA's add (bits) and XLA's norm of its residual."""
    split = NamedSharding(mesh, PartitionSpec("tensor"))
    for dtype in (jnp.float32, jnp.bfloat16):
        name = jnp.dtype(dtype).name
        for rows in (1, 16):
            partial = jax.device_put(rng.standard_normal((devices * rows, width)).astype(dtype), split)
            before = jnp.asarray(rng.standard_normal((rows, width)), dtype)
            weight = jnp.asarray(1 + rng.standard_normal(width) / 4, dtype)
            after, normed = norm_chain(mesh, 1, True, {})(partial, before, weight)
            after_xla, _ = norm_chain(mesh, 1, False, {})(partial, before, weight)
            normed_xla = jax.jit(rms_norm, static_argnums=2)(after, weight, EPS)  # from the kernel's residual
            normed, normed_xla = np.asarray(normed)[:rows], np.asarray(normed_xla)
            row = {"residual_equal": bool(np.array_equal(np.asarray(after), np.asarray(after_xla))),
                   "norm_elements_differing": int(np.sum(normed != normed_xla)),
                   "norm_max_ulps": ulps(normed, normed_xla, dtype)}
            if rows == 1:  # the zero row written under a one-row norm (runtime/linear.py multiplies both)
                padded = np.asarray(fused_call(mesh, zero_rows=1)(partial, before, weight)[1])
                row["zero_row_norm_equal"] = bool(np.array_equal(padded[:1], normed))
                row["zero_row_zeros"] = bool(not np.any(padded[1:].astype(np.float32)))
            print(f"fused {name} rows {rows}: {row}", flush=True)
            results[f"fused_{name}_rows{rows}"] = row
        # one row's float32 K-splits (residual.split_product) against the same kernel given their sum
        splits = rng.standard_normal((devices, residual.SPLITS, 2, width)).astype(np.float32)
        splits[:, :, 1] = 0  # the zero row's products
        summed = splits[:, 0, :1].copy()
        for s in range(1, residual.SPLITS):  # in split order, as the kernel adds them
            summed += splits[:, s, :1]
        before = jnp.asarray(rng.standard_normal((1, width)), dtype)
        weight = jnp.asarray(1 + rng.standard_normal(width) / 4, dtype)
        split_rows = jax.device_put(splits.reshape(devices * residual.SPLITS, 2, width), split)
        after, normed = fused_call(mesh, splits=residual.SPLITS)(split_rows, before, weight)
        after_sum, normed_sum = fused_call(mesh)(jax.device_put(summed.reshape(devices, width).astype(dtype), split),
                                                    before, weight)
        row = {"residual_equal": bool(np.array_equal(np.asarray(after), np.asarray(after_sum))),
               "norm_elements_differing": int(np.sum(np.asarray(normed) != np.asarray(normed_sum))),
               "norm_max_ulps": ulps(normed, normed_sum, dtype)}
        print(f"fused {name} {residual.SPLITS} float32 K-splits against their sum: {row}", flush=True)
        results[f"fused_{name}_splits"] = row


def fused_call(mesh, zero_rows: int = 0, splits: int = 1):
    """A jitted program: (partial [tensor, width], or [tensor * splits, 2, width] float32 K-splits; residual
    [1, width]; weight [width]) -> the fused kernel's (residual [1, width], normed [1 + zero_rows, width])."""
    def body(partial, before, weight):
        return residual.sum_add_rms_norm(partial, before, weight, EPS, mesh, zero_rows, splits)

    replicated = PartitionSpec()
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(PartitionSpec("tensor"), replicated, replicated),
                                 out_specs=(replicated, replicated), check_vma=False))


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

    check_fused(mesh, args.devices, args.width, rng, results)

    options = gpu_options.decode_compiler_options(mesh, batch=1)
    weight = jnp.ones((args.width,), jnp.bfloat16)
    programs = {"xla": lambda n: chain(mesh, n, False, options), "chimera": lambda n: chain(mesh, n, True, options),
                "chimera_then_xla_norm": lambda n: norm_chain(mesh, n, False, options),
                "fused_norm": lambda n: norm_chain(mesh, n, True, options)}
    for rows in args.rows:
        partial = jax.device_put(rng.standard_normal((args.devices * rows, args.width)).astype(jnp.bfloat16), split)
        before = jnp.zeros((rows, args.width), jnp.bfloat16)
        row = {}
        for name in ("xla", "chimera", "chimera_then_xla_norm", "fused_norm", "chimera_then_xla_norm", "fused_norm"):
            inputs = (partial,) if name in ("xla", "chimera") else (partial, before, weight)
            empty, full = (programs[name](length) for length in (0, args.chain))
            seconds = median_seconds(full, inputs, warmup=3, repeats=args.repeats)
            base = median_seconds(empty, inputs, warmup=3, repeats=args.repeats)
            name = name + "_again" if name in row else name
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
