"""Device meshes with the axes chimera shards over: data, expert, tensor."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

AXES = ("data", "expert", "tensor")


def make_mesh(data: int = 1, expert: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A mesh of shape (data, expert, tensor) over `devices` (default: all, of every process),
    whose product must match their number. `tensor` is the innermost axis, so its devices are
    neighbours in `jax.devices()` order (the same host, where the links are fastest)."""
    sizes = {"data": data, "expert": expert, "tensor": tensor}
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"mesh axis {name} must be an integer >= 1, got {size!r}")
    devices = jax.devices() if devices is None else list(devices)
    if data * expert * tensor != len(devices):
        raise ValueError(f"mesh data={data} x expert={expert} x tensor={tensor} = {data * expert * tensor} "
                         f"devices, but {len(devices)} are available")
    # Auto axes: the compiler propagates shardings (jax.make_mesh would default to Explicit).
    return Mesh(np.asarray(devices).reshape(data, expert, tensor), AXES, axis_types=(AxisType.Auto,) * len(AXES))
