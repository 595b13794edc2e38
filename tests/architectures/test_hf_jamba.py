"""chimera.from_hf on a tiny Jamba folder (JambaForCausalLM: Mamba layers with dt/B/C RMSNorms,
an attention layer without RoPE, dense and MoE feed-forwards, un-renormalised top-k) vs
transformers' own torch path."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_parity  # noqa: E402
from chimera.architectures.hf.jamba import jamba_config  # noqa: E402

VOCAB, T = 96, 16
# jamba-tiny's period: [{ssm, mlp}, {ssm, moe}, {ssm, mlp}, {attn, moe}].
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, attn_layer_period=4, attn_layer_offset=3,
             expert_layer_period=2, expert_layer_offset=1, mamba_d_state=8, mamba_dt_rank=4, rms_norm_eps=1e-5,
             bos_token_id=None, eos_token_id=None, pad_token_id=None)


def sensible_ssm_(hf):
    """After `randomise_`: A_log near the S4D grid log(1..N) and dt_proj.bias the inverse softplus
    of a dt log-uniform in [1e-3, 1e-1] (transformers' init), so the state carries tokens far."""
    with torch.no_grad():
        for layer in hf.model.layers:
            if hasattr(layer, "mamba"):
                e, n = layer.mamba.A_log.shape
                layer.mamba.A_log.copy_(torch.log(torch.arange(1, n + 1.0)).expand(e, n)
                                        + torch.empty(e, n).uniform_(-0.3, 0.3))
                dt = torch.exp(torch.empty(e).uniform_(np.log(1e-3), np.log(1e-1)))
                layer.mamba.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
    return hf


@pytest.fixture(scope="module")
def jamba(tmp_path_factory):
    hf = sensible_ssm_(hf_parity.build_hf(transformers.JambaForCausalLM, transformers.JambaConfig(**SMALL)))
    model, params = hf_parity.save_and_import(hf, tmp_path_factory.mktemp("jamba"))
    return hf, model, params


def test_layers_are_imported(jamba):
    hf, model, params = jamba
    cfg = model.config
    assert [(layer.mixer, layer.ffn) for layer in cfg.layers] == [("ssm", "mlp"), ("ssm", "moe"), ("ssm", "mlp"),
                                                                   ("attn", "moe")]
    attn, ssm, moe = cfg.mixer_blocks["attn"], cfg.mixer_blocks["ssm"], cfg.ffn_blocks["moe"]
    assert not attn.use_rope and not attn.qkv_bias
    assert (ssm.dt_bc_norm, ssm.norm_eps, ssm.d_state, ssm.dt_rank) == (True, 1e-5, 8, 4)
    assert (moe.n_experts, moe.top_k, moe.d_ff, moe.router, moe.renormalize) == (4, 2, 40, "softmax_topk", False)
    np.testing.assert_array_equal(params["layers"][1]["mixer"]["B_norm"],
                                  hf.model.layers[1].mamba.b_layernorm.weight.detach().numpy())


def test_periods_give_a_repeating_pattern():
    """Attention every 4th layer from 1, experts every 2nd from 0, over 10 layers: a period of 4,
    its last repetition partial; one expert means no MoE at all."""
    hf = transformers.JambaConfig(**{**SMALL, "num_hidden_layers": 10, "attn_layer_offset": 1,
                                     "expert_layer_offset": 0}).to_dict()
    cfg = jamba_config(hf)
    assert [(layer.mixer, layer.ffn) for layer in cfg.layers] == [("ssm", "moe"), ("attn", "mlp"), ("ssm", "moe"),
                                                                   ("ssm", "mlp")]
    kinds = [(spec.mixer, spec.ffn) for _, spec in cfg.layer_specs()]
    assert kinds == [("attn" if i % 4 == 1 else "ssm", "moe" if i % 2 == 0 else "mlp") for i in range(10)]
    dense = jamba_config({**hf, "num_experts": 1})
    assert {layer.ffn for layer in dense.layers} == {"mlp"} and "moe" not in dense.ffns


def test_other_activations_are_refused():
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        jamba_config(transformers.JambaConfig(**SMALL, hidden_act="gelu").to_dict())


def test_forward_matches_transformers(jamba):
    hf, model, params = jamba
    hf_parity.check_forward(hf, model, params, hf_parity.random_tokens((2, T), VOCAB))


def test_extend_incremental_matches_transformers(jamba):
    hf, model, params = jamba
    hf_parity.check_incremental(hf, model, params, hf_parity.random_tokens((2, T), VOCAB, seed=1), [4, 11])


def test_greedy_generation_matches_transformers(jamba):
    hf, model, params = jamba
    rng = np.random.default_rng(2)
    hf_parity.check_greedy(hf, model, params, [rng.integers(0, VOCAB, n).tolist() for n in (3, 11)], new_tokens=6)
