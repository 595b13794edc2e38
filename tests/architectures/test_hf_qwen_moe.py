"""chimera.from_hf on tiny Qwen2-MoE folders (shared expert behind a sigmoid gate, q/k/v biases,
dense layers where mlp_only_layers says) and Qwen3-MoE folders (per-head q/k RMSNorm,
renormalised top-k, no shared expert) vs transformers."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_parity  # noqa: E402
from chimera.architectures.hf.qwen_moe import qwen_moe_config  # noqa: E402

VOCAB, T = 96, 16
SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 40, "moe_intermediate_size": 16,
         "num_attention_heads": 4, "num_key_value_heads": 2, "num_experts": 8, "num_experts_per_tok": 2,
         "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "bos_token_id": None, "eos_token_id": None,
         "pad_token_id": None}


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    """3 layers, layer 0 dense: a per-layer pattern the repeat cannot shorten."""
    config = transformers.Qwen2MoeConfig(**SMALL, num_hidden_layers=3, shared_expert_intermediate_size=24,
                                         mlp_only_layers=[0], decoder_sparse_step=1, norm_topk_prob=False)
    hf = hf_parity.build_hf(transformers.Qwen2MoeForCausalLM, config)
    model, params = hf_parity.save_and_import(hf, tmp_path_factory.mktemp("qwen2_moe"))
    return hf, model, params


def test_layers_and_experts_are_imported(qwen2):
    hf, model, params = qwen2
    cfg = model.config
    moe = cfg.ffn_blocks["moe"]
    assert [layer.ffn for layer in cfg.layers] == ["mlp", "moe", "moe"]
    assert (moe.n_experts, moe.top_k, moe.d_ff, moe.renormalize) == (8, 2, 16, False)
    assert (moe.n_shared_experts, moe.shared_d_ff, moe.shared_expert_gate) == (1, 24, True)
    assert cfg.ffn_blocks["mlp"].d_ff == 40 and cfg.mixer_blocks["attn"].qkv_bias
    np.testing.assert_array_equal(params["layers"][2]["ffn"]["shared_gate"],
                                  hf.model.layers[2].mlp.shared_expert_gate.weight.detach().numpy()[0])


def test_forward_matches_transformers(qwen2):
    hf, model, params = qwen2
    hf_parity.check_forward(hf, model, params, hf_parity.random_tokens((2, T), VOCAB))


def test_extend_incremental_matches_transformers(qwen2):
    hf, model, params = qwen2
    hf_parity.check_incremental(hf, model, params, hf_parity.random_tokens((2, T), VOCAB, seed=1), [4, 11])


def test_greedy_generation_matches_transformers(qwen2):
    hf, model, params = qwen2
    rng = np.random.default_rng(2)
    hf_parity.check_greedy(hf, model, params, [rng.integers(0, VOCAB, n).tolist() for n in (3, 11)], new_tokens=6)


def test_sparse_step_gives_a_repeating_pattern():
    hf = transformers.Qwen2MoeConfig(**SMALL, num_hidden_layers=6, decoder_sparse_step=2).to_dict()
    cfg = qwen_moe_config(hf, qkv_bias=True, shared_expert=True)
    assert [layer.ffn for layer in cfg.layers] == ["mlp", "moe"]
    assert [ffn is cfg.ffn_blocks["moe"] for _, ffn in cfg.layer_blocks()] == [False, True] * 3


def test_qwen3_moe_conversion():
    """Qwen3-MoE's MoE fields (norm_topk_prob, no shared expert; transformers 5 writes
    num_experts as num_local_experts)."""
    hf = transformers.Qwen3MoeConfig(**SMALL, num_hidden_layers=2, head_dim=8, norm_topk_prob=True).to_dict()
    cfg = qwen_moe_config(hf, qkv_bias=False, shared_expert=False)
    moe = cfg.ffn_blocks["moe"]
    assert (moe.n_experts, moe.top_k, moe.d_ff, moe.renormalize, moe.n_shared_experts) == (8, 2, 16, True, 0)
    assert [layer.ffn for layer in cfg.layers] == ["moe"] and "mlp" not in cfg.ffns


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    """2 layers, layer 1 dense, biases on all four attention projections."""
    config = transformers.Qwen3MoeConfig(**SMALL, num_hidden_layers=2, head_dim=8, norm_topk_prob=True,
                                         mlp_only_layers=[1], attention_bias=True)
    hf = hf_parity.build_hf(transformers.Qwen3MoeForCausalLM, config)
    model, params = hf_parity.save_and_import(hf, tmp_path_factory.mktemp("qwen3_moe"))
    return hf, model, params


def test_qwen3_moe_qk_norm_is_imported(qwen3):
    hf, model, params = qwen3
    attn = model.config.mixer_blocks["attn"]
    assert (attn.qk_norm, attn.qk_norm_eps, attn.qkv_bias, attn.out_bias) == (True, 1e-6, True, True)
    assert [layer.ffn for layer in model.config.layers] == ["moe", "mlp"]
    np.testing.assert_array_equal(params["layers"][0]["mixer"]["q_norm"],
                                  hf.model.layers[0].self_attn.q_norm.weight.detach().numpy())


def test_qwen3_moe_forward_matches_transformers(qwen3):
    hf, model, params = qwen3
    hf_parity.check_forward(hf, model, params, hf_parity.random_tokens((2, T), VOCAB))


def test_qwen3_moe_extend_incremental_matches_transformers(qwen3):
    hf, model, params = qwen3
    hf_parity.check_incremental(hf, model, params, hf_parity.random_tokens((2, T), VOCAB, seed=1), [4, 11])


def test_qwen3_moe_greedy_generation_matches_transformers(qwen3):
    hf, model, params = qwen3
    rng = np.random.default_rng(2)
    hf_parity.check_greedy(hf, model, params, [rng.integers(0, VOCAB, n).tolist() for n in (3, 11)], new_tokens=6)
