"""A decode step's few expert rows through their experts' gated MLPs on one device: does `gather`
read only the routed experts' weights, once, near the bandwidth?

    python benchmarks/moe_gemv.py [--rows 2,4,6,8] [--layers 8] [--json out.json]   # the GPU run
    python benchmarks/moe_gemv.py --tiny                                             # CPU check

Mixtral's experts (8 x [4096 -> 14336 -> 4096], bf16); M rows (M = tokens x top 2) routed to
M distinct experts, through --layers separate layers (each its own weights, so no layer's
weights sit in L2 for the next), one jitted call; ms per layer and the routed experts' bytes
over that time, and each form's largest difference from the first's output. Forms:
- `ragged_dot`: `jax.lax.ragged_dot` (reads every expert: the reference for "all of them");
- `copies`: `dispatch.copies_mlp`, each row's expert's weights gathered into a copy, then a
  batched matmul (`gather` before session 19, and still off a GPU);
- `gather`: `dispatch.gather_mlp` (on a GPU the Pallas kernel of moe/grouped_matvec.py).
Session 19 also measured, in its experiment commit 8bc0d18 of this file: the gathered weights
multiplied and summed as a reduction, each row's expert sliced by a dynamic index (XLA copied
the slice, with and without its dynamic-slice fusion option), and the kernel's block sizes.
Also prints, for each, the largest array the compiled program writes between its ops (a gathered
copy of the weights shows up as [M, D, F]) and its custom calls.
"""

from __future__ import annotations

import argparse
import json
import re

import jax
import jax.numpy as jnp

from chimera.moe import dispatch
from chimera.moe.mlp import ACTIVATIONS
from timing import median_seconds


FORMS = {"ragged_dot": dispatch.ragged_dot_mlp, "copies": dispatch.copies_mlp, "gather": dispatch.gather_mlp}


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
    parser.add_argument("--rows", default="2,4,6,8")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=4096)
    parser.add_argument("--d-ff", type=int, default=14336)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--forms", default=",".join(FORMS))
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
