"""How long placing a decode call's five per-call host inputs on a tensor=2 mesh takes by `Engine.put`
(an Engine of llama-tiny: placing does not depend on the model): the time until the five puts are
issued and until they are ready, five times (the first includes JAX's start).

    python benchmarks/put_timing.py   (2 GPUs)
"""

from __future__ import annotations

import time

import jax
import numpy as np

import chimera
from chimera.runtime.engine import STOP_SLOTS, Engine


def main():
    mesh = chimera.make_mesh(tensor=2, devices=jax.devices()[:2])
    model = chimera.build(chimera.load_config("llama-tiny"))
    engine = Engine(model, model.init(jax.random.key(0)), max_batch=1, max_len=64, mesh=mesh)
    host_inputs = dict(active=np.ones((1,), bool), row_ids=np.arange(1, dtype=np.int32), seed=np.int32(0),
                       stop_tokens=np.full((STOP_SLOTS,), -1, np.int32), max_new=np.int32(128))
    per_row = ("active", "row_ids")
    for _ in range(5):
        start = time.perf_counter()
        placed = [engine.put(value, per_row=name in per_row) for name, value in host_inputs.items()]
        issued = time.perf_counter()
        jax.block_until_ready(placed)
        ready = time.perf_counter()
        print(f"5 puts: issued {1e3 * (issued - start):.3f} ms, ready {1e3 * (ready - start):.3f} ms", flush=True)


if __name__ == "__main__":
    main()
