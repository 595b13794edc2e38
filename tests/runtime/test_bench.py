"""runtime/bench.py: its timed calls follow two warm-up calls of each program, with nothing compiled
after the first, and it reports what it timed."""

import jax
import pytest

import chimera
from chimera.runtime import bench
from chimera.runtime.engine import Engine

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@pytest.fixture
def compiles():
    """The backend compiles made while the test runs (a growing list)."""
    events = []

    def listen(event, seconds, **kwargs):
        if event == BACKEND_COMPILE:
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    yield events
    jax.monitoring.unregister_event_duration_listener(listen)


def test_timed_calls_follow_two_warm_up_calls_and_no_compile(compiles, monkeypatch):
    """On a GPU XLA runs a program's CUDA graphs uncaptured at its first call and records them at the
    second; loading any new program drops every recorded graph. So the timed calls come after two
    calls of each program and nothing compiles once the first has run (BENCHMARKS.md, session 18:
    np.min of a device array compiled a reduction there, and the timed calls ran uncaptured and
    recorded again)."""
    config = chimera.load_config("llama-tiny")
    params = chimera.build(config).init(jax.random.key(0))
    after_each = {"prefill": [], "decode": []}  # compiles made by the end of each call

    def spy(name):
        method = getattr(Engine, name)

        def call(self, *args, **kwargs):
            out = jax.block_until_ready(method(self, *args, **kwargs))
            after_each[name].append(len(compiles))
            return out
        return call

    for name in after_each:
        monkeypatch.setattr(Engine, name, spy(name))
    repeats = 3
    result = bench.bench_batch(config, params, batch=1, prompt_len=8, gen=4, repeats=repeats)
    compiled = after_each["decode"][0]  # by the end of the first decode call (the prefill's came before)
    assert compiled > 0
    for name, counts in after_each.items():
        assert len(counts) == 2 + repeats, name  # two warm-up calls, then the timed ones
        assert counts[1:] == [compiled] * (1 + repeats), name  # nothing compiled after the first decode call
    assert result.decode_ms_per_step > 0 and result.prefill_ms > 0
