"""benchmarks/norm_pad_bench.py runs the CLI with the fused kernel's zero row left unused: a one-row
product after the norm pads its row again."""

from __future__ import annotations

import pathlib
import runpy
import sys

import jax.numpy as jnp

from chimera.runtime import linear
from chimera.sharding import residual

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_cli_runs_with_the_rows_unremembered(monkeypatch):
    seen = {}

    def main():  # the CLI, as the wrapper leaves it
        row = jnp.ones((1, 1, 8))
        with linear.two_row_forms():
            residual.remember_two_rows(row, jnp.zeros((2, 1, 8)))
            seen["rows"] = linear.two_rows(row)
        return 0

    monkeypatch.setattr("chimera.runtime.cli.main", main)
    monkeypatch.setattr(residual, "remember_two_rows", residual.remember_two_rows)  # restored after the test
    monkeypatch.setattr(sys, "argv", ["norm_pad_bench.py"])
    try:
        runpy.run_path(str(ROOT / "benchmarks" / "norm_pad_bench.py"), run_name="__main__")
    except SystemExit as exit_:
        assert exit_.code == 0
    assert float(seen["rows"][0].sum()) == 8.0  # padded from the row, not the zeros remembered
