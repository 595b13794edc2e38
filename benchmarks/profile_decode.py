"""Where a decode step's time goes: a jax.profiler trace of one decode loop, summarised as
device time per kernel (top N by total), plus the optimised HLO of the decode program.

    python benchmarks/profile_decode.py --config llama-3-8b [--mesh tensor=2] [--batch 1] --out DIR

Writes DIR/trace (the raw profile, open with Perfetto or TensorBoard), DIR/summary.txt and
DIR/decode.hlo.txt, and prints the summary. Random bf16 weights, prompt 128, --gen steps.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import math
import pathlib

import jax
import numpy as np

import chimera
from chimera.runtime.cli import mesh_sizes
from chimera.runtime.engine import STOP_SLOTS, Engine, bucket
from chimera.runtime.model import build
from chimera.runtime.sampling import Sampling


def kernel_summary(trace_dir: pathlib.Path, top: int) -> str:
    """Device-side events of the Perfetto trace, grouped by name: total µs, count, mean µs."""
    path = next(trace_dir.rglob("*.trace.json.gz"), None) or next(trace_dir.rglob("perfetto_trace.json.gz"))
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    device_pids = {pid for pid, name in names.items() if "GPU" in name.upper()} or set(names)  # CPU: host threads
    totals, counts = collections.Counter(), collections.Counter()
    per_pid = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in device_pids:
            totals[e["name"]] += e.get("dur", 0)
            counts[e["name"]] += 1
            per_pid[names[e["pid"]]] += e.get("dur", 0)
    lines = [f"trace: {path}", "device busy time per process (µs): " + json.dumps(per_pid, indent=1),
             f"{'total µs':>10} {'count':>6} {'mean µs':>8}  kernel"]
    for name, total in totals.most_common(top):
        lines.append(f"{total:>10.0f} {counts[name]:>6} {total / counts[name]:>8.1f}  {name[:120]}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--mesh", type=mesh_sizes)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    config = chimera.load_config(args.config).replace(dtype=args.dtype)
    model = build(config)
    mesh = None
    if args.mesh:
        mesh = chimera.make_mesh(**args.mesh, devices=jax.devices()[:math.prod(args.mesh.values())])
    params = model.init(jax.random.key(0))
    engine = Engine(model, params, max_batch=args.batch, max_len=args.prompt_len + args.gen, mesh=mesh)
    rng = np.random.default_rng(0)
    batch = args.batch
    tokens = np.zeros((batch, engine.pad_width(args.prompt_len)), np.int32)
    tokens[:, :args.prompt_len] = rng.integers(0, config.vocab_size, (batch, args.prompt_len))
    lengths = np.full((batch,), args.prompt_len, np.int32)
    row_ids = np.arange(batch, dtype=np.int32)
    cache_len = engine.cache_len(args.prompt_len + args.gen)

    def decode():
        state, first = engine.prefill_prompts(tokens, lengths, cache_len, row_ids, np.int32(0), Sampling())
        jax.block_until_ready(state)
        return jax.block_until_ready(engine.decode(
            engine.params, state, first, np.ones((batch,), bool), row_ids, np.int32(0),
            np.full((STOP_SLOTS,), -1, np.int32), np.int32(args.gen), out_len=bucket(args.gen, 16),
            sampling=Sampling()))

    decode()  # compile
    with jax.profiler.trace(str(out / "trace"), create_perfetto_trace=True):
        decode()
    program = engine.programs(batch, cache_len).decode
    state_shape = jax.eval_shape(lambda: model.init_state(batch, cache_len))
    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, np.int32)  # noqa: E731
    with engine.on_mesh():
        hlo = program.lower(engine.params, state_shape, i32(batch), jax.ShapeDtypeStruct((batch,), bool), i32(batch),
                            i32(), i32(STOP_SLOTS), i32(), bucket(args.gen, 16), Sampling()).compile().as_text()
    (out / "decode.hlo.txt").write_text(hlo)
    summary = f"{args.config} batch {batch} mesh {args.mesh} gen {args.gen} on {jax.devices()[0].device_kind}\n"
    summary += kernel_summary(out / "trace", args.top)
    (out / "summary.txt").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
