"""benchmarks/tensor_parallel.py (the 2-GPU run) and `chimera bench --mesh` work on a CPU."""

import importlib.util
import json
from pathlib import Path

import pytest

from chimera.runtime.cli import main

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "tensor_parallel.py"


def test_tiny_run(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("tensor_parallel", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert [name for name, _ in script.RUNS["tiny"]] == ["llama-tiny", "mixtral-tiny"]
    # the dense model only (CI time): the MoE one goes through the same code with expert=2
    monkeypatch.setitem(script.RUNS, "tiny", script.RUNS["tiny"][:1])
    out = tmp_path / "rows.json"
    assert script.main(["--tiny", "--batch", "2", "--prompt-len", "4", "--gen", "2", "--repeats", "1",
                        "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "llama-tiny       tensor=2" in printed
    rows = json.loads(out.read_text())
    assert [(r["config"], r["n_devices"], r["batch"]) for r in rows] == [("llama-tiny", 1, 2), ("llama-tiny", 2, 2)]
    assert all(r["decode_ms_per_step"] > 0 and r["mbu_per_device"] is None for r in rows)  # CPU: no peak known
    assert rows[0]["speedup"] == 1.0
    assert rows[1]["speedup"] == pytest.approx(rows[0]["decode_ms_per_step"] / rows[1]["decode_ms_per_step"])


@pytest.mark.parametrize("mesh", ["tensor=2,pipe=2", "tensor=0", "tensor"])
def test_bench_mesh_malformed(mesh, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--config", "llama-tiny", "--mesh", mesh])
    assert exit_.value.code == 2 and "expected AXIS=N" in capsys.readouterr().err


def test_bench_mesh_larger_than_the_devices(capsys):
    assert main(["bench", "--config", "llama-tiny", "--mesh", "tensor=16"]) == 2
    assert "--mesh needs 16 devices, 8 are available" in capsys.readouterr().err
