"""chimera.from_hf on a tiny Mixtral folder (4 experts, top 2) vs transformers."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_parity  # noqa: E402
from chimera.architectures.hf.mixtral import mixtral_config  # noqa: E402

VOCAB, T = 96, 16


def hf_config(**changes):
    return transformers.MixtralConfig(**{
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "num_local_experts": 4,
        "num_experts_per_tok": 2, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
        "bos_token_id": None, "eos_token_id": None, "pad_token_id": None, **changes})


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    hf = hf_parity.build_hf(transformers.MixtralForCausalLM, hf_config())
    model, params = hf_parity.save_and_import(hf, tmp_path_factory.mktemp("mixtral"))
    return hf, model, params


def test_experts_are_imported(mixtral):
    hf, model, params = mixtral
    moe = model.config.ffn_blocks["moe"]
    assert (moe.n_experts, moe.top_k, moe.d_ff, moe.router, moe.renormalize) == (4, 2, 48, "softmax_topk", True)
    gate, up = hf.model.layers[1].mlp.experts.gate_up_proj.detach().numpy()[2].reshape(2, 48, 32)  # expert 2
    np.testing.assert_array_equal(params["layers"][1]["ffn"]["w_gate"][2], gate.T)
    np.testing.assert_array_equal(params["layers"][1]["ffn"]["w_up"][2], up.T)


def test_sliding_window_is_kept():
    config = mixtral_config(hf_config(sliding_window=8).to_dict())
    assert config.mixers["attn"]["kind"] == "sliding_window" and config.mixers["attn"]["window"] == 8


def test_forward_matches_transformers(mixtral):
    hf, model, params = mixtral
    hf_parity.check_forward(hf, model, params, hf_parity.random_tokens((2, T), VOCAB))


def test_extend_incremental_matches_transformers(mixtral):
    hf, model, params = mixtral
    hf_parity.check_incremental(hf, model, params, hf_parity.random_tokens((2, T), VOCAB, seed=1), [4, 11])


def test_greedy_generation_matches_transformers(mixtral):
    hf, model, params = mixtral
    rng = np.random.default_rng(2)
    hf_parity.check_greedy(hf, model, params, [rng.integers(0, VOCAB, n).tolist() for n in (3, 11)], new_tokens=6)
