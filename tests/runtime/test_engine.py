"""`Engine.generate`: ragged batches, max_new_tokens, stop tokens, seeded sampling, input
errors and a one-device mesh, checked against a greedy loop over `model.forward`.

Prompts stay <= 16 tokens and max_new_tokens <= 16 so every call shares one prompt
bucket, one cache size (the engine's max_len) and one output bucket: few compiles.
"""

import jax
import numpy as np
import pytest

import chimera

MAX_BATCH, MAX_LEN, MAX_NEW = 4, 64, 10
PROMPTS = [list(map(int, np.random.default_rng(i).integers(0, 256, n))) for i, n in enumerate([5, 16, 1])]
GREEDY = chimera.Sampling(temperature=0.0)


@pytest.fixture(scope="module")
def setup():
    model = chimera.build(chimera.load_config("llama-tiny"))
    params = model.init(jax.random.key(0))
    return model, params, chimera.Engine(model, params, max_batch=MAX_BATCH, max_len=MAX_LEN)


@pytest.fixture(scope="module")
def expected(setup, greedy_reference):
    model, params, _ = setup
    return greedy_reference(model, params, PROMPTS, MAX_NEW)


def assert_greedy(outs, expected, n_new=MAX_NEW):
    assert [o.tokens for o in outs] == [e[:n_new] for e in expected]
    assert [o.finish_reason for o in outs] == ["length"] * len(expected)


def test_ragged_batch_matches_alone_and_forward_loop(setup, expected):
    _, _, engine = setup
    assert_greedy(engine.generate(PROMPTS, max_new_tokens=MAX_NEW, sampling=GREEDY), expected)
    for prompt, exp in zip(PROMPTS, expected):
        assert_greedy(engine.generate([prompt], max_new_tokens=MAX_NEW), [exp])


def test_prompt_order_does_not_matter(setup, expected):
    _, _, engine = setup
    order = [2, 0, 1]
    assert_greedy(engine.generate([PROMPTS[i] for i in order], max_new_tokens=MAX_NEW),
                  [expected[i] for i in order])


@pytest.mark.parametrize("n_new", [1, 2, 7])
def test_max_new_tokens(setup, expected, n_new):
    _, _, engine = setup
    outs = engine.generate(PROMPTS, max_new_tokens=n_new)
    assert all(len(o.tokens) == n_new for o in outs)
    assert_greedy(outs, expected, n_new)


def with_stops(expected, stops):
    """What each row should return: cut right after its first stop token, if any."""
    out = []
    for tokens in expected:
        hits = [i for i, t in enumerate(tokens) if t in stops]
        out.append((tokens[:hits[0] + 1], "stop") if hits else (tokens, "length"))
    return out


def pick_stop(expected, row, min_step):
    """A token `row` first generates at some step >= min_step and some other row never generates."""
    tokens = expected[row]
    for k in range(min_step, len(tokens)):
        if tokens[k] not in tokens[:k] and any(tokens[k] not in e for i, e in enumerate(expected) if i != row):
            return tokens[k], k
    pytest.fail(f"no usable stop token in {expected}")


@pytest.mark.parametrize("row, min_step", [(0, 3), (1, 0), (2, 5)])
@pytest.mark.parametrize("extra_stops", [(), (0, 255)])
def test_stop_token_truncates_that_row(setup, expected, row, min_step, extra_stops):
    _, _, engine = setup
    stop, k = pick_stop(expected, row, min_step)
    stops = (*extra_stops, stop)
    outs = engine.generate(PROMPTS, max_new_tokens=MAX_NEW, stop_tokens=stops)
    want = with_stops(expected, stops)
    assert [(o.tokens, o.finish_reason) for o in outs] == want
    assert outs[row].tokens == expected[row][:k + 1] and outs[row].finish_reason == "stop"
    assert any(reason == "length" for _, reason in want)  # other rows continue past it


def test_seeded_sampling_is_reproducible(setup, expected):
    _, _, engine = setup
    sampled = {}
    for seed in (0, 0, 1):
        sampling = chimera.Sampling(temperature=1.0, top_k=50, seed=seed)
        outs = engine.generate(PROMPTS, max_new_tokens=MAX_NEW, sampling=sampling)
        assert all(len(o.tokens) == MAX_NEW and all(0 <= t < 256 for t in o.tokens) for o in outs)
        sampled.setdefault(seed, []).append([o.tokens for o in outs])
    assert sampled[0][0] == sampled[0][1]
    assert sampled[0][0] != sampled[1][0]
    assert sampled[0][0] != expected  # temperature 1 over a random model is not greedy


def test_top_k_1_is_greedy(setup, expected):
    _, _, engine = setup
    outs = engine.generate(PROMPTS, max_new_tokens=MAX_NEW,
                           sampling=chimera.Sampling(temperature=1.0, top_k=1, seed=3))
    assert_greedy(outs, expected)


BAD_CALLS = {
    "token == vocab": (dict(prompts=[[1, 256]]), "vocabulary"),
    "negative token": (dict(prompts=[[1, 2], [-1]]), "vocabulary"),
    "empty prompt": (dict(prompts=[[1, 2], []]), "prompt 1 is empty"),
    "no prompts": (dict(prompts=[]), "non-empty"),
    "more prompts than max_batch": (dict(prompts=[[1]] * (MAX_BATCH + 1)), "max_batch"),
    "prompt + max_new > max_len": (dict(prompts=[[1] * (MAX_LEN - 5)], max_new_tokens=6), "max_len"),
    "max_new_tokens 0": (dict(max_new_tokens=0), "max_new_tokens"),
    "stop token == vocab": (dict(stop_tokens=(256,)), "stop token"),
    "negative stop token": (dict(stop_tokens=(3, -1)), "stop token"),
    "string prompts": (dict(prompts="hello"), "list"),
    "string as a prompt": (dict(prompts=[[1, 2], "hello"]), "prompt 1"),
}


@pytest.mark.parametrize("case", BAD_CALLS, ids=list(BAD_CALLS))
def test_bad_inputs_raise_and_engine_still_works(setup, expected, case):
    _, _, engine = setup
    kwargs, message = BAD_CALLS[case]
    kwargs = {"prompts": PROMPTS, "max_new_tokens": MAX_NEW, **kwargs}
    with pytest.raises(ValueError, match=message):
        engine.generate(**kwargs)
    assert_greedy(engine.generate(PROMPTS, max_new_tokens=MAX_NEW), expected)


def test_prompt_at_max_len_limit_is_accepted(setup, greedy_reference):
    """The boundary of the max_len check: prompt + max_new_tokens == max_len fits."""
    model, params, engine = setup
    prompt = [7] * (MAX_LEN - 3)
    outs = engine.generate([prompt], max_new_tokens=3)
    assert outs[0].tokens == greedy_reference(model, params, [prompt], 3)[0]


def test_engine_params_is_the_params_tree(setup):
    _, params, engine = setup
    assert jax.tree.structure(engine.params) == jax.tree.structure(params)
    for placed, original in zip(jax.tree.leaves(engine.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(placed), np.asarray(original))


def test_mesh_generation_equals_without(setup, expected):
    model, params, _ = setup
    mesh = chimera.make_mesh(data=1, expert=1, tensor=1, devices=jax.devices()[:1])
    engine = chimera.Engine(model, params, max_batch=MAX_BATCH, max_len=MAX_LEN, mesh=mesh)
    assert_greedy(engine.generate(PROMPTS, max_new_tokens=MAX_NEW), expected)
    assert jax.tree.structure(engine.params) == jax.tree.structure(params)
    for leaf in jax.tree.leaves(engine.params):
        assert isinstance(leaf.sharding, jax.sharding.NamedSharding) and leaf.sharding.mesh == mesh


def test_chunked_prefill_equals_one_shot(setup, greedy_reference):
    """Prompts longer than `prefill_chunk` are appended chunk by chunk, with the same result;
    a row whose prompt ends in an early chunk keeps the first token that chunk sampled."""
    model, params, _ = setup
    prompts = [list(range(1, 41)), [7, 8, 9], list(range(100, 117))]  # 40 > 2 chunks, 3, 17
    engine = chimera.Engine(model, params, max_batch=4, max_len=64, prefill_chunk=16)
    assert engine.pad_width(40) == 48
    outs = engine.generate(prompts, max_new_tokens=6)
    assert [o.tokens for o in outs] == greedy_reference(model, params, prompts, 6)


@pytest.mark.parametrize("chunk", [0, 8, 24])
def test_bad_prefill_chunk(setup, chunk):
    model, params, _ = setup
    with pytest.raises(ValueError, match="prefill_chunk"):
        chimera.Engine(model, params, prefill_chunk=chunk)


@pytest.fixture(scope="module")
def chunked_engine(setup):
    model, params, _ = setup
    return chimera.Engine(model, params, max_batch=MAX_BATCH, max_len=MAX_LEN, decode_chunk=4)


@pytest.mark.parametrize("n_new", [1, 3, 4, 9, MAX_NEW])
def test_decode_chunk_equals_step_by_step(chunked_engine, expected, n_new):
    """K steps per chunk while every row has K tokens left, then one at a time: the same
    tokens for any max_new_tokens (below, equal to, not a multiple of K)."""
    assert_greedy(chunked_engine.generate(PROMPTS, max_new_tokens=n_new), expected, n_new)


@pytest.mark.parametrize("row, min_step", [(0, 2), (1, 5)])
def test_decode_chunk_stops_inside_a_chunk(chunked_engine, expected, row, min_step):
    """A stop token met mid-chunk ends that row there; the other rows go on."""
    stop, _ = pick_stop(expected, row, min_step)
    outs = chunked_engine.generate(PROMPTS, max_new_tokens=MAX_NEW, stop_tokens=(stop,))
    assert [(o.tokens, o.finish_reason) for o in outs] == with_stops(expected, (stop,))


def test_decode_chunk_every_row_stopped_mid_chunk(chunked_engine, expected):
    """When every row has stopped, the chunk's remaining steps run masked and change nothing."""
    tokens = expected[0]
    k = next(i for i in range(1, len(tokens)) if tokens[i] not in tokens[:i])  # inside the first chunk
    assert k < 4
    outs = chunked_engine.generate(PROMPTS[:1], max_new_tokens=MAX_NEW, stop_tokens=(tokens[k],))
    assert (outs[0].tokens, outs[0].finish_reason) == (tokens[:k + 1], "stop")


def test_decode_chunk_sampling_equals_step_by_step(setup, chunked_engine):
    _, _, engine = setup
    sampling = chimera.Sampling(temperature=1.0, top_k=50, seed=5)
    assert ([o.tokens for o in chunked_engine.generate(PROMPTS, max_new_tokens=MAX_NEW, sampling=sampling)]
            == [o.tokens for o in engine.generate(PROMPTS, max_new_tokens=MAX_NEW, sampling=sampling)])


@pytest.mark.parametrize("chunk", [0, -2, 1.5, True])
def test_bad_decode_chunk(setup, chunk):
    model, params, _ = setup
    with pytest.raises(ValueError, match="decode_chunk"):
        chimera.Engine(model, params, decode_chunk=chunk)


def test_compiler_options_reach_the_decode_program(setup, expected):
    """Engine(compiler_options=...) compiles the decode loop with them: an option XLA does not
    know fails that compile (so they are passed, not dropped); {} generates as the default."""
    model, params, _ = setup
    plain = chimera.Engine(model, params, max_batch=MAX_BATCH, max_len=MAX_LEN, compiler_options={})
    assert plain.decode_options(1) == {}
    assert chimera.Engine(model, params, compiler_options={"xla_gpu_graph_min_graph_size": 3}).decode_options(4) == {
        "xla_gpu_graph_min_graph_size": 3}
    assert chimera.Engine(model, params).decode_options(1) == {}  # chimera's defaults: none on the CPU
    assert_greedy(plain.generate(PROMPTS, max_new_tokens=MAX_NEW), expected)
    bad = chimera.Engine(model, params, max_batch=MAX_BATCH, max_len=MAX_LEN,
                         compiler_options={"xla_no_such_option": 1})
    with pytest.raises(Exception, match="xla_no_such_option"):
        bad.generate(PROMPTS, max_new_tokens=MAX_NEW)
    with pytest.raises(ValueError, match="compiler_options"):
        chimera.Engine(model, params, compiler_options="xla_gpu_graph_min_graph_size=1")


@pytest.mark.parametrize("mixing", ["0", "1", None])
def test_engine_waits_for_its_inputs_when_nccl_graph_mixing_is_off(setup, expected, monkeypatch, mixing):
    """With NCCL_GRAPH_MIXING_SUPPORT=0 an Engine on a mesh waits for each program's state before
    calling it (no graph of its own runs when XLA's uncaptured first call does); otherwise it does
    not wait. Tokens are the same either way."""
    model, params, _ = setup
    if mixing is None:
        monkeypatch.delenv("NCCL_GRAPH_MIXING_SUPPORT", raising=False)
    else:
        monkeypatch.setenv("NCCL_GRAPH_MIXING_SUPPORT", mixing)
    waited = []
    block_until_ready = jax.block_until_ready
    monkeypatch.setattr(jax, "block_until_ready", lambda x: waited.append(x) or block_until_ready(x))
    mesh = chimera.make_mesh(data=1, expert=1, tensor=1, devices=jax.devices()[:1])
    engine = chimera.Engine(model, params, max_batch=MAX_BATCH, max_len=MAX_LEN, mesh=mesh)
    assert_greedy(engine.generate(PROMPTS, max_new_tokens=MAX_NEW), expected)
    states = [x[0] for x in waited if isinstance(x, tuple) and isinstance(x[0], chimera.DecodeState)]
    assert len(states) == (2 if mixing == "0" else 0)  # one prefill chunk, then the decode loop
