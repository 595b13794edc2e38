"""benchmarks/per_call.py on the CPU: each mode times calls that decode every token asked for, and
`zero_row_below` (benchmarks/decode_loop.py) multiplies as `runtime.linear` does only below its size."""

import importlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera
import chimera.attention.attention
import chimera.attention.mla
import chimera.moe.mlp
import chimera.sharding.all_reduce
from chimera.runtime.engine import Engine

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


@pytest.fixture
def scripts(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for module in (chimera.attention.attention, chimera.attention.mla, chimera.moe.mlp, chimera.sharding.all_reduce):
        monkeypatch.setattr(module, "linear", module.linear)  # zero_row_below replaces it
    return importlib.import_module("per_call"), importlib.import_module("decode_loop")


@pytest.mark.parametrize("mode", ["keep", "fresh", "pinned", "host"])
def test_each_mode_times_full_calls(scripts, mode):
    per_call, _ = scripts
    config = chimera.load_config("llama-tiny")
    model = chimera.build(config)
    engine = Engine(model, model.init(jax.random.key(0)), max_batch=2, max_len=64)
    seconds = per_call.time_calls(engine, config, batch=2, prompt_len=5, gen=6, repeats=2, mode=mode)
    assert 0 < seconds < 60


def test_zero_row_below_pads_only_small_weights(scripts, monkeypatch):
    """Weights of fewer elements than asked go through `runtime.linear.linear` (the zero row), the
    others through the plain einsum; both give the product."""
    _, decode_loop = scripts
    padded = []
    linear = decode_loop.linear
    monkeypatch.setattr(decode_loop, "linear", lambda spec, x, w: padded.append(w.size) or linear(spec, x, w))
    decode_loop.zero_row_below(100)
    product = chimera.moe.mlp.linear
    assert product is chimera.attention.attention.linear is chimera.attention.mla.linear is chimera.sharding.all_reduce.linear
    x = jax.random.normal(jax.random.key(1), (1, 1, 8))
    for w in (jax.random.normal(jax.random.key(2), (8, 4)), jax.random.normal(jax.random.key(3), (8, 16))):
        np.testing.assert_allclose(product("btd,df->btf", x, w), jnp.einsum("btd,df->btf", x, w), rtol=1e-6)
    assert padded == [32]
