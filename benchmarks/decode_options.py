"""Which XLA options the decode program really compiled with: for each variant of the GPU decode
options, how the compiled program runs its all-reduces (XLA's one-shot kernel or NCCL, sync or
async, from the optimised HLO), then its decode ms/step (bench's measurement).

    python benchmarks/decode_options.py --config llama-3-8b --mesh tensor=2 [--batch 1,16] [--gen 128] [--json out.json]

Variants: XLA's defaults (or whatever XLA_FLAGS sets), chimera's GPU_DECODE_OPTIONS, with the
one-shot kernel turned off by its boolean flag instead of (or as well as) an empty kernel list,
and with NCCL's symmetric buffers.
"""

from __future__ import annotations

import argparse
import json
import math
import re

import jax
from profile_decode import decode_hlo  # this folder is on the path (run as a script)

import chimera
from chimera.runtime import bench
from chimera.runtime.cli import int_list, mesh_sizes
from chimera.runtime.engine import Engine
from chimera.runtime.gpu_options import GPU_DECODE_OPTIONS, ONE_ROW_TENSOR_PARALLEL_OPTIONS
from chimera.runtime.model import build
from chimera.sharding.init import draw_params

without_list = {k: v for k, v in GPU_DECODE_OPTIONS.items() if k != "xla_gpu_experimental_use_collective_kernels"}
VARIANTS = {
    "xla-defaults": {},
    "chimera": GPU_DECODE_OPTIONS,
    "one-shot-flag-off": {**without_list, "xla_gpu_unsupported_use_all_reduce_one_shot_kernel": False},
    "both-off": {**GPU_DECODE_OPTIONS, "xla_gpu_unsupported_use_all_reduce_one_shot_kernel": False},
    "symmetric": GPU_DECODE_OPTIONS | ONE_ROW_TENSOR_PARALLEL_OPTIONS,
}


def all_reduce_kinds(engine, batch, cache_len, gen) -> dict:
    """Counts of the compiled decode program's all-reduce strategies and sync flags."""
    hlo = decode_hlo(engine, batch, cache_len, gen)
    lines = [line for line in hlo.splitlines() if re.search(r" all-reduce(-start)?\(", line)]
    kinds = {}
    for line in lines:
        strategy = re.search(r'"kernel_strategy":"(\w+)"', line)
        sync = re.search(r'"is_sync":(\w+)', line)
        key = f"{strategy.group(1) if strategy else '?'} sync={sync.group(1) if sync else '?'}"
        kinds[key] = kinds.get(key, 0) + 1
    return kinds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--mesh", type=mesh_sizes, required=True)
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--batch", type=int_list, default=[1])
    parser.add_argument("--no-hlo", action="store_true", help="time only (skip compiling for the HLO)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    parser.add_argument("--json")
    args = parser.parse_args()
    config = chimera.load_config(args.config).replace(dtype="bfloat16")
    model = build(config)
    mesh = chimera.make_mesh(**args.mesh, devices=jax.devices()[:math.prod(args.mesh.values())])
    params = draw_params(model, jax.random.key(0), mesh)
    rows = []
    for name in args.variants.split(","):
        options = VARIANTS[name]
        for batch in args.batch:
            row = {"variant": name, "batch": batch, "options": options}
            try:
                if not args.no_hlo:
                    engine = Engine(model, params, max_batch=batch, max_len=128 + args.gen, mesh=mesh,
                                    compiler_options=options)
                    row["all_reduces"] = all_reduce_kinds(engine, batch, engine.cache_len(128 + args.gen), args.gen)
                row["decode_ms_per_step"] = bench.bench_batch(config, params, batch=batch, prompt_len=128,
                                                              gen=args.gen, repeats=2, mesh=mesh,
                                                              compiler_options=options).decode_ms_per_step
            except Exception as error:  # an option this XLA does not know, or a graph it cannot build
                row["error"] = str(error)[:300]
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": config.name, "mesh": args.mesh, "gen": args.gen, "jax_version": jax.__version__,
                       "device": jax.devices()[0].device_kind, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
