"""Where a decode step's time goes: a jax.profiler trace of one decode loop (the prefill runs
before the trace), summarised as device time per kernel (top N by total), the collectives'
time per step and GPU (NCCL's kernels and XLA's own), the time no kernel runs (and after which
kernel), plus the optimised HLO of the decode program.

    python benchmarks/profile_decode.py --config llama-3-8b [--mesh tensor=2] [--batch 1] --out DIR
    python benchmarks/profile_decode.py --window DIR/window.json.gz   # who set the pace, from a kept window

Writes DIR/trace (the raw profile, open with Perfetto or TensorBoard), DIR/summary.txt,
DIR/decode.hlo.txt and DIR/window.json.gz (every host and device event of two decode steps
from the middle of the loop, small enough to keep: what the host launched when, against
when the GPUs ran it), and prints the summary. Random bf16 weights, prompt 128, --gen steps.
A collective kernel's time includes its wait for the other devices: it is the time the
collective holds the GPU's stream, not the wire time alone.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import math
import pathlib
import re

import jax
import numpy as np

import chimera
from chimera.runtime.cli import mesh_sizes
from chimera.runtime.engine import STOP_SLOTS, Engine, bucket
from chimera.runtime.model import build
from chimera.runtime.sampling import Sampling
from chimera.sharding.init import draw_params


COLLECTIVE_PREFIXES = ("all_reduce", "all-reduce", "psum", "all_to_all", "all-to-all", "all_gather",
                       "all-gather", "reduce_scatter", "reduce-scatter", "ragged_all_to_all")


def kernel_summary(trace_dir: pathlib.Path, top: int, steps: int) -> str:
    """Device-side events of the Perfetto trace, grouped by name: total µs, count, mean µs; then
    the collective kernels' µs per decode step and device (NCCL's, XLA's), by kernel name; then
    `idle_summary`."""
    path = trace_file(trace_dir)
    events = load_events(trace_dir)
    names = process_names(events)
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
    per_step = steps * len(per_pid)
    # XLA runs small all-reduces with its own kernel (a fusion named after the collective) rather
    # than NCCL; both hold the stream until every device has arrived.
    kinds = {"NCCL kernels": lambda name: name.startswith("nccl"),
             "XLA collective kernels": lambda name: name.startswith(COLLECTIVE_PREFIXES)}
    for kind, matches in kinds.items():
        collectives = {name: total for name, total in totals.items() if matches(name)}
        lines.append(f"collectives ({kind}), µs per decode step and device over {steps} steps, "
                     f"{len(per_pid)} devices: {sum(collectives.values()) / per_step:.1f} "
                     f"in {sum(counts[name] for name in collectives) / per_step:.1f} kernels")
        for name, total in sorted(collectives.items(), key=lambda item: -item[1])[:8]:
            lines.append(f"{total / per_step:>10.1f} {counts[name] / per_step:>6.1f}/step  {name[:120]}")
    lines += idle_summary(events, device_pids, per_step)
    return "\n".join(lines)


def trace_file(trace_dir: pathlib.Path) -> pathlib.Path:
    return next(trace_dir.rglob("*.trace.json.gz"), None) or next(trace_dir.rglob("perfetto_trace.json.gz"))


def process_names(events) -> dict:
    """pid -> the process's name ("/device:GPU:0", "/host:CPU", ...)."""
    return {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}


def load_events(trace_dir: pathlib.Path) -> list[dict]:
    with gzip.open(trace_file(trace_dir)) as f:
        trace = json.load(f)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def save_window(trace_dir: pathlib.Path, out: pathlib.Path, steps: int):
    """The trace's metadata and every event overlapping [middle, middle + 2 steps) of the
    device activity, where a step is the device span over `steps`."""
    events = load_events(trace_dir)
    names = process_names(events)
    device = [e for e in events if e.get("ph") == "X" and "GPU" in names.get(e.get("pid"), "").upper()]
    if not device:
        return
    first, last = min(e["ts"] for e in device), max(e["ts"] + e.get("dur", 0) for e in device)
    start = (first + last) / 2
    stop = start + 2 * (last - first) / steps
    kept = [e for e in events if e.get("ph") == "M"
            or ("ts" in e and e["ts"] < stop and e["ts"] + e.get("dur", 0) >= start)]
    with gzip.open(out, "wt") as f:
        json.dump({"window_us": [start, stop], "traceEvents": kept}, f)


def launch_summary(events) -> list[str]:
    """Whether the host or the GPUs set the pace: for each device, its idle time (no kernel on any
    stream) split into the part spent waiting for the host to launch the next kernel (the host's
    launch call, matched by CUPTI correlation id, ended after the gap began) and the rest."""
    names = process_names(events)
    launch_end = {}
    for e in events:  # host-side CUDA API calls carry the id of the work they launched
        if e.get("ph") == "X" and "GPU" not in names.get(e["pid"], "").upper() and "correlation_id" in e.get("args", {}):
            launch_end[e["args"]["correlation_id"]] = e["ts"] + e.get("dur", 0)
    lines = ["idle per device, waiting for the host's launch vs not (µs over the window):"]
    for pid in sorted(pid for pid, name in names.items() if "GPU" in name.upper()):
        spans = sorted((e["ts"], e["ts"] + e.get("dur", 0), e.get("args", {}).get("correlation_id"))
                       for e in events if e.get("ph") == "X" and e["pid"] == pid)
        if not spans:
            continue
        host = other = 0.0
        end = spans[0][1]
        for start, stop, correlation in spans[1:]:
            if start > end:
                launched = launch_end.get(correlation, -math.inf)
                waited = min(start, launched) - end if launched > end else 0.0
                host, other = host + waited, other + (start - end - waited)
            end = max(end, stop)
        busy = sum(stop - start for start, stop, _ in spans)
        lines.append(f"  {names[pid]}: span {end - spans[0][0]:.0f}, kernels {busy:.0f}, idle waiting for the host "
                     f"{host:.0f}, other idle {other:.0f}")
    return lines


def idle_summary(events, device_pids, per_step: int, top: int = 8) -> list[str]:
    """Time a device runs no kernel on any stream, between its first and last kernel, per decode
    step and device; each idle gap is charged to the kernel that ended just before it (digits
    in names folded to '#', so the 64 all-reduces of a step count as one name)."""
    by_pid = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in device_pids:
            by_pid[e["pid"]].append((e["ts"], e["ts"] + e.get("dur", 0), re.sub(r"\d+", "#", e["name"])))
    idle, after = 0.0, collections.Counter()
    for spans in by_pid.values():
        spans.sort()
        end, last = spans[0][1], spans[0][2]
        for start, stop, name in spans[1:]:
            if start > end:
                idle += start - end
                after[last] += start - end
            if stop > end:
                end, last = stop, name
    lines = [f"idle (no kernel running), µs per decode step and device: {idle / per_step:.1f}; after which kernel:"]
    for name, total in after.most_common(top):
        lines.append(f"{total / per_step:>10.1f}  {name[:120]}")
    return lines


def decode_hlo(engine: Engine, batch: int, cache_len: int, gen: int) -> str:
    """The optimised HLO of the engine's decode program for (batch, cache_len, gen steps)."""
    state = jax.eval_shape(lambda: engine.model.init_state(batch, cache_len))
    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, np.int32)  # noqa: E731
    with engine.on_mesh():
        return engine.programs(batch, cache_len).decode.lower(
            engine.params, state, i32(batch), jax.ShapeDtypeStruct((batch,), bool), i32(batch), i32(), i32(STOP_SLOTS),
            i32(), bucket(gen, 16), Sampling()).compile().as_text()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    parser.add_argument("--window", help="only summarise an earlier run's window.json.gz: who set the pace")
    parser.add_argument("--mesh", type=mesh_sizes)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--decode-chunk", type=int, default=1, help="Engine(decode_chunk=K)")
    parser.add_argument("--out")
    parser.add_argument("--one-row-kernel", action="store_true",
                        help="one-row products by the Pallas matvec (benchmarks/matvec_kernel.py; one device)")
    parser.add_argument("--l2-touch", type=int, metavar="PROGRAMS",
                        help="read each layer's o weight into L2 with this many programs (benchmarks/l2_prefetch.py)")
    args = parser.parse_args()
    if args.l2_touch:
        from l2_prefetch import use_touch  # a sibling script: on the path only when run as one
        use_touch(args.l2_touch, 1.0)
    if args.one_row_kernel:
        from matvec_kernel import use_one_row_kernel  # a sibling script: on the path only when run as one
        use_one_row_kernel()
    if args.window:
        with gzip.open(args.window) as f:
            print("\n".join(launch_summary(json.load(f)["traceEvents"])))
        return
    if not (args.config and args.out):
        parser.error("--config and --out are needed (or --window)")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    config = chimera.load_config(args.config).replace(dtype=args.dtype)
    model = build(config)
    mesh = None
    if args.mesh:
        mesh = chimera.make_mesh(**args.mesh, devices=jax.devices()[:math.prod(args.mesh.values())])
    params = draw_params(model, jax.random.key(0), mesh)
    engine = Engine(model, params, max_batch=args.batch, max_len=args.prompt_len + args.gen, mesh=mesh,
                    decode_chunk=args.decode_chunk)
    rng = np.random.default_rng(0)
    batch = args.batch
    tokens = np.zeros((batch, engine.pad_width(args.prompt_len)), np.int32)
    tokens[:, :args.prompt_len] = rng.integers(0, config.vocab_size, (batch, args.prompt_len))
    lengths = np.full((batch,), args.prompt_len, np.int32)
    row_ids = np.arange(batch, dtype=np.int32)
    cache_len = engine.cache_len(args.prompt_len + args.gen)

    def prefill():
        return jax.block_until_ready(
            engine.prefill_prompts(tokens, lengths, cache_len, row_ids, np.int32(0), Sampling()))

    def decode(state, first):
        return jax.block_until_ready(engine.decode(
            engine.params, state, first, np.ones((batch,), bool), row_ids, np.int32(0),
            np.full((STOP_SLOTS,), -1, np.int32), np.int32(args.gen), out_len=bucket(args.gen, 16),
            sampling=Sampling()))

    decode(*prefill())  # compile
    state, first = prefill()
    with jax.profiler.trace(str(out / "trace"), create_perfetto_trace=True):
        decode(state, first)
    (out / "decode.hlo.txt").write_text(decode_hlo(engine, batch, cache_len, args.gen))
    summary = f"{args.config} batch {batch} mesh {args.mesh} gen {args.gen} on {jax.devices()[0].device_kind}\n"
    summary += kernel_summary(out / "trace", args.top, steps=args.gen - 1)
    save_window(out / "trace", out / "window.json.gz", steps=args.gen - 1)
    if (out / "window.json.gz").exists():
        with gzip.open(out / "window.json.gz") as f:
            summary += "\n" + "\n".join(launch_summary(json.load(f)["traceEvents"]))
    (out / "summary.txt").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
