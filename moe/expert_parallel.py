"""Expert parallelism: experts sharded over the mesh axis `expert`; each token's assignments
travel to the devices that own their experts (all-to-all), are computed there and travel back.

The MoE block takes this path when traced under a mesh (`with jax.set_mesh(mesh):`) whose
`expert` axis has more than one device. Inside `jax.shard_map`:
- tokens are split over the `data` and `expert` axes (padded with unrouted rows to a multiple);
- with P devices on `expert`, expert e lives on device e // (E / P); with a `tensor` axis each
  expert's d_ff is split over it as well (partial outputs, summed by a psum at the end);
- each device writes its routed assignments into a send buffer [P, S, D] (S rows for each
  destination: n_local * k, the worst case, or fewer when a capacity bounds what an expert
  receives), exchanged by one all_to_all; the receiver runs its experts' grouped MLPs over
  what arrived (`dispatch.expert_rows`), a second all_to_all returns the outputs, and the
  sender sums them with its router weights.
Routing happens before, over the whole batch, so a capacity keeps exactly what the local path
keeps; the result equals the local path's up to float summation order.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from chimera.moe.dispatch import GroupedMatmul, combine, expert_rows, rank_in_group, slot_major
from chimera.sharding.rules import partition_spec


def expert_mesh():
    """The (abstract) mesh being traced under, if its `expert` axis has more than one device."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or "expert" not in mesh.axis_names or mesh.shape["expert"] == 1:
        return None
    return mesh


def exchange(x, ids, weights, routed, experts, *, n_devices: int, send_rows: int, activation: str,
             grouped_matmul: GroupedMatmul, tensor_axis: str | None):
    """The per-device body: local tokens x [n, D], ids/weights/routed [n, k], this device's
    experts w_gate/w_up [E/P, D, F(/tp)], w_down [E/P, F(/tp), D] -> y [n, D]."""
    top_k = ids.shape[1]
    experts_per_device = experts["w_gate"].shape[0]
    destination = slot_major(ids // experts_per_device, routed, n_devices)  # [M = k * n], P: not sent
    _, rank, _ = rank_in_group(destination, n_devices)  # [M]: index among the rows to that destination
    sent = (destination < n_devices) & (rank < send_rows)  # send_rows bounds rank: a guard, not a drop
    slot = jnp.where(sent, destination * send_rows + rank, n_devices * send_rows)  # [M]
    rows = jnp.tile(x, (top_k, 1))  # [M, D] slot-major
    send = jnp.zeros((n_devices * send_rows, x.shape[1]), x.dtype).at[slot].set(rows, mode="drop")
    local_expert = slot_major(ids % experts_per_device, routed, experts_per_device)  # [M]
    send_expert = jnp.full((n_devices * send_rows,), experts_per_device, jnp.int32).at[slot].set(
        local_expert, mode="drop")

    def all_to_all(a):  # [P * S, ...]: block d goes to device d; block s of the result came from s
        return jax.lax.all_to_all(a, "expert", 0, 0, tiled=True)

    received, received_expert = all_to_all(send), all_to_all(send_expert)  # [P * S, D], [P * S]
    # `auto` weighs the whole receive buffer (P * S rows, empty ones too: its size is static)
    # against this device's E/P experts, so it gathers only where a matrix per buffer row is no
    # more than every local expert (on a GPU the empty rows then read nothing); an explicit
    # `gather` is exact here as well.
    out = expert_rows(received, received_expert, experts, activation, grouped_matmul)  # [P * S, D]
    returned = all_to_all(out)  # [P * S, D]: my rows, as computed by their experts' devices
    mine = jnp.take(returned, slot, axis=0, mode="fill", fill_value=0)  # [M, D]
    y = combine(mine, weights, routed, jnp.float32)  # [n, D]
    if tensor_axis is not None:  # partial sums over the d_ff shards
        y = jax.lax.psum(y, tensor_axis)
    return y.astype(x.dtype)


def dropless(x, ids, weights, routed, experts, activation: str, grouped_matmul: GroupedMatmul, mesh,
             rows_per_expert: int | None = None):
    """`dispatch.dropless` over the mesh: x [N, D], ids/weights/routed [N, k] -> y [N, D].
    rows_per_expert: a bound on the assignments any expert receives (a capacity), or None."""
    n_experts, _, d_ff = experts["w_gate"].shape
    n_devices = mesh.shape["expert"]
    if n_experts % n_devices:
        raise ValueError(f"expert parallelism: n_experts {n_experts} is not a multiple of the mesh's "
                         f"expert axis {n_devices}")
    token_axes = tuple(name for name in ("data", "expert") if name in mesh.axis_names)
    n_shards = math.prod(mesh.shape[name] for name in token_axes)
    n_tokens, top_k = ids.shape
    # Pin the routed rows to the batch rule (split over the batch axes where they divide the
    # rows, else whole, as a decode step's rows are held). Without this XLA propagates the padded
    # split below back into the router: at batch 1 it split the router's logits over their
    # experts instead, and a softmax and a top_k over a split axis cost 4 all-reduces per layer.
    rows = partition_spec(("batch",), (n_tokens,), mesh)  # the leading (row) axis; the rest whole
    x, ids, weights, routed = (jax.lax.with_sharding_constraint(a, rows) for a in (x, ids, weights, routed))
    pad = -n_tokens % n_shards
    x, ids, weights, routed = (jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))  # padding rows: routed False
                               for a in (x, ids, weights, routed))
    n_local = (n_tokens + pad) // n_shards
    send_rows = n_local * top_k
    if rows_per_expert is not None:
        send_rows = min(send_rows, rows_per_expert * (n_experts // n_devices))
    tensor_size = mesh.shape["tensor"] if "tensor" in mesh.axis_names else 1
    tensor_axis = "tensor" if tensor_size > 1 and d_ff % tensor_size == 0 else None  # else d_ff stays whole
    tokens = PartitionSpec(token_axes)
    expert_specs = {"w_gate": PartitionSpec("expert", None, tensor_axis),
                    "w_up": PartitionSpec("expert", None, tensor_axis),
                    "w_down": PartitionSpec("expert", tensor_axis, None)}
    body = functools.partial(exchange, n_devices=n_devices, send_rows=send_rows, activation=activation,
                             grouped_matmul=grouped_matmul, tensor_axis=tensor_axis)
    # check_vma=False: on a GPU `gather` is a Pallas call, whose outputs carry no varying-axes type
    y = jax.shard_map(body, mesh=mesh, in_specs=(tokens, tokens, tokens, tokens, expert_specs),
                      out_specs=tokens, check_vma=False)(x, ids, weights, routed, experts)
    return y[:n_tokens]
