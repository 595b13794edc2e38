"""chimera.from_hf on Mistral folders (sliding window smaller than the test sequence) vs transformers."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import chimera  # noqa: E402
import hf_parity  # noqa: E402
from hf_parity import check_greedy, check_incremental, randomise_  # noqa: E402

VOCAB, T, WINDOW = 128, 40, 8


@pytest.fixture(scope="module", params=[WINDOW, None], ids=["window", "no_window"])
def mistral(request, tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.MistralConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=request.param, max_position_embeddings=128,
        rms_norm_eps=1e-5, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf = randomise_(transformers.MistralForCausalLM._from_config(config, attn_implementation="eager").eval())
    folder = tmp_path_factory.mktemp("mistral")
    hf.save_pretrained(folder)
    model, params = chimera.from_hf(folder)
    return request.param, hf, folder, model, params


def test_window_is_imported(mistral):
    window, hf, folder, model, params = mistral
    attn = model.config.mixer_blocks["attn"]
    assert json.loads((folder / "config.json").read_text())["sliding_window"] == window
    assert getattr(attn, "window", None) == window
    if window is not None:  # the cache holds the window, whatever max_len is asked for
        assert model.init_state(1, 4 * T).layers[0]["k"].shape[1] == window


def test_forward_matches_transformers(mistral):
    window, hf, folder, model, params = mistral
    hf_parity.check_forward(hf, model, params, hf_parity.random_tokens((2, T), VOCAB))


def test_extend_incremental_matches_transformers(mistral):
    """Prompts of 5 and 19 tokens (one shorter, one longer than the window), then single tokens."""
    window, hf, folder, model, params = mistral
    check_incremental(hf, model, params, hf_parity.random_tokens((2, T), VOCAB, seed=1), [5, 19])


def test_greedy_generation_matches_transformers(mistral):
    window, hf, folder, model, params = mistral
    rng = np.random.default_rng(2)
    check_greedy(hf, model, params, [rng.integers(0, VOCAB, n).tolist() for n in (3, 11, 24)], new_tokens=16)
