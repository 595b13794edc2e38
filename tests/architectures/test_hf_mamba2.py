"""chimera.from_hf on Mamba-2 folders (Mamba2ForCausalLM: 2 groups of B/C, chunks of 8 shorter
than the test sequence) vs transformers' own (CPU, pure torch) implementation."""

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import chimera  # noqa: E402
import chimera.architectures.hf.mamba2  # noqa: E402,F401  (registers the `mamba2` converter)
import chimera.ssm.mamba2  # noqa: E402,F401
import hf_parity  # noqa: E402
from chimera.architectures.hf.mamba2 import mamba2_config  # noqa: E402
from hf_parity import check_greedy, check_incremental, randomise_  # noqa: E402

VOCAB, T = 128, 40


def tiny_mamba2(folder, **overrides):
    """A random float32 Mamba2ForCausalLM saved to `folder`; returns it."""
    torch.manual_seed(0)
    fields = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_heads=8, head_dim=8, state_size=16,
                  n_groups=2, conv_kernel=4, expand=2, chunk_size=8, layer_norm_epsilon=1e-5,
                  tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf = randomise_(transformers.Mamba2ForCausalLM(transformers.Mamba2Config(**(fields | overrides))).eval())
    with torch.no_grad():  # randomise_ draws A_log and dt_bias ~ N(0, 1): make them Mamba-like
        for layer in hf.backbone.layers:
            heads = layer.mixer.num_heads
            layer.mixer.A_log.copy_(torch.log(torch.empty(heads).uniform_(1.0, 16.0)))
            dt = torch.exp(torch.empty(heads).uniform_(math.log(0.01), math.log(0.5)))
            layer.mixer.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
    hf.save_pretrained(folder)
    return hf


@pytest.fixture(scope="module")
def mamba2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mamba2")
    hf = tiny_mamba2(folder)
    model, params = chimera.from_hf(folder)
    return hf, folder, model, params


def test_config_is_imported(mamba2):
    hf, folder, model, params = mamba2
    cfg = model.config
    (ssm,) = cfg.mixer_blocks.values()
    assert cfg.layers == (chimera.architectures.config.LayerSpec(mixer="ssm"),) and cfg.ffns == {}
    assert (ssm.n_heads, ssm.head_dim, ssm.d_state, ssm.n_groups, ssm.chunk_size) == (8, 8, 16, 2, 8)
    assert ssm.dt_limit == (0.0, None) and not cfg.tie_embeddings and "lm_head" in params
    assert json.loads((folder / "config.json").read_text())["chunk_size"] < T  # several chunks per prompt


def test_outputs_are_not_degenerate(mamba2):
    """Spread-out logits and varied argmaxes, and the last token's logits move when only the
    first token changes: information crosses the SSM state, far past the 4-token conv."""
    hf, folder, model, params = mamba2
    tokens = hf_parity.random_tokens((2, T), VOCAB)
    logits = hf_parity.hf_logits(hf, tokens)
    assert logits.std() > 0.3 and len(np.unique(logits.argmax(-1))) > 20
    changed = tokens.copy()
    changed[:, 0] = (changed[:, 0] + 1) % VOCAB
    moved = np.abs(hf_parity.hf_logits(hf, changed)[:, -1] - logits[:, -1]).max(-1)
    assert (moved > 1e-3 * np.abs(logits[:, -1]).max(-1)).all()


def test_forward_matches_transformers(mamba2):
    hf, folder, model, params = mamba2
    hf_parity.check_forward(hf, model, params, hf_parity.random_tokens((2, T), VOCAB))


def test_extend_incremental_matches_transformers(mamba2):
    """Prompts of 5 and 19 tokens (within one chunk, and over 2 chunks and a part), then single tokens."""
    hf, folder, model, params = mamba2
    check_incremental(hf, model, params, hf_parity.random_tokens((2, T), VOCAB, seed=1), [5, 19])


def test_greedy_generation_matches_transformers(mamba2):
    hf, folder, model, params = mamba2
    rng = np.random.default_rng(2)
    check_greedy(hf, model, params, [rng.integers(0, VOCAB, n).tolist() for n in (3, 11, 24)], new_tokens=16)


def test_tied_embeddings_and_dt_limit(tmp_path):
    """Tied embeddings (no lm_head of our own), one group, and a dt clamp that binds: the
    forward (transformers' chunked path applies the clamp) still matches."""
    hf = tiny_mamba2(tmp_path, tie_word_embeddings=True, n_groups=1, num_hidden_layers=1,
                     time_step_limit=(0.02, 0.2))
    model, params = chimera.from_hf(tmp_path)
    (ssm,) = model.config.mixer_blocks.values()
    assert model.config.tie_embeddings and "lm_head" not in params
    assert ssm.dt_limit == (0.02, 0.2) and ssm.n_groups == 1
    dt = torch.nn.functional.softplus(hf.backbone.layers[0].mixer.dt_bias)
    assert ((dt < 0.02) | (dt > 0.2)).any()  # the clamp changes some heads' dt (bias alone)
    hf_parity.check_forward(hf, model, params, hf_parity.random_tokens((2, T), VOCAB, seed=3))


HF_CONFIG = {"model_type": "mamba2", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1, "num_heads": 4,
             "head_dim": 8, "state_size": 4, "n_groups": 2, "chunk_size": 8}


@pytest.mark.parametrize("limit, want", [
    ([0.0, {"__float__": "Infinity"}], (0.0, None)),  # transformers 5's JSON for inf
    ([0.0, float("inf")], (0.0, None)),  # older transformers: a bare Infinity
    (None, (0.0, None)),
    ([0.001, 0.1], (0.001, 0.1)),
])
def test_time_step_limit_forms(limit, want):
    hf = HF_CONFIG | ({} if limit is None else {"time_step_limit": limit})
    assert mamba2_config(hf).mixer_blocks["ssm"].dt_limit == want


@pytest.mark.parametrize("change, field", [
    ({"n_groups": 3}, "mixers.ssm.n_groups"),
    ({"num_heads": 3}, "mixers.ssm.n_heads"),  # 3 x 8 != expand x hidden_size
    ({"time_step_limit": [0.1, 0.01]}, "mixers.ssm.dt_limit"),
])
def test_bad_config_names_the_field(change, field):
    with pytest.raises(chimera.ConfigError) as e:
        mamba2_config(HF_CONFIG | change)
    assert str(e.value).startswith(field + ":"), str(e.value)


def test_unsupported_activation():
    with pytest.raises(ValueError, match="hidden_act"):
        mamba2_config(HF_CONFIG | {"hidden_act": "gelu"})
