"""Which XLA debug options this jaxlib accepts, of those chimera's GPU notes mention (an unknown
name in XLA_FLAGS aborts the process, so check before setting one).

    python benchmarks/xla_flags.py [NAME ...]

Each name is tried in a child process that sets it in XLA_FLAGS and starts JAX's CPU backend,
where XLA parses the flags (`chimera.runtime.gpu_options.xla_flags_error`). A name that merely appears in the
libraries' strings is not enough: `xla_gpu_enable_dot_strength_reduction`,
`xla_gpu_enable_triton_softmax_fusion` and `xla_gpu_enable_split_k_autotuning` are in JAX
0.11.2's binaries but abort as "Unknown flag in XLA_FLAGS" (seen on the GPU in session 7).
"""

from __future__ import annotations

import sys

from chimera.runtime.gpu_options import xla_flags_error

NAMES = ["xla_gpu_enable_dot_strength_reduction", "xla_gpu_unsupported_use_all_reduce_one_shot_kernel",
         "xla_gpu_gemm_rewrite_size_threshold", "xla_gpu_enable_command_buffer",
         "xla_gpu_disable_async_collectives", "xla_gpu_experimental_enable_nccl_symmetric_buffers",
         "xla_gpu_enable_nccl_user_buffers", "xla_gpu_experimental_enable_nvshmem", "xla_gpu_allow_all_reduce_kernel",
         "xla_gpu_collectives_implementation", "xla_gpu_enable_triton_softmax_fusion",
         "xla_gpu_enable_split_k_autotuning", "xla_enable_command_buffers_during_profiling"]


def accepted(name: str) -> bool:
    """Whether XLA accepts `--name` in XLA_FLAGS. The value tried is a boolean's, then an empty
    string's: a flag of another type rejects the first with a value error, not as unknown."""
    for value in ("false", ""):
        error = xla_flags_error({name: value})
        if "Unknown flag" in error:
            return False
        if not error:
            return True
    return True  # parsed as a known name, its value was the problem


def main():
    for name in sys.argv[1:] or NAMES:
        print(f"{name}: {'accepted' if accepted(name) else 'unknown to this XLA'}", flush=True)


if __name__ == "__main__":
    main()
