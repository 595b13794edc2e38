"""A user-written token mixer, defined here only, plugs into configs, the model and the
Engine through the block protocol with no other change."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera


@chimera.register_mixer("test_ema")
@dataclasses.dataclass(frozen=True)
class EMA:
    """An exponential moving average over tokens: h_t = decay * h_{t-1} + (1 - decay) * x_t W_in,
    y_t = h_t W_out. Its state is the running average, one vector per sequence."""
    d_model: int
    decay: float = 0.9

    def init(self, key):
        k_in, k_out = jax.random.split(key)
        d = self.d_model
        return {"w_in": jax.random.normal(k_in, (d, d)) * d ** -0.5,
                "w_out": jax.random.normal(k_out, (d, d)) * d ** -0.5}

    def init_state(self, batch_size, max_len, dtype):
        return {"h": jnp.zeros((batch_size, self.d_model), jnp.float32)}  # recurrent state stays float32

    def __call__(self, params, x, state, ctx):
        u = (x @ params["w_in"]).astype(jnp.float32)  # [B, T, D]

        def step(h, inputs):
            u_t, valid_t = inputs  # [B, D], [B]
            h = jnp.where(valid_t[:, None], self.decay * h + (1 - self.decay) * u_t, h)  # padding: unchanged
            return h, h

        h, hs = jax.lax.scan(step, state["h"], (u.swapaxes(0, 1), ctx.valid.swapaxes(0, 1)))
        y = hs.swapaxes(0, 1).astype(x.dtype) @ params["w_out"]  # [B, T, D]
        return y, {"h": h}


CONFIG = {
    "name": "ema-hybrid",
    "vocab_size": 64,
    "d_model": 32,
    "n_layers": 3,  # ema, attn, ema
    "layers": [{"mixer": "ema", "ffn": "mlp"}, {"mixer": "attn", "ffn": "mlp"}],
    "mixers": {
        "ema": {"kind": "test_ema", "decay": 0.5},
        "attn": {"kind": "attention", "n_heads": 4, "n_kv_heads": 2, "head_dim": 8},
    },
    "ffns": {"mlp": {"kind": "mlp", "d_ff": 64}},
}
B, T, MAX_LEN = 3, 10, 16


@pytest.fixture(scope="module")
def setup():
    model = chimera.build(chimera.ModelConfig.from_dict(CONFIG))
    return model, model.init(jax.random.key(0))


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, CONFIG["vocab_size"], (B, T)).astype(np.int32)


def assert_close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_config_builds_the_user_block(setup):
    model, params = setup
    kinds = [type(mixer).__name__ for mixer, _ in model.blocks]
    assert kinds == ["EMA", "Attention", "EMA"]
    assert model.blocks[0][0] == EMA(d_model=32, decay=0.5)
    assert set(params["layers"][0]["mixer"]) == {"w_in", "w_out"}
    state = model.init_state(B, MAX_LEN)
    assert state.layers[0]["h"].shape == (B, 32) and state.layers[0]["h"].dtype == jnp.float32


def test_forward_equals_incremental_extend(setup, tokens):
    model, params = setup
    reference = np.asarray(model.forward(params, tokens))
    state = model.init_state(B, MAX_LEN)
    logits, state = model.extend(params, state, tokens[:, :4], all_logits=True)
    assert_close(logits, reference[:, :4])
    for t in range(4, T):
        logits, state = model.extend(params, state, tokens[:, t:t + 1])
        assert_close(logits, reference[:, t])


def test_ragged_batch_equals_alone(setup, tokens):
    model, params = setup
    lengths = np.array([T, 3, 7])
    garbage = np.random.default_rng(1).integers(0, CONFIG["vocab_size"], (B, T))
    padded = np.where(np.arange(T)[None, :] < lengths[:, None], tokens, garbage).astype(np.int32)
    logits, state = model.extend(params, model.init_state(B, MAX_LEN), padded, lengths)
    nxt = tokens[:, :1]
    next_logits, _ = model.extend(params, state, nxt)
    for b, n in enumerate(lengths):
        alone_logits, alone = model.extend(params, model.init_state(1, MAX_LEN), tokens[b:b + 1, :n])
        assert_close(logits[b], alone_logits[0])
        # The EMA state stopped at the row's last valid token, not at the padding.
        assert_close(state.layers[0]["h"][b], alone.layers[0]["h"][0])
        alone_next, _ = model.extend(params, alone, nxt[b:b + 1])
        assert_close(next_logits[b], alone_next[0])


def test_engine_generates_with_the_user_block(setup, greedy_reference):
    model, params = setup
    prompts = [[1, 2, 3, 4, 5], [9], [60, 61, 62]]
    engine = chimera.Engine(model, params, max_batch=4, max_len=32)
    outs = engine.generate(prompts, max_new_tokens=8)
    assert [o.tokens for o in outs] == greedy_reference(model, params, prompts, 8)
    assert all(o.finish_reason == "length" for o in outs)


def with_ema(**fields):
    return {**CONFIG, "mixers": {**CONFIG["mixers"], "ema": {"kind": "test_ema", **fields}}}


@pytest.mark.parametrize("fields, field", [
    (dict(decay=0.5, foo=1), "mixers.ema.foo"),
    (dict(decay="fast"), "mixers.ema.decay"),
    (dict(decay=True), "mixers.ema.decay"),  # a bool is not a number here
    (dict(d_model=16), "mixers.ema.d_model"),  # set by the model, not the config
])
def test_bad_fields_raise_config_error(fields, field):
    with pytest.raises(chimera.ConfigError) as error:
        chimera.ModelConfig.from_dict(with_ema(**fields))
    assert error.value.field == field
    assert str(error.value).startswith(field)


def test_int_decay_is_accepted_as_float():
    cfg = chimera.ModelConfig.from_dict(with_ema(decay=1))
    assert cfg.layer_blocks()[0][0].decay == 1.0 and isinstance(cfg.layer_blocks()[0][0].decay, float)
