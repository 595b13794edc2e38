"""`chimera` with the one-row products padded by a zero row (runtime/linear.py before session 14, which
repeats the row instead), for comparing the two in one lease:

    python benchmarks/zero_row_bench.py bench --config llama-3-8b --mesh tensor=2 ...   (the CLI's words)
"""

import sys

import jax.numpy as jnp

from chimera.runtime import cli
from matvec_kernel import replace_linear


def zero_row_linear(spec: str, x, w):
    if x.shape[0] * x.shape[1] != 1:
        return jnp.einsum(spec, x, w)
    padded = jnp.pad(x, [(0, 1)] + [(0, 0)] * (x.ndim - 1))  # [2, 1, ...]: row 1 is zeros
    return jnp.einsum(spec, padded, w)[:1]


if __name__ == "__main__":
    replace_linear(zero_row_linear)
    sys.exit(cli.main())
