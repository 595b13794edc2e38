"""Normalisations over the last axis, computed in float32.

`rmsnorm` (Llama): normalise in float32, cast back, multiply by w (weights start at 1).
`rmsnorm_plus_one` (Gemma): normalise and multiply by (1 + w) in float32, then cast (weights start at 0).
`layernorm` (RWKV, GPT-2): subtract the mean, divide by the standard deviation, then x * w + b in
float32; its parameters are a dict {weight, bias}.
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


def layer_norm(x: jax.Array, params: dict, eps: float) -> jax.Array:
    """x [..., D], params {weight [D], bias [D]} -> [..., D] in x's dtype."""
    x32 = x.astype(jnp.float32)
    centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    normed = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)
    return (normed * params["weight"].astype(jnp.float32) + params["bias"].astype(jnp.float32)).astype(x.dtype)


def layer_norm_init(shape) -> dict:
    return {"weight": jnp.ones(shape), "bias": jnp.zeros(shape)}


NORMS = {  # name: (apply(x, params, eps), init(shape) -> params)
    "rmsnorm": (rms_norm, jnp.ones),
    "rmsnorm_plus_one": (rms_norm_plus_one, jnp.zeros),
    "layernorm": (layer_norm, layer_norm_init),
}
