"""Mamba-1: the selective state-space mixer (Gu & Dao, 2023), as transformers' `MambaMixer`.

For one token with input u [D] (E = expand * d_model inner channels, N = d_state, R = dt_rank):

    x, z    = u @ in_x, u @ in_z                               [E], [E]
    x       = silu(depthwise causal conv of the last d_conv x's)  [E]
    dt, B, C = split(x @ x_proj)                                [R], [N], [N]
              (RMS-normed when dt_bc_norm: Jamba, FalconMamba)
    dt      = softplus(dt @ dt_proj + dt_bias)                  [E]
    h       = exp(dt * A) * h + (dt * x) B^T                    [E, N], A = -exp(A_log) [E, N]
    y       = (h C + D * x) * silu(z)                           [E]
    out     = y @ out_proj                                      [D]

State, float32 whatever the weights' dtype and the same size whatever max_len:
`conv` [B, d_conv - 1, E], the last d_conv - 1 conv inputs (zeros before a sequence starts),
and `ssm` [B, E, N], h.

Prefill solves the linear recurrence h_t = a_t h_{t-1} + b_t with a `lax.scan` over chunks of
`scan_chunk` tokens, each chunk an `associative_scan`: memory O(B * scan_chunk * E * N) rather
than O(B * T * E * N), sequential depth T / scan_chunk. One token (decode) takes the plain step.

Padding: `ctx.valid` must be a prefix of each row (right padding, as `Model.extend` builds it).
An invalid step has a_t = 1 and b_t = -0.0, which leaves h bit for bit, and the conv tail is
gathered from each row's last valid inputs, so a padded row's state is exactly what its last
valid token left.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from chimera.architectures.config import ConfigError, require_positive
from chimera.runtime.norm import rms_norm
from chimera.runtime.protocol import Context, register_mixer

F32 = jnp.float32


def causal_conv(x, tail, weight, bias, valid):
    """Depthwise causal convolution continuing a sequence.

    x [B, T, E]; tail [B, K-1, E] float32, the K-1 inputs before x; weight [K, E] (tap i sees
    the input K-1-i steps back); bias [E] or None; valid [B, T], a prefix of each row.
    Returns (out [B, T, E] float32, new tail [B, K-1, E]: the K-1 inputs up to each row's
    last valid token, so a row with no valid token keeps its tail exactly).
    """
    k, t = weight.shape[0], x.shape[1]
    xs = jnp.concatenate([tail, x.astype(F32)], axis=1)  # [B, K-1+T, E]
    w = weight.astype(F32)
    out = sum(xs[:, i:i + t] * w[i] for i in range(k))  # [B, T, E]
    if bias is not None:
        out = out + bias.astype(F32)
    n_valid = jnp.sum(valid, axis=1)  # [B]
    last = n_valid[:, None] + jnp.arange(k - 1)  # [B, K-1]: the last K-1 inputs' indices in xs
    return out, jnp.take_along_axis(xs, last[:, :, None], axis=1)


def combine(left, right):
    """Compose two steps of h -> a h + b (left first): h -> a_r (a_l h + b_l) + b_r."""
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r * b_l + b_r


def discretise(u, dt, A, b, valid):
    """u, dt [..., E], A [E, N], b [..., N], valid [...] -> (a, bx) [..., E, N]: the step
    h -> a h + bx. Invalid steps are the identity: a = 1, bx = -0.0 (x + -0.0 is x bit for
    bit, even for x = -0.0, where + 0.0 would flip the sign)."""
    keep = valid[..., None, None]
    a = jnp.where(keep, jnp.exp(dt[..., None] * A), 1.0)
    bx = jnp.where(keep, (dt * u)[..., None] * b[..., None, :], -0.0)
    return a, bx


def selective_step(u, dt, A, b, c, valid, h):
    """One token: u, dt [B, E], A [E, N], b, c [B, N], valid [B], h [B, E, N] (float32)
    -> (y [B, E] = h' C, h' [B, E, N])."""
    a, bx = discretise(u, dt, A, b, valid)
    h = a * h + bx  # [B, E, N]
    return jnp.einsum("ben,bn->be", h, c), h


def selective_scan(u, dt, A, b, c, valid, h, chunk: int):
    """T tokens from state h: u, dt [B, T, E], A [E, N], b, c [B, T, N], valid [B, T],
    h [B, E, N] (float32) -> (y [B, T, E], with y_t = h_t C_t; final h [B, E, N]).

    A `lax.scan` over chunks of `chunk` tokens carries h; inside a chunk an associative scan
    gives every h_t at once. The last chunk is padded with identity steps.
    """
    batch, t, e = u.shape
    size = min(chunk, t)
    n_chunks = -(-t // size)
    pad = n_chunks * size - t

    def chunks(z):  # [B, T, ...] -> [n_chunks, B, size, ...]; padding is invalid
        z = jnp.pad(z, [(0, 0), (0, pad)] + [(0, 0)] * (z.ndim - 2))
        return jnp.moveaxis(z.reshape(batch, n_chunks, size, *z.shape[2:]), 1, 0)

    def one_chunk(h, inputs):
        u, dt, b, c, valid = inputs  # [B, L, E], [B, L, E], [B, L, N], [B, L, N], [B, L]
        a, bx = discretise(u, dt, A, b, valid)  # [B, L, E, N]
        bx = bx.at[:, 0].add(a[:, 0] * h)  # fold the carried state into the chunk's first step
        _, hs = jax.lax.associative_scan(combine, (a, bx), axis=1)  # [B, L, E, N]: h after each step
        return hs[:, -1], jnp.einsum("blen,bln->ble", hs, c)

    h, y = jax.lax.scan(one_chunk, h, tuple(map(chunks, (u, dt, b, c, valid))))  # y [n_chunks, B, L, E]
    y = jnp.moveaxis(y, 0, 1).reshape(batch, n_chunks * size, e)[:, :t]  # [B, T, E]
    return y, h


@register_mixer("mamba")
@dataclasses.dataclass(frozen=True)
class Mamba:
    """The Mamba-1 mixer. Fields follow transformers' MambaConfig: d_state (state_size),
    d_conv (conv_kernel), expand, dt_rank (time_step_rank; None: ceil(d_model / 16)),
    conv_bias (use_conv_bias), bias (use_bias: in/out projections). dt_bc_norm adds RMSNorms
    (eps norm_eps) on dt, B and C after x_proj (Jamba; FalconMamba with unit weights).
    dt_min, dt_max, dt_init_floor only shape `init`. scan_chunk: tokens per associative
    scan in prefill (memory, not results, depends on it)."""
    d_model: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None
    conv_bias: bool = True
    bias: bool = False
    dt_bc_norm: bool = False
    norm_eps: float = 1e-6
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    scan_chunk: int = 256

    def __post_init__(self):
        require_positive(self, "d_state", "d_conv", "expand", "dt_rank", "norm_eps", "dt_min", "dt_max",
                         "dt_init_floor", "scan_chunk")
        if self.dt_min > self.dt_max:
            raise ConfigError("dt_min", f"{self.dt_min} is greater than dt_max {self.dt_max}")
        if self.dt_rank is None:
            object.__setattr__(self, "dt_rank", math.ceil(self.d_model / 16))

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    # --- parameters ---

    def init(self, key):
        d, e, n, r, k = self.d_model, self.d_inner, self.d_state, self.dt_rank, self.d_conv
        keys = jax.random.split(key, 7)
        # dt starts log-uniform in [dt_min, dt_max] (floored); dt_bias is its inverse softplus.
        log_min, log_max = math.log(self.dt_min), math.log(self.dt_max)
        dt = jnp.exp(jax.random.uniform(keys[5], (e,)) * (log_max - log_min) + log_min)
        dt = jnp.maximum(dt, self.dt_init_floor)
        params = {
            "in_x": jax.random.normal(keys[0], (d, e)) * d ** -0.5,
            "in_z": jax.random.normal(keys[1], (d, e)) * d ** -0.5,
            "conv_weight": jax.random.uniform(keys[2], (k, e), minval=-k ** -0.5, maxval=k ** -0.5),
            "x_proj": jax.random.normal(keys[3], (e, r + 2 * n)) * e ** -0.5,
            "dt_proj": jax.random.uniform(keys[4], (r, e), minval=-r ** -0.5, maxval=r ** -0.5),
            "dt_bias": dt + jnp.log(-jnp.expm1(-dt)),
            "A_log": jnp.log(jnp.broadcast_to(jnp.arange(1, n + 1, dtype=F32), (e, n))),  # S4D-real: A = -(1..N)
            "D": jnp.ones((e,)),
            "out_proj": jax.random.normal(keys[6], (e, d)) * e ** -0.5,
        }
        if self.conv_bias:
            params["conv_bias"] = jnp.zeros((e,))
        if self.bias:
            params |= {"in_x_bias": jnp.zeros((e,)), "in_z_bias": jnp.zeros((e,)), "out_bias": jnp.zeros((d,))}
        if self.dt_bc_norm:
            params |= {"dt_norm": jnp.ones((r,)), "B_norm": jnp.ones((n,)), "C_norm": jnp.ones((n,))}
        return params

    def param_axes(self):
        axes = {"in_x": ("embed", "ssm_inner"), "in_z": ("embed", "ssm_inner"),
                "conv_weight": (None, "ssm_inner"), "x_proj": ("ssm_inner", None),
                "dt_proj": (None, "ssm_inner"), "dt_bias": ("ssm_inner",), "A_log": ("ssm_inner", None),
                "D": ("ssm_inner",), "out_proj": ("ssm_inner", "embed")}
        if self.conv_bias:
            axes["conv_bias"] = ("ssm_inner",)
        if self.bias:
            axes |= {"in_x_bias": ("ssm_inner",), "in_z_bias": ("ssm_inner",), "out_bias": ("embed",)}
        if self.dt_bc_norm:
            axes |= {"dt_norm": (None,), "B_norm": (None,), "C_norm": (None,)}
        return axes

    # --- decode state and costs ---

    def init_state(self, batch_size, max_len, dtype):
        """float32 whatever `dtype`; `max_len` does not matter to a recurrence."""
        return {"conv": jnp.zeros((batch_size, self.d_conv - 1, self.d_inner), F32),
                "ssm": jnp.zeros((batch_size, self.d_inner, self.d_state), F32)}

    def state_axes(self):
        return {"conv": ("batch", None, "ssm_inner"), "ssm": ("batch", "ssm_inner", None)}

    def state_bytes(self, context: int, dtype) -> int:
        """The conv tail and h, float32: the same at any context and weight dtype."""
        return 4 * self.d_inner * (self.d_conv - 1 + self.d_state)

    def decode_bytes(self, context: int, dtype) -> int:
        """A decode step reads the whole state and writes it whole."""
        return 2 * self.state_bytes(context, dtype)

    def flops_per_token(self, context: int) -> int:
        """Projections, the conv, and per (channel, state) element: dt * A, (dt x) * B,
        a * h + b and h * C summed (6 FLOPs; the exp not counted). Independent of context."""
        d, e, n, r, k = self.d_model, self.d_inner, self.d_state, self.dt_rank, self.d_conv
        projections = 2 * (2 * d * e + e * (r + 2 * n) + r * e + e * d)
        return projections + 2 * k * e + 6 * e * n

    # --- the computation ---

    def selection(self, params, x):
        """x [B, T, E] (after the conv) -> dt [B, T, E], B [B, T, N], C [B, T, N], float32."""
        r, n = self.dt_rank, self.d_state
        dt, b, c = jnp.split(x @ params["x_proj"], [r, r + n], axis=-1)  # [B, T, R], [B, T, N], [B, T, N]
        if self.dt_bc_norm:
            dt = rms_norm(dt, params["dt_norm"], self.norm_eps)
            b = rms_norm(b, params["B_norm"], self.norm_eps)
            c = rms_norm(c, params["C_norm"], self.norm_eps)
        dt = jnp.einsum("btr,re->bte", dt, params["dt_proj"], preferred_element_type=F32)  # [B, T, E]
        dt = jax.nn.softplus(dt + params["dt_bias"].astype(F32))
        return dt, b.astype(F32), c.astype(F32)

    def __call__(self, params, x, state, ctx: Context):
        """x [B, T, D] -> (y [B, T, D], new state); T = 1 takes the recurrent step."""
        xi = x @ params["in_x"]  # [B, T, E]
        z = x @ params["in_z"]  # [B, T, E]
        if self.bias:
            xi, z = xi + params["in_x_bias"], z + params["in_z_bias"]
        xc, conv = causal_conv(xi, state["conv"], params["conv_weight"], params.get("conv_bias"), ctx.valid)
        xc = jax.nn.silu(xc).astype(x.dtype)  # [B, T, E]
        dt, b, c = self.selection(params, xc)
        A = -jnp.exp(params["A_log"].astype(F32))  # [E, N]
        u = xc.astype(F32)
        if x.shape[1] == 1:
            y, h = selective_step(u[:, 0], dt[:, 0], A, b[:, 0], c[:, 0], ctx.valid[:, 0], state["ssm"])
            y = y[:, None]  # [B, 1, E]
        else:
            y, h = selective_scan(u, dt, A, b, c, ctx.valid, state["ssm"], self.scan_chunk)
        y = (y + u * params["D"].astype(F32)) * jax.nn.silu(z.astype(F32))  # [B, T, E]
        out = y.astype(x.dtype) @ params["out_proj"]  # [B, T, D]
        if self.bias:
            out = out + params["out_bias"]
        return out, {"conv": conv, "ssm": h}
