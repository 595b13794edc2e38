"""The Mixture-of-Experts feed-forward (`kind: moe`): a router picks top_k of n_experts gated
MLPs per token, their outputs are summed with the router weights, plus optional always-on
shared experts (DeepSeek; Qwen2-MoE's behind a sigmoid gate).

Dropless by default; `capacity_factor` bounds each expert's assignments (dispatch.py states
the rule). Traced under a mesh whose `expert` axis has more than one device, the experts run
expert-parallel (expert_parallel.py); otherwise on the local device.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from chimera.architectures.config import ConfigError, require_positive
from chimera.moe import dispatch, expert_parallel
from chimera.moe.dispatch import GroupedMatmul
from chimera.moe.mlp import GatedMLP
from chimera.moe.router import Router, RouterKind
from chimera.runtime.protocol import Context, register_ffn
from chimera.sharding.residual import finished

EXPERT_WEIGHTS = ("w_gate", "w_up", "w_down")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RouteStats:
    """Where a batch's valid tokens went. counts [E] int32: assignments the router made to each
    expert; kept [E] int32: those computed (counts unless a capacity drops some); dropped []
    int32: assignments dropped in all. Padding is in none of them."""
    counts: jax.Array
    kept: jax.Array
    dropped: jax.Array


@register_ffn("moe")
@dataclasses.dataclass(frozen=True)
class MoE:
    """Routed experts (each a gated MLP of width d_ff) plus shared ones.

    router: `softmax_topk` | `topk_softmax` | `sigmoid_group` (router.py); `renormalize`
    divides the k weights by their sum (softmax_topk, sigmoid_group); `router_bias` adds a
    learned bias to the logits (GPT-OSS); `n_group`/`topk_group` limit sigmoid_group's choice
    to the best groups, which also carries a selection bias param (DeepSeek-V3's
    e_score_correction_bias); `routed_scaling_factor` multiplies the weights.
    n_shared_experts: always-on experts, run as one gated MLP of width `shared_d_ff`
    (default n_shared_experts * d_ff); `shared_expert_gate` scales it by sigmoid(x . g).
    capacity_factor: None is dropless. grouped_matmul: `auto` | `ragged_dot` | `tiled` | `gather`
    (dispatch.py: auto gathers the routed experts' weights while tokens x top_k < n_experts).
    """
    d_model: int
    n_experts: int
    top_k: int
    d_ff: int
    activation: Literal["silu", "gelu", "gelu_tanh"] = "silu"
    router: RouterKind = "softmax_topk"
    renormalize: bool = True
    router_bias: bool = False
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    n_shared_experts: int = 0
    shared_d_ff: int | None = None
    shared_expert_gate: bool = False
    capacity_factor: float | None = None
    grouped_matmul: GroupedMatmul = "auto"

    def __post_init__(self):
        require_positive(self, "n_experts", "top_k", "d_ff", "n_group", "topk_group", "routed_scaling_factor",
                         "shared_d_ff", "capacity_factor")
        if self.top_k > self.n_experts:
            raise ConfigError("top_k", f"{self.top_k} is more than n_experts {self.n_experts}")
        if self.router != "sigmoid_group":
            for name in ("n_group", "topk_group"):
                if getattr(self, name) != 1:
                    raise ConfigError(name, f"only the sigmoid_group router chooses by groups, not {self.router}")
        if self.n_experts % self.n_group:
            raise ConfigError("n_group", f"{self.n_group} does not divide n_experts {self.n_experts}")
        per_group = self.n_experts // self.n_group
        if self.n_group > 1 and per_group < 2:
            raise ConfigError("n_group", f"{self.n_group} groups leave {per_group} expert per group; a group "
                                         f"scores its two best experts, so each needs at least 2")
        if self.topk_group > self.n_group:
            raise ConfigError("topk_group", f"{self.topk_group} is more than n_group {self.n_group}")
        if self.top_k > self.topk_group * per_group:
            raise ConfigError("top_k", f"{self.top_k} is more than the {self.topk_group * per_group} experts of "
                                       f"topk_group {self.topk_group} groups of {per_group}")
        if self.n_shared_experts < 0:
            raise ConfigError("n_shared_experts", f"must be >= 0, got {self.n_shared_experts}")
        if not self.n_shared_experts:
            for name in ("shared_d_ff", "shared_expert_gate"):
                if getattr(self, name):
                    raise ConfigError(name, "is set but n_shared_experts is 0")
        elif self.shared_d_ff is None:
            object.__setattr__(self, "shared_d_ff", self.n_shared_experts * self.d_ff)

    @property
    def routing(self) -> Router:
        return Router(self.router, self.top_k, self.renormalize, self.n_group, self.topk_group,
                      self.routed_scaling_factor)

    @property
    def shared_mlp(self) -> GatedMLP:
        return GatedMLP(self.d_model, self.shared_d_ff, self.activation)

    # --- parameters ---

    def init(self, key):
        k_router, k_gate, k_up, k_down, k_shared, k_shared_gate = jax.random.split(key, 6)
        e, d, f = self.n_experts, self.d_model, self.d_ff
        params = {
            "router": jax.random.normal(k_router, (d, e)) * d ** -0.5,
            "w_gate": jax.random.normal(k_gate, (e, d, f)) * d ** -0.5,
            "w_up": jax.random.normal(k_up, (e, d, f)) * d ** -0.5,
            "w_down": jax.random.normal(k_down, (e, f, d)) * f ** -0.5,
        }
        if self.router_bias:
            params["router_bias"] = jnp.zeros((e,))
        if self.router == "sigmoid_group":
            params["selection_bias"] = jnp.zeros((e,))
        if self.n_shared_experts:
            params["shared"] = self.shared_mlp.init(k_shared)
        if self.shared_expert_gate:
            params["shared_gate"] = jax.random.normal(k_shared_gate, (d,)) * d ** -0.5
        return params

    def param_axes(self):
        # The router stays whole on every device: each routes the tokens it holds.
        axes = {"router": ("embed", None), "w_gate": ("experts", "embed", "mlp"),
                "w_up": ("experts", "embed", "mlp"), "w_down": ("experts", "mlp", "embed")}
        if self.router_bias:
            axes["router_bias"] = (None,)
        if self.router == "sigmoid_group":
            axes["selection_bias"] = (None,)
        if self.n_shared_experts:
            axes["shared"] = self.shared_mlp.param_axes()
        if self.shared_expert_gate:
            axes["shared_gate"] = ("embed",)
        return axes

    def active_param_count(self) -> int:
        """Parameters one token touches: the router, its top_k experts and the shared ones."""
        d, e = self.d_model, self.n_experts
        router = d * e + e * int(self.router_bias) + e * int(self.router == "sigmoid_group")
        shared = 3 * d * self.shared_d_ff + d * int(self.shared_expert_gate) if self.n_shared_experts else 0
        return router + self.top_k * 3 * d * self.d_ff + shared

    def touched_param_count(self, n_tokens: int) -> float:
        """Parameters a decode step over n_tokens tokens reads: every non-expert weight, and the
        experts expected to receive a token if routing is uniform, E (1 - (1 - k/E)^n) - exact
        for one token (its top_k), an estimate beyond."""
        one_expert = 3 * self.d_model * self.d_ff
        touched = self.n_experts * (1 - (1 - self.top_k / self.n_experts) ** n_tokens)
        return self.active_param_count() - self.top_k * one_expert + touched * one_expert

    def flops_per_token(self) -> int:
        """Router logits, the top_k routed experts and the shared ones (2 FLOPs per multiply-add)."""
        d = self.d_model
        shared = 2 * 3 * d * self.shared_d_ff + 2 * d * int(self.shared_expert_gate) if self.n_shared_experts else 0
        return 2 * d * self.n_experts + self.top_k * 2 * 3 * d * self.d_ff + shared

    # --- routing ---

    def assign(self, params, tokens, valid):
        """tokens [N, D], valid [N] -> (ids, weights [N, k] float32, routed [N, k] bool: the
        assignments to compute — valid tokens', less what a capacity drops)."""
        logits = jnp.einsum("nd,de->ne", tokens.astype(jnp.float32), params["router"].astype(jnp.float32))  # [N, E]
        if self.router_bias:
            logits = logits + params["router_bias"].astype(jnp.float32)
        ids, weights = self.routing(logits, params.get("selection_bias"))  # [N, k]
        if self.capacity_factor is None:
            routed = jnp.broadcast_to(valid[:, None], ids.shape)  # [N, k]
        else:
            routed = dispatch.capacity_keep(ids, valid, self.n_experts, self.capacity_factor)
        return ids, weights, routed

    def route_stats(self, params, x, valid) -> RouteStats:
        """x [B, T, D] (the block's input), valid [B, T] -> where its valid tokens go."""
        tokens, valid = x.reshape(-1, x.shape[-1]), valid.reshape(-1)  # [N, D], [N]
        ids, _, routed = self.assign(params, tokens, valid)
        counts = dispatch.expert_counts(ids, jnp.broadcast_to(valid[:, None], ids.shape), self.n_experts)
        kept = dispatch.expert_counts(ids, routed, self.n_experts)
        return RouteStats(counts=counts, kept=kept, dropped=(counts - kept).sum())

    # --- the computation ---

    def __call__(self, params, x, ctx: Context):
        batch, length, d_model = x.shape
        tokens = x.reshape(batch * length, d_model)  # [N, D]
        ids, weights, routed = self.assign(params, tokens, ctx.valid.reshape(-1))
        experts = {name: params[name] for name in EXPERT_WEIGHTS}
        mesh = expert_parallel.expert_mesh()
        if mesh is None:
            y = dispatch.dropless(tokens, ids, weights, routed, experts, self.activation, self.grouped_matmul)
        else:
            rows_per_expert = None if self.capacity_factor is None else dispatch.max_capacity(
                batch * length, self.top_k, self.n_experts, self.capacity_factor)
            y = expert_parallel.dropless(tokens, ids, weights, routed, experts, self.activation,
                                         self.grouped_matmul, mesh, rows_per_expert)
        y = y.reshape(batch, length, d_model)  # [B, T, D]
        if self.n_shared_experts:
            shared = finished(self.shared_mlp(params["shared"], x, ctx))  # [B, T, D]
            if self.shared_expert_gate:
                shared = shared * jax.nn.sigmoid(x @ params["shared_gate"])[..., None]
            y = y + shared
        return y
