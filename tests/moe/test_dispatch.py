"""Dispatch vs a float64 reference that runs every expert on every token and masks by the
routing; the capacity rule vs a token-by-token re-statement of it."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chimera.moe import dispatch

N, K, E, D, F = 24, 2, 6, 8, 12


def experts(seed=0, e=E):
    rng = np.random.default_rng(seed)
    return {"w_gate": rng.normal(size=(e, D, F)) * D ** -0.5, "w_up": rng.normal(size=(e, D, F)) * D ** -0.5,
            "w_down": rng.normal(size=(e, F, D)) * F ** -0.5}


def routing(seed=0, n=N, k=K, e=E, skew=None):
    """Random distinct ids [n, k] (skew: every token's first choice is that expert), weights [n, k]."""
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.permutation(e)[:k] for _ in range(n)])
    if skew is not None:
        ids = np.stack([[skew] + [i for i in row if i != skew][:k - 1] for row in np.stack(
            [rng.permutation(e) for _ in range(n)])])
    return ids.astype(np.int32), rng.uniform(0.1, 1.0, (n, k)).astype(np.float32)


def reference(x, ids, weights, routed, w, activation=lambda h: h / (1 + np.exp(-h))):
    """Every expert on every token in float64, kept where the routing sends it."""
    x = np.asarray(x, np.float64)
    w = {name: np.asarray(v, np.float64) for name, v in w.items()}
    gate = np.einsum("nd,edf->enf", x, w["w_gate"])
    every = np.einsum("enf,efd->end", activation(gate) * np.einsum("nd,edf->enf", x, w["w_up"]), w["w_down"])
    mask = np.zeros((len(x), len(every)))  # [N, E]: the weight each token gives each expert
    for n, (row, row_weights, row_routed) in enumerate(zip(ids, weights, routed)):
        for e, weight, use in zip(row, row_weights, row_routed):
            mask[n, e] += weight * use
    return np.einsum("ne,end->nd", mask, every)


def as_jax(w):
    return {name: jnp.asarray(v, jnp.float32) for name, v in w.items()}


def check_dropless(grouped_matmul, ids, weights, routed, seed=0, tile_rows=None):
    x = np.random.default_rng(seed + 100).normal(size=(len(ids), D)).astype(np.float32)
    w = experts(seed)
    if tile_rows is None:
        y = dispatch.dropless(jnp.asarray(x), jnp.asarray(ids), jnp.asarray(weights), jnp.asarray(routed), as_jax(w),
                              "silu", grouped_matmul)
    else:  # the tiled matmul with a given tile, through the same sort and combine
        n_experts = E
        expert = dispatch.slot_major(jnp.asarray(ids), jnp.asarray(routed), n_experts)
        order, _, sizes = dispatch.rank_in_group(expert, n_experts)
        rows = jnp.tile(jnp.asarray(x), (ids.shape[1], 1))[order]
        out_sorted = dispatch.tiled_mlp(rows, sizes, as_jax(w), "silu", tile_rows)
        out = jnp.zeros_like(out_sorted).at[order].set(out_sorted)
        y = dispatch.combine(out, jnp.asarray(weights), jnp.asarray(routed), jnp.float32)
    np.testing.assert_allclose(y, reference(x, ids, weights, routed, w), rtol=1e-5, atol=1e-5)


GROUPED_MATMULS = ["ragged_dot", "tiled", "gather"]


@pytest.mark.parametrize("grouped_matmul", GROUPED_MATMULS)
def test_dropless_equals_every_expert_masked(grouped_matmul):
    ids, weights = routing(0)
    routed = np.random.default_rng(1).uniform(size=ids.shape) < 0.8  # some assignments not routed
    check_dropless(grouped_matmul, ids, weights, routed)


@pytest.mark.parametrize("grouped_matmul", GROUPED_MATMULS)
def test_dropless_all_to_one_expert(grouped_matmul):
    """The tiled layout's worst case: one expert gets every token."""
    ids, weights = routing(2, skew=3)
    check_dropless(grouped_matmul, ids, weights, np.ones(ids.shape, bool))


# One program for all three: each compile costs about a second on a 2-core CPU.
every_matmul = jax.jit(lambda *args: {name: dispatch.dropless(*args, "silu", name) for name in GROUPED_MATMULS})


@pytest.mark.parametrize("top_k", [1, 2])
def test_decode_sizes_every_matmul_equals_reference(top_k):
    """Decode steps: one token alone, and 1 to 5 valid tokens among 5 (the rest padding, never
    routed, as a decode batch with idle rows): gather, ragged_dot and tiled each equal the
    float64 reference, with two tokens routed to the same experts."""
    w = experts(top_k)
    cases = [(*routing(30, n=1, k=top_k), np.ones((1, top_k), bool))]
    ids, weights = routing(31, n=5, k=top_k)
    order = np.random.default_rng(32).permutation(5)  # valid tokens and padding interleaved
    for n_valid in range(1, 6):
        shared = ids.copy()
        shared[order[n_valid - 1]] = ids[order[0], ::-1]  # the first token's experts again (n_valid > 1)
        routed = np.broadcast_to(np.isin(np.arange(5), order[:n_valid])[:, None], ids.shape)  # [5, k]
        cases.append((shared, weights, routed))
    for ids, weights, routed in cases:
        x = np.random.default_rng(len(ids)).normal(size=(len(ids), D)).astype(np.float32)
        want = reference(x, ids, weights, routed, w)
        for name, y in every_matmul(x, ids, weights, routed, as_jax(w)).items():
            np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("tile_rows", [1, 3, 64])
def test_tiled_any_tile_size(tile_rows):
    ids, weights = routing(4, k=3)
    check_dropless("tiled", ids, weights, np.ones(ids.shape, bool), tile_rows=tile_rows)


def test_unrouted_rows_are_zero_not_garbage():
    """Rows of no expert come back zero from every grouped matmul, even for a NaN input row."""
    rows = jnp.asarray(np.random.default_rng(0).normal(size=(5, D)), jnp.float32).at[4].set(jnp.nan)
    expert = jnp.asarray([2, E, 0, 2, E], jnp.int32)
    for grouped_matmul in GROUPED_MATMULS:
        out = dispatch.expert_rows(rows, expert, as_jax(experts()), "silu", grouped_matmul)
        np.testing.assert_array_equal(out[1], 0)
        np.testing.assert_array_equal(out[4], 0)
        assert np.isfinite(out).all()


def test_expert_counts():
    ids, _ = routing(5)
    routed = np.random.default_rng(6).uniform(size=ids.shape) < 0.7
    counts = dispatch.expert_counts(jnp.asarray(ids), jnp.asarray(routed), E)
    np.testing.assert_array_equal(counts, np.bincount(ids[routed], minlength=E))


def keep_reference(ids, valid, capacity_factor):
    """The rule as documented: C = ceil(capacity_factor * n_valid * k / E); walk the slots in
    order, and the tokens in order within a slot; an assignment is kept while its expert has
    taken fewer than C."""
    n, k = ids.shape
    capacity = math.ceil(capacity_factor * valid.sum() * k / E)
    taken = np.zeros(E, int)
    keep = np.zeros((n, k), bool)
    for slot in range(k):
        for token in range(n):
            if valid[token] and taken[ids[token, slot]] < capacity:
                keep[token, slot] = True
                taken[ids[token, slot]] += 1
    return keep


@pytest.mark.parametrize("capacity_factor", [0.5, 1.0, 1.25, 4.0])
def test_capacity_keeps_exactly_what_the_rule_names(capacity_factor):
    ids, _ = routing(7, skew=1)  # expert 1 is everyone's first choice: it overflows
    valid = np.random.default_rng(8).uniform(size=N) < 0.75
    keep = np.asarray(dispatch.capacity_keep(jnp.asarray(ids), jnp.asarray(valid), E, capacity_factor))
    want = keep_reference(ids, valid, capacity_factor)
    np.testing.assert_array_equal(keep, want)
    assert not keep[~valid].any()
    if capacity_factor < 4.0:
        assert (~want & valid[:, None]).sum() > 0  # the case drops something
    else:
        assert (want == valid[:, None]).all()


def test_capacity_bound_covers_every_valid_count():
    """max_capacity(n) bounds what one expert keeps (at most one assignment per valid token),
    whatever the number of valid tokens; expert parallelism sizes its buffers by it."""
    for n, k, e, c in [(1, 2, 8, 1.0), (10, 2, 8, 1.0), (100, 8, 128, 1.25), (7, 1, 2, 10.0)]:
        bound = dispatch.max_capacity(n, k, e, c)
        for n_valid in range(n + 1):
            assert min(int(dispatch.capacity_limit(n_valid, k, e, c)), n_valid) <= bound


def test_dropped_assignments_contribute_zero():
    ids, weights = routing(9, skew=0)
    valid = np.ones(N, bool)
    keep = dispatch.capacity_keep(jnp.asarray(ids), jnp.asarray(valid), E, 1.0)
    check_dropless("ragged_dot", ids, weights, np.asarray(keep))


def test_jit_compatible():
    ids, weights = routing(10)
    x = jnp.asarray(np.random.default_rng(11).normal(size=(N, D)), jnp.float32)
    args = (x, jnp.asarray(ids), jnp.asarray(weights), jnp.ones(ids.shape, bool), as_jax(experts()))
    eager = dispatch.dropless(*args, "silu", "tiled")
    jitted = jax.jit(dispatch.dropless, static_argnums=(5, 6))(*args, "silu", "tiled")
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)


def test_auto_picks_by_row_count():
    """`auto` gathers exactly while rows <= experts (no more matrices read than all experts), then
    runs ragged_dot below AUTO_TILED_ROWS assignment rows and tiled from there (the measured
    crossover); explicit choices are kept whatever the size."""
    for n_experts in (2, 8, 256):
        for n_rows in range(1, 2 * n_experts):
            assert (dispatch.resolve("auto", n_rows, n_experts) == "gather") == (n_rows <= n_experts)
    assert dispatch.resolve("auto", 9, 8) == dispatch.resolve("auto", dispatch.AUTO_TILED_ROWS - 1, 8) == "ragged_dot"
    assert dispatch.resolve("auto", dispatch.AUTO_TILED_ROWS, 8) == "tiled"
    assert dispatch.resolve("tiled", 2, 8) == "tiled" and dispatch.resolve("ragged_dot", 10 ** 6, 8) == "ragged_dot"
    assert dispatch.resolve("gather", 10 ** 6, 8) == "gather"
