"""A program of chimera's (the CLI, or a benchmark script) with `runtime/linear.py`'s zero row only for weights of
fewer than $CHIMERA_ZERO_ROW_BELOW elements (global shape; decode_loop.py's `--zero-row-below`), for comparing the
two in one lease. Above XLA's strength-reduction size a one-row product stays a GEMM by itself, so the pad kernel in
front of it goes: on tensor=2 the one after the fused sum + add + norm before the gate/up product.

    CHIMERA_ZERO_ROW_BELOW=4e7 python benchmarks/zero_row_below_bench.py bench --config llama-3-8b --mesh tensor=2 ...
    CHIMERA_ZERO_ROW_BELOW=4e7 python benchmarks/zero_row_below_bench.py --script benchmarks/profile_decode.py ARGS
"""

import os
import runpy
import sys

from decode_loop import zero_row_below

from chimera.runtime import cli

if __name__ == "__main__":
    if "CHIMERA_ZERO_ROW_BELOW" not in os.environ:
        sys.exit("zero_row_below_bench.py: set CHIMERA_ZERO_ROW_BELOW to the weight size (elements) below which the "
                 "zero row is added, e.g. 4e7")
    zero_row_below(int(float(os.environ["CHIMERA_ZERO_ROW_BELOW"])))
    if sys.argv[1:2] == ["--script"]:
        script = sys.argv[2]
        sys.argv = [script] + sys.argv[3:]
        runpy.run_path(script, run_name="__main__")
    else:
        sys.exit(cli.main())
