"""RWKV-7's channel-mix: a squared-ReLU MLP on a token-shifted input.

    x_k = x + (x_prev - x) * shift_mix
    out = relu(x_k @ w_key)^2 @ w_value

It is a feed-forward with state: the previous token's input [B, D] (float32), so it defines
`init_state` and is called as `(params, x, state, ctx) -> (y, state)`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from chimera.architectures.config import require_positive
from chimera.runtime.protocol import Context, register_ffn
from chimera.ssm.rwkv7 import token_shift


@register_ffn("rwkv7_channel_mix")
@dataclasses.dataclass(frozen=True)
class RWKV7ChannelMix:
    d_model: int
    d_ff: int

    def __post_init__(self):
        require_positive(self, "d_ff")

    def init(self, key):
        k_mix, k_key, k_value = jax.random.split(key, 3)
        d, f = self.d_model, self.d_ff
        return {"shift_mix": jax.random.uniform(k_mix, (d,)),
                "w_key": jax.random.normal(k_key, (d, f)) * d ** -0.5,
                "w_value": jax.random.normal(k_value, (f, d)) * f ** -0.5}

    def param_axes(self):
        return {"shift_mix": ("embed",), "w_key": ("embed", "mlp"), "w_value": ("mlp", "embed")}

    def init_state(self, batch_size, max_len, dtype):
        return {"shift": jnp.zeros((batch_size, self.d_model), jnp.float32)}

    def state_axes(self):
        return {"shift": ("batch", "embed")}

    def state_bytes(self, context: int, dtype) -> int:
        return 4 * self.d_model

    def flops_per_token(self) -> int:
        return 2 * 2 * self.d_model * self.d_ff

    def __call__(self, params, x, state, ctx: Context):
        x_prev, new_shift = token_shift(x, state["shift"], ctx.valid)
        x_k = x + (x_prev - x) * params["shift_mix"]  # [B, T, D]
        hidden = jnp.square(jax.nn.relu(x_k @ params["w_key"]))  # [B, T, F]
        return hidden @ params["w_value"], {"shift": new_shift}
