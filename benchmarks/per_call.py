"""What a decode call costs beside its steps, and whether it is XLA updating the loop's CUDA graph
because a buffer the graph uses moved since the last call.

    python benchmarks/per_call.py --config llama-3-8b [--mesh tensor=2] [--modes keep,fresh,pinned] --json out.json

XLA records a command buffer (CUDA graph) against the addresses of the buffers its commands use
and re-records it when any of them differs at the next execution ("Update command buffer" in its
log with TF_CPP_VMODULE=command_buffer_thunk=3). Each layout is timed three ways, as
`chimera bench` times a decode call (prefill untimed, a call over gen - 1 steps, median of
--repeats), at each of --gens, so that per-call and per-step costs separate:
- keep: as `chimera bench` ran before session 10: each call's outputs still alive when the next
  call starts; the per-call inputs (row ids, seed, stop tokens, limits) placed afresh each call,
  as the Engine places them;
- fresh: each call's outputs (and the prefill's first tokens) released before the next prefill,
  as `generate` (which fetches its tokens and moves on) releases them; inputs placed afresh;
- pinned: as fresh, but the per-call inputs placed once and passed again each call;
- host: as fresh, but the per-call inputs handed over as host arrays, which the Engine places inside
  the call, as `generate` and `chimera bench` hand them over.
A line `=== MODE gen N` goes to stderr before each mode and length, to split XLA's log.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import numpy as np

import chimera
from chimera.runtime.engine import STOP_SLOTS, Engine, bucket
from chimera.runtime.model import build
from chimera.runtime.sampling import Sampling
from chimera.sharding.init import draw_params
from timing import add_layout_arguments, layouts, marginal_ms_per_step

MODES = ("keep", "fresh", "pinned", "host")


def time_calls(engine: Engine, config, batch: int, prompt_len: int, gen: int, repeats: int, mode: str) -> float:
    """Median seconds of a decode call of `gen` tokens after a fresh prefill, called `mode`'s way."""
    rng = np.random.default_rng(0)
    tokens = np.zeros((batch, engine.pad_width(prompt_len)), np.int32)
    tokens[:, :prompt_len] = rng.integers(0, config.vocab_size, (batch, prompt_len), dtype=np.int32)
    lengths = np.full((batch,), prompt_len, np.int32)
    cache_len = engine.cache_len(prompt_len + gen)
    greedy = Sampling()
    host_inputs = dict(active=np.ones((batch,), bool), row_ids=np.arange(batch, dtype=np.int32), seed=np.int32(0),
                       stop_tokens=np.full((STOP_SLOTS,), -1, np.int32), max_new=np.int32(gen))

    def placed():  # new device arrays, as `Engine.put` makes them
        return {name: (jax.device_put(value) if engine.mesh is None else
                       engine.put(value, per_row=name in ("active", "row_ids")))
                for name, value in host_inputs.items()}

    pinned = placed() if mode == "pinned" else None
    kept = None
    seconds = []
    for call in range(repeats + 2):  # untimed, as bench: the first compiles, XLA records its graphs at the second
        inputs = host_inputs if mode == "host" else pinned or placed()
        state, first = engine.prefill_prompts(tokens, lengths, cache_len, inputs["row_ids"], inputs["seed"], greedy)
        jax.block_until_ready(first)
        start = time.perf_counter()
        out = jax.block_until_ready(engine.decode(engine.params, state, first, inputs["active"], inputs["row_ids"],
                                                  inputs["seed"], inputs["stop_tokens"], inputs["max_new"],
                                                  out_len=bucket(gen, 16), sampling=greedy))
        if call >= 2:
            seconds.append(time.perf_counter() - start)
        if int(np.min(np.asarray(out[1]))) != gen:
            raise RuntimeError(f"decode produced {out[1]} tokens, expected {gen}")
        if mode == "keep":
            kept = out  # alive through the next call, as bench kept it before session 10
        del state, first, out, inputs
    del kept, pinned
    return statistics.median(seconds)


def main():
    parser = argparse.ArgumentParser()
    add_layout_arguments(parser)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    modes = args.modes.split(",")
    if not set(modes) <= set(MODES):
        parser.error(f"--modes must name some of {MODES}, got {args.modes}")
    config = chimera.load_config(args.config).replace(dtype=args.dtype)
    model = build(config)
    rows = []
    for mesh in layouts(args):
        params = draw_params(model, jax.random.key(0), mesh)
        engine = Engine(model, params, max_batch=args.batch, max_len=args.prompt_len + max(args.gens), mesh=mesh)
        for mode in modes:
            ms = {}
            for gen in args.gens:
                print(f"=== {mode} gen {gen}", file=sys.stderr, flush=True)
                seconds = time_calls(engine, config, args.batch, args.prompt_len, gen, args.repeats, mode)
                ms[gen] = seconds / (gen - 1) * 1e3
            marginal = marginal_ms_per_step(ms)
            short = min(ms)
            row = {"mesh": None if mesh is None else dict(mesh.shape), "batch": args.batch, "mode": mode,
                   "ms_per_step": ms, "marginal_ms_per_step": marginal,
                   "per_call_ms": None if marginal is None else (ms[short] - marginal) * (short - 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
        del engine, params
    report = {"config": config.name, "dtype": config.dtype, "prompt_len": args.prompt_len,
              "device": jax.devices()[0].device_kind, "jax_version": jax.__version__, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
