"""Shared test helpers."""

import importlib.metadata
import os

# jax reads XLA_FLAGS when its first backend starts, not on import: this helper may come first
from chimera.runtime.gpu_options import as_xla_flags, xla_flags_error

# Sharding tests need several devices; on the CPU JAX makes them only if told before its backend
# starts, so this must run before any test touches a device. The suite's time is nearly all XLA
# compiling tiny programs: LLVM at -O0 compiles them a third faster, and XLA's elemental CPU
# emitters for fusions (xla_cpu_use_fusion_emitters=false) rather than its MLIR ones a third
# faster again (the whole suite on 2 cores: 688 s -> 459 s). Both choose how XLA generates code
# for the same HLO programs; every comparison is between programs compiled alike, or against a
# reference with a tolerance.
TEST_OPTIONS = {"xla_force_host_platform_device_count": 8, "xla_backend_optimization_level": 0}
ELEMENTAL_EMITTERS = {"xla_cpu_use_fusion_emitters": False}
# jaxlibs whose XLA was seen to parse ELEMENTAL_EMITTERS. XLA drops options between releases,
# and one it cannot parse in XLA_FLAGS aborts the process: any other jaxlib is asked first.
ELEMENTAL_EMITTERS_JAXLIBS = ("0.10.2",)

if "XLA_FLAGS" not in os.environ:
    fast = TEST_OPTIONS | ELEMENTAL_EMITTERS
    known = importlib.metadata.version("jaxlib") in ELEMENTAL_EMITTERS_JAXLIBS
    os.environ["XLA_FLAGS"] = " ".join(as_xla_flags(fast if known or not xla_flags_error(fast) else TEST_OPTIONS))

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
