"""benchmarks/l2_prefetch.py (interpreted on the CPU): the touch reads the part of the weight it
is asked to, and a model patched with it decodes the same logits."""

import importlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera
from chimera.attention.attention import Attention

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


@pytest.fixture
def script(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    # use_touch patches the class: put it back afterwards
    monkeypatch.setattr(Attention, "project", Attention.project)
    monkeypatch.setattr(Attention, "output", Attention.output)
    return importlib.import_module("l2_prefetch")


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_touch_sums_the_first_fraction(script, fraction):
    w = jax.random.normal(jax.random.key(0), (64, 8, 128))  # 64 rows of 1024
    sums = script.touch(w, jnp.float32(3.0), programs=2, fraction=fraction)
    rows = int(64 * fraction) // 2 // script.TILE_ROWS * script.TILE_ROWS * 2
    np.testing.assert_allclose(float(sums.sum()), float(np.asarray(w).reshape(64, 1024)[:rows].sum()), rtol=1e-4)


def test_patched_model_decodes_the_same_logits(script):
    data = chimera.load_config("llama-tiny").to_dict()
    data["d_model"] = 256
    data["mixers"]["attn"] |= {"n_heads": 8, "head_dim": 64}  # o weight: 512 x 256, 128 rows of 1024
    model = chimera.build(chimera.ModelConfig.from_dict(data))
    params = model.init(jax.random.key(0))
    prompt = jnp.array([[5, 17, 42]], jnp.int32)

    def decode_two():
        state = model.init_state(1, 8)
        _, state = model.extend(params, state, prompt)
        first, state = model.extend(params, state, jnp.array([[7]], jnp.int32))
        return first, model.extend(params, state, jnp.array([[9]], jnp.int32))[0]

    expected = decode_two()
    script.use_touch(2, 1.0)
    model = chimera.build(model.config)  # fresh jits, traced with the patch
    got = decode_two()
    assert script.TRACED[0] > 0
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(e))
