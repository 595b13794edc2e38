"""The `chimera` command: generate, bench, compare, convert, presets."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import jax

from chimera.architectures.config import ConfigError, list_presets, load_config
from chimera.runtime import compare

SIZE_SUFFIXES = {"k": 1024, "m": 1024 ** 2}  # context lengths: 4k = 4096 tokens, as the field says


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def context_list(text: str) -> list[int]:
    """'1k,4k,16k' -> [1024, 4096, 16384]; plain integers too."""
    values = []
    for item in (v.strip().lower() for v in text.split(",")):
        scale = SIZE_SUFFIXES.get(item[-1:], 1)
        digits = item[:-1] if scale > 1 else item
        if not digits.isdigit() or int(digits) < 1:
            raise argparse.ArgumentTypeError(f"{item!r} in {text!r} is not a context length: expected positive "
                                             f"integers, optionally with k (x1024) or m (x1024^2), e.g. 1k,4k,16k")
        values.append(int(digits) * scale)
    return values


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def mesh_sizes(text: str) -> dict[str, int]:
    """'tensor=2' or 'data=2,expert=4' -> {axis: size} for make_mesh."""
    sizes = {}
    for item in (v.strip() for v in text.split(",") if v.strip()):
        axis, _, size = item.partition("=")
        if axis.strip() not in ("data", "expert", "tensor") or not size.strip().isdigit() or int(size) < 1:
            raise argparse.ArgumentTypeError(f"{item!r} in {text!r}: expected AXIS=N with AXIS data, expert or "
                                             f"tensor and N >= 1, e.g. tensor=2 or data=2,expert=4")
        sizes[axis.strip()] = int(size)
    if not sizes:
        raise argparse.ArgumentTypeError(f"no mesh axes in {text!r}")
    return sizes


def config_from(args):
    """The --config preset or YAML, with --dtype applied when given."""
    config = load_config(args.config)
    return config.replace(dtype=args.dtype) if args.dtype else config


def load_model(args):
    """(model, params) from --config (random weights) or --hf (a checkpoint)."""
    from chimera.architectures.hf import from_hf
    from chimera.runtime.model import build
    if args.hf:
        return from_hf(args.hf, dtype=args.dtype or "float32")
    model = build(config_from(args))
    return model, jax.jit(model.init)(jax.random.key(args.seed))


def cmd_generate(args) -> int:
    from chimera.runtime.engine import Engine
    from chimera.runtime.sampling import Sampling
    from chimera.runtime.tokenizer import tokenizer_for
    model, params = load_model(args)
    tokenizer = tokenizer_for(model)
    prompts = [tokenizer.encode(p) for p in args.prompt]
    max_len = args.max_len or max(len(p) for p in prompts) + args.max_new_tokens
    engine = Engine(model, params, max_batch=len(prompts), max_len=max_len)
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                        seed=args.seed)
    start = time.perf_counter()
    outs = engine.generate(prompts, max_new_tokens=args.max_new_tokens, sampling=sampling,
                           stop_tokens=tuple(args.stop_token))
    seconds = time.perf_counter() - start
    for prompt, out in zip(args.prompt, outs):
        if args.json:
            print(json.dumps({"prompt": prompt, "tokens": out.tokens, "text": tokenizer.decode(out.tokens),
                              "finish_reason": out.finish_reason}))
        else:
            print(f"{prompt}{tokenizer.decode(out.tokens)}")
            print(f"[{len(out.tokens)} tokens, finish_reason={out.finish_reason}]")
    n_tokens = sum(len(o.tokens) for o in outs)
    print(f"[{model.config.name}: {n_tokens} tokens in {seconds:.2f} s, compilation included]", file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    from chimera.runtime import bench
    config = config_from(args)
    prompt_lens = args.context or [args.prompt_len]
    mesh = None
    if args.mesh:  # over the first data x expert x tensor devices
        from chimera.sharding.mesh import make_mesh
        n_devices = math.prod(args.mesh.values())
        if n_devices > jax.device_count():
            raise ValueError(f"--mesh needs {n_devices} devices, {jax.device_count()} are available")
        mesh = make_mesh(**args.mesh, devices=jax.devices()[:n_devices])
    report = bench.run(config, args.batch, prompt_lens, args.gen, repeats=args.repeats, seed=args.seed,
                       prefill_chunk=args.prefill_chunk, mesh=mesh, cache_len=args.cache_len,
                       decode_chunk=args.decode_chunk, compiler_options={} if args.xla_defaults else None)
    print(bench.format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from chimera.runtime import mqar, report  # report imports matplotlib: only when needed
    # Load every config first: a bad name fails at once, not after minutes of measuring.
    configs = [load_config(name) for name in args.configs or compare.default_presets()]
    task = mqar.MQARTask() if args.task == "mqar" else None
    settings = mqar.TrainSettings(steps=args.mqar_steps, seed=args.seed)
    columns = (TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        bar = progress.add_task("compiling and measuring",
                                total=compare.n_steps(len(configs), args.contexts, args.batch, args.grid,
                                                      task is not None))
        result = compare.compare(configs, args.contexts, args.batch, grid=args.grid, gen=args.gen,
                                 repeats=args.repeats, seed=args.seed, mqar_task=task, mqar_settings=settings,
                                 advance=lambda done: progress.update(bar, advance=1, description=done))
    # Wide enough for several architectures side by side when the output is a log, not a terminal.
    Console(width=None if sys.stdout.isatty() else 200).print(report.table(result))
    paths = report.write(result, Path(args.out))
    print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


def cmd_convert(args) -> int:
    from chimera.architectures.checkpoint import save_checkpoint
    from chimera.architectures.hf import from_hf
    model, params = from_hf(args.hf, dtype=args.dtype)
    save_checkpoint(args.out, model, params)
    n_params = sum(leaf.size for leaf in jax.tree.leaves(params))
    print(f"wrote {args.out}: {model.config.name}, {n_params:,} parameters in {args.dtype}", file=sys.stderr)
    return 0


def cmd_presets(args) -> int:
    for name in list_presets():
        config = load_config(name)
        print(f"{name:<16} {config.description}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="chimera", description="A pure-functional LLM inference runtime on JAX.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="generate text from a preset (random weights) or an HF folder",
                              description="Generate text. A preset or YAML config gets random weights and a "
                                          "byte-level tokenizer; an HF folder its own weights and tokenizer.")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="bundled preset name or path to a YAML config")
    source.add_argument("--hf", help="a Hugging Face folder (config.json + *.safetensors)")
    gen.add_argument("--prompt", action="append", required=True,
                     help="prompt text; repeat for a batch of prompts")
    gen.add_argument("--max-new-tokens", type=positive_int, default=32)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--min-p", type=float, default=0.0)
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (and random-weight seed)")
    gen.add_argument("--stop-token", type=int, action="append", default=[], help="a token id that ends a row")
    gen.add_argument("--max-len", type=positive_int, help="engine capacity (default: just enough)")
    gen.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    gen.add_argument("--json", action="store_true", help="one JSON object per prompt")
    gen.set_defaults(run=cmd_generate)

    bench = commands.add_parser("bench", help="measure prefill and decode speed (MBU, MFU)",
                                description="Benchmark a config with random weights: prefill ms, decode ms/step, "
                                            "tokens/s, bytes per step, GB/s and MBU, prefill MFU. Bytes count "
                                            "the KV/state at the mean decode context.")
    bench.add_argument("--config", required=True, help="bundled preset name or path to a YAML config")
    bench.add_argument("--batch", type=int_list, default=[1], help="comma-separated batch sizes, e.g. 1,16")
    bench.add_argument("--prompt-len", type=positive_int, default=128)
    bench.add_argument("--context", type=int_list,
                       help="comma-separated contexts, e.g. 4096,32768: decode with N tokens already cached "
                            "(a prompt of N, prefilled in chunks); replaces --prompt-len")
    bench.add_argument("--gen", type=positive_int, default=128, help="tokens generated per row (>= 2)")
    bench.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    bench.add_argument("--repeats", type=positive_int, default=5)
    bench.add_argument("--cache-len", type=positive_int,
                       help="KV-cache slots per row (default: the request's own size, a power of two)")
    bench.add_argument("--prefill-chunk", type=positive_int, default=2048,
                       help="prompt tokens per prefill call and row (a power of two; bounds prefill memory)")
    bench.add_argument("--decode-chunk", type=positive_int, default=1,
                       help="decode steps per loop iteration of known length (Engine(decode_chunk=K))")
    bench.add_argument("--xla-defaults", action="store_true",
                       help="run with XLA's default options, not chimera's GPU decode options (CUDA graphs "
                            "over the whole decode loop, collectives included: runtime/gpu_options.py)")
    bench.add_argument("--mesh", type=mesh_sizes,
                       help="shard over a mesh of the first devices, e.g. tensor=2 or expert=2 or data=2,tensor=4 "
                            "(MBU and MFU are then per device)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--json", help="also write the report to this JSON file")
    bench.set_defaults(run=cmd_bench)

    comp = commands.add_parser("compare", help="compare architectures: parameters, state, FLOPs, speed (and MQAR)",
                               description="Build each config with random weights and report side by side: total "
                                           "and active parameters, decode-state bytes and FLOPs per token at each "
                                           "context, measured prefill and decode speed at each context and batch. "
                                           "Writes a table, report.md, results.json and PNG plots. With no "
                                           "configs, compares the bundled tiny presets of each family.")
    comp.add_argument("configs", nargs="*", metavar="CONFIG",
                      help="preset names or YAML paths (default: the tiny presets of each family)")
    comp.add_argument("--contexts", type=context_list, default=list(compare.DEFAULT_CONTEXTS),
                      help="comma-separated contexts, k = 1024 tokens, e.g. 1k,4k,16k "
                           f"(default {','.join(map(str, compare.DEFAULT_CONTEXTS))})")
    comp.add_argument("--batch", type=int_list, default=list(compare.DEFAULT_BATCHES),
                      help=f"comma-separated batch sizes (default {','.join(map(str, compare.DEFAULT_BATCHES))})")
    comp.add_argument("--grid", choices=compare.GRIDS, default="cross",
                      help="which (context, batch) pairs to time: cross (default) = every context at the smallest "
                           "batch and every batch at the longest context; full = all pairs (compiles more)")
    comp.add_argument("--out", default="out/compare", help="folder for report.md, results.json and the plots")
    comp.add_argument("--task", choices=["mqar"],
                      help="also train each config briefly on multi-query associative recall; report accuracy")
    comp.add_argument("--mqar-steps", type=positive_int, default=300, help="AdamW steps of MQAR training")
    comp.add_argument("--gen", type=positive_int, default=32, help="decode steps timed per measurement (>= 2)")
    comp.add_argument("--repeats", type=positive_int, default=2, help="timed runs per measurement (median)")
    comp.add_argument("--seed", type=int, default=0)
    comp.set_defaults(run=cmd_compare)

    convert = commands.add_parser("convert", help="convert a Hugging Face folder to an Orbax checkpoint",
                                  description="Import a Hugging Face folder (config.json + *.safetensors) and "
                                              "write it as a chimera checkpoint: config.yaml, the params "
                                              "(Orbax) and tokenizer.json. chimera.load_checkpoint(CKPT, mesh) "
                                              "reads it straight into a mesh's shardings.")
    convert.add_argument("--hf", required=True, help="a Hugging Face folder (config.json + *.safetensors)")
    convert.add_argument("--out", required=True, help="the checkpoint folder to write (must not exist)")
    convert.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                         help="the params' dtype (default float32)")
    convert.set_defaults(run=cmd_convert)

    presets = commands.add_parser("presets", help="list the bundled presets")
    presets.set_defaults(run=cmd_presets)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not getattr(args, "xla_defaults", False):
        from chimera.runtime.gpu_options import set_xla_flags
        set_xla_flags()  # before anything starts a backend: XLA reads XLA_FLAGS once
    try:
        return args.run(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"chimera {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
