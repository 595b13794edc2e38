"""Greedy tokens on one device vs sharded over a mesh of the first N devices.

    python benchmarks/sharded_equality.py --config llama-3-8b --mesh tensor=2 [--mesh tensor=8 ...] [--json out.json]
    python benchmarks/sharded_equality.py --config mixtral-tiny --mesh expert=2 --tiny   # on CPU

Random weights (seeded), random prompts of several lengths, greedy decoding through the
Engine; prints, for each mesh, how many generated tokens agree with one device's, per prompt,
and the first disagreement. The one-device tokens are decoded once for all meshes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if "--tiny" in sys.argv:  # before jax starts: CPU devices are only made when asked for up front
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import chimera  # noqa: E402
from chimera.runtime.cli import mesh_sizes  # noqa: E402


def greedy(model, params, prompts, new_tokens, mesh):
    engine = chimera.Engine(model, params, max_batch=len(prompts), max_len=max(map(len, prompts)) + new_tokens,
                            mesh=mesh)
    outs = engine.generate(prompts, max_new_tokens=new_tokens, sampling=chimera.Sampling(temperature=0.0))
    return [o.tokens for o in outs]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--mesh", type=mesh_sizes, required=True, action="append",
                        help="e.g. tensor=2 or expert=2; repeat for several meshes")
    parser.add_argument("--dtype", default=None, help="override the config's dtype")
    parser.add_argument("--prompts", default="5,17,33,64", help="prompt lengths")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--tiny", action="store_true", help="forced CPU devices (set before jax starts)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    config = chimera.load_config(args.config)
    if args.dtype:
        config = config.replace(dtype=args.dtype)
    model = chimera.build(config)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, config.vocab_size, int(n)).tolist() for n in args.prompts.split(",")]
    # The same params for every run: the Engine places them on each mesh (a copy per mesh).
    params = model.init(jax.random.key(0))
    alone = greedy(model, params, prompts, args.new_tokens, None)
    meshes = []
    for sizes in args.mesh:
        n_devices = int(np.prod(list(sizes.values())))
        mesh = chimera.make_mesh(**sizes, devices=jax.devices()[:n_devices])
        sharded = greedy(model, params, prompts, args.new_tokens, mesh)
        rows = []
        for prompt, a, s in zip(prompts, alone, sharded):
            first = next((i for i, (x, y) in enumerate(zip(a, s)) if x != y), None)
            rows.append({"prompt_len": len(prompt), "agree": sum(x == y for x, y in zip(a, s)), "of": len(a),
                         "first_difference": first})
        meshes.append({"mesh": sizes, "identical": all(r["first_difference"] is None for r in rows), "rows": rows})
    report = {"config": config.name, "dtype": config.dtype, "device": jax.devices()[0].device_kind,
              "jax_version": jax.__version__, "matmul_precision": jax.config.jax_default_matmul_precision,
              "identical": all(m["identical"] for m in meshes), "meshes": meshes}
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
