"""The `moe` feed-forward: vs transformers' own MoE blocks (Mixtral, Qwen2/3-MoE, DeepSeek-V3),
config validation, route statistics, costs, and padding invariance inside a model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera
import mixer_harness as harness
from chimera.moe import dispatch
from chimera.moe.moe import MoE

D = 16


def random_params(block, seed=3):
    """Normal params of the block's shapes, matrices scaled by their fan-in, vectors (biases,
    gates) by 0.3; no PRNG compiles."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * (s.shape[-2] ** -0.5 if s.ndim > 1 else 0.3),
                                              jnp.float32), jax.eval_shape(block.init, jax.random.key(0)))


def context(valid):
    valid = jnp.asarray(valid)
    return chimera.Context(positions=jnp.zeros(valid.shape, jnp.int32), valid=valid)


def inputs(batch=2, length=12, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, length, D)).astype(np.float32)


# --- against transformers' blocks ---

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def from_hf_block(hf, block: MoE):
    """Our params from an HF sparse-MoE module's tensors (experts fused as gate_up [E, 2F, D])."""
    sd = {name: t.detach().numpy() for name, t in hf.state_dict().items()}
    f = block.d_ff
    params = {"router": sd["gate.weight"].T, "w_gate": sd["experts.gate_up_proj"][:, :f].transpose(0, 2, 1),
              "w_up": sd["experts.gate_up_proj"][:, f:].transpose(0, 2, 1),
              "w_down": sd["experts.down_proj"].transpose(0, 2, 1)}
    if block.router == "sigmoid_group":
        params["selection_bias"] = sd["gate.e_score_correction_bias"]
    shared = next((s for s in ("shared_expert", "shared_experts") if f"{s}.gate_proj.weight" in sd), None)
    if shared:
        params["shared"] = {f"w_{ours}": sd[f"{shared}.{ours}_proj.weight"].T for ours in ("gate", "up", "down")}
    if block.shared_expert_gate:
        params["shared_gate"] = sd["shared_expert_gate.weight"][0]
    return jax.tree.map(jnp.asarray, params)


def hf_block(model):
    """(transformers module, the equivalent MoE block) with random weights."""
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock
    common = dict(hidden_size=D, num_experts_per_tok=2, hidden_act="silu")
    if model == "mixtral":
        hf = MixtralSparseMoeBlock(transformers.MixtralConfig(num_local_experts=8, intermediate_size=24, **common))
        ours = MoE(D, n_experts=8, top_k=2, d_ff=24)
    elif model == "qwen2_moe":
        hf = Qwen2MoeSparseMoeBlock(transformers.Qwen2MoeConfig(
            num_experts=8, moe_intermediate_size=12, shared_expert_intermediate_size=20, norm_topk_prob=False,
            **common))
        ours = MoE(D, n_experts=8, top_k=2, d_ff=12, renormalize=False, n_shared_experts=1, shared_d_ff=20,
                   shared_expert_gate=True)
    elif model == "qwen3_moe":
        hf = Qwen3MoeSparseMoeBlock(transformers.Qwen3MoeConfig(
            num_experts=8, moe_intermediate_size=12, norm_topk_prob=True, **common))
        ours = MoE(D, n_experts=8, top_k=2, d_ff=12)
    else:
        hf = DeepseekV3MoE(transformers.DeepseekV3Config(
            n_routed_experts=16, moe_intermediate_size=8, n_shared_experts=2, n_group=4, topk_group=2,
            routed_scaling_factor=2.5, norm_topk_prob=True, **{**common, "num_experts_per_tok": 4}))
        ours = MoE(D, n_experts=16, top_k=4, d_ff=8, router="sigmoid_group", n_group=4, topk_group=2,
                   routed_scaling_factor=2.5, n_shared_experts=2)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.normal_(0.0, p.shape[-1] ** -0.5)
        if hasattr(hf.gate, "e_score_correction_bias"):
            hf.gate.e_score_correction_bias.normal_(0.0, 0.3)
    return hf.eval(), ours


@pytest.mark.parametrize("model", ["mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3"])
def test_matches_transformers_block(model):
    hf, block = hf_block(model)
    x = inputs(2, 12)
    with torch.no_grad():
        want = hf(torch.as_tensor(x))
    want = (want[0] if isinstance(want, tuple) else want).numpy()
    y = jax.jit(block.__call__)(from_hf_block(hf, block), jnp.asarray(x), context(np.ones((2, 12), bool)))
    assert y.shape == x.shape and y.dtype == jnp.float32
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


# --- config ---

def config(**moe):
    return {"name": "moe-test", "vocab_size": 64, "d_model": 32, "n_layers": 2,
            "layers": [{"mixer": "attn", "ffn": "moe"}],
            "mixers": {"attn": {"kind": "attention", "n_heads": 4, "n_kv_heads": 2, "head_dim": 8}},
            "ffns": {"moe": {"kind": "moe", "n_experts": 8, "top_k": 2, "d_ff": 16, **moe}}}


@pytest.mark.parametrize("field,value,message", [
    ("top_k", 9, "more than n_experts"),
    ("top_k", 0, "positive"),
    ("n_experts", 0, "positive"),
    ("router", "softmax", "must be one of"),
    ("n_group", 2, "only the sigmoid_group router"),
    ("capacity_factor", 0.0, "positive"),
    ("capacity_factor", -1.0, "positive"),
    ("grouped_matmul", "dense", "must be one of .*'gather'"),
    ("shared_d_ff", 32, "n_shared_experts is 0"),
    ("shared_expert_gate", True, "n_shared_experts is 0"),
    ("n_shared_experts", -1, ">= 0"),
])
def test_bad_config_names_the_field(field, value, message):
    with pytest.raises(chimera.ConfigError, match=message) as e:
        chimera.ModelConfig.from_dict(config(**{field: value}))
    assert str(e.value).startswith(f"ffns.moe.{field}:"), str(e.value)


@pytest.mark.parametrize("fields,field,message", [
    ({"n_group": 3}, "n_group", "does not divide n_experts"),
    ({"n_group": 8}, "n_group", "at least 2"),
    ({"n_group": 4, "topk_group": 5}, "topk_group", "more than n_group"),
    ({"n_group": 4, "topk_group": 1, "top_k": 3}, "top_k", "more than the 2 experts"),
])
def test_bad_group_config_names_the_field(fields, field, message):
    with pytest.raises(chimera.ConfigError, match=message) as e:
        chimera.ModelConfig.from_dict(config(router="sigmoid_group", **fields))
    assert str(e.value).startswith(f"ffns.moe.{field}:"), str(e.value)


# --- capacity, statistics, costs, axes ---

CAPACITY = MoE(D, n_experts=8, top_k=2, d_ff=12, capacity_factor=0.5)
capacity_call, capacity_assign = jax.jit(CAPACITY.__call__), jax.jit(CAPACITY.assign)


@pytest.fixture(scope="module")
def capacity_params():
    return random_params(CAPACITY)


def test_route_stats_count_valid_tokens_and_drops(capacity_params):
    x = inputs(2, 12)
    valid = np.arange(12)[None, :] < np.array([[12], [5]])
    stats = jax.jit(CAPACITY.route_stats)(capacity_params, jnp.asarray(x), jnp.asarray(valid))
    ids, _, keep = capacity_assign(capacity_params, jnp.asarray(x[valid]), jnp.ones(17, bool))  # the valid tokens alone
    np.testing.assert_array_equal(stats.counts, np.bincount(np.asarray(ids).ravel(), minlength=8))
    np.testing.assert_array_equal(stats.kept, np.bincount(np.asarray(ids)[np.asarray(keep)], minlength=8))
    assert stats.counts.sum() == 2 * 17
    assert stats.kept.max() <= int(np.ceil(0.5 * 17 * 2 / 8)) == 3
    assert int(stats.dropped) == 2 * 17 - int(stats.kept.sum()) > 0


def test_capacity_padding_takes_no_capacity(capacity_params):
    """A row padded with garbage gives, at its valid tokens, what it gives unpadded."""
    x = inputs(1, 12, seed=3)
    valid = np.arange(12)[None, :] < 9
    padded = capacity_call(capacity_params, jnp.asarray(x), context(valid))
    alone = capacity_call(capacity_params, jnp.asarray(x[:, :9]), context(np.ones((1, 9), bool)))
    np.testing.assert_allclose(padded[:, :9], alone, rtol=1e-6, atol=1e-6)
    _, _, keep = capacity_assign(capacity_params, jnp.asarray(x[0, :9]), jnp.ones(9, bool))
    assert not np.asarray(keep).all()  # the capacity binds


def test_capacity_output_is_dropless_without_the_dropped(capacity_params):
    x = jnp.asarray(inputs(1, 12, seed=5))
    ids, weights, keep = capacity_assign(capacity_params, x.reshape(12, D), jnp.ones(12, bool))
    experts = {name: capacity_params[name] for name in ("w_gate", "w_up", "w_down")}
    want = jax.jit(dispatch.dropless, static_argnums=5)(x.reshape(12, D), ids, jnp.where(keep, weights, 0),
                                                        jnp.ones_like(keep), experts, "silu")
    np.testing.assert_allclose(capacity_call(capacity_params, x, context(np.ones((1, 12), bool)))[0], want,
                               rtol=1e-6, atol=1e-6)
    assert not np.asarray(keep).all()


def test_capacity_gather_keeps_the_drops(capacity_params):
    """The capacity drops (and padding) are settled before the grouped matmul: with a capacity
    that binds, gather gives what ragged_dot gives."""
    x = jnp.asarray(inputs(1, 12, seed=3))
    ctx = context(np.arange(12)[None, :] < 9)
    assert dispatch.resolve(CAPACITY.grouped_matmul, 12 * 2, 8) == "ragged_dot"  # capacity_call's matmul
    gather = jax.jit(dataclasses.replace(CAPACITY, grouped_matmul="gather").__call__)
    np.testing.assert_allclose(gather(capacity_params, x, ctx), capacity_call(capacity_params, x, ctx),
                               rtol=1e-6, atol=1e-6)
    _, _, keep = capacity_assign(capacity_params, x[0, :9], jnp.ones(9, bool))
    assert not np.asarray(keep).all()  # the capacity binds


@pytest.mark.parametrize("fields", [
    {},
    {"router": "topk_softmax", "router_bias": True},
    {"router": "sigmoid_group", "n_group": 4, "topk_group": 2, "n_shared_experts": 2, "shared_expert_gate": True},
])
def test_costs_and_axes(fields):
    block = MoE(D, n_experts=8, top_k=2, d_ff=12, **fields)
    params = jax.eval_shape(block.init, jax.random.key(0))
    size = lambda tree: sum(leaf.size for leaf in jax.tree.leaves(tree))  # noqa: E731
    routed = sum(params[name].size for name in ("w_gate", "w_up", "w_down"))
    always = size(params) - routed  # router (+ biases), shared experts and gate
    assert block.active_param_count() == always + routed * 2 // 8
    vectors = sum(params[name].size for name in ("router_bias", "selection_bias", "shared_gate") if name in params)
    gate_flops = 2 * params["shared_gate"].size if "shared_gate" in params else 0
    assert block.flops_per_token() == 2 * (block.active_param_count() - vectors) + gate_flops
    axes = block.param_axes()
    is_axes = lambda a: isinstance(a, tuple)  # noqa: E731
    assert jax.tree.structure(axes, is_leaf=is_axes) == jax.tree.structure(params)
    for names, leaf in zip(jax.tree.leaves(axes, is_leaf=is_axes), jax.tree.leaves(params)):
        assert len(names) == leaf.ndim
    assert axes["w_gate"][0] == axes["w_down"][0] == "experts"


def test_bfloat16_keeps_dtype_and_routes_in_float32():
    block = MoE(D, n_experts=8, top_k=2, d_ff=12)
    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), random_params(block))
    x = jnp.asarray(inputs(1, 6), jnp.bfloat16)
    call = jax.jit(block.__call__)
    y = call(params, x, context(np.ones((1, 6), bool)))
    _, weights, _ = jax.jit(block.assign)(params, x.reshape(6, D), jnp.ones(6, bool))
    assert y.dtype == jnp.bfloat16 and weights.dtype == jnp.float32
    want = call(jax.tree.map(lambda a: a.astype(jnp.float32), params), x.astype(jnp.float32),
                 context(np.ones((1, 6), bool)))
    np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=0.05, atol=0.05)


# --- inside a model: the DESIGN.md invariants ---

@pytest.fixture(scope="module")
def moe_model():
    """The tiled matmul, DeepSeek's router and a shared expert (mixtral-tiny, a bundled preset,
    has the ragged_dot and softmax_topk defaults checked by tests/architectures/test_presets.py)."""
    model = chimera.build(chimera.ModelConfig.from_dict(config(
        grouped_matmul="tiled", router="sigmoid_group", n_group=4, topk_group=2, n_shared_experts=1)))
    params = model.init(jax.random.key(1, impl="unsafe_rbg"))  # eager, no threefry compiles
    tokens = np.random.default_rng(0).integers(0, 64, (3, 14)).astype(np.int32)
    return model, params, tokens, np.asarray(model.forward(params, tokens))


def test_ragged_batch_matches_each_row_alone(moe_model):
    model, params, tokens, want = moe_model
    harness.check_ragged_batch_matches_alone(model, params, tokens, want, np.array([14, 3, 9]), max_len=16)


def test_padding_is_inert(moe_model):
    model, params, tokens, _ = moe_model
    harness.check_padding_is_inert(model, params, tokens, np.array([14, 3, 9]), max_len=16)


def test_gather_decodes_as_ragged_dot():
    """mixtral-tiny decoding token by token with `gather` (row 1 idles for two steps: padding
    reaches the MoE) gives the logits and greedy tokens of a `ragged_dot` forward."""
    def build(grouped_matmul):
        cfg = chimera.load_config("mixtral-tiny").to_dict()
        cfg["ffns"]["moe"]["grouped_matmul"] = grouped_matmul
        return chimera.build(chimera.ModelConfig.from_dict(cfg))

    gather, ragged = build("gather"), build("ragged_dot")
    params = gather.init(jax.random.key(1, impl="unsafe_rbg"))  # eager, no threefry compiles
    prompts, n_new, starts = [[5, 17, 3, 250], [9, 42]], 4, [0, 2]
    seqs, logits = [list(p) for p in prompts], [[], []]
    state = gather.init_state(2, 16)
    for step in range(8):
        pos = [step - start for start in starts]  # the position each row feeds this step
        fed = [0 <= p < len(seq) for p, seq in zip(pos, seqs)]
        tokens = np.array([[seq[p] if f else 0] for p, seq, f in zip(pos, seqs, fed)], np.int32)  # [2, 1]
        step_logits, state = gather.extend(params, state, tokens, np.array(fed, np.int32))  # [2, V]
        for b in np.flatnonzero(fed):
            logits[b].append(np.asarray(step_logits[b]))
            if pos[b] == len(seqs[b]) - 1 and len(seqs[b]) < len(prompts[b]) + n_new:  # greedy
                seqs[b].append(int(np.argmax(step_logits[b])))
    width = max(map(len, seqs))
    want = np.asarray(ragged.forward(params, np.array([seq + [0] * (width - len(seq)) for seq in seqs])))
    for b, prompt in enumerate(prompts):  # forward is causal: the right padding changes nothing before it
        assert len(seqs[b]) == len(prompt) + n_new
        np.testing.assert_allclose(np.stack(logits[b]), want[b, :len(logits[b])], rtol=1e-5, atol=1e-5)
        assert seqs[b][len(prompt):] == list(want[b, len(prompt) - 1:len(seqs[b]) - 1].argmax(-1))


def test_touched_params_span_one_token_to_every_expert():
    """A decode step of one token reads its top_k experts (active_param_count); of many tokens,
    all of them (the block's whole parameter count); costs.decode_bytes_per_step uses this."""
    block = MoE(d_model=16, n_experts=8, top_k=2, d_ff=8, n_shared_experts=1)
    total = sum(x.size for x in jax.tree.leaves(jax.eval_shape(block.init, jax.random.key(0))))
    assert block.touched_param_count(1) == pytest.approx(block.active_param_count())
    assert block.touched_param_count(10_000) == pytest.approx(total)
    assert block.active_param_count() < block.touched_param_count(4) < total
