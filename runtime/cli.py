"""The `chimera` command: generate, bench, presets."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

from chimera.architectures.config import ConfigError, list_presets, load_config


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


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
    report = bench.run(config, args.batch, prompt_lens, args.gen, repeats=args.repeats, seed=args.seed,
                       prefill_chunk=args.prefill_chunk)
    print(bench.format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
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
    bench.add_argument("--prefill-chunk", type=positive_int, default=2048,
                       help="prompt tokens per prefill call and row (a power of two; bounds prefill memory)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--json", help="also write the report to this JSON file")
    bench.set_defaults(run=cmd_bench)

    presets = commands.add_parser("presets", help="list the bundled presets")
    presets.set_defaults(run=cmd_presets)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"chimera {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
