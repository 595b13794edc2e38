"""Shared test helpers."""

import os

# Sharding tests need several devices; on the CPU JAX makes them only if told before it
# starts, so this must run before anything imports jax. The suite's time is nearly all XLA
# compiling tiny programs: LLVM at -O0 compiles them a third faster (the same IEEE arithmetic;
# every comparison is between programs compiled alike, or against a reference with a tolerance).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def _greedy_reference(model, params, prompts, n_new):
    """Greedy decoding with no cache: re-run `forward` over each growing sequence.

    Sequences sit right-padded in one fixed-width buffer (one compile); forward is causal,
    so the padding after a sequence cannot change the logits of its last token.
    """
    seqs = [list(p) for p in prompts]
    width = max(map(len, prompts)) + n_new
    for _ in range(n_new):
        buf = np.zeros((len(seqs), width), np.int32)
        for i, s in enumerate(seqs):
            buf[i, :len(s)] = s
        logits = np.asarray(model.forward(params, buf))
        for i, s in enumerate(seqs):
            s.append(int(np.argmax(logits[i, len(s) - 1])))
    return [s[len(p):] for s, p in zip(seqs, prompts)]


@pytest.fixture(scope="session")
def greedy_reference():
    """greedy_reference(model, params, prompts, n_new) -> the new tokens of each prompt."""
    return _greedy_reference
