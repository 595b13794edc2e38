"""The attention computation every variant shares: grouped-query softmax attention under a mask.

`jax.nn.dot_product_attention` cannot soft-cap logits (Gemma-2) or add learned sink logits
(GPT-OSS), so the variants use this one function instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASKED = jnp.finfo(jnp.float32).min  # finite: a fully masked (padding) row stays NaN-free


def attend(q, k, v, mask, *, scale: float, softcap: float | None = None, sink_logits=None):
    """Softmax attention with grouped KV heads.

    q [B, T, H, Dh]; k, v [B, S, Hkv, Dh] with H a multiple of Hkv; mask [B, T, S] bool
    (True: may attend). Logits and softmax in float32. softcap: logits -> c * tanh(logits / c).
    sink_logits [H]: a learned per-head logit that joins each softmax denominator but carries
    no value. Returns [B, T, H, Dh] in v's dtype.
    """
    batch, n_new, n_heads, head_dim = q.shape
    n_kv_heads = k.shape[2]
    groups = n_heads // n_kv_heads
    q = q.reshape(batch, n_new, n_kv_heads, groups, head_dim)  # [B, T, Hkv, G, Dh]
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k.astype(q.dtype),
                        preferred_element_type=jnp.float32) * scale  # [B, Hkv, G, T, S]
    if softcap is not None:
        logits = softcap * jnp.tanh(logits / softcap)
    logits = jnp.where(mask[:, None, None], logits, MASKED)
    if sink_logits is None:
        probs = jax.nn.softmax(logits, axis=-1)
    else:
        sinks = sink_logits.astype(jnp.float32).reshape(n_kv_heads, groups)[None, :, :, None, None]
        sinks = jnp.broadcast_to(sinks, logits.shape[:-1] + (1,))  # [B, Hkv, G, T, 1]
        probs = jax.nn.softmax(jnp.concatenate([logits, sinks], axis=-1), axis=-1)[..., :-1]
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v)  # [B, T, Hkv, G, Dh]
    return out.reshape(batch, n_new, n_heads, head_dim)
