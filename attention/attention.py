"""Multi-head attention with grouped KV heads (MHA / GQA / MQA), RoPE and a full KV cache.

The cache holds K and V as separate arrays [B, max_len, n_kv_heads, head_dim],
written in place at each token's absolute position; padding tokens are never written.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from chimera.architectures.config import ConfigError, require_positive
from chimera.attention.core import attend, grouped_logits, mix, probabilities
from chimera.attention.decode_kernel import decode_attention, kernel_supports
from chimera.attention.rope import RopeScaling, apply_rope, inverse_frequencies, rope_attention_factor
from chimera.runtime.linear import linear
from chimera.runtime.norm import rms_norm
from chimera.runtime.protocol import Context, register_mixer
from chimera.sharding.residual import finished, row_parallel_output
from chimera.sharding.rules import mesh_axes_for, partition_spec


def write_cache(cache: jax.Array, new: jax.Array, ctx: Context) -> jax.Array:
    """cache [B, S, ...], new [B, T, ...] -> cache with new[b, t] at slot positions[b, t].

    Padding tokens get the out-of-range slot S, which the scatter drops; so does
    nothing else (callers check capacity before they extend).
    """
    slots = cache.shape[1]
    slot = jnp.where(ctx.valid, ctx.positions, slots)  # [B, T]
    return write_rows(cache, slot, new)


def write_rows(cache: jax.Array, slot: jax.Array, new: jax.Array) -> jax.Array:
    """cache [B, S, ...], slot [B, T] int, new [B, T, ...] -> cache with new[b, t] at
    cache[b, slot[b, t]]; a slot outside [0, S) is dropped.

    One scatter per row (vmapped: the batch is a batching dimension of the scatter), so XLA's
    partitioner sees that row b writes only row b and keeps a batch-split cache write local.
    Written as one scatter over explicit row indices it all-gathered every layer's new keys,
    values and indices from the whole batch (4 all-gathers a layer under data parallelism)."""
    def write_row(row_cache, row_slot, row_new):  # [S, ...], [T], [T, ...]
        return row_cache.at[row_slot].set(row_new.astype(row_cache.dtype), mode="drop")
    return jax.vmap(write_row)(cache, slot, new)


@register_mixer("attention")
@dataclasses.dataclass(frozen=True)
class Attention:
    """Causal attention over every earlier token. `n_kv_heads` defaults to `n_heads` (MHA);
    1 is MQA. `head_dim` defaults to d_model // n_heads. `scale` defaults to head_dim ** -0.5.
    `softcap` soft-caps the logits (Gemma-2); `learned_sinks` adds a learned per-head logit to
    every softmax denominator (GPT-OSS). `use_rope: false` leaves q and k unrotated (no
    positional encoding: Jamba's attention layers, whose order comes from the Mamba layers).
    `qk_norm` RMS-normalises each head's q and k over head_dim (weights `q_norm`, `k_norm`
    [head_dim], epsilon `qk_norm_eps`) after the projections and before RoPE (Qwen3).
    `decode_kernel` picks how a one-token decode step attends (see `use_decode_kernel`):
    "auto" runs `decode_attention` (a Pallas kernel that reads only the filled slots) on a GPU,
    "pallas" wherever it can (interpreted off GPU: slow, for tests), "xla" never.

    Variants (windowed, sinks, ...) subclass this: they share `project`, `output` and the
    parameters, and differ in their cache and mask.
    """
    d_model: int
    n_heads: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    qkv_bias: bool = False
    out_bias: bool = False
    scale: float | None = None
    softcap: float | None = None
    learned_sinks: bool = False
    use_rope: bool = True
    qk_norm: bool = False
    qk_norm_eps: float = 1e-6
    decode_kernel: Literal["auto", "pallas", "xla"] = "auto"

    def __post_init__(self):
        require_positive(self, "n_heads", "n_kv_heads", "head_dim", "rope_theta", "scale", "softcap",
                         "qk_norm_eps")
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ConfigError("head_dim", f"not given, and d_model {self.d_model} is not divisible "
                                              f"by n_heads {self.n_heads}")
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        if self.scale is None:
            object.__setattr__(self, "scale", self.head_dim ** -0.5)
        if self.n_heads % self.n_kv_heads:
            raise ConfigError("n_kv_heads", f"{self.n_kv_heads} does not divide n_heads {self.n_heads}")
        if self.use_rope and self.head_dim % 2:
            raise ConfigError("head_dim", f"must be even for RoPE, got {self.head_dim}")
        if not self.use_rope and self.rope_scaling is not None:
            raise ConfigError("rope_scaling", "is set but use_rope is false")
        if self.decode_kernel not in ("auto", "pallas", "xla"):
            raise ConfigError("decode_kernel", f"must be one of ['auto', 'pallas', 'xla'], got {self.decode_kernel!r}")
        misfit = self.kernel_misfit()
        if self.decode_kernel == "pallas" and misfit is not None:
            raise ConfigError("decode_kernel", f"cannot be 'pallas': {misfit}")

    @property
    def inv_freq(self) -> np.ndarray:
        return inverse_frequencies(self.head_dim, self.rope_theta, self.rope_scaling)

    def init(self, key):
        k_q, k_k, k_v, k_o = jax.random.split(key, 4)
        d, h, kv, hd = self.d_model, self.n_heads, self.n_kv_heads, self.head_dim
        params = {
            "wq": jax.random.normal(k_q, (d, h, hd)) * d ** -0.5,
            "wk": jax.random.normal(k_k, (d, kv, hd)) * d ** -0.5,
            "wv": jax.random.normal(k_v, (d, kv, hd)) * d ** -0.5,
            "wo": jax.random.normal(k_o, (h, hd, d)) * (h * hd) ** -0.5,
        }
        if self.qkv_bias:
            params |= {"bq": jnp.zeros((h, hd)), "bk": jnp.zeros((kv, hd)), "bv": jnp.zeros((kv, hd))}
        if self.out_bias:
            params["bo"] = jnp.zeros((d,))
        if self.learned_sinks:
            params["sinks"] = jnp.zeros((h,))
        if self.qk_norm:
            params |= {"q_norm": jnp.ones((hd,)), "k_norm": jnp.ones((hd,))}
        return params

    def param_axes(self):
        axes = {"wq": ("embed", "heads", "head_dim"), "wk": ("embed", "kv_heads", "head_dim"),
                "wv": ("embed", "kv_heads", "head_dim"), "wo": ("heads", "head_dim", "embed")}
        if self.qkv_bias:
            axes |= {"bq": ("heads", "head_dim"), "bk": ("kv_heads", "head_dim"), "bv": ("kv_heads", "head_dim")}
        if self.out_bias:
            axes["bo"] = ("embed",)
        if self.learned_sinks:
            axes["sinks"] = ("heads",)
        if self.qk_norm:
            axes |= {"q_norm": ("head_dim",), "k_norm": ("head_dim",)}
        return axes

    def init_state(self, batch_size, max_len, dtype):
        shape = (batch_size, max_len, self.n_kv_heads, self.head_dim)
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

    def state_axes(self):
        axes = ("batch", "sequence", "kv_heads", "head_dim")
        return {"k": axes, "v": axes}

    def state_bytes(self, context: int, dtype) -> int:
        return 2 * context * self.n_kv_heads * self.head_dim * jnp.dtype(dtype).itemsize

    def decode_bytes(self, context: int, dtype) -> int:
        """Bytes one decode step moves for a sequence holding `context` tokens: what the cache
        holds is read, one token's slot is written (true of every variant's cache)."""
        return self.state_bytes(context, dtype) + self.state_bytes(1, dtype)

    def flops_per_token(self, context: int) -> int:
        projections = 2 * self.d_model * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        scores_and_mix = 4 * self.n_heads * self.head_dim * context
        return projections + scores_and_mix

    def project(self, params, x, ctx: Context):
        """x [B, T, D] -> q [B, T, H, Dh], k and v [B, T, Hkv, Dh]; q and k normalised (qk_norm),
        then rotated to ctx.positions."""
        q = linear("btd,dhk->bthk", x, params["wq"])  # [B, T, H, Dh]
        k = linear("btd,dhk->bthk", x, params["wk"])  # [B, T, Hkv, Dh]
        v = linear("btd,dhk->bthk", x, params["wv"])  # [B, T, Hkv, Dh]
        if self.qkv_bias:
            q, k, v = q + params["bq"], k + params["bk"], v + params["bv"]
        if self.qk_norm:
            q, k = rms_norm(q, params["q_norm"], self.qk_norm_eps), rms_norm(k, params["k_norm"], self.qk_norm_eps)
        return self.rope(q, ctx.positions), self.rope(k, ctx.positions), v

    def rope(self, x, positions):
        """x [B, T, H, Dh] rotated to `positions` [B, T] by this block's RoPE (yarn's cos/sin factor
        included); x itself when use_rope is false."""
        if not self.use_rope:
            return x
        return apply_rope(x, positions, self.inv_freq, rope_attention_factor(self.rope_scaling))

    def probabilities(self, params, logits, mask):
        """logits [B, Hkv, G, T, S], mask [B, T, S] -> softmax with this block's soft-cap and sinks."""
        return probabilities(logits, mask, softcap=self.softcap,
                             sink_logits=params["sinks"] if self.learned_sinks else None)

    def attend(self, params, q, k, v, mask):
        """q [B, T, H, Dh], k and v [B, S, Hkv, Dh], mask [B, T, S] -> [B, T, H, Dh]."""
        return mix(self.probabilities(params, grouped_logits(q, k, self.scale), mask), v)

    def mask(self, positions, slot_positions):
        """positions [B, T], slot_positions [S] -> [B, T, S] bool: may the query see the slot.
        Causal: every position up to the query's own. Variants with another pattern override this."""
        return slot_positions[None, None, :] <= positions[:, :, None]

    def not_plain_causal(self) -> str | None:
        """Why this block is not `Attention`'s own causal softmax attention (a variant that
        overrides the mask or the attention; softcap; sinks), or None: the fused paths
        (`decode_attention`, `fresh_attend`) compute only that."""
        shared = ("__call__", "mask", "attend", "probabilities")
        if any(getattr(type(self), name) is not getattr(Attention, name) for name in shared):
            return f"{type(self).__name__} has its own mask or attention"
        if self.softcap is not None or self.learned_sinks:
            return "the kernel has no softcap or learned_sinks"
        return None

    def kernel_misfit(self) -> str | None:
        """Why `decode_attention` cannot compute this block's decode step, or None if it can."""
        reason = self.not_plain_causal()
        if reason is not None:
            return reason
        if not kernel_supports(self.head_dim):
            return f"the kernel needs a power-of-2 head_dim >= 16, got {self.head_dim}"
        return None

    def use_decode_kernel(self, n_new: int) -> bool:
        """Whether a call appending `n_new` tokens per row attends with `decode_attention`:
        a one-token step of a block the kernel fits, on a GPU ("auto") or anywhere ("pallas").
        Under a mesh only where the mesh splits the query heads as it splits the KV heads
        (`splits_heads_alike`): each device then runs the kernel on its own heads."""
        if self.decode_kernel == "xla" or n_new != 1 or self.kernel_misfit() is not None:
            return False
        mesh = jax.sharding.get_abstract_mesh()
        if not mesh.empty and not self.splits_heads_alike(mesh):
            return False
        return self.decode_kernel == "pallas" or jax.default_backend() == "gpu"

    def splits_heads_alike(self, mesh) -> bool:
        """Whether the rules split the query heads over the same mesh axes as the KV heads (or
        neither). Not when the KV heads are replicated because the tensor axis does not divide
        them: a device's query heads would then need KV heads it does not hold alone, and the
        XLA path, which XLA partitions itself, runs instead."""
        return mesh_axes_for("heads", self.n_heads, mesh) == mesh_axes_for("kv_heads", self.n_kv_heads, mesh)

    def decode_attend(self, q, k_cache, v_cache, ctx: Context):
        """q [B, 1, H, Dh] over the caches [B, S, Hkv, Dh] by `decode_attention` -> [B, 1, H, Dh].

        A valid row at position p sees slots 0..p, as the causal mask lets it; a padding row
        (output ignored) gets length 0, so it reads nothing and gives zeros. Under a mesh, XLA's
        partitioner cannot split a pallas_call: `jax.shard_map` runs it on each device's rows
        and heads (a KV head and its query heads sit on the same device: `splits_heads_alike`)."""
        slots = k_cache.shape[1]
        lengths = jnp.where(ctx.valid[:, 0], jnp.minimum(ctx.positions[:, 0] + 1, slots), 0)  # [B]

        def attend_local(q, k_cache, v_cache, lengths):  # this device's rows and heads
            out = decode_attention(q[:, 0], k_cache, v_cache, lengths, scale=self.scale,
                                   interpret=jax.default_backend() != "gpu")  # [b, h, Dh]
            return out[:, None]  # [b, 1, h, Dh]

        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty:
            return attend_local(q, k_cache, v_cache, lengths)
        q_spec = partition_spec(("batch", None, "heads", "head_dim"), q.shape, mesh)
        cache_spec = partition_spec(self.state_axes()["k"], k_cache.shape, mesh)
        lengths_spec = PartitionSpec(q_spec[0])
        return jax.shard_map(attend_local, mesh=mesh, in_specs=(q_spec, cache_spec, cache_spec, lengths_spec),
                             out_specs=q_spec, check_vma=False)(q, k_cache, v_cache, lengths)

    def fresh_attend(self, q, k, v, ctx: Context):
        """A chunk that starts every row at position 0 (an empty cache): q [B, T, H, Dh] attends
        causally over the chunk's own k, v [B, T, Hkv, Dh] -> [B, T, H, Dh]; padding keys are
        masked by each row's valid length. T x T logits instead of T x S; on a GPU in bf16/f16
        (one device), cuDNN's fused (flash) attention, which never materialises them at all."""
        # A row with no tokens (batch padding) attends its slot 0: finite, and its output is ignored.
        lengths = jnp.maximum(ctx.valid.sum(axis=1, dtype=jnp.int32), 1)  # [B]
        cudnn = (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
                 and self.head_dim % 8 == 0 and self.head_dim <= 128
                 and jax.sharding.get_abstract_mesh().empty)  # cuDNN's custom call is not split by XLA
        if cudnn:
            out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), scale=self.scale,
                                               is_causal=True, query_seq_lengths=lengths,
                                               key_value_seq_lengths=lengths, implementation="cudnn")
        else:  # `cached`'s attention over the chunk's T keys instead of the cache's S: key j holds
            # position j, and padding keys sit past every valid query, so the causal mask hides them
            mask = self.mask(ctx.positions, jnp.arange(q.shape[1]))  # [B, T, T]
            out = attend(q, k, v, mask, scale=self.scale)
        # Padding queries see no key: zeros, whatever the implementation's convention (no NaN
        # may reach the padding tokens' later layers, where a MoE router sees them).
        return jnp.where(ctx.valid[:, :, None, None], out, 0).astype(v.dtype)

    def output(self, params, attn):
        """attn [B, T, H, Dh] -> [B, T, D] (maybe `Unreduced` over `tensor`: sharding/residual.py)."""
        y = row_parallel_output("bthk,hkd->btd", attn, params["wo"], split="h")  # heads over `tensor`
        return finished(y) + params["bo"] if self.out_bias else y

    def __call__(self, params, x, state, ctx: Context):
        q, k, v = self.project(params, x, ctx)
        k_cache = write_cache(state["k"], k, ctx)  # [B, S, Hkv, Dh]
        v_cache = write_cache(state["v"], v, ctx)

        def cached():
            # Slot j holds position j; stale slots past a sequence's length are always ahead of
            # its queries, so a causal mask hides them.
            mask = self.mask(ctx.positions, jnp.arange(k_cache.shape[1]))  # [B, T, S]
            return self.attend(params, q, k_cache, v_cache, mask)  # [B, T, H, Dh]

        def fresh():  # keys and values rounded as the cache stores them, as `cached` reads them
            return self.fresh_attend(q, k.astype(k_cache.dtype), v.astype(v_cache.dtype), ctx)

        n_new = x.shape[1]
        if self.use_decode_kernel(n_new):
            out = self.decode_attend(q, k_cache, v_cache, ctx)  # [B, 1, H, Dh]
        elif n_new > 1 and self.not_plain_causal() is None:  # a prompt chunk: is every cache empty?
            out = jax.lax.cond(jnp.all(ctx.positions[:, 0] == 0), fresh, cached)
        else:
            out = cached()
        return self.output(params, out), {"k": k_cache, "v": v_cache}
