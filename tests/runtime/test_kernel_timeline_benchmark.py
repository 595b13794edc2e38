"""benchmarks/kernel_timeline.py on a hand-made trace: one GPU's kernels in start order (memcopies and other
devices left out), the stretch centred on the middle kernel named like --around, and each kernel's start
against the previous one's end (negative where it started early)."""

import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


def events():
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:1"}}]
    kernel = lambda pid, name, ts, dur: {"ph": "X", "pid": pid, "name": name, "ts": ts, "dur": dur}  # noqa: E731
    gpu0 = [kernel(1, "gemm", 10.0, 8.0), kernel(1, "reduce", 18.5, 1.5), kernel(1, "add_rms_norm_kernel", 20.0, 3.0),
            kernel(1, "pad", 22.5, 1.0), kernel(1, "MemcpyH2D", 24.0, 1.0), kernel(1, "gemm", 23.0, 8.0),
            kernel(1, "add_rms_norm_kernel", 31.5, 3.0)]
    return meta + gpu0[::-1] + [kernel(2, "add_rms_norm_kernel", 0.0, 1.0)]


@pytest.fixture
def timeline_script(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # kernel_timeline imports profile_decode from there
    return importlib.import_module("kernel_timeline")


def test_device_kernels_are_one_gpus_in_start_order(timeline_script):
    kernels = timeline_script.device_kernels(events(), device=0)
    assert [k["name"] for k in kernels] == ["gemm", "reduce", "add_rms_norm_kernel", "pad", "gemm", "add_rms_norm_kernel"]


def test_timeline_centres_on_the_middle_hit_and_times_against_the_previous_end(timeline_script):
    lines = timeline_script.timeline(timeline_script.device_kernels(events(), device=0), "add_rms_norm", count=4)
    rows = [line.split() for line in lines[1:]]
    # hits at 2 and 5: the middle one is 5, so kernels 3..6 (pad, gemm, add_rms_norm_kernel), origin at pad's start
    assert [row[-1] for row in rows] == ["pad", "gemm", "add_rms_norm_kernel"]
    assert rows[0][:3] == ["0.00", "1.00", "1.00"]
    assert rows[1][3] == "-0.50"  # gemm started 0.5 before pad ended
    assert rows[2][3] == "0.50"


def test_no_such_kernel_is_an_error(timeline_script):
    with pytest.raises(SystemExit, match="no kernel named like"):
        timeline_script.timeline(timeline_script.device_kernels(events(), device=0), "all_gather", count=4)
