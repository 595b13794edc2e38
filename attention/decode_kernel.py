"""Flash-decoding: one new query per row attends over only the filled slots of its KV cache.

The XLA path attends over all S slots of the cache and masks the unfilled ones, so a decode
step costs the same at 1k tokens as at 32k. This Pallas (Triton) kernel reads slots
0..lengths[b]-1 of row b and nothing past them.

Grid (batch, kv_heads, splits). Program (b, h, s) holds the G = H / Hkv query heads that
share KV head h, takes the s-th of `splits` equal, block-aligned shares of row b's filled
slots, and walks it `block_k` slots at a time with an online softmax in float32 (a loop
whose trip count comes from the row's length). It writes an unnormalised partial output
with its running max and sum; a jnp epilogue combines the splits by log-sum-exp.
The cache is read in its own [B, S, Hkv, Dh] layout (one KV head's slots are Hkv * Dh apart):
transposing it would copy the whole cache every step, the very cost this kernel removes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from chimera.attention.core import MASKED, attend

# Triton's dot wants every dimension >= 16: a KV head's G query heads are padded with zero
# queries to at least this many rows (decode is memory-bound; the idle rows cost no reads),
# and head_dim and block_k must be at least this.
MIN_DOT = 16


def is_power_of_2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def kernel_supports(head_dim: int) -> bool:
    """Whether `decode_attention` runs at this head_dim: Triton tensors need power-of-2 sizes
    and its dot needs dimensions >= 16."""
    return head_dim >= MIN_DOT and is_power_of_2(head_dim)


def default_splits(programs: int, slots: int, block_k: int) -> int:
    """Splits per (row, KV head) so that programs * splits fills an H100's 132 SMs about twice
    at batch 1 (a guess to tune on the GPU), but no more than the cache has blocks."""
    return max(1, min(pl.cdiv(256, programs), pl.cdiv(slots, block_k)))


def _kernel(lengths_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref, *, scale: float, block_k: int, splits: int):
    """One (row, KV head, split) program. lengths_ref []: the row's filled slots; q_ref [R, Dh]
    (the head's G queries, zero-padded to R rows); k_ref, v_ref [S, Dh]: this KV head's slots.
    Writes o_ref [R, Dh] = sum_j exp(logit_j - m) v_j over the split's slots, m_ref [R] the max
    logit m, l_ref [R] = sum_j exp(logit_j - m)."""
    length = lengths_ref[...]
    # An equal share of the row's filled slots, not of S: every split works at any length.
    share = pl.cdiv(pl.cdiv(length, splits), block_k) * block_k
    first = pl.program_id(2) * share
    n_blocks = pl.cdiv(jnp.clip(length - first, 0, share), block_k)  # 0 for a split past the length
    q = q_ref[...]  # [R, Dh]

    def block(i, carry):
        o, m, l = carry  # [R, Dh], [R], [R] float32
        start = pl.multiple_of(first + i * block_k, block_k)
        live = start + jnp.arange(block_k) < length  # [block_k]; the first slot always is
        # Masked loads: no slot past the length is read, and so none past S either.
        k = plgpu.load(k_ref.at[pl.ds(start, block_k), :], mask=live[:, None], other=0)  # [block_k, Dh]
        v = plgpu.load(v_ref.at[pl.ds(start, block_k), :], mask=live[:, None], other=0)  # [block_k, Dh]
        # allow_tf32=False: a float32 cache is multiplied in float32 (Triton would use TF32).
        logits = plgpu.dot(q, k.astype(q.dtype), trans_b=True, allow_tf32=False) * scale  # [R, block_k]
        logits = jnp.where(live[None, :], logits, MASKED)
        m_new = jnp.maximum(m, logits.max(axis=1))  # [R]
        p = jnp.exp(logits - m_new[:, None])  # [R, block_k]
        correction = jnp.exp(m - m_new)  # [R]
        o = o * correction[:, None] + plgpu.dot(p.astype(v.dtype), v, allow_tf32=False)  # [R, Dh]
        return o, m_new, l * correction + p.sum(axis=1)

    rows, head_dim = q.shape
    init = (jnp.zeros((rows, head_dim), jnp.float32), jnp.full((rows,), MASKED, jnp.float32),
            jnp.zeros((rows,), jnp.float32))
    o, m, l = lax.fori_loop(0, n_blocks, block, init)
    o_ref[...] = o
    m_ref[...] = m
    l_ref[...] = l


def _check(q, k_cache, v_cache, lengths):
    if q.ndim != 3 or k_cache.ndim != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(f"need q [B, H, Dh] and k_cache, v_cache [B, S, Hkv, Dh] of one shape, got q {q.shape}, "
                         f"k_cache {k_cache.shape}, v_cache {v_cache.shape}")
    (batch, n_heads, head_dim), (_, _, n_kv_heads, _) = q.shape, k_cache.shape
    if k_cache.shape[0] != batch or k_cache.shape[3] != head_dim or n_heads % n_kv_heads:
        raise ValueError(f"q {q.shape} does not fit the cache {k_cache.shape}: need the same batch and head_dim, "
                         f"and Hkv dividing H")
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},), got {lengths.shape}")


@functools.partial(jax.jit, static_argnames=("scale", "block_k", "splits", "interpret"))
def decode_attention(q, k_cache, v_cache, lengths, *, scale: float, block_k: int = 64, splits: int | None = None,
                     interpret: bool = False):
    """q [B, H, Dh] (one new token per row); k_cache, v_cache [B, S, Hkv, Dh]; lengths [B] int32:
    row b attends over slots 0..lengths[b]-1 (clamped to [0, S], so no read leaves the cache).
    Returns [B, H, Dh] in v's dtype; a row of length 0 gets zeros.

    block_k: slots per loop step (a power of 2 >= 16). splits: programs per (row, KV head);
    None picks `default_splits`. Requires `kernel_supports(head_dim)`. interpret: run the
    kernel as jnp (any backend; slow), as the tests do on CPU.
    """
    _check(q, k_cache, v_cache, lengths)
    batch, n_heads, head_dim = q.shape
    _, slots, n_kv_heads, _ = k_cache.shape
    if not kernel_supports(head_dim):
        raise ValueError(f"decode_attention needs a power-of-2 head_dim >= {MIN_DOT}, got {head_dim}")
    if block_k < MIN_DOT or not is_power_of_2(block_k):
        raise ValueError(f"block_k must be a power of 2 >= {MIN_DOT}, got {block_k}")
    if splits is None:
        splits = default_splits(batch * n_kv_heads, slots, block_k)
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")

    groups = n_heads // n_kv_heads
    rows = max(MIN_DOT, pl.next_power_of_2(groups))
    q = q.reshape(batch, n_kv_heads, groups, head_dim)  # [B, Hkv, G, Dh]
    q = jnp.pad(q, ((0, 0), (0, 0), (0, rows - groups), (0, 0)))  # [B, Hkv, R, Dh]
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, slots)  # [B]

    # Block shapes: None squeezes a dimension out of the kernel's view.
    cache_spec = pl.BlockSpec((None, slots, None, head_dim), lambda b, h, s: (b, 0, h, 0))  # -> [S, Dh]
    part = (batch, n_kv_heads, splits, rows)
    o, m, l = pl.pallas_call(
        functools.partial(_kernel, scale=scale, block_k=block_k, splits=splits),
        grid=(batch, n_kv_heads, splits),
        in_specs=[
            pl.BlockSpec((None,), lambda b, h, s: (b,)),  # lengths -> []
            pl.BlockSpec((None, None, rows, head_dim), lambda b, h, s: (b, h, 0, 0)),  # q -> [R, Dh]
            cache_spec, cache_spec,
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, rows, head_dim), lambda b, h, s: (b, h, s, 0, 0)),  # o -> [R, Dh]
            pl.BlockSpec((None, None, None, rows), lambda b, h, s: (b, h, s, 0)),  # m -> [R]
            pl.BlockSpec((None, None, None, rows), lambda b, h, s: (b, h, s, 0)),  # l -> [R]
        ],
        out_shape=[jax.ShapeDtypeStruct(part + (head_dim,), jnp.float32),
                   jax.ShapeDtypeStruct(part, jnp.float32), jax.ShapeDtypeStruct(part, jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
        name="decode_attention",
    )(lengths, q, k_cache, v_cache)  # o [B, Hkv, P, R, Dh]; m, l [B, Hkv, P, R]

    # Log-sum-exp over the splits: rescale each to the common max, then normalise. An idle
    # split has m = MASKED and l = 0, o = 0; a row of length 0 has total 0 and gets zeros.
    weight = jnp.exp(m - m.max(axis=2, keepdims=True))  # [B, Hkv, P, R]
    total = (weight * l).sum(axis=2)  # [B, Hkv, R]
    out = (weight[..., None] * o).sum(axis=2) / jnp.where(total > 0, total, 1.0)[..., None]  # [B, Hkv, R, Dh]
    return out[:, :, :groups].reshape(batch, n_heads, head_dim).astype(v_cache.dtype)  # [B, H, Dh]


def decode_attention_reference(q, k_cache, v_cache, lengths, *, scale: float):
    """`decode_attention` in plain jnp over the whole cache (`core.attend` under a length mask):
    same arguments, same result."""
    _check(q, k_cache, v_cache, lengths)
    filled = jnp.arange(k_cache.shape[1])[None, :] < lengths[:, None]  # [B, S]
    out = attend(q[:, None], k_cache, v_cache, filled[:, None, :], scale=scale)[:, 0]  # [B, H, Dh]
    # A row with no slot gets zeros, as from the kernel (attend would average every slot).
    return jnp.where((lengths > 0)[:, None, None], out, jnp.zeros_like(out))
