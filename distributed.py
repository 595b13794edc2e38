"""Multi-host runs through JAX's own runtime: one process per host (or per group of devices),
all running the same program; `jax.devices()` then lists every process's devices and a mesh
(`chimera.make_mesh`) spans them all.

Call `initialize` first thing, before anything runs on a device. Then every process builds
the same model, loads the same checkpoint (each reads only its own devices' slices) or draws
the same random params, and calls `Engine.generate` with the same prompts: each gets every
result.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: int | Sequence[int] | None = None,
               initialization_timeout: int = 300) -> None:
    """Join this process to a run of `num_processes` (`jax.distributed.initialize`).

    coordinator_address: "host:port" of process 0, which serves the coordination service;
    process_id: this process's index in [0, num_processes); local_device_ids: which of this
    host's accelerators it uses (default: all). On a cluster JAX detects (SLURM, Open MPI,
    Kubernetes, TPU pods) every argument may be left out. On CPU the cross-process
    collectives are JAX's gloo implementation.
    """
    # Older JAX left CPU collectives off ("none"); gloo carries them between processes.
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") == "none":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids,
                               initialization_timeout=initialization_timeout)


def shutdown() -> None:
    """Leave the run (also done at exit)."""
    jax.distributed.shutdown()
