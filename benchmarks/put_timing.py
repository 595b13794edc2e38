"""How long placing a decode call's five per-call host inputs on a tensor=2 mesh takes (Engine.put's
way), issued and until ready: python benchmarks/put_timing.py (2 GPUs)."""
import time, numpy as np, jax
import chimera
from chimera.runtime.engine import Engine, STOP_SLOTS
mesh = chimera.make_mesh(tensor=2, devices=jax.devices()[:2])
from chimera.sharding.shardings import batch_sharding, replicated
from chimera.sharding.placement import place_array
host = dict(active=np.ones((1,), bool), row_ids=np.arange(1, dtype=np.int32), seed=np.int32(0),
            stop_tokens=np.full((STOP_SLOTS,), -1, np.int32), max_new=np.int32(128))
for repeat in range(5):
    start = time.perf_counter()
    placed = [place_array(v, batch_sharding(mesh, 1) if k in ("active", "row_ids") else replicated(mesh)) for k, v in host.items()]
    issued = time.perf_counter()
    jax.block_until_ready(placed)
    print(f"5 puts: issued {1e3 * (issued - start):.3f} ms, ready {1e3 * (time.perf_counter() - start):.3f} ms", flush=True)
