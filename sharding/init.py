"""Random params for a mesh, for models larger than one device, never a whole model on one
device: `init_sharded` is `model.init(key)` bit for bit; `draw_params` draws the same
distributions in jitted programs, each device drawing its own slices (a llama-3-70b bench on
8 GPUs, compiles included, took ~3 minutes; with `init_sharded` on 4 GPUs, 590 s).

`model.init` draws layer by layer (`Model.init_layer`); `init_sharded` draws the same layers
with the same keys and splits each over the mesh as soon as it is drawn, so the default device
holds its own slices plus one layer's float32 draws at a time: for Llama-3-70B (141 GB in
bfloat16) 3.4 GB per layer, 8.4 GB for the embedding and LM head.

Why does `init_sharded` not jit each layer's init with `out_shardings`, as `draw_params` does?
Its values would not be `model.init`'s: within one program XLA rewrites floating point
across operations that eager execution compiles one by one. `normal(k, shape) * d ** -0.5`
becomes erf_inv(u) * (sqrt(2) * d ** -0.5), an ulp off in ~60% of the elements for a d that is
not a power of 4, and fused log/expm1 chains (Mamba's A_log and dt_bias, RWKV-7's decay) round
differently; optimization barriers do not survive to fusion on the CPU. A jitted `Model.init`
would avoid that but compiles ~5x slower on a CPU (a threefry per leaf and layer kind, where
eager execution compiles one per shape). Eager draws reuse one compiled program per op and
shape, so the 80 layers of a Llama compile nothing after the first.
"""

from __future__ import annotations

import functools

import jax
from jax.sharding import Mesh

from chimera.runtime.model import Model
from chimera.sharding.placement import place
from chimera.sharding.shardings import param_shardings


def init_sharded(model: Model, key, mesh: Mesh) -> dict:
    """`model.init(key)` (the same tree, dtypes and values, bit for bit), every leaf laid out by
    `param_shardings(model, mesh)`. Each process draws on its default device, one layer at a time."""
    shardings = param_shardings(model, mesh)
    keys = model.init_keys(key)  # [L + 2]: embed, lm_head, then one per layer, as `model.init` uses them
    outer = {name: s for name, s in shardings.items() if name != "layers"}
    params = jax.block_until_ready(place(model.init_outer(keys[0], keys[1]), outer))
    layers = []
    for (mixer, ffn), layer_key, layer_shardings in zip(model.blocks, keys[2:], shardings["layers"]):
        layer = place(model.init_layer(mixer, ffn, layer_key), layer_shardings)
        # Wait before drawing the next: dispatch is asynchronous, and Python running ahead would
        # queue many layers' float32 copies on the default device at once.
        layers.append(jax.block_until_ready(layer))
    params["layers"] = layers
    return params


def draw_params(model: Model, key, mesh: Mesh | None = None) -> dict:
    """Params with `model.init`'s tree, dtypes and distributions, but not its values (see the
    module's docstring): for benchmarks, where only shapes and magnitudes matter. Each layer kind
    is one jitted program; with a mesh its out_shardings make every device draw only its own
    slices (threefry is partitionable), so nothing travels between devices."""
    shardings = None if mesh is None else param_shardings(model, mesh)
    keys = model.init_keys(key)
    outer = None if mesh is None else {name: s for name, s in shardings.items() if name != "layers"}
    params = jax.jit(model.init_outer, out_shardings=outer)(keys[0], keys[1])
    draws = {}  # (mixer, ffn) -> jitted draw: blocks are frozen dataclasses, equal layers share one
    layers = []
    for index, ((mixer, ffn), layer_key) in enumerate(zip(model.blocks, keys[2:])):
        if (mixer, ffn) not in draws:
            out = None if mesh is None else shardings["layers"][index]
            draws[mixer, ffn] = jax.jit(functools.partial(model.init_layer, mixer, ffn), out_shardings=out)
        layers.append(draws[mixer, ffn](layer_key))
    params["layers"] = layers
    return jax.block_until_ready(params)
