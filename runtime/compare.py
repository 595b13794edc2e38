"""`chimera compare`: architectures side by side — what they cost and how fast they run.

Per config: total and active parameters, parameter bytes; per context: decode-state bytes
per sequence (analytic, from `costs`, beside what `init_state` really allocates), FLOPs per
generated and per prompt token; per (context, batch): measured prefill and decode speed
(through `bench`, the Engine's own programs); optionally MQAR accuracy after brief training.
`report.py` turns the result into a table, markdown, JSON and plots.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Sequence

import jax

from chimera.architectures.config import ModelConfig, list_presets
from chimera.runtime import bench, costs, mqar
from chimera.runtime.model import Model, build

# The no-argument comparison: one preset per family, those that exist, in this order.
PREFERRED_PRESETS = ("llama-tiny", "mistral-tiny", "mamba2-tiny", "rwkv7-tiny", "mixtral-tiny", "jamba-tiny")
# Chosen so that the no-argument run (every preferred preset) takes < 2 minutes on a 2-core CPU,
# where compiling each measured shape dominates.
DEFAULT_CONTEXTS = (128, 512)
DEFAULT_BATCHES = (1, 4)
GRIDS = ("cross", "full")


def default_presets() -> list[str]:
    available = set(list_presets())
    return [name for name in PREFERRED_PRESETS if name in available]


def grid_points(contexts: Sequence[int], batches: Sequence[int], grid: str) -> list[tuple[int, int]]:
    """The (context, batch) pairs to measure. "full": all of them. "cross": every context at the
    smallest batch and every batch at the longest context — what the plots of step time vs
    context and throughput vs batch need, at a fraction of the compilations."""
    if grid == "full":
        return sorted({(n, b) for n in contexts for b in batches})
    if grid != "cross":
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    return sorted({(n, min(batches)) for n in contexts} | {(max(contexts), b) for b in batches})


def state_curve_contexts(contexts: Sequence[int]) -> list[int]:
    """Powers of two up to the longest context, plus the contexts themselves: analytic state is
    cheap, and a dense curve shows where a window's cache stops growing."""
    powers = [1 << i for i in range(max(contexts).bit_length())]
    return sorted(set(powers) | set(contexts))


@dataclasses.dataclass(frozen=True)
class ContextCosts:
    """Analytic costs of one sequence holding `context` tokens.
    state_bytes: `costs.state_bytes`; allocated_state_bytes: what `init_state(1, context)`
    allocates (lengths excluded). flops_per_prompt_token: a prefill of `context` tokens / context."""
    context: int
    state_bytes: int
    allocated_state_bytes: int
    flops_per_generated_token: float
    flops_per_prompt_token: float

    @property
    def state_agrees(self) -> bool:
        return self.state_bytes == self.allocated_state_bytes


@dataclasses.dataclass(frozen=True)
class Speed:
    """Measured at `batch` sequences holding `context` tokens (CPU numbers are indicative).
    mbu: None unless the device's peak bandwidth is known (bench.PEAKS)."""
    context: int
    batch: int
    prefill_tokens_per_s: float
    decode_ms_per_step: float
    decode_tokens_per_s: float
    mbu: float | None
    compile_s: float


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One config's results. active_params: the parameters one token touches (a block's
    `active_param_count()` where it has one, e.g. an MoE's routed experts; one embedding row
    rather than the table, unless the table is also the LM head)."""
    name: str
    description: str
    dtype: str
    total_params: int
    active_params: int
    param_bytes: int
    costs: tuple[ContextCosts, ...]
    state_curve: tuple[tuple[int, int], ...]  # (context, analytic state bytes) on a dense grid
    speeds: tuple[Speed, ...]
    mqar_result: mqar.MQARResult | None = None  # with --task mqar

    def speed(self, context: int, batch: int) -> Speed | None:
        """The measurement at (context, batch); None where the grid skipped it."""
        return next((s for s in self.speeds if (s.context, s.batch) == (context, batch)), None)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Every architecture's results and the settings that produced them."""
    architectures: tuple[Architecture, ...]
    contexts: tuple[int, ...]
    batches: tuple[int, ...]
    grid: str
    points: tuple[tuple[int, int], ...]  # the (context, batch) pairs measured
    gen: int
    repeats: int
    device: str
    peak_bandwidth_bytes_s: float | None
    jax_version: str
    date: str
    mqar_task: mqar.MQARTask | None = None
    mqar_settings: mqar.TrainSettings | None = None


# --- analytic ---

def active_block_params(block, shapes) -> int:
    """Parameters of a block a token touches: all of them unless it says otherwise."""
    return block.active_param_count() if hasattr(block, "active_param_count") else costs.tree_size(shapes)


def active_params(model: Model) -> int:
    shapes = costs.param_shapes(model)
    inactive = 0
    for (mixer, ffn), layer in zip(model.blocks, shapes["layers"]):
        inactive += costs.tree_size(layer["mixer"]) - active_block_params(mixer, layer["mixer"])
        if ffn is not None:
            inactive += costs.tree_size(layer["ffn"]) - active_block_params(ffn, layer["ffn"])
    if not model.config.tie_embeddings:  # a token reads its own row; a tied table is the head, read whole
        inactive += costs.tree_size(shapes["embed"]) - model.config.d_model
    return costs.tree_size(shapes) - inactive


def allocated_state_bytes(model: Model, context: int) -> int:
    """Bytes of the arrays `init_state(1, context)` allocates: mixer and (stateful) ffn states."""
    state = model.init_state(1, context)
    arrays = jax.tree.leaves((state.layers, getattr(state, "ffn_layers", ())))
    return sum(x.nbytes for x in arrays)


def context_costs(model: Model, context: int) -> ContextCosts:
    return ContextCosts(
        context=context,
        state_bytes=costs.state_bytes(model, context),
        allocated_state_bytes=allocated_state_bytes(model, context),
        flops_per_generated_token=costs.flops_per_token(model, context),
        flops_per_prompt_token=costs.prefill_flops(model, 1, context) / context,
    )


# --- measured ---

def measure(config: ModelConfig, params, context: int, batch: int, gen: int, repeats: int, seed: int) -> Speed:
    """Prefill `batch` prompts of `context` tokens, then time decode steps from there."""
    r = bench.bench_batch(config, params, batch, context, gen, repeats, seed)
    return Speed(context=context, batch=batch,
                 prefill_tokens_per_s=batch * context / (r.prefill_ms / 1e3),
                 decode_ms_per_step=r.decode_ms_per_step, decode_tokens_per_s=r.tokens_per_s,
                 mbu=r.mbu, compile_s=r.compile_s)


# --- the whole comparison ---

def n_steps(n_configs: int, contexts: Sequence[int], batches: Sequence[int], grid: str, with_mqar: bool) -> int:
    """How many times `compare` calls `advance`: for a progress bar."""
    return n_configs * (1 + len(grid_points(contexts, batches, grid)) + int(with_mqar))


def check(configs: Sequence[ModelConfig], contexts, batches, gen: int, repeats: int,
          mqar_task: mqar.MQARTask | None) -> None:
    """Refuse bad inputs before minutes of measuring, with a message naming the problem."""
    if not configs:
        raise ValueError("nothing to compare: give at least one config")
    names = [c.name for c in configs]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ValueError(f"two configs are named {duplicate!r}: give each its own name, the report is keyed by it")
    if not contexts or not batches or min(contexts) < 1 or min(batches) < 1 or gen < 2 or repeats < 1:
        raise ValueError(f"need contexts and batches >= 1, gen >= 2 and repeats >= 1, got contexts {list(contexts)}, "
                         f"batches {list(batches)}, gen {gen}, repeats {repeats}")
    too_small = next((c for c in configs if mqar_task and c.vocab_size < mqar_task.vocab_needed), None)
    if too_small is not None:
        raise ValueError(f"MQAR needs a vocabulary of {mqar_task.vocab_needed}; "
                         f"{too_small.name} has {too_small.vocab_size}")


def analyse(config: ModelConfig, contexts: Sequence[int]) -> Architecture:
    """Everything about `config` that needs no measurement (speeds left empty)."""
    model = build(config)
    return Architecture(
        name=config.name, description=config.description, dtype=config.dtype,
        total_params=costs.tree_size(costs.param_shapes(model)), active_params=active_params(model),
        param_bytes=costs.param_bytes(model), costs=tuple(context_costs(model, n) for n in contexts),
        state_curve=tuple((n, costs.state_bytes(model, n)) for n in state_curve_contexts(contexts)), speeds=())


def compare(configs: Sequence[ModelConfig], contexts: Sequence[int] = DEFAULT_CONTEXTS,
            batches: Sequence[int] = DEFAULT_BATCHES, grid: str = "cross", gen: int = 32, repeats: int = 2,
            seed: int = 0, mqar_task: mqar.MQARTask | None = None,
            mqar_settings: mqar.TrainSettings = mqar.TrainSettings(),
            advance: Callable[[str], None] = lambda done: None) -> Comparison:
    """Analytic costs of each config at each context; speed at the `grid_points`; MQAR accuracy
    when `mqar_task` is given. `advance(what)` is called after each step (see `n_steps`)."""
    check(configs, contexts, batches, gen, repeats, mqar_task)
    contexts, batches = sorted(set(contexts)), sorted(set(batches))
    points = grid_points(contexts, batches, grid)
    architectures = []
    for config in configs:
        architecture = analyse(config, contexts)
        advance(f"{config.name}: analytic costs")
        # Timing needs weights of the right shapes and scales, not particular values. Run eagerly
        # with an "unsafe_rbg" key, `init` costs a CPU a few seconds less per config than a
        # compiled threefry one (eager kernels are shared across configs).
        params = build(config).init(jax.random.key(seed, impl="unsafe_rbg"))
        speeds = []
        for context, batch in points:
            speeds.append(measure(config, params, context, batch, gen, repeats, seed))
            advance(f"{config.name}: context {context}, batch {batch}")
        del params  # free the weights before the next config (and before MQAR trains its own)
        result = None
        if mqar_task is not None:
            result = mqar.train(config, mqar_task, mqar_settings)
            advance(f"{config.name}: MQAR")
        architectures.append(dataclasses.replace(architecture, speeds=tuple(speeds), mqar_result=result))

    device = jax.devices()[0]
    return Comparison(
        architectures=tuple(architectures), contexts=tuple(contexts), batches=tuple(batches), grid=grid,
        points=tuple(points), gen=gen, repeats=repeats, device=device.device_kind,
        peak_bandwidth_bytes_s=bench.device_peaks(device)[0], jax_version=jax.__version__,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        mqar_task=mqar_task, mqar_settings=mqar_settings if mqar_task is not None else None)
