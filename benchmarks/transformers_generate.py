"""Baseline for BENCHMARKS.md: transformers' `generate` with a static cache (and its automatic
torch.compile of the decode step) on a chimera preset's shapes, random bf16 weights, on CUDA.

    python benchmarks/transformers_generate.py --config llama-3-8b --batch 1,16 --prompt-len 128 --gen 128

Prefill time is a generate of one token; decode ms/step is (generate of `gen` tokens - prefill) / (gen - 1).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time

import torch
import transformers

import chimera
from chimera.architectures.hf.llama import to_hf_config


def timed_generate(model, input_ids, new_tokens: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, cache_implementation="static",
                         pad_token_id=0)
    torch.cuda.synchronize()
    assert out.shape[1] == input_ids.shape[1] + new_tokens
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch", default="1,16")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()

    config = chimera.load_config(args.config)
    hf_config = transformers.LlamaConfig(**to_hf_config(config), dtype="bfloat16")
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(hf_config).eval()
    results = []
    for batch in [int(b) for b in args.batch.split(",")]:
        input_ids = torch.randint(0, config.vocab_size, (batch, args.prompt_len), device="cuda")
        warmup_s = timed_generate(model, input_ids, args.gen) + timed_generate(model, input_ids, 1)
        prefill = statistics.median(timed_generate(model, input_ids, 1) for _ in range(args.repeats))
        full = statistics.median(timed_generate(model, input_ids, args.gen) for _ in range(args.repeats))
        step = (full - prefill) / (args.gen - 1)
        results.append({"batch": batch, "prefill_ms": prefill * 1e3, "decode_ms_per_step": step * 1e3,
                        "tokens_per_s": batch / step, "warmup_s": warmup_s})
        print(f"transformers {transformers.__version__} torch {torch.__version__} {config.name} batch {batch}: "
              f"prefill {prefill * 1e3:.2f} ms, decode {step * 1e3:.3f} ms/step, {batch / step:.1f} tok/s "
              f"(warm-up {warmup_s:.1f} s)", flush=True)
    report = {"config": config.name, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "transformers": transformers.__version__, "prompt_len": args.prompt_len, "gen": args.gen,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
