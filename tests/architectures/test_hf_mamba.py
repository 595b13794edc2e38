"""chimera.from_hf on Mamba-1 folders (MambaForCausalLM) vs transformers' own torch path."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import chimera  # noqa: E402
import chimera.architectures.hf.mamba  # noqa: E402,F401  (registers the `mamba` converter)
import hf_parity  # noqa: E402
from chimera.ssm.mamba import Mamba  # noqa: E402  (importing it registers the `mamba` mixer)
from hf_parity import check_greedy, check_incremental, randomise_  # noqa: E402

VOCAB, T = 128, 40

VARIANTS = {
    "tied": dict(),  # MambaConfig's defaults: tied embeddings, conv bias, no in/out bias
    "untied-biased": dict(tie_word_embeddings=False, use_bias=True, use_conv_bias=False, time_step_rank=6,
                          conv_kernel=3, state_size=8),
}


def sensible_ssm_(hf):
    """After `randomise_`: A_log back near the S4D grid log(1..N) and dt_proj.bias to the inverse
    softplus of a dt log-uniform in [1e-3, 1e-1] (transformers' init), so that the state decays
    slowly and carries tokens far; the other mixer tensors stay random."""
    with torch.no_grad():
        for layer in hf.backbone.layers:
            mixer = layer.mixer
            e, n = mixer.A_log.shape
            mixer.A_log.copy_(torch.log(torch.arange(1, n + 1.0)).expand(e, n) + torch.empty(e, n).uniform_(-0.3, 0.3))
            dt = torch.exp(torch.empty(e).uniform_(np.log(1e-3), np.log(1e-1)))
            mixer.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
    return hf


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """variant -> (hf, model, params): a random MambaForCausalLM and its chimera import, built
    once per variant."""
    built = {}

    def get(variant):
        if variant not in built:
            torch.manual_seed(0)
            config = transformers.MambaConfig(
                vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, expand=2, layer_norm_epsilon=1e-5,
                use_mambapy=False, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                **({"state_size": 16, "conv_kernel": 4} | VARIANTS[variant]))
            hf = sensible_ssm_(randomise_(transformers.MambaForCausalLM(config).eval()))
            folder = tmp_path_factory.mktemp(f"mamba-{variant}")
            hf.save_pretrained(folder)
            built[variant] = (hf, *chimera.from_hf(folder))
        return built[variant]
    return get


EVERY = pytest.mark.parametrize("variant", list(VARIANTS))


@EVERY
def test_config_is_imported(imported, variant):
    hf, model, params = imported(variant)
    cfg, (mixer, ffn) = model.config, model.blocks[0]
    assert ffn is None and type(mixer) is Mamba
    assert cfg.tie_embeddings == hf.config.tie_word_embeddings == ("lm_head" not in params)
    assert (mixer.d_state, mixer.d_conv, mixer.expand, mixer.dt_rank) == (
        hf.config.state_size, hf.config.conv_kernel, hf.config.expand, hf.config.time_step_rank)
    assert (mixer.bias, mixer.conv_bias) == (hf.config.use_bias, hf.config.use_conv_bias)


@EVERY
def test_outputs_are_not_degenerate(imported, variant):
    """The randomised model is a real test: logits spread out, and the first token still moves
    the last token's logits 39 steps later (only h reaches that far: the conv sees d_conv - 1 back)."""
    hf, _, _ = imported(variant)
    tokens = hf_parity.random_tokens((1, T), VOCAB, seed=3)
    other = tokens.copy()
    other[0, 0] = (other[0, 0] + 1) % VOCAB
    logits, moved = hf_parity.hf_logits(hf, tokens), hf_parity.hf_logits(hf, other)
    assert logits[0, -1].std() > 0.5
    assert 1e-3 < hf_parity.rel_err(moved[0, -1], logits[0, -1]) < 1


@EVERY
def test_forward_matches_transformers(imported, variant):
    hf, model, params = imported(variant)
    hf_parity.check_forward(hf, model, params, hf_parity.random_tokens((2, T), VOCAB))


@EVERY
def test_extend_incremental_matches_transformers(imported, variant):
    """Prompts of 5 and 19 tokens (ragged), then single tokens."""
    hf, model, params = imported(variant)
    check_incremental(hf, model, params, hf_parity.random_tokens((2, T), VOCAB, seed=1), [5, 19])


@pytest.mark.parametrize("variant", ["tied"])  # one Engine compile; the head is covered above
def test_greedy_generation_matches_transformers(imported, variant):
    hf, model, params = imported(variant)
    rng = np.random.default_rng(2)
    check_greedy(hf, model, params, [rng.integers(0, VOCAB, n).tolist() for n in (3, 11, 24)], new_tokens=16)


def test_activation_other_than_silu_is_refused():
    config = chimera.architectures.hf.mamba.mamba_config
    with pytest.raises(ValueError, match="hidden_act"):
        config({"vocab_size": 8, "hidden_size": 16, "num_hidden_layers": 1, "hidden_act": "gelu"})
    assert config({"vocab_size": 8, "hidden_size": 16, "num_hidden_layers": 1}).tie_embeddings
