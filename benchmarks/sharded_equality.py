"""Greedy tokens on one device vs sharded over a mesh of the first N devices.

    python benchmarks/sharded_equality.py --config llama-3-8b --mesh tensor=2 [--mesh tensor=8 ...] [--json out.json]
    python benchmarks/sharded_equality.py --config mixtral-tiny --mesh expert=2 --tiny   # on CPU
    python benchmarks/sharded_equality.py --config llama-tiny,mamba2-tiny --mesh tensor=2   # several configs

Random weights (seeded), random prompts of several lengths, greedy decoding through the
Engine; prints, for each mesh, how many generated tokens agree with one device's, per prompt,
and the first disagreement. The one-device tokens are decoded once for all meshes. With several
configs, a run that raises (a program that fails to compile or run) is recorded as that mesh's
`error` and the others go on. Exits 1 unless every mesh of every config decoded identical tokens.
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


def compare(config_name, meshes, args) -> dict:
    """One config: greedy tokens on one device, then on each mesh (sizes dicts), compared."""
    config = chimera.load_config(config_name)
    if args.dtype:
        config = config.replace(dtype=args.dtype)
    model = chimera.build(config)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, config.vocab_size, int(n)).tolist() for n in args.prompts.split(",")]
    # The same params for every run: the Engine places them on each mesh (a copy per mesh).
    params = model.init(jax.random.key(0))
    alone = greedy(model, params, prompts, args.new_tokens, None)
    results = []
    for sizes in meshes:
        n_devices = int(np.prod(list(sizes.values())))
        try:
            mesh = chimera.make_mesh(**sizes, devices=jax.devices()[:n_devices])
            sharded = greedy(model, params, prompts, args.new_tokens, mesh)
        except Exception as error:  # recorded, so that the other configs and meshes still run
            if not args.keep_going:
                raise
            results.append({"mesh": sizes, "identical": False, "error": f"{type(error).__name__}: {error}"[:500]})
            continue
        rows = []
        for prompt, a, s in zip(prompts, alone, sharded):
            first = next((i for i, (x, y) in enumerate(zip(a, s)) if x != y), None)
            rows.append({"prompt_len": len(prompt), "agree": sum(x == y for x, y in zip(a, s)), "of": len(a),
                         "first_difference": first})
        results.append({"mesh": sizes, "identical": all(r["first_difference"] is None for r in rows), "rows": rows})
    return {"config": config.name, "dtype": config.dtype, "device": jax.devices()[0].device_kind,
            "jax_version": jax.__version__, "matmul_precision": jax.config.jax_default_matmul_precision,
            "identical": all(m["identical"] for m in results), "meshes": results}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a config, or several separated by commas")
    parser.add_argument("--mesh", type=mesh_sizes, required=True, action="append",
                        help="e.g. tensor=2 or expert=2; repeat for several meshes")
    parser.add_argument("--dtype", default=None, help="override the config's dtype")
    parser.add_argument("--prompts", default="5,17,33,64", help="prompt lengths")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--tiny", action="store_true", help="forced CPU devices (set before jax starts)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    names = args.config.split(",")
    args.keep_going = len(names) > 1
    reports = []
    for name in names:
        try:
            reports.append(compare(name, args.mesh, args))
        except Exception as error:  # the one-device run itself failed
            if not args.keep_going:
                raise
            reports.append({"config": name, "identical": False, "error": f"{type(error).__name__}: {error}"[:500]})
        print(json.dumps(reports[-1], indent=1), flush=True)
    report = reports[0] if len(reports) == 1 else {"identical": all(r["identical"] for r in reports), "configs": reports}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if report["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
