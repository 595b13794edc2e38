"""A decode step's few expert rows through their experts' gated MLPs, formulated several ways, on
one device: does any read only the routed experts' weights, once, at the bandwidth?

    python benchmarks/moe_gemv.py [--rows 2,4,6] [--layers 8] [--json out.json]   # the GPU run
    python benchmarks/moe_gemv.py --tiny                                           # CPU check

Mixtral's experts (8 x [4096 -> 14336 -> 4096], bf16); M rows (M = tokens x top 2) routed to
M distinct experts, through --layers separate layers (each its own weights, so no layer's
weights sit in L2 for the next), one jitted call; ms per layer and the routed experts' bytes
over that time. Formulations:
- `gather`: `dispatch.gather_mlp` as it is (each row's expert's weights gathered, a batched matmul);
- `reduce`: the same gathered weights multiplied and summed in float32 (a reduction XLA can fuse
  the gather into, instead of a matmul it cannot);
- `slices`: each row's expert sliced out of the stack by a dynamic index, one matmul a row;
- `ragged_dot`: `jax.lax.ragged_dot` (reads every expert: the reference for "all of them").
Also prints, for each, the largest array the compiled program writes between its ops (a gathered
copy of the weights shows up as [M, D, F]) and its custom calls.
"""

from __future__ import annotations

import argparse
import json
import re

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from chimera.moe import dispatch
from chimera.moe.mlp import ACTIVATIONS
from timing import median_seconds


def reduce_mlp(rows, group_sizes, experts, activation: str):
    n_experts = group_sizes.shape[0]
    expert = jnp.minimum(dispatch.row_groups(group_sizes, rows.shape[0]), n_experts - 1)  # [M]
    x = rows.astype(jnp.float32)[:, :, None]  # [M, D, 1]
    gate = (x * experts["w_gate"][expert].astype(jnp.float32)).sum(1).astype(rows.dtype)  # [M, F]
    up = (x * experts["w_up"][expert].astype(jnp.float32)).sum(1).astype(rows.dtype)  # [M, F]
    h = (ACTIVATIONS[activation](gate) * up).astype(jnp.float32)[:, :, None]  # [M, F, 1]
    return (h * experts["w_down"][expert].astype(jnp.float32)).sum(1).astype(rows.dtype)  # [M, D]


def slices_mlp(rows, group_sizes, experts, activation: str):
    n_experts = group_sizes.shape[0]
    expert = jnp.minimum(dispatch.row_groups(group_sizes, rows.shape[0]), n_experts - 1)  # [M]
    out = []
    for m in range(rows.shape[0]):
        w = {name: jax.lax.dynamic_index_in_dim(a, expert[m], keepdims=False) for name, a in experts.items()}
        x = rows[m:m + 1]  # [1, D]
        out.append((ACTIVATIONS[activation](x @ w["w_gate"]) * (x @ w["w_up"])) @ w["w_down"])  # [1, D]
    return jnp.concatenate(out)  # [M, D]


ROWS = 16  # Triton's smallest dot operand


def _grouped_matvec_kernel(expert_ref, x_ref, *refs, block_k: int, n_experts: int):
    """expert_ref []: this row's expert (n_experts: none); x_ref [K/splits]; then each weight's
    ref [E, K/splits, block_n] and each output's [block_n] (float32 partial sums)."""
    w_refs, o_refs = refs[:len(refs) // 2], refs[len(refs) // 2:]
    expert = expert_ref[...]

    @pl.when(expert < n_experts)
    def _():
        def step(i, accs):  # each [ROWS, block_n] float32
            start = pl.multiple_of(i * block_k, block_k)
            x = x_ref[pl.ds(start, block_k)].astype(w_refs[0].dtype)  # [block_k]
            rows = lax.broadcasted_iota(jnp.int32, (ROWS, block_k), 0)
            x = jnp.where(rows == 0, x[None, :], jnp.zeros((), x.dtype))  # [ROWS, block_k]: x in row 0
            return tuple(acc + plgpu.dot(x, w_ref[expert, pl.ds(start, block_k), :], allow_tf32=False)
                         for acc, w_ref in zip(accs, w_refs))

        zeros = jnp.zeros((ROWS, w_refs[0].shape[2]), jnp.float32)
        accs = lax.fori_loop(0, w_refs[0].shape[1] // block_k, step, (zeros,) * len(w_refs))
        for acc, o_ref in zip(accs, o_refs):
            o_ref[...] = acc.sum(axis=0)

    @pl.when(expert >= n_experts)
    def _():
        for o_ref in o_refs:
            o_ref[...] = jnp.zeros(o_ref.shape, jnp.float32)


def grouped_matvec(x, weights, expert, *, block_n: int, block_k: int, splits: int, num_warps: int = 4,
                   interpret: bool = False):
    """x [M, K], weights: each [E, K, N], expert [M] (E: none) -> each weight's float32 [M, N]:
    row m times its expert's matrix, read in place (zeros for no expert)."""
    n_rows, size = x.shape
    n_experts, _, columns = weights[0].shape
    block_n, block_k = min(block_n, columns), min(block_k, size // splits)  # small shapes (the CPU check)
    kernel = functools.partial(_grouped_matvec_kernel, block_k=block_k, n_experts=n_experts)
    w_spec = pl.BlockSpec((n_experts, size // splits, block_n), lambda m, n, s: (0, s, n))
    out_spec = pl.BlockSpec((None, None, block_n), lambda m, n, s: (s, m, n))
    parts = pl.pallas_call(
        kernel, grid=(n_rows, columns // block_n, splits),
        in_specs=[pl.BlockSpec((None,), lambda m, n, s: (m,)),
                  pl.BlockSpec((None, size // splits), lambda m, n, s: (m, s))] + [w_spec] * len(weights),
        out_specs=[out_spec] * len(weights),
        out_shape=[jax.ShapeDtypeStruct((splits, n_rows, columns), jnp.float32)] * len(weights),
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=3),
        interpret=interpret, name="grouped_matvec",
    )(expert, x, *weights)
    return [p.sum(axis=0) for p in parts]  # each [M, N]


def pallas_mlp(rows, group_sizes, experts, activation: str, *, block_n=64, block_k=256, up_splits=1,
               down_splits=4, num_warps=4):
    n_experts = group_sizes.shape[0]
    expert = dispatch.row_groups(group_sizes, rows.shape[0]).astype(jnp.int32)  # [M], E past the groups
    interpret = jax.devices()[0].platform == "cpu"
    gate, up = grouped_matvec(rows, (experts["w_gate"], experts["w_up"]), expert, block_n=block_n,
                              block_k=block_k, splits=up_splits, num_warps=num_warps, interpret=interpret)  # [M, F] each
    h = (ACTIVATIONS[activation](gate.astype(rows.dtype)) * up.astype(rows.dtype))  # [M, F]
    (out,) = grouped_matvec(h, (experts["w_down"],), expert, block_n=block_n, block_k=block_k,
                            splits=down_splits, num_warps=num_warps, interpret=interpret)
    return out.astype(rows.dtype)  # [M, D]


FORMS = {"pallas": pallas_mlp,
         "pallas_n32": functools.partial(pallas_mlp, block_n=32),
         "pallas_s2": functools.partial(pallas_mlp, up_splits=2, down_splits=8),
         "pallas_k128": functools.partial(pallas_mlp, block_k=128),
         "pallas_w8": functools.partial(pallas_mlp, num_warps=8),
         "pallas_s1": functools.partial(pallas_mlp, down_splits=1),
         "gather": dispatch.gather_mlp, "reduce": reduce_mlp, "slices": slices_mlp,
         "ragged_dot": dispatch.ragged_dot_mlp}


def layers_call(mlp, n_experts: int):
    """One call through every layer: each layer's output (scaled) is the next one's rows."""
    def call(rows, layers):
        sizes = jnp.zeros((n_experts,), jnp.int32).at[:rows.shape[0]].set(1)  # row m -> expert m
        for experts in layers:
            rows = (mlp(rows, sizes, experts, "silu") * 0.01).astype(rows.dtype)
        return rows
    return jax.jit(call)


def program_summary(compiled_text: str) -> dict:
    """The largest array an instruction of the program's entry computation outputs (parameters
    aside: a gathered copy of the weights shows up as [M, D, F]), and its custom calls."""
    entry = compiled_text[compiled_text.index("ENTRY"):]
    entry = entry[:entry.index("\n}")]
    largest, largest_line = 0, ""
    for line in entry.splitlines()[1:]:
        match = re.match(r"\s*(?:ROOT )?%?[\w.\-]+ = \w+\[([\d,]*)\]", line)
        if match and match.group(1) and " parameter(" not in line:
            size = 1
            for dim in match.group(1).split(","):
                size *= int(dim)
            if size > largest:
                largest, largest_line = size, line.strip()[:160]
    targets = sorted(set(re.findall(r'custom_call_target="([^"]+)"', compiled_text)))
    return {"largest_elements": largest, "largest": largest_line, "custom_calls": targets}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="2,4,6")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=4096)
    parser.add_argument("--d-ff", type=int, default=14336)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--forms", default="gather,slices,ragged_dot,pallas,pallas_n32,pallas_s2,pallas_k128,pallas_w8,pallas_s1")
    parser.add_argument("--tiny", action="store_true", help="D=64, F=128, 2 layers, 3 repeats (CPU check)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.tiny:
        args.d_model, args.d_ff, args.layers, args.repeats = 64, 128, 2, 3
    e, d, f = args.experts, args.d_model, args.d_ff
    dtype = jnp.bfloat16

    def layer(key):
        k = jax.random.split(key, 3)
        return {"w_gate": (jax.random.normal(k[0], (e, d, f), jnp.float32) * d ** -0.5).astype(dtype),
                "w_up": (jax.random.normal(k[1], (e, d, f), jnp.float32) * d ** -0.5).astype(dtype),
                "w_down": (jax.random.normal(k[2], (e, f, d), jnp.float32) * f ** -0.5).astype(dtype)}

    draw = jax.jit(layer)
    layers = [draw(jax.random.key(i)) for i in range(args.layers)]
    expert_bytes = 3 * d * f * jnp.dtype(dtype).itemsize
    results = []
    for n_rows in (int(r) for r in args.rows.split(",")):
        rows = jax.random.normal(jax.random.key(100 + n_rows), (n_rows, d), jnp.float32).astype(dtype)
        reference = None
        for name in args.forms.split(","):
            fn = layers_call(FORMS[name], e)
            seconds = median_seconds(fn, (rows, layers), 2, args.repeats)
            out = fn(rows, layers)
            if reference is None:
                reference = out
            row = {"rows": n_rows, "form": name, "ms_per_layer": seconds * 1e3 / args.layers,
                   "routed_gb_s": n_rows * expert_bytes * args.layers / seconds / 1e9,
                   "max_abs_vs_first": float(jnp.max(jnp.abs(out.astype(jnp.float32) - reference.astype(jnp.float32)))),
                   **program_summary(fn.lower(rows, layers).compile().as_text())}
            print(json.dumps(row), flush=True)
            results.append(row)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "results": results}, out, indent=1)


if __name__ == "__main__":
    main()
