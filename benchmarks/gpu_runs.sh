#!/usr/bin/env bash
# The GPU measurements in BENCHMARKS.md (run on the lent GPU from the repo root; $OUT receives JSON).
#   bash benchmarks/gpu_runs.sh chimera|transformers|long-context|recurrent|rwkv7|tp-latency
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v WARNING; python3 -c "import chimera" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
python3 -c "import jax, jaxlib; print('jax', jax.__version__, jaxlib.__version__, jax.devices())"
case "${1:-chimera}" in
  chimera)
    python3 benchmarks/copy_bandwidth.py
    for cfg in llama-3.2-1b llama-3-8b; do
      python3 -m chimera.runtime.cli bench --config $cfg --batch 1,16 --prompt-len 128 --gen 128 --dtype bfloat16 --json "$OUT/chimera-$cfg.json"
    done
    python3 -m chimera.runtime.cli bench --config llama-3-8b --batch 1 --prompt-len 2048 --gen 16 --dtype bfloat16 --repeats 3 --json "$OUT/chimera-llama-3-8b-prefill2048.json"
    ;;
  long-context)
    for cfg in mistral-7b llama-3-8b; do
      python3 -m chimera.runtime.cli bench --config $cfg --batch 1 --context 4096,32768 --gen 64 --dtype bfloat16 --repeats 3 --json "$OUT/chimera-$cfg-context.json"
    done
    ;;
  recurrent)
    cli="python3 -m chimera.runtime.cli bench --dtype bfloat16 --gen 64 --repeats 3"
    # batch 64 prefills 256 tokens per row and call: at 2048 the SSD prefill's [L x L] decay
    # matrices of 64 rows need more than the GPU's memory.
    $cli --config mamba2-2.7b --batch 1,64 --context 1024 --prefill-chunk 256 --json "$OUT/chimera-mamba2-2.7b-1k.json"
    $cli --config mamba2-2.7b --batch 1 --context 4096,32768 --json "$OUT/chimera-mamba2-2.7b-long.json"
    ;;
  rwkv7)
    cli="python3 -m chimera.runtime.cli bench --dtype bfloat16 --gen 64 --repeats 3"
    $cli --config rwkv7-1.5b --batch 1,64 --context 1024 --json "$OUT/chimera-rwkv7-1.5b-1k.json"
    $cli --config rwkv7-1.5b --batch 1 --context 4096,32768 --json "$OUT/chimera-rwkv7-1.5b-long.json"
    ;;
  h100-dense)  # the performance issue's dense targets on one H100, chimera and transformers in one call
    cli="python3 -m chimera.runtime.cli bench --dtype bfloat16"
    $cli --config llama-3-8b --batch 1,16,64 --prompt-len 128 --gen 128 --json "$OUT/chimera-llama-3-8b.json"
    $cli --config llama-3.2-1b --batch 1,16 --prompt-len 128 --gen 128 --json "$OUT/chimera-llama-3.2-1b.json"
    $cli --config llama-3-8b --batch 1 --prompt-len 2048 --gen 16 --repeats 3 --json "$OUT/chimera-llama-3-8b-prefill2048.json"
    $cli --config mistral-7b --batch 1 --context 4096,32768 --gen 64 --repeats 3 --json "$OUT/chimera-mistral-7b-context.json"
    for cfg in llama-3-8b llama-3.2-1b; do
      python3 benchmarks/transformers_generate.py --config $cfg --batch 1,16 --prompt-len 128 --gen 128 --json "$OUT/transformers-$cfg.json"
    done
    ;;
  h100-kernels)  # the decode-attention kernel, cuDNN prefill and the MoE gather path on one H100
    python3 benchmarks/check_gpu_attention.py || exit 1  # the fused paths equal the XLA ones first
    python3 benchmarks/decode_attention.py --json "$OUT/decode-attention.json"
    cli="python3 -m chimera.runtime.cli bench --dtype bfloat16"
    $cli --config llama-3-8b --batch 1,16,64 --prompt-len 128 --gen 128 --json "$OUT/chimera-llama-3-8b.json"
    $cli --config llama-3-8b --batch 1 --context 1024,16384 --cache-len 32768 --gen 64 --repeats 3 --json "$OUT/chimera-llama-3-8b-cache32k.json"
    $cli --config llama-3-8b --batch 1 --prompt-len 2048 --gen 16 --repeats 3 --json "$OUT/chimera-llama-3-8b-prefill2048.json"
    $cli --config llama-3.2-1b --batch 1,16 --prompt-len 128 --gen 128 --json "$OUT/chimera-llama-3.2-1b.json"
    sed 's/^n_layers: .*/n_layers: 8/' configs/mixtral-8x7b.yaml > "$OUT/mixtral-8layers.yaml"
    $cli --config "$OUT/mixtral-8layers.yaml" --batch 1,64 --prompt-len 128 --gen 64 --repeats 3 --json "$OUT/chimera-mixtral-8layers.json"
    ;;
  scale-out)  # 4 GPUs: Llama-3-70B and -8B over tensor, DeepSeek-V2-Lite over expert, all-to-all time from a trace
    B="python3 -m chimera.runtime.cli bench --dtype bfloat16 --prompt-len 128 --gen 32 --repeats 2"
    $B --config llama-3-70b --batch 1,16 --mesh tensor=4 --json "$OUT/llama-3-70b-tensor4.json"
    $B --config llama-3-70b --batch 1,16 --mesh tensor=2 --json "$OUT/llama-3-70b-tensor2.json"
    $B --config llama-3-8b --batch 1,16 --mesh tensor=4 --json "$OUT/llama-3-8b-tensor4.json"
    $B --config deepseek-v2-lite --batch 1,16 --json "$OUT/deepseek-v2-lite-1gpu.json"
    $B --config deepseek-v2-lite --batch 1,16 --mesh expert=4 --json "$OUT/deepseek-v2-lite-expert4.json"
    python3 benchmarks/profile_decode.py --config deepseek-v2-lite --mesh expert=4 --batch 16 --out "$OUT/profile-dsv2-expert4" --top 40
    rm -rf "$OUT/profile-dsv2-expert4/trace"
    ;;
  tp-latency)  # 2+ GPUs: per-all-reduce latency and llama-3-8b tensor=2 batch 1 under XLA command-buffer settings
    nvidia-smi topo -m
    graphs="FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN"
    for flags in "" "--xla_gpu_enable_command_buffer=$graphs,COLLECTIVES" \
                 "--xla_gpu_enable_command_buffer=$graphs,COLLECTIVES,WHILE,CONDITIONAL" "--xla_gpu_enable_command_buffer="; do
      XLA_FLAGS="$flags" python3 benchmarks/collective_latency.py --devices 2
    done
    for flags in "" "--xla_gpu_enable_command_buffer=$graphs,COLLECTIVES,WHILE,CONDITIONAL"; do
      for mesh in "" "--mesh tensor=2"; do
        echo "XLA_FLAGS=$flags $mesh"
        XLA_FLAGS="$flags" python3 -m chimera.runtime.cli bench --config llama-3-8b --batch 1 --prompt-len 128 --gen 32 \
          --dtype bfloat16 --repeats 2 $mesh
      done
    done
    ;;
  transformers)
    for cfg in llama-3.2-1b llama-3-8b; do
      python3 benchmarks/transformers_generate.py --config $cfg --batch 1,16 --prompt-len 128 --gen 128 --json "$OUT/transformers-$cfg.json"
    done
    ;;
esac
