"""chimera.from_hf on dense DeepSeek-V3 folders, checked against transformers' own
DeepseekV3ForCausalLM: Multi-head Latent Attention with direct or low-rank queries,
interleaved or rotate-half RoPE, and yarn scaling with DeepSeek's softmax mscale.

Each case builds a tiny random model with transformers (every layer dense), saves it as
safetensors, imports it with chimera and compares float32 logits (full forward, ragged
incremental extend) and greedy generations with what transformers computes.
"""

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

import chimera  # noqa: E402
import chimera.architectures.hf.deepseek_v3  # noqa: E402,F401  (registers the converter)
import hf_parity  # noqa: E402
from hf_parity import TOL, check_forward, check_greedy, check_incremental, hf_logits, rel_err, edit_config  # noqa: E402

VOCAB, T = 128, 24

BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, first_k_dense_replace=2,
            num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=32,
            qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,  # v != nope: a swapped split shows
            n_routed_experts=4, n_group=1, topk_group=1, num_experts_per_tok=2, moe_intermediate_size=32,
            max_position_embeddings=128, rms_norm_eps=1e-5, rope_interleave=True,
            # No special tokens: HF generate must never stop early or pad.
            bos_token_id=None, eos_token_id=None, pad_token_id=None)

# theta 500 and original_max_position_embeddings 32 put yarn's three bands (kept, blended,
# divided) inside the 4 rope frequencies; mscale != mscale_all_dim makes both of DeepSeek's
# corrections (cos/sin factor and softmax scale) differ from 1.
YARN = {"rope_type": "yarn", "rope_theta": 500.0, "factor": 4.0, "original_max_position_embeddings": 32,
        "beta_fast": 8.0, "beta_slow": 1.0, "mscale": 0.9, "mscale_all_dim": 0.6}

# One dense layer then MoE ones: 8 routed experts in 4 groups (the best 2 groups eligible),
# top 2, a shared expert, renormalised weights scaled by 2.5.
MOE = dict(q_lora_rank=24, num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=8, n_group=4,
           topk_group=2, num_experts_per_tok=2, n_shared_experts=1, routed_scaling_factor=2.5, norm_topk_prob=True)

CASES = {
    "q_lora": dict(q_lora_rank=24),  # DeepSeek-V3's own layout
    "q_direct_yarn": dict(rope_parameters=YARN),  # DeepSeek-V2-Lite's, with long-context RoPE
    "rotate_half_tied": dict(q_lora_rank=24, rope_interleave=False, tie_word_embeddings=True),
    "moe": MOE,
}


def build_hf(seed=0, **overrides):
    """A tiny float32 DeepseekV3ForCausalLM with non-trivial weights everywhere (the router's
    selection bias too: a buffer, which randomise_ leaves at zero)."""
    config = transformers.DeepseekV3Config(**(BASE | overrides))
    hf = hf_parity.build_hf(transformers.DeepseekV3ForCausalLM, config, seed)
    with torch.no_grad():
        for name, buffer in hf.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.normal_(0.0, 0.3)
    return hf


def random_tokens(shape, seed=0):
    return hf_parity.random_tokens(shape, VOCAB, seed)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    """(name, hf model, folder, chimera model, chimera params) for one variant."""
    hf = build_hf(**CASES[request.param])
    folder = tmp_path_factory.mktemp(request.param)
    model, params = hf_parity.save_and_import(hf, folder)
    return request.param, hf, folder, model, params


# --- numerics against transformers ---

def test_folder_has_what_the_case_needs(case):
    """Guard: the case's feature reached chimera's config (else the case would test nothing)."""
    name, hf, folder, model, params = case
    mla = model.config.mixer_blocks["attn"]
    assert type(mla).__name__ == "MLA" and mla.v_head_dim == 12 and mla.qk_nope_head_dim == 16
    assert mla.q_lora_rank == CASES[name].get("q_lora_rank")
    if name == "moe":
        moe = model.config.ffn_blocks["moe"]
        assert len(model.config.first_layers) == 1 and model.config.layers[0].ffn == "moe"
        assert (moe.n_experts, moe.top_k, moe.n_group, moe.topk_group, moe.n_shared_experts) == (8, 2, 4, 2, 1)
        assert np.abs(np.asarray(params["layers"][1]["ffn"]["selection_bias"])).max() > 0.1
    assert ("wq_a" in params["layers"][0]["mixer"]) == (mla.q_lora_rank is not None)
    assert mla.rope_interleave == CASES[name].get("rope_interleave", True)
    assert ("lm_head" in params) == (name != "rotate_half_tied")
    if name == "q_direct_yarn":
        assert mla.rope_scaling.type == "yarn" and mla.rope_scaling.mscale_all_dim == 0.6
    else:
        assert mla.rope_scaling is None


def test_forward_matches_transformers(case):
    name, hf, folder, model, params = case
    check_forward(hf, model, params, random_tokens((2, T)))


def test_extend_incremental_matches_transformers(case):
    """A ragged prompt batch, then one token at a time (the absorbed path), against HF's
    full forward per row."""
    name, hf, folder, model, params = case
    check_incremental(hf, model, params, random_tokens((2, T), seed=1), [7, 13])


def test_greedy_generation_matches_transformers(case):
    """A ragged batch through the Engine gives, per prompt, HF's greedy continuation."""
    name, hf, folder, model, params = case
    rng = np.random.default_rng(2)
    check_greedy(hf, model, params, [rng.integers(0, VOCAB, n).tolist() for n in (3, 11, 20)], new_tokens=12)


@pytest.mark.parametrize("name, change", [
    ("q_lora", {"rope_interleave": False}),
    ("q_direct_yarn", {"rope_parameters": {k: v for k, v in YARN.items() if k != "mscale_all_dim"}}),
])
def test_each_feature_matters(name, change, tmp_path):
    """Guards the parity above: importing with the feature changed breaks the match, so the
    tiny models are sensitive to rope layout and to DeepSeek's softmax mscale."""
    hf = build_hf(**CASES[name])
    hf.save_pretrained(tmp_path)
    edit_config(tmp_path, **change)
    model, params = chimera.from_hf(tmp_path)
    tokens = random_tokens((1, T), seed=3)
    assert rel_err(model.forward(params, tokens), hf_logits(hf, tokens)) > 100 * TOL


# --- what is refused or skipped ---

@pytest.fixture(scope="module")
def dense_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dense")
    build_hf().save_pretrained(folder)
    return folder


@pytest.fixture
def folder_copy(dense_folder, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(dense_folder, folder)
    return folder


def test_moe_selection_bias_matters(tmp_path):
    """Guards the MoE parity: with the checkpoint's selection bias zeroed, other experts are
    chosen and the logits move (so the bias is read and used for choosing)."""
    hf = build_hf(**MOE)
    hf.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    save_file({k: (np.zeros_like(v) if k.endswith("e_score_correction_bias") else v) for k, v in tensors.items()},
              path, metadata={"format": "pt"})
    model, params = chimera.from_hf(tmp_path)
    tokens = random_tokens((1, T), seed=3)
    assert rel_err(model.forward(params, tokens), hf_logits(hf, tokens)) > 100 * TOL


def test_attention_bias_is_refused(folder_copy):
    edit_config(folder_copy, attention_bias=True)
    with pytest.raises(ValueError, match="attention_bias"):
        chimera.from_hf(folder_copy)


def test_multi_token_prediction_layers_are_skipped(dense_folder, folder_copy):
    """Released checkpoints append MTP modules as layer n_layers (marked by `eh_proj`);
    decoding does not use them. Any other extra layer is still an unused-tensor error."""
    path = folder_copy / "model.safetensors"
    tensors = load_file(path)
    mtp = {"model.layers.2.eh_proj.weight": np.ones((64, 128), np.float32),
           "model.layers.2.enorm.weight": np.ones(64, np.float32),
           "model.layers.2.self_attn.q_proj.weight": np.ones((96, 64), np.float32)}
    save_file(tensors | mtp, path, metadata={"format": "pt"})
    _, want = chimera.from_hf(dense_folder)
    _, got = chimera.from_hf(folder_copy)
    np.testing.assert_array_equal(got["layers"][1]["mixer"]["wq"], want["layers"][1]["mixer"]["wq"])

    del mtp["model.layers.2.eh_proj.weight"]
    save_file(tensors | mtp, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not used"):
        chimera.from_hf(folder_copy)
