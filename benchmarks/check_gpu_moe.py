"""On the GPU: the `gather` grouped matmul (there: the in-place Pallas kernel, moe/grouped_matvec.py)
equals float64 numpy and `ragged_dot` for a decode step's few rows.

    python benchmarks/check_gpu_moe.py

Mixtral's expert shapes (8 x 4096 x 14336) and DeepSeek-V2-Lite's (2048 x 1408: blocks of 128),
1 to 8 rows sorted by expert with one row of no expert (its output must be zero), in float32 at
highest matmul precision (against float64: 1e-4 relative to the output's scale) and in bfloat16
(against ragged_dot: both round the products to bf16, 3e-2). Exits non-zero on any failure.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from chimera.moe import dispatch

TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}  # max |diff| / max |reference|


def float64_mlp(rows, expert, experts):
    w = {k: np.asarray(v, np.float64) for k, v in experts.items()}
    out = np.zeros(rows.shape)
    for m, e in enumerate(expert):
        if e < w["w_gate"].shape[0]:
            x = np.asarray(rows[m], np.float64)
            gate = x @ w["w_gate"][e]
            out[m] = (gate / (1 + np.exp(-gate)) * (x @ w["w_up"][e])) @ w["w_down"][e]
    return out


def main() -> int:
    print(jax.devices()[0].device_kind, jax.__version__, "backend", jax.default_backend())
    failures = 0
    for n_experts, d_model, d_ff in [(8, 4096, 14336), (8, 2048, 1408)]:
        keys = jax.random.split(jax.random.key(d_ff), 4)
        experts32 = {"w_gate": jax.random.normal(keys[0], (n_experts, d_model, d_ff)) * d_model ** -0.5,
                     "w_up": jax.random.normal(keys[1], (n_experts, d_model, d_ff)) * d_model ** -0.5,
                     "w_down": jax.random.normal(keys[2], (n_experts, d_ff, d_model)) * d_ff ** -0.5}
        for n_rows in (1, 2, 6, 8):
            sizes = np.zeros(n_experts, np.int32)
            routed = n_rows - 1 if n_rows > 1 else 1  # the last row routed nowhere (but with one row)
            for m in range(routed):
                sizes[(3 * m) % n_experts] += 1
            expert = np.repeat(np.arange(n_experts), sizes)
            expert = np.concatenate([expert, np.full(n_rows - len(expert), n_experts)])
            rows32 = jax.random.normal(jax.random.fold_in(keys[3], n_rows), (n_rows, d_model))
            for dtype in ("float32", "bfloat16"):
                experts = {k: v.astype(dtype) for k, v in experts32.items()}
                rows = rows32.astype(dtype)
                with jax.default_matmul_precision("highest"):
                    got = jax.jit(dispatch.gather_mlp, static_argnums=3)(rows, jnp.asarray(sizes), experts, "silu")
                    ragged = jax.jit(dispatch.ragged_dot_mlp, static_argnums=3)(rows, jnp.asarray(sizes), experts,
                                                                               "silu")
                got, ragged = np.asarray(got, np.float64), np.asarray(ragged, np.float64)
                want = float64_mlp(np.asarray(rows, np.float64), expert, experts) if dtype == "float32" else ragged
                scale = np.abs(want[: len(expert[expert < n_experts])]).max()
                error = np.abs(got - want)[expert < n_experts].max() / scale
                zeros = bool((got[expert >= n_experts] == 0).all())
                ok = error <= TOLERANCE[dtype] and zeros and np.isfinite(got).all()
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} E={n_experts} D={d_model} F={d_ff} rows={n_rows} {dtype}: "
                      f"max |diff| / scale {error:.2e} against {'float64' if dtype == 'float32' else 'ragged_dot'}, "
                      f"rows of no expert zero {zeros}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
