"""Heavy-Hitter Oracle (H2O) attention: a fixed KV budget per sequence (Zhang et al. 2023).

A sequence holds at most `budget` tokens: the `recent` newest ones, plus the
`budget - recent` older ones that have received the most attention so far (the heavy
hitters). Each call of the block:

  1. the new tokens' queries attend, causally by position, over [held slots ; new chunk];
  2. every key's accumulated score += the attention probability it received from the
     valid new queries, summed over ALL query heads: one score per token and sequence,
     so every head keeps the same tokens (H2O's reference keeps a set per head; one
     shared set keeps one position per slot and one mask for all heads);
  3. if more than `budget` tokens are now held, it keeps the `recent` newest positions
     plus the `budget - recent` others with the largest score (equal scores: the older
     position stays) and evicts the rest.

Padding tokens (ctx.valid False) are never held and add no score. Within one call every
query sees the whole chunk, so a prefill is exact full attention over the prompt and
eviction acts on later calls: like the reference (full-attention prefill, then evict token
by token), results depend on how a sequence is split into calls. With budget >= the
sequence length nothing is evicted and the block equals `attention`.

State (every leaf batch-major; slots = min(budget, max_len), since a sequence never holds
more than max_len tokens, a larger budget could never evict):
  k, v  [B, slots, Hkv, Dh]  keys (RoPE applied at their original positions) and values
  pos   [B, slots] int32     the position each slot holds, -1 if empty
  score [B, slots] float32   the slot's accumulated attention
Kept new tokens are written into free slots in place (ascending slot order), so slots are
in no particular position order; the mask reads `pos`.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from chimera.architectures.config import ConfigError, require_positive
from chimera.attention.attention import Attention, write_rows
from chimera.attention.core import grouped_logits, mix
from chimera.runtime.protocol import Context, register_mixer


def select(key_pos, score, n_keep: int, recent: int):
    """Which candidates stay held: key_pos [B, N] int32 (-1: none), score [B, N] -> keep [B, N] bool.

    The `recent` newest positions first, then the highest scores, the older position first
    among equal ones; the first n_keep of that order that hold a token stay.
    """
    held = key_pos >= 0
    newest = key_pos.max(axis=1, keepdims=True)  # [B, 1]: the row's last position
    is_recent = held & (key_pos > newest - recent)
    priority = jnp.where(is_recent, jnp.inf, jnp.where(held, score, -jnp.inf))  # [B, N]
    order = jnp.lexsort((key_pos, -priority), axis=1)  # [B, N]: priority down, then position up
    rank = jnp.argsort(order, axis=1)  # [B, N]: each candidate's place in that order
    return held & (rank < n_keep)


@register_mixer("h2o")
@dataclasses.dataclass(frozen=True)
class H2OAttention(Attention):
    """Attention over a fixed budget of `budget` tokens per sequence: the `recent` newest plus
    the `budget - recent` heavy hitters by accumulated attention (module docstring: the rule)."""
    budget: int = dataclasses.field(kw_only=True)
    recent: int = dataclasses.field(kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        require_positive(self, "budget")
        if self.recent < 0:
            raise ConfigError("recent", f"must be >= 0, got {self.recent!r}")
        if self.recent > self.budget:
            raise ConfigError("recent", f"{self.recent} exceeds budget {self.budget}")

    def init_state(self, batch_size, max_len, dtype):
        slots = min(self.budget, max_len)
        kv = (batch_size, slots, self.n_kv_heads, self.head_dim)
        return {"k": jnp.zeros(kv, dtype), "v": jnp.zeros(kv, dtype),
                "pos": jnp.full((batch_size, slots), -1, jnp.int32),
                "score": jnp.zeros((batch_size, slots), jnp.float32)}

    def state_axes(self):
        kv = ("batch", "sequence", "kv_heads", "head_dim")
        return {"k": kv, "v": kv, "pos": ("batch", "sequence"), "score": ("batch", "sequence")}

    def state_bytes(self, context: int, dtype) -> int:
        """Bytes of the slots in use: they grow with context up to the budget, then stay."""
        per_slot = 2 * self.n_kv_heads * self.head_dim * jnp.dtype(dtype).itemsize + 4 + 4  # k, v, pos, score
        return min(context, self.budget) * per_slot

    def flops_per_token(self, context: int) -> int:
        return super().flops_per_token(min(context, self.budget))

    def __call__(self, params, x, state, ctx: Context):
        q, k, v = self.project(params, x, ctx)  # [B, T, H, Dh], [B, T, Hkv, Dh] x2
        slots = state["pos"].shape[1]
        new_pos = jnp.where(ctx.valid, ctx.positions, -1)  # [B, T]: padding holds nothing
        key_pos = jnp.concatenate([state["pos"], new_pos], axis=1)  # [B, S + T]: every candidate
        mask = (key_pos[:, None, :] >= 0) & (key_pos[:, None, :] <= ctx.positions[:, :, None])  # [B, T, S + T]

        # Logits of the held slots and of the chunk side by side; K and V are not concatenated
        # (that would copy the whole cache every step).
        logits = jnp.concatenate([grouped_logits(q, state["k"], self.scale),
                                  grouped_logits(q, k, self.scale)], axis=-1)  # [B, Hkv, G, T, S + T]
        probs = self.probabilities(params, logits, mask)  # [B, Hkv, G, T, S + T]
        out = mix(probs[..., :slots], state["v"]) + mix(probs[..., slots:], v)  # [B, T, H, Dh]

        # Only valid queries vote: a padding row's probabilities must not add score.
        votes = jnp.where(ctx.valid[:, None, None, :, None], probs, 0.0).sum(axis=(1, 2, 3))  # [B, S + T]
        score = jnp.concatenate([state["score"], jnp.zeros(new_pos.shape, jnp.float32)], axis=1) + votes
        keep = select(key_pos, score, slots, self.recent)  # [B, S + T]
        return self.output(params, out), self.store(state, k, v, new_pos, score, keep)

    def store(self, state, k, v, new_pos, score, keep):
        """The state after eviction: evicted slots are marked empty (-1, score 0), and the kept
        new tokens fill the free slots in ascending slot order, written in place."""
        slots = state["pos"].shape[1]
        keep_old, keep_new = keep[:, :slots], keep[:, slots:]  # [B, S], [B, T]
        pos = jnp.where(keep_old, state["pos"], -1)  # [B, S]
        old_score = jnp.where(keep_old, score[:, :slots], 0.0)  # [B, S]
        # At most slots tokens stay, so there are at least as many free slots as kept new tokens.
        free_first = jnp.argsort((pos >= 0).astype(jnp.int32), axis=1, stable=True)  # [B, S]
        rank = jnp.cumsum(keep_new, axis=1) - 1  # [B, T]: i-th kept new token -> i-th free slot
        slot = jnp.take_along_axis(free_first, jnp.clip(rank, 0, slots - 1), axis=1)  # [B, T]
        slot = jnp.where(keep_new, slot, slots)  # [B, T]: the out-of-range slot is dropped

        def put(cache, new):
            return write_rows(cache, slot, new)

        return {"k": put(state["k"], k), "v": put(state["v"], v), "pos": put(pos, new_pos),
                "score": put(old_score, score[:, slots:])}
