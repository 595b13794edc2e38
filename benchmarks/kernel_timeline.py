"""One stretch of a GPU's kernels from a profile_decode.py trace, in launch order: when each started
and ended against the one before it, which shows what overlaps (a programmatic dependent starts
before the kernel it follows has ended) and what leaves the GPU idle.

    python benchmarks/kernel_timeline.py DIR/trace --around add_rms_norm --count 40 [--device 0]

The stretch is --count kernels of GPU --device centred on the middle occurrence of a kernel whose
name contains --around. Per kernel: its start and end (µs, from the stretch's first start), its
duration, and `after`, its start minus the previous kernel's end (negative: it started early).
"""

from __future__ import annotations

import argparse
import pathlib

from profile_decode import load_events, process_names


def device_kernels(events, device: int) -> list[dict]:
    """GPU `device`'s kernel events ("X" events on a GPU's stream), by start time."""
    pids = [pid for pid, name in process_names(events).items() if name.upper().endswith(f"GPU:{device}")]
    if not pids:
        raise SystemExit(f"no GPU {device} in the trace")
    pid = pids[0]
    kernels = [e for e in events if e.get("ph") == "X" and e.get("pid") == pid and "dur" in e
               and not e["name"].startswith("Memcpy")]
    return sorted(kernels, key=lambda e: e["ts"])


def timeline(kernels: list[dict], around: str, count: int) -> list[str]:
    hits = [i for i, e in enumerate(kernels) if around in e["name"]]
    if not hits:
        raise SystemExit(f"no kernel named like {around!r}")
    middle = hits[len(hits) // 2]
    stretch = kernels[max(0, middle - count // 2): middle + count // 2]
    origin = stretch[0]["ts"]
    lines = [f"{'start':>8} {'end':>8} {'dur':>6} {'after':>6}  kernel"]
    previous_end = None
    for e in stretch:
        start, end = e["ts"] - origin, e["ts"] + e["dur"] - origin
        after = "" if previous_end is None else f"{start - previous_end:6.2f}"
        lines.append(f"{start:8.2f} {end:8.2f} {e['dur']:6.2f} {after:>6}  {e['name'][:60]}")
        previous_end = end
    return lines


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("trace_dir", type=pathlib.Path)
    parser.add_argument("--around", required=True)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--device", type=int, default=0)
    args = parser.parse_args()
    print("\n".join(timeline(device_kernels(load_events(args.trace_dir), args.device), args.around, args.count)))


if __name__ == "__main__":
    main()
