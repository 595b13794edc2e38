#!/usr/bin/env bash
# The GPU measurements in BENCHMARKS.md (run on the lent GPU from the repo root; $OUT receives JSON).
#   bash benchmarks/gpu_runs.sh CASE   (the cases below)
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v WARNING; python3 -c "import chimera" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
python3 -c "import jax, jaxlib; print('jax', jax.__version__, jaxlib.__version__, jax.devices())"
# chimera's GPU decode options as XLA_FLAGS words (what `chimera` puts in XLA_FLAGS; every collective captured
# when NCCL_GRAPH_MIXING_SUPPORT=0 is in this call's environment)
chimera_xla_flags() {
  python3 -c "from chimera.runtime.gpu_options import as_xla_flags, gpu_decode_options; print(' '.join(as_xla_flags(gpu_decode_options())))"
}
# Sharded == one GPU under the CLI's XLA_FLAGS, float32 (session 7): llama-3-8b with 8 layers on tensor=2, then
# every tiny preset on tensor=2 and expert=2 (does every program instantiate its CUDA graphs under these options?)
equality_under_cli_flags() {  # with $opts if set, else the CLI's own
  opts=${opts:-$(chimera_xla_flags)}
  [ "${1:-}" != tiny-only ] && equality_8layers
  tiny=$(ls configs/*-tiny.yaml | xargs -n1 basename | sed 's/.yaml$//' | paste -sd,)
  # one prompt: one-row programs, which on tensor=2 take ONE_ROW_TENSOR_PARALLEL_OPTIONS
  XLA_FLAGS="$opts" JAX_DEFAULT_MATMUL_PRECISION=highest timeout 300 python3 benchmarks/sharded_equality.py --dtype float32 \
    --config $tiny --mesh tensor=2 --mesh expert=2 --prompts 17 --new-tokens 12 --json $R/equality-tiny.json > $R/equality-tiny.log 2>&1
  echo "exit $?"; grep -E '^ "config"|"error"|^ "identical"' $R/equality-tiny.log | cut -c1-300; save
}
# llama-3-8b cut to 8 layers (every layer is alike), as $R/llama-3-8b-8layers.yaml
llama_8layers() { sed 's/^n_layers: .*/n_layers: 8/' configs/llama-3-8b.yaml > $R/llama-3-8b-8layers.yaml; }
# llama-3-8b with one tensor=2 device's share of every weight (16 heads, 4 KV heads, d_ff 7168, half the vocabulary:
# the GEMM shapes of one tensor=2 device), as $R/llama-3-8b-half.yaml
llama_half() {
  sed -e 's/^name: .*/name: llama-3-8b-half/' -e 's/^vocab_size: .*/vocab_size: 64128/' \
    -e 's/n_heads: 32, n_kv_heads: 8/n_heads: 16, n_kv_heads: 4/' -e 's/d_ff: 14336/d_ff: 7168/' \
    configs/llama-3-8b.yaml > $R/llama-3-8b-half.yaml
}
# sharded == one GPU: llama-3-8b with 8 layers on tensor=2, float32, under $opts (else the CLI's flags)
equality_8layers() {
  opts=${opts:-$(chimera_xla_flags)}; llama_8layers
  XLA_FLAGS="$opts" JAX_DEFAULT_MATMUL_PRECISION=highest timeout 150 python3 benchmarks/sharded_equality.py --dtype float32 \
    --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --prompts 5,40 --new-tokens 16 \
    --json $R/equality-llama-3-8b-8layers.json > $R/equality-8b.log 2>&1
  echo "exit $?"; grep -E '"identical"|rror' $R/equality-8b.log | tail -n 3 | cut -c1-300; save
}
# What a landing case checks (sessions 17-18): the kernels' bits (all_reduce.py, rows $1), then llama-3-8b cut to 8
# layers tensor=2 == one GPU in float32, one prompt (one-row programs) and two prompts, under the CLI's flags
landing_checks() {
  echo "== bits"; timeout 80 python3 benchmarks/all_reduce.py --rows $1 --repeats 5 --chain 16 --json $R/all_reduce.json \
    2>&1 | grep -vE "^[IW]0000|^WARNING" | grep -E "fused|bit for bit" | cut -c1-200; save
  llama_8layers; opts=$(chimera_xla_flags)
  for prompts in 17 5,40; do
    XLA_FLAGS="$opts" JAX_DEFAULT_MATMUL_PRECISION=highest timeout 100 python3 benchmarks/sharded_equality.py --dtype float32 \
      --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --prompts $prompts --new-tokens 16 \
      --json $R/equality-$prompts.json > $R/equality-$prompts.log 2>&1
    echo "== equality prompts $prompts exit $?"; grep -E '"identical"|rror' $R/equality-$prompts.log | tail -n 3 | cut -c1-300; save
  done
}
# The bench of CONFIG at BATCHES (comma-separated) for each run named (a mesh such as tensor=2, or 1gpu), in that
# order, as $R/NAME-RUN-N.json: alternate_bench CONFIG BATCHES RUNS...
alternate_bench() {
  config=$1 batches=$2; shift 2
  for run in "$@"; do
    mesh=""; [ $run != 1gpu ] && mesh="--mesh $run"
    echo "== $(basename $config .yaml) $run"; timeout 150 python3 -m chimera.runtime.cli bench --config $config --dtype bfloat16 \
      --prompt-len 128 --gen 128 --repeats 3 --batch $batches $mesh --json $R/$(basename $config .yaml)-$run-$RANDOM.json 2>&1 \
      | grep -vE "^[IW]0000|^WARNING" | grep -E "^ +128 |rror" | cut -c1-170; save
  done
}
# llama-3-8b (8 layers) tensor=2 batch 1 profiled with its graphs kept, under the CLI's flags: profile_8layers NAME TOP
profile_8layers() {
  llama_8layers
  XLA_FLAGS="$(chimera_xla_flags) --xla_enable_command_buffers_during_profiling=true" timeout 120 python3 \
    benchmarks/profile_decode.py --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --batch 1 --gen 16 --top $2 \
    --out $R/profile-$1 > $R/profile-$1.log 2>&1
  echo "== profile $1 exit $?"; grep -o 'custom_call_target="chimera_[a-z_]*"' $R/profile-$1/decode.hlo.txt | sort | uniq -c
  rm -rf $R/profile-$1/trace
  sed -n 3,$(( $2 + 6 ))p $R/profile-$1/summary.txt | cut -c1-150; grep -A3 "^collectives\|^idle per device" $R/profile-$1/summary.txt; save
}
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
  x8-dense)  # 8 GPUs: attention paths checked; matvec lowering; all-reduce latency (NCCL vs XLA's one-shot
             # kernel); llama-3-8b on 1, 2, 4, 8 GPUs. Results tarred to $OUT/results.tgz after each step.
    R=/tmp/results; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    python3 benchmarks/xla_flags.py > $R/xla-flags.txt; save
    python3 benchmarks/check_gpu_attention.py > $R/check-gpu-attention.txt 2>&1; echo "exit $?" >> $R/check-gpu-attention.txt
    cat $R/check-gpu-attention.txt; save
    python3 benchmarks/matvec_lowering.py --json $R/matvec-lowering.json; save
    oneshot="--xla_gpu_unsupported_use_all_reduce_one_shot_kernel=true"
    for n in 2 8; do
      python3 benchmarks/collective_latency.py --devices $n --json $R/all-reduce-$n-nccl.json
      XLA_FLAGS=$oneshot python3 benchmarks/collective_latency.py --devices $n --json $R/all-reduce-$n-oneshot.json
    done; save
    B="python3 -m chimera.runtime.cli bench --config llama-3-8b --batch 1,16 --dtype bfloat16 --prompt-len 128 --gen 32 --repeats 2"
    $B --json $R/llama-3-8b-1gpu.json; save
    for tp in 2 4 8; do $B --mesh tensor=$tp --json $R/llama-3-8b-tensor$tp.json; save; done
    for tp in 2 8; do XLA_FLAGS=$oneshot $B --mesh tensor=$tp --json $R/llama-3-8b-tensor$tp-oneshot.json; save; done
    if grep -q "enable_dot_strength_reduction: accepted" $R/xla-flags.txt; then
      nosr="--xla_gpu_enable_dot_strength_reduction=false"
      XLA_FLAGS=$nosr python3 benchmarks/matvec_lowering.py --json $R/matvec-lowering-nosr.json; save
      XLA_FLAGS=$nosr $B --batch 1 --json $R/llama-3-8b-1gpu-nosr.json; save
      XLA_FLAGS="$nosr $oneshot" $B --batch 1 --mesh tensor=2 --json $R/llama-3-8b-tensor2-nosr-oneshot.json; save
    fi
    ;;
  x8-timing)  # 8 GPUs: llama-3-8b on 1/2/4/8, llama-3-70b on 8, Mixtral-8x7b and DeepSeek-V2-Lite on 1 and expert=8
    R=/tmp/results; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    B="python3 -m chimera.runtime.cli bench --dtype bfloat16 --prompt-len 128 --gen 32 --repeats 2 --batch 1,16"
    $B --config llama-3-8b --json $R/llama-3-8b-1gpu.json; save
    for tp in 2 8 4; do $B --config llama-3-8b --mesh tensor=$tp --json $R/llama-3-8b-tensor$tp.json; save; done
    timeout 200 $B --config llama-3-70b --mesh tensor=8 --json $R/llama-3-70b-tensor8.json; save
    for cfg in mixtral-8x7b deepseek-v2-lite; do
      $B --config $cfg --json $R/$cfg-1gpu.json; save
      $B --config $cfg --mesh expert=8 --json $R/$cfg-expert8.json; save
    done
    ;;
  x8-remaining)  # 8 GPUs, what x8-final had no time for: DeepSeek-V2-Lite on 1 GPU, expert=4, expert=8 and its
                 # all-to-all time (trace); Mixtral-8x7b expert=4 and expert=4,tensor=2; llama-3-8b tensor=8 equality
    R=/tmp/results; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    python3 benchmarks/matvec_lowering.py --json $R/matvec-lowering.json; save  # incl. the MoE gather products
    B="python3 -m chimera.runtime.cli bench --dtype bfloat16 --prompt-len 128 --gen 32 --repeats 2 --batch 1,16"
    $B --config deepseek-v2-lite --json $R/deepseek-v2-lite-1gpu.json; save
    for mesh in expert=8 expert=4; do $B --config deepseek-v2-lite --mesh $mesh --json $R/deepseek-v2-lite-$mesh.json; save; done
    for mesh in expert=4 expert=4,tensor=2; do $B --config mixtral-8x7b --mesh $mesh --json $R/mixtral-8x7b-$mesh.json; save; done
    for cfg in deepseek-v2-lite mixtral-8x7b; do
      python3 benchmarks/profile_decode.py --config $cfg --mesh expert=8 --batch 16 --top 25 --out $R/profile-$cfg-expert8
      rm -rf $R/profile-$cfg-expert8/trace $R/profile-$cfg-expert8/decode.hlo.txt; save
    done
    JAX_DEFAULT_MATMUL_PRECISION=highest python3 benchmarks/sharded_equality.py --dtype float32 --config llama-3-8b \
      --mesh tensor=8 --mesh tensor=2 --prompts 5,40 --new-tokens 16 --json $R/equality-llama-3-8b.json; save
    ;;
  x4-diagnose)  # 4 GPUs (session 5): where a tensor=2 batch-1 step goes now (profiles), how XLA runs its
                # all-reduces under each collective setting (traced), llama-3-8b tensor=2 under the settings,
                # the MoE gather products, DeepSeek-V2-Lite on 1 GPU and expert=4. Tarred after each step.
    R=/tmp/results; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    python3 benchmarks/xla_flags.py > $R/xla-flags.txt; cat $R/xla-flags.txt; save
    for mesh in "--mesh tensor=2" ""; do
      name=profile-llama-3-8b$(echo "$mesh" | tr -d ' =-' | sed 's/mesh/-/')-b1
      timeout 180 python3 benchmarks/profile_decode.py --config llama-3-8b $mesh --batch 1 --top 80 --out $R/$name
      rm -rf $R/$name/trace; save
    done
    for flags in "" "--xla_gpu_experimental_enable_nccl_symmetric_buffers=true" \
                 "--xla_gpu_disable_async_collectives=ALLREDUCE" "--xla_gpu_enable_nccl_user_buffers=true" \
                 "--xla_gpu_unsupported_use_all_reduce_one_shot_kernel=true" "--xla_gpu_allow_all_reduce_kernel=false"; do
      echo "== XLA_FLAGS=$flags"
      XLA_FLAGS="$flags" timeout 90 python3 benchmarks/collective_latency.py --devices 2 --trace /tmp/cl-trace
      rm -rf /tmp/cl-trace
    done 2>&1 | tee $R/all-reduce-settings.txt; save
    B="python3 -m chimera.runtime.cli bench --dtype bfloat16 --prompt-len 128 --gen 32 --repeats 2"
    for flags in "" "--xla_gpu_experimental_enable_nccl_symmetric_buffers=true" "--xla_gpu_disable_async_collectives=ALLREDUCE"; do
      tag=$(echo "$flags" | sed 's/--xla_gpu_//; s/=.*//'); tag=${tag:-default}
      XLA_FLAGS="$flags" timeout 120 $B --config llama-3-8b --batch 1 --mesh tensor=2 --json $R/llama-3-8b-tensor2-$tag.json; save
    done
    timeout 90 python3 benchmarks/matvec_lowering.py --json $R/matvec-lowering.json; save
    timeout 150 $B --config deepseek-v2-lite --batch 1,16 --json $R/deepseek-v2-lite-1gpu.json; save
    timeout 150 $B --config deepseek-v2-lite --batch 1,16 --mesh expert=4 --json $R/deepseek-v2-lite-expert4.json; save
    ;;
  x4-tp-kernel)  # 4 GPUs (session 5): the decode kernel under shard_map; llama-3-8b on 1/2/4 GPUs, tensor=2
                 # under XLA command-buffer / split-K settings, its profile, sharded == 1 GPU, llama-3-70b tensor=4
    R=/tmp/results; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    B="python3 -m chimera.runtime.cli bench --dtype bfloat16 --prompt-len 128 --gen 32 --repeats 2"
    timeout 100 $B --config llama-3-8b --batch 1,16 --mesh tensor=2 --json $R/llama-3-8b-tensor2.json; save
    graphs="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,COLLECTIVES,WHILE,CONDITIONAL"
    for flags in "$graphs" "--xla_gpu_enable_command_buffer=" "--xla_gpu_enable_split_k_autotuning=false"; do
      tag=$(echo "$flags" | sed 's/--xla_gpu_//; s/=.*//'); [ "$flags" = "--xla_gpu_enable_command_buffer=" ] && tag=no_command_buffer
      XLA_FLAGS="$flags" timeout 80 $B --config llama-3-8b --batch 1 --mesh tensor=2 --json $R/llama-3-8b-tensor2-$tag.json; save
    done
    sed 's/^n_layers: .*/n_layers: 8/' configs/llama-3-8b.yaml > $R/llama-3-8b-8layers.yaml
    JAX_DEFAULT_MATMUL_PRECISION=highest timeout 150 python3 benchmarks/sharded_equality.py --dtype float32 \
      --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --mesh tensor=4 --prompts 5,40 --new-tokens 16 \
      --json $R/equality-llama-3-8b-8layers.json; save
    timeout 100 python3 benchmarks/profile_decode.py --config llama-3-8b --mesh tensor=2 --batch 1 --top 60 --out $R/profile-tensor2-b1
    rm -rf $R/profile-tensor2-b1/trace; gzip $R/profile-tensor2-b1/decode.hlo.txt; save
    timeout 80 $B --config llama-3-8b --batch 1,16 --json $R/llama-3-8b-1gpu.json; save
    timeout 90 $B --config llama-3-8b --batch 1,16 --mesh tensor=4 --json $R/llama-3-8b-tensor4.json; save
    timeout 200 $B --config llama-3-70b --batch 1,16 --mesh tensor=4 --json $R/llama-3-70b-tensor4.json; save
    ;;
  x4-equality)  # 4 GPUs (session 5): sharded == 1 GPU in float32 for the MoE and 70B meshes timed on 4 GPUs
                # (three processes at once, each reference on a different GPU), then where a tensor=2 step idles
    R=/tmp/results; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    sed 's/^n_layers: .*/n_layers: 8/' configs/mixtral-8x7b.yaml > $R/mixtral-8layers.yaml
    sed 's/^n_layers: .*/n_layers: 2/' configs/llama-3-70b.yaml > $R/llama-3-70b-2layers.yaml
    E="timeout 240 env JAX_DEFAULT_MATMUL_PRECISION=highest XLA_PYTHON_CLIENT_PREALLOCATE=false python3 benchmarks/sharded_equality.py --dtype float32"
    CUDA_VISIBLE_DEVICES=0,1,2,3 $E --config $R/mixtral-8layers.yaml --mesh expert=4 --mesh expert=2,tensor=2 \
      --prompts 5,17,40 --new-tokens 24 --json $R/equality-mixtral-8layers.json > $R/equality-mixtral.log 2>&1 &
    CUDA_VISIBLE_DEVICES=1,2,3,0 $E --config deepseek-v2-lite --mesh expert=4 \
      --prompts 5,17,40 --new-tokens 24 --json $R/equality-deepseek-v2-lite.json > $R/equality-dsv2.log 2>&1 &
    CUDA_VISIBLE_DEVICES=2,3,0,1 $E --config $R/llama-3-70b-2layers.yaml --mesh tensor=2 \
      --prompts 5,40 --new-tokens 16 --json $R/equality-llama-3-70b-2layers.json > $R/equality-70b.log 2>&1 &
    wait; tail -n 3 $R/equality-*.log; save
    timeout 100 python3 benchmarks/profile_decode.py --config llama-3-8b --mesh tensor=2 --batch 1 --top 30 --out $R/profile-tensor2-b1
    rm -rf $R/profile-tensor2-b1/trace $R/profile-tensor2-b1/decode.hlo.txt; save
    ;;
  next-lease)  # 4 GPUs (prepared in session 5, not run): what the last changes did on the GPU (the per-row cache
               # write on 1 GPU and under data=2; the MoE router kept whole at batch 1), then collective settings
    R=/tmp/results; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    B="python3 -m chimera.runtime.cli bench --dtype bfloat16 --prompt-len 128 --gen 32 --repeats 2"
    timeout 80 $B --config llama-3-8b --batch 1,16 --json $R/llama-3-8b-1gpu.json; save
    timeout 90 $B --config llama-3-8b --batch 1,16 --mesh tensor=2 --json $R/llama-3-8b-tensor2.json; save
    timeout 90 $B --config llama-3-8b --batch 16,64 --mesh data=2 --json $R/llama-3-8b-data2.json; save
    timeout 150 $B --config mixtral-8x7b --batch 1,16 --mesh expert=4 --json $R/mixtral-8x7b-expert4.json; save
    timeout 120 $B --config deepseek-v2-lite --batch 1,16 --mesh expert=4 --json $R/deepseek-v2-lite-expert4.json; save
    timeout 120 python3 benchmarks/profile_decode.py --config mixtral-8x7b --mesh expert=4 --batch 1 --top 30 --out $R/profile-mixtral-expert4-b1
    rm -rf $R/profile-mixtral-expert4-b1/trace $R/profile-mixtral-expert4-b1/decode.hlo.txt; save
    python3 benchmarks/xla_flags.py > $R/xla-flags.txt; save
    for flags in "" "--xla_gpu_experimental_enable_nvshmem=true"; do
      echo "== XLA_FLAGS=$flags"; XLA_FLAGS="$flags" timeout 90 python3 benchmarks/collective_latency.py --devices 2 --trace /tmp/cl-trace
      rm -rf /tmp/cl-trace
    done 2>&1 | tee $R/all-reduce-settings.txt; save
    ;;
  x2-loop)  # 2 GPUs (session 6): the decode loop's shape (step-by-step vs decode_chunk 8) on 1 GPU and tensor=2,
            # under command buffers over collectives and loops; where the host and the GPUs wait (trace windows)
    R=/tmp/results; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    lib=$(python3 -c "import jaxlib, os; print(os.path.dirname(jaxlib.__file__))")
    find $lib -name "*.so*" -size +20M -exec strings {} \; | grep -o "xla_gpu_[a-z0-9_]*" | sort -u > $R/xla-gpu-flags.txt; save
    L="python3 benchmarks/decode_loop.py --config llama-3-8b --mesh tensor=2"
    timeout 240 $L --chunks 1,8 --gens 32,160 --json $R/decode-loop.json; save
    graphs="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,COLLECTIVES,WHILE,CONDITIONAL"
    XLA_FLAGS="$graphs" timeout 150 $L --chunks 1,8 --gens 160 --json $R/decode-loop-graphs.json; save
    XLA_FLAGS="$graphs --xla_gpu_command_buffer_unroll_loops=true" timeout 120 $L --no-single --chunks 8 --gens 160 \
      --json $R/decode-loop-graphs-unroll.json; save
    for chunk in 1 8; do
      timeout 100 python3 benchmarks/profile_decode.py --config llama-3-8b --mesh tensor=2 --batch 1 --gen 32 --top 40 \
        --decode-chunk $chunk --out $R/profile-tensor2-chunk$chunk
      rm -rf $R/profile-tensor2-chunk$chunk/trace; gzip $R/profile-tensor2-chunk$chunk/decode.hlo.txt; save
    done
    for flags in "" "$graphs"; do
      echo "== XLA_FLAGS=$flags"; XLA_FLAGS="$flags" timeout 60 python3 benchmarks/collective_latency.py --devices 2 --trace /tmp/cl-trace
      mkdir -p $R/chain-window; cp /tmp/cl-trace/window.json.gz $R/chain-window/$( [ -z "$flags" ] && echo default || echo graphs).json.gz
      rm -rf /tmp/cl-trace
    done 2>&1 | tee $R/all-reduce-chain.txt; save
    ;;
  x2-graphs)  # 2 GPUs (session 6): the whole decode step in CUDA graphs, collectives included: NCCL's all-reduce
              # (XLA's one-shot kernel off) or XLA's collective kernel captured; loops captured and unrolled
    R=/tmp/results; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    lib=$(python3 -c "import jaxlib, os; print(os.path.dirname(jaxlib.__file__))")
    find $lib -name "*.so*" -size +20M -exec strings {} \; | grep -xE "[A-Z][A-Z_]{3,40}" | sort -u > $R/enum-names.txt; save
    L="python3 benchmarks/decode_loop.py --config llama-3-8b --gens 160 --repeats 3"
    base="FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,CONDITIONAL"
    nccl="--xla_gpu_enable_command_buffer=$base,COLLECTIVES,WHILE --xla_gpu_enable_collectives_command_buffer_filter=ALLREDUCE,ALLGATHER --xla_gpu_experimental_use_collective_kernels= --xla_gpu_graph_min_graph_size=1"
    XLA_FLAGS="$nccl" timeout 200 $L --mesh tensor=2 --chunks 1,8 --json $R/graphs-nccl.json; save
    XLA_FLAGS="$nccl --xla_gpu_command_buffer_unroll_loops=true" timeout 150 $L --mesh tensor=2 --chunks 8 \
      --json $R/graphs-nccl-unroll.json; save
    if grep -qx COLLECTIVES_KERNEL $R/enum-names.txt; then
      kern="--xla_gpu_enable_command_buffer=$base,COLLECTIVES_KERNEL,COLLECTIVES,WHILE --xla_gpu_graph_min_graph_size=1"
      XLA_FLAGS="$kern" timeout 150 $L --mesh tensor=2 --no-single --chunks 1,8 --json $R/graphs-kernel.json; save
      XLA_FLAGS="$kern --xla_gpu_command_buffer_unroll_loops=true" timeout 120 $L --mesh tensor=2 --no-single --chunks 8 \
        --json $R/graphs-kernel-unroll.json; save
    fi
    XLA_FLAGS="$nccl --xla_gpu_command_buffer_unroll_loops=true --xla_enable_command_buffers_during_profiling=true" \
      timeout 100 python3 benchmarks/profile_decode.py --config llama-3-8b --mesh tensor=2 --batch 1 --gen 32 --top 40 \
      --decode-chunk 8 --out $R/profile-graphs-nccl-unroll
    rm -rf $R/profile-graphs-nccl-unroll/trace; gzip $R/profile-graphs-nccl-unroll/decode.hlo.txt; save
    ;;
  x2-screen)  # 2 GPUs (session 6): which command-buffer settings instantiate with collectives captured (a 2-layer
              # llama-3-8b first), then the full model on tensor=2 (and one GPU) under each that works
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    sed 's/^n_layers: .*/n_layers: 2/' configs/llama-3-8b.yaml > $R/llama-3-8b-2layers.yaml
    base="FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,CONDITIONAL"
    nccl="--xla_gpu_experimental_use_collective_kernels= --xla_gpu_graph_min_graph_size=1 --xla_gpu_enable_collectives_command_buffer_filter=ALLREDUCE"
    sync="--xla_gpu_disable_async_collectives=ALLREDUCE,ALLGATHER"
    declare -A V=(
      [nccl-uncaptured]="--xla_gpu_experimental_use_collective_kernels="
      [body]="--xla_gpu_enable_command_buffer=$base,COLLECTIVES $nccl"
      [body-sync]="--xla_gpu_enable_command_buffer=$base,COLLECTIVES $nccl $sync"
      [body-serial]="--xla_gpu_enable_command_buffer=$base,COLLECTIVES $nccl --xla_gpu_command_buffer_scheduling_mode=SERIALIZE"
      [loop-sync]="--xla_gpu_enable_command_buffer=$base,COLLECTIVES,WHILE $nccl $sync"
      [loop-sync-unroll]="--xla_gpu_enable_command_buffer=$base,COLLECTIVES,WHILE $nccl $sync --xla_gpu_command_buffer_unroll_loops=true"
    )
    for name in nccl-uncaptured body body-sync body-serial loop-sync loop-sync-unroll; do
      echo "== $name: ${V[$name]}"
      if XLA_FLAGS="${V[$name]}" timeout 60 python3 benchmarks/decode_loop.py --config $R/llama-3-8b-2layers.yaml \
           --mesh tensor=2 --no-single --chunks 1,8 --gens 32 --repeats 2 > $R/screen-$name.log 2>&1; then
        tail -n 2 $R/screen-$name.log
        XLA_FLAGS="${V[$name]}" timeout 100 python3 benchmarks/decode_loop.py --config llama-3-8b --mesh tensor=2 --no-single \
          --chunks 1,8 --gens 160 --repeats 3 --json $R/tensor2-$name.json 2>&1 | grep "^{"
      else
        grep -E "Error|error" $R/screen-$name.log | tail -n 2 | cut -c1-300
      fi
      save
    done 2>&1 | tee $R/screen.txt
    ;;
  x2-final-a)  # 2 GPUs (session 6): llama-3-8b on 1 GPU and tensor=2 with chimera's GPU decode options (CUDA
                # graphs over the loop, NCCL all-reduce captured) and with XLA's defaults, 128 new tokens
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    B="python3 -m chimera.runtime.cli bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 2 --batch 1,16"
    timeout 100 $B --json $R/llama-3-8b-1gpu.json; save
    timeout 110 $B --mesh tensor=2 --json $R/llama-3-8b-tensor2.json; save
    timeout 100 $B --xla-defaults --json $R/llama-3-8b-1gpu-xla-defaults.json; save
    timeout 110 $B --xla-defaults --mesh tensor=2 --json $R/llama-3-8b-tensor2-xla-defaults.json; save
    sed 's/^n_layers: .*/n_layers: 8/' configs/llama-3-8b.yaml > $R/llama-3-8b-8layers.yaml
    JAX_DEFAULT_MATMUL_PRECISION=highest timeout 120 python3 benchmarks/sharded_equality.py --dtype float32 \
      --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --prompts 5,40 --new-tokens 16 --json $R/equality-llama-3-8b-8layers.json
    save
    ;;
  x2-final-b)  # 2 GPUs (session 6): the MoE preset over expert=2 with the GPU decode options, its equality, and
               # NCCL's low-latency protocol for tensor=2's all-reduces
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    sed 's/^n_layers: .*/n_layers: 8/' configs/mixtral-8x7b.yaml > $R/mixtral-8layers.yaml
    B="python3 -m chimera.runtime.cli bench --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 2"
    timeout 100 $B --config $R/mixtral-8layers.yaml --batch 1,64 --mesh expert=2 --json $R/mixtral-8layers-expert2.json; save
    timeout 100 $B --config $R/mixtral-8layers.yaml --batch 1,64 --json $R/mixtral-8layers-1gpu.json; save
    JAX_DEFAULT_MATMUL_PRECISION=highest timeout 120 python3 benchmarks/sharded_equality.py --dtype float32 \
      --config $R/mixtral-8layers.yaml --mesh expert=2 --prompts 5,17,40 --new-tokens 24 --json $R/equality-mixtral-8layers.json
    save
    NCCL_PROTO=LL timeout 100 $B --config llama-3-8b --batch 1 --mesh tensor=2 --json $R/llama-3-8b-tensor2-nccl-ll.json; save
    ;;
  x2-options)  # 2 GPUs (session 6): do the decode options passed per program (jit compiler_options) take effect
               # as they do through XLA_FLAGS? all-reduce kinds in the compiled HLO and ms/step, llama-3-8b tensor=2
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    timeout 200 python3 benchmarks/decode_options.py --config llama-3-8b --mesh tensor=2 --json $R/decode-options.json; save
    flags=$(chimera_xla_flags)
    XLA_FLAGS="$flags" timeout 100 python3 benchmarks/decode_options.py --config llama-3-8b --mesh tensor=2 --variants xla-defaults \
      --json $R/decode-options-xla-flags.json; save
    ;;
  x2-final-c)  # 2 GPUs (session 6): llama-3-8b on tensor=2 and 1 GPU as `chimera bench` now runs by default (the GPU
               # decode options per program and in XLA_FLAGS), 128 new tokens
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    B="python3 -m chimera.runtime.cli bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 2 --batch 1,16"
    timeout 100 $B --mesh tensor=2 --json $R/llama-3-8b-tensor2.json; save
    timeout 90 $B --json $R/llama-3-8b-1gpu.json; save
    ;;
  x2-screen2)  # 2 GPUs (session 7): with chimera's GPU decode options in XLA_FLAGS (the CLI's default), what else
               # shortens a step: NCCL's symmetric-memory kernels, its LL protocol, user buffers (the all-reduce chain
               # and llama-3-8b tensor=2); one-row products without the zero row (dot strength reduction off), with
               # cuBLAS, Triton normalisation fusions, no split-K (1 GPU and tensor=2); then a profile with graphs
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    opts=$(chimera_xla_flags)
    sym="--xla_gpu_experimental_enable_nccl_symmetric_buffers=true"
    nosr="--xla_gpu_enable_dot_strength_reduction=false"
    for v in "opts|$opts" "sym|$opts $sym" "userbuf|$opts --xla_gpu_enable_nccl_user_buffers=true"; do
      echo "== chain ${v%%|*}"; XLA_FLAGS="${v#*|}" timeout 60 python3 benchmarks/collective_latency.py --devices 2 2>&1 | grep -E "^\{|Error" | cut -c1-400
    done 2>&1 | tee $R/chain.txt
    echo "== chain LL"; XLA_FLAGS="$opts" NCCL_PROTO=LL timeout 60 python3 benchmarks/collective_latency.py --devices 2 \
      2>&1 | grep -E "^\{|Error" | cut -c1-400 | tee -a $R/chain.txt; save
    L="python3 benchmarks/decode_loop.py --config llama-3-8b --mesh tensor=2 --chunks 1 --gens 96 --repeats 2"
    XLA_FLAGS="$opts" timeout 90 $L --json $R/opts.json 2>&1 | grep -E "^\{|Error" | cut -c1-400; save
    XLA_FLAGS="$opts $sym" timeout 60 $L --no-single --json $R/sym.json 2>&1 | grep -E "^\{|Error" | cut -c1-400; save
    XLA_FLAGS="$opts $nosr" timeout 90 $L --one-row-plain --json $R/plain.json 2>&1 | grep -E "^\{|Error" | cut -c1-400; save
    XLA_FLAGS="$opts $nosr --xla_gpu_enable_triton_gemm=false" timeout 90 $L --one-row-plain --json $R/plain-cublas.json \
      2>&1 | grep -E "^\{|Error" | cut -c1-400; save
    XLA_FLAGS="$opts" NCCL_PROTO=LL timeout 60 $L --no-single --json $R/nccl-ll.json 2>&1 | grep -E "^\{|Error" | cut -c1-400; save
    XLA_FLAGS="$opts --xla_gpu_enable_triton_softmax_fusion=true" timeout 90 $L --json $R/softmax-fusion.json 2>&1 | grep -E "^\{|Error" | cut -c1-400; save
    XLA_FLAGS="$opts --xla_gpu_enable_split_k_autotuning=false" timeout 90 $L --json $R/no-split-k.json 2>&1 | grep -E "^\{|Error" | cut -c1-400; save
    XLA_FLAGS="$opts --xla_enable_command_buffers_during_profiling=true" timeout 90 python3 benchmarks/profile_decode.py \
      --config llama-3-8b --mesh tensor=2 --batch 1 --gen 32 --top 45 --out $R/profile-tensor2-graphs
    rm -rf $R/profile-tensor2-graphs/trace; gzip $R/profile-tensor2-graphs/decode.hlo.txt; save
    ;;
  x2-screen3)  # 2 GPUs (session 7): x2-screen2's variants that stopped at once, with their errors; symmetric buffers +
               # LL; the MoE preset over expert=2 with the CLI's default options; why the all-reduce chain's graph fails
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    opts=$(chimera_xla_flags)
    sym="--xla_gpu_experimental_enable_nccl_symmetric_buffers=true"
    nosr="--xla_gpu_enable_dot_strength_reduction=false"
    L="python3 benchmarks/decode_loop.py --config llama-3-8b --mesh tensor=2 --chunks 1 --gens 96 --repeats 2"
    run() { name=$1; shift; echo "== $name"; "$@" > $R/$name.log 2>&1; echo "exit $?"; grep -E "^\{" $R/$name.log | cut -c1-300
            grep -vE "^\{|^ +|^Traceback|^WARNING|^I0000" $R/$name.log | tail -n 4 | cut -c1-400; save; }
    XLA_FLAGS="$opts $nosr" run plain timeout 90 $L --one-row-plain --json $R/plain.json
    XLA_FLAGS="$opts $nosr --xla_gpu_enable_triton_gemm=false" run plain-cublas timeout 90 $L --one-row-plain --json $R/plain-cublas.json
    XLA_FLAGS="$opts --xla_gpu_enable_triton_softmax_fusion=true" run softmax-fusion timeout 90 $L --json $R/softmax-fusion.json
    XLA_FLAGS="$opts --xla_gpu_enable_split_k_autotuning=false" run no-split-k timeout 90 $L --json $R/no-split-k.json
    XLA_FLAGS="$opts $sym" NCCL_PROTO=LL run sym-ll timeout 60 $L --no-single --json $R/sym-ll.json
    sed 's/^n_layers: .*/n_layers: 8/' configs/mixtral-8x7b.yaml > $R/mixtral-8layers.yaml
    B="python3 -m chimera.runtime.cli bench --dtype bfloat16 --prompt-len 128 --gen 64 --repeats 2 --batch 1,16"
    run mixtral-expert2 timeout 90 $B --config $R/mixtral-8layers.yaml --mesh expert=2 --json $R/mixtral-8layers-expert2.json
    XLA_FLAGS="$opts" run chain timeout 60 python3 benchmarks/collective_latency.py --devices 2
    ;;
  x2-sym-a)  # 2 GPUs (session 7): chimera's GPU decode options plus NCCL's symmetric buffers (in GPU_DECODE_OPTIONS when
             # this ran; here in XLA_FLAGS, which the CLI keeps): llama-3-8b on 1 GPU and tensor=2; per program with and
             # without them; the MoE preset over expert=2; which XLA options this jaxlib parses; the chain's graph
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    sym="--xla_gpu_experimental_enable_nccl_symmetric_buffers=true"
    opts="$(chimera_xla_flags) $sym"
    run() { name=$1; shift; echo "== $name"; "$@" > $R/$name.log 2>&1; echo "exit $?"
            grep -vE "^ +File|^Traceback|^WARNING|^I0000|^E0000|^    " $R/$name.log | tail -n 6 | cut -c1-300; save; }
    run xla-flags python3 benchmarks/xla_flags.py
    XLA_FLAGS="$opts" run chain-bf16 timeout 60 python3 benchmarks/collective_latency.py --devices 2 --reduce-dtype bfloat16
    XLA_FLAGS="$(echo "$opts" | sed 's/,WHILE//')" run chain-no-while timeout 60 python3 benchmarks/collective_latency.py --devices 2
    B="env XLA_FLAGS=$sym python3 -m chimera.runtime.cli bench --dtype bfloat16 --prompt-len 128 --repeats 2 --batch 1,16"
    run bench-tensor2 timeout 110 $B --config llama-3-8b --gen 128 --mesh tensor=2 --json $R/llama-3-8b-tensor2.json
    run bench-1gpu timeout 100 $B --config llama-3-8b --gen 128 --json $R/llama-3-8b-1gpu.json
    run options timeout 150 python3 benchmarks/decode_options.py --config llama-3-8b --mesh tensor=2 \
      --variants symmetric,chimera --json $R/decode-options.json
    sed 's/^n_layers: .*/n_layers: 8/' configs/mixtral-8x7b.yaml > $R/mixtral-8layers.yaml
    run mixtral-expert2 timeout 90 $B --config $R/mixtral-8layers.yaml --gen 64 --mesh expert=2 --json $R/mixtral-8layers-expert2.json
    ;;
  x2-sym-b)  # 2 GPUs (session 7): equality_under_cli_flags (above)
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    opts=""; equality_under_cli_flags
    ;;
  x2-sym-d)  # 2 GPUs (prepared in session 7): NCCL's symmetric buffers, with and without, in one lease: per step and
             # per call (two generation lengths) for llama-3-8b tensor=2 and the MoE preset over expert=2, batch 1 and 16,
             # and llama-3-8b on one GPU; then llama-3-8b (8 layers) tensor=2 == one GPU with them
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    opts=$(chimera_xla_flags)
    sym="--xla_gpu_experimental_enable_nccl_symmetric_buffers=true"
    sed 's/^n_layers: .*/n_layers: 8/' configs/mixtral-8x7b.yaml > $R/mixtral-8layers.yaml
    L="python3 benchmarks/decode_loop.py --chunks 1 --gens 32,160 --repeats 2"
    timeout 80 $L --config llama-3-8b --json $R/llama-3-8b-1gpu.json 2>&1 | grep -E "^\{|Error" | cut -c1-300; save
    for c in "llama-3-8b tensor=2" "$R/mixtral-8layers.yaml expert=2"; do set -- $c
      for b in 1 16; do for v in opts sym; do [ $v = sym ] && flags="$opts $sym" || flags="$opts"
        echo "== $(basename $1 .yaml) $2 batch $b $v"
        XLA_FLAGS="$flags" timeout 80 $L --config $1 --mesh $2 --no-single --batch $b \
          --json $R/$(basename $1 .yaml)-$2-b$b-$v.json 2>&1 | grep -E "^\{|Error" | cut -c1-300; save
      done; done
    done
    sed 's/^n_layers: .*/n_layers: 8/' configs/llama-3-8b.yaml > $R/llama-3-8b-8layers.yaml
    XLA_FLAGS="$opts $sym" JAX_DEFAULT_MATMUL_PRECISION=highest timeout 150 python3 benchmarks/sharded_equality.py \
      --dtype float32 --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --prompts 5,40 --new-tokens 16 \
      --json $R/equality-llama-3-8b-8layers-sym.json 2>&1 | grep '^ "identical"'; save
    ;;
  x2-final-d)  # 2 GPUs (session 7): what `chimera bench` now runs by default (symmetric buffers per program for
               # one-row tensor-parallel steps): llama-3-8b on 1 GPU and tensor=2, Mixtral (8 layers) over expert=2;
               # then every tiny preset sharded == one GPU under the CLI's flags (x2-sym-b without the 8B)
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    B="python3 -m chimera.runtime.cli bench --dtype bfloat16 --prompt-len 128 --repeats 2 --batch 1,16"
    timeout 100 $B --config llama-3-8b --gen 128 --json $R/llama-3-8b-1gpu.json 2>&1 | grep -E "^ +128|Error"; save
    timeout 100 $B --config llama-3-8b --gen 128 --mesh tensor=2 --json $R/llama-3-8b-tensor2.json 2>&1 | grep -E "^ +128|Error"; save
    sed 's/^n_layers: .*/n_layers: 8/' configs/mixtral-8x7b.yaml > $R/mixtral-8layers.yaml
    timeout 80 $B --config $R/mixtral-8layers.yaml --gen 64 --mesh expert=2 --json $R/mixtral-8layers-expert2.json 2>&1 \
      | grep -E "^ +128|Error"; save
    opts=""; equality_under_cli_flags tiny-only
    ;;
  x2-profile-d)  # 2 GPUs (session 7): the tensor=2 batch-1 step as the CLI runs it, profiled with its graphs kept
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    opts=$(chimera_xla_flags)
    XLA_FLAGS="$opts --xla_enable_command_buffers_during_profiling=true" timeout 120 python3 benchmarks/profile_decode.py \
      --config llama-3-8b --mesh tensor=2 --batch 1 --gen 32 --top 30 --out $R/profile-tensor2-b1
    rm -rf $R/profile-tensor2-b1/trace; gzip $R/profile-tensor2-b1/decode.hlo.txt; save
    ;;
  h200-profile-d)  # 1 GPU (session 7): llama-3-8b batch 1 on one GPU as the CLI runs it, profiled with its graphs
                   # kept: how much of the step the small per-layer kernels are (the tensor=2 one: x2-profile-d)
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    opts=$(chimera_xla_flags)
    XLA_FLAGS="$opts --xla_enable_command_buffers_during_profiling=true" timeout 120 python3 benchmarks/profile_decode.py \
      --config llama-3-8b --batch 1 --gen 32 --top 40 --out $R/profile-1gpu-b1
    rm -rf $R/profile-1gpu-b1/trace; gzip $R/profile-1gpu-b1/decode.hlo.txt; save
    ;;
  h200-screen-e)  # 1 GPU (session 8): XLA's fusion and GEMM options never screened, on llama-3-8b with 8 layers at
                  # batch 1 (the small per-layer kernels are per layer): the marginal ms/step under each (a name this XLA
                  # does not know stops the run at once: "Unknown flag"); the decode step's kernels and HLO, chimera's options
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    opts=$(chimera_xla_flags)
    sed 's/^n_layers: .*/n_layers: 8/' configs/llama-3-8b.yaml > $R/llama-3-8b-8layers.yaml
    L="python3 benchmarks/decode_loop.py --config $R/llama-3-8b-8layers.yaml --chunks 1 --gens 32,160 --repeats 2"
    for v in "" "--xla_gpu_enable_pdl=true" "--xla_gpu_enable_pdl=false" \
             "--xla_gpu_experimental_enable_fusion_block_level_rewriter=true" \
             "--xla_gpu_experimental_enable_triton_heroless_priority_fusion=true" \
             "--xla_gpu_experimental_enable_triton_softmax_priority_fusion=true" \
             "--xla_gpu_enable_reduction_epilogue_fusion=false" "--xla_gpu_experimental_enable_split_k_rewrite=false" \
             "--xla_gpu_experimental_enable_triton_tma=true" "--xla_gpu_enable_triton_gemm=false" \
             "--xla_gpu_dot_merger_threshold_mb=0" "--xla_gpu_experimental_enable_dynamic_dot_search_space=true" ""; do
      i=$((${i:-0} + 1)); name=$i-$(echo "${v:-chimera}" | sed 's/^--xla_gpu_//; s/=/-/')
      echo "== $name"; XLA_FLAGS="$opts $v" timeout 60 $L --json $R/screen-$name.json 2>&1 | grep -E "^\{|Error|Unknown flag" | cut -c1-300; save
    done
    XLA_FLAGS="$opts" timeout 90 python3 benchmarks/profile_decode.py --config $R/llama-3-8b-8layers.yaml --batch 1 \
      --gen 16 --top 40 --out $R/profile-8layers > $R/profile.log 2>&1; echo "profile exit $?"
    rm -rf $R/profile-8layers/trace; save
    ;;
  h200-matvec-e)  # 1 GPU (session 8): the Pallas one-row product (benchmarks/pallas_matvec.py), RMS norm fused, against
                  # XLA's norm + two-row GEMM on llama-3-8b's products per GPU at tensor=2 and on one GPU
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    XLA_FLAGS="$(chimera_xla_flags)" timeout 560 python3 benchmarks/matvec_kernel.py --json $R/matvec-kernel.json \
      2>&1 | grep -vE "^I0000|^WARNING" | tee $R/matvec-kernel.log; save
    ;;
  h200-inmodel-e)  # 1 GPU (session 8): llama-3-8b (8 layers) batch 1 with its one-row products by the Pallas matvec
                   # (decode_loop/profile_decode --one-row-kernel) against XLA's GEMMs: step time and kernel times
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    opts=$(chimera_xla_flags)
    sed 's/^n_layers: .*/n_layers: 8/' configs/llama-3-8b.yaml > $R/llama-3-8b-8layers.yaml
    L="python3 benchmarks/decode_loop.py --config $R/llama-3-8b-8layers.yaml --chunks 1 --gens 32,160 --repeats 2"
    for v in "" --one-row-kernel "" --one-row-kernel; do
      i=$((${i:-0} + 1)); echo "== $i ${v:-xla}"
      XLA_FLAGS="$opts" timeout 90 $L $v --json $R/loop-$i${v}.json 2>&1 | grep -E "^\{|Error" | cut -c1-300; save
    done
    for v in "" --one-row-kernel; do
      XLA_FLAGS="$opts --xla_enable_command_buffers_during_profiling=true" timeout 120 python3 benchmarks/profile_decode.py \
        --config $R/llama-3-8b-8layers.yaml --batch 1 --gen 16 --top 30 $v --out $R/profile${v:-"-xla"} > $R/profile${v:-"-xla"}.log 2>&1
      echo "profile ${v:-xla} exit $?"; rm -rf $R/profile${v:-"-xla"}/trace; head -40 $R/profile${v:-"-xla"}/summary.txt; save
    done
    ;;
  h200-screen-f)  # 1 GPU (session 8): how the decode graph orders its kernels (XLA's default LHS serialises
                  # independent fusions; CONCURRENT lets them overlap): llama-3-8b with 8 layers, batch 1 and 16
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    opts=$(chimera_xla_flags)
    sed 's/^n_layers: .*/n_layers: 8/' configs/llama-3-8b.yaml > $R/llama-3-8b-8layers.yaml
    L="python3 benchmarks/decode_loop.py --config $R/llama-3-8b-8layers.yaml --chunks 1 --gens 32,160 --repeats 2"
    for v in "" "--xla_gpu_command_buffer_scheduling_mode=CONCURRENT" "--xla_gpu_command_buffer_scheduling_mode=SERIALIZE" \
             "--xla_gpu_graph_enable_concurrent_region=true" "--xla_gpu_command_buffer_scheduling_mode=CONCURRENT" ""; do
      for b in 1 16; do
        i=$((${i:-0} + 1)); name=$i-b$b-$(echo "${v:-chimera}" | sed 's/^--xla_gpu_//; s/=/-/')
        echo "== $name"; XLA_FLAGS="$opts $v" timeout 60 $L --batch $b --json $R/screen-$name.json 2>&1 \
          | grep -E "^\{|Error|Unknown flag" | cut -c1-300; save
      done
    done
    ;;
  x2-concurrent-e)  # 2 GPUs (session 8): the decode graph with CONCURRENT scheduling (independent kernels may overlap;
                    # h200-screen-f: 2.5% faster at batch 16 on one GPU, no change at batch 1) on tensor=2 and expert=2
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    opts=$(chimera_xla_flags)
    conc="--xla_gpu_command_buffer_scheduling_mode=CONCURRENT"
    sed 's/^n_layers: .*/n_layers: 8/' configs/llama-3-8b.yaml > $R/llama-3-8b-8layers.yaml
    sed 's/^n_layers: .*/n_layers: 8/' configs/mixtral-8x7b.yaml > $R/mixtral-8layers.yaml
    L="python3 benchmarks/decode_loop.py --chunks 1 --gens 32,160 --repeats 2"
    for v in opts conc; do for b in 1 16; do
      [ $v = conc ] && flags="$opts $conc" || flags="$opts"
      echo "== llama-3-8b-8layers 1 GPU and tensor=2 batch $b $v"
      XLA_FLAGS="$flags" timeout 100 $L --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --batch $b \
        --json $R/llama-8layers-b$b-$v.json 2>&1 | grep -E "^\{|Error" | cut -c1-300; save
      echo "== mixtral-8layers expert=2 batch $b $v"
      XLA_FLAGS="$flags" timeout 80 $L --config $R/mixtral-8layers.yaml --mesh expert=2 --no-single --batch $b \
        --json $R/mixtral-8layers-b$b-$v.json 2>&1 | grep -E "^\{|Error" | cut -c1-300; save
    done; done
    ;;
  h200-inmodel-sweep-e)  # 1 GPU (session 8): llama-3-8b (8 layers) batch 1 with the Pallas matvec under each block-size
                         # rule of benchmarks/matvec_kernel.py (RULES), against XLA's GEMMs before and after
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    sed 's/^n_layers: .*/n_layers: 8/' configs/llama-3-8b.yaml > $R/llama-3-8b-8layers.yaml
    XLA_FLAGS="$(chimera_xla_flags)" timeout 500 python3 benchmarks/matvec_kernel.py --in-model $R/llama-3-8b-8layers.yaml \
      --json $R/in-model-rules.json 2>&1 | grep -E "^\{|Error" | cut -c1-300; save
    ;;
  h200-prefetch-e)  # 1 GPU (session 8): benchmarks/l2_prefetch.py - the o weight read into L2 while the attention's
                    # small kernels run (CONCURRENT graph scheduling), llama-3-8b with 8 layers, batch 1
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    opts=$(chimera_xla_flags); conc="--xla_gpu_command_buffer_scheduling_mode=CONCURRENT"
    sed 's/^n_layers: .*/n_layers: 8/' configs/llama-3-8b.yaml > $R/llama-3-8b-8layers.yaml
    P="python3 benchmarks/l2_prefetch.py --config $R/llama-3-8b-8layers.yaml ${MESH:-}"
    run() { name=$1; shift; echo "== $name"; "$@" --json $R/$name.json 2>&1 | grep -E "^\{|Error" | cut -c1-300; save; }
    XLA_FLAGS="$opts" run xla timeout 60 $P
    XLA_FLAGS="$opts $conc" run xla-concurrent timeout 60 $P
    XLA_FLAGS="$opts $conc" run touch-all timeout 150 $P --variant touch --programs 16,32,64
    XLA_FLAGS="$opts $conc" run touch-half timeout 110 $P --variant touch --programs 16,32 --fraction 0.5
    XLA_FLAGS="$opts" run touch-serial timeout 60 $P --variant touch --programs 32
    XLA_FLAGS="$opts" run xla-again timeout 60 $P
    ;;
  h200-prefetch-profile-e)  # 1 GPU (session 8): h200-prefetch-e's touch (32 programs) on the full llama-3-8b, timed with and
                            # without CONCURRENT scheduling and against none; then profiled (8 layers, graphs kept) both
                            # ways: does it overlap the attention's kernels, and how fast is the o GEMM reading from L2
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    opts=$(chimera_xla_flags); conc="--xla_gpu_command_buffer_scheduling_mode=CONCURRENT"
    P="python3 benchmarks/l2_prefetch.py --config configs/llama-3-8b.yaml --gens 32,96"
    XLA_FLAGS="$opts $conc" timeout 100 $P --variant touch --programs 32 | grep "^{"
    XLA_FLAGS="$opts" timeout 100 $P --variant touch --programs 32 | grep "^{"
    XLA_FLAGS="$opts" timeout 100 $P | grep "^{"
    opts="$opts --xla_enable_command_buffers_during_profiling=true"
    sed 's/^n_layers: .*/n_layers: 8/' configs/llama-3-8b.yaml > $R/llama-3-8b-8layers.yaml
    for v in serial concurrent; do
      [ $v = concurrent ] && flags="$opts $conc" || flags="$opts"
      XLA_FLAGS="$flags" timeout 120 python3 benchmarks/profile_decode.py --config $R/llama-3-8b-8layers.yaml --batch 1 \
        --gen 16 --top 16 --l2-touch 32 --out $R/profile-touch-$v > $R/profile-touch-$v.log 2>&1
      echo "== $v exit $?"; rm -rf $R/profile-touch-$v/trace $R/profile-touch-$v/decode.hlo.txt
      grep -vE "^ +[0-9.]+ +[A-Za-z]" $R/profile-touch-$v/summary.txt | head -3; sed -n 5,22p $R/profile-touch-$v/summary.txt
      grep -E "span" $R/profile-touch-$v/summary.txt; save
    done
    ;;
  x2-screen-g)  # 2 GPUs (session 9): what is left to try for the tensor=2 batch-1 step without kernels of our own, on
                # llama-3-8b with 8 layers (marginal ms/step): NCCL without its cross-stream ordering around captured
                # collectives (NCCL_GRAPH_MIXING_SUPPORT=0; safe only when no uncaptured NCCL call runs beside a graph's),
                # XLA's NVSHMEM collectives, the generic Triton GEMM emitter, an exhaustive GEMM tiling search
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    opts=$(chimera_xla_flags)
    sed 's/^n_layers: .*/n_layers: 8/' configs/llama-3-8b.yaml > $R/llama-3-8b-8layers.yaml
    L="python3 benchmarks/decode_loop.py --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --chunks 1 --gens 32,160 --repeats 2"
    run() {  # name, seconds, env words, XLA_FLAGS words, decode_loop words
      echo "== $1"; env $3 XLA_FLAGS="$opts $4" timeout $2 $L $5 --json $R/$1.json 2>&1 \
        | grep -E "^\{|Error|error|Unknown flag" | cut -c1-300; save
    }
    run 1-opts 100 "" "" ""
    run 2-graph-mixing-0 60 NCCL_GRAPH_MIXING_SUPPORT=0 "" --no-single
    run 3-nvshmem 60 "" --xla_gpu_experimental_enable_nvshmem=true --no-single
    run 4-generic-triton-gemm 100 "" --xla_gpu_unsupported_enable_generic_triton_emitter_for_gemms=true ""
    run 5-exhaustive-tiling 170 "" --xla_gpu_exhaustive_tiling_search=true ""
    run 6-opts-again 60 "" "" --no-single
    echo "== equality with NCCL_GRAPH_MIXING_SUPPORT=0"
    NCCL_GRAPH_MIXING_SUPPORT=0 XLA_FLAGS="$opts" JAX_DEFAULT_MATMUL_PRECISION=highest timeout 100 \
      python3 benchmarks/sharded_equality.py --dtype float32 --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 \
      --prompts 5,40 --new-tokens 16 --json $R/equality-graph-mixing-0.json > $R/equality.log 2>&1
    echo "exit $?"; grep '"identical"' $R/equality.log | tail -n 1; save
    ;;
  x2-mixing-g)  # 2 GPUs (session 9): NCCL_GRAPH_MIXING_SUPPORT=0 (x2-screen-g: tensor=2 8 layers 0.877 -> 0.834 ms/step) is
                # documented safe only when no uncaptured NCCL call follows an unfinished graph launch; the decode step's
                # argmax all-gather is not captured (filter ALLREDUCE). Captured too (filter ALLREDUCE,ALLGATHER), with and
                # without it; then NCCL's own log of which collectives were called per step (uncaptured ones log every call)
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    opts=$(chimera_xla_flags); both=ALLREDUCE,ALLGATHER
    opts_ag=$(echo "$opts" | sed "s/filter=ALLREDUCE/filter=$both/")
    sed 's/^n_layers: .*/n_layers: 8/' configs/llama-3-8b.yaml > $R/llama-3-8b-8layers.yaml
    L="python3 benchmarks/decode_loop.py --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --no-single --chunks 1 --gens 32,160"
    run() {  # name, env words, XLA_FLAGS, decode_loop words
      echo "== $1"; env $2 XLA_FLAGS="$3" timeout 60 $L --repeats 2 $4 --json $R/$1.json 2>&1 \
        | grep -E "^\{|Error|error" | cut -c1-300; save
    }
    run 1-opts "" "$opts" ""
    run 2-mixing-0 NCCL_GRAPH_MIXING_SUPPORT=0 "$opts" ""
    run 3-allgather-captured "" "$opts_ag" "--option xla_gpu_enable_collectives_command_buffer_filter=$both"
    run 4-allgather-captured-mixing-0 NCCL_GRAPH_MIXING_SUPPORT=0 "$opts_ag" \
      "--option xla_gpu_enable_collectives_command_buffer_filter=$both"
    run 5-opts-again "" "$opts" ""
    for v in opts allgather-captured; do
      [ $v = opts ] && flags="$opts" words="" || flags="$opts_ag" words="--option xla_gpu_enable_collectives_command_buffer_filter=$both"
      NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=COLL XLA_FLAGS="$flags" timeout 60 $L --repeats 1 $words > $R/nccl-calls-$v.log 2>&1
      echo "== NCCL calls logged, $v (exit $?): $(grep -c 'NCCL INFO AllReduce' $R/nccl-calls-$v.log) all-reduce," \
        "$(grep -c 'NCCL INFO AllGather' $R/nccl-calls-$v.log) all-gather"; gzip $R/nccl-calls-$v.log; save
    done
    ;;
  x2-capture-g)  # 2 GPUs (session 9): x2-mixing-g's winner (NCCL_GRAPH_MIXING_SUPPORT=0 with every collective captured, so
                 # the whole tensor=2 decode loop is one CUDA graph) on the full llama-3-8b against chimera's options in one
                 # lease, and on the programs it must not slow: tensor=2 batch 16, Mixtral (8 layers) over expert=2
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    opts=$(chimera_xla_flags); filter=xla_gpu_enable_collectives_command_buffer_filter; F=ALLREDUCE,ALLGATHER
    for cand in ALLREDUCE,ALLGATHER,REDUCESCATTER,ALLTOALL,COLLECTIVEPERMUTE,COLLECTIVEBROADCAST,RAGGEDALLTOALL ALLCOLLECTIVES; do
      said=$(python3 -c "import sys; from chimera.runtime.gpu_options import xla_flags_error as e; \
print(e({'$filter': sys.argv[1]})[-160:] or 'accepted')" $cand); echo "filter $cand: $said"
      [ "$said" = accepted ] && F=$cand
    done
    echo "capturing $F"; new=$(echo "$opts" | sed "s/filter=ALLREDUCE/filter=$F/")
    sed 's/^n_layers: .*/n_layers: 8/' configs/llama-3-8b.yaml > $R/llama-3-8b-8layers.yaml
    sed 's/^n_layers: .*/n_layers: 8/' configs/mixtral-8x7b.yaml > $R/mixtral-8layers.yaml
    run() {  # name, seconds, new|opts, decode_loop words
      if [ $3 = new ]; then env="NCCL_GRAPH_MIXING_SUPPORT=0" flags="$new" words="--option $filter=$F"
      else env="" flags="$opts" words=""; fi
      echo "== $1 $3"; env $env XLA_FLAGS="$flags" timeout $2 python3 benchmarks/decode_loop.py --chunks 1 --gens 32,160 \
        --repeats 2 $4 $words --json $R/$1-$3.json 2>&1 | grep -E "^\{|Error|error" | cut -c1-300; save
    }
    run llama-3-8b-b1 120 opts "--config llama-3-8b --mesh tensor=2"
    run llama-3-8b-tensor2-b1 70 new "--config llama-3-8b --mesh tensor=2 --no-single"
    for v in opts new; do
      run llama-8layers-tensor2-b16 60 $v "--config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --no-single --batch 16"
      for b in 1 16; do run mixtral-8layers-expert2-b$b 80 $v "--config $R/mixtral-8layers.yaml --mesh expert=2 --no-single --batch $b"; done
    done
    ;;
  x2-final-g)  # 2 GPUs (session 9): `chimera bench` with NCCL_GRAPH_MIXING_SUPPORT=0 (chimera then captures every
               # collective: gpu_options.gpu_decode_options), against NCCL's default in the same lease; whether any NCCL call
               # still runs uncaptured (NCCL logs each uncaptured call, a captured one once per capture); every tiny
               # preset sharded == one GPU with NCCL_GRAPH_MIXING_SUPPORT=0; XLA's SKIP_TEMP graph updates (per-call cost)
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    B="python3 -m chimera.runtime.cli bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 2"
    timeout 100 $B --batch 1,16 --json $R/llama-3-8b-1gpu.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -4; save
    NCCL_GRAPH_MIXING_SUPPORT=0 timeout 100 $B --batch 1,16 --mesh tensor=2 --json $R/llama-3-8b-tensor2.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -4; save
    nccl=NCCL_GRAPH_MIXING_SUPPORT=0
    cli=$(NCCL_GRAPH_MIXING_SUPPORT=0 chimera_xla_flags)
    echo "environment: $nccl XLA_FLAGS=$cli"
    sed 's/^n_layers: .*/n_layers: 8/' configs/llama-3-8b.yaml > $R/llama-3-8b-8layers.yaml
    env $nccl NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=COLL XLA_FLAGS="$cli" timeout 60 python3 benchmarks/decode_loop.py \
      --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --no-single --chunks 1 --gens 32,160 --repeats 1 > $R/nccl-calls.log 2>&1
    echo "== NCCL calls logged (exit $?): $(grep -c 'NCCL INFO AllReduce' $R/nccl-calls.log) all-reduce," \
      "$(grep -c 'NCCL INFO AllGather' $R/nccl-calls.log) all-gather; $(grep '^{' $R/nccl-calls.log | cut -c1-200)"
    gzip $R/nccl-calls.log; save
    tiny=$(ls configs/*-tiny.yaml | xargs -n1 basename | sed 's/.yaml$//' | paste -sd,)
    env $nccl XLA_FLAGS="$cli" JAX_DEFAULT_MATMUL_PRECISION=highest timeout 220 python3 benchmarks/sharded_equality.py \
      --dtype float32 --config $tiny --mesh tensor=2 --mesh expert=2 --prompts 17 --new-tokens 12 \
      --json $R/equality-tiny.json > $R/equality-tiny.log 2>&1
    echo "equality exit $?"; grep -E '^ "config"|"error"|^ "identical"' $R/equality-tiny.log | cut -c1-300; save
    echo "== NCCL's default (graph mixing on: only the all-reduces captured)"
    NCCL_GRAPH_MIXING_SUPPORT=1 timeout 60 $B --batch 1 --mesh tensor=2 --json $R/llama-3-8b-tensor2-mixing.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -3
    save; echo "== SKIP_TEMP"
    NCCL_GRAPH_MIXING_SUPPORT=0 XLA_FLAGS=--xla_gpu_command_buffer_update_mode=SKIP_TEMP timeout 60 $B --batch 1 --mesh tensor=2 \
      --json $R/llama-3-8b-tensor2-skip-temp.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -3; save
    ;;
  x2-profile-g)  # 2 GPUs (session 9): how the CLI's tensor=2 step runs now (x2-final-g: NCCL logs every collective every
                 # step; each decode call costs ~40 ms more than before): the step profiled with its graphs kept (the
                 # window's host calls say which kernels the host launched itself), and XLA's log of its command buffers
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    nccl=NCCL_GRAPH_MIXING_SUPPORT=0
    cli=$(NCCL_GRAPH_MIXING_SUPPORT=0 chimera_xla_flags)
    sed 's/^n_layers: .*/n_layers: 8/' configs/llama-3-8b.yaml > $R/llama-3-8b-8layers.yaml
    for v in new mixing; do
      [ $v = new ] && env=$nccl || env=NCCL_GRAPH_MIXING_SUPPORT=1
      flags=$(export $env; chimera_xla_flags)
      env $env XLA_FLAGS="$flags --xla_enable_command_buffers_during_profiling=true" timeout 100 python3 benchmarks/profile_decode.py \
        --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --batch 1 --gen 16 --top 24 --out $R/profile-$v > $R/profile-$v.log 2>&1
      echo "== profile $v exit $?"; rm -rf $R/profile-$v/trace $R/profile-$v/decode.hlo.txt; sed -n 5,20p $R/profile-$v/summary.txt
      grep -A4 "^idle" $R/profile-$v/summary.txt; save
    done
    env $nccl TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=command_buffer_thunk=3,command_executor=3,while_thunk=3 XLA_FLAGS="$cli" \
      timeout 90 python3 benchmarks/decode_loop.py --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --no-single --chunks 1 \
      --gens 32 --repeats 1 > $R/command-buffers.log 2>&1
    echo "== command buffer log (exit $?): $(wc -l < $R/command-buffers.log) lines"
    sed -E 's/^[IWE][0-9]+ [0-9:.]+ +[0-9]+ //; s/0x[0-9a-f]+/P/g; s/[0-9]+/N/g' $R/command-buffers.log | sort | uniq -c | sort -rn | head -25
    gzip $R/command-buffers.log; save
    ;;
  x2-moe-g)  # 2 GPUs (session 9): `chimera bench` with NCCL_GRAPH_MIXING_SUPPORT=0 against NCCL's default graph mixing
             # (only the all-reduces captured) in one lease, where x2-final-g did not: Mixtral (8 layers) over expert=2, llama-3-8b
             # tensor=2 at batch 16; and llama-3-8b at batch 1 over 512 tokens, one GPU and tensor=2 (each decode call
             # now updates its loop's graph once, NCCL's calls re-traced: ~40 ms, which 512 tokens amortise)
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    B="python3 -m chimera.runtime.cli bench --dtype bfloat16 --prompt-len 128 --repeats 2"
    sed 's/^n_layers: .*/n_layers: 8/' configs/mixtral-8x7b.yaml > $R/mixtral-8layers.yaml
    for mixing in 0 1; do
      echo "== NCCL_GRAPH_MIXING_SUPPORT=$mixing"
      NCCL_GRAPH_MIXING_SUPPORT=$mixing timeout 90 $B --config $R/mixtral-8layers.yaml --gen 64 --batch 1,16 --mesh expert=2 \
        --json $R/mixtral-8layers-expert2-mixing$mixing.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -3; save
      NCCL_GRAPH_MIXING_SUPPORT=$mixing timeout 70 $B --config llama-3-8b --gen 128 --batch 16 --mesh tensor=2 \
        --json $R/llama-3-8b-tensor2-b16-mixing$mixing.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -2; save
    done
    for mesh in "--mesh tensor=2" ""; do
      NCCL_GRAPH_MIXING_SUPPORT=0 timeout 70 $B --config llama-3-8b --gen 512 --batch 1 $mesh --json $R/llama-3-8b-gen512${mesh:+-tensor2}.json 2>&1 \
        | grep -vE "^[IW]0000|^WARNING" | tail -2; save
    done
    ;;
  x2-percall-h)  # 2 GPUs (session 10): what a decode call costs beside its steps (llama-3-8b tensor=2 b1: ~9 ms with NCCL's
                 # default, ~32 ms with every collective captured) and whether it is XLA re-recording the loop's graph because
                 # a buffer moved between calls (benchmarks/per_call.py; this lease's "drop" is the mode now called fresh);
                 # and the zero row only below XLA's strength-reduction size (decode_loop --zero-row-below), 8 layers
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    P="python3 benchmarks/per_call.py --config llama-3-8b --mesh tensor=2 --gens 32,160 --repeats 2"
    cli=$(NCCL_GRAPH_MIXING_SUPPORT=0 chimera_xla_flags)
    echo "== every collective captured: $cli"
    NCCL_GRAPH_MIXING_SUPPORT=0 TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=command_buffer_thunk=3 XLA_FLAGS="$cli" timeout 220 \
      $P --json $R/per-call-capture-all.json > $R/per-call-capture-all.out 2> $R/per-call-capture-all.log
    echo "exit $?"; grep "^{" $R/per-call-capture-all.out | cut -c1-400
    # XLA records a command buffer holding collectives again at every call (Initialized ...), which costs
    # ~10 us when no buffer moved; per mode and length: recordings, their µs, by the program's command count
    awk '/^=== /{key=$2" "$3" "$4} /(Initialized|Updated) command buffer.* in [0-9]+/{for(i=1;i<=NF;i++) if($i=="in") t=$(i+1);
      match($0, /num_commands=[0-9]+/); k=key" "substr($0, RSTART, RLENGTH); n[k]++; us[k]+=t}
      END{for(k in n) printf "%s: %d recordings, %.0f us\n", k, n[k], us[k]}' $R/per-call-capture-all.log | sort
    gzip $R/per-call-capture-all.log; save
    opts=$(chimera_xla_flags)
    echo "== NCCL default: $opts"
    XLA_FLAGS="$opts" timeout 150 $P --no-single --json $R/per-call-default.json 2>&1 | grep "^{" | cut -c1-400; save
    sed 's/^n_layers: .*/n_layers: 8/' configs/llama-3-8b.yaml > $R/llama-3-8b-8layers.yaml
    for below in 0 4e7 0; do
      words=""; [ $below != 0 ] && words="--zero-row-below $below"
      echo "== zero row below ${below}"; XLA_FLAGS="$opts" timeout 100 python3 benchmarks/decode_loop.py --config $R/llama-3-8b-8layers.yaml \
        --mesh tensor=2 --chunks 1 --gens 32,160 --repeats 2 $words --json $R/zero-row-below-$below-$RANDOM.json 2>&1 | grep "^{" | cut -c1-300; save
    done
    ;;
  x2-percall2-h)  # 2 GPUs (session 10): x2-percall-h again without XLA's log, more repeats (modes keep / fresh / pinned,
                  # benchmarks/per_call.py; this lease ran "pinned" as an Engine that placed repeated inputs once, since
                  # reverted: the same arrays each call, as pinned passes them); then how a step grows with
                  # the context (prompt 896, cache 1024; session 9: tensor=2 1.18x one GPU over 511 new tokens)
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    P="python3 benchmarks/per_call.py --config llama-3-8b --mesh tensor=2 --repeats 4"
    cli=$(NCCL_GRAPH_MIXING_SUPPORT=0 chimera_xla_flags); opts=$(chimera_xla_flags)
    echo "== every collective captured"
    NCCL_GRAPH_MIXING_SUPPORT=0 XLA_FLAGS="$cli" timeout 200 $P --gens 32,160 --json $R/per-call-capture-all.json 2>&1 | grep "^{" | cut -c1-400; save
    echo "== NCCL default"
    XLA_FLAGS="$opts" timeout 120 $P --gens 32,160 --no-single --json $R/per-call-default.json 2>&1 | grep "^{" | cut -c1-400; save
    echo "== NCCL default, prompt 896"
    XLA_FLAGS="$opts" timeout 150 $P --gens 32,96 --prompt-len 896 --modes pinned --json $R/per-call-default-prompt896.json 2>&1 \
      | grep "^{" | cut -c1-400; save
    ;;
  x2-bench-h)  # 2 GPUs (session 10): `chimera bench` as it now times a decode call (the last call's outputs released first,
               # as `generate` releases them) on one GPU and tensor=2, NCCL's default against NCCL_GRAPH_MIXING_SUPPORT=0 (every
               # collective captured) alternated in one lease: x2-percall2-h found no gain from the latter, session 9 10%
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    B="python3 -m chimera.runtime.cli bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 5"
    bench() {  # name, seconds, batches, environment, bench words
      echo "== $1"; env $4 timeout $2 $B --batch $3 $5 --json $R/$1.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -4 | cut -c1-170; save
    }
    bench 1gpu-a 90 1,16 "" ""
    bench tensor2-default-a 110 1,16 NCCL_GRAPH_MIXING_SUPPORT=1 "--mesh tensor=2"
    bench tensor2-capture-a 110 1,16 NCCL_GRAPH_MIXING_SUPPORT=0 "--mesh tensor=2"
    bench tensor2-default-b 80 1 NCCL_GRAPH_MIXING_SUPPORT=1 "--mesh tensor=2"
    bench tensor2-capture-b 80 1 NCCL_GRAPH_MIXING_SUPPORT=0 "--mesh tensor=2"
    bench 1gpu-b 60 1 "" ""
    ;;
  x2-moe-h)  # 2 GPUs (session 10): Mixtral (8 layers) over expert=2 with `chimera bench` as it now times a call, NCCL's default
             # against NCCL_GRAPH_MIXING_SUPPORT=0, alternated (session 9, outputs kept alive: the latter slower)
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    sed 's/^n_layers: .*/n_layers: 8/' configs/mixtral-8x7b.yaml > $R/mixtral-8layers.yaml
    B="python3 -m chimera.runtime.cli bench --config $R/mixtral-8layers.yaml --dtype bfloat16 --prompt-len 128 --gen 64 --repeats 5 --mesh expert=2"
    for run in default-a:1 capture-a:0 default-b:1 capture-b:0; do
      echo "== ${run%:*}"; NCCL_GRAPH_MIXING_SUPPORT=${run#*:} timeout 100 $B --batch 1,16 --json $R/mixtral-8layers-expert2-${run%:*}.json 2>&1 \
        | grep -vE "^[IW]0000|^WARNING" | tail -3 | cut -c1-170; save
    done
    ;;
  x2-settle-h)  # 2 GPUs (session 10): with NCCL_GRAPH_MIXING_SUPPORT=0 the Engine now waits for each program's inputs before
                # calling it (Engine.settle); sharded == one GPU under the CLI's flags with the variable set, as x2-final-g checked
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    export NCCL_GRAPH_MIXING_SUPPORT=0
    opts=$(chimera_xla_flags); echo "XLA_FLAGS: $opts"
    equality_under_cli_flags
    ;;
  x2-allreduce-i)  # 2 GPUs (session 11): chimera's all-reduce kernel (sharding/all_reduce.cu): built, equal to psum, its time
                   # in a chain of sums against XLA's (NCCL); sharded == one GPU with it; llama-3-8b tensor=2 with and without it
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    echo "== build"; ( time timeout 180 python3 -c "from chimera.sharding import all_reduce; print(all_reduce.build())" ) 2>&1 | tail -5
    echo "== chain"; timeout 150 python3 benchmarks/all_reduce.py --json $R/all_reduce.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -12; save
    echo "== equality"; equality_8layers
    B="python3 -m chimera.runtime.cli bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --mesh tensor=2"
    for run in chimera-a:chimera xla-a:xla; do
      echo "== ${run%:*}"; CHIMERA_ALL_REDUCE=${run#*:} timeout 110 $B --batch 1 --json $R/tensor2-${run%:*}.json 2>&1 \
        | grep -vE "^[IW]0000|^WARNING" | tail -3 | cut -c1-170; save
    done
    ;;
  x2-profile-i)  # 2 GPUs (session 11): llama-3-8b (8 layers) tensor=2 batch 1 profiled with chimera's all-reduce and with XLA's
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    for v in chimera xla; do CHIMERA_ALL_REDUCE=$v profile_8layers $v 30; done
    ;;
  x2-ll-i | x2-pdl-i)  # 2 GPUs (session 11): the kernel with NCCL's LL flags in its lines (no fence), then (x2-pdl-i) launched as a
                       # programmatic dependent: chain (bits against psum), profile, llama-3-8b tensor=2 with it and with XLA's
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    echo "== chain"; timeout 150 python3 benchmarks/all_reduce.py --rows 1,16 --repeats 30 --json $R/all_reduce.json 2>&1 \
      | grep -vE "^[IW]0000|^WARNING" | tail -12; save
    profile_8layers chimera 12
    [ $1 = x2-pdl-i ] && { echo "== equality"; equality_8layers; }
    B="python3 -m chimera.runtime.cli bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --mesh tensor=2"
    for run in chimera-a:chimera xla-a:xla chimera-b:chimera; do
      [ $1 = x2-pdl-i ] && [ ${run%:*} = chimera-b ] && continue
      echo "== ${run%:*}"; CHIMERA_ALL_REDUCE=${run#*:} timeout 110 $B --batch 1 --json $R/tensor2-${run%:*}.json 2>&1 \
        | grep -vE "^[IW]0000|^WARNING" | tail -2 | cut -c1-170; save
    done
    ;;
  x2-nonccl-i | x2-final-i)  # 2 GPUs (session 11): embedding sum and greedy argmax through the kernel too, so a tensor=2 decode
                             # loop holds no NCCL call: its profile and sharded == one GPU (x2-nonccl-i), then llama-3-8b tensor=2
                             # with chimera's all-reduce and with XLA's against one GPU, alternated in one lease
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    [ $1 = x2-nonccl-i ] && { profile_8layers chimera 12; echo "== equality"; equality_8layers; }
    B="python3 -m chimera.runtime.cli bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3"
    bench() {  # name, seconds, batches, environment, bench words
      echo "== $1"; env $4 timeout $2 $B --batch $3 $5 --json $R/$1.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -3 | cut -c1-170; save
    }
    if [ $1 = x2-nonccl-i ]; then
      bench 1gpu-a 70 1 "" ""
      bench tensor2-chimera-a 90 1,16 CHIMERA_ALL_REDUCE=chimera "--mesh tensor=2"
      bench tensor2-xla-a 70 1 CHIMERA_ALL_REDUCE=xla "--mesh tensor=2"
      bench tensor2-chimera-mixingoff-a 70 1 NCCL_GRAPH_MIXING_SUPPORT=0 "--mesh tensor=2"
      bench tensor2-chimera-b 70 1 CHIMERA_ALL_REDUCE=chimera "--mesh tensor=2"
    else
      bench 1gpu-a 80 1,16 "" ""
      bench tensor2-chimera-a 80 1,16 CHIMERA_ALL_REDUCE=chimera "--mesh tensor=2"
      bench tensor2-xla-a 80 1,16 CHIMERA_ALL_REDUCE=xla "--mesh tensor=2"
      bench tensor2-chimera-b 70 1 CHIMERA_ALL_REDUCE=chimera "--mesh tensor=2"
      bench tensor2-xla-b 70 1 CHIMERA_ALL_REDUCE=xla "--mesh tensor=2"
    fi
    bench 1gpu-b 70 1 "" ""
    ;;
  h100-fused-j)  # 1 GPU (session 12): the fused sum + residual add + RMS norm kernel on a group of one: it builds,
                 # loads, gives XLA's residual bit for bit and its norm up to the sum of squares' order; chain timings
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    timeout 240 python3 benchmarks/all_reduce.py --devices 1 --rows 1,16 --repeats 10 --chain 32 --json $R/all_reduce.json 2>&1 \
      | grep -vE "^[IW]0000|^WARNING" | tail -20; save
    ;;
  x2-fused-j)  # 2 GPUs (session 12): the fused kernel against XLA (bits, ulps, chain timings), llama-3-8b (8 layers)
               # tensor=2 == one GPU through it, its profile, every tiny preset on tensor=2 and expert=2 == one GPU
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    echo "== chain"; timeout 150 python3 benchmarks/all_reduce.py --rows 1,16 --repeats 20 --json $R/all_reduce.json 2>&1 \
      | grep -vE "^[IW]0000|^WARNING" | tail -20; save
    equality_8layers
    profile_8layers chimera 16
    equality_under_cli_flags tiny-only
    ;;
  x2-bench-j)  # 2 GPUs (session 12): the profile of llama-3-8b (8 layers) tensor=2 through the fused kernel, then llama-3-8b
               # tensor=2 with the fused kernel, with the kernel's sum alone (XLA adding and norming: unfused_bench.py) and
               # with XLA's all-reduce, against one GPU, alternated in one lease
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    profile_8layers chimera 24
    words="bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3"
    bench() {  # name, seconds, batches, environment, program, bench words
      echo "== $1"; env $4 timeout $2 python3 $5 $words --batch $3 $6 --json $R/$1.json 2>&1 | grep -vE "^[IW]0000|^WARNING" \
        | tail -3 | cut -c1-170; save
    }
    cli="-m chimera.runtime.cli"
    bench 1gpu-a 80 1,16 "" "$cli" ""
    bench tensor2-fused-a 80 1,16 CHIMERA_ALL_REDUCE=chimera "$cli" "--mesh tensor=2"
    bench tensor2-unfused-a 70 1 CHIMERA_ALL_REDUCE=chimera benchmarks/unfused_bench.py "--mesh tensor=2"
    bench tensor2-xla-a 70 1 CHIMERA_ALL_REDUCE=xla "$cli" "--mesh tensor=2"
    bench tensor2-fused-b 70 1 CHIMERA_ALL_REDUCE=chimera "$cli" "--mesh tensor=2"
    bench tensor2-unfused-b 70 1 CHIMERA_ALL_REDUCE=chimera benchmarks/unfused_bench.py "--mesh tensor=2"
    bench 1gpu-b 70 1 "" "$cli" ""
    ;;
  x2-small-l)  # 2 GPUs (session 14; the code is session 14's commit "Experiment (reverted next): the kernels' code 45 KB ->
              # 9 KB"; never run: its 1024 threads also grew all_reduce_kernel's slots past all_reduce.py's MAX_BYTES,
              # so the library would have been refused and XLA's all-reduce run; x2-small-m is the corrected test):
              # llama-3-8b tensor=2 with the smaller kernels, then the fused kernel's timeline without the exchange
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    echo "== bench"; timeout 80 python3 -m chimera.runtime.cli bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 \
      --gen 128 --repeats 3 --batch 1 --mesh tensor=2 --json $R/tensor2-small.json 2>&1 | grep -vE "^[IW]0000|^WARNING" \
      | tail -2 | cut -c1-170; save
    llama_8layers
    XLA_FLAGS="$(chimera_xla_flags) --xla_enable_command_buffers_during_profiling=true" CHIMERA_SKIP_PEERS=1 timeout 80 \
      python3 benchmarks/profile_decode.py --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --batch 1 --gen 16 --top 8 \
      --out $R/profile-small > $R/profile-small.log 2>&1
    echo "== profile exit $?"; grep add_rms_norm $R/profile-small/summary.txt | cut -c1-70
    python3 benchmarks/kernel_timeline.py $R/profile-small/trace --around add_rms_norm --count 8 --device 0; rm -rf $R/profile-small/trace; save
    ;;
  x2-small-m)  # 2 GPUs (session 15; run it at session 15's commit "Experiment: the fused kernel's code 45 KB -> 8.6 KB",
              # which holds the gc build as all_reduce.cu and benchmarks/patches/small-kernels.patch, gone since):
              # does the fused kernel's machine code size matter (45 KB of SASS for bfloat16, run once between GEMMs that
              # stream ~100 MB through L2)? Three builds of all_reduce.cu, alternated in one lease: big (session 12's),
              # small (1024 threads a row, one line each; the rank loops rolled: benchmarks/patches/small-kernels.patch)
              # and gc (small, its Peers a __grid_constant__ parameter: no 64-byte local copy). Then one layer's
              # timeline of each (with the exchange) and the bits of gc against XLA
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    cp sharding/all_reduce.cu /tmp/gc.cu
    sed 's/const __grid_constant__ Peers peers/Peers peers/' /tmp/gc.cu > /tmp/small.cu
    cp /tmp/small.cu /tmp/big.cu; patch -s -R /tmp/big.cu benchmarks/patches/small-kernels.patch || exit 1
    grep -c "__grid_constant__\|kNormThreads" /tmp/big.cu /tmp/small.cu /tmp/gc.cu
    words="bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1"
    echo "== 1gpu"; timeout 80 python3 -m chimera.runtime.cli $words --json $R/1gpu.json 2>&1 | grep -vE "^[IW]0000|^WARNING" \
      | tail -2 | cut -c1-170; save
    for build in big small gc big small gc; do
      cp /tmp/$build.cu sharding/all_reduce.cu
      echo "== tensor2 $build"; timeout 80 python3 -m chimera.runtime.cli $words --mesh tensor=2 \
        --json $R/tensor2-$build-$RANDOM.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -2 | cut -c1-170; save
    done
    llama_8layers
    for build in big small gc; do
      cp /tmp/$build.cu sharding/all_reduce.cu
      XLA_FLAGS="$(chimera_xla_flags) --xla_enable_command_buffers_during_profiling=true" timeout 80 python3 \
        benchmarks/profile_decode.py --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --batch 1 --gen 16 --top 8 \
        --out $R/profile-$build > $R/profile-$build.log 2>&1
      echo "== profile $build exit $?"; grep add_rms_norm $R/profile-$build/summary.txt | cut -c1-70
      python3 benchmarks/kernel_timeline.py $R/profile-$build/trace --around add_rms_norm --count 8 --device 0 \
        > $R/timeline-$build-gpu0.txt 2>&1; cat $R/timeline-$build-gpu0.txt; rm -rf $R/profile-$build/trace; save
    done
    cp /tmp/gc.cu sharding/all_reduce.cu
    echo "== chain gc"; timeout 100 python3 benchmarks/all_reduce.py --rows 1,16 --repeats 10 --chain 32 --json $R/all_reduce-gc.json \
      2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -20; save
    ;;
  x2-landed-m)  # 2 GPUs (session 15): the fused kernel as landed (a thread a line, Peers a __grid_constant__): its bits
               # against XLA, llama-3-8b (8 layers) tensor=2 == one GPU, then llama-3-8b on one GPU and tensor=2 alternated,
               # and both once more with XLA's split-K GEMMs off (the o and down products' reductions are kernels of their own;
               # JAX 0.11.2's XLA does not know --xla_gpu_enable_split_k_autotuning: those two runs abort at start)
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    echo "== chain"; timeout 100 python3 benchmarks/all_reduce.py --rows 1,16 --repeats 10 --chain 32 --json $R/all_reduce.json \
      2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -14 | cut -c1-120; save
    equality_8layers
    words="bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1"
    for run in "1gpu" "tensor=2" "1gpu" "tensor=2" "1gpu" "tensor=2" "tensor=2 nosplitk" "1gpu nosplitk"; do
      set -- $run; mesh=""; [ $1 != 1gpu ] && mesh="--mesh $1"; flags=""
      [ "${2:-}" = nosplitk ] && flags="--xla_gpu_enable_split_k_autotuning=false"
      echo "== $run"; XLA_FLAGS="$flags" timeout 80 python3 -m chimera.runtime.cli $words $mesh \
        --json $R/$1-${2:-}-$RANDOM.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -2 | cut -c1-170; save
    done
    ;;
  x2-zerorow-m)  # 2 GPUs (session 15): the zero row only for weights below 4e7 elements (benchmarks/zero_row_below_bench.py):
                # the gate/up and LM-head products of one row as plain GEMMs, without the pad kernel in front of them (on
                # tensor=2 the one after the fused sum + add + norm); llama-3-8b on tensor=2 and one GPU, alternated with
                # the CLI as it is; then one layer's timeline of tensor=2 with it
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    words="bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1"
    for run in "cli tensor=2" "below tensor=2" "cli 1gpu" "below 1gpu" "cli tensor=2" "below tensor=2" "cli 1gpu" "below 1gpu"; do
      set -- $run; mesh=""; [ $2 != 1gpu ] && mesh="--mesh $2"; program="-m chimera.runtime.cli"
      [ $1 = below ] && program=benchmarks/zero_row_below_bench.py
      echo "== $run"; CHIMERA_ZERO_ROW_BELOW=4e7 timeout 80 python3 $program $words $mesh --json $R/$2-$1-$RANDOM.json 2>&1 \
        | grep -vE "^[IW]0000|^WARNING" | tail -2 | cut -c1-170; save
    done
    llama_8layers
    XLA_FLAGS="$(chimera_xla_flags) --xla_enable_command_buffers_during_profiling=true" CHIMERA_ZERO_ROW_BELOW=4e7 timeout 80 \
      python3 benchmarks/zero_row_below_bench.py --script benchmarks/profile_decode.py --config $R/llama-3-8b-8layers.yaml \
      --mesh tensor=2 --batch 1 --gen 16 --top 12 --out $R/profile-below > $R/profile-below.log 2>&1
    echo "== profile exit $?"; sed -n 3,18p $R/profile-below/summary.txt | cut -c1-110
    python3 benchmarks/kernel_timeline.py $R/profile-below/trace --around add_rms_norm --count 10 --device 0 \
      > $R/timeline-below-gpu0.txt 2>&1; cat $R/timeline-below-gpu0.txt; rm -rf $R/profile-below/trace; save
    ;;
  x2-single-p)  # 2 GPUs (session 18): per_call.py's tensor=2 step without the one-GPU run before it in the process (and
               # only gen 128): is that what made it ~0.1 ms faster than the bench's in x2-landed-p and x2-host-p?
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    XLA_FLAGS="$(chimera_xla_flags)" timeout 100 python3 benchmarks/per_call.py --config llama-3-8b --mesh tensor=2 --no-single \
      --gens 128 --repeats 3 --modes host --json $R/per-call.json 2>&1 | grep "^{" | cut -c1-400; save
    ;;
  x2-flags-p)  # 2 GPUs (session 18): does the CLI's set_xla_flags take effect here? The bench tensor=2 with XLA_FLAGS
              # set by the caller to the CLI's own options and left to the CLI, alternated
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    python3 -c "from chimera.runtime import gpu_options as g; import os; print('plugin', g.cuda_plugin_installed(), 'knows', g.jax_knows_options(), 'set', g.set_xla_flags(), os.environ.get('XLA_FLAGS'))"
    python3 -c "import importlib.metadata as m; print([d.metadata['Name'] for d in m.distributions() if 'jax' in (d.metadata['Name'] or '').lower()])"
    words="bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1 --mesh tensor=2"
    opts=$(chimera_xla_flags)
    for variant in caller cli caller cli; do
      flags=""; [ $variant = caller ] && flags="$opts"
      echo "== $variant"; XLA_FLAGS="$flags" timeout 60 python3 -m chimera.runtime.cli $words --json $R/$variant-$RANDOM.json 2>&1 \
        | grep -vE "^[IW]0000|^WARNING" | tail -1 | cut -c1-170; save
    done
    ;;
  x2-warmup-p)  # 2 GPUs (session 18; the code is session 18's commit "Experiment: bench releases its warm-up call's
               # outputs"): the bench with the warm-up's outputs kept alive through the timed calls (as before, env
               # CHIMERA_BENCH_KEEP_WARMUP=1) and released, tensor=2 alternated, with XLA's command-buffer log
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    words="bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1 --mesh tensor=2"
    for variant in kept released kept released; do
      keep=""; [ $variant = kept ] && keep=1
      echo "== $variant"; CHIMERA_BENCH_KEEP_WARMUP=$keep TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=command_buffer_thunk=3 \
        timeout 60 python3 -m chimera.runtime.cli $words --json $R/$variant-$RANDOM.json > $R/$variant.out 2> $R/$variant.log
      tail -2 $R/$variant.out | cut -c1-170
      grep -E "(Initialized|Updated) command buffer" $R/$variant.log | sed -E 's/.*\] //' | tail -12 | cut -c1-120
      gzip -f $R/$variant.log; save
    done
    ;;
  x2-host-p)  # 2 GPUs (session 18): why `chimera bench` times tensor=2 ~0.1 ms a step slower than per_call.py's fresh
             # mode in one lease (x2-landed-p): per_call.py with the inputs handed over as host arrays (host) and placed
             # before the timed call (fresh), the time of the five puts alone, and the bench once
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    opts=$(chimera_xla_flags)
    echo "== puts"; XLA_FLAGS="$opts" timeout 60 python3 benchmarks/put_timing.py 2>&1 | grep -vE "^[IW]0000|^WARNING" | tee $R/puts.txt
    echo "== per call"; XLA_FLAGS="$opts" timeout 200 python3 benchmarks/per_call.py --config llama-3-8b --mesh tensor=2 \
      --gens 16,128 --repeats 4 --modes host,fresh --json $R/per-call.json 2>&1 | grep "^{" | cut -c1-400; save
    echo "== bench tensor=2"; timeout 60 python3 -m chimera.runtime.cli bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 \
      --gen 128 --repeats 3 --batch 1 --mesh tensor=2 --json $R/tensor2.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -2 | cut -c1-170
    save
    ;;
  x2-landed-p)  # 2 GPUs (session 18): the cluster's sums of squares through a transaction barrier and a peer's two lines
               # polled at once, as landed: bits (all_reduce.py), llama-3-8b (8 layers) tensor=2 == one GPU (one prompt: the
               # cluster; two prompts), the bench alternated, tensor=2 and one GPU, and per_call.py (call and step apart)
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    landing_checks 1,16
    alternate_bench llama-3-8b 1 tensor=2 1gpu tensor=2 1gpu tensor=2 1gpu
    echo "== per call"; XLA_FLAGS="$opts" timeout 150 python3 benchmarks/per_call.py --config llama-3-8b --mesh tensor=2 \
      --gens 16,128 --repeats 4 --modes fresh --json $R/per-call.json 2>&1 | grep "^{" | cut -c1-400; save
    ;;
  x2-dense-q)  # 2 GPUs (session 19): the issue's dense figures with the bench's warm-up fixed (session 18): the landing
              # checks, llama-3-8b at batch 1 and 16, tensor=2 and one GPU alternated, then per_call.py (call and step apart)
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    landing_checks 1,16
    alternate_bench llama-3-8b 1,16 tensor=2 1gpu tensor=2 1gpu tensor=2 1gpu
    echo "== per call"; XLA_FLAGS="$opts" timeout 150 python3 benchmarks/per_call.py --config llama-3-8b --mesh tensor=2 \
      --gens 16,128 --repeats 4 --modes fresh --json $R/per-call.json 2>&1 | grep "^{" | cut -c1-400; save
    ;;
  x2-moe-q)  # 2 GPUs (session 19): the issue's MoE figure with the bench's warm-up fixed: mixtral-8x7b (all 32 layers;
            # 93 GB in bf16, which one H200 holds) over expert=2 and on one GPU, batch 1 and 16, alternated
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    alternate_bench mixtral-8x7b 1,16 expert=2 1gpu expert=2 1gpu
    ;;
  h200-moe-gemv-q)  # 1 GPU (session 19): one decode step's expert rows (2, 4, 6) through Mixtral's experts, formulated
                   # several ways (benchmarks/moe_gemv.py): which reads only the routed experts, once, near the bandwidth?
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    timeout 300 python3 benchmarks/moe_gemv.py --rows 2,4,6 --layers 8 --json $R/moe_gemv.json 2>&1 \
      | grep -vE "^[IW]0000|^WARNING" | cut -c1-140 | tail -30; save
    ;;
  x2-moe-gather-q)  # 2 GPUs (session 19): `gather` through the in-place Pallas kernel (moe/grouped_matvec.py): its
                   # values on the GPU, its speed against the copies and ragged_dot, Mixtral (8 layers) over expert=2
                   # == one GPU (one prompt: gather on both; three: gather on one GPU), mixtral-8x7b batch 1 alternated
                   # (GEMV=0 leaves out the speed of the formulations; RUNS=... the bench runs)
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    echo "== check"; timeout 150 python3 benchmarks/check_gpu_moe.py 2>&1 | grep -vE "^[IW]0000|^WARNING" | tee $R/check.txt | tail -18
    [ "${GEMV:-1}" = 1 ] && { echo "== gemv"; timeout 100 python3 benchmarks/moe_gemv.py --rows 2,4,6,8 --layers 8 \
      --json $R/moe_gemv.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | cut -c1-140 | tail -12; save; }
    sed 's/^n_layers: .*/n_layers: 8/' configs/mixtral-8x7b.yaml > $R/mixtral-8layers.yaml; opts=$(chimera_xla_flags)
    for prompts in 17 5,17,40; do
      XLA_FLAGS="$opts" JAX_DEFAULT_MATMUL_PRECISION=highest timeout 100 python3 benchmarks/sharded_equality.py --dtype float32 \
        --config $R/mixtral-8layers.yaml --mesh expert=2 --prompts $prompts --new-tokens 16 \
        --json $R/equality-$prompts.json > $R/equality-$prompts.log 2>&1
      echo "== equality prompts $prompts exit $?"; grep -E '"identical"|rror' $R/equality-$prompts.log | tail -n 3 | cut -c1-300; save
    done
    alternate_bench mixtral-8x7b 1 ${RUNS:-1gpu expert=2 1gpu expert=2}
    ;;
  x2-moe-meshes-q)  # 2 GPUs (session 19): Mixtral (8 layers) on tensor=2 (no expert axis: XLA partitions the MoE, so
                   # gather runs its copies) and expert=2 (the kernel per device) == one GPU (the kernel), one prompt
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    sed 's/^n_layers: .*/n_layers: 8/' configs/mixtral-8x7b.yaml > $R/mixtral-8layers.yaml
    JAX_DEFAULT_MATMUL_PRECISION=highest timeout 140 python3 benchmarks/sharded_equality.py --dtype float32 \
      --config $R/mixtral-8layers.yaml --mesh tensor=2 --mesh expert=2 --prompts 17 --new-tokens 12 \
      --json $R/equality.json 2>&1 | grep -E '"identical"|rror' | cut -c1-200; save
    ;;
  x2-percall-p)  # 2 GPUs (session 18, MP of x2-mbar-p): what a decode call costs beside its steps, one GPU and tensor=2
                # (per_call.py, fresh and pinned), with XLA's command-buffer log (recordings a call, their µs)
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    export CHIMERA_NVCC_DEFINES="-DCHIMERA_MBAR -DCHIMERA_POLL2"
    TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=command_buffer_thunk=3 XLA_FLAGS="$(chimera_xla_flags)" timeout 300 \
      python3 benchmarks/per_call.py --config llama-3-8b --mesh tensor=2 --gens 16,128 --repeats 4 --modes fresh,pinned \
      --json $R/per-call.json > $R/per-call.out 2> $R/per-call.log
    echo "exit $?"; grep "^{" $R/per-call.out | cut -c1-400
    awk '/^=== /{key=$2" "$3" "$4} /(Initialized|Updated) command buffer.* in [0-9]+/{for(i=1;i<=NF;i++) if($i=="in") t=$(i+1);
      match($0, /num_commands=[0-9]+/); k=key" "substr($0, RSTART, RLENGTH); n[k]++; us[k]+=t}
      END{for(k in n) printf "%s: %d recordings, %.0f us\n", k, n[k], us[k]}' $R/per-call.log | sort
    grep -v "^[IW]0000" $R/per-call.log | tail -5; gzip $R/per-call.log; save
    ;;
  x2-timeline-p)  # 2 GPUs (session 18, the code of x2-mbar-p): llama-3-8b cut to 8 layers profiled, tensor=2 (as landed and
                 # MP) and one GPU: every kernel's mean time, and one layer's kernels in launch order (kernel_timeline.py)
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    MP="-DCHIMERA_MBAR -DCHIMERA_POLL2"; llama_8layers
    for variant in MP landed 1gpu; do
      mesh="--mesh tensor=2"; [ $variant = 1gpu ] && mesh=""; defines=""; [ $variant = MP ] && defines="$MP"
      around=add_rms_norm; [ $variant = 1gpu ] && around=decode_attention
      CHIMERA_NVCC_DEFINES="$defines" XLA_FLAGS="$(chimera_xla_flags) --xla_enable_command_buffers_during_profiling=true" \
        timeout 120 python3 benchmarks/profile_decode.py --config $R/llama-3-8b-8layers.yaml $mesh --batch 1 --gen 16 --top 40 \
        --out $R/profile-$variant > $R/profile-$variant.log 2>&1
      echo "== profile $variant exit $?"; sed -n 3,30p $R/profile-$variant/summary.txt | cut -c1-150
      (cd benchmarks && python3 kernel_timeline.py $R/profile-$variant/trace --around $around --count 36) \
        > $R/timeline-$variant.txt 2>&1; cat $R/timeline-$variant.txt | cut -c1-120
      rm -rf $R/profile-$variant/trace; save
    done
    ;;
  x2-mbar-p)  # 2 GPUs (session 18; the code is session 18's commit "Experiment: the cluster's sums of squares pushed
             # through a transaction barrier"): variants by CHIMERA_NVCC_DEFINES: MP = the cluster's sums pushed with
             # st.async into each block's transaction barrier (no cluster barrier, whose release fence waited for the
             # block's stores) and both lines of a peer polled at once; MPN = MP launched without the programmatic-
             # dependent attribute. Bits (MPN), llama-3-8b (8 layers) tensor=2 == one GPU (MPN; one prompt: the
             # cluster; two prompts), then the bench alternated: as landed, MP, MPN, one GPU
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    MP="-DCHIMERA_MBAR -DCHIMERA_POLL2"; MPN="$MP -DCHIMERA_NOPDL"; opts=$(chimera_xla_flags)
    for defines in "" "$MP" "$MPN"; do  # built before any timing
      CHIMERA_NVCC_DEFINES="$defines" python3 -c "from chimera.sharding import all_reduce; print(all_reduce.build())"
    done
    echo "== bits MPN"; CHIMERA_NVCC_DEFINES="$MPN" timeout 80 python3 benchmarks/all_reduce.py --rows 1,16 --repeats 5 \
      --chain 16 --json $R/all_reduce-mpn.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | grep -E "fused|bit for bit" | cut -c1-200; save
    llama_8layers
    for prompts in 17 5,40; do
      CHIMERA_NVCC_DEFINES="$MPN" XLA_FLAGS="$opts" JAX_DEFAULT_MATMUL_PRECISION=highest timeout 100 python3 \
        benchmarks/sharded_equality.py --dtype float32 --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --prompts $prompts \
        --new-tokens 16 --json $R/equality-mpn-$prompts.json > $R/equality-mpn-$prompts.log 2>&1
      echo "== equality MPN prompts $prompts exit $?"; grep -E '"identical"|rror' $R/equality-mpn-$prompts.log | tail -n 3 | cut -c1-300; save
    done
    words="bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1"
    for variant in landed MP MPN 1gpu MPN MP landed MPN 1gpu MP; do
      mesh="--mesh tensor=2"; [ $variant = 1gpu ] && mesh=""
      defines=""; [ $variant = MP ] && defines="$MP"; [ $variant = MPN ] && defines="$MPN"
      echo "== $variant"; CHIMERA_NVCC_DEFINES="$defines" timeout 60 python3 -m chimera.runtime.cli $words $mesh \
        --json $R/$variant-$RANDOM.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -2 | cut -c1-170; save
    done
    ;;
  x2-landed-o)  # 2 GPUs (session 17): one row's o and down products as 4 float32 K-splits summed by the fused kernel (a
               # cluster of 4 blocks a row), as landed: bits (all_reduce.py: the splits against their sum), llama-3-8b (8
               # layers) tensor=2 == one GPU (one prompt: the splits; two prompts), then the bench, tensor=2 and one GPU
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    landing_checks 1
    alternate_bench llama-3-8b 1 tensor=2 1gpu tensor=2 1gpu tensor=2
    ;;
  x2-cluster-o)  # 2 GPUs (session 17; the code is session 17's commit "Experiment: the parts' sums of squares read at
                # once"): the stamps (norm_trace.py, built with -DCHIMERA_NORM_TRACE) with 8 parts and 4 splits; then, built
                # without them, the bits (all_reduce.py, 8 parts), llama-3-8b (8 layers) tensor=2 == one GPU (one prompt, 8
                # parts, 4 splits; two prompts, 8 parts), and the bench alternated: as committed before the experiment
                # (1 part, no splits), 8 parts + 4 splits, one GPU
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    opts=$(chimera_xla_flags)
    echo "== stamps, parts 8 splits 4"; CHIMERA_NVCC_DEFINES=-DCHIMERA_NORM_TRACE CHIMERA_NORM_PARTS=8 CHIMERA_SPLITS=4 \
      XLA_FLAGS="$opts" timeout 120 python3 benchmarks/norm_trace.py --layers 8 --gen 64 2>&1 | grep -vE "^[IW]0000|^WARNING" \
      | tee $R/trace-p8s4.log | tail -10; save
    echo "== chain parts 8"; CHIMERA_NORM_PARTS=8 timeout 100 python3 benchmarks/all_reduce.py --rows 1,16 --repeats 10 \
      --chain 32 --json $R/all_reduce-p8.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | grep fused | cut -c1-200; save
    llama_8layers
    for variant in "8 4 17" "8 1 5,40"; do
      set -- $variant
      CHIMERA_NORM_PARTS=$1 CHIMERA_SPLITS=$2 XLA_FLAGS="$opts" JAX_DEFAULT_MATMUL_PRECISION=highest timeout 150 python3 \
        benchmarks/sharded_equality.py --dtype float32 --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --prompts $3 \
        --new-tokens 16 --json $R/equality-p$1s$2.json > $R/equality-p$1s$2.log 2>&1
      echo "== equality $variant exit $?"; grep -E '"identical"|rror' $R/equality-p$1s$2.log | tail -n 3 | cut -c1-300; save
    done
    words="bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1"
    for variant in "1 1" "8 4" "1gpu" "8 4" "1 1" "1gpu" "8 4"; do
      set -- $variant; mesh="--mesh tensor=2"; [ $1 = 1gpu ] && { mesh=""; set -- 1 1; }
      echo "== $variant"; CHIMERA_NORM_PARTS=$1 CHIMERA_SPLITS=$2 timeout 80 python3 -m chimera.runtime.cli $words $mesh \
        --json $R/$(echo $variant | tr ' ' '_')-$RANDOM.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -2 | cut -c1-170; save
    done
    ;;
  x2-trace-o)  # 2 GPUs (session 17; the code is session 17's commit "Experiment: clock64 stamps in the fused kernel"):
              # where the fused kernel's time goes (benchmarks/norm_trace.py, llama-3-8b cut to 8 layers, tensor=2, one
              # prompt), as committed (1 part, no splits) and with 8 parts and 4 or 8 splits
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    opts=$(chimera_xla_flags)
    for variant in "1 1" "8 4" "8 8" "1 1"; do
      set -- $variant
      echo "== parts $1 splits $2"; CHIMERA_NORM_PARTS=$1 CHIMERA_SPLITS=$2 XLA_FLAGS="$opts" timeout 120 python3 \
        benchmarks/norm_trace.py --layers 8 --gen 64 2>&1 | grep -vE "^[IW]0000|^WARNING" | tee $R/trace-p$1s$2.log | tail -20; save
    done
    ;;
  x2-parts2-o)  # 2 GPUs (session 17, the same experiment; CHIMERA_SPLITS "a,b": a splits for a K of at most 4096 a
               # device (o), b above (down)): a profile with 8 parts and 4 splits, then the tensor=2 bench alternated over
               # variants "parts hints splits", one GPU, and llama-3-8b-half (the bound: tensor=2 with free sums)
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    CHIMERA_NORM_PARTS=8 CHIMERA_SPLITS=4 profile_8layers p8s4 30
    llama_half
    words="bench --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1"
    for variant in "8 0 4" "8 0 4,8" "4 0 4" "8 0 8" "2 0 4" "1gpu" "8 0 4" "8 0 4,8" "4 0 4" "1gpu" "half"; do
      set -- $variant
      if [ $1 = 1gpu ]; then run="--config llama-3-8b"; set -- 1 0 1
      elif [ $1 = half ]; then run="--config $R/llama-3-8b-half.yaml"; set -- 1 0 1
      else run="--config llama-3-8b --mesh tensor=2"; fi
      echo "== $variant"; CHIMERA_NORM_PARTS=$1 CHIMERA_NORM_HINTS=$2 CHIMERA_SPLITS=$3 timeout 80 \
        python3 -m chimera.runtime.cli $words $run --json $R/$(echo $variant | tr ' ,' '_-')-$RANDOM.json 2>&1 \
        | grep -vE "^[IW]0000|^WARNING" | tail -2 | cut -c1-170; save
    done
    ;;
  x2-parts-o)  # 2 GPUs (session 17; the code is session 17's commit "Experiment: the fused kernel as a cluster of
              # blocks a row, L2 hints, K-splits"): CHIMERA_NORM_PARTS blocks a row (a cluster), CHIMERA_NORM_HINTS=1 (evict_last
              # for the epoch, new residual, norm weight; the next call's lines prefetched), CHIMERA_SPLITS float32 K-splits of
              # the o and down products summed in the kernel. Bits (all_reduce.py), llama-3-8b (8 layers) tensor=2 == one GPU
              # (one prompt with splits; two prompts), then the tensor=2 bench alternated over variants "parts hints splits"
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    echo "== chain parts 8 hints 1"; CHIMERA_NORM_PARTS=8 CHIMERA_NORM_HINTS=1 timeout 100 python3 benchmarks/all_reduce.py \
      --rows 1,16 --repeats 10 --chain 32 --json $R/all_reduce-p8h1.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -14 \
      | cut -c1-160; save
    llama_8layers; opts=$(chimera_xla_flags)
    for variant in "8 1 4 17" "8 1 1 5,40"; do
      set -- $variant
      CHIMERA_NORM_PARTS=$1 CHIMERA_NORM_HINTS=$2 CHIMERA_SPLITS=$3 XLA_FLAGS="$opts" JAX_DEFAULT_MATMUL_PRECISION=highest \
        timeout 150 python3 benchmarks/sharded_equality.py --dtype float32 --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 \
        --prompts $4 --new-tokens 16 --json $R/equality-p$1h$2s$3.json > $R/equality-p$1h$2s$3.log 2>&1
      echo "== equality $variant exit $?"; grep -E '"identical"|rror' $R/equality-p$1h$2s$3.log | tail -n 3 | cut -c1-300; save
    done
    words="bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1 --mesh tensor=2"
    for variant in "1 0 1" "8 1 4" "8 1 1" "1 1 1" "1 0 1" "8 1 4" "8 1 1" "1 1 1"; do
      set -- $variant
      echo "== parts $1 hints $2 splits $3"; CHIMERA_NORM_PARTS=$1 CHIMERA_NORM_HINTS=$2 CHIMERA_SPLITS=$3 timeout 80 \
        python3 -m chimera.runtime.cli $words --json $R/tensor2-p$1h$2s$3-$RANDOM.json 2>&1 | grep -vE "^[IW]0000|^WARNING" \
        | tail -2 | cut -c1-170; save
    done
    ;;
  x2-rows-n)  # 2 GPUs (session 16): the fused kernel writes the zero row under a one-row norm, which the next products
             # multiply as it is (no pad kernel after the call): its bits against XLA and the zero row, llama-3-8b (8 layers)
             # tensor=2 == one GPU with one prompt (one-row steps) and two, then one layer's timeline with it
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    echo "== chain"; timeout 100 python3 benchmarks/all_reduce.py --rows 1,16 --repeats 10 --chain 32 --json $R/all_reduce.json \
      2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -14 | cut -c1-160; save
    equality_8layers; opts=$(chimera_xla_flags)
    XLA_FLAGS="$opts" JAX_DEFAULT_MATMUL_PRECISION=highest timeout 150 python3 benchmarks/sharded_equality.py --dtype float32 \
      --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --prompts 17 --new-tokens 16 \
      --json $R/equality-8layers-one-row.json > $R/equality-one-row.log 2>&1
    echo "== one-row equality exit $?"; grep -E '"identical"|rror' $R/equality-one-row.log | tail -n 3 | cut -c1-300; save
    profile_8layers rows 10
    ;;
  x2-rows-bench-n)  # 2 GPUs (session 16): llama-3-8b batch 1 with the kernel's zero row taken (the CLI) and left unused
                   # (benchmarks/norm_pad_bench.py: a pad kernel after each fused call, as before), tensor=2 and one GPU,
                   # alternated
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    words="bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1"
    for run in "rows tensor=2" "pad tensor=2" "rows 1gpu" "rows tensor=2" "pad tensor=2" "rows 1gpu" "rows tensor=2"; do
      set -- $run; mesh=""; [ $2 != 1gpu ] && mesh="--mesh $2"; program="-m chimera.runtime.cli"
      [ $1 = pad ] && program=benchmarks/norm_pad_bench.py
      echo "== $run"; timeout 80 python3 $program $words $mesh --json $R/$2-$1-$RANDOM.json 2>&1 \
        | grep -vE "^[IW]0000|^WARNING" | tail -2 | cut -c1-170; save
    done
    ;;
  x2-splits-n)  # 2 GPUs (session 16; the code is session 16's commit "Experiment: the o and down products of one row as
               # CHIMERA_SPLITS float32 K-splits"; its spec test took the down product only, not o): llama-3-8b (8 layers)
               # tensor=2 == one GPU with one prompt and 4 splits,
               # its profile, then llama-3-8b tensor=2 at 1 (XLA's split-K GEMM and reduction), 4, 8 and 16 splits, alternated
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    llama_8layers; opts=$(chimera_xla_flags)
    CHIMERA_SPLITS=4 XLA_FLAGS="$opts" JAX_DEFAULT_MATMUL_PRECISION=highest timeout 150 python3 benchmarks/sharded_equality.py \
      --dtype float32 --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --prompts 17 --new-tokens 16 \
      --json $R/equality-8layers-one-row-splits4.json > $R/equality-splits4.log 2>&1
    echo "== one-row equality, 4 splits, exit $?"; grep -E '"identical"|rror' $R/equality-splits4.log | tail -n 3 | cut -c1-300; save
    CHIMERA_SPLITS=4 profile_8layers splits4 12
    words="bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1 --mesh tensor=2"
    for splits in 4 1 8 16 1 4 8; do
      echo "== splits $splits"; CHIMERA_SPLITS=$splits timeout 80 python3 -m chimera.runtime.cli $words \
        --json $R/tensor2-splits$splits-$RANDOM.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -2 | cut -c1-170; save
    done
    ;;
  x2-check-m)  # 2 GPUs (session 15): the fused kernel as landed, on every tiny preset on tensor=2 and expert=2 == one GPU
              # (float32, the CLI's flags), then llama-3-8b at batch 1 and 16 on tensor=2 and one GPU
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    words="bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1,16"
    echo "== tensor=2"; timeout 100 python3 -m chimera.runtime.cli $words --mesh tensor=2 --json $R/tensor2.json 2>&1 \
      | grep -vE "^[IW]0000|^WARNING" | tail -3 | cut -c1-170; save
    echo "== 1gpu"; timeout 100 python3 -m chimera.runtime.cli $words --json $R/1gpu.json 2>&1 \
      | grep -vE "^[IW]0000|^WARNING" | tail -3 | cut -c1-170; save
    equality_under_cli_flags tiny-only
    ;;
  x2-bisect-l)  # 2 GPUs (session 14; the code is session 14's commit "Experiment (reverted next): the fused kernel's stages
               # left out"): the fused kernel's own time without the exchange (CHIMERA_SKIP_PEERS=1) with one stage left out
               # (CHIMERA_FUSED_VARIANT: noweight, nonorm, noepoch; wrong values, timing only), from timelines of llama-3-8b
               # (8 layers) tensor=2
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    llama_8layers
    for variant in as-is noweight nonorm noepoch as-is; do
      XLA_FLAGS="$(chimera_xla_flags) --xla_enable_command_buffers_during_profiling=true" CHIMERA_SKIP_PEERS=1 \
        CHIMERA_FUSED_VARIANT=$variant timeout 100 python3 benchmarks/profile_decode.py --config $R/llama-3-8b-8layers.yaml \
        --mesh tensor=2 --batch 1 --gen 16 --top 8 --out $R/profile-$variant > $R/profile-$variant.log 2>&1
      echo "== profile $variant exit $?"; grep add_rms_norm $R/profile-$variant/summary.txt | cut -c1-70
      python3 benchmarks/kernel_timeline.py $R/profile-$variant/trace --around add_rms_norm --count 12 --device 0 \
        > $R/timeline-$variant-gpu0.txt 2>&1
      cat $R/timeline-$variant-gpu0.txt; rm -rf $R/profile-$variant; save
    done
    ;;
  x2-variant-l)  # 2 GPUs (session 14; the code is session 14's commit "Experiment (reverted next): CHIMERA_FUSED_VARIANT"):
                # what the fused kernel's own time is made of, without the exchange (CHIMERA_SKIP_PEERS=1): as it is,
                # launched without the programmatic-dependent attribute (plain), and an empty kernel in its place
                # (empty: the custom call's floor); timelines of llama-3-8b (8 layers) tensor=2, then its step
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    llama_8layers
    words="bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1 --mesh tensor=2"
    for variant in as-is plain empty; do
      XLA_FLAGS="$(chimera_xla_flags) --xla_enable_command_buffers_during_profiling=true" CHIMERA_SKIP_PEERS=1 \
        CHIMERA_FUSED_VARIANT=$variant timeout 120 python3 benchmarks/profile_decode.py --config $R/llama-3-8b-8layers.yaml \
        --mesh tensor=2 --batch 1 --gen 16 --top 8 --out $R/profile-$variant > $R/profile-$variant.log 2>&1
      echo "== profile $variant exit $?"
      python3 benchmarks/kernel_timeline.py $R/profile-$variant/trace --around add_rms_norm --count 24 --device 0 \
        > $R/timeline-$variant-gpu0.txt 2>&1
      [ $variant = empty ] && python3 benchmarks/kernel_timeline.py $R/profile-$variant/trace --around empty_kernel --count 24 \
        --device 0 > $R/timeline-$variant-gpu0.txt 2>&1
      cat $R/timeline-$variant-gpu0.txt; rm -rf $R/profile-$variant/trace $R/profile-$variant/decode.hlo.txt; save
      echo "== bench $variant"; CHIMERA_SKIP_PEERS=1 CHIMERA_FUSED_VARIANT=$variant timeout 90 python3 -m chimera.runtime.cli \
        $words --json $R/tensor2-$variant.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -2 | cut -c1-170; save
    done
    ;;
  x2-timeline-l)  # 2 GPUs (session 14; the code is session 14's CHIMERA_SKIP_PEERS experiment, reverted since): a stretch
                 # of kernels around the fused kernel on each GPU (benchmarks/kernel_timeline.py), llama-3-8b (8 layers)
                 # tensor=2 as committed and without the exchange (SKIPS=none: as committed only)
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    llama_8layers
    for skip in ${SKIPS:-none 1}; do
      skip=${skip/none/}
      XLA_FLAGS="$(chimera_xla_flags) --xla_enable_command_buffers_during_profiling=true" CHIMERA_SKIP_PEERS=$skip timeout 120 \
        python3 benchmarks/profile_decode.py --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --batch 1 --gen 16 --top 8 \
        --out $R/profile-skip$skip > $R/profile-skip$skip.log 2>&1; echo "== profile skip '$skip' exit $?"
      for device in 0 1; do
        python3 benchmarks/kernel_timeline.py $R/profile-skip$skip/trace --around add_rms_norm --count 36 --device $device \
          > $R/timeline-skip$skip-gpu$device.txt 2>&1
      done
      cat $R/timeline-skip$skip-gpu0.txt; rm -rf $R/profile-skip$skip/trace $R/profile-skip$skip/decode.hlo.txt; save
    done
    ;;
  x2-skip-l)  # 2 GPUs (session 14; the code is session 14's commit "Experiment (reverted next): CHIMERA_SKIP_PEERS"): what
             # the exchange costs: llama-3-8b tensor=2 with the fused kernel summing each device's own partial alone (wrong
             # values, timing only) against as committed, alternated; the profile (8 layers) without the exchange
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    CHIMERA_SKIP_PEERS=1 profile_8layers skip 24
    words="bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1 --mesh tensor=2"
    for skip in "" 1 "" 1; do
      echo "== skip '$skip'"; CHIMERA_SKIP_PEERS=$skip timeout 90 python3 -m chimera.runtime.cli $words \
        --json $R/tensor2-skip$skip-$RANDOM.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -2 | cut -c1-170; save
    done
    ;;
  x2-bound-l)  # 2 GPUs (session 14): llama-3-8b on one GPU, llama-3-8b-half on one GPU (tensor=2's step without its
              # communication, see h200-half-l) and llama-3-8b tensor=2, alternated in one lease
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    llama_half
    words="bench --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1"
    for run in "configs/llama-3-8b.yaml 1" "$R/llama-3-8b-half.yaml 1" "configs/llama-3-8b.yaml tensor=2" \
               "configs/llama-3-8b.yaml 1" "$R/llama-3-8b-half.yaml 1" "configs/llama-3-8b.yaml tensor=2"; do
      set -- $run; mesh=""; [ $2 != 1 ] && mesh="--mesh $2"
      echo "== $1 $2"; timeout 90 python3 -m chimera.runtime.cli $words --config $1 $mesh \
        --json $R/$(basename $1 .yaml)-$2-$RANDOM.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -2 | cut -c1-170; save
    done
    ;;
  h200-half-l)  # 1 GPU (session 14): tensor=2's step without its communication: llama-3-8b-half (llama-3-8b with one tensor=2
                # device's share: 16 heads, 4 KV heads, d_ff 7168, half the vocabulary, so the same GEMM shapes) on one GPU,
                # alternated with llama-3-8b; its profile (8 layers); then both with XLA's exhaustive tiling search
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    llama_half
    sed 's/^n_layers: .*/n_layers: 8/' $R/llama-3-8b-half.yaml > $R/llama-3-8b-half-8layers.yaml; cat $R/llama-3-8b-half.yaml
    XLA_FLAGS="$(chimera_xla_flags) --xla_enable_command_buffers_during_profiling=true" timeout 120 python3 \
      benchmarks/profile_decode.py --config $R/llama-3-8b-half-8layers.yaml --batch 1 --gen 16 --top 24 \
      --out $R/profile-half > $R/profile-half.log 2>&1
    echo "== profile half exit $?"; rm -rf $R/profile-half/trace; sed -n 3,30p $R/profile-half/summary.txt | cut -c1-150; save
    words="bench --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1"
    for config in configs/llama-3-8b.yaml $R/llama-3-8b-half.yaml configs/llama-3-8b.yaml $R/llama-3-8b-half.yaml; do
      echo "== $config"; timeout 90 python3 -m chimera.runtime.cli $words --config $config \
        --json $R/$(basename $config .yaml)-$RANDOM.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -2 | cut -c1-170; save
    done
    for config in $R/llama-3-8b-half.yaml configs/llama-3-8b.yaml; do
      echo "== exhaustive $config"; XLA_FLAGS="--xla_gpu_exhaustive_tiling_search=true" timeout 240 python3 -m chimera.runtime.cli \
        $words --config $config --json $R/exhaustive-$(basename $config .yaml).json 2>&1 | grep -vE "^[IW]0000|^WARNING" \
        | tail -2 | cut -c1-170; save
    done
    ;;
  x2-bcast-l)  # 2 GPUs (session 14; the code is session 14's commit "One-row products as two rows by a broadcast", reverted
               # since): one-row products as two rows by a broadcast (runtime/linear.py) instead of a zero row: the profile of llama-3-8b (8 layers) tensor=2, then llama-3-8b tensor=2 and one GPU with the broadcast and
               # with the zero row (benchmarks/zero_row_bench.py), alternated
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    profile_8layers bcast 24
    words="bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1"
    for run in "-m@chimera.runtime.cli tensor=2" "benchmarks/zero_row_bench.py tensor=2" "-m@chimera.runtime.cli 1" \
               "benchmarks/zero_row_bench.py 1" "-m@chimera.runtime.cli tensor=2" "benchmarks/zero_row_bench.py tensor=2"; do
      set -- $run; program=${1/@/ }; mesh=""; [ $2 != 1 ] && mesh="--mesh $2"
      echo "== $program $2"; timeout 90 python3 $program $words $mesh --json $R/$2-$(basename ${program##* })-$RANDOM.json 2>&1 \
        | grep -vE "^[IW]0000|^WARNING" | tail -2 | cut -c1-170; save
    done
    ;;
  x2-split-k)  # 2 GPUs (session 13; the code is session 13's commit "The o and down products of one row as float32 K-splits",
               # reverted since): the o and down products as float32 K-splits summed by the fused kernel: llama-3-8b
               # (8 layers) tensor=2 == one GPU with one prompt (one-row steps: the split path) in float32 and bfloat16,
               # then llama-3-8b tensor=2 with the splits and without (benchmarks/unsplit_bench.py), alternated
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    llama_8layers; opts=$(chimera_xla_flags)
    for dtype in float32 bfloat16; do
      XLA_FLAGS="$opts" JAX_DEFAULT_MATMUL_PRECISION=highest timeout 150 python3 benchmarks/sharded_equality.py --dtype $dtype \
        --config $R/llama-3-8b-8layers.yaml --mesh tensor=2 --prompts 17 --new-tokens 16 \
        --json $R/equality-8layers-one-row-$dtype.json > $R/equality-$dtype.log 2>&1
      echo "== equality $dtype exit $?"; grep -E '"identical"|rror' $R/equality-$dtype.log | tail -n 3 | cut -c1-300; save
    done
    words="bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1 --mesh tensor=2"
    for program in "-m chimera.runtime.cli" benchmarks/unsplit_bench.py "-m chimera.runtime.cli" benchmarks/unsplit_bench.py; do
      echo "== $program"; timeout 90 python3 $program $words --json $R/tensor2-$(basename ${program##* })-$RANDOM.json 2>&1 \
        | grep -vE "^[IW]0000|^WARNING" | tail -2 | cut -c1-170; save
    done
    ;;
  x2-gemv-k)  # 2 GPUs (session 13; the code is session 13's commit "chimera's one-row product", reverted since): chimera's
              # one-row product (runtime/gemv.cu, its splits fitting one wave, x in shared memory) against float64 and XLA, the profile of llama-3-8b (8 layers) tensor=2 with it, then llama-3-8b
              # tensor=2 and one GPU with it and without, alternated
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    echo "== gemv"; timeout 200 python3 benchmarks/gemv.py --json $R/gemv.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -16 \
      | cut -c1-330; save
    CHIMERA_GEMV=chimera profile_8layers gemv 24
    words="bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1"
    for run in "xla tensor=2" "chimera tensor=2" "chimera 1" "xla tensor=2" "chimera tensor=2" "xla 1"; do
      set -- $run; mesh=""; [ $2 != 1 ] && mesh="--mesh $2"
      echo "== gemv=$1 $2"; CHIMERA_GEMV=$1 timeout 90 python3 -m chimera.runtime.cli $words $mesh \
        --json $R/$2-gemv-$1-$RANDOM.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -2 | cut -c1-170; save
    done
    ;;
  h100-gemv-k)  # 1 GPU (session 13; the code is session 13's gemv.cu commits, reverted since): chimera's one-row product
                # (runtime/gemv.cu) against float64 and XLA, then llama-3-8b on one GPU with it and without, alternated
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    echo "== gemv"; timeout 200 python3 benchmarks/gemv.py --json $R/gemv.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -16; save
    words="bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1"
    for choice in xla chimera xla chimera; do
      echo "== 1gpu gemv=$choice"; CHIMERA_GEMV=$choice timeout 90 python3 -m chimera.runtime.cli $words \
        --json $R/1gpu-gemv-$choice-$RANDOM.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -2 | cut -c1-170; save
    done
    ;;
  x2-warm-k)  # 2 GPUs (session 13): the fused kernel warming L2 with the next block's first weights (CHIMERA_WARM_L2_MB):
              # the profile of llama-3-8b (8 layers) tensor=2 warming 32 MB a call, then llama-3-8b tensor=2 at several
              # budgets, alternated in one lease (the code is commit "Experiment (reverted next)" of session 13)
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    CHIMERA_WARM_L2_MB=32 profile_8layers warm32 24
    words="bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 --gen 128 --repeats 3 --batch 1 --mesh tensor=2"
    for mb in 0 32 16 64 0 32; do
      echo "== warm $mb"; CHIMERA_WARM_L2_MB=$mb timeout 80 python3 -m chimera.runtime.cli $words --json $R/tensor2-warm$mb-$RANDOM.json 2>&1 \
        | grep -vE "^[IW]0000|^WARNING" | tail -2 | cut -c1-170; save
    done
    ;;
  x2-check-j)  # 2 GPUs (session 12): sharded == one GPU as committed: llama-3-8b (8 layers) and every tiny preset on tensor=2
               # and expert=2 (float32, the CLI's flags)
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    equality_under_cli_flags
    ;;
  x2-review-j)  # 2 GPUs (session 12): both kernels after their lines' send and gather became shared helpers: bits against
                # XLA, llama-3-8b (8 layers) tensor=2 == one GPU, and the tensor=2 step once more
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    echo "== chain"; timeout 150 python3 benchmarks/all_reduce.py --rows 1 --repeats 10 --chain 32 --json $R/all_reduce.json 2>&1 \
      | grep -vE "^[IW]0000|^WARNING" | tail -20; save
    equality_8layers
    echo "== tensor2-fused"; timeout 80 python3 -m chimera.runtime.cli bench --config llama-3-8b --dtype bfloat16 --prompt-len 128 \
      --gen 128 --repeats 3 --batch 1 --mesh tensor=2 --json $R/tensor2-fused.json 2>&1 | grep -vE "^[IW]0000|^WARNING" | tail -2; save
    ;;
  x2-tiny-i)  # 2 GPUs (session 11): every tiny preset on tensor=2 (chimera's all-reduce) and expert=2 == one GPU, CLI's flags
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    equality_under_cli_flags tiny-only
    ;;
  x2-check-i)  # 2 GPUs (session 11): the kernel as committed (its add/pack helpers templated after the runs above): bits
               # against psum, sharded == one GPU (llama-3-8b with 8 layers on tensor=2)
    R=/tmp/results; rm -rf $R; mkdir -p $R; save() { tar czf "$OUT/results.tgz" -C $R .; }
    echo "== chain"; timeout 120 python3 benchmarks/all_reduce.py --rows 1,16 --repeats 20 --json $R/all_reduce.json 2>&1 \
      | grep -vE "^[IW]0000|^WARNING" | tail -10; save
    equality_8layers
    ;;
  tp-collectives)  # 2 GPUs: per-all-reduce latency under the collective settings not tried yet, then llama-3-8b
                   # tensor=2 batch 1 under each (NCCL multicast stays off: NCCL_NVLS_ENABLE=0 is kept)
    for flags in "" "--xla_gpu_disable_async_collectives=ALLREDUCE" "--xla_gpu_experimental_enable_nccl_symmetric_buffers=true" \
                 "--xla_gpu_enable_nccl_user_buffers=true"; do
      XLA_FLAGS="$flags" python3 benchmarks/collective_latency.py --devices 2
      XLA_FLAGS="$flags" python3 -m chimera.runtime.cli bench --config llama-3-8b --batch 1 --prompt-len 128 --gen 32 \
        --dtype bfloat16 --repeats 2 --mesh tensor=2
    done
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
