"""Multi-head Latent Attention (DeepSeek-V2/V3): the KV cache holds one compressed latent per token.

Each token is projected down to a latent c_kv [kv_lora_rank] (RMS-normalised) and one RoPE
key k_rope [qk_rope_head_dim] shared by all heads; that pair is the whole decode state.
Head h sees key [c_kv @ W_UK[h] | k_rope] and value c_kv @ W_UV[h], and its query is
[q_nope | q_rope] (from x directly, or through a low-rank bottleneck with an RMSNorm).

Two equal ways to attend over the cached latents:
  naive     expand every cached latent into per-head keys and values, then attend: its
            expansion costs O(S) once per call, shared by all T queries (a long prefill).
  absorbed  fold W_UK into the query (q_nope @ W_UK^T is a query in latent space) and apply
            W_UV after the softmax mix: scores = q_latent . c_kv + q_rope . k_rope and
            output = (probs @ c_kv) @ W_UV. Nothing is expanded; a decode step reads only
            the compressed cache.
`path: auto` picks, from the static shapes (T new tokens, S cache slots), whichever needs
fewer FLOPs: absorbed for decode steps and short chunks, naive for a prefill that fills
much of the cache (see `absorbs`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from chimera.architectures.config import ConfigError, require_positive
from chimera.attention.attention import write_cache
from chimera.attention.core import grouped_logits, mix, probabilities
from chimera.attention.rope import RopeScaling, apply_rope, inverse_frequencies, rope_attention_factor, yarn_mscale
from chimera.runtime.linear import linear
from chimera.runtime.norm import rms_norm
from chimera.runtime.protocol import Context, register_mixer
from chimera.sharding.residual import row_parallel_output


@register_mixer("mla")
@dataclasses.dataclass(frozen=True)
class MLA:
    """Fields as DeepSeek's config. `q_lora_rank` None projects queries directly (V2-Lite);
    otherwise x -> q_lora_rank -> RMSNorm -> heads (V2, V3). `rope_interleave` rotates
    adjacent pairs (x0, x1), (x2, x3), ... as DeepSeek checkpoints do (transformers'
    `rope_interleave`); False rotates halves (i, i + d/2). `norm_eps` is the epsilon of
    the internal q/kv RMSNorms. Under yarn `rope_scaling`, the softmax scale
    (qk_nope_head_dim + qk_rope_head_dim) ** -0.5 is multiplied by mscale(factor, mscale_all_dim)^2.
    """
    d_model: int
    n_heads: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rope_interleave: bool = False
    norm_eps: float = 1e-6
    path: Literal["auto", "naive", "absorbed"] = "auto"

    def __post_init__(self):
        require_positive(self, "n_heads", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                         "q_lora_rank", "rope_theta", "norm_eps")
        if self.qk_rope_head_dim % 2:
            raise ConfigError("qk_rope_head_dim", f"must be even for RoPE, got {self.qk_rope_head_dim}")
        if self.path not in ("auto", "naive", "absorbed"):
            raise ConfigError("path", f"must be one of ['auto', 'naive', 'absorbed'], got {self.path!r}")

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        scale = self.qk_head_dim ** -0.5
        s = self.rope_scaling
        if s is not None and s.type == "yarn" and s.mscale_all_dim is not None:
            scale *= yarn_mscale(s.factor, s.mscale_all_dim) ** 2  # DeepSeek's long-context correction
        return scale

    @property
    def inv_freq(self) -> np.ndarray:
        return inverse_frequencies(self.qk_rope_head_dim, self.rope_theta, self.rope_scaling)

    def absorbs(self, n_new: int, slots: int) -> bool:
        """Whether T=n_new queries over S=slots cached latents take the absorbed path.

        Per head, naive spends 2 S R (dn + dv) expanding the cache and 2 T S (dn + dr + dv)
        on scores and mix; absorbed spends 2 T R (dn + dv) absorbing W_UK and W_UV and
        2 T S (2 R + dr) on scores and mix over the latents (R = kv_lora_rank; the rope
        scores, 2 T S dr, are common to both and cancel below).
        """
        if self.path != "auto":
            return self.path == "absorbed"
        r, dn, dv = self.kv_lora_rank, self.qk_nope_head_dim, self.v_head_dim
        naive = slots * r * (dn + dv) + n_new * slots * (dn + dv)
        absorbed = n_new * r * (dn + dv) + n_new * slots * 2 * r
        return absorbed <= naive

    # --- parameters and state ---

    def init(self, key):
        k_q, k_qb, k_kv, k_rope, k_uk, k_uv, k_o = jax.random.split(key, 7)
        d, h, r, dr = self.d_model, self.n_heads, self.kv_lora_rank, self.qk_rope_head_dim
        normal = jax.random.normal
        if self.q_lora_rank is None:
            params = {"wq": normal(k_q, (d, h, self.qk_head_dim)) * d ** -0.5}
        else:
            rq = self.q_lora_rank
            params = {"wq_a": normal(k_q, (d, rq)) * d ** -0.5, "q_norm": jnp.ones((rq,)),
                      "wq_b": normal(k_qb, (rq, h, self.qk_head_dim)) * rq ** -0.5}
        return params | {
            "wkv_a": normal(k_kv, (d, r)) * d ** -0.5,  # W_DKV: x -> latent
            "kv_norm": jnp.ones((r,)),
            "wk_rope": normal(k_rope, (d, dr)) * d ** -0.5,  # x -> the shared rope key
            "wk_b": normal(k_uk, (r, h, self.qk_nope_head_dim)) * r ** -0.5,  # W_UK
            "wv_b": normal(k_uv, (r, h, self.v_head_dim)) * r ** -0.5,  # W_UV
            "wo": normal(k_o, (h, self.v_head_dim, d)) * (h * self.v_head_dim) ** -0.5,
        }

    def param_axes(self):
        if self.q_lora_rank is None:
            axes = {"wq": ("embed", "heads", "head_dim")}
        else:
            axes = {"wq_a": ("embed", "q_lora"), "q_norm": ("q_lora",), "wq_b": ("q_lora", "heads", "head_dim")}
        return axes | {"wkv_a": ("embed", "kv_lora"), "kv_norm": ("kv_lora",), "wk_rope": ("embed", "rope_head_dim"),
                       "wk_b": ("kv_lora", "heads", "head_dim"), "wv_b": ("kv_lora", "heads", "head_dim"),
                       "wo": ("heads", "head_dim", "embed")}

    def init_state(self, batch_size, max_len, dtype):
        return {"latent": jnp.zeros((batch_size, max_len, self.kv_lora_rank), dtype),
                "k_rope": jnp.zeros((batch_size, max_len, self.qk_rope_head_dim), dtype)}

    def state_axes(self):
        return {"latent": ("batch", "sequence", "kv_lora"), "k_rope": ("batch", "sequence", "rope_head_dim")}

    def state_bytes(self, context: int, dtype) -> int:
        return context * (self.kv_lora_rank + self.qk_rope_head_dim) * jnp.dtype(dtype).itemsize

    def flops_per_token(self, context: int) -> int:
        """FLOPs of one token on the absorbed (decode) path over `context` cached tokens."""
        d, h, r = self.d_model, self.n_heads, self.kv_lora_rank
        dn, dr, dv = self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim
        if self.q_lora_rank is None:
            query = 2 * d * h * self.qk_head_dim
        else:
            query = 2 * self.q_lora_rank * (d + h * self.qk_head_dim)
        down = 2 * d * (r + dr)
        absorb = 2 * h * r * (dn + dv)  # q_nope @ W_UK^T and mixed @ W_UV
        scores_and_mix = 2 * h * (2 * r + dr) * context
        return query + down + absorb + scores_and_mix + 2 * h * dv * d

    # --- the computation ---

    def rope(self, x, positions):
        """x [B, T, H, dr] -> rotated, in rotate-half layout whatever the input layout."""
        if self.rope_interleave:  # pairs (2i, 2i+1) -> (i, i + dr/2): then rotate halves
            x = jnp.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)  # [B, T, H, dr]
        return apply_rope(x, positions, self.inv_freq, rope_attention_factor(self.rope_scaling))

    def project(self, params, x, ctx: Context):
        """x [B, T, D] -> q_nope [B, T, H, dn], q_rope [B, T, H, dr], latent [B, T, R], k_rope [B, T, dr]."""
        if self.q_lora_rank is None:
            q = linear("btd,dhk->bthk", x, params["wq"])  # [B, T, H, dn + dr]
        else:
            q_a = rms_norm(linear("btd,dr->btr", x, params["wq_a"]), params["q_norm"], self.norm_eps)  # [B, T, Rq]
            q = linear("btr,rhk->bthk", q_a, params["wq_b"])  # [B, T, H, dn + dr]
        q_nope, q_rope = q[..., :self.qk_nope_head_dim], q[..., self.qk_nope_head_dim:]
        latent = rms_norm(linear("btd,dr->btr", x, params["wkv_a"]), params["kv_norm"], self.norm_eps)  # [B, T, R]
        k_rope = linear("btd,dk->btk", x, params["wk_rope"])[:, :, None, :]  # [B, T, 1, dr]: one key for all heads
        return (q_nope, self.rope(q_rope, ctx.positions), latent,
                self.rope(k_rope, ctx.positions)[:, :, 0])  # k_rope [B, T, dr]

    def attend_naive(self, params, q_nope, q_rope, latent, k_rope, mask):
        """Expand the cache to per-head keys and values, then attend as MHA. Cache latent
        [B, S, R], k_rope [B, S, dr]; mask [B, T, S] -> [B, T, H, dv]."""
        k_nope = jnp.einsum("bsr,rhk->bshk", latent, params["wk_b"])  # [B, S, H, dn]
        v = jnp.einsum("bsr,rhv->bshv", latent, params["wv_b"])  # [B, S, H, dv]
        rope_logits = grouped_logits(q_rope, k_rope[:, :, None, :], self.softmax_scale)  # [B, 1, H, T, S]
        logits = grouped_logits(q_nope, k_nope, self.softmax_scale) + rope_logits.swapaxes(1, 2)  # [B, H, 1, T, S]
        return mix(probabilities(logits, mask), v)

    def attend_absorbed(self, params, q_nope, q_rope, latent, k_rope, mask):
        """Attend in latent space: MQA whose one shared key is [c_kv | k_rope] and value c_kv.
        Same arguments and result as `attend_naive`."""
        q_latent = jnp.einsum("bthk,rhk->bthr", q_nope, params["wk_b"])  # [B, T, H, R]
        logits = (grouped_logits(q_latent, latent[:, :, None, :], self.softmax_scale)
                  + grouped_logits(q_rope, k_rope[:, :, None, :], self.softmax_scale))  # [B, 1, H, T, S]
        mixed = mix(probabilities(logits, mask), latent[:, :, None, :])  # [B, T, H, R]
        return jnp.einsum("bthr,rhv->bthv", mixed, params["wv_b"])  # [B, T, H, dv]

    def __call__(self, params, x, state, ctx: Context):
        q_nope, q_rope, latent, k_rope = self.project(params, x, ctx)
        state = {"latent": write_cache(state["latent"], latent, ctx),  # [B, S, R]
                 "k_rope": write_cache(state["k_rope"], k_rope, ctx)}  # [B, S, dr]
        slots = jnp.arange(state["latent"].shape[1])
        # As in Attention: slot j holds position j; stale slots are always ahead of the queries.
        mask = slots[None, None, :] <= ctx.positions[:, :, None]  # [B, T, S]
        attend = self.attend_absorbed if self.absorbs(x.shape[1], slots.shape[0]) else self.attend_naive
        out = attend(params, q_nope, q_rope, state["latent"], state["k_rope"], mask)  # [B, T, H, dv]
        return row_parallel_output("bthv,hvd->btd", out, params["wo"], split="h"), state  # heads over `tensor`
