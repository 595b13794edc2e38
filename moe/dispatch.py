"""Dispatch: run each (token, expert) assignment through its expert's gated MLP and combine.

The N*k assignments of N tokens routed to k experts each are laid out slot-major:
assignment a = slot * N + token (every token's first choice, then every second choice, ...).
A stable sort by expert orders each expert's rows by (slot, token).

Dropless (`dropless`): every routed assignment is computed; the rows sorted by expert go
through the experts as grouped matmuls, come back to slot-major order and are summed with
the router weights. Three grouped matmuls, chosen by name:
- `ragged_dot`: `jax.lax.ragged_dot` with the per-expert group sizes;
- `tiled`: each expert's rows padded to whole tiles of `tile_rows`, one tile at a time
  through its own expert's weights (`lax.scan`); tiles past the used ones are skipped;
- `gather`: each row through its own expert's weights, so it reads M expert matrices (an
  expert two rows go to is read twice), not all E: on a GPU by a Pallas kernel that reads them
  in place and skips rows of no expert (`grouped_matvec.py`), elsewhere gathered into copies
  ([M, D, F]) for one batched matmul;
- `auto` (the default), from static shapes: `gather` while M <= E, since then the matrices
  it reads are never more than the E experts ragged_dot reads (on an H100 it read all 8 of
  Mixtral's for one token, BENCHMARKS.md), and fewer where rows repeat an expert or are
  padding (an expert-parallel receive buffer is sized for the worst case: at batch 1 over
  expert=2, 4 rows for 4 local experts, at most 2 of them routed). M counts every row.
  Past M = E, `ragged_dot` below AUTO_TILED_ROWS rows and `tiled` from there. Measured on
  an H100 (BENCHMARKS.md, Mixtral's 8 x 4096 x 14336 experts, top 2): ragged_dot was faster
  at 2 to 1024 rows (1.2 vs 1.3 ms, 1.7 vs 5.5 ms, 4.1 vs 5.2 ms), tiled at 8192 rows
  (11.2 vs 29.8 ms); the switch sits between those sizes, where nothing was measured.

Capacity (`capacity_keep`): expert e takes at most C = ceil(capacity_factor * n_valid * k / E)
assignments (n_valid: valid tokens): the first C in (slot, token) order, i.e. all first
choices before any second choice and, within a slot, earlier tokens (flattened [B, T] order)
first. The rest are dropped and contribute zero; the kept ones run through `dropless` (any
grouped matmul: a dropped assignment is a row of no expert, as padding is).
Padding tokens are never routed: they take no capacity and appear in no count.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp

from chimera.moe import grouped_matvec
from chimera.moe.mlp import ACTIVATIONS

GroupedMatmul = Literal["auto", "ragged_dot", "tiled", "gather"]
MAX_TILE_ROWS = 512
AUTO_TILED_ROWS = 4096


def slot_major(values, routed, fill):
    """values [N, k] -> [k * N] in assignment order (slot-major), `fill` where not routed."""
    return jnp.where(routed, values, fill).T.reshape(-1)  # [k * N]


def rank_in_group(groups, n_groups: int):
    """groups [M] int in [0, n_groups] (n_groups: in none) -> (order [M]: a stable sort by group,
    rank [M]: each element's index among its group's elements, in the original order,
    sizes [n_groups]: elements per group)."""
    order = jnp.argsort(groups, stable=True)  # [M]
    sorted_groups = groups[order]  # [M]
    sizes = jnp.bincount(groups, length=n_groups + 1)  # [G + 1]
    starts = jnp.cumsum(sizes) - sizes  # [G + 1]
    rank_sorted = jnp.arange(groups.shape[0]) - starts[sorted_groups]  # [M]
    rank = jnp.zeros_like(rank_sorted).at[order].set(rank_sorted)  # [M]
    return order, rank, sizes[:n_groups].astype(jnp.int32)


def expert_counts(ids, routed, n_experts: int):
    """ids [N, k], routed [N, k] bool -> assignments routed to each expert [E] int32."""
    return jnp.bincount(slot_major(ids, routed, n_experts), length=n_experts + 1)[:n_experts].astype(jnp.int32)


def capacity_limit(n_valid, top_k: int, n_experts: int, capacity_factor: float):
    """C = ceil(capacity_factor * n_valid * k / E) (in float32), the most assignments one expert takes."""
    return jnp.ceil(capacity_factor * n_valid * top_k / n_experts).astype(jnp.int32)


def max_capacity(n_tokens: int, top_k: int, n_experts: int, capacity_factor: float) -> int:
    """A static bound on what one expert keeps of n_tokens (at most one assignment per token):
    capacity_limit for every n_valid <= n_tokens, with one to spare for its float32 rounding."""
    return min(n_tokens, math.ceil(capacity_factor * n_tokens * top_k / n_experts) + 1)


def capacity_keep(ids, valid, n_experts: int, capacity_factor: float):
    """ids [N, k], valid [N] -> keep [N, k] bool: the assignments the capacity rule keeps
    (the first C of each expert in (slot, token) order; padding is never kept)."""
    n_tokens, top_k = ids.shape
    routed = jnp.broadcast_to(valid[:, None], ids.shape)  # [N, k]
    _, rank, _ = rank_in_group(slot_major(ids, routed, n_experts), n_experts)  # [k * N]
    limit = capacity_limit(valid.sum(), top_k, n_experts, capacity_factor)
    return routed & (rank.reshape(top_k, n_tokens).T < limit)  # [N, k]


# --- grouped gated MLPs: rows [M, D] sorted by expert, group_sizes [E] -> [M, D] ---

def row_groups(group_sizes, n_rows: int):
    """group_sizes [E] -> the group of each of n_rows rows sorted by group [M], E past the groups."""
    return jnp.searchsorted(jnp.cumsum(group_sizes), jnp.arange(n_rows), side="right")


def ragged_dot_mlp(rows, group_sizes, experts, activation: str):
    """Rows past sum(group_sizes) come out as garbage or zero; callers mask them."""
    gate = jax.lax.ragged_dot(rows, experts["w_gate"], group_sizes)  # [M, F]
    up = jax.lax.ragged_dot(rows, experts["w_up"], group_sizes)  # [M, F]
    return jax.lax.ragged_dot(ACTIVATIONS[activation](gate) * up, experts["w_down"], group_sizes)  # [M, D]


def default_tile_rows(n_rows: int, n_experts: int) -> int:
    """A power of two near the mean rows per expert, at most MAX_TILE_ROWS: one row per tile
    in decode (each tile reads one expert), full tiles in prefill."""
    mean = -(-n_rows // n_experts)
    return min(MAX_TILE_ROWS, 1 << (mean - 1).bit_length())


def tiled_mlp(rows, group_sizes, experts, activation: str, tile_rows: int | None = None):
    """Each expert's rows padded to whole tiles; a scan over tiles runs each through its own
    expert (a dynamic index into the stacked weights, no gathered copies). Rows past
    sum(group_sizes) come out zero."""
    n_rows, d_model = rows.shape
    n_experts = group_sizes.shape[0]
    tile = tile_rows or default_tile_rows(n_rows, n_experts)
    n_tiles = (n_rows + n_experts * (tile - 1)) // tile  # the most any group sizes can need
    tiles_per_expert = (group_sizes + tile - 1) // tile  # [E]
    tile_end = jnp.cumsum(tiles_per_expert)  # [E]
    row_end = jnp.cumsum(group_sizes)  # [E]
    row = jnp.arange(n_rows)
    expert = row_groups(group_sizes, n_rows)  # [M], E past the groups
    in_group = expert < n_experts  # [M]
    expert = jnp.minimum(expert, n_experts - 1)
    first_row, first_tile = (row_end - group_sizes)[expert], (tile_end - tiles_per_expert)[expert]  # [M]
    slot = jnp.where(in_group, first_tile * tile + row - first_row, n_tiles * tile)  # [M], out of range past the groups
    tiles = jnp.zeros((n_tiles * tile, d_model), rows.dtype).at[slot].set(rows, mode="drop")
    tiles = tiles.reshape(n_tiles, tile, d_model)  # [n_tiles, tile, D]
    tile_expert = jnp.searchsorted(tile_end, jnp.arange(n_tiles), side="right")  # [n_tiles], E if unused
    act = ACTIVATIONS[activation]

    def run_tile(_, tile_in):
        x, e = tile_in  # [tile, D], expert index

        def through_expert():
            h = act(x @ experts["w_gate"][e]) * (x @ experts["w_up"][e])  # [tile, F]
            return h @ experts["w_down"][e]  # [tile, D]

        def skip():  # zeros from the same operands: inside shard_map both branches must vary alike
            h = x[:, :0] @ experts["w_gate"][0, :0, :0] + x[:, :0] @ experts["w_up"][0, :0, :0]  # [tile, 0]
            return h @ experts["w_down"][0, :0]  # [tile, D], as through_expert's

        return None, jax.lax.cond(e < n_experts, through_expert, skip)

    _, out = jax.lax.scan(run_tile, None, (tiles, tile_expert))  # [n_tiles, tile, D]
    return jnp.take(out.reshape(n_tiles * tile, d_model), slot, axis=0, mode="fill", fill_value=0)  # [M, D]


def copies_mlp(rows, group_sizes, experts, activation: str):
    """`gather` off a GPU: each row's expert's weights gathered into a copy ([M, D, F]) for one
    batched matmul. Rows past sum(group_sizes) go through the last expert; callers mask them."""
    n_experts = group_sizes.shape[0]
    expert = jnp.minimum(row_groups(group_sizes, rows.shape[0]), n_experts - 1)  # [M]
    w_gate, w_up = experts["w_gate"][expert], experts["w_up"][expert]  # [M, D, F]
    w_down = experts["w_down"][expert]  # [M, F, D]
    gate = jnp.einsum("md,mdf->mf", rows, w_gate)  # [M, F]
    up = jnp.einsum("md,mdf->mf", rows, w_up)  # [M, F]
    return jnp.einsum("mf,mfd->md", ACTIVATIONS[activation](gate) * up, w_down)  # [M, D]


def gather_mlp(rows, group_sizes, experts, activation: str):
    """Each row through its own expert's weights: M expert matrices read, not E. On a GPU one
    Pallas kernel reads them in place (`grouped_matvec.py`; rows past sum(group_sizes) read
    nothing and come out zero), where a copy would move each matrix three times (BENCHMARKS.md,
    session 19); elsewhere `copies_mlp` (`grouped_matvec.runs_here` says where: not off a GPU,
    not for sizes that are not multiples of 16, not where XLA partitions over a mesh)."""
    _, d_model, d_ff = experts["w_gate"].shape
    if grouped_matvec.runs_here(d_model, d_ff):
        expert = row_groups(group_sizes, rows.shape[0])  # [M], E past the groups
        return grouped_matvec.in_place_mlp(rows, expert, experts, activation)
    return copies_mlp(rows, group_sizes, experts, activation)


GROUPED_MLPS = {"ragged_dot": ragged_dot_mlp, "tiled": tiled_mlp, "gather": gather_mlp}


def resolve(grouped_matmul: GroupedMatmul, n_rows: int, n_experts: int) -> str:
    """The grouped matmul that runs `n_rows` (static) assignment rows through `n_experts`:
    `auto` gathers while n_rows <= n_experts (no more matrices read than all experts), then
    ragged_dot below AUTO_TILED_ROWS rows, tiled from there (the module docstring says why)."""
    if grouped_matmul != "auto":
        return grouped_matmul
    if n_rows <= n_experts:
        return "gather"
    return "tiled" if n_rows >= AUTO_TILED_ROWS else "ragged_dot"


def expert_rows(rows, expert, experts, activation: str, grouped_matmul: GroupedMatmul):
    """rows [M, D], expert [M] in [0, E] (E: none) -> each row through its expert's gated MLP
    [M, D], zero for rows of no expert. experts: w_gate, w_up [E, D, F], w_down [E, F, D]."""
    n_experts = experts["w_gate"].shape[0]
    order, _, sizes = rank_in_group(expert, n_experts)  # [M], [E]
    grouped_mlp = GROUPED_MLPS[resolve(grouped_matmul, rows.shape[0], n_experts)]
    out_sorted = grouped_mlp(rows[order], sizes, experts, activation)  # [M, D]
    out = jnp.zeros_like(out_sorted).at[order].set(out_sorted)  # [M, D]
    return jnp.where((expert < n_experts)[:, None], out, 0)


def combine(out, weights, routed, dtype):
    """out [k * N, D] slot-major expert outputs -> sum over slots with the weights [N, k]
    (float32), unrouted assignments excluded -> [N, D] in dtype."""
    n_tokens, top_k = weights.shape
    out = out.reshape(top_k, n_tokens, -1).astype(jnp.float32)  # [k, N, D]
    weights = jnp.where(routed, weights, 0).T  # [k, N]
    return jnp.einsum("kn,knd->nd", weights, out).astype(dtype)  # [N, D]


def dropless(x, ids, weights, routed, experts, activation: str, grouped_matmul: GroupedMatmul = "auto"):
    """x [N, D], ids/weights/routed [N, k] -> y [N, D]: every routed assignment computed."""
    n_experts = experts["w_gate"].shape[0]
    rows = jnp.tile(x, (ids.shape[1], 1))  # [k * N, D] slot-major
    out = expert_rows(rows, slot_major(ids, routed, n_experts), experts, activation, grouped_matmul)
    return combine(out, weights, routed, x.dtype)
