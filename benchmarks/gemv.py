"""chimera's one-row product (runtime/gemv.cu) against float64 and XLA's GEMM, on a GPU.

    python benchmarks/gemv.py [--shapes 2048x4096,7168x4096,...] [--repeats 20] [--json out.json]

Correctness: each shape and dtype by the kernel against a float64 numpy product of the same inputs
(error in units of the output dtype's rounding) and against XLA's product (runtime/linear.py's padded
GEMM: the share of output values with the same bits). Timing: 16 products of one x by 16 distinct
weights in one program (so W comes from HBM, not L2), per product and as TB/s of W read, for the
kernel and for XLA.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from chimera.runtime import gemv

SPEC = "btk,kn->btn"
# llama-3-8b's products on 2 GPUs (q/k/v, o, gate or up, down) and on one (o, down)
DEFAULT_SHAPES = "4096x2048,4096x512,2048x4096,4096x7168,7168x4096,4096x4096,14336x4096"
COPIES = 16


def xla_product(x, w):
    padded = jnp.pad(x, [(0, 1), (0, 0), (0, 0)])  # runtime/linear.py's zero row
    return jnp.einsum(SPEC, padded, w)[:1]


def kernel_product(x, w):
    return gemv.product(SPEC, x, w)


def check(k: int, n: int, dtype, rng) -> dict:
    x = jnp.asarray(rng.standard_normal((1, 1, k)), dtype)
    w = jnp.asarray(rng.standard_normal((k, n)) / np.sqrt(k), dtype)
    got = np.asarray(jax.jit(kernel_product)(x, w), np.float64)[0, 0]
    xla = np.asarray(jax.jit(xla_product)(x, w), np.float64)[0, 0]
    want = np.asarray(x, np.float64)[0, 0] @ np.asarray(w, np.float64)
    eps = float(jnp.finfo(dtype).eps)
    scale = np.maximum(np.abs(want), 1.0)
    return {"k": k, "n": n, "dtype": jnp.dtype(dtype).name,
            "kernel_error_eps": float(np.max(np.abs(got - want) / scale) / eps),
            "xla_error_eps": float(np.max(np.abs(xla - want) / scale) / eps),
            "same_bits_as_xla": float(np.mean(got == xla))}


def time_products(product, k: int, n: int, dtype, repeats: int, rng) -> float:
    """Seconds per product of one x by COPIES distinct [k, n] weights in one program."""
    x = jnp.asarray(rng.standard_normal((1, 1, k)), dtype)
    weights = [jnp.asarray(rng.standard_normal((k, n)) / np.sqrt(k), dtype) for _ in range(COPIES)]

    @jax.jit
    def run(x, weights):
        return jnp.stack([product(x, w) for w in weights])  # one kernel more in all, not one a product

    jax.block_until_ready(run(x, weights))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(x, weights))
        best = min(best, time.perf_counter() - start)
    return best / COPIES


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="KxN,... of W")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    os.environ["CHIMERA_GEMV"] = "chimera"
    if not gemv.available():
        raise SystemExit("the kernel is unavailable here (needs a Hopper GPU and nvcc)")
    rng = np.random.default_rng(0)
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]
    rows = []
    for k, n in shapes:
        for dtype in (jnp.bfloat16, jnp.float32):
            row = check(k, n, dtype, rng)
            if dtype == jnp.bfloat16:
                weight_bytes = k * n * 2
                for name, product in (("kernel", kernel_product), ("xla", xla_product)):
                    seconds = time_products(product, k, n, dtype, args.repeats, rng)
                    row[f"{name}_us"] = seconds * 1e6
                    row[f"{name}_tb_s"] = weight_bytes / seconds / 1e12
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
