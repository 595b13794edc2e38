"""The Pallas one-row product (`benchmarks/pallas_matvec.py`) against XLA on the one-row
products of a llama-3-8b decode step, alone and inside the model.

    python benchmarks/matvec_kernel.py [--shapes tp2|1gpu|all] [--json out.json]
    python benchmarks/matvec_kernel.py --in-model C [--json out.json]    # C's decode step under each of RULES
    python benchmarks/decode_loop.py --config C --one-row-kernel ...     # in the model (one device)
    python benchmarks/profile_decode.py --config C --one-row-kernel ...  # its kernels' times there

For each product (K x N; whether an RMS norm precedes it, as for qkv and gate/up) two chains
are timed, each a `fori_loop` of dependent steps inside one jit, on enough distinct weight
copies (>= 256 MB together) that W comes from HBM, not from the 50 MB L2:
- `xla`: what the blocks run today: `runtime.norm.rms_norm` (if any), then the product over two
  rows (`runtime/linear.py`), row 0 kept;
- `pallas_norm_fused`: `rms_norm_matvec` and the sum of its split partials;
- `pallas_norm_xla`: XLA's `rms_norm`, then `matvec` (the kernel alone, no fusion);
- `pallas_norm_none`: `matvec`, for the products no norm precedes.
Each step's result feeds the next x (x + 1e-6 * max(y)), as a layer's next kernel would. The
µs per product include that consumer and, for `xla`, the norm's own kernels: the difference is
what the kernel would save in a decode step. Pallas block sizes are swept; the best is kept.
Run under chimera's GPU decode options (the loop is captured as a CUDA graph, as decode is).
Wall time per product is not the kernel's time: in session 8 these chains favoured the kernel
while, inside the model, the profile showed it slower than XLA's GEMMs (BENCHMARKS.md). Judge
it in the model (`--one-row-kernel`).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from pallas_matvec import matvec, rms_norm_matvec
from timing import decode_ms_per_step, marginal_ms_per_step, median_seconds

import chimera
from chimera.runtime.linear import linear
from chimera.runtime.model import build
from chimera.runtime.norm import rms_norm
from chimera.sharding.init import draw_params

EPS = 1e-5
SHAPES = {  # name: (K, N, normed) per GPU of llama-3-8b
    "tp2": [("qkv", 4096, 3072, True), ("o", 2048, 4096, False), ("gate_up", 4096, 14336, True),
            ("down", 7168, 4096, False)],
    "1gpu": [("qkv", 4096, 6144, True), ("o", 4096, 4096, False), ("gate", 4096, 14336, True),
             ("down", 14336, 4096, False)],
}


def chain(product, copies: int, steps: int):
    """A jitted loop of `steps` x `copies` dependent products x [K] -> y [N] (one weight copy each)."""
    @jax.jit
    def run(x, norm_weight, weights):
        def body(_, x):
            for w in weights:
                y = product(x, norm_weight, w)  # [N] float32
                x = x + (jnp.max(y) * 1e-6).astype(x.dtype)
            return x
        return jax.lax.fori_loop(0, steps, body, x)
    return run


def xla_product(normed: bool):
    def product(x, norm_weight, w):
        h = rms_norm(x, norm_weight, EPS) if normed else x
        return linear("btk,kn->btn", h[None, None], w)[0, 0].astype(jnp.float32)
    return product


def pallas_product(norm: str, config: dict):
    """norm: "fused" (rms_norm_matvec), "xla" (rms_norm, then matvec) or "none" (matvec)."""
    def product(x, norm_weight, w):
        if norm == "fused":
            return rms_norm_matvec(x, norm_weight, w, eps=EPS, **config).sum(axis=0)
        h = rms_norm(x, norm_weight, EPS) if norm == "xla" else x
        return matvec(h, w, **config).sum(axis=0)
    return product


def configs(k: int, n: int):
    """Block sizes whose grid has between ~1 and ~8 programs per SM of an H100/H200."""
    for block_n, block_k, splits in itertools.product((32, 64, 128), (256, 512), (1, 2, 4, 8)):
        if n % block_n == 0 and k % (splits * block_k) == 0 and 100 <= n // block_n * splits <= 1100:
            yield {"block_n": block_n, "block_k": block_k, "splits": splits}


def time_product(product, x, g, weights, steps: int) -> float:
    run = chain(product, len(weights), steps)
    return median_seconds(run, (x, g, weights), repeats=5) / (steps * len(weights)) * 1e6


def best_pallas(norm: str, k: int, n: int, x, g, weights, steps: int):
    """The fastest block sizes (then warps and stages) for this product: (µs, config)."""
    def timed(config):
        try:
            return time_product(pallas_product(norm, config), x, g, weights, steps), config
        except Exception as error:  # a block shape Triton rejects (shared memory): recorded, not fatal
            print(f"  {k}x{n} {norm} {config}: {type(error).__name__}: {str(error)[:120]}", flush=True)
            return math.inf, config

    us, config = min((timed(config) for config in configs(k, n)), key=lambda item: item[0])
    tuned = [timed(config | {"num_warps": warps, "num_stages": stages})
             for warps, stages in ((4, 2), (4, 4), (8, 3), (2, 3))]
    return min([(us, config)] + tuned, key=lambda item: item[0])


# Block-size rules for the in-model sweep: (block_n, block_k, min_programs, num_warps, num_stages).
RULES = [(64, 256, 256, 4, 3), (128, 128, 256, 4, 3), (128, 256, 256, 8, 3), (128, 128, 512, 4, 4),
         (64, 128, 512, 4, 4), (256, 64, 256, 8, 3)]


def heuristic_config(k: int, n: int, rule: tuple = RULES[0]) -> dict | None:
    """Block sizes for a K x N product without a sweep: `rule`'s column and row blocks, K split
    until the grid has at least its number of programs; None where they do not fit."""
    block_n, block_k, min_programs, num_warps, num_stages = rule
    if n % block_n or k % block_k:
        return None
    splits = 1
    while n // block_n * splits < min_programs and k % (2 * splits * block_k) == 0:
        splits *= 2
    return {"block_n": block_n, "block_k": block_k, "splits": splits, "num_warps": num_warps,
            "num_stages": num_stages}


def one_row_kernel_linear(spec: str, x, w, rule: tuple = RULES[0]):
    """`runtime.linear.linear` with a one-row product on one device computed by `matvec`, where
    x's dimensions after B and T are the contracted ones and lead w, in order (true of every
    projection the blocks write): w is then a [K, N] matrix and x a [K] vector."""
    inputs, _ = spec.split("->")
    x_axes, w_axes = inputs.split(",")
    contracted = x_axes[2:]
    k = math.prod(x.shape[2:])
    config = heuristic_config(k, w.size // k, rule)
    if (x.shape[0] * x.shape[1] != 1 or not jax.sharding.get_abstract_mesh().empty
            or not w_axes.startswith(contracted) or config is None):
        return linear(spec, x, w)
    partials = matvec(x.reshape(k).astype(w.dtype), w.reshape(k, -1), **config)  # [splits, N]
    return partials.sum(axis=0).astype(x.dtype).reshape(x.shape[:2] + w.shape[len(contracted):])


def replace_linear(product):
    """An experiment's substitute for `runtime.linear.linear`, where the blocks imported it (and where
    `sharding.all_reduce.row_parallel_linear` and `sharding.residual.row_parallel_output`, which make
    their output projections, did)."""
    import chimera.attention.attention
    import chimera.attention.mla
    import chimera.moe.mlp
    import chimera.sharding.all_reduce
    import chimera.sharding.residual
    for module in (chimera.attention.attention, chimera.attention.mla, chimera.moe.mlp, chimera.sharding.all_reduce,
                   chimera.sharding.residual):
        module.linear = product


def use_one_row_kernel(rule: tuple = RULES[0]):
    """The blocks' one-row products by `matvec` with `rule`'s block sizes (one device only)."""
    replace_linear(functools.partial(one_row_kernel_linear, rule=rule))


def in_model(config_name: str, gens=(32, 160), repeats: int = 2) -> list[dict]:
    """Marginal ms per batch-1 decode step of `config_name` on one device: XLA's GEMMs, then the
    kernel under each of RULES, then XLA's again (a drift check)."""
    config = chimera.load_config(config_name).replace(dtype="bfloat16")
    params = draw_params(build(config), jax.random.key(0), None)
    rows = []
    for rule in [None] + RULES + [None]:
        if rule is None:
            replace_linear(linear)
        else:
            use_one_row_kernel(rule)
        jax.clear_caches()
        ms = decode_ms_per_step(config, params, gens, repeats)
        row = {"rule": rule, "ms_per_step": ms, "marginal_ms_per_step": marginal_ms_per_step(ms)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def chains(shapes: str, steps: int) -> list[dict]:
    """Each product of `shapes` ("tp2", "1gpu" or "all") as XLA's and the kernel's chains."""
    groups = ["tp2", "1gpu"] if shapes == "all" else [shapes]
    rows = []
    for group in groups:
        for name, k, n, normed in SHAPES[group]:
            keys = jax.random.split(jax.random.key(0), 3)
            nbytes = k * n * 2
            weights = [(jax.random.normal(key, (k, n)) * k ** -0.5).astype(jnp.bfloat16)
                       for key in jax.random.split(keys[0], max(2, math.ceil(256e6 / nbytes)))]
            x = jax.random.normal(keys[1], (k,)).astype(jnp.bfloat16)
            g = (1 + 0.1 * jax.random.normal(keys[2], (k,))).astype(jnp.bfloat16)
            row = {"group": group, "product": name, "k": k, "n": n, "normed": normed}
            xla = xla_product(normed)
            reference = np.asarray(jax.jit(xla)(x, g, weights[0]))
            variants = {"xla": (time_product(xla, x, g, weights, steps), None)}
            for norm in ("fused", "xla") if normed else ("none",):
                variants[f"pallas_norm_{norm}"] = best_pallas(norm, k, n, x, g, weights, steps)
            for variant, (us, config) in variants.items():
                product = xla if config is None else pallas_product(variant.removeprefix("pallas_norm_"), config)
                got = np.asarray(jax.jit(product)(x, g, weights[0]))
                row[variant] = {"us": us, "tb_s": nbytes / us / 1e6, "config": config,
                                "max_rel_diff": float(np.abs(got - reference).max() / np.abs(reference).max())}
            print(json.dumps(row), flush=True)
            rows.append(row)
            del weights
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="all", choices=["tp2", "1gpu", "all"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--in-model", metavar="CONFIG", help="time a decode step of CONFIG under each of RULES")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = in_model(args.in_model) if args.in_model else chains(args.shapes, args.steps)
    if args.json:
        report = {"in_model": args.in_model, "device": jax.devices()[0].device_kind, "jax_version": jax.__version__}
        with open(args.json, "w") as f:
            json.dump(report | {"rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
