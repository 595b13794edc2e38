"""A `Comparison` as people read it: one table (terminal and markdown share its rows),
`results.json`, and PNG plots with one labelled line per architecture."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from matplotlib.figure import Figure  # the object API: no pyplot global state, PNGs render with Agg
from matplotlib.ticker import ScalarFormatter
from rich.table import Table

from chimera.runtime.compare import Comparison

PLOTS = {"state_memory": "decode-state memory vs context",
         "decode_step_time": "decode step time vs context",
         "throughput": "decode throughput vs batch"}


# --- numbers as text ---

def si(value: float) -> str:
    """1.5e6 -> "1.5 M": three significant digits and a decimal prefix."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}"
    return f"{value:.3g}"


def binary_bytes(n: float) -> str:
    for factor, unit in ((2 ** 30, "GiB"), (2 ** 20, "MiB"), (2 ** 10, "KiB")):
        if n >= factor:
            return f"{n / factor:.3g} {unit}"
    return f"{n:.0f} B"


# --- the table's rows, shared by the terminal and markdown ---

def sections(comparison: Comparison) -> list[list[tuple[str, list[str]]]]:
    """Groups of (metric, one cell per architecture)."""
    archs = comparison.architectures
    row = lambda label, cell: (label, [cell(a) for a in archs])  # noqa: E731

    def state_cell(arch, i):
        c = arch.costs[i]
        if c.state_agrees:
            return f"{binary_bytes(c.state_bytes)} ✓"
        return f"{binary_bytes(c.state_bytes)} ≠ {binary_bytes(c.allocated_state_bytes)} allocated"

    size = [row("parameters", lambda a: si(a.total_params)),
            row("active parameters / token", lambda a: si(a.active_params)),
            row("parameter bytes", lambda a: f"{binary_bytes(a.param_bytes)} ({a.dtype})")]
    state = [row(f"state / sequence @ {n}", lambda a, i=i: state_cell(a, i)) for i, n in enumerate(comparison.contexts)]
    flops = [row(f"FLOPs / generated token @ {n}", lambda a, i=i: si(a.costs[i].flops_per_generated_token))
             for i, n in enumerate(comparison.contexts)]
    flops += [row(f"FLOPs / prompt token @ {n}", lambda a, i=i: si(a.costs[i].flops_per_prompt_token))
              for i, n in enumerate(comparison.contexts)]
    points = comparison.points
    prefill = [row(f"prefill tokens/s @ {n}, batch {b}", lambda a, n=n, b=b: si(a.speed(n, b).prefill_tokens_per_s))
               for n, b in points]
    decode = [row(f"decode ms/step @ {n}, batch {b}", lambda a, n=n, b=b: f"{a.speed(n, b).decode_ms_per_step:.3g}")
              for n, b in points]
    decode += [row(f"decode tokens/s @ {n}, batch {b}", lambda a, n=n, b=b: si(a.speed(n, b).decode_tokens_per_s))
               for n, b in points if b > 1]
    if comparison.peak_bandwidth_bytes_s is not None:
        decode += [row(f"MBU @ {n}, batch {b}", lambda a, n=n, b=b: f"{100 * a.speed(n, b).mbu:.1f}%")
                   for n, b in points]
    decode.append(row("compile s (all shapes)", lambda a: f"{sum(s.compile_s for s in a.speeds):.1f}"))
    groups = [size, state, flops, prefill, decode]
    if comparison.mqar_task is not None:
        chance = comparison.mqar_task.chance
        groups.append([row(f"MQAR accuracy (chance {chance:.3f})", lambda a: f"{a.mqar_result.accuracy:.3f}")])
    return groups


def table(comparison: Comparison) -> Table:
    """The rich table: metrics down, architectures across."""
    out = Table(title=f"chimera compare on {comparison.device}", title_justify="left")
    out.add_column("metric", style="bold")
    for arch in comparison.architectures:
        out.add_column(arch.name, justify="right")
    for group in sections(comparison):
        for i, (label, cells) in enumerate(group):
            out.add_row(label, *cells, end_section=i == len(group) - 1)
    return out


NOTES = (
    "Active parameters count what one token touches: a block's `active_param_count()` where it defines one "
    "(the routed experts of an MoE), one embedding row rather than the whole table (unless the table is tied "
    "to the LM head, which reads it whole).",
    "State is per sequence, analytic (`runtime/costs.py`); ✓ means it equals the bytes `init_state(1, context)` "
    "really allocates, ≠ shows both.",
    "FLOPs per prompt token are a whole prefill of that many tokens divided by its length.",
    "Speeds on a CPU are indicative only; MBU appears on GPUs whose peak bandwidth is known.",
)


def markdown(comparison: Comparison) -> str:
    names = [a.name for a in comparison.architectures]
    points = ", ".join(f"({n}, {b})" for n, b in comparison.points)
    lines = [f"# chimera compare: {', '.join(names)}", "",
             f"Device {comparison.device}, jax {comparison.jax_version}, {comparison.date}. Contexts "
             f"{list(comparison.contexts)}, batches {list(comparison.batches)}; timed at (context, batch) {points}; "
             f"decode over {comparison.gen - 1} steps, median of {comparison.repeats} runs, compilation excluded.",
             "", "| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for group in sections(comparison):
        lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in group]
    lines += ["", "Notes:"] + [f"- {note}" for note in NOTES]
    if comparison.mqar_task is not None:
        t, s = comparison.mqar_task, comparison.mqar_settings
        lines.append(f"- MQAR: {t.n_pairs} key-value pairs ({t.n_keys} keys, {t.n_values} values), {t.n_queries} "
                     f"queries; {s.steps} AdamW steps of batch {s.batch_size} at lr {s.learning_rate} in float32; "
                     f"accuracy on {s.eval_batch_size} held-out sequences.")
    lines += [""] + [f"![{title}]({name}.png)" for name, title in PLOTS.items()]
    return "\n".join(lines) + "\n"


def to_json(comparison: Comparison) -> dict:
    data = dataclasses.asdict(comparison)
    for arch, arch_data in zip(comparison.architectures, data["architectures"]):
        for c, row in zip(arch.costs, arch_data["costs"]):
            row["state_agrees"] = c.state_agrees
    return data


# --- plots ---

def plot_lines(path: Path, comparison: Comparison, panels, x_label: str, y_label: str, title: str,
               log_y: bool) -> None:
    """One panel per (panel title, x values, {architecture: y values}); a labelled line per architecture."""
    figure = Figure(figsize=(5.5 * len(panels), 4.2), layout="constrained")
    for axes, (panel_title, xs, lines) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for name, ys in lines.items():
            axes.plot(xs, ys, marker="o", label=name)
        axes.set_xscale("log", base=2)
        axes.xaxis.set_major_formatter(ScalarFormatter())  # 512, not 2^9
        if log_y and all(y > 0 for ys in lines.values() for y in ys):
            axes.set_yscale("log")
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
        axes.set_title(panel_title, fontsize="medium")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle(f"{title} ({comparison.device})")
    figure.savefig(path, dpi=100)


def write_plots(comparison: Comparison, out: Path) -> list[Path]:
    archs, contexts, batches = comparison.architectures, list(comparison.contexts), list(comparison.batches)
    measured = set(comparison.points)
    paths = {name: out / f"{name}.png" for name in PLOTS}
    curve = [n for n, _ in archs[0].state_curve]
    plot_lines(paths["state_memory"], comparison,
               [("analytic, per sequence", curve, {a.name: [b / 2 ** 10 for _, b in a.state_curve] for a in archs})],
               "context (tokens)", "decode state (KiB)", PLOTS["state_memory"], log_y=True)
    # A panel per batch measured at every context, and per context measured at every batch.
    plot_lines(paths["decode_step_time"], comparison,
               [(f"batch {b}", contexts, {a.name: [a.speed(n, b).decode_ms_per_step for n in contexts] for a in archs})
                for b in batches if all((n, b) in measured for n in contexts)],
               "context (tokens)", "decode step time (ms)", PLOTS["decode_step_time"], log_y=False)
    plot_lines(paths["throughput"], comparison,
               [(f"context {n}", batches, {a.name: [a.speed(n, b).decode_tokens_per_s for b in batches] for a in archs})
                for n in contexts if all((n, b) in measured for b in batches)],
               "batch (sequences)", "decode throughput (tokens/s)", PLOTS["throughput"], log_y=False)
    return list(paths.values())


def write(comparison: Comparison, out: Path) -> list[Path]:
    """report.md, results.json and the plots under `out` (created); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(comparison))
    (out / "results.json").write_text(json.dumps(to_json(comparison), indent=2))
    return [out / "report.md", out / "results.json", *write_plots(comparison, out)]
