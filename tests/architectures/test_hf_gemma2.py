"""chimera.from_hf on Gemma-2 folders vs transformers: alternating local/global attention,
soft-capping, (1 + w) sandwich norms, scaled embeddings."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import chimera  # noqa: E402
import hf_parity  # noqa: E402
from hf_parity import check_greedy, check_incremental, randomise_  # noqa: E402

VOCAB, T, WINDOW = 128, 40, 8


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.Gemma2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=24,
        # Caps low enough to bite on these activations (a missing cap shows), high enough
        # that the top logits don't saturate into argmax ties.
        attn_logit_softcapping=5.0, final_logit_softcapping=8.0, max_position_embeddings=128,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf = randomise_(transformers.Gemma2ForCausalLM._from_config(config, attn_implementation="eager").eval())
    folder = tmp_path_factory.mktemp("gemma2")
    hf.save_pretrained(folder)
    model, params = chimera.from_hf(folder)
    return hf, model, params


def test_layers_alternate_and_caches_are_sized_per_kind(gemma2):
    hf, model, params = gemma2
    assert [spec.mixer for spec in model.config.layers] == ["local", "global"]
    assert model.config.n_layers == 3  # the pattern's last repetition is partial
    state = model.init_state(1, 4 * T)
    assert [layer["k"].shape[1] for layer in state.layers] == [WINDOW, 4 * T, WINDOW]


def test_forward_matches_transformers(gemma2):
    hf, model, params = gemma2
    hf_parity.check_forward(hf, model, params, hf_parity.random_tokens((2, T), VOCAB))


def test_extend_incremental_matches_transformers(gemma2):
    hf, model, params = gemma2
    check_incremental(hf, model, params, hf_parity.random_tokens((2, T), VOCAB, seed=1), [5, 19])


def test_greedy_generation_matches_transformers(gemma2):
    hf, model, params = gemma2
    rng = np.random.default_rng(2)
    check_greedy(hf, model, params, [rng.integers(0, VOCAB, n).tolist() for n in (3, 11, 24)], new_tokens=16)


def test_softcaps_matter(gemma2):
    """Guard: without the caps the logits differ, so the parity above tests them."""
    hf, model, params = gemma2
    tokens = hf_parity.random_tokens((1, T), VOCAB, seed=3)
    uncapped = chimera.build(model.config.replace(final_logit_softcap=None))
    assert hf_parity.rel_err(uncapped.forward(params, tokens), hf_parity.hf_logits(hf, tokens)) > 1e-2
