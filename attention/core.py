"""The attention computation every variant shares: grouped-query softmax attention under a mask.

`jax.nn.dot_product_attention` cannot soft-cap logits (Gemma-2) or add learned sink logits
(GPT-OSS), so the variants use these functions instead. Split in three so a variant that
needs the probabilities themselves (H2O's scores) or keys from two buffers can reuse them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASKED = jnp.finfo(jnp.float32).min  # finite: a fully masked (padding) row stays NaN-free


def grouped_logits(q, k, scale: float):
    """q [B, T, H, Dh], k [B, S, Hkv, Dh] (H a multiple of Hkv) -> float32 logits [B, Hkv, G, T, S]."""
    batch, n_new, n_heads, head_dim = q.shape
    n_kv_heads = k.shape[2]
    q = q.reshape(batch, n_new, n_kv_heads, n_heads // n_kv_heads, head_dim)  # [B, T, Hkv, G, Dh]
    return jnp.einsum("btkgd,bskd->bkgts", q, k.astype(q.dtype), preferred_element_type=jnp.float32) * scale


def probabilities(logits, mask, *, softcap: float | None = None, sink_logits=None):
    """logits [B, Hkv, G, T, S] float32, mask [B, T, S] bool (True: may attend) -> probs, same shape.

    softcap: logits -> c * tanh(logits / c) before masking. sink_logits [H]: a learned per-head
    logit that joins each softmax denominator but carries no value.
    """
    if softcap is not None:
        logits = softcap * jnp.tanh(logits / softcap)
    logits = jnp.where(mask[:, None, None], logits, MASKED)
    if sink_logits is None:
        return jax.nn.softmax(logits, axis=-1)
    sinks = sink_logits.astype(jnp.float32).reshape(logits.shape[1:3])[None, :, :, None, None]
    sinks = jnp.broadcast_to(sinks, logits.shape[:-1] + (1,))  # [B, Hkv, G, T, 1]
    return jax.nn.softmax(jnp.concatenate([logits, sinks], axis=-1), axis=-1)[..., :-1]


def mix(probs, v):
    """probs [B, Hkv, G, T, S], v [B, S, Hkv, Dh] -> [B, T, H, Dh] in v's dtype."""
    batch, n_kv_heads, groups, n_new, _ = probs.shape
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v)  # [B, T, Hkv, G, Dh]
    return out.reshape(batch, n_new, n_kv_heads * groups, v.shape[-1])


def attend(q, k, v, mask, *, scale: float, softcap: float | None = None, sink_logits=None):
    """Softmax attention with grouped KV heads: q [B, T, H, Dh]; k, v [B, S, Hkv, Dh];
    mask [B, T, S] bool. Logits and softmax in float32. Returns [B, T, H, Dh] in v's dtype."""
    probs = probabilities(grouped_logits(q, k, scale), mask, softcap=softcap, sink_logits=sink_logits)
    return mix(probs, v)
