"""benchmarks/zero_row_below_bench.py runs the program it is given with the blocks' products replaced by
decode_loop.zero_row_below (tested in test_per_call_benchmark.py), and names a missing threshold."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
WRAPPER = ROOT / "benchmarks" / "zero_row_below_bench.py"


def run(args, threshold: str | None):
    environ = {key: value for key, value in os.environ.items() if key != "CHIMERA_ZERO_ROW_BELOW"}
    if threshold is not None:
        environ["CHIMERA_ZERO_ROW_BELOW"] = threshold
    return subprocess.run([sys.executable, str(WRAPPER), *args], env={**environ, "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_the_script_runs_with_the_products_replaced(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import sys\nimport chimera.attention.attention as attention\n"
                     "from chimera.runtime.linear import linear\n"
                     "print(attention.linear is not linear, __name__, sys.argv[1:])\n")
    result = run(["--script", str(probe), "--flag", "x"], "4e7")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "True __main__ ['--flag', 'x']"


def test_a_missing_threshold_is_named():
    result = run(["bench"], None)
    assert result.returncode != 0 and "CHIMERA_ZERO_ROW_BELOW" in result.stderr
