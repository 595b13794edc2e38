"""The dense gated feed-forward (SwiGLU / GeGLU): down(act(x @ gate) * (x @ up))."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from chimera.architectures.config import require_positive
from chimera.runtime.linear import linear
from chimera.runtime.protocol import Context, register_ffn
from chimera.sharding.residual import finished, row_parallel_output

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


@register_ffn("mlp")
@dataclasses.dataclass(frozen=True)
class GatedMLP:
    d_model: int
    d_ff: int
    activation: Literal["silu", "gelu", "gelu_tanh"] = "silu"
    bias: bool = False

    def __post_init__(self):
        require_positive(self, "d_ff")

    def init(self, key):
        k_gate, k_up, k_down = jax.random.split(key, 3)
        d, f = self.d_model, self.d_ff
        params = {
            "w_gate": jax.random.normal(k_gate, (d, f)) * d ** -0.5,
            "w_up": jax.random.normal(k_up, (d, f)) * d ** -0.5,
            "w_down": jax.random.normal(k_down, (f, d)) * f ** -0.5,
        }
        if self.bias:
            params |= {"b_gate": jnp.zeros((f,)), "b_up": jnp.zeros((f,)), "b_down": jnp.zeros((d,))}
        return params

    def param_axes(self):
        axes = {"w_gate": ("embed", "mlp"), "w_up": ("embed", "mlp"), "w_down": ("mlp", "embed")}
        if self.bias:
            axes |= {"b_gate": ("mlp",), "b_up": ("mlp",), "b_down": ("embed",)}
        return axes

    def flops_per_token(self) -> int:
        return 2 * 3 * self.d_model * self.d_ff

    def __call__(self, params, x, ctx: Context):
        gate = linear("btd,df->btf", x, params["w_gate"])  # [B, T, F]
        up = linear("btd,df->btf", x, params["w_up"])  # [B, T, F]
        if self.bias:
            gate, up = gate + params["b_gate"], up + params["b_up"]
        hidden = ACTIVATIONS[self.activation](gate) * up  # [B, T, F], F over `tensor`
        y = row_parallel_output("btf,fd->btd", hidden, params["w_down"], split="f")  # [B, T, D], maybe Unreduced
        return finished(y) + params["b_down"] if self.bias else y
