"""Attention sinks (StreamingLLM, Xiao et al. 2023): the first `n_sinks` tokens plus a
sliding window of the `window` most recent ones.

A query at position p sees the keys j <= p with j < n_sinks or j > p - window. A sequence
shorter than n_sinks + window therefore gets full causal attention.

The state is the window's ring (see `window.py`) plus a buffer of the first n_sinks
tokens' K and V; every token goes to the ring, the first n_sinks also to the sink buffer,
and the mask takes a sink from the buffer only once it has left the query's window.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

from chimera.architectures.config import ConfigError
from chimera.attention.attention import Attention, write_cache
from chimera.attention.window import SlidingWindowAttention, window_mask
from chimera.runtime.protocol import Context, register_mixer


@register_mixer("sink_attention")
@dataclasses.dataclass(frozen=True)
class SinkAttention(SlidingWindowAttention):
    """Sliding-window attention that also keeps the first `n_sinks` tokens (0: plain window).

    `rope_positions` picks the positions RoPE rotates by:
    - "original": each token's own position in the sequence; keys are cached rotated.
      A sink then sits ever further from the query, at positions the model may never
      have been trained on.
    - "cache" (StreamingLLM's scheme): each token's index in the cache the query sees,
      [sinks; window], so no index exceeds n_sinks + window - 1. Keys are cached before
      RoPE and rotated at attention time by their index; the query by its own index,
      min(p, n_sinks + window - 1). Since RoPE is relative, the window's keys keep their
      true distance to the query and only the sinks move closer. Every query of a chunk
      sees the cache it would see in token-by-token decoding, so chunking changes nothing.

    State: {"k", "v"}: rings [B, min(max_len, window), Hkv, Dh]; {"sink_k", "sink_v"}:
    [B, min(max_len, n_sinks), Hkv, Dh], slot i holds position i.
    """
    n_sinks: int = dataclasses.field(default=4, kw_only=True)
    rope_positions: Literal["cache", "original"] = dataclasses.field(default="cache", kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        if self.n_sinks < 0:
            raise ConfigError("n_sinks", f"must be >= 0, got {self.n_sinks!r}")

    def init_state(self, batch_size, max_len, dtype):
        # The sink buffer is a plain cache: slot i holds position i.
        sinks = Attention.init_state(self, batch_size, min(max_len, self.n_sinks), dtype)
        return super().init_state(batch_size, max_len, dtype) | {"sink_k": sinks["k"], "sink_v": sinks["v"]}

    def state_axes(self):
        axes = super().state_axes()
        return axes | {"sink_k": axes["k"], "sink_v": axes["v"]}

    def state_bytes(self, context: int, dtype) -> int:
        """Live sinks plus live window: (min(context, n_sinks) + min(context, window)) slots."""
        sinks = 2 * min(context, self.n_sinks) * self.n_kv_heads * self.head_dim * jnp.dtype(dtype).itemsize
        return sinks + super().state_bytes(context, dtype)

    def flops_per_token(self, context: int) -> int:
        return Attention.flops_per_token(self, min(context, self.n_sinks + self.window))

    def __call__(self, params, x, state, ctx: Context):
        original = self.rope_positions == "original"
        # "cache" rotates at attention time: project at position 0, where RoPE is the identity
        # (a magnitude factor `project` may apply, as YaRN's, is then applied there, once).
        q, k, v = self.project(params, x, ctx if original else Context(jnp.zeros_like(ctx.positions), ctx.valid))
        sink_k = write_cache(state["sink_k"], k, ctx)  # [B, S0, Hkv, Dh]: positions >= S0 are dropped
        sink_v = write_cache(state["sink_v"], v, ctx)
        ring, keys, values, key_positions = self.window_kv({"k": state["k"], "v": state["v"]}, k, v, ctx)
        new_state = ring | {"sink_k": sink_k, "sink_v": sink_v}

        # Sink i is read from the buffer once it is out of the query's window (i <= p - window);
        # inside the window the ring or the chunk holds it. Any such i < p was written by now.
        sink_positions = jnp.arange(sink_k.shape[1])  # [S0]
        sink_mask = sink_positions[None, None, :] <= ctx.positions[:, :, None] - self.window  # [B, T, S0]
        mask = jnp.concatenate([sink_mask, window_mask(key_positions, ctx.positions, self.window)], axis=2)

        if original:
            out = self.attend(params, q, jnp.concatenate([sink_k, keys], axis=1),
                              jnp.concatenate([sink_v, values], axis=1), mask)  # [B, T, H, Dh]
        else:
            out = self.attend_cache_positions(params, q, sink_k, sink_v, keys, values, key_positions, mask, ctx)
        return self.output(params, out), new_state

    def attend_cache_positions(self, params, q, sink_k, sink_v, keys, values, key_positions, mask, ctx):
        """StreamingLLM's RoPE: q [B, T, H, Dh] and the keys unrotated; mask [B, T, S0 + S].

        Once the cache is full, query p has seen evicted(p) = p - (n_sinks + window - 1)
        tokens leave the cache: its index is p - evicted(p), a window key j's is
        j - evicted(p), sink i's is i. The window logits depend only on p - j, so one row
        shift (the evictions as of the row's newest token) serves the whole chunk. The
        sink logits need each query at its own index: for a chunk of T > 1 the two
        rotations of q are stacked along head_dim against keys padded with zeros, so one
        softmax covers both ([q_window | q_sink] . [k | 0] = q_window . k).
        """
        full = self.n_sinks + self.window - 1  # the newest token's index in a full cache
        newest = ctx.positions[:, 0] + jnp.maximum(jnp.sum(ctx.valid, axis=1) - 1, 0)  # [B]
        shift = jnp.maximum(newest - full, 0)[:, None]  # [B, 1]
        sinks = self.rope(sink_k, jnp.broadcast_to(jnp.arange(sink_k.shape[1]), sink_k.shape[:2]))
        recent = self.rope(keys, key_positions - shift)  # [B, S, Hkv, Dh]
        q_window = self.rope(q, ctx.positions - shift)  # [B, T, H, Dh]
        all_values = jnp.concatenate([sink_v, values], axis=1)  # [B, S0 + S, Hkv, Dh]
        if q.shape[1] == 1:  # one query: the row shift is its own, and one rotation serves all keys
            return self.attend(params, q_window, jnp.concatenate([sinks, recent], axis=1), all_values, mask)

        q_sink = self.rope(q, jnp.minimum(ctx.positions, full))  # [B, T, H, Dh]
        stacked_q = jnp.concatenate([q_window, q_sink], axis=-1)  # [B, T, H, 2Dh]
        stacked_k = jnp.concatenate([
            jnp.concatenate([jnp.zeros_like(sinks), sinks], axis=-1),  # [B, S0, Hkv, 2Dh]
            jnp.concatenate([recent, jnp.zeros_like(recent)], axis=-1),  # [B, S, Hkv, 2Dh]
        ], axis=1)  # [B, S0 + S, Hkv, 2Dh]
        return self.attend(params, stacked_q, stacked_k, all_values, mask)  # [B, T, H, Dh]
