"""Mamba-2 (SSD, "Transformers are SSMs", Dao & Gu 2024) as a token mixer.

Per token t, per head h (P channels) over a state of N dimensions, with dt_t > 0 and A_h < 0:

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T        h [P, N], x [P], B and C [N]
    y_t = h_t C_t + D x_t

x, B and C come from a causal depthwise convolution (SiLU) over an input projection; B and C
are shared by the heads of a group. y is gated by SiLU(z) and RMS-normalised per group.

Prefill uses the chunked SSD form: within a chunk of L tokens the recurrence unrolls into a
masked, decay-weighted (C B^T) "attention" product (quadratic in L, matmul-friendly); across
chunks only the [H, P, N] state is passed, starting from the sequence's incoming state. A
decode step (T = 1) runs the recurrence itself. Both are float32, whatever the weight dtype.

State (float32, batch-major, independent of max_len):
    conv [B, d_conv - 1, conv_dim]: the last d_conv - 1 convolution inputs (x, B, C pre-conv)
    ssm  [B, n_heads, head_dim, d_state]: h
Padding (ctx.valid False, right of each row's tokens) gets dt = 0: decay 1 and no input, so
it leaves h exactly as it was, and the conv tail is taken from the last valid tokens.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from chimera.architectures.config import ConfigError, require_positive
from chimera.runtime.protocol import Context, register_mixer

f32 = jnp.float32


def segsum(a: jax.Array) -> jax.Array:
    """a [..., L] -> [..., L, L]: out[..., l, s] = a[s+1] + ... + a[l] for s <= l (0 on the
    diagonal), -inf above it. Summed directly, not as cumsum[l] - cumsum[s], which loses
    precision once the cumulative log-decay is large."""
    L = a.shape[-1]
    k, s = jnp.arange(L)[:, None], jnp.arange(L)[None, :]
    terms = jnp.where(k > s, a[..., :, None], 0.0)  # [..., L(k), L(s)]
    sums = jnp.cumsum(terms, axis=-2)  # [..., L(l), L(s)] = sum over s < k <= l
    return jnp.where(k >= s, sums, -jnp.inf)


def ssd_chunked(xdt, a, b, c, h0, chunk: int):
    """The SSD scan over a chunk of tokens, from state h0 (all float32).

    xdt [Bt, T, H, P] (x * dt), a [Bt, T, H] (dt * A: each step's log-decay, <= 0),
    b, c [Bt, T, G, N], h0 [Bt, H, P, N] -> y [Bt, T, H, P] (no D skip), h [Bt, H, P, N].
    Head h reads group h // (H / G).
    """
    batch, T, H, P = xdt.shape
    G, N = b.shape[2:]
    R = H // G  # heads per group
    # T not a multiple of the chunk: pad with steps of decay 1 (a = 0) and no input (xdt = 0),
    # which leave the state as it is.
    pad = -T % chunk
    xdt, a, b, c = (jnp.pad(v, [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2)) for v in (xdt, a, b, c))
    n = (T + pad) // chunk
    xdt = xdt.reshape(batch, n, chunk, G, R, P)  # [Bt, n, L, G, R, P]
    b = b.reshape(batch, n, chunk, G, N)  # [Bt, n, L, G, N]
    c = c.reshape(batch, n, chunk, G, N)  # [Bt, n, L, G, N]
    a = a.reshape(batch, n, chunk, G, R).transpose(0, 3, 4, 1, 2)  # [Bt, G, R, n, L]

    # 1. Within each chunk: y_l = sum_{s <= l} (C_l . B_s) exp(a_{s+1} + ... + a_l) xdt_s.
    decay = jnp.exp(segsum(a))  # [Bt, G, R, n, L(l), L(s)]
    # Contractions are written pairwise: a three-operand einsum lets XLA pick an order that
    # materialises a [.., L, P, N]-sized product (tens of GB at batch 64 on the GPU).
    scores = jnp.einsum("bclgn,bcsgn->bgcls", c, b)  # [Bt, G, n, L, L]: shared by a group's heads
    weights = scores[:, :, None] * decay  # [Bt, G, R, n, L, L]
    y = jnp.einsum("bgrcls,bcsgrp->bclgrp", weights, xdt)  # [Bt, n, L, G, R, P]

    # 2. Each chunk's own inputs, decayed to its end: the state it would leave from zero.
    to_end = decay[..., -1, :]  # [Bt, G, R, n, L]: exp(a_{s+1} + ... + a_last)
    xdt_to_end = xdt * to_end.transpose(0, 3, 4, 1, 2)[..., None]  # [Bt, n, L, G, R, P]
    chunk_states = jnp.einsum("bcsgn,bcsgrp->cbgrpn", b, xdt_to_end)  # [n, Bt, G, R, P, N]

    # 3. Pass the state across chunks (a short sequential scan of elementwise ops: exact when
    # a chunk is all padding, h * 1 + 0).
    cum = jnp.cumsum(a, axis=-1)  # [Bt, G, R, n, L]: log-decay from the chunk's start to l
    chunk_decay = jnp.exp(cum[..., -1]).transpose(3, 0, 1, 2)  # [n, Bt, G, R]

    def carry(h, inputs):
        decay_c, state_c = inputs
        return h * decay_c[..., None, None] + state_c, h  # emit the state entering the chunk

    h0 = h0.reshape(batch, G, R, P, N)  # [Bt, G, R, P, N]
    h, starts = jax.lax.scan(carry, h0, (chunk_decay, chunk_states))  # starts [n, Bt, G, R, P, N]

    # 4. The state entering each chunk, decayed to l and read out by C_l.
    from_start = jnp.einsum("bclgn,cbgrpn->bclgrp", c, starts)  # [Bt, n, L, G, R, P]
    y = y + from_start * jnp.exp(cum).transpose(0, 3, 4, 1, 2)[..., None]  # [Bt, n, L, G, R, P]
    y = y.reshape(batch, n * chunk, H, P)[:, :T]  # [Bt, T, H, P]
    return y, h.reshape(batch, H, P, N)


def ssd_step(xdt, a, b, c, h):
    """One token of the recurrence (all float32): xdt [Bt, H, P], a [Bt, H], b, c [Bt, G, N],
    h [Bt, H, P, N] -> y [Bt, H, P] (no D skip), new h."""
    batch, H, P = xdt.shape
    G, N = b.shape[1:]
    R = H // G
    h = h.reshape(batch, G, R, P, N)  # [Bt, G, R, P, N]
    decay = jnp.exp(a).reshape(batch, G, R)[..., None, None]  # [Bt, G, R, 1, 1]
    # An outer product (no sum): xdt = 0 adds exactly zero.
    h = h * decay + jnp.einsum("bgrp,bgn->bgrpn", xdt.reshape(batch, G, R, P), b)
    y = jnp.einsum("bgrpn,bgn->bgrp", h, c)  # [Bt, G, R, P]
    return y.reshape(batch, H, P), h.reshape(batch, H, P, N)


def gated_rms_norm(y, z, weight, groups: int, eps: float, norm_before_gate: bool):
    """y, z [..., Di] float32, weight [Di] -> [..., Di] float32: RMSNorm over each of `groups`
    contiguous channel groups, gated by SiLU(z) before the norm (norm_before_gate False:
    transformers and mamba_ssm) or after it."""
    gate = jax.nn.silu(z)
    if not norm_before_gate:
        y = y * gate
    yg = y.reshape(*y.shape[:-1], groups, -1)  # [..., G, Di / G]
    yg = yg * jax.lax.rsqrt(jnp.mean(yg * yg, axis=-1, keepdims=True) + eps)
    y = yg.reshape(y.shape) * weight.astype(f32)  # [..., Di]
    return y * gate if norm_before_gate else y


@register_mixer("mamba2")
@dataclasses.dataclass(frozen=True)
class Mamba2:
    """A Mamba-2 mixer. d_inner = expand * d_model = n_heads * head_dim (n_heads defaults to
    d_inner // head_dim); B and C have n_groups groups of d_state; the convolution spans d_conv
    tokens over conv_dim = d_inner + 2 * n_groups * d_state channels.

    dt = clamp(softplus(dt_raw + dt_bias), *dt_limit) (a null max: no upper limit).
    gated_norm: SiLU(z)-gated RMSNorm over n_groups groups (weights `norm`, eps `norm_eps`);
    without it the output is y * SiLU(z). dt_min, dt_max, dt_init_floor only shape `init`.
    Params: in_proj [D, 2 Di + 2 G N + H] (z, x, B, C, dt), conv_weight [d_conv, conv_dim],
    conv_bias, dt_bias, a_log (A = -exp(a_log)), d_skip [H], norm [Di], out_proj [Di, D],
    in_proj_bias / out_proj_bias with `bias`.
    """
    d_model: int
    head_dim: int
    d_state: int
    n_heads: int | None = None
    n_groups: int = 1
    d_conv: int = 4
    expand: int = 2
    chunk_size: int = 256
    conv_bias: bool = True
    bias: bool = False
    dt_limit: tuple[float | None, ...] = (0.0, None)
    norm_eps: float = 1e-5
    gated_norm: bool = True
    norm_before_gate: bool = False
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4

    def __post_init__(self):
        require_positive(self, "head_dim", "d_state", "n_heads", "n_groups", "d_conv", "expand", "chunk_size",
                         "norm_eps", "dt_min", "dt_max", "dt_init_floor")
        d_inner = self.expand * self.d_model
        if self.n_heads is None:
            if d_inner % self.head_dim:
                raise ConfigError("head_dim", f"{self.head_dim} does not divide d_inner = expand x d_model "
                                              f"= {d_inner}")
            object.__setattr__(self, "n_heads", d_inner // self.head_dim)
        if self.n_heads * self.head_dim != d_inner:
            raise ConfigError("n_heads", f"n_heads x head_dim = {self.n_heads} x {self.head_dim} must equal "
                                         f"d_inner = expand x d_model = {self.expand} x {self.d_model}")
        if self.n_heads % self.n_groups:
            raise ConfigError("n_groups", f"{self.n_groups} does not divide n_heads {self.n_heads}")
        if len(self.dt_limit) != 2 or self.dt_limit[0] is None:
            raise ConfigError("dt_limit", f"must be [min, max] (max null: unbounded), got {list(self.dt_limit)}")
        low, high = self.dt_limit
        high = None if high == math.inf else high  # inf and null mean the same: one canonical form
        if low < 0 or (high is not None and high <= low):
            raise ConfigError("dt_limit", f"needs 0 <= min < max, got {list(self.dt_limit)}")
        object.__setattr__(self, "dt_limit", (low, high))
        if self.dt_min > self.dt_max:
            raise ConfigError("dt_min", f"{self.dt_min} is above dt_max {self.dt_max}")

    # --- sizes ---

    @property
    def d_inner(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.d_state

    # --- parameters ---

    def init(self, key):
        """mamba_ssm's initialisation: A ~ U[1, 16], dt log-uniform in [dt_min, dt_max]
        (through the inverse softplus, floored at dt_init_floor), D = 1."""
        k_in, k_conv, k_a, k_dt, k_out = jax.random.split(key, 5)
        d, di, h, k = self.d_model, self.d_inner, self.n_heads, self.d_conv
        dt = jnp.exp(jax.random.uniform(k_dt, (h,), minval=math.log(self.dt_min), maxval=math.log(self.dt_max)))
        dt = jnp.maximum(dt, self.dt_init_floor)
        params = {
            "in_proj": jax.random.normal(k_in, (d, 2 * di + 2 * self.n_groups * self.d_state + h)) * d ** -0.5,
            "conv_weight": jax.random.uniform(k_conv, (k, self.conv_dim), minval=-1.0, maxval=1.0) * k ** -0.5,
            "dt_bias": dt + jnp.log(-jnp.expm1(-dt)),  # softplus^-1(dt)
            "a_log": jnp.log(jax.random.uniform(k_a, (h,), minval=1.0, maxval=16.0)),
            "d_skip": jnp.ones((h,)),
            "out_proj": jax.random.normal(k_out, (di, d)) * di ** -0.5,
        }
        if self.conv_bias:
            params["conv_bias"] = jnp.zeros((self.conv_dim,))
        if self.gated_norm:
            params["norm"] = jnp.ones((di,))
        if self.bias:
            params |= {"in_proj_bias": jnp.zeros((params["in_proj"].shape[1],)), "out_proj_bias": jnp.zeros((d,))}
        return params

    def param_axes(self):
        # in_proj and the conv mix per-head (z, x, dt) and per-group (B, C) channels in one axis.
        axes = {"in_proj": ("embed", None), "conv_weight": (None, None), "dt_bias": ("heads",),
                "a_log": ("heads",), "d_skip": ("heads",), "out_proj": (None, "embed")}
        if self.conv_bias:
            axes["conv_bias"] = (None,)
        if self.gated_norm:
            axes["norm"] = (None,)
        if self.bias:
            axes |= {"in_proj_bias": (None,), "out_proj_bias": ("embed",)}
        return axes

    # --- decode state and costs ---

    def init_state(self, batch_size, max_len, dtype):
        """float32 whatever `dtype`, and no dependence on max_len."""
        return {"conv": jnp.zeros((batch_size, self.d_conv - 1, self.conv_dim), f32),
                "ssm": jnp.zeros((batch_size, self.n_heads, self.head_dim, self.d_state), f32)}

    def state_axes(self):
        return {"conv": ("batch", None, None), "ssm": ("batch", "heads", "head_dim", None)}

    def state_bytes(self, context: int, dtype) -> int:
        """Constant: a conv tail and an SSM state, float32."""
        return 4 * ((self.d_conv - 1) * self.conv_dim + self.n_heads * self.head_dim * self.d_state)

    def decode_bytes(self, context: int, dtype) -> int:
        """A decode step reads the whole state and writes it whole."""
        return 2 * self.state_bytes(context, dtype)

    def flops_per_token(self, context: int) -> int:
        """Projections, convolution and the recurrent step (decay, input, read-out: ~5 H P N)."""
        projections = 2 * self.d_model * (self.d_inner + self.conv_dim + self.n_heads) + 2 * self.d_inner * self.d_model
        return projections + 2 * self.d_conv * self.conv_dim + 5 * self.n_heads * self.head_dim * self.d_state

    # --- the computation ---

    def conv(self, params, xbc, tail, valid):
        """Causal depthwise conv + SiLU over xbc [B, T, C] after the tail [B, K-1, C] (float32).
        Returns (out [B, T, C], new tail: the last K-1 inputs up to each row's last valid token;
        `valid` is a prefix of each row)."""
        T, K = xbc.shape[1], self.d_conv
        window = jnp.concatenate([tail, xbc.astype(f32)], axis=1)  # [B, K-1+T, C]
        w = params["conv_weight"].astype(f32)  # [K, C]
        out = sum(window[:, k:k + T] * w[k] for k in range(K))  # [B, T, C]: tap K-1 is the token itself
        if self.conv_bias:
            out = out + params["conv_bias"].astype(f32)
        n_valid = jnp.sum(valid, axis=1)  # [B]
        keep = n_valid[:, None] + jnp.arange(K - 1)  # [B, K-1]: window rows n .. n+K-2
        return jax.nn.silu(out), jnp.take_along_axis(window, keep[:, :, None], axis=1)

    def __call__(self, params, x, state, ctx: Context):
        """x [B, T, D] -> (y [B, T, D], new state). T = 1 takes the recurrent step."""
        batch, T, _ = x.shape
        H, P, G, N, Di = self.n_heads, self.head_dim, self.n_groups, self.d_state, self.d_inner
        proj = jnp.einsum("btd,de->bte", x, params["in_proj"])  # [B, T, Di + C + H]
        if self.bias:
            proj = proj + params["in_proj_bias"]
        z, xbc, dt = jnp.split(proj.astype(f32), [Di, Di + self.conv_dim], axis=-1)  # [B, T, Di | C | H]

        xbc, conv_tail = self.conv(params, xbc, state["conv"], ctx.valid)
        xbc = jnp.where(ctx.valid[..., None], xbc, 0.0)  # padding: no garbage (or inf) reaches the scan
        xs, b, c = jnp.split(xbc, [Di, Di + G * N], axis=-1)
        xs = xs.reshape(batch, T, H, P)  # [B, T, H, P]
        b = b.reshape(batch, T, G, N)  # [B, T, G, N]
        c = c.reshape(batch, T, G, N)  # [B, T, G, N]

        dt = jax.nn.softplus(dt + params["dt_bias"].astype(f32))  # [B, T, H]
        low, high = self.dt_limit
        dt = jnp.clip(dt, low, high)
        dt = jnp.where(ctx.valid[..., None], dt, 0.0)  # padding: decay exp(0) = 1, input 0
        a = dt * -jnp.exp(params["a_log"].astype(f32))  # [B, T, H]
        xdt = xs * dt[..., None]  # [B, T, H, P]

        if T == 1:
            y, h = ssd_step(xdt[:, 0], a[:, 0], b[:, 0], c[:, 0], state["ssm"])
            y = y[:, None]  # [B, 1, H, P]
        else:
            y, h = ssd_chunked(xdt, a, b, c, state["ssm"], min(self.chunk_size, T))
        y = y + xs * params["d_skip"].astype(f32)[:, None]  # [B, T, H, P]
        y = y.reshape(batch, T, Di)  # [B, T, Di]

        if self.gated_norm:
            y = gated_rms_norm(y, z, params["norm"], G, self.norm_eps, self.norm_before_gate)
        else:
            y = y * jax.nn.silu(z)
        out = jnp.einsum("bte,ed->btd", y.astype(x.dtype), params["out_proj"])  # [B, T, D]
        if self.bias:
            out = out + params["out_proj_bias"]
        return out, {"conv": conv_tail, "ssm": h}
