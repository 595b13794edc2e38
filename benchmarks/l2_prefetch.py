"""An experiment (session 8): read a weight into the GPU's L2 while the decode step is busy with
small kernels, so that its GEMM then finds part of it there.

    python benchmarks/l2_prefetch.py --config C [--mesh tensor=2] [--programs 16,32] [--json out.json]

A batch-1 step leaves HBM idle between its GEMMs: between a layer's qkv and o products run
RoPE, the cache writes, the attention and its combine (~10 µs a layer, BENCHMARKS.md). Here a
Pallas kernel with a few programs (`touch`: sums W's elements, so it must read them) starts when
q is ready and reads the o projection's weight meanwhile; the attention's output waits for it
(a `where` on the touch's sum) just before the o product. It only runs beside the other kernels when
XLA's command buffers may run independent kernels concurrently, so every variant but the first
adds `--xla_gpu_command_buffer_scheduling_mode=CONCURRENT` through XLA_FLAGS, which the caller
sets (gpu_runs.sh `h200-prefetch-e`); this script only times the decode step.

Variants, each timed as decode_loop.py times a step (marginal ms between --gens):
`xla` (the blocks as they are) and `touch` (for each of --programs: that many programs read
the first --fraction of o's weight). Result (BENCHMARKS.md, session 8): slower either way; 32
programs read at 0.63 TB/s, far too slowly to hide in the attention's ~10 µs.
"""

from __future__ import annotations

import argparse
import functools
import json
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

import chimera
from chimera.attention.attention import Attention
from chimera.runtime.cli import int_list, mesh_sizes
from chimera.runtime.model import build
from chimera.sharding.init import draw_params
from chimera.sharding.rules import partition_spec
from timing import decode_ms_per_step, marginal_ms_per_step

ROW = 1024  # elements per row of the flat view the kernel reads
TILE_ROWS = 16


def _touch_kernel(after_ref, w_ref, o_ref):
    """after_ref []: a value the caller's ordering needs (added, times zero); w_ref [R, ROW]:
    this program's rows; o_ref []: their sum."""
    def step(i, total):
        tile = w_ref[pl.ds(pl.multiple_of(i * TILE_ROWS, TILE_ROWS), TILE_ROWS), :]  # [TILE_ROWS, ROW]
        return total + jnp.sum(tile.astype(jnp.float32))

    o_ref[...] = lax.fori_loop(0, w_ref.shape[0] // TILE_ROWS, step, after_ref[...] * 0)


@functools.partial(jax.jit, static_argnames=("programs", "fraction"))
def touch(w, after, *, programs: int, fraction: float):
    """Read the first `fraction` of w's elements with `programs` programs once `after` (a float32
    scalar) exists: float32 [programs] partial sums."""
    rows = w.size // ROW
    per_program = int(rows * fraction) // programs // TILE_ROWS * TILE_ROWS
    if per_program == 0:
        raise ValueError(f"{fraction} of {w.shape} is less than {programs} x {TILE_ROWS} rows of {ROW}")
    return pl.pallas_call(
        _touch_kernel,
        grid=(programs,),
        in_specs=[pl.BlockSpec((None,), lambda p: (0,)), pl.BlockSpec((per_program, ROW), lambda p: (p, 0))],
        out_specs=pl.BlockSpec((None,), lambda p: (p,)),
        out_shape=jax.ShapeDtypeStruct((programs,), jnp.float32),
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=3),
        interpret=jax.default_backend() != "gpu",  # the CPU runs it as jnp (slow), for checking the plumbing
        name="l2_touch",
    )(after.reshape(1), w.reshape(rows, ROW))  # the reshape is a bitcast: no copy


ORIGINAL = (Attention.project, Attention.output)
TRACED = [0]  # touches put into traced programs (a check that the patch took)


def use_touch(programs: int, fraction: float):
    """Patch `Attention` so that each layer reads (a fraction of) its o weight into L2 between its
    qkv and o products."""
    pending = {}  # trace-time: the touch started in `project`, awaited in `output`
    project, output = ORIGINAL

    def touched(self, w, q):
        def local(w, q):  # this device's o weight and queries
            return touch(w, q.reshape(-1)[0].astype(jnp.float32), programs=programs, fraction=fraction)

        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty:
            return local(w, q)
        w_spec = partition_spec(self.param_axes()["wo"], w.shape, mesh)
        q_spec = partition_spec(("batch", None, "heads", "head_dim"), q.shape, mesh)
        return jax.shard_map(local, mesh=mesh, in_specs=(w_spec, q_spec),
                             out_specs=jax.sharding.PartitionSpec(w_spec[0]), check_vma=False)(w, q)

    def project_and_touch(self, params, x, ctx):
        q, k, v = project(self, params, x, ctx)
        if x.shape[0] * x.shape[1] == 1:  # a batch-1 decode step
            pending[id(params["wo"])] = touched(self, params["wo"], q)
            TRACED[0] += 1
        return q, k, v

    def await_and_output(self, params, attn):
        done = pending.pop(id(params["wo"]), None)
        if done is not None:  # a data dependency XLA cannot drop (an optimization_barrier's unused
            # output was removed, and the touch with it): attention zeroed if the weight held a NaN
            attn = jnp.where(jnp.isnan(done.sum()), jnp.zeros_like(attn), attn)
        return output(self, params, attn)

    Attention.project, Attention.output = project_and_touch, await_and_output


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--mesh", type=mesh_sizes)
    parser.add_argument("--programs", type=int_list, default=[16, 32])
    parser.add_argument("--fraction", type=float, default=1.0, help="of the o weight to read")
    parser.add_argument("--gens", type=int_list, default=[32, 160])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variant", default="xla", help="xla, or touch (one run per --programs)")
    parser.add_argument("--json")
    args = parser.parse_args()
    config = chimera.load_config(args.config).replace(dtype="bfloat16")
    mesh = None
    if args.mesh:
        mesh = chimera.make_mesh(**args.mesh, devices=jax.devices()[:math.prod(args.mesh.values())])
    params = draw_params(build(config), jax.random.key(0), mesh)
    rows = []
    for programs in args.programs if args.variant == "touch" else [None]:
        if programs is not None:
            use_touch(programs, args.fraction)
        ms = decode_ms_per_step(config, params, args.gens, args.repeats, mesh=mesh)
        row = {"variant": args.variant, "programs": programs, "fraction": args.fraction, "mesh": args.mesh,
               "touches_traced": TRACED[0], "ms_per_step": ms, "marginal_ms_per_step": marginal_ms_per_step(ms)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "device": jax.devices()[0].device_kind, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
