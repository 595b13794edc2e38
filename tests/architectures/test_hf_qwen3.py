"""chimera.from_hf on a tiny dense Qwen3 folder (Qwen3ForCausalLM: per-head q/k RMSNorm before
RoPE, biases on all four projections, tied embeddings) vs transformers."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_parity  # noqa: E402
from chimera.architectures.hf.qwen3 import qwen3_config  # noqa: E402

VOCAB, T = 96, 16


def hf_config(**changes):
    return transformers.Qwen3Config(**{
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5, "attention_bias": True, "tie_word_embeddings": True,
        "bos_token_id": None, "eos_token_id": None, "pad_token_id": None, **changes})


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    hf = hf_parity.build_hf(transformers.Qwen3ForCausalLM, hf_config())
    model, params = hf_parity.save_and_import(hf, tmp_path_factory.mktemp("qwen3"))
    return hf, model, params


def test_qk_norm_is_imported(qwen3):
    hf, model, params = qwen3
    attn = model.config.mixer_blocks["attn"]
    assert (attn.qk_norm, attn.qk_norm_eps, attn.use_rope, attn.qkv_bias, attn.out_bias) == (True, 1e-5, True,
                                                                                              True, True)
    assert model.config.tie_embeddings and "lm_head" not in params
    np.testing.assert_array_equal(params["layers"][1]["mixer"]["k_norm"],
                                  hf.model.layers[1].self_attn.k_norm.weight.detach().numpy())


def test_sliding_window_is_refused():
    with pytest.raises(ValueError, match="use_sliding_window"):
        qwen3_config(hf_config(use_sliding_window=True, sliding_window=8).to_dict())


def test_forward_matches_transformers(qwen3):
    hf, model, params = qwen3
    hf_parity.check_forward(hf, model, params, hf_parity.random_tokens((2, T), VOCAB))


def test_extend_incremental_matches_transformers(qwen3):
    hf, model, params = qwen3
    hf_parity.check_incremental(hf, model, params, hf_parity.random_tokens((2, T), VOCAB, seed=1), [4, 11])


def test_greedy_generation_matches_transformers(qwen3):
    hf, model, params = qwen3
    rng = np.random.default_rng(2)
    hf_parity.check_greedy(hf, model, params, [rng.integers(0, VOCAB, n).tolist() for n in (3, 11)], new_tokens=6)
