"""Which XLA debug options this jaxlib accepts, of those chimera's GPU notes mention (an unknown
name in XLA_FLAGS aborts the process, so check before setting one).

    python benchmarks/xla_flags.py [NAME ...]

Each name is tried in a child process that sets it in XLA_FLAGS (to its current value) and
starts JAX's CPU backend, where XLA parses the flags. A name that merely appears in the
libraries' strings is not enough: `xla_gpu_enable_dot_strength_reduction`,
`xla_gpu_enable_triton_softmax_fusion` and `xla_gpu_enable_split_k_autotuning` are in JAX
0.11.2's binaries but abort as "Unknown flag in XLA_FLAGS" (seen on the GPU in session 7).
"""

from __future__ import annotations

import os
import subprocess
import sys

NAMES = ["xla_gpu_enable_dot_strength_reduction", "xla_gpu_unsupported_use_all_reduce_one_shot_kernel",
         "xla_gpu_gemm_rewrite_size_threshold", "xla_gpu_enable_command_buffer",
         "xla_gpu_disable_async_collectives", "xla_gpu_experimental_enable_nccl_symmetric_buffers",
         "xla_gpu_enable_nccl_user_buffers", "xla_gpu_experimental_enable_nvshmem", "xla_gpu_allow_all_reduce_kernel",
         "xla_gpu_collectives_implementation", "xla_gpu_enable_triton_softmax_fusion",
         "xla_gpu_enable_split_k_autotuning", "xla_enable_command_buffers_during_profiling"]

# Starts the CPU backend: XLA parses XLA_FLAGS then.
PROBE = "import jax; jax.devices('cpu'); print('parsed')"


def accepted(name: str) -> bool:
    """Whether XLA accepts `--name` in XLA_FLAGS. The value tried is a boolean's, then an empty
    string's: a flag of another type rejects the first with a value error, not as unknown."""
    for value in ("false", ""):
        env = {**os.environ, "XLA_FLAGS": f"--{name}={value}", "JAX_PLATFORMS": "cpu"}
        run = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
        if "Unknown flag" in run.stderr:
            return False
        if run.returncode == 0:
            return True
    return True  # parsed as a known name, its value was the problem


def main():
    for name in sys.argv[1:] or NAMES:
        print(f"{name}: {'accepted' if accepted(name) else 'unknown to this XLA'}", flush=True)


if __name__ == "__main__":
    main()
