"""The decode-attention kernel against the XLA path on one GPU: one layer's attention of one
new token per row over a large KV cache filled to some context (Llama-3-8B's heads: 32 query,
8 KV, head_dim 128, bf16), checked for equality and timed.

    python benchmarks/decode_attention.py [--cache 32768] [--contexts 1024,16384] [--batch 1,16,64] [--json out.json]

Bandwidth counts the filled part of K and V read once (what the kernel must read); the XLA
path reads the whole cache whatever the context.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

from chimera.attention.decode_kernel import decode_attention, decode_attention_reference
from timing import median_seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", type=int, default=32768)
    parser.add_argument("--contexts", default="1024,16384")
    parser.add_argument("--batch", default="1,16,64")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--json")
    args = parser.parse_args()
    scale = args.head_dim ** -0.5
    off_gpu = jax.default_backend() != "gpu"  # interpreted: a check of the script, not a timing
    kernel = jax.jit(lambda q, k, v, n: decode_attention(q, k, v, n, scale=scale, interpret=off_gpu))
    reference = jax.jit(lambda q, k, v, n: decode_attention_reference(q, k, v, n, scale=scale))
    rows = []
    for batch in (int(b) for b in args.batch.split(",")):
        cache = args.cache if batch <= 16 else min(args.cache, 8192)  # 64 x 32k x 2 x 2 MiB does not fit
        key_q, key_k, key_v = jax.random.split(jax.random.key(batch), 3)
        shape = (batch, cache, args.kv_heads, args.head_dim)
        q = jax.random.normal(key_q, (batch, args.heads, args.head_dim), jnp.bfloat16)
        k = jax.random.normal(key_k, shape, jnp.bfloat16)
        v = jax.random.normal(key_v, shape, jnp.bfloat16)
        for context in (int(c) for c in args.contexts.split(",")):
            if context > cache:
                continue
            lengths = jnp.full((batch,), context, jnp.int32)
            error = float(jnp.max(jnp.abs(kernel(q, k, v, lengths).astype(jnp.float32)
                                          - reference(q, k, v, lengths).astype(jnp.float32))))
            filled_bytes = 2 * batch * context * args.kv_heads * args.head_dim * 2
            t_kernel, t_xla = (median_seconds(fn, (q, k, v, lengths)) for fn in (kernel, reference))
            row = {"batch": batch, "cache": cache, "context": context, "kernel_us": t_kernel * 1e6,
                   "xla_us": t_xla * 1e6, "kernel_gb_s": filled_bytes / t_kernel / 1e9,
                   "max_abs_diff": error}
            rows.append(row)
            print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "jax_version": jax.__version__, "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
