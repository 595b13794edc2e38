"""chimera.from_hf on Llama folders, checked against transformers' own LlamaForCausalLM.

Each case builds a tiny random Llama with transformers, saves it as safetensors, imports
it with chimera and compares float32 logits (full forward, incremental extend) and greedy
generations with what transformers computes from the very same folder.
"""

import json
import pickle
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

import chimera  # noqa: E402
import hf_parity  # noqa: E402
from chimera.architectures.hf.llama import to_hf_config  # noqa: E402
from hf_parity import TOL, check_greedy, check_incremental, hf_logits, rel_err, edit_config  # noqa: E402
VOCAB, T = 128, 40

BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            # No special tokens: HF generate must never stop early or pad.
            bos_token_id=None, eos_token_id=None, pad_token_id=None)

CASES = {
    "gqa": {},
    "mqa_tied": dict(num_key_value_heads=1, tie_word_embeddings=True),
    # original_max_position_embeddings=16 makes the llama3 blend touch frequencies
    # whose wavelength is within a 40-token sequence (head_dim 16, theta 500).
    "rope_llama3": dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 16}),
    "rope_linear": dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}),
    "bias": dict(attention_bias=True, mlp_bias=True),
    "head_dim": dict(head_dim=24, num_attention_heads=4, num_key_value_heads=2),  # 4 * 24 != 64
    "gelu_tanh": dict(hidden_act="gelu_pytorch_tanh"),
}


def build_hf(seed=0, **overrides):
    """A tiny float32 LlamaForCausalLM with non-trivial weights everywhere."""
    return hf_parity.build_hf(transformers.LlamaForCausalLM, transformers.LlamaConfig(**(BASE | overrides)), seed)


def random_tokens(shape, seed=0):
    return hf_parity.random_tokens(shape, VOCAB, seed)


# --- fixtures: each HF model is built, saved and imported once ---

@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    """(name, hf model, folder, chimera model, chimera params) for one Llama variant."""
    hf = build_hf(**CASES[request.param])
    folder = tmp_path_factory.mktemp(request.param)
    model, params = hf_parity.save_and_import(hf, folder)
    return request.param, hf, folder, model, params


@pytest.fixture(scope="module")
def gqa(tmp_path_factory):
    """The plain GQA model, for the folder-format tests."""
    hf = build_hf(**CASES["gqa"])
    folder = tmp_path_factory.mktemp("gqa_plain")
    hf.save_pretrained(folder)
    return hf, folder


@pytest.fixture
def gqa_copy(gqa, tmp_path):
    """A private copy of the GQA folder that a test may edit."""
    folder = tmp_path / "copy"
    shutil.copytree(gqa[1], folder)
    return folder


# --- numerics against transformers ---

def test_folder_has_what_the_case_needs(case):
    """Guard: transformers wrote the feature under test (else the case would test nothing)."""
    name, hf, folder, model, params = case
    hf_config = json.loads((folder / "config.json").read_text())
    attn = model.config.mixer_blocks["attn"]
    if name == "mqa_tied":
        assert hf_config["tie_word_embeddings"] and attn.n_kv_heads == 1 and "lm_head" not in params
    if name.startswith("rope_"):
        assert attn.rope_scaling is not None and attn.rope_scaling.type == name.removeprefix("rope_")
    if name == "bias":
        assert "bq" in params["layers"][0]["mixer"] and "b_up" in params["layers"][0]["ffn"]
    if name == "head_dim":
        assert attn.head_dim == 24 and params["layers"][0]["mixer"]["wq"].shape == (64, 4, 24)


def test_forward_matches_transformers(case):
    name, hf, folder, model, params = case
    hf_parity.check_forward(hf, model, params, random_tokens((2, T)))


def test_extend_incremental_matches_transformers(case):
    """Rows of 7 and 13 prompt tokens, then one token at a time, against HF per row."""
    name, hf, folder, model, params = case
    check_incremental(hf, model, params, random_tokens((2, T), seed=1), [7, 13])


def test_greedy_generation_matches_transformers(case):
    name, hf, folder, model, params = case
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, VOCAB, n).tolist() for n in (3, 11, 24)]
    check_greedy(hf, model, params, prompts, new_tokens=16)


@pytest.mark.parametrize("name", ["rope_llama3", "rope_linear"])
def test_transformers4_rope_scaling_config(name, tmp_path):
    """Folders written by transformers 4 carry `rope_theta` + `rope_scaling` instead of `rope_parameters`."""
    hf = build_hf(**CASES[name])
    hf.save_pretrained(tmp_path)
    rope = dict(json.loads((tmp_path / "config.json").read_text())["rope_parameters"])
    theta = rope.pop("rope_theta")
    if name == "rope_linear":  # the oldest spelling: `type` rather than `rope_type`
        rope["type"] = rope.pop("rope_type")
    edit_config(tmp_path, rope_parameters=None, rope_theta=theta, rope_scaling=rope)
    model, params = chimera.from_hf(tmp_path)
    tokens = random_tokens((1, T), seed=3)
    assert rel_err(model.forward(params, tokens), hf_logits(hf, tokens)) < TOL


def test_bfloat16_import(gqa):
    hf, folder = gqa
    model, params = chimera.from_hf(folder, dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    tokens = random_tokens((2, T), seed=4)
    logits = model.forward(params, tokens)
    assert logits.dtype == jnp.float32
    assert rel_err(logits, hf_logits(hf, tokens)) < 3e-2  # a sanity bound: bf16 rounding only


# --- folder formats ---

def test_sharded_checkpoint_imports_identically(gqa, tmp_path):
    hf, folder = gqa
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    _, want = chimera.from_hf(folder)
    _, got = chimera.from_hf(tmp_path)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(g, w)


def test_pickled_weights_are_refused_unread(gqa, tmp_path, monkeypatch):
    hf, folder = gqa
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")

    def forbidden(*args, **kwargs):
        raise AssertionError("a pickled checkpoint was unpickled")
    for module, attr in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, attr, forbidden)
    with pytest.raises(ValueError, match="safetensors"):
        chimera.from_hf(tmp_path)


def test_tokenizer_json_is_loaded(gqa, gqa_copy):
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = ["[UNK]", "the", "cat", "sat", "on", "mat"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(gqa_copy / "tokenizer.json"))

    model, _ = chimera.from_hf(gqa_copy)
    assert model.tokenizer is not None
    ids = model.tokenizer.encode("the cat sat on the dog").ids
    assert ids == [1, 2, 3, 4, 1, 0]
    assert model.tokenizer.decode([1, 2, 3, 4, 1, 5]) == "the cat sat on the mat"

    model, _ = chimera.from_hf(gqa[1])  # no tokenizer.json there
    assert model.tokenizer is None


def test_unsupported_model_type(gqa_copy):
    edit_config(gqa_copy, model_type="gpt_neox")
    with pytest.raises(ValueError, match="gpt_neox"):
        chimera.from_hf(gqa_copy)


def test_unused_tensor_is_refused(gqa_copy):
    """A tensor the model does not use means the import would silently differ."""
    path = gqa_copy / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.0.self_attn.q_norm.weight"] = np.ones(16, np.float32)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="q_norm"):
        chimera.from_hf(gqa_copy)


@pytest.mark.parametrize("preset", ["mistral-tiny", "local-global-tiny", "rwkv7-tiny", "mixtral-tiny"])
def test_to_hf_config_refuses_what_llama_cannot_express(preset):
    with pytest.raises(ValueError, match="Llama equivalent"):
        to_hf_config(chimera.load_config(preset))


def test_to_hf_config_refuses_attention_options():
    cfg = chimera.load_config("llama-tiny").to_dict()
    for change in ({"qk_norm": True}, {"use_rope": False}, {"softcap": 30.0}):
        edited = {**cfg, "mixers": {"attn": {**cfg["mixers"]["attn"], **change}}}
        with pytest.raises(ValueError, match="Llama equivalent"):
            to_hf_config(chimera.ModelConfig.from_dict(edited))
    assert to_hf_config(chimera.load_config("llama-tiny"))["num_key_value_heads"] == 2
