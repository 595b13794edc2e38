"""On the GPU: the fused attention paths equal the XLA masked path they replace.

    python benchmarks/check_gpu_attention.py

- prompt chunk on an empty cache: `Attention.fresh_attend` (cuDNN flash attention on a GPU in
  bf16) against `Attention.attend` over a cache holding the chunk (the general path), ragged
  lengths including a single-token row and an empty (padding) row;
- one-token decode: `decode_attention` (the Pallas kernel) against `decode_attention_reference`.
Exits non-zero if a valid row differs by more than bf16 rounding allows.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from chimera.attention.attention import Attention
from chimera.attention.decode_kernel import decode_attention, decode_attention_reference
from chimera.runtime.protocol import Context

TOLERANCE = 3e-2  # bf16 inputs, float32 softmax: both paths round q, k, v and the probabilities alike


def check(name: str, got, want, valid) -> bool:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    error = float(np.abs(got - want)[valid].max())
    finite = bool(np.isfinite(got).all())
    ok = error <= TOLERANCE and finite
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max |diff| on valid rows {error:.2e}, all finite {finite}")
    return ok


def main() -> int:
    print(jax.devices()[0].device_kind, jax.__version__)
    results = []
    for n_heads, n_kv_heads, head_dim in [(8, 2, 64), (32, 8, 128), (4, 4, 128)]:
        block = Attention(d_model=n_heads * head_dim, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim)
        batch, n_new, slots = 4, 64, 128
        keys = jax.random.split(jax.random.key(head_dim + n_heads), 3)
        q = jax.random.normal(keys[0], (batch, n_new, n_heads, head_dim), jnp.bfloat16)
        k = jax.random.normal(keys[1], (batch, n_new, n_kv_heads, head_dim), jnp.bfloat16)
        v = jax.random.normal(keys[2], (batch, n_new, n_kv_heads, head_dim), jnp.bfloat16)
        lengths = jnp.array([64, 37, 1, 0], jnp.int32)
        steps = jnp.arange(n_new)
        ctx = Context(positions=jnp.broadcast_to(steps, (batch, n_new)), valid=steps[None, :] < lengths[:, None])
        fresh = jax.jit(block.fresh_attend)(q, k, v, ctx)
        cache = jnp.zeros((batch, slots, n_kv_heads, head_dim), jnp.bfloat16)
        k_cache, v_cache = cache.at[:, :n_new].set(k), cache.at[:, :n_new].set(v)
        mask = block.mask(ctx.positions, jnp.arange(slots))
        general = jax.jit(lambda: block.attend({}, q, k_cache, v_cache, mask))()
        valid = np.asarray(ctx.valid)
        results.append(check(f"prefill H={n_heads} Hkv={n_kv_heads} Dh={head_dim}", fresh, general, valid))
        decode_lengths = jnp.array([1, 37, 64, 0], jnp.int32)
        got = decode_attention(q[:, 0], k_cache, v_cache, decode_lengths, scale=block.scale,
                               interpret=jax.default_backend() != "gpu")  # off GPU: a check of the script
        want = decode_attention_reference(q[:, 0], k_cache, v_cache, decode_lengths, scale=block.scale)
        results.append(check(f"decode  H={n_heads} Hkv={n_kv_heads} Dh={head_dim}", got, want,
                             np.ones(got.shape, bool)))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
