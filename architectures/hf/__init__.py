"""Import Hugging Face folders (config.json + *.safetensors) as chimera models.

Each supported `model_type` registers a converter: config.json -> ModelConfig, and a
weight map from our parameter tree to the checkpoint's tensor names. Weights are read
with safetensors only; a folder holding only pickled weights is refused, never unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from chimera.architectures.config import ModelConfig
from chimera.runtime.model import Model

PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")

# model_type -> (config converter, params loader)
CONVERTERS: dict[str, tuple[Callable[[dict], ModelConfig], Callable[[ModelConfig, "Checkpoint"], dict]]] = {}


def register_converter(*model_types: str):
    def wrap(pair):
        for model_type in model_types:
            CONVERTERS[model_type] = pair
        return pair
    return wrap


class Checkpoint:
    """Lazy access to the tensors of a folder's safetensors files, by name."""

    def __init__(self, folder: Path, dtype):
        self.dtype = jnp.dtype(dtype)
        index = folder / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {name: folder / file for name, file in weight_map.items()}
        else:
            self.files = {}
            for file in sorted(folder.glob("*.safetensors")):
                with safe_open(file, framework="numpy") as f:
                    self.files.update({name: file for name in f.keys()})
        self.used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def numpy(self, name: str) -> np.ndarray:
        if name not in self.files:
            raise ValueError(f"the checkpoint has no tensor {name!r}")
        self.used.add(name)
        with safe_open(self.files[name], framework="numpy") as f:  # bfloat16 arrives as ml_dtypes.bfloat16
            return f.get_tensor(name).astype(np.float32)

    def get(self, name: str, transform: Callable[[np.ndarray], np.ndarray] = lambda x: x) -> jax.Array:
        return jnp.asarray(transform(self.numpy(name)), self.dtype)

    def unused(self) -> list[str]:
        return sorted(set(self.files) - self.used)


def load_tokenizer(folder: str | Path):
    """The folder's tokenizer.json as a `tokenizers.Tokenizer`, or None when absent."""
    path = Path(folder) / "tokenizer.json"
    if not path.exists():
        return None
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(path))


def read_hf_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    config_path = folder / "config.json"
    if not config_path.exists():
        raise ValueError(f"{folder} has no config.json")
    if not list(folder.glob("*.safetensors")):
        pickled = sorted(p.name for pattern in PICKLED for p in folder.glob(pattern))
        if pickled:
            raise ValueError(f"{folder} holds only pickled weights ({', '.join(pickled)}); chimera requires "
                             f"safetensors and never unpickles a checkpoint (convert it with "
                             f"transformers' save_pretrained(safe_serialization=True))")
        raise ValueError(f"{folder} has no *.safetensors weights")
    return json.loads(config_path.read_text())


def from_hf(path: str | Path, dtype: str = "float32") -> tuple[Model, dict]:
    """(model, params) from a Hugging Face folder; `model.tokenizer` is set when tokenizer.json is there."""
    folder = Path(path)
    hf = read_hf_config(folder)
    model_type = hf.get("model_type")
    if model_type not in CONVERTERS:
        raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(CONVERTERS))}")
    to_config, to_params = CONVERTERS[model_type]
    config = to_config(hf).replace(dtype=dtype, name=hf.get("_name_or_path") or folder.name)
    checkpoint = Checkpoint(folder, dtype)
    params = to_params(config, checkpoint)
    leftover = checkpoint.unused()
    if leftover:
        raise ValueError(f"{folder}: {len(leftover)} checkpoint tensors were not used, e.g. {leftover[:3]}; "
                         f"the model would silently differ from the checkpoint")
    model = Model(config, tokenizer=load_tokenizer(folder))
    expected = jax.eval_shape(model.init, jax.random.key(0))
    if jax.tree.structure(expected) != jax.tree.structure(params) or any(
            e.shape != p.shape for e, p in zip(jax.tree.leaves(expected), jax.tree.leaves(params))):
        raise ValueError(f"{folder}: the imported parameter shapes do not match the config")
    return model, params


# Converters register themselves on import.
from chimera.architectures.hf import (  # noqa: E402,F401
    deepseek_v3, gemma2, jamba, llama, mamba, mamba2, mistral, mixtral, qwen3, qwen_moe, rwkv7)
