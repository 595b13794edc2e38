"""Routers vs a float64 numpy re-statement of each rule, and vs transformers' own routers."""

import jax.numpy as jnp
import numpy as np
import pytest

from chimera.moe.router import Router

N, E = 64, 16


def logits(seed=0, n=N, e=E):
    return np.random.default_rng(seed).normal(size=(n, e)).astype(np.float32)


def top(values, k):
    """Indices of the k largest of each row, best first, ties to the lower index."""
    return np.argsort(-values, axis=-1, kind="stable")[:, :k]


def softmax(z):
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def reference(kind, z, k, renormalize=True, bias=None, n_group=1, topk_group=1, scaling=1.0):
    """The three rules in float64, one token at a time for the groups."""
    z = np.asarray(z, np.float64)
    if kind == "softmax_topk":
        probs = softmax(z)
        ids = top(probs, k)
        weights = np.take_along_axis(probs, ids, -1)
        if renormalize:
            weights /= weights.sum(-1, keepdims=True)
    elif kind == "topk_softmax":
        ids = top(z, k)
        weights = softmax(np.take_along_axis(z, ids, -1))
    else:
        scores = 1 / (1 + np.exp(-z))
        choice = scores + bias
        per_group = z.shape[1] // n_group
        for row in choice:
            group_scores = [np.sort(row[g * per_group:(g + 1) * per_group])[-2:].sum() for g in range(n_group)]
            best = top(np.array([group_scores]), topk_group)[0]
            for g in set(range(n_group)) - set(best):
                row[g * per_group:(g + 1) * per_group] = -np.inf
        ids = top(choice, k)
        weights = np.take_along_axis(scores, ids, -1)
        if renormalize:
            weights /= weights.sum(-1, keepdims=True) + 1e-20
    return ids, weights * scaling


def check(router, z, bias=None, **options):
    ids, weights = router(jnp.asarray(z), None if bias is None else jnp.asarray(bias, jnp.float32))
    want_ids, want_weights = reference(router.kind, z, router.top_k, bias=bias, **options)
    assert ids.dtype == jnp.int32 and weights.dtype == jnp.float32
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(weights, want_weights, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("renormalize", [True, False])
def test_softmax_topk(renormalize):
    check(Router("softmax_topk", 2, renormalize), logits(0), renormalize=renormalize)


def test_topk_softmax():
    check(Router("topk_softmax", 4), logits(1))


@pytest.mark.parametrize("n_group,topk_group", [(1, 1), (4, 2), (8, 3)])
def test_sigmoid_group(n_group, topk_group):
    bias = np.random.default_rng(5).normal(size=E).astype(np.float32) * 0.5
    router = Router("sigmoid_group", 4, True, n_group, topk_group, scaling=2.5)
    check(router, logits(2), bias, n_group=n_group, topk_group=topk_group, scaling=2.5)


def test_selection_bias_chooses_but_does_not_weigh():
    """A large bias on expert 3 puts it among every token's choices, with its unbiased weight."""
    z = logits(3)
    bias = np.zeros(E, np.float32)
    bias[3] = 10.0
    ids, weights = Router("sigmoid_group", 2, renormalize=False)(jnp.asarray(z), jnp.asarray(bias))
    assert (np.asarray(ids) == 3).any(-1).all()
    np.testing.assert_allclose(weights, 1 / (1 + np.exp(-np.take_along_axis(z, np.asarray(ids), -1))), rtol=1e-6)


def test_ties_go_to_the_lower_index():
    z = np.zeros((2, 8), np.float32)  # row 0: all tied (and so are its two groups)
    z[1, [2, 5, 6]] = 1.0  # a three-way tie for two places
    ids, _ = Router("softmax_topk", 2)(jnp.asarray(z))
    np.testing.assert_array_equal(ids, [[0, 1], [2, 5]])
    ids, _ = Router("sigmoid_group", 2, n_group=2, topk_group=1)(jnp.asarray(z), jnp.zeros(8))
    np.testing.assert_array_equal(ids[0], [0, 1])


# --- transformers' routers, from their modeling files ---

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def hf_route(router, z):
    """Feed logits through an HF router module by making its weight the identity."""
    with torch.no_grad():
        router.weight.copy_(torch.eye(z.shape[1]))
        _, weights, ids = router(torch.as_tensor(z))
    return by_expert(ids.numpy(), weights.numpy())


def by_expert(ids, weights):
    """(ids, weights) [N, k] with each row's choices in expert order (DeepSeek's come unsorted)."""
    order = np.argsort(ids, axis=-1)
    return np.take_along_axis(ids, order, -1), np.take_along_axis(weights, order, -1)


@pytest.mark.parametrize("model", ["mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3"])
def test_matches_transformers_router(model):
    z = logits(4)
    common = dict(hidden_size=E, num_experts_per_tok=4)
    if model == "mixtral":
        from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter as cls
        hf = cls(transformers.MixtralConfig(num_local_experts=E, **common))
        ours, bias = Router("softmax_topk", 4, renormalize=True), None
    elif model in ("qwen2_moe", "qwen3_moe"):
        from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeTopKRouter
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter
        config = (transformers.Qwen2MoeConfig if model == "qwen2_moe" else transformers.Qwen3MoeConfig)(
            num_experts=E, norm_topk_prob=model == "qwen3_moe", **common)
        hf = (Qwen2MoeTopKRouter if model == "qwen2_moe" else Qwen3MoeTopKRouter)(config)
        ours, bias = Router("softmax_topk", 4, renormalize=model == "qwen3_moe"), None
    else:
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter
        hf = DeepseekV3TopkRouter(transformers.DeepseekV3Config(
            n_routed_experts=E, n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True, **common))
        bias = np.random.default_rng(6).normal(size=E).astype(np.float32) * 0.3
        hf.e_score_correction_bias.copy_(torch.as_tensor(bias))
        ours = Router("sigmoid_group", 4, True, n_group=4, topk_group=2, scaling=2.5)
    want_ids, want_weights = hf_route(hf, z)
    ids, weights = by_expert(*map(np.asarray, ours(jnp.asarray(z), None if bias is None else jnp.asarray(bias))))
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(weights, want_weights, rtol=1e-6, atol=1e-7)
