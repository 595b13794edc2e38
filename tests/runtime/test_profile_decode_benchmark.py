"""benchmarks/profile_decode.py's trace summaries, on a hand-made trace: idle time split into
waiting for the host's launch and the rest, and idle charged to the kernel before each gap."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "profile_decode.py"


def load():
    spec = importlib.util.spec_from_file_location("profile_decode", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def trace():
    """GPU (pid 1): kernels a [0, 10), b [15, 20), c [30, 40), d [40, 42) on two streams.
    Host (pid 2): b launched by a call ending at 18 (the GPU waited 10 -> 15 for it: 5 µs),
    c by one ending at 22 (the GPU idled 20 -> 30: 2 µs of it waiting for the host)."""
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}}]
    kernel = lambda name, ts, dur, cid, tid=0: {"ph": "X", "pid": 1, "tid": tid, "name": name, "ts": ts, "dur": dur,  # noqa: E731
                                                 "args": {"correlation_id": cid}}
    host = lambda ts, dur, cid: {"ph": "X", "pid": 2, "tid": 0, "name": "cuLaunchKernel", "ts": ts, "dur": dur,  # noqa: E731
                                 "args": {"correlation_id": cid}}
    return meta + [kernel("a_1", 0, 10, "1"), kernel("b_2", 15, 5, "2"), kernel("c_3", 30, 10, "3", tid=1),
                   kernel("d_4", 40, 2, "4"), host(-5, 3, "1"), host(12, 6, "2"), host(19, 3, "3"), host(20, 1, "4")]


def test_launch_summary_splits_idle_into_host_and_other():
    lines = load().launch_summary(trace())
    assert lines[1].strip() == ("/device:GPU:0: span 42, kernels 27, idle waiting for the host 7, other idle 8")


def test_idle_summary_charges_each_gap_to_the_kernel_before():
    lines = load().idle_summary(trace(), {1}, per_step=1)
    assert lines[0].endswith("15.0; after which kernel:")
    assert [line.split() for line in lines[1:]] == [["10.0", "b_#"], ["5.0", "a_#"]]
