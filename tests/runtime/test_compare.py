"""`chimera compare`: analytic numbers against the built models' real arrays, the command end
to end (table, report, JSON, plots), and clear errors with exit code 2."""

import dataclasses
import json
import math
import subprocess
import sys

import jax
import numpy as np
import pytest
from matplotlib.image import imread

import chimera
from chimera.moe.mlp import GatedMLP
from chimera.runtime import compare, report
from chimera.runtime.cli import main

TINY = [name for name in chimera.list_presets() if name.endswith("-tiny")]


def real_state_bytes(model, context):
    """Every array of a real DecodeState for one sequence, except its length counter."""
    state = model.init_state(1, context)
    return sum(x.nbytes for x in jax.tree.leaves(state)) - state.lengths.nbytes


@pytest.mark.parametrize("name", TINY)
def test_analytic_state_equals_allocated_state(name):
    """At contexts below, at and far past every window or budget."""
    model = chimera.build(chimera.load_config(name))
    for context in (1, 7, 8, 9, 64, 300):
        row = compare.context_costs(model, context)
        assert row.state_bytes == real_state_bytes(model, context), (name, context)
        assert row.allocated_state_bytes == row.state_bytes and row.state_agrees


def test_state_by_hand():
    """llama-tiny: 2 layers x (K, V) x 2 kv heads x 16 dims x 4 bytes per token; mistral-tiny the
    same capped at its 8-token window; mamba2-tiny constant."""
    llama, mistral, mamba2 = (chimera.build(chimera.load_config(n)) for n in ("llama-tiny", "mistral-tiny",
                                                                               "mamba2-tiny"))
    for n in (1, 8, 100):
        assert compare.context_costs(llama, n).state_bytes == 2 * 2 * 2 * 16 * 4 * n
        assert compare.context_costs(mistral, n).state_bytes == 2 * 2 * 2 * 16 * 4 * min(n, 8)
    assert len({compare.context_costs(mamba2, n).state_bytes for n in (1, 100, 10_000)}) == 1


@pytest.mark.parametrize("name", compare.default_presets())
def test_parameter_counts_equal_real_arrays(name):
    config = chimera.load_config(name)
    model = chimera.build(config)
    params = model.init(jax.random.key(0, impl="unsafe_rbg"))  # real arrays, eagerly (no compile)
    arch = compare.analyse(config, [4])
    assert arch.total_params == sum(x.size for x in jax.tree.leaves(params))
    assert arch.param_bytes == sum(x.nbytes for x in jax.tree.leaves(params))
    # A bound (blocks may declare fewer active parameters): an untied table counts one row.
    unread_embedding = 0 if config.tie_embeddings else params["embed"].size - config.d_model
    assert 0 < arch.active_params <= arch.total_params - unread_embedding


@chimera.register_ffn("compare_test_half_mlp")
@dataclasses.dataclass(frozen=True)
class HalfActiveMLP(GatedMLP):
    """A gated MLP that claims a token touches half its parameters (as an MoE's routing would)."""

    def active_param_count(self) -> int:
        return 3 * self.d_model * self.d_ff // 2


def test_active_params_by_hand():
    """Untied: one embedding row instead of the table; a block's own active count replaces its size."""
    base = chimera.load_config("llama-tiny")
    d, v, f, layers = base.d_model, base.vocab_size, 128, base.n_layers
    config = base.replace(name="half", ffns={"mlp": {"kind": "compare_test_half_mlp", "d_ff": f}})
    arch = compare.analyse(config, [4])
    assert arch.total_params == compare.analyse(base, [4]).total_params
    assert arch.active_params == arch.total_params - (v * d - d) - layers * 3 * d * f // 2
    tied = compare.analyse(chimera.load_config("mamba2-tiny"), [4])  # tied table = the LM head: read whole
    assert tied.active_params == tied.total_params


def test_grid_points():
    assert compare.grid_points([16, 64, 256], [1, 8], "cross") == [(16, 1), (64, 1), (256, 1), (256, 8)]
    assert compare.grid_points([16, 64], [1, 8], "full") == [(16, 1), (16, 8), (64, 1), (64, 8)]


def test_compare_end_to_end(tmp_path, capsys):
    """Two tiny presets, MQAR included: the table, report.md, results.json and three PNG plots."""
    out = tmp_path / "cmp"
    assert main(["compare", "llama-tiny", "mamba2-tiny", "--contexts", "16,32", "--batch", "1,2", "--gen", "4",
                 "--repeats", "1", "--task", "mqar", "--mqar-steps", "3", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for text in ("llama-tiny", "mamba2-tiny", "active parameters / token", "state / sequence @ 32",
                 "decode ms/step @ 32, batch 2", "MQAR accuracy"):
        assert text in table

    results = json.loads((out / "results.json").read_text())
    assert results["points"] == [[16, 1], [32, 1], [32, 2]] and results["grid"] == "cross"
    archs = {a["name"]: a for a in results["architectures"]}
    assert list(archs) == ["llama-tiny", "mamba2-tiny"]
    # llama-tiny's KV cache grows linearly with context; mamba2-tiny's state does not.
    assert [c["state_bytes"] for c in archs["llama-tiny"]["costs"]] == [2 * 2 * 2 * 16 * 4 * n for n in (16, 32)]
    assert len({c["state_bytes"] for c in archs["mamba2-tiny"]["costs"]}) == 1
    for arch in archs.values():
        assert all(c["state_agrees"] for c in arch["costs"])
        assert [(s["context"], s["batch"]) for s in arch["speeds"]] == [(16, 1), (32, 1), (32, 2)]
        for s in arch["speeds"]:
            assert s["decode_ms_per_step"] > 0 and s["mbu"] is None  # no MBU on a CPU
            assert s["decode_tokens_per_s"] == pytest.approx(s["batch"] / s["decode_ms_per_step"] * 1e3)
        assert 0 <= arch["mqar_result"]["accuracy"] <= 1 and len(arch["mqar_result"]["losses"]) == 3
        assert math.isfinite(arch["mqar_result"]["losses"][-1])

    markdown = (out / "report.md").read_text()
    assert "| metric | llama-tiny | mamba2-tiny |" in markdown
    for name in report.PLOTS:
        assert f"({name}.png)" in markdown
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = imread(png)
        assert image.shape[0] > 100 and np.ptp(image) > 0  # drawn, not blank


def synthetic_comparison(state_error: int = 0, peak: float | None = None, mbu: float | None = None):
    """llama-tiny's analytic costs at context 16, with a made-up measurement."""
    arch = compare.analyse(chimera.load_config("llama-tiny"), [16])
    allocated = dataclasses.replace(arch.costs[0], allocated_state_bytes=arch.costs[0].state_bytes + state_error)
    arch = dataclasses.replace(arch, costs=(allocated,), speeds=(compare.Speed(16, 1, 1e3, 0.1, 1e4, mbu, 1.0),))
    return compare.Comparison(architectures=(arch,), contexts=(16,), batches=(1,), grid="cross", points=((16, 1),),
                              gen=4, repeats=1, device="test", peak_bandwidth_bytes_s=peak,
                              jax_version=jax.__version__, date="today")


def rows(comparison):
    return {label: cells for group in report.sections(comparison) for label, cells in group}


def test_disagreeing_state_is_reported():
    """The check can fail: a mismatch shows both numbers instead of a tick."""
    comparison = synthetic_comparison(state_error=4)
    assert rows(comparison)["state / sequence @ 16"] == ["8 KiB ≠ 8 KiB allocated"]  # 8192 vs 8196 bytes
    assert report.to_json(comparison)["architectures"][0]["costs"][0]["state_agrees"] is False
    assert rows(synthetic_comparison())["state / sequence @ 16"] == ["8 KiB ✓"]


def test_mbu_row_only_where_the_peak_is_known():
    assert not any(label.startswith("MBU") for label in rows(synthetic_comparison()))
    assert rows(synthetic_comparison(peak=3.35e12, mbu=0.5))["MBU @ 16, batch 1"] == ["50.0%"]


@pytest.mark.parametrize("argv, message", [
    (["compare", "no-such-preset"], "unknown preset 'no-such-preset'"),
    (["compare", "llama-tiny", "llama-tiny"], "two configs are named 'llama-tiny'"),
    (["compare", "/no/such/config.yaml"], "no config file"),
    (["compare", "llama-tiny", "--gen", "1"], "gen >= 2"),
])
def test_bad_configs_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "chimera compare: error" in err and message in err


@pytest.mark.parametrize("argv, message", [
    (["compare", "--contexts", "1k,x"], "'x' in '1k,x' is not a context length"),
    (["compare", "--contexts", "0"], "'0' in '0' is not a context length"),
    (["compare", "--batch", "0"], "expected positive integers"),
    (["compare", "--batch=-1,2"], "expected positive integers"),
    (["compare", "--task", "nope"], "invalid choice"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_context_suffixes():
    from chimera.runtime.cli import context_list
    assert context_list("1k,4k,16K") == [1024, 4096, 16384]
    assert context_list("100, 2m") == [100, 2 * 1024 ** 2]


def test_help():
    result = subprocess.run([sys.executable, "-m", "chimera.runtime.cli", "compare", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage: chimera compare" in result.stdout and "--contexts" in result.stdout
