"""RMSNorm variants, computed in float32.

`rmsnorm` (Llama): normalise in float32, cast back, multiply by w (weights start at 1).
`rmsnorm_plus_one` (Gemma): normalise and multiply by (1 + w) in float32, then cast (weights start at 0).
"""

import jax
import jax.numpy as jnp


def _normalise(x32, eps):
    return x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """x [..., D], weight [D] -> [..., D] in x's dtype."""
    return weight * _normalise(x.astype(jnp.float32), eps).astype(x.dtype)


def rms_norm_plus_one(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """x [..., D], weight [D] -> [..., D] in x's dtype."""
    return (_normalise(x.astype(jnp.float32), eps) * (1.0 + weight.astype(jnp.float32))).astype(x.dtype)


NORMS = {"rmsnorm": (rms_norm, jnp.ones), "rmsnorm_plus_one": (rms_norm_plus_one, jnp.zeros)}  # (apply, init)
