"""Routers: each token's top-k experts and the weights its expert outputs are combined with.

Routing runs in float32 whatever the model's dtype: a bfloat16 rounding of the logits would
flip near-tied choices. Three rules, as the published models compute them:

- `softmax_topk` (Mixtral, Qwen2/3-MoE): softmax over all experts, keep the k largest
  probabilities; with `renormalize` they are divided by their sum (Mixtral always; Qwen's
  `norm_topk_prob`).
- `topk_softmax` (GPT-OSS, whose router has a bias): the k largest logits, softmax over those k.
- `sigmoid_group` (DeepSeek-V3): sigmoid scores. A selection bias (`e_score_correction_bias`)
  is added to the scores to choose experts but not to weight them. The experts form `n_group`
  equal groups; a group scores the sum of its two best biased scores and only the
  `topk_group` best groups are eligible. The chosen experts' unbiased scores are the weights,
  divided by their sum (+1e-20, as DeepSeek) with `renormalize`.

Every rule then multiplies the weights by `scaling` (DeepSeek's routed_scaling_factor; 1 for
the others). Ties go to the lower index, for experts and for groups (jax.lax.top_k's order);
the k choices come out best first, which is the priority order of capacity dispatch.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

RouterKind = Literal["softmax_topk", "topk_softmax", "sigmoid_group"]


def softmax_topk(logits, top_k: int, renormalize: bool):
    """logits [N, E] -> (ids [N, k] int32, weights [N, k] float32)."""
    probs = jax.nn.softmax(logits, axis=-1)  # [N, E]
    weights, ids = jax.lax.top_k(probs, top_k)  # [N, k]
    if renormalize:
        weights = weights / weights.sum(-1, keepdims=True)
    return ids, weights


def topk_softmax(logits, top_k: int):
    """logits [N, E] -> (ids [N, k] int32, weights [N, k] float32)."""
    top, ids = jax.lax.top_k(logits, top_k)  # [N, k]
    return ids, jax.nn.softmax(top, axis=-1)


def sigmoid_group(logits, selection_bias, top_k: int, n_group: int, topk_group: int, renormalize: bool):
    """logits [N, E], selection_bias [E] -> (ids [N, k] int32, weights [N, k] float32)."""
    n_tokens, n_experts = logits.shape
    scores = jax.nn.sigmoid(logits)  # [N, E]
    choice = scores + selection_bias  # [N, E]
    if n_group > 1:  # one group is always eligible: nothing to mask
        grouped = choice.reshape(n_tokens, n_group, n_experts // n_group)  # [N, G, E/G]
        group_scores = jax.lax.top_k(grouped, 2)[0].sum(-1)  # [N, G]
        _, best_groups = jax.lax.top_k(group_scores, topk_group)  # [N, topk_group]
        eligible = jax.nn.one_hot(best_groups, n_group, dtype=jnp.bool_).any(1)  # [N, G]
        eligible = jnp.repeat(eligible, n_experts // n_group, axis=1)  # [N, E]
        choice = jnp.where(eligible, choice, -jnp.inf)
    _, ids = jax.lax.top_k(choice, top_k)  # [N, k]
    weights = jnp.take_along_axis(scores, ids, axis=-1)  # [N, k]
    if renormalize:
        weights = weights / (weights.sum(-1, keepdims=True) + 1e-20)
    return ids, weights


@dataclasses.dataclass(frozen=True)
class Router:
    """One of the rules above with its options; `n_group`/`topk_group` only for sigmoid_group."""
    kind: RouterKind
    top_k: int
    renormalize: bool = True
    n_group: int = 1
    topk_group: int = 1
    scaling: float = 1.0

    def __call__(self, logits, selection_bias=None):
        """logits [N, E] (cast to float32); selection_bias [E] for sigmoid_group ->
        (ids [N, k] int32, weights [N, k] float32), best first."""
        logits = logits.astype(jnp.float32)
        if self.kind == "softmax_topk":
            ids, weights = softmax_topk(logits, self.top_k, self.renormalize)
        elif self.kind == "topk_softmax":
            ids, weights = topk_softmax(logits, self.top_k)
        else:
            ids, weights = sigmoid_group(logits, selection_bias.astype(jnp.float32), self.top_k, self.n_group,
                                         self.topk_group, self.renormalize)
        return ids.astype(jnp.int32), weights * jnp.float32(self.scaling)
