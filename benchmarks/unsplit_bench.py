"""`chimera` with XLA splitting the one-row output products itself (the path before
sharding/residual.py's `split_product`: XLA's split-K GEMM and its reduction kernel, then the fused kernel),
for comparing the two in one lease:

    python benchmarks/unsplit_bench.py bench --config llama-3-8b --mesh tensor=2 ...   (the CLI's words)
"""

import sys

from chimera.runtime import cli
from chimera.sharding import residual

if __name__ == "__main__":
    residual.MAX_SPLITS = 1  # one split of the output dtype: XLA's own product
    sys.exit(cli.main())
