"""How XLA lowers a one-row projection ([1, K] x [K, N], a decode step at batch 1) on the GPU,
and what it costs: as a GEMM (Triton/cuBLAS) or "strength-reduced" to a multiply + reduce.

    python benchmarks/matvec_lowering.py [--json out.json]

For each weight shape the one-row product is timed three ways, each in a loop of `--steps`
dependent products inside one jit (so dispatch is amortised):
- `row`: x [1, K] @ W, as the blocks write it;
- `two_rows`: x padded with a zero row to [2, K], product, row 0 kept;
- `rows16`: 16 rows (a batch-16 step), for reference.
It prints µs per product, the bandwidth on W's bytes, and whether the compiled program holds
a GEMM (`gemm`/`triton`/`cublas` in its HLO) or only reduce fusions.

Then the MoE `gather` path's per-row products (`moe/dispatch.py:gather_mlp`): M routed rows
x [M, D], each through its own expert's gathered matrix W[ids] [M, D, F], as `row`
("md,mdf->mf", a vector left operand) and `two_rows` (each row padded to two), for
DeepSeek-V2-Lite's and Mixtral's expert shapes at batch 1; bandwidth on the M matrices' bytes.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
from timing import median_seconds

SHAPES = [(4096, 1024), (4096, 2048), (2048, 4096), (2048, 2048), (4096, 4096), (4096, 7168), (4096, 14336)]
EXPERT_SHAPES = [(2048, 1408, 64, 6), (4096, 14336, 8, 2)]  # D, F, experts, routed rows: DeepSeek-V2-Lite, Mixtral


def product(variant: str):
    def apply(x, w):  # x [1, K] -> [1, N]
        if variant == "row":
            return x @ w
        if variant == "two_rows":
            return (jnp.pad(x, ((0, 1), (0, 0))) @ w)[:1]  # [2, K] @ [K, N] -> row 0
        return (jnp.broadcast_to(x, (16, x.shape[1])) @ w)[:1]
    return apply


def looped(variant: str, steps: int):
    apply = product(variant)

    @jax.jit
    def run(x, w):
        def body(_, x):
            y = apply(x, w)  # [1, N]
            return x + (jnp.max(y) * 1e-6).astype(x.dtype)  # depends on every column of y
        return jax.lax.fori_loop(0, steps, body, x)
    return run


def gathered_looped(variant: str, steps: int):
    @jax.jit
    def run(x, w, ids):  # x [M, D], w [E, D, F], ids [M]
        def body(_, x):
            matrices = w[ids]  # [M, D, F]
            if variant == "row":
                y = jnp.einsum("md,mdf->mf", x, matrices)
            else:
                y = jnp.einsum("mrd,mdf->mrf", jnp.pad(x[:, None], ((0, 0), (0, 1), (0, 0))), matrices)[:, 0]
            return x + (jnp.max(y) * 1e-6).astype(x.dtype)
        return jax.lax.fori_loop(0, steps, body, x)
    return run


def lowering(run, *operands) -> str:
    text = run.lower(*operands).compile().as_text().lower()
    return "gemm" if any(word in text for word in ("__triton_gemm", "cublas", "gemm_fusion", "nvjet")) else "reduce"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    for k, n in SHAPES:
        w = jax.random.normal(jax.random.key(0), (k, n), jnp.bfloat16)
        x = jax.random.normal(jax.random.key(1), (1, k), jnp.bfloat16)
        for variant in ("row", "two_rows", "rows16"):
            run = looped(variant, args.steps)
            seconds = median_seconds(run, (x, w), repeats=5) / args.steps
            rows.append({"k": k, "n": n, "variant": variant, "us": seconds * 1e6,
                         "weight_tb_s": k * n * 2 / seconds / 1e12, "lowering": lowering(run, x, w)})
            print(json.dumps(rows[-1]))
    for d, f, n_experts, m in EXPERT_SHAPES:
        w = jax.random.normal(jax.random.key(0), (n_experts, d, f), jnp.bfloat16)
        x = jax.random.normal(jax.random.key(1), (m, d), jnp.bfloat16)
        ids = jax.random.permutation(jax.random.key(2), n_experts)[:m]
        for variant in ("row", "two_rows"):
            run = gathered_looped(variant, args.steps)
            seconds = median_seconds(run, (x, w, ids), repeats=5) / args.steps
            rows.append({"experts": n_experts, "routed": m, "k": d, "n": f, "variant": f"gather_{variant}",
                         "us": seconds * 1e6, "weight_tb_s": m * d * f * 2 / seconds / 1e12,
                         "lowering": lowering(run, x, w, ids)})
            print(json.dumps(rows[-1]))
    report = {"device": jax.devices()[0].device_kind, "jax_version": jax.__version__, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
