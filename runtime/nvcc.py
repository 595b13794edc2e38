"""chimera's CUDA sources (the all-reduce, the one-row product) compiled with nvcc on first use.

A library is built once per source, jaxlib and nvcc (cached in $CHIMERA_CACHE, default
~/.cache/chimera) for Ampere and Hopper, with Hopper's PTX for newer GPUs to compile at load: one
cached library serves every GPU a shared home directory may meet.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax

ARCHITECTURES = ("-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
                 "-gencode=arch=compute_90,code=compute_90")


class Unavailable(RuntimeError):
    """A chimera kernel cannot run here; the message says why."""


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("CHIMERA_CACHE", pathlib.Path.home() / ".cache" / "chimera"))


def find_nvcc() -> str:
    for candidate in (shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise Unavailable("nvcc not found (on PATH or in $CUDA_HOME/bin)")


def build(source: pathlib.Path) -> pathlib.Path:
    """The shared library compiled from `source` (for ARCHITECTURES) unless the cache has it."""
    nvcc = find_nvcc()
    text = source.read_bytes()
    words = " ".join([importlib.metadata.version("jaxlib"), nvcc, *ARCHITECTURES]).encode()
    key = hashlib.sha256(text + words).hexdigest()[:16]
    library = cache_dir() / f"{source.stem}-{key}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
        built = pathlib.Path(scratch) / library.name
        command = [nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", *ARCHITECTURES,
                   "-diag-suppress", "940,2473", "-I", jax.ffi.include_dir(), str(source), "-o", str(built)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            raise Unavailable(f"nvcc failed on {source.name}: {result.stderr.strip()[-1000:]}")
        built.replace(library)  # atomic: another process may be building it too
    return library
