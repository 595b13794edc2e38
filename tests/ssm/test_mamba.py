"""Mamba-1: the mixer against a float64 numpy re-statement of the selective scan written from
the math, chunked prefill against the token-by-token recurrence, exact padding, its float32
state and costs, config errors, and the DESIGN.md invariants through a model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera
import chimera.ssm.mamba  # noqa: F401  (registers the `mamba` kind)
from chimera.runtime import costs
from chimera.ssm.mamba import Mamba
from mixer_harness import (assert_close, check_bounded_state, check_chunked_extend, check_engine_greedy,
                           check_padding_is_inert, check_prompt_then_decode, check_ragged_batch_matches_alone,
                           context, random_state, run, step)

D_MODEL, MAX_LEN = 16, 32

BLOCKS = {
    "plain": dict(d_state=8, d_conv=4, expand=2),
    # Jamba-style dt/B/C norms, in/out biases, no conv bias, a wider dt range (faster decay).
    "normed-biased": dict(d_state=4, d_conv=3, expand=3, dt_rank=3, dt_bc_norm=True, bias=True, conv_bias=False,
                          dt_min=0.01, dt_max=0.5),
}


def random_params(block, seed=1):
    """Random numpy params (no PRNG compiles): fan-in scaled weights, random biases and D,
    norm weights away from 1; A_log on the S4D grid log(1..N) jittered, and dt_bias the inverse
    softplus of a dt log-uniform in [dt_min, dt_max], as in `init` (sensible decay rates)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, leaf in jax.eval_shape(block.init, jax.random.key(0)).items():
        if name == "A_log":
            value = np.log(np.arange(1, block.d_state + 1)) + rng.uniform(-0.3, 0.3, leaf.shape)
        elif name == "dt_bias":
            dt = np.exp(rng.uniform(np.log(block.dt_min), np.log(block.dt_max), leaf.shape))
            value = dt + np.log(-np.expm1(-dt))
        elif name.endswith("bias"):
            value = rng.normal(0.0, 0.1, leaf.shape)
        elif name.endswith("norm"):
            value = rng.uniform(0.5, 1.5, leaf.shape)
        elif name == "D":
            value = rng.normal(0.0, 1.0, leaf.shape)
        else:  # [in, out] weights; conv_weight [K, E] sums over its K taps
            value = rng.normal(0.0, leaf.shape[0] ** -0.5, leaf.shape)
        params[name] = jnp.asarray(value, jnp.float32)
    return params


@pytest.fixture(scope="module", params=list(BLOCKS))
def setup(request):
    block = Mamba(d_model=D_MODEL, **BLOCKS[request.param])
    return block, random_params(block)


def silu(v):
    return v / (1.0 + np.exp(-v))


def reference(block, params, x):
    """One sequence x [T, D] from an empty state, float64 -> (y [T, D], conv tail [K-1, E]:
    the last K-1 conv inputs, h [E, N])."""
    p = {name: np.asarray(value, np.float64) for name, value in params.items()}
    x = np.asarray(x, np.float64)
    k, r, n = block.d_conv, block.dt_rank, block.d_state
    xi, z = x @ p["in_x"], x @ p["in_z"]  # [T, E]
    if block.bias:
        xi, z = xi + p["in_x_bias"], z + p["in_z_bias"]
    # Causal depthwise conv: out_t = sum_i w_i * x_{t-(K-1)+i}, zeros before the sequence.
    padded = np.concatenate([np.zeros((k - 1, xi.shape[1])), xi])  # [K-1+T, E]
    conv = np.stack([sum(p["conv_weight"][i] * padded[t + i] for i in range(k)) for t in range(len(x))])
    if block.conv_bias:
        conv = conv + p["conv_bias"]
    u = silu(conv)  # [T, E]
    proj = u @ p["x_proj"]
    dt, b, c = proj[:, :r], proj[:, r:r + n], proj[:, r + n:]
    if block.dt_bc_norm:
        def rms(v, w):
            return w * v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + block.norm_eps)
        dt, b, c = rms(dt, p["dt_norm"]), rms(b, p["B_norm"]), rms(c, p["C_norm"])
    dt = np.logaddexp(0.0, dt @ p["dt_proj"] + p["dt_bias"])  # softplus, [T, E]
    A = -np.exp(p["A_log"])  # [E, N]
    h, ys = np.zeros(A.shape), []
    for t in range(len(x)):  # h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t;  y_t = h_t C_t + D x_t
        h = np.exp(dt[t][:, None] * A) * h + (dt[t] * u[t])[:, None] * b[t][None, :]
        ys.append(h @ c[t] + p["D"] * u[t])
    y = np.stack(ys) * silu(z) @ p["out_proj"]
    if block.bias:
        y = y + p["out_bias"]
    return y, padded[len(x):], h


WIDE = 11  # every multi-token call is padded to this width


SCHEDULES = {  # calls of (tokens appended per row)
    "prefill": [[11, 2, 7]],  # ragged, one row shorter than the conv
    "prefill-then-decode": [[6, 2, 9]] + [[1, 1, 1]] * 5 + [[1, 0, 1], [0, 1, 1]],  # rows idle some steps
    "chunks": [[3, 0, 5], [9, 6, 2], [1, 1, 1], [5, 10, 4]],
}


@pytest.mark.parametrize("scan_chunk", [4, 256])  # 4 does not divide the width 11; 256: one chunk
@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=list(SCHEDULES))
def test_matches_reference(setup, schedule, scan_chunk):
    """Outputs at every valid position and the final state (conv tail, h) of each row, against
    the row alone from an empty state: so right-padded rows (garbage after their length) and
    rows idle for a call match their unpadded selves."""
    block, params = setup
    block = dataclasses.replace(block, scan_chunk=scan_chunk)
    full = np.random.default_rng(2).normal(size=(3, 20, D_MODEL)).astype(np.float32)
    ys, state, held = run(block, params, full, schedule, max_len=MAX_LEN, width=WIDE)
    assert state["conv"].dtype == state["ssm"].dtype == jnp.float32
    for b, n in enumerate(held):
        y_ref, tail_ref, h_ref = reference(block, params, full[b, :n])
        assert_close(ys[b, :n], y_ref)
        assert_close(state["conv"][b], tail_ref)
        assert_close(state["ssm"][b], h_ref)


@pytest.mark.parametrize("length, scan_chunk", [
    (2, 16),  # shorter than a chunk
    (5, 1),  # one token per chunk
    (8, 4),  # whole chunks
    (13, 3),  # a ragged last chunk
])
def test_prefill_matches_recurrence(setup, length, scan_chunk):
    """One chunked/parallel prefill of a prompt continuing a non-empty state == the same
    tokens one recurrent step at a time."""
    block, params = setup
    rng = np.random.default_rng(length)
    state = random_state(block, 2, rng)
    x = jnp.asarray(rng.normal(size=(2, length, D_MODEL)), jnp.float32)
    chunked = dataclasses.replace(block, scan_chunk=scan_chunk)
    y, prefilled = step(chunked)(params, x, state, context([7, 3], [length] * 2, length))
    stepped = state
    for t in range(length):  # T = 1: the recurrent step, whatever scan_chunk
        y_t, stepped = step(block)(params, x[:, t:t + 1], stepped, context([7 + t, 3 + t], [1, 1], 1))
        assert_close(y[:, t], np.asarray(y_t[:, 0], np.float64))
    for name in ("conv", "ssm"):
        assert_close(prefilled[name], np.asarray(stepped[name], np.float64))


@pytest.mark.parametrize("width", [1, WIDE])  # the recurrent step and the chunked scan
def test_padding_leaves_state_bit_identical(setup, width):
    """Over a random state, a row appending nothing keeps its conv tail and h bit for bit,
    whatever its (garbage) inputs; a right-padded row's state does not depend on the garbage."""
    block, params = setup
    block = dataclasses.replace(block, scan_chunk=4)
    rng = np.random.default_rng(3)
    state = random_state(block, 3, rng)
    lengths = [0, min(width, 6), 0]
    tokens = rng.normal(size=(lengths[1], D_MODEL))  # row 1's valid inputs, the same in both calls
    outs = []
    for seed in (4, 5):
        x = np.random.default_rng(seed).normal(size=(3, width, D_MODEL)) * 100  # large garbage
        x[1, :lengths[1]] = tokens
        _, new = step(block)(params, jnp.asarray(x, jnp.float32), state, context([5, 0, 2], lengths, width))
        outs.append(new)
        for name in ("conv", "ssm"):
            np.testing.assert_array_equal(np.asarray(new[name])[[0, 2]], np.asarray(state[name])[[0, 2]])
            assert (np.asarray(new[name])[1] != np.asarray(state[name])[1]).any()
    for name in ("conv", "ssm"):
        np.testing.assert_array_equal(np.asarray(outs[0][name]), np.asarray(outs[1][name]))


def test_state_stays_float32_under_bfloat16():
    """Recurrent state is float32 whatever the weights' dtype; a bf16 call stays near float32."""
    block = Mamba(d_model=D_MODEL, **BLOCKS["plain"])
    params = random_params(block)
    state = block.init_state(3, MAX_LEN, jnp.bfloat16)
    assert state["conv"].dtype == state["ssm"].dtype == jnp.float32
    x = jnp.asarray(np.random.default_rng(7).normal(size=(3, WIDE, D_MODEL)), jnp.float32)
    ctx = context([0, 0, 0], [WIDE] * 3, WIDE)
    y32, _ = step(block)(params, x, state, ctx)
    y16, s16 = step(block)(jax.tree.map(lambda p: p.astype(jnp.bfloat16), params), x.astype(jnp.bfloat16),
                           state, ctx)
    assert y16.dtype == jnp.bfloat16 and s16["conv"].dtype == s16["ssm"].dtype == jnp.float32
    assert np.linalg.norm(np.asarray(y16, np.float32) - y32) < 0.05 * np.linalg.norm(y32)


# --- state size, axes and costs ---

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_state_size_is_constant(dtype):
    block = Mamba(d_model=D_MODEL, d_state=8, d_conv=4, expand=2)
    for max_len in (1, 64, 1 << 20):
        state = jax.eval_shape(lambda n=max_len: block.init_state(3, n, dtype))
        assert state["conv"].shape == (3, 3, 32) and state["ssm"].shape == (3, 32, 8)
        assert state["conv"].dtype == state["ssm"].dtype == jnp.float32
    one = jax.eval_shape(lambda: block.init_state(1, 5, dtype))
    allocated = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(one))
    assert block.state_bytes(1, dtype) == block.state_bytes(1 << 20, dtype) == allocated == 4 * 32 * (3 + 8)
    assert block.decode_bytes(10, dtype) == 2 * allocated  # read whole, written whole
    assert block.flops_per_token(1) == block.flops_per_token(1 << 20) > 0


@pytest.mark.parametrize("fields", BLOCKS.values(), ids=list(BLOCKS))
def test_axes_cover_every_leaf(fields):
    block = Mamba(d_model=D_MODEL, **fields)
    for axes, tree in ((block.param_axes(), jax.eval_shape(block.init, jax.random.key(0))),
                       (block.state_axes(), jax.eval_shape(lambda: block.init_state(2, 8, jnp.float32)))):
        assert set(axes) == set(tree)
        for name, leaf in tree.items():
            assert len(axes[name]) == leaf.ndim, name


# --- configs ---

def config_with(**ssm):
    return {"name": "m", "vocab_size": 32, "d_model": 16, "n_layers": 1, "layers": [{"mixer": "ssm"}],
            "mixers": {"ssm": {"kind": "mamba", **ssm}}}


def test_dt_rank_defaults_to_ceil_d_model_over_16():
    assert Mamba(d_model=64).dt_rank == 4 and Mamba(d_model=65).dt_rank == 5 and Mamba(d_model=8).dt_rank == 1
    assert Mamba(d_model=64, dt_rank=7).dt_rank == 7


@pytest.mark.parametrize("field, value, message", [
    ("d_state", 0, "must be positive"),
    ("d_state", 2.5, "expected an integer"),
    ("d_conv", -1, "must be positive"),
    ("expand", 0, "must be positive"),
    ("dt_rank", 0, "must be positive"),
    ("scan_chunk", 0, "must be positive"),
    ("norm_eps", 0.0, "must be positive"),
    ("dt_min", 0.5, "greater than dt_max"),
    ("dt_bc_norm", "yes", "expected a bool"),
    ("d_inner", 64, "unknown field"),
])
def test_bad_config_names_the_field(field, value, message):
    with pytest.raises(chimera.ConfigError, match=message) as e:
        chimera.ModelConfig.from_dict(config_with(**{field: value}))
    assert str(e.value).startswith(f"mixers.ssm.{field}:"), str(e.value)


# --- the DESIGN.md invariants through a model ---

B, T = 3, 20


def model_params(model, seed=1):
    """Random numpy params for a Mamba-only model (jitting `model.init` costs seconds of compile)."""
    rng = np.random.default_rng(seed)
    cfg = model.config
    params = {"embed": jnp.asarray(rng.normal(size=(cfg.vocab_size, cfg.d_model)), jnp.float32),
              "final_norm": jnp.asarray(rng.uniform(0.5, 1.5, cfg.d_model), jnp.float32),
              "layers": [{"mixer_norm": jnp.asarray(rng.uniform(0.5, 1.5, cfg.d_model), jnp.float32),
                          "mixer": random_params(mixer, seed + i)} for i, (mixer, _) in enumerate(model.blocks)]}
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), params) == jax.tree.map(lambda x: (x.shape, x.dtype), shapes)
    return params


@pytest.fixture(scope="module")
def model_setup():
    # The preset with chunks of 8: a 20-token prefill crosses chunk boundaries.
    cfg = chimera.load_config("mamba-tiny").to_dict()
    cfg["mixers"]["ssm"]["scan_chunk"] = 8
    model = chimera.build(chimera.ModelConfig.from_dict(cfg))
    params = model_params(model)
    tokens = np.random.default_rng(0).integers(0, 256, (B, T)).astype(np.int32)
    return model, params, tokens, np.asarray(model.forward(params, tokens))


def test_preset():
    cfg = chimera.load_config("mamba-tiny")
    assert cfg.name == "mamba-tiny" and cfg.dtype == "float32" and cfg.vocab_size == 256 and cfg.d_model == 64
    assert cfg.n_layers == 2 and cfg.tie_embeddings
    for mixer, ffn in cfg.layer_blocks():
        assert mixer == Mamba(d_model=64, d_state=16, d_conv=4, expand=2) and ffn is None
    assert chimera.ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("prompt", [13, 3])
def test_prompt_then_token_by_token_matches_forward(model_setup, prompt):
    check_prompt_then_decode(*model_setup, prompt, max_len=64)


def test_chunked_extend_matches_forward(model_setup):
    check_chunked_extend(*model_setup, sizes=(3, 13, 4), max_len=64)  # 13 > scan_chunk, after a prefix


LENGTHS = np.array([T, 5, 13])


def test_ragged_batch_matches_alone(model_setup):
    """A ragged prompt batch gives each row its own logits and state; decoding on together
    (rows at different positions) still matches each row alone."""
    check_ragged_batch_matches_alone(*model_setup, LENGTHS, max_len=64)


def test_padding_is_inert(model_setup):
    """Two different garbage paddings give bit-identical logits (at valid positions) and states."""
    model, params, tokens, _ = model_setup
    check_padding_is_inert(model, params, tokens, LENGTHS, max_len=64)


def test_engine_generate_matches_greedy_reference(model_setup, greedy_reference):
    model, params, _, _ = model_setup
    outs = check_engine_greedy(model, params, greedy_reference, new_tokens=10, max_len=64)
    assert [o.finish_reason for o in outs] == ["length"] * 3


def test_model_state_size_does_not_depend_on_max_len(model_setup):
    model, _, _, _ = model_setup
    allocated = 2 * 128 * (3 + 16) * 4  # layers x E x (conv tail + d_state) x float32
    check_bounded_state(model, allocated, bound=1, max_lens=(16, 1 << 20))
    weights = costs.param_bytes(model)
    assert costs.decode_bytes_per_step(model, 2, 1000) == weights + 2 * 2 * allocated
