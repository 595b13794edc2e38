"""The decode state: one state pytree per layer plus each sequence's length."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
    """layers: tuple of per-layer mixer states (every leaf batch-major).
    lengths: [B] int32, the number of tokens each sequence holds.
    max_len: the capacity each sequence was allocated for (static).
    ffn_layers: tuple of per-layer feed-forward states, None for a stateless feed-forward
    (RWKV's channel-mix keeps the previous token; every leaf batch-major too).
    """
    layers: tuple
    lengths: jax.Array
    max_len: int = dataclasses.field(metadata=dict(static=True))
    ffn_layers: tuple = ()

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    def select(self, rows) -> DecodeState:
        """The sub-batch of `rows` (an index array): works for any block because states are batch-major."""
        return jax.tree.map(lambda x: x[rows], self)


def empty_lengths(batch_size: int) -> jax.Array:
    return jnp.zeros((batch_size,), jnp.int32)
