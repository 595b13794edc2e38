"""RWKV-7: the chunked and one-token forms of the delta-rule recurrence against a float64 numpy
loop; the whole model against the `rwkv` package's `RWKV_x070` (CPU, float32, random weights,
logits after a prompt and after further single tokens); the DESIGN.md invariants through a
model; float32 state independent of max_len; configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import chimera
from chimera.ssm.rwkv7 import MAX_LOG_DECAY, wkv_chunked, wkv_step
from hf_parity import rel_err
from rwkv_reference import rwkv_package_model, rwkv_state_dict
from mixer_harness import (assert_close, check_bounded_state, check_chunked_extend, check_engine_greedy,
                           check_padding_is_inert, check_prompt_then_decode, check_ragged_batch_matches_alone,
                           forward_setup)

HEADS, N = 2, 8


def recurrence_inputs(batch, t_len, seed):
    """Random recurrence inputs in RWKV-7's ranges: log decay in (-exp(-0.5), 0), unit removal
    keys kk, alpha = -kk, beta = kk * a with a in (0, 1); a random incoming state."""
    rng = np.random.default_rng(seed)
    shape = (batch, t_len, HEADS, N)
    kk = rng.normal(size=shape)
    kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
    a = rng.uniform(0, 1, shape)
    inputs = dict(r=rng.normal(size=shape), log_w=-MAX_LOG_DECAY * rng.uniform(0, 1, shape),
                  k=rng.normal(size=shape) * 0.5, v=rng.normal(size=shape), alpha=-kk, beta=kk * a)
    return inputs, rng.normal(size=(batch, HEADS, N, N))


def recurrence_reference(inputs, state):
    """The recurrence token by token in float64: S = S diag(w) + (S alpha) beta^T + v k^T; o = S r."""
    s = state.copy()
    outs = []
    for t in range(inputs["r"].shape[1]):
        r, log_w, k, v, alpha, beta = (inputs[name][:, t] for name in ("r", "log_w", "k", "v", "alpha", "beta"))
        s = (s * np.exp(log_w)[:, :, None, :] + np.einsum("bhij,bhj->bhi", s, alpha)[..., None] * beta[:, :, None, :]
             + v[..., None] * k[:, :, None, :])
        outs.append(np.einsum("bhij,bhj->bhi", s, r))
    return np.stack(outs, axis=1), s


def as_f32(inputs):
    return [jnp.asarray(inputs[name], jnp.float32) for name in ("r", "log_w", "k", "v", "alpha", "beta")]


@pytest.mark.parametrize("chunk, t_len", [(1, 5), (4, 4), (4, 11), (8, 21), (16, 40), (64, 70)])
def test_chunked_form_equals_float64_recurrence(chunk, t_len):
    inputs, state = recurrence_inputs(2, t_len, seed=chunk + t_len)
    want_o, want_s = recurrence_reference(inputs, state)
    o, s = wkv_chunked(*as_f32(inputs), jnp.asarray(state, jnp.float32), chunk)
    scale = np.abs(want_o).max()
    np.testing.assert_allclose(o, want_o, atol=2e-5 * scale, rtol=0)
    np.testing.assert_allclose(s, want_s, atol=2e-5 * np.abs(want_s).max(), rtol=0)


def test_step_equals_float64_recurrence():
    inputs, state = recurrence_inputs(3, 1, seed=7)
    want_o, want_s = recurrence_reference(inputs, state)
    o, s = wkv_step(*(x[:, 0] for x in as_f32(inputs)), jnp.asarray(state, jnp.float32))
    np.testing.assert_allclose(o, want_o[:, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s, want_s, rtol=1e-5, atol=1e-5)


def test_identity_steps_leave_the_state_exact():
    """Zero inputs (how the block feeds padding) leave the state bit for bit, in both forms."""
    _, state = recurrence_inputs(2, 1, seed=3)
    state = jnp.asarray(state, jnp.float32)
    zeros = [jnp.zeros((2, 9, HEADS, N), jnp.float32)] * 6
    np.testing.assert_array_equal(wkv_chunked(*zeros, state, 4)[1], state)
    np.testing.assert_array_equal(wkv_step(*(z[:, 0] for z in zeros), state)[1], state)


# --- the whole model against the `rwkv` package ---

@pytest.fixture(scope="module")
def rwkv_setup(tmp_path_factory):
    cfg = chimera.load_config("rwkv7-tiny").replace(n_layers=4)
    model = chimera.build(cfg)
    params = model.init(jax.random.key(3))
    reference = rwkv_package_model(rwkv_state_dict(model, params), tmp_path_factory.mktemp("rwkv") / "tiny")
    return model, params, reference


def test_logits_match_the_rwkv_package(rwkv_setup):
    model, params, reference = rwkv_setup
    prompt = np.random.default_rng(0).integers(0, 256, 21)
    with torch.no_grad():
        want, ref_state = reference.forward(list(map(int, prompt)), None, full_output=True)
    assert rel_err(model.forward(params, prompt[None])[0], want) < 1e-4

    logits, state = model.extend(params, model.init_state(1, 32), prompt[None])
    assert rel_err(logits[0], want[-1]) < 1e-4
    for token in (5, 200, 17, 99):  # then one token at a time: the recurrent step
        with torch.no_grad():
            want, ref_state = reference.forward([token], ref_state)
        logits, state = model.extend(params, state, np.array([[token]]))
        assert rel_err(logits[0], want) < 1e-4
    assert int(np.argmax(logits[0])) == int(torch.argmax(want))
    # The matrix states themselves (the package keeps [H, N(v), N(k)] per layer, as we do).
    for i, layer_state in enumerate(state.layers):
        assert rel_err(layer_state["wkv"][0], ref_state[3 * i + 1]) < 1e-4


# --- the DESIGN.md invariants through a model ---

LENGTHS = np.array([21, 6, 13])


def assert_logits_close(ours, theirs):
    np.testing.assert_allclose(ours, theirs, rtol=2e-4, atol=2e-4 * np.abs(np.asarray(theirs)).max())


@pytest.fixture(scope="module")
def model_setup():
    return forward_setup(chimera.load_config("rwkv7-tiny"), batch=3, length=21)


def test_forward_is_not_degenerate(model_setup):
    *_, logits = model_setup
    assert np.isfinite(logits).all() and logits.std() > 0.1
    assert np.abs(logits[:, 1:] - logits[:, :-1]).max() > 0.1


@pytest.mark.parametrize("prompt", [1, 9])
def test_prompt_then_token_by_token_matches_forward(model_setup, prompt):
    check_prompt_then_decode(*model_setup, prompt, max_len=32, assert_logits=assert_logits_close)


def test_chunked_extend_matches_forward(model_setup):
    check_chunked_extend(*model_setup, sizes=(3, 13, 5), max_len=32, assert_logits=assert_logits_close)


def test_ragged_batch_matches_alone(model_setup):
    model, params, tokens, want = model_setup
    check_ragged_batch_matches_alone(model, params, tokens, want, LENGTHS, max_len=32, assert_logits=assert_logits_close)


def test_padding_is_inert(model_setup):
    model, params, tokens, _ = model_setup
    check_padding_is_inert(model, params, tokens, LENGTHS, max_len=32)


def test_engine_generate_matches_greedy_reference(model_setup, greedy_reference):
    model, params, *_ = model_setup
    check_engine_greedy(model, params, greedy_reference, new_tokens=8, max_len=32)


def test_state_is_float32_and_independent_of_max_len(model_setup):
    model = model_setup[0]
    d, h, n, layers = 64, 4, 16, 3
    per_layer = 4 * (d + h * n * n) + 4 * d  # time-mix shift + matrix state, channel-mix shift
    check_bounded_state(model, layers * per_layer, bound=1, max_lens=(8, 65536))
    state = jax.eval_shape(lambda: model.init_state(2, 8))
    assert {x.dtype for x in jax.tree.leaves((state.layers, state.ffn_layers))} == {jnp.dtype(jnp.float32)}


def test_bfloat16_model_runs_with_float32_state():
    model = chimera.build(chimera.load_config("rwkv7-tiny").replace(dtype="bfloat16"))
    params = model.init(jax.random.key(0))
    logits, state = model.extend(params, model.init_state(1, 16), np.arange(10)[None])
    assert np.isfinite(np.asarray(logits)).all()
    assert state.layers[0]["wkv"].dtype == jnp.float32


# --- configs ---

def test_value_residual_needs_an_earlier_source():
    cfg = chimera.load_config("rwkv7-tiny").to_dict()
    cfg["first_layers"] = []
    with pytest.raises(chimera.ConfigError, match=r"layers\[0\]\.mixer.*needs first_values"):
        chimera.ModelConfig.from_dict(cfg)


@pytest.mark.parametrize("field, value, message", [
    ("head_dim", 24, "must divide d_model"),
    ("chunk_size", 256, "must be <= 128"),
    ("value_lora", 0, "must be positive"),
])
def test_bad_config_names_the_field(field, value, message):
    cfg = chimera.load_config("rwkv7-tiny").to_dict()
    cfg["mixers"]["time_mix"][field] = value
    with pytest.raises(chimera.ConfigError, match=rf"mixers\.time_mix\.{field}.*{message}"):
        chimera.ModelConfig.from_dict(cfg)
