"""Block-sparse attention with dilated segments, over a full KV cache.

A query at position p sees key position j iff j <= p and any of:
  (a) local:  j's block is p's block or one of the `local_blocks` blocks before it
              (block = position // block_size), i.e. p // block_size - j // block_size <= local_blocks;
  (b) global: j < global_tokens (the first tokens, which every query sees);
  (c) dilated: for some pair (w, r) of `segment_lengths` and `dilations`, j and p lie in the
              same segment of length w (j // w == p // w) and (p - j) % r == 0.

(c) is LongNet's dilated attention (Ding et al. 2023) made causal with the dilation phase
set by the query: every query sees every r-th token of its segment counting back from
itself (as Sparse Transformer's strided pattern), instead of LongNet's fixed per-head
offsets, under which some queries would see nothing of a segment.

The mask is a pure function of (query positions, key positions), so prefill, chunked
extend and decode apply the same rule. This version computes dense attention under the
mask: exact, and as costly as `attention`; a kernel that skips masked blocks is a speed-up
of the same semantics.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from chimera.architectures.config import ConfigError, require_positive
from chimera.attention.attention import Attention
from chimera.runtime.protocol import register_mixer


@register_mixer("block_sparse")
@dataclasses.dataclass(frozen=True)
class BlockSparseAttention(Attention):
    """Attention under a local-block + global-token + dilated-segment mask (module docstring:
    the rule). The cache is `attention`'s: K and V [B, max_len, Hkv, Dh], slot = position."""
    block_size: int = dataclasses.field(kw_only=True)
    local_blocks: int = 1
    global_tokens: int = 0
    segment_lengths: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()

    def __post_init__(self):
        super().__post_init__()
        require_positive(self, "block_size")
        for name in ("local_blocks", "global_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)!r}")
        if len(self.dilations) != len(self.segment_lengths):
            raise ConfigError("dilations", f"needs one entry per segment length: {len(self.dilations)} "
                                           f"given for {len(self.segment_lengths)} segment lengths")
        for name in ("segment_lengths", "dilations"):
            for i, value in enumerate(getattr(self, name)):
                if value <= 0:
                    raise ConfigError(f"{name}[{i}]", f"must be positive, got {value!r}")

    def mask(self, query_pos, key_pos):
        """query_pos [B, T], key_pos [S] (int arrays, jax or numpy) -> [B, T, S] bool: may query t see key s."""
        p = query_pos[:, :, None]  # [B, T, 1]
        j = key_pos[None, None, :]  # [1, 1, S]
        see = (p // self.block_size - j // self.block_size <= self.local_blocks) | (j < self.global_tokens)
        for w, r in zip(self.segment_lengths, self.dilations):
            see = see | ((p // w == j // w) & ((p - j) % r == 0))
        return see & (j <= p)

    def flops_per_token(self, context: int) -> int:
        """The token at position context - 1: projections plus scores over the keys it sees."""
        n = max(1, round(context))
        seen = int(self.mask(np.array([[n - 1]]), np.arange(n)).sum())  # numpy: no device work
        return super().flops_per_token(seen)
