"""RWKV-7 "Goose" time-mix: a generalised delta rule with a matrix state per head (Peng et al., 2025).

For one token with normed input x [D] (H heads of N channels, D = H * N), the previous
token's input x_prev, and the state S [H, N, N] (value index first, key index second):

    x_c   = x + (x_prev - x) * mix_c         for c in r, w, k, v, a, g (token shift)
    r, k, v = x_r @ W_r, x_k @ W_k, x_v @ W_v                      [D]
    w     = exp(-exp(-0.5) * sigmoid(decay_bias + tanh(x_w @ decay_down) @ decay_up))   decay in (0.545, 1)
    a     = sigmoid(iclr_bias + (x_a @ iclr_down) @ iclr_up)        in-context learning rate
    g     = sigmoid(x_g @ gate_down) @ gate_up                     output gate
    kk    = normalise_per_head(k * key_norm_scale)                 removal key, unit length
    k     = k * (1 + (a - 1) * key_iclr_mix)
    v     = v + (first_values - v) * sigmoid(value_bias + (x_v @ value_down) @ value_up)
            (value residual; the first RWKV-7 layer, `value_lora: null`, provides first_values)
    S     = S diag(w) + (S (-kk)) (kk * a)^T + v k^T               per head
    o     = group_norm_per_head(S r) + sum(r * k * bonus) v        per head
    out   = (o * g) @ W_o

Prefill runs the chunked form below (`wkv_chunked`), decode the step (`wkv_step`); the state
S [B, H, N, N] and the token-shift input [B, D] are float32 whatever the weights' dtype.
`tests/ssm/test_rwkv7.py` checks both against a float64 numpy recurrence and the whole model
against the `rwkv` package's `RWKV_x070`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from chimera.architectures.config import ConfigError, require_positive
from chimera.runtime.protocol import Context, register_mixer

F32 = jnp.float32
MAX_LOG_DECAY = math.exp(-0.5)  # per-token log decay lies in (-exp(-0.5), 0)
SHIFTS = ("r", "w", "k", "v", "a", "g")  # the rows of `shift_mix`


def token_shift(x, prev, valid):
    """x [B, T, D]; prev [B, D] float32, the input before x; valid [B, T], a prefix of each row.
    Returns (x_prev [B, T, D] in x's dtype: each token's predecessor, new prev [B, D]: the
    last valid input, or prev itself for a row with none)."""
    xs = jnp.concatenate([prev[:, None].astype(x.dtype), x], axis=1)  # [B, 1+T, D]
    last = jnp.sum(valid, axis=1)  # [B]: index of the last valid input in xs
    new_prev = jnp.take_along_axis(xs, last[:, None, None], axis=1)[:, 0]  # [B, D]
    return xs[:, :-1], new_prev.astype(F32)


def wkv_step(r, log_w, k, v, alpha, beta, state):
    """One token of S = S diag(w) + (S alpha) beta^T + v k^T, then o = S r.
    r, log_w, k, v, alpha, beta [B, H, N] float32; state [B, H, N, N]. Returns (o [B, H, N], S)."""
    state = (state * jnp.exp(log_w)[:, :, None, :]
             + jnp.einsum("bhij,bhj->bhi", state, alpha)[..., None] * beta[:, :, None, :]
             + v[..., None] * k[:, :, None, :])
    return jnp.einsum("bhij,bhj->bhi", state, r), state


def wkv_chunked(r, log_w, k, v, alpha, beta, state, chunk: int):
    """The same recurrence over T tokens, `chunk` at a time. Inputs [B, T, H, N] float32, an
    invalid token given as log_w = k = v = alpha = beta = 0 (the identity step); state
    [B, H, N, N]. Returns (o [B, T, H, N], final state).

    Within a chunk, with G_t = prod_{i<=t} w_i (per key channel) and z_t = S_{t-1} alpha_t,
        S_t = S_0 G_t + sum_{s<=t} (z_s beta_s^T + v_s k_s^T) G_t / G_s
        z_t = S_0 G_{t-1} alpha_t + sum_{s<t} [beta_s . (G_{t-1}/G_s) alpha_t] z_s + [k_s . (G_{t-1}/G_s) alpha_t] v_s
    so Z solves a unit lower-triangular system (I - M) Z = ..., whose parts not involving S_0
    are computed for all chunks at once; only S_0 passes from chunk to chunk. The ratios
    G_t / G_s are split as exp(c_t - m) * exp(m - c_s) around the chunk's middle m, so no factor
    exceeds exp(MAX_LOG_DECAY * chunk / 2) (float32 is safe up to chunk 128).
    """
    batch, t_len, heads, n = r.shape
    n_chunks = -(-t_len // chunk)
    pad = n_chunks * chunk - t_len

    def chunks(z):  # [B, T, H, N] -> [B, H, C, L, N]; the padding is the identity step
        z = jnp.pad(z, ((0, 0), (0, pad), (0, 0), (0, 0)))
        return z.reshape(batch, n_chunks, chunk, heads, n).transpose(0, 3, 1, 2, 4)

    r, log_w, k, v, alpha, beta = map(chunks, (r, log_w, k, v, alpha, beta))
    cum = jnp.cumsum(log_w, axis=3)  # [B, H, C, L, N]: log G_t
    cum_before = cum - log_w  # log G_{t-1}
    middle = 0.5 * cum[:, :, :, -1:]  # [B, H, C, 1, N]
    t_idx = jnp.arange(chunk)
    before, upto = t_idx[:, None] > t_idx[None, :], t_idx[:, None] >= t_idx[None, :]  # [L(t), L(s)]

    def pairs(query, key, mask):  # [.., L, N] x [.., L, N] -> [.., L(t), L(s)]
        return jnp.where(mask, jnp.einsum("bhctn,bhcsn->bhcts", query, key), 0.0)

    alpha_q, r_q = alpha * jnp.exp(cum_before - middle), r * jnp.exp(cum - middle)
    beta_k, k_k = beta * jnp.exp(middle - cum), k * jnp.exp(middle - cum)
    m_ab, m_ak = pairs(alpha_q, beta_k, before), pairs(alpha_q, k_k, before)
    m_rb, m_rk = pairs(r_q, beta_k, upto), pairs(r_q, k_k, upto)

    system = jnp.eye(chunk, dtype=F32) - m_ab  # [B, H, C, L, L], unit lower triangular
    z_from_v = solve_triangular(system, m_ak @ v, lower=True, unit_diagonal=True)  # [B, H, C, L, N]
    z_from_s0 = solve_triangular(system, alpha * jnp.exp(cum_before), lower=True, unit_diagonal=True)
    to_end = jnp.exp(cum[:, :, :, -1:] - cum)  # [B, H, C, L, N]: G_L / G_s
    beta_end, k_end = beta * to_end, k * to_end
    decay_all = jnp.exp(cum[:, :, :, -1])  # [B, H, C, N]

    def carry(s0, inputs):  # s0 [B, H, N(v), N(k)]
        z_v, z_s, dec, b_end, k_e, v_c = inputs
        z = z_v + jnp.einsum("bhtk,bhvk->bhtv", z_s, s0)  # [B, H, L, N(v)]
        s1 = (s0 * dec[:, :, None, :] + jnp.einsum("bhtv,bhtk->bhvk", z, b_end)
              + jnp.einsum("bhtv,bhtk->bhvk", v_c, k_e))
        return s1, (s0, z)

    per_chunk = [jnp.moveaxis(x, 2, 0) for x in (z_from_v, z_from_s0, decay_all, beta_end, k_end, v)]
    final, (starts, z) = jax.lax.scan(carry, state, per_chunk)
    starts, z = jnp.moveaxis(starts, 0, 2), jnp.moveaxis(z, 0, 2)  # [B, H, C, N, N], [B, H, C, L, N]
    o = (jnp.einsum("bhctk,bhcvk->bhctv", r * jnp.exp(cum), starts) + m_rb @ z + m_rk @ v)  # [B, H, C, L, N]
    o = o.transpose(0, 2, 3, 1, 4).reshape(batch, n_chunks * chunk, heads, n)[:, :t_len]  # [B, T, H, N]
    return o, final


@register_mixer("rwkv7")
@dataclasses.dataclass(frozen=True)
class RWKV7:
    """RWKV-7 time-mix. `value_lora: null` marks the layer whose values feed the value residual
    of every later RWKV-7 layer (the first one; it has no value gate)."""
    d_model: int
    head_dim: int = 64
    decay_lora: int = 64
    iclr_lora: int = 64
    gate_lora: int = 128
    value_lora: int | None = None
    chunk_size: int = 32
    group_norm_eps: float = 64e-5

    def __post_init__(self):
        require_positive(self, "head_dim", "decay_lora", "iclr_lora", "gate_lora", "value_lora",
                         "chunk_size", "group_norm_eps")
        if self.d_model % self.head_dim:
            raise ConfigError("head_dim", f"must divide d_model ({self.d_model}), got {self.head_dim}")
        if self.chunk_size > 128:
            raise ConfigError("chunk_size", f"must be <= 128 (decay factors overflow float32 past it), "
                                            f"got {self.chunk_size}")

    @property
    def n_heads(self) -> int:
        return self.d_model // self.head_dim

    @property
    def context_provides(self) -> tuple[str, ...]:
        return ("first_values",) if self.value_lora is None else ()

    @property
    def context_needs(self) -> tuple[str, ...]:
        return () if self.value_lora is None else ("first_values",)

    def lora_ranks(self) -> dict[str, int]:
        loras = {"decay": self.decay_lora, "iclr": self.iclr_lora, "gate": self.gate_lora}
        if self.value_lora is not None:
            loras["value"] = self.value_lora
        return loras

    def init(self, key):
        d, h, n = self.d_model, self.n_heads, self.head_dim
        keys = iter(jax.random.split(key, 32))
        normal = lambda shape, scale: jax.random.normal(next(keys), shape) * scale  # noqa: E731
        params = {
            "shift_mix": jax.random.uniform(next(keys), (len(SHIFTS), d)),
            "w_r": normal((d, h, n), d ** -0.5), "w_k": normal((d, h, n), d ** -0.5),
            "w_v": normal((d, h, n), d ** -0.5), "w_o": normal((h, n, d), d ** -0.5),
            "key_norm_scale": 1.0 + normal((d,), 0.1), "key_iclr_mix": 1.0 + normal((d,), 0.1),
            "bonus": normal((h, n), 0.1),
            "out_norm": {"weight": 1.0 + normal((d,), 0.1), "bias": normal((d,), 0.1)},
        }
        for name, rank in self.lora_ranks().items():
            params[f"{name}_down"] = normal((d, rank), d ** -0.5)
            params[f"{name}_up"] = normal((rank, d), rank ** -0.5)
            if name != "gate":
                params[f"{name}_bias"] = normal((d,), 0.5)
        # Decay biases spread from long memory (w ~ 0.999) to short (w ~ 0.6), as RWKV-7's init does.
        params["decay_bias"] = jnp.linspace(-6.0, 1.0, d)
        return params

    def param_axes(self):
        axes = {
            "shift_mix": (None, "embed"),
            "w_r": ("embed", "heads", "head_dim"), "w_k": ("embed", "heads", "head_dim"),
            "w_v": ("embed", "heads", "head_dim"), "w_o": ("heads", "head_dim", "embed"),
            "key_norm_scale": ("embed",), "key_iclr_mix": ("embed",), "bonus": ("heads", "head_dim"),
            "out_norm": {"weight": ("embed",), "bias": ("embed",)},
        }
        for name in self.lora_ranks():
            axes[f"{name}_down"], axes[f"{name}_up"] = ("embed", None), (None, "embed")
            if name != "gate":
                axes[f"{name}_bias"] = ("embed",)
        return axes

    def init_state(self, batch_size, max_len, dtype):
        h, n = self.n_heads, self.head_dim
        return {"shift": jnp.zeros((batch_size, self.d_model), F32),
                "wkv": jnp.zeros((batch_size, h, n, n), F32)}

    def state_axes(self):
        return {"shift": ("batch", "embed"), "wkv": ("batch", "heads", "head_dim", None)}

    def state_bytes(self, context: int, dtype) -> int:
        return 4 * (self.d_model + self.n_heads * self.head_dim ** 2)

    def decode_bytes(self, context: int, dtype) -> int:
        return 2 * self.state_bytes(context, dtype)  # read and rewritten whole

    def flops_per_token(self, context: int) -> int:
        d = self.d_model
        matmuls = 4 * d * d + sum(2 * d * rank for rank in self.lora_ranks().values())
        return 2 * matmuls + 9 * self.n_heads * self.head_dim ** 2  # + the state update and read

    def __call__(self, params, x, state, ctx: Context):
        batch, t_len, _ = x.shape
        h, n = self.n_heads, self.head_dim
        x_prev, new_shift = token_shift(x, state["shift"], ctx.valid)
        mixed = x[:, :, None] + (x_prev - x)[:, :, None] * params["shift_mix"]  # [B, T, 6, D]
        x_r, x_w, x_k, x_v, x_a, x_g = (mixed[:, :, i] for i in range(len(SHIFTS)))

        def lora(name, inp, inner=lambda z: z):
            return inner(inp @ params[f"{name}_down"]) @ params[f"{name}_up"]  # [B, T, D]

        r = jnp.einsum("btd,dhn->bthn", x_r, params["w_r"])  # [B, T, H, N]
        k = jnp.einsum("btd,dhn->bthn", x_k, params["w_k"])
        v = jnp.einsum("btd,dhn->bthn", x_v, params["w_v"])
        log_w = -MAX_LOG_DECAY * jax.nn.sigmoid(
            (params["decay_bias"] + lora("decay", x_w, jnp.tanh)).astype(F32))  # [B, T, D]
        a = jax.nn.sigmoid(params["iclr_bias"] + lora("iclr", x_a))  # [B, T, D]
        g = lora("gate", x_g, jax.nn.sigmoid)  # [B, T, D]

        heads = lambda z: z.reshape(*z.shape[:-1], h, n)  # noqa: E731  [..., D] -> [..., H, N]
        kk = (k * heads(params["key_norm_scale"])).astype(F32)
        kk = kk / jnp.maximum(jnp.linalg.norm(kk, axis=-1, keepdims=True), 1e-12)  # as F.normalize
        k = k * (1 + (heads(a) - 1) * heads(params["key_iclr_mix"]))
        if self.value_lora is None:
            ctx = dataclasses.replace(ctx, first_values=v)
        else:
            v = v + (ctx.first_values - v) * heads(jax.nn.sigmoid(params["value_bias"] + lora("value", x_v)))

        keep = ctx.valid[:, :, None, None]  # an invalid token is the identity step
        r32, k32, v32 = (z.astype(F32) for z in (r, k, v))
        inputs = [jnp.where(keep, z, 0.0) for z in (r32, heads(log_w), k32, v32, -kk, kk * heads(a).astype(F32))]
        if t_len == 1:
            o, wkv = wkv_step(*(z[:, 0] for z in inputs), state["wkv"])
            o = o[:, None]  # [B, 1, H, N]
        else:
            o, wkv = wkv_chunked(*inputs, state["wkv"], self.chunk_size)

        mean = jnp.mean(o, axis=-1, keepdims=True)  # group norm: one group per head
        var = jnp.mean(jnp.square(o - mean), axis=-1, keepdims=True)
        o = (o - mean) * jax.lax.rsqrt(var + self.group_norm_eps)
        o = o * heads(params["out_norm"]["weight"]) + heads(params["out_norm"]["bias"])
        o = o + jnp.sum(r32 * k32 * params["bonus"], axis=-1, keepdims=True) * v32  # [B, T, H, N]
        o = o.astype(x.dtype) * heads(g)
        y = jnp.einsum("bthn,hnd->btd", o, params["w_o"])  # [B, T, D]
        new_state = {"shift": new_shift, "wkv": wkv}
        return (y, new_state, ctx) if self.context_provides else (y, new_state)
