"""What the decode loop's shape costs: the Engine's step-by-step loop (a `lax.while_loop` whose
stop condition XLA reads back to the host after every step) against `decode_chunk` K (K steps
in a loop of known length per iteration), on one device and on a mesh, at two generation
lengths, so the per-call cost separates from the per-step one.

    python benchmarks/decode_loop.py --config llama-3-8b --mesh tensor=2 [--chunks 1,8] [--gens 32,160] --json out.json

For each layout (one device, then the mesh) the params are drawn once and every (chunk, gen)
is timed as `chimera bench` times it (Engine prefill + decode, warm-up excluded, median of
--repeats). Printed per run: ms per step as bench reports it (the call over gen - 1 steps),
and the marginal ms per step between the two lengths (per-call costs cancel).

`--one-row-plain` (an experiment) multiplies a single row as it is instead of chimera's two-row
form (`runtime/linear.py`). Without an XLA option that keeps one-row products GEMMs it measures
XLA's multiply-and-reduce lowering; `--xla_gpu_enable_dot_strength_reduction=false` was that
option, and JAX 0.11.2's XLA no longer accepts it (BENCHMARKS.md, session 7).
`--one-row-kernel` (an experiment, one device) computes them by the Pallas matvec of
`benchmarks/pallas_matvec.py` instead (session 8).
`--zero-row-below N` (an experiment) adds the zero row only to products by a weight of fewer than N
elements (global shape): above XLA's strength-reduction size a one-row product stays a GEMM by
itself, and the pad kernel in front of it (which the RMS norm or SwiGLU feeding it fuses into) goes.
`--option NAME=VALUE` (repeatable, an experiment) changes one of chimera's GPU decode options
(`runtime/gpu_options.py`'s GPU_DECODE_OPTIONS, which the Engine compiles its decode programs with)
for this run; set the same in XLA_FLAGS to change what the process runs with too.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

import chimera
from chimera.runtime import gpu_options
from chimera.runtime.cli import int_list
from chimera.runtime.linear import linear
from chimera.runtime.model import build
from chimera.sharding.init import draw_params
from matvec_kernel import replace_linear, use_one_row_kernel
from timing import add_layout_arguments, decode_ms_per_step, layouts, marginal_ms_per_step


def multiply_one_row_plainly():
    """The blocks' products by the plain einsum (no zero row)."""
    replace_linear(lambda spec, x, w: jnp.einsum(spec, x, w))


def zero_row_below(elements: int):
    """The blocks' products with the zero row only for weights of fewer than `elements` elements."""
    def product(spec, x, w):
        return linear(spec, x, w) if w.size < elements else jnp.einsum(spec, x, w)
    replace_linear(product)


def main():
    parser = argparse.ArgumentParser()
    add_layout_arguments(parser)
    parser.add_argument("--chunks", type=int_list, default=[1, 8])
    parser.add_argument("--one-row-plain", action="store_true", help="no zero row for one-row products")
    parser.add_argument("--one-row-kernel", action="store_true",
                        help="one-row products by the Pallas matvec (benchmarks/matvec_kernel.py; one device)")
    parser.add_argument("--zero-row-below", type=float, metavar="N",
                        help="the zero row only for weights of fewer than N elements")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="one of chimera's GPU decode options, changed for this run")
    args = parser.parse_args()
    for option in args.option:
        name, _, value = option.partition("=")
        gpu_options.GPU_DECODE_OPTIONS[name] = value
    if args.one_row_plain:
        multiply_one_row_plainly()
    if args.one_row_kernel:
        use_one_row_kernel()
    if args.zero_row_below:
        zero_row_below(int(args.zero_row_below))
    config = chimera.load_config(args.config).replace(dtype=args.dtype)
    model = build(config)
    rows = []
    for mesh in layouts(args):
        params = draw_params(model, jax.random.key(0), mesh)
        for chunk in args.chunks:
            ms = decode_ms_per_step(config, params, args.gens, args.repeats, batch=args.batch,
                                    prompt_len=args.prompt_len, mesh=mesh, decode_chunk=chunk)
            marginal = marginal_ms_per_step(ms)
            row = {"mesh": None if mesh is None else dict(mesh.shape), "batch": args.batch, "decode_chunk": chunk,
                   "ms_per_step": ms, "marginal_ms_per_step": marginal}
            print(json.dumps(row), flush=True)
            rows.append(row)
        del params
    report = {"config": config.name, "dtype": config.dtype, "prompt_len": args.prompt_len,
              "device": jax.devices()[0].device_kind, "jax_version": jax.__version__,
              "one_row_plain": args.one_row_plain, "one_row_kernel": args.one_row_kernel,
              "zero_row_below": args.zero_row_below,
              "options": args.option, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
