"""Sliding-window attention (Mistral) over a ring-buffer KV cache.

A query at position p sees the keys at positions j with p - window < j <= p: itself and
the window - 1 tokens before it (transformers' `kv_idx > q_idx - sliding_window`).

The cache is a ring of R = min(max_len, window) slots per sequence, K and V separate
[B, R, Hkv, Dh]; position p lives in slot p % R. It never grows past `window`, however
long the sequence. No slot positions are stored: a chunk continues its sequence, so
`ctx.positions[b, 0]` is the number of tokens sequence b holds, which fixes what every
slot holds. A rollback (speculative decoding) cannot restore overwritten slots:
snapshot the state instead (it is batch-major, like every state).

The ring helpers below are shared with `sinks.py`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from chimera.architectures.config import require_positive
from chimera.attention.attention import Attention, write_rows
from chimera.runtime.protocol import Context, register_mixer


def ring_positions(held: jax.Array, slots: int) -> jax.Array:
    """held [B] (tokens each sequence holds) -> [B, slots] int32: the position each ring
    slot holds, the newest p < held with p % slots == slot; negative where still empty."""
    last = held[:, None] - 1  # [B, 1]
    return last - jnp.mod(last - jnp.arange(slots), slots)  # [B, R]


def ring_slots(ctx: Context, slots: int) -> jax.Array:
    """[B, T] int32: the ring slot each token goes to, position % slots for a row's last
    `slots` valid tokens and the out-of-range `slots` (dropped) for the rest.

    An older token's slot would be taken by a newer one of the same call, and XLA leaves
    the order of duplicate scatter indices unspecified: so no two tokens share a slot.
    """
    last = jnp.max(jnp.where(ctx.valid, ctx.positions, -1), axis=1)  # [B] newest valid position
    keep = ctx.valid & (ctx.positions > last[:, None] - slots)  # [B, T]
    return jnp.where(keep, jnp.mod(ctx.positions, slots), slots)


def ring_write(ring: jax.Array, new: jax.Array, ctx: Context) -> jax.Array:
    """ring [B, R, ...], new [B, T, ...] -> ring with the chunk written at `ring_slots`;
    padding never touches it."""
    return write_rows(ring, ring_slots(ctx, ring.shape[1]), new)


def window_mask(key_positions: jax.Array, query_positions: jax.Array, window: int) -> jax.Array:
    """key_positions [B, S] (negative: no key), query_positions [B, T] -> mask [B, T, S]:
    True where p - window < j <= p."""
    j = key_positions[:, None, :]  # [B, 1, S]
    p = query_positions[:, :, None]  # [B, T, 1]
    return (j >= 0) & (j <= p) & (j > p - window)


@register_mixer("sliding_window")
@dataclasses.dataclass(frozen=True)
class SlidingWindowAttention(Attention):
    """Attention over the last `window` tokens (the query's own included), Mistral-style.
    Every `attention` field applies (GQA, RoPE at original positions, softcap, learned_sinks).
    State: {"k", "v"}: rings [B, min(max_len, window), Hkv, Dh]."""
    window: int = dataclasses.field(kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        require_positive(self, "window")

    def init_state(self, batch_size, max_len, dtype):
        # A sequence of at most max_len tokens never wraps a ring of max_len slots, so a short
        # request needs no more; past the window the size no longer depends on max_len.
        return super().init_state(batch_size, min(max_len, self.window), dtype)

    def state_bytes(self, context: int, dtype) -> int:
        """The live tokens' K and V: min(context, window) slots (= init_state(1, context))."""
        return super().state_bytes(min(context, self.window), dtype)

    def flops_per_token(self, context: int) -> int:
        return super().flops_per_token(min(context, self.window))

    def window_kv(self, state, k, v, ctx: Context):
        """Write the chunk's valid k, v [B, T, Hkv, Dh] into the rings; return (new state,
        keys, values [B, S, Hkv, Dh], key positions [B, S] (negative: no key)) that the
        chunk's queries attend over under `window_mask`.

        One token: the updated ring, which holds exactly its window. More: the old ring
        then the chunk, so that a chunk longer than the window is still exact.
        """
        held = ctx.positions[:, 0]  # [B]
        new_state = {"k": ring_write(state["k"], k, ctx), "v": ring_write(state["v"], v, ctx)}
        slots = state["k"].shape[1]
        if k.shape[1] == 1:
            key_positions = ring_positions(held + ctx.valid[:, 0], slots)  # [B, R]
            return new_state, new_state["k"], new_state["v"], key_positions
        key_positions = jnp.concatenate(
            [ring_positions(held, slots), jnp.where(ctx.valid, ctx.positions, -1)], axis=1)  # [B, R + T]
        keys = jnp.concatenate([state["k"], k.astype(state["k"].dtype)], axis=1)  # [B, R + T, Hkv, Dh]
        values = jnp.concatenate([state["v"], v.astype(state["v"].dtype)], axis=1)
        return new_state, keys, values, key_positions

    def __call__(self, params, x, state, ctx: Context):
        q, k, v = self.project(params, x, ctx)
        new_state, keys, values, key_positions = self.window_kv(state, k, v, ctx)
        mask = window_mask(key_positions, ctx.positions, self.window)  # [B, T, S]
        out = self.attend(params, q, keys, values, mask)  # [B, T, H, Dh]
        return self.output(params, out), new_state
