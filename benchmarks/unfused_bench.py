"""`chimera` with the residual add and RMS norm left to XLA after chimera's all-reduce (the path before
the fused kernel, sharding/residual.py), for comparing the two in one lease:

    python benchmarks/unfused_bench.py bench --config llama-3-8b --mesh tensor=2 ...   (the CLI's words)
"""

import sys

from chimera.runtime import cli
from chimera.sharding import residual

if __name__ == "__main__":
    residual.fuses = lambda *args: False  # every Unreduced output summed alone, then added and normed by XLA
    sys.exit(cli.main())
