"""Token sampling: greedy, temperature, top-k, top-p (nucleus) and min-p, seeded."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from chimera.sharding.argmax import argmax


@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy. top_k 0, top_p 1 and min_p 0 disable those filters.
    Filters apply in the order temperature, top-k, top-p, min-p (as transformers)."""
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")


def filter_logits(logits: jax.Array, sampling: Sampling) -> jax.Array:
    """logits [B, V] float32 -> temperature-scaled logits with filtered tokens at -inf."""
    logits = logits / sampling.temperature
    if sampling.top_k > 0 and sampling.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]  # [B, 1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # [B, V], descending
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # Keep the smallest prefix whose mass reaches top_p (always the first token).
        kept = jnp.where(mass_before < sampling.top_p, sorted_logits, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)  # [B, 1]
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    if sampling.min_p > 0.0:
        probs = jax.nn.softmax(logits, axis=-1)
        floor = sampling.min_p * jnp.max(probs, axis=-1, keepdims=True)
        logits = jnp.where(probs < floor, -jnp.inf, logits)
    return logits


def sample(logits: jax.Array, keys: jax.Array, sampling: Sampling) -> jax.Array:
    """logits [B, V], keys [B] (one PRNG key per row) -> token ids [B] int32."""
    if sampling.temperature == 0.0:
        return argmax(logits)  # jnp.argmax, without NCCL on a GPU mesh (sharding/argmax.py)
    filtered = filter_logits(logits.astype(jnp.float32), sampling)
    return jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)
