"""`chimera` with the zero row of a one-row fused sum + add + norm left unused: `linear` pads the normed
row itself, so a pad kernel follows every fused call, as before session 16 (sharding/residual.py,
runtime/linear.py), for comparing the two in one lease:

    python benchmarks/norm_pad_bench.py bench --config llama-3-8b --mesh tensor=2 ...   (the CLI's words)
"""

import sys

from chimera.runtime import cli
from chimera.sharding import residual

if __name__ == "__main__":
    residual.remember_two_rows = lambda row, rows: None  # the kernel still writes the zero row; nothing takes it
    sys.exit(cli.main())
