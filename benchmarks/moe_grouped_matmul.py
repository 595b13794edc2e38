"""Grouped expert MLPs on one device: `ragged_dot` vs chimera's `tiled` grouped matmul vs a dense
gated MLP of the same FLOPs, for a Mixtral-shaped layer (8 experts, D=4096, F=14336, bf16, top-2).

    python benchmarks/moe_grouped_matmul.py [--json out.json]        # the GPU run
    python benchmarks/moe_grouped_matmul.py --tiny                   # small shapes, runs on a CPU

For each token count N the N*k rows are routed by a softmax top-k router over random logits,
sorted by expert, and timed through: each grouped matmul alone (the rows already sorted), the
whole dropless dispatch with each (sort, gather, grouped MLP, unsort, weighted combine), and a
dense gated MLP over the same N*k rows with one expert's weights (the same FLOPs, no grouping).
Times are medians of --repeats calls after --warmup, each synchronised with block_until_ready.
Printed as JSON: ms, TFLOP/s (2 * 3 * D * F per row), the bandwidth of reading the experts the
rows use, and each time's ratio to the dense matmul's.
"""

from __future__ import annotations

import argparse
import functools
import json

import jax
import jax.numpy as jnp

from chimera.moe import dispatch
from chimera.moe.mlp import ACTIVATIONS
from chimera.moe.router import softmax_topk
from timing import median_seconds


def dense_mlp(rows, experts, activation):
    """The same FLOPs as the grouped MLP over these rows, all through expert 0."""
    act = ACTIVATIONS[activation]
    return (act(rows @ experts["w_gate"][0]) * (rows @ experts["w_up"][0])) @ experts["w_down"][0]


def run(n_tokens: int, args, experts, key) -> dict:
    k_x, k_logits = jax.random.split(key)
    dtype = jnp.dtype(args.dtype)
    x = jax.random.normal(k_x, (n_tokens, args.d_model), dtype)  # [N, D]
    logits = jax.random.normal(k_logits, (n_tokens, args.experts), jnp.float32)  # [N, E]
    ids, weights = softmax_topk(logits, args.top_k, renormalize=True)  # [N, k]
    routed = jnp.ones(ids.shape, bool)
    expert = dispatch.slot_major(ids, routed, args.experts)  # [M]
    order, _, sizes = dispatch.rank_in_group(expert, args.experts)
    rows = jnp.tile(x, (args.top_k, 1))[order]  # [M, D] sorted by expert

    grouped = {name: jax.jit(functools.partial(mlp, activation="silu")) for name, mlp in dispatch.GROUPED_MLPS.items()}
    cases = {f"{name}_matmul": (fn, (rows, sizes, experts)) for name, fn in grouped.items()}
    for name in dispatch.GROUPED_MLPS:
        fn = jax.jit(functools.partial(dispatch.dropless, activation="silu", grouped_matmul=name))
        cases[f"{name}_dropless"] = (fn, (x, ids, weights, routed, experts))
    cases["dense_same_flops"] = (jax.jit(functools.partial(dense_mlp, activation="silu")), (rows, experts))

    flops = 2 * 3 * args.d_model * args.d_ff * rows.shape[0]
    used = int((sizes > 0).sum())
    expert_bytes = 3 * args.d_model * args.d_ff * dtype.itemsize
    result = {"tokens": n_tokens, "rows": int(rows.shape[0]), "experts_used": used, "flops": flops}
    for name, (fn, fn_args) in cases.items():
        seconds = median_seconds(fn, fn_args, args.warmup, args.repeats)
        touched = expert_bytes * (1 if name == "dense_same_flops" else used)
        result[name] = {"ms": seconds * 1e3, "tflops": flops / seconds / 1e12, "weight_gb_s": touched / seconds / 1e9}
    dense = result["dense_same_flops"]["ms"]
    for name in cases:
        result[name]["time_vs_dense"] = result[name]["ms"] / dense
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="1,64,512,4096", help="comma-separated token counts")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=4096)
    parser.add_argument("--d-ff", type=int, default=14336)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--tiny", action="store_true", help="D=64, F=128, tokens 1,16,64, 3 repeats (CPU check)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.tiny:
        args.d_model, args.d_ff, args.tokens, args.repeats, args.warmup = 64, 128, "1,16,64", 3, 1

    keys = jax.random.split(jax.random.key(0), 4)
    dtype = jnp.dtype(args.dtype)
    e, d, f = args.experts, args.d_model, args.d_ff
    experts = {"w_gate": (jax.random.normal(keys[0], (e, d, f)) * d ** -0.5).astype(dtype),
               "w_up": (jax.random.normal(keys[1], (e, d, f)) * d ** -0.5).astype(dtype),
               "w_down": (jax.random.normal(keys[2], (e, f, d)) * f ** -0.5).astype(dtype)}
    results = [run(int(n), args, experts, jax.random.fold_in(keys[3], int(n))) for n in args.tokens.split(",")]
    report = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "experts": e, "top_k": args.top_k,
              "d_model": d, "d_ff": f, "dtype": args.dtype, "repeats": args.repeats, "results": results}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
