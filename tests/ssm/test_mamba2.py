"""Mamba-2 (SSD): the block against a float64 numpy re-statement of the recurrence written from
the math (projection, causal conv + SiLU, softplus/clamped dt, h_t = exp(dt A) h + dt x B^T,
y = C h + D x, group-wise gated RMSNorm), chunked prefill against its own token-by-token
step, padding that leaves the state bit-identical, its float32 state and costs, configs,
and the DESIGN.md invariants through a model built with `ModelConfig.from_dict`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera
import chimera.ssm.mamba2  # noqa: F401  (registers the `mamba2` kind)
from chimera.runtime import costs
from chimera.ssm.mamba2 import Mamba2
from mixer_harness import (assert_close, check_bounded_state, check_chunked_extend, check_engine_greedy,
                           check_padding_is_inert, check_prompt_then_decode, check_ragged_batch_matches_alone,
                           context, forward_setup, random_state, run, step)

D_MODEL, MAX_LEN = 32, 64

BLOCKS = {  # d_inner = 64 = n_heads x head_dim
    "groups": dict(n_heads=4, head_dim=16, d_state=8, n_groups=2),
    # a clamping dt_limit, biases, no conv bias, a 3-tap conv, the norm before the gate
    "limits-bias": dict(n_heads=8, head_dim=8, d_state=4, n_groups=1, d_conv=3, dt_limit=(0.02, 0.1),
                        bias=True, conv_bias=False, norm_before_gate=True),
    # one head per group, no gated norm (y * silu(z))
    "ungated": dict(n_heads=4, head_dim=16, d_state=8, n_groups=4, gated_norm=False),
}


def make_block(name, chunk_size):
    return Mamba2(d_model=D_MODEL, chunk_size=chunk_size, **BLOCKS[name])


def random_params(block, seed=1):
    """Random numpy params: decays exp(dt A) between ~0.4 and ~1 (memory well past the conv),
    non-trivial norms, skips and biases."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(block.init, jax.random.key(0))
    h = block.n_heads
    dt = np.exp(rng.uniform(np.log(0.005), np.log(0.2), h))
    special = {
        "dt_bias": dt + np.log(-np.expm1(-dt)),  # softplus^-1(dt)
        "a_log": np.log(rng.uniform(0.5, 8.0, h)),
        "d_skip": rng.normal(size=h),
        "norm": rng.uniform(0.5, 1.5, block.d_inner),
    }
    params = {}
    for name, s in shapes.items():
        if name in special:
            value = special[name]
        elif name.endswith("bias"):
            value = rng.normal(size=s.shape) * 0.1
        else:  # in_proj [D, E], conv_weight [K, C], out_proj [Di, D]: fan-in scaling
            value = rng.normal(size=s.shape) * s.shape[0] ** -0.5
        params[name] = jnp.asarray(value, jnp.float32)
    return params


def reference(block, params, x, tail=None, h=None):
    """One sequence x [T, D] from (conv tail [K-1, C], SSM state [H, P, N]) (zeros if None),
    token by token in float64 -> (y [T, D], conv tail, SSM state)."""
    p = {name: np.asarray(value, np.float64) for name, value in params.items()}
    x = np.asarray(x, np.float64)
    T, K = len(x), block.d_conv
    H, P, G, N, Di = block.n_heads, block.head_dim, block.n_groups, block.d_state, block.d_inner
    proj = x @ p["in_proj"] + (p["in_proj_bias"] if block.bias else 0)
    z, xbc, dt = np.split(proj, [Di, Di + block.conv_dim], axis=-1)

    # The conv sees the previous K-1 inputs then the sequence; tap K-1 weighs the token itself.
    window = np.concatenate([np.zeros((K - 1, block.conv_dim)) if tail is None else tail, xbc])
    conv = sum(window[k:k + T] * p["conv_weight"][k] for k in range(K))
    conv = conv + (p["conv_bias"] if block.conv_bias else 0)
    xbc = conv / (1 + np.exp(-conv))  # SiLU
    xs, b, c = np.split(xbc, [Di, Di + G * N], axis=-1)
    xs = xs.reshape(T, H, P)
    b = np.repeat(b.reshape(T, G, N), H // G, axis=1)  # [T, H, N]: head h reads group h // (H / G)
    c = np.repeat(c.reshape(T, G, N), H // G, axis=1)

    dt = np.logaddexp(0, dt + p["dt_bias"])  # softplus
    low, high = block.dt_limit
    dt = np.clip(dt, low, np.inf if high is None else high)
    A = -np.exp(p["a_log"])
    h = np.zeros((H, P, N)) if h is None else np.asarray(h, np.float64)
    y = np.zeros((T, H, P))
    for t in range(T):
        h = np.exp(dt[t] * A)[:, None, None] * h + dt[t][:, None, None] * xs[t][:, :, None] * b[t][:, None, :]
        y[t] = np.einsum("hpn,hn->hp", h, c[t]) + p["d_skip"][:, None] * xs[t]
    y = y.reshape(T, Di)

    gate = z / (1 + np.exp(-z))
    if block.gated_norm:
        if not block.norm_before_gate:
            y = y * gate
        yg = y.reshape(T, G, -1)
        y = (yg / np.sqrt(np.mean(yg ** 2, axis=-1, keepdims=True) + block.norm_eps)).reshape(T, Di) * p["norm"]
        if block.norm_before_gate:
            y = y * gate
    else:
        y = y * gate
    out = y @ p["out_proj"] + (p["out_proj_bias"] if block.bias else 0)
    return out, window[len(window) - (K - 1):], h


WIDE = 11  # every multi-token call is padded to this width: one compile per block


SCHEDULES = {  # calls of (tokens appended per row)
    "prefill": [[11, 3, 7]],  # ragged, across chunks
    "prefill-then-decode": [[6, 2, 9]] + [[1, 1, 1]] * 4 + [[1, 0, 1], [0, 1, 1]],  # rows idle some steps
    "chunks": [[3, 0, 5], [9, 6, 2], [1, 1, 1], [5, 10, 4]],  # prefills from a non-empty state
}
CASES = [("groups", 4), ("limits-bias", 5), ("ungated", 2)]  # none divides the calls' width 11


@pytest.mark.parametrize("name, chunk_size", CASES, ids=[f"{n}-chunk{c}" for n, c in CASES])
@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=list(SCHEDULES))
def test_matches_reference(name, chunk_size, schedule):
    """Outputs at every valid position and the final conv tail and SSM state, for chunk sizes
    that divide a call's length, do not, and exceed it."""
    block = make_block(name, chunk_size)
    params = random_params(block)
    full = np.random.default_rng(2).normal(size=(3, 20, D_MODEL)).astype(np.float32)
    ys, state, held = run(block, params, full, schedule, max_len=MAX_LEN, width=WIDE)
    assert state["conv"].shape == (3, block.d_conv - 1, block.conv_dim)
    assert state["ssm"].shape == (3, block.n_heads, block.head_dim, block.d_state)
    for b, n in enumerate(held):
        y_ref, tail_ref, h_ref = reference(block, params, full[b, :n])
        assert_close(ys[b, :n], y_ref)
        assert_close(state["conv"][b], tail_ref)
        assert_close(state["ssm"][b], h_ref)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 32])
def test_chunked_prefill_equals_recurrence(chunk_size):
    """One prefill of 20 tokens (and ragged rows of 13 and 0), from a random incoming state,
    gives the outputs and state of 20 recurrent steps, for chunks that divide the length, do
    not, and exceed it."""
    block = make_block("groups", chunk_size)
    params = random_params(block)
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(3, 20, D_MODEL)), jnp.float32)
    state = random_state(block, 3, rng)
    lengths, starts = np.array([20, 13, 0]), np.array([4, 9, 2])
    y, prefilled = step(block)(params, x, state, context(starts, lengths, 20))
    recurrent = make_block("groups", 4)  # the step does not depend on the chunk: one compile
    stepped = state
    for t in range(20):
        y_t, stepped = step(recurrent)(params, x[:, t:t + 1], stepped, context(starts + t, lengths > t, 1))
        for b in range(3):
            if t < lengths[b]:
                assert_close(y[b, t], y_t[b, 0])
    for name in ("conv", "ssm"):
        assert_close(prefilled[name], stepped[name])
        np.testing.assert_array_equal(np.asarray(prefilled[name][2]), np.asarray(state[name][2]))


@pytest.mark.parametrize("width", [1, WIDE])
def test_padding_leaves_state_bit_identical(width):
    """Over a garbage state: a row appending nothing keeps its conv tail and SSM state
    bit-identical (prefill and decode paths); a row appending 2 tokens keeps the old tail's
    last row bit-identical, shifted in front of its 2 new inputs; a call of all padding
    changes nothing."""
    block = make_block("groups", 4)
    params = random_params(block)
    rng = np.random.default_rng(3)
    state = random_state(block, 3, rng)
    x = jnp.asarray(rng.normal(size=(3, width, D_MODEL)) * 100, jnp.float32)  # large garbage
    lengths = np.array([min(2, width), 0, width])
    _, new = step(block)(params, x, state, context([2, 7, 0], lengths, width))
    for name in ("conv", "ssm"):
        np.testing.assert_array_equal(np.asarray(new[name][1]), np.asarray(state[name][1]))
        assert (np.asarray(new[name])[[0, 2]] != np.asarray(state[name])[[0, 2]]).reshape(2, -1).any(axis=1).all()
    kept = 3 - lengths[0]  # old tail rows still in the tail
    np.testing.assert_array_equal(np.asarray(new["conv"][0, :kept]), np.asarray(state["conv"][0, 3 - kept:]))
    xbc = np.asarray(x[0, :lengths[0]], np.float64) @ np.asarray(params["in_proj"], np.float64)
    assert_close(new["conv"][0, kept:], xbc[:, block.d_inner:block.d_inner + block.conv_dim])

    _, same = step(block)(params, x, state, context([2, 7, 0], [0, 0, 0], width))
    for name in ("conv", "ssm"):
        np.testing.assert_array_equal(np.asarray(same[name]), np.asarray(state[name]))


def test_right_padded_rows_equal_each_row_alone():
    """From random incoming states, a right-padded ragged batch gives each row the outputs
    and state it gets appended alone, unpadded (a different chunking of its tokens)."""
    block = make_block("groups", 4)
    params = random_params(block)
    rng = np.random.default_rng(6)
    lengths = np.array([18, 7, 1])
    x = jnp.asarray(rng.normal(size=(3, 18, D_MODEL)), jnp.float32)
    state = random_state(block, 3, rng)
    y, new = step(block)(params, x, state, context([0, 5, 9], lengths, 18))
    for b, n in enumerate(lengths):
        alone = jax.tree.map(lambda s: s[b:b + 1], state)
        y_alone, new_alone = step(block)(params, x[b:b + 1, :n], alone, context([0], [n], n))
        assert_close(y[b, :n], y_alone[0])
        for name in ("conv", "ssm"):
            assert_close(new[name][b], new_alone[name][0])
        # and both are the float64 recurrence from that incoming state
        y_ref, tail_ref, h_ref = reference(block, params, x[b, :n], state["conv"][b], state["ssm"][b])
        assert_close(y[b, :n], y_ref)
        assert_close(new["conv"][b], tail_ref)
        assert_close(new["ssm"][b], h_ref)


# --- state size and costs ---

@pytest.mark.parametrize("max_len", [1, 64, 65536])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_state_is_float32_and_independent_of_max_len(max_len, dtype):
    block = make_block("groups", 4)
    state = jax.eval_shape(lambda: block.init_state(2, max_len, dtype))
    assert state["conv"].shape == (2, 3, 64 + 2 * 2 * 8) and state["conv"].dtype == jnp.float32
    assert state["ssm"].shape == (2, 4, 16, 8) and state["ssm"].dtype == jnp.float32
    one = jax.eval_shape(lambda: block.init_state(1, max_len, dtype))
    allocated = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(one))
    assert block.state_bytes(max_len, dtype) == block.state_bytes(1, dtype) == allocated
    assert block.decode_bytes(max_len, dtype) == 2 * allocated  # read whole, written whole
    assert block.flops_per_token(1) == block.flops_per_token(max_len) > 2 * D_MODEL * 3 * 64


def test_axes_cover_every_leaf():
    for name in BLOCKS:
        block = make_block(name, 4)
        params = jax.eval_shape(block.init, jax.random.key(0))
        axes = block.param_axes()
        assert set(axes) == set(params)
        assert all(len(axes[k]) == params[k].ndim for k in params)
        state = jax.eval_shape(lambda: block.init_state(1, 8, jnp.float32))
        assert {k: len(v) for k, v in block.state_axes().items()} == {k: v.ndim for k, v in state.items()}


# --- configs ---

CONFIG = {
    "name": "mamba2-test",
    "vocab_size": 256,
    "d_model": 64,
    "n_layers": 2,
    "tie_embeddings": True,
    "layers": [{"mixer": "ssm"}],
    "mixers": {"ssm": {"kind": "mamba2", "n_heads": 8, "head_dim": 16, "d_state": 16, "n_groups": 2,
                       "chunk_size": 8}},
}


def config_with(**ssm):
    cfg = {**CONFIG, "mixers": {"ssm": {**CONFIG["mixers"]["ssm"], **ssm}}}
    return {**cfg, "mixers": {"ssm": {k: v for k, v in cfg["mixers"]["ssm"].items() if v is not None}}}


@pytest.mark.parametrize("field, value, named, message", [  # named: the field the error names
    ("n_groups", 3, "n_groups", "does not divide n_heads 8"),
    ("n_groups", 0, "n_groups", "must be positive"),
    ("n_heads", 4, "n_heads", "must equal d_inner"),
    ("head_dim", 24, "n_heads", "must equal d_inner"),  # n_heads x head_dim checked as one
    ("expand", 3, "n_heads", "must equal d_inner"),
    ("expand", 2.5, "expand", "expected an integer"),
    ("d_state", -1, "d_state", "must be positive"),
    ("d_state", None, "d_state", "is required"),
    ("chunk_size", 0, "chunk_size", "must be positive"),
    ("d_conv", 0, "d_conv", "must be positive"),
    ("norm_eps", 0.0, "norm_eps", "must be positive"),
    ("dt_limit", [0.1, 0.05], "dt_limit", "needs 0 <= min < max"),
    ("dt_limit", [-0.1, None], "dt_limit", "needs 0 <= min < max"),
    ("dt_limit", [0.0], "dt_limit", "must be \\[min, max\\]"),
    ("dt_limit", [None, 1.0], "dt_limit", "must be \\[min, max\\]"),
    ("dt_min", 0.5, "dt_min", "is above dt_max"),
])
def test_bad_config_names_the_field(field, value, named, message):
    with pytest.raises(chimera.ConfigError, match=message) as e:
        chimera.ModelConfig.from_dict(config_with(**{field: value}))
    assert str(e.value).startswith(f"mixers.ssm.{named}:"), str(e.value)


def test_n_heads_defaults_and_dt_limit_forms(tmp_path):
    """n_heads defaults to d_inner // head_dim (head_dim must divide it); an unbounded dt max
    is null in YAML, .inf or inf alike, and the config round-trips through YAML."""
    mixer = chimera.ModelConfig.from_dict(config_with(n_heads=None)).mixer_blocks["ssm"]
    assert mixer.n_heads == 8 and mixer.dt_limit == (0.0, None)
    with pytest.raises(chimera.ConfigError, match="mixers.ssm.head_dim: 24 does not divide"):
        chimera.ModelConfig.from_dict(config_with(n_heads=None, head_dim=24))
    for limit in ([0.0, None], [0.0, float("inf")], (0.0, float("inf"))):
        assert chimera.ModelConfig.from_dict(config_with(dt_limit=limit)).mixer_blocks["ssm"] == mixer
    path = tmp_path / "m.yaml"
    path.write_text("name: m\nvocab_size: 16\nd_model: 8\nn_layers: 1\nlayers: [{mixer: s}]\n"
                    "mixers: {s: {kind: mamba2, head_dim: 4, d_state: 2, dt_limit: [0.001, .inf]}}\n")
    cfg = chimera.ModelConfig.from_yaml(path)
    assert cfg.mixer_blocks["s"].dt_limit == (0.001, None) and cfg.mixer_blocks["s"].n_heads == 4
    cfg.to_yaml(path)
    assert chimera.ModelConfig.from_yaml(path) == cfg


@pytest.mark.parametrize("preset, shapes", [
    ("mamba2-tiny", dict(n_heads=8, head_dim=16, d_state=16, n_groups=2, chunk_size=8)),
    ("mamba2-2.7b", dict(n_heads=80, head_dim=64, d_state=128, n_groups=1, chunk_size=256)),
])
def test_presets(preset, shapes):
    cfg = chimera.load_config(preset)
    assert chimera.ModelConfig.from_dict(cfg.to_dict()) == cfg
    (mixer,) = cfg.mixer_blocks.values()
    assert type(mixer) is Mamba2 and cfg.ffns == {} and cfg.tie_embeddings
    assert {k: getattr(mixer, k) for k in shapes} == shapes and mixer.expand == 2 and mixer.d_conv == 4
    if preset == "mamba2-2.7b":  # state-spaces/mamba2-2.7b: ~2.7e9 parameters, bf16
        assert (cfg.d_model, cfg.n_layers, cfg.vocab_size, cfg.dtype) == (2560, 64, 50288, "bfloat16")
        n_params = costs.param_bytes(chimera.build(cfg)) // 2
        assert 2.6e9 < n_params < 2.8e9


# --- the DESIGN.md invariants through a model ---

B, T = 3, 20  # sequences of 20 tokens through chunks of 8


@pytest.fixture(scope="module")
def model_setup():
    return forward_setup(chimera.ModelConfig.from_dict(CONFIG), B, T)


def assert_logits_close(actual, expected):
    # Logits of ~N(0, 8^2) (tied, unit-variance embeddings): chunked vs recurrent float32 sums.
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-5, atol=1e-4)


def test_forward_is_not_degenerate(model_setup):
    """The state carries information past the conv window: changing the first token moves the
    last token's logits."""
    model, params, tokens, reference = model_setup
    assert reference.std() > 1 and len(np.unique(reference.argmax(-1))) > 10
    changed = tokens.copy()
    changed[:, 0] = (changed[:, 0] + 1) % 256
    moved = np.abs(np.asarray(model.forward(params, changed))[:, -1] - reference[:, -1]).max(-1)
    assert (moved > 1e-3).all()


@pytest.mark.parametrize("prompt", [13, 3])  # across a chunk boundary, and within one chunk
def test_prompt_then_token_by_token_matches_forward(model_setup, prompt):
    check_prompt_then_decode(*model_setup, prompt, max_len=64, assert_logits=assert_logits_close)


def test_chunked_extend_matches_forward(model_setup):
    # 13 is not a multiple of the chunk of 8, and starts mid-sequence
    check_chunked_extend(*model_setup, sizes=(3, 13, 4), max_len=64, assert_logits=assert_logits_close)


LENGTHS = np.array([T, 5, 13])


def test_ragged_batch_matches_alone(model_setup):
    """A ragged prompt batch gives each row its own logits and state; decoding on together
    (rows at different positions) still matches each row alone."""
    check_ragged_batch_matches_alone(*model_setup, LENGTHS, max_len=64, assert_logits=assert_logits_close)


def test_padding_is_inert(model_setup):
    """Two different garbage paddings give bit-identical logits (at valid positions) and states."""
    model, params, tokens, _ = model_setup
    check_padding_is_inert(model, params, tokens, LENGTHS, max_len=64)


def test_engine_generate_matches_greedy_reference(model_setup, greedy_reference):
    model, params, _, _ = model_setup
    outs = check_engine_greedy(model, params, greedy_reference, new_tokens=12, max_len=64)
    assert [o.finish_reason for o in outs] == ["length"] * 3


def test_model_state_does_not_depend_on_max_len(model_setup):
    conv_dim = 128 + 2 * 2 * 16
    allocated = 2 * (3 * conv_dim + 8 * 16 * 16) * 4  # layers x (conv tail + SSM state) x float32
    check_bounded_state(model_setup[0], allocated, bound=1, max_lens=(16, 65536))
