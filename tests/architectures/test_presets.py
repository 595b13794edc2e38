"""Every bundled CPU-sized preset keeps the DESIGN.md invariants: a prompt then token-by-token
`extend` gives `forward`'s logits, and a ragged batch gives each row what it gives alone."""

import jax
import numpy as np
import pytest

import chimera

TINY = [name for name in chimera.list_presets() if name.endswith("-tiny")]
T = 24  # within h2o-tiny's budget, so its eviction (lossy by design) stays out of these invariants


@pytest.fixture(scope="module", params=TINY)
def preset(request):
    model = chimera.build(chimera.load_config(request.param))
    return model, model.init(jax.random.key(1))


def tokens(batch, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, T)).astype(np.int32)


def test_incremental_extend_equals_forward(preset):
    model, params = preset
    toks = tokens(2)
    full = np.asarray(model.forward(params, toks))
    state = model.init_state(2, T)
    logits, state = model.extend(params, state, toks[:, :9])
    np.testing.assert_allclose(logits, full[:, 8], rtol=1e-5, atol=1e-5)
    for t in range(9, T):
        logits, state = model.extend(params, state, toks[:, t:t + 1])
        np.testing.assert_allclose(logits, full[:, t], rtol=1e-5, atol=1e-5)


def test_ragged_batch_equals_each_row_alone(preset):
    model, params = preset
    toks, lengths = tokens(3, seed=1), np.array([T, 5, 13])
    logits, _ = model.extend(params, model.init_state(3, T), toks, lengths=lengths)
    for b, n in enumerate(lengths):
        alone, _ = model.extend(params, model.init_state(1, T), toks[b:b + 1, :n])
        np.testing.assert_allclose(logits[b], alone[0], rtol=1e-5, atol=1e-5)


def test_param_and_state_axes_name_every_dimension(preset):
    """Sharding reads these: one logical name (or None) per dimension of every leaf."""
    model, params = preset
    axes = model.param_axes()
    is_axes = lambda x: isinstance(x, tuple)  # noqa: E731
    assert jax.tree.structure(axes, is_leaf=is_axes) == jax.tree.structure(params)
    for names, leaf in zip(jax.tree.leaves(axes, is_leaf=is_axes), jax.tree.leaves(params)):
        assert len(names) == leaf.ndim
    state = model.init_state(2, T)
    for (mixer, _), layer_state in zip(model.blocks, state.layers):
        if hasattr(mixer, "state_axes"):
            state_axes = mixer.state_axes()
            assert jax.tree.structure(state_axes, is_leaf=is_axes) == jax.tree.structure(layer_state)
            for names, leaf in zip(jax.tree.leaves(state_axes, is_leaf=is_axes), jax.tree.leaves(layer_state)):
                assert len(names) == leaf.ndim and names[0] == "batch"
