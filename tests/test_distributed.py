"""Multi-host through JAX's runtime, on this machine: 2 processes x 4 CPU devices join one run
(`chimera.distributed.initialize`, gloo collectives), load a checkpoint straight into a mesh
spanning all 8 devices and decode over it; each must get the tokens one process decodes alone,
and the checkpoint they save together must hold the params bit for bit."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import chimera
from sharding_cases import MULTI_PROCESS_CASES, greedy_tokens, random_params

TESTS = Path(__file__).parent
TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_workers(folder: Path) -> list[dict]:
    """Start the 2 processes; each one's RESULT line."""
    port = free_port()
    # 4 devices each, compiled as this process compiles (tests/conftest.py's other XLA_FLAGS)
    flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
             if not flag.startswith("--xla_force_host_platform_device_count")]
    env = dict(os.environ, XLA_FLAGS=" ".join(["--xla_force_host_platform_device_count=4", *flags]),
               JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    script = str(TESTS / "sharding" / "distributed_worker.py")
    processes = [subprocess.Popen([sys.executable, script, str(port), str(i), "2", str(folder)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i in range(2)]
    try:
        logs = [process.communicate(timeout=TIMEOUT_S)[0] for process in processes]
    except subprocess.TimeoutExpired:
        pytest.fail(f"the 2 processes did not finish within {TIMEOUT_S} s")
    finally:
        for process in processes:
            process.kill()
    results = []
    for process, log in zip(processes, logs):
        lines = [line for line in log.splitlines() if line.startswith("RESULT ")]
        assert process.returncode == 0 and lines, f"worker failed (exit {process.returncode}):\n{log[-3000:]}"
        results.append(json.loads(lines[-1][len("RESULT "):]))
    return results


def test_two_processes_decode_as_one(tmp_path):
    cases = []
    for i, (preset, _) in enumerate(MULTI_PROCESS_CASES):
        model = chimera.build(chimera.load_config(preset))
        params = random_params(model)
        chimera.save_checkpoint(tmp_path / str(i) / "in", model, params)
        cases.append((preset, params, greedy_tokens(model, params)))

    results = run_workers(tmp_path)
    assert sorted(r["process"] for r in results) == [0, 1]
    assert all(r["devices"] == 8 and r["local_devices"] == 4 for r in results)
    for i, (preset, params, want) in enumerate(cases):
        assert all(r["tokens"][preset] == want for r in results)
        _, saved = chimera.load_checkpoint(tmp_path / str(i) / "out")  # written by both processes' shards
        for got, original in zip(jax.tree.leaves(saved), jax.tree.leaves(params)):
            np.testing.assert_array_equal(np.asarray(got), original)
