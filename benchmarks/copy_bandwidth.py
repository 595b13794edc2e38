"""The achievable memory bandwidth: a large device-to-device copy in JAX (bytes read + written)."""

import statistics
import time

import jax
import jax.numpy as jnp

x = jax.random.normal(jax.random.key(0), (1 << 30,), jnp.bfloat16)  # 2 GiB
copy = jax.jit(lambda a: a + jnp.bfloat16(1))
copy(x).block_until_ready()
times = []
for _ in range(10):
    start = time.perf_counter()
    copy(x).block_until_ready()
    times.append(time.perf_counter() - start)
seconds = statistics.median(times)
print(f"copy bandwidth on {jax.devices()[0].device_kind}: {2 * x.nbytes / seconds / 1e12:.2f} TB/s "
      f"({2 * x.nbytes / 1e9:.1f} GB in {seconds * 1e3:.2f} ms)")
