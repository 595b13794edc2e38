"""Moving values onto a mesh and back, in one process or several.

With several processes (multi-host), a sharding spans devices this process cannot address:
host values are then given to JAX shard by shard (every process holds the same full value,
e.g. params drawn from the same seed or prompts every process was given), and results are
read from this process's own copy of a replicated array.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Sharding


def place_array(x, sharding: Sharding) -> jax.Array:
    """`x` (a host or device array, the same on every process) laid out by `sharding`; `x` itself
    when it already is (from `init_sharded`, `load_checkpoint` or an earlier `place`): no copy."""
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if sharding.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, sharding)  # one process, or a global array JAX can reshard itself
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place(tree, shardings):
    """Every leaf of `tree` laid out by the sharding at the same place in `shardings`."""
    return jax.tree.map(place_array, tree, shardings)


def fetch(x: jax.Array) -> np.ndarray:
    """The value of `x` on the host: whole when this process addresses every shard, else its
    local copy, which is the whole value only for a replicated array."""
    if x.is_fully_addressable:
        return np.asarray(x)
    if not x.sharding.is_fully_replicated:
        raise ValueError(f"cannot read a {x.shape} array split over other processes' devices; replicate it first")
    return np.asarray(x.addressable_data(0))
