"""Mistral folders (`model_type: mistral`): Llama's layout, every layer a sliding window of
`sliding_window` tokens (or full attention when it is null)."""

from __future__ import annotations

from chimera.architectures.config import ModelConfig
from chimera.architectures.hf import register_converter
from chimera.architectures.hf.llama import llama_config, llama_params


def mistral_config(hf: dict) -> ModelConfig:
    config = llama_config(hf)
    window = hf.get("sliding_window")
    if window is None:
        return config
    attn = {**config.mixers["attn"], "kind": "sliding_window", "window": window}
    return config.replace(mixers={"attn": attn})


register_converter("mistral")((mistral_config, llama_params))
