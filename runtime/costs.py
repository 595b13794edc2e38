"""Analytic costs of a model: parameter and state bytes, bytes moved per decode step, FLOPs.

Blocks may state their own costs (`state_bytes(context, dtype)`, `decode_bytes(context,
dtype)` and `flops_per_token(context)` for mixers, `flops_per_token()` for ffns); a block
that doesn't is costed from its arrays: state = what `init_state` allocates, a decode step
reads it and rewrites it whole, FLOPs = 2 x its parameter count.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from chimera.runtime.model import Model, is_stateful


def tree_bytes(tree) -> int:
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def tree_size(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def param_shapes(model: Model):
    return jax.eval_shape(model.init, jax.random.key(0))


def param_bytes(model: Model) -> int:
    return tree_bytes(param_shapes(model))


def block_state_bytes(block, context: int, dtype) -> int:
    """Decode-state bytes of one sequence holding `context` tokens (a mixer or a stateful ffn)."""
    if hasattr(block, "state_bytes"):
        return block.state_bytes(context, dtype)
    return tree_bytes(jax.eval_shape(lambda: block.init_state(1, max(context, 1), dtype)))


def state_blocks(model: Model) -> list:
    """Every block that carries decode state: each layer's mixer and its stateful ffn."""
    return [mixer for mixer, _ in model.blocks] + [ffn for _, ffn in model.blocks if is_stateful(ffn)]


def state_bytes(model: Model, context: int) -> int:
    """Decode-state bytes per sequence at `context` tokens, summed over layers."""
    return sum(block_state_bytes(block, context, model.dtype) for block in state_blocks(model))


def decode_bytes_per_step(model: Model, batch: int, context: int) -> int:
    """The fewest bytes one decode step must move: every weight once (the embedding table
    only for the rows looked up, unless it is also the LM head; an MoE's experts only where a
    token goes, `touched_param_count`), plus each sequence's state traffic (`decode_bytes`: a
    KV cache is read and one token's slot written)."""
    params = param_shapes(model)
    weights = tree_bytes(params)
    itemsize = model.dtype.itemsize
    for (_, ffn), layer in zip(model.blocks, params["layers"]):
        if hasattr(ffn, "touched_param_count"):  # an MoE reads only the experts it routes to
            weights += round(ffn.touched_param_count(batch) * itemsize) - tree_bytes(layer["ffn"])
    if not model.config.tie_embeddings:
        embed = params["embed"]
        weights += batch * embed.shape[1] * embed.dtype.itemsize - tree_bytes(embed)
    per_sequence = 0
    for block in state_blocks(model):
        if hasattr(block, "decode_bytes"):
            per_sequence += block.decode_bytes(context, model.dtype)
        else:
            per_sequence += 2 * block_state_bytes(block, context, model.dtype)
    return weights + batch * per_sequence


def mixer_flops(mixer, mixer_params, context: int) -> float:
    """Forward FLOPs of one token through a mixer, attending over `context` tokens."""
    if hasattr(mixer, "flops_per_token"):
        return mixer.flops_per_token(context)
    return 2 * tree_size(mixer_params)


def ffn_flops(ffn, ffn_params) -> float:
    """Forward FLOPs of one token through a feed-forward (0 for a mixer-only layer)."""
    if ffn is None:
        return 0
    return ffn.flops_per_token() if hasattr(ffn, "flops_per_token") else 2 * tree_size(ffn_params)


def head_flops(model: Model) -> float:
    return 2 * model.config.d_model * model.config.vocab_size


def flops_per_token(model: Model, context: int, with_head: bool = True) -> float:
    """Forward FLOPs for one token that attends over `context` tokens."""
    params = param_shapes(model)
    total = sum(mixer_flops(mixer, layer["mixer"], context) + ffn_flops(ffn, layer.get("ffn"))
                for (mixer, ffn), layer in zip(model.blocks, params["layers"]))
    return total + (head_flops(model) if with_head else 0)


def prefill_flops(model: Model, batch: int, prompt_len: int) -> float:
    """FLOPs of a causal prefill that returns only the last token's logits: token t attends
    over t + 1 tokens (summed exactly: a window's cost is not linear in context)."""
    params = param_shapes(model)
    per_mixer: dict[int, float] = {}  # layers share block objects: cost each distinct one once
    body = 0.0
    for (mixer, ffn), layer in zip(model.blocks, params["layers"]):
        if id(mixer) not in per_mixer:
            per_mixer[id(mixer)] = float(sum(mixer_flops(mixer, layer["mixer"], t)
                                             for t in range(1, prompt_len + 1)))
        body += per_mixer[id(mixer)] + prompt_len * ffn_flops(ffn, layer.get("ffn"))
    return batch * (body + head_flops(model))
