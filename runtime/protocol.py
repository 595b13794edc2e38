"""The block protocol: registries of token mixers and feed-forwards, and the Context.

A token mixer is a frozen dataclass built from its YAML fields plus `d_model`:

    init(key) -> params pytree
    init_state(batch_size, max_len, dtype) -> state pytree, every leaf batch-major
    __call__(params, x [B,T,D], state, ctx) -> (y [B,T,D], new state)

Inside the Engine's programs on a GPU mesh split over `tensor`, a block's y may be a
`sharding.residual.Unreduced` (its output projection's partial products, from
`row_parallel_output`), which the model sums together with the residual add and the next norm;
code that computes with a block's output takes `sharding.residual.finished(y)` first.

A feed-forward is the same without state: `init(key)`, `__call__(params, x, ctx) -> y`.
A feed-forward that defines `init_state` carries state like a mixer (RWKV's channel-mix keeps
the previous token): `__call__(params, x, state, ctx) -> (y, new state)`; its state lives in
`DecodeState.ffn_layers`.
Optional: `param_axes()` / `state_axes()` (logical axis names per leaf, for sharding),
`state_bytes(context, dtype)` (decode-state bytes of one sequence holding `context`
tokens) and `flops_per_token(context)` (for benchmarks and comparisons).

Blocks may pass per-token values to later layers through the Context (RWKV-7's value
residual: the first layer's values reach every later layer). A block declares the Context
fields it needs in `context_needs` and those it sets in `context_provides` (tuples of field
names); a mixer that provides any returns `(y, new state, new ctx)`. The config checks that
every need is provided by an earlier layer.
"""

from __future__ import annotations

import dataclasses

import jax

MIXERS: dict[str, type] = {}
FFNS: dict[str, type] = {}


def _registrar(registry: dict[str, type], what: str):
    def register(name: str):
        def wrap(cls):
            if not dataclasses.is_dataclass(cls):
                raise TypeError(f"{what} {name!r}: {cls.__name__} must be a frozen dataclass")
            if name in registry and registry[name] is not cls:
                raise ValueError(f"{what} kind {name!r} is already registered by {registry[name].__name__}")
            registry[name] = cls
            return cls
        return wrap
    return register


register_mixer = _registrar(MIXERS, "mixer")
register_ffn = _registrar(FFNS, "ffn")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Context:
    """Per-token facts a block may need.

    positions: [B, T] int32, the absolute position of each token in its sequence.
    valid: [B, T] bool, False on padding; a mixer leaves state unchanged there.
    first_values: [B, T, ...] the values of the first value-residual layer (RWKV-7), set by
    that layer for the later ones; None until then.
    """
    positions: jax.Array
    valid: jax.Array
    first_values: jax.Array | None = None
