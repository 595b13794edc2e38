"""Decode on 2 devices against 1: tensor parallelism for a dense model, expert parallelism for an MoE.

    python benchmarks/tensor_parallel.py [--json out.json]     # the GPU run, on 2 GPUs
    python benchmarks/tensor_parallel.py --tiny                # tiny presets on 2 forced CPU devices

Each model is benchmarked (`chimera bench`'s measurement: the Engine's own prefill and decode
loop, warm-up excluded, median of --repeats) on the first device alone and sharded over a mesh
of the first two:

    llama-3-8b     bf16, tensor=2 (heads, KV heads and MLP split; one all-reduce per block)
    qwen3-30b-a3b  bf16, expert=2 (64 of 128 experts per GPU, all-to-all dispatch)

at batch 1 and 16. Printed per run: decode step time, tokens/s, and MBU per GPU = bytes a step
must move (weights read + KV read and written, for the whole model) / step time / (GPUs x peak
bandwidth), with the step-time speed-up over one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if "--tiny" in sys.argv:  # before jax starts: CPU devices are only made when asked for up front
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import jax  # noqa: E402

import chimera  # noqa: E402
from chimera.runtime import bench  # noqa: E402

RUNS = {"gpu": [("llama-3-8b", dict(tensor=2)), ("qwen3-30b-a3b", dict(expert=2))],
        "tiny": [("llama-tiny", dict(tensor=2)), ("mixtral-tiny", dict(expert=2))]}


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def measure(name: str, mesh_sizes: dict, args) -> list[dict]:
    """One model on one device, then over the mesh: a row per (devices, batch)."""
    config = chimera.load_config(name).replace(dtype=args.dtype)
    mesh = chimera.make_mesh(**mesh_sizes, devices=jax.devices()[:2])
    rows = []
    for label, on in (("1 device", None), (", ".join(f"{k}={v}" for k, v in mesh_sizes.items()), mesh)):
        report = bench.run(config, args.batch, [args.prompt_len], args.gen, repeats=args.repeats, mesh=on)
        for r in report["results"]:
            rows.append({"config": name, "mesh": label, "n_devices": report["n_devices"], "batch": r["batch"],
                         "decode_ms_per_step": r["decode_ms_per_step"], "tokens_per_s": r["tokens_per_s"],
                         "mbu_per_device": r["mbu"], "device": report["device"]})
    single = {row["batch"]: row["decode_ms_per_step"] for row in rows if row["n_devices"] == 1}
    for row in rows:
        row["speedup"] = single[row["batch"]] / row["decode_ms_per_step"]
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'config':<16} {'devices':<10} {'batch':>5} {'step ms':>9} {'tok/s':>9} {'MBU/device':>10} "
             f"{'speed-up':>8}"]
    for r in rows:
        mbu = f"{100 * r['mbu_per_device']:9.1f}%" if r["mbu_per_device"] is not None else "       n/a"
        lines.append(f"{r['config']:<16} {r['mesh']:<10} {r['batch']:>5} {r['decode_ms_per_step']:>9.3f} "
                     f"{r['tokens_per_s']:>9.1f} {mbu} {r['speedup']:>7.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny presets in float32: runs on a CPU")
    parser.add_argument("--batch", type=int_list, default=[1, 16])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", help="default: bfloat16 (float32 with --tiny)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("float32" if args.tiny else "bfloat16")
    if jax.device_count() < 2:
        print(f"needs 2 devices, found {jax.devices()}", file=sys.stderr)
        return 2
    rows = [row for name, mesh in RUNS["tiny" if args.tiny else "gpu"] for row in measure(name, mesh, args)]
    print(f"{rows[0]['device']}, jax {jax.__version__}; MBU per device = bytes per step / step time / "
          f"(devices x peak bandwidth)")
    print(format_rows(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
