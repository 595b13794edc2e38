"""Which XLA debug options this jaxlib knows, of those chimera's GPU notes mention (an unknown
name in XLA_FLAGS aborts the process, so check before setting one).

    python benchmarks/xla_flags.py
"""

from __future__ import annotations

import pathlib
import re

import jaxlib

NAMES = ["xla_gpu_enable_dot_strength_reduction", "xla_gpu_unsupported_use_all_reduce_one_shot_kernel",
         "xla_gpu_gemm_rewrite_size_threshold", "xla_gpu_enable_command_buffer",
         "xla_gpu_disable_async_collectives", "xla_gpu_experimental_enable_nccl_symmetric_buffers",
         "xla_gpu_enable_nccl_user_buffers", "xla_gpu_experimental_enable_nvshmem", "xla_gpu_allow_all_reduce_kernel",
         "xla_gpu_collectives_implementation"]


def main():
    roots = [pathlib.Path(jaxlib.__file__).parent]
    try:
        import jax_plugins
        roots += [pathlib.Path(p) for p in jax_plugins.__path__]
    except ImportError:
        pass
    found = set()
    for root in roots:
        for library in root.rglob("*.so*"):
            data = library.read_bytes()
            found.update(name for name in NAMES if re.search(rb"[^a-z_]" + name.encode() + rb"[^a-z_]", data))
    for name in NAMES:
        print(f"{name}: {'known' if name in found else 'not in this jaxlib'}")


if __name__ == "__main__":
    main()
