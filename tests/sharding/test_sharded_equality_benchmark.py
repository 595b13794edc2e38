"""benchmarks/sharded_equality.py (the GPU equality runs) works on a CPU: one reference, several meshes."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "sharded_equality.py"


def test_several_meshes_against_one_reference(tmp_path):
    spec = importlib.util.spec_from_file_location("sharded_equality", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "equality.json"
    assert script.main(["--config", "llama-tiny", "--mesh", "tensor=2", "--mesh", "data=2,tensor=4",
                        "--prompts", "3,9", "--new-tokens", "4", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [m["mesh"] for m in report["meshes"]] == [{"tensor": 2}, {"data": 2, "tensor": 4}]
    assert report["identical"] and all(m["identical"] for m in report["meshes"])
    assert all((r["agree"], r["of"]) == (4, 4) for m in report["meshes"] for r in m["rows"])


def test_several_configs_and_a_failing_mesh_is_recorded(tmp_path):
    spec = importlib.util.spec_from_file_location("sharded_equality", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "equality.json"
    # a mesh of more devices than there are: make_mesh raises, recorded as that mesh's error
    code = script.main(["--config", "llama-tiny,mamba2-tiny", "--mesh", "tensor=2", "--mesh", "tensor=64",
                        "--prompts", "3", "--new-tokens", "3", "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 1 and not report["identical"]
    assert [r["config"] for r in report["configs"]] == ["llama-tiny", "mamba2-tiny"]
    for r in report["configs"]:
        good, bad = r["meshes"]
        assert good["identical"] and "error" not in good
        assert not bad["identical"] and bad["error"]
