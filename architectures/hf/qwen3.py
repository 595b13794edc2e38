"""Qwen3 folders (`model_type: qwen3`, Qwen3ForCausalLM): Llama's layout plus a per-head
RMSNorm of q and k over head_dim (`q_norm`, `k_norm`, eps `rms_norm_eps`) before RoPE;
`attention_bias` puts biases on all four projections. Sliding-window layers
(`use_sliding_window`) are refused.
"""

from __future__ import annotations

from chimera.architectures.config import ModelConfig
from chimera.architectures.hf import Checkpoint, register_converter
from chimera.architectures.hf.llama import llama_config, llama_params
from chimera.attention.attention import Attention


def with_qk_norm(attn: dict, hf: dict) -> dict:
    """An attention block's fields with Qwen3's q/k norm switched on."""
    return {**attn, "qk_norm": True, "qk_norm_eps": hf.get("rms_norm_eps", 1e-6)}


def qk_norm_params(ckpt: Checkpoint, prefix: str, attn: Attention) -> dict:
    """q_norm and k_norm weights [head_dim] under `prefix` (e.g. `model.layers.0.self_attn.`);
    nothing for a block without qk_norm."""
    if not attn.qk_norm:
        return {}
    return {"q_norm": ckpt.get(prefix + "q_norm.weight"), "k_norm": ckpt.get(prefix + "k_norm.weight")}


def qwen3_config(hf: dict) -> ModelConfig:
    if hf.get("use_sliding_window"):
        raise ValueError(f"{hf.get('model_type')}: use_sliding_window is not supported")
    config = llama_config(hf)
    return config.replace(mixers={"attn": with_qk_norm(config.mixers["attn"], hf)})


def qwen3_params(config: ModelConfig, ckpt: Checkpoint) -> dict:
    params = llama_params(config, ckpt)
    for i, (layer, (attn, _)) in enumerate(zip(params["layers"], config.layer_blocks(), strict=True)):
        layer["mixer"] |= qk_norm_params(ckpt, f"model.layers.{i}.self_attn.", attn)
    return params


register_converter("qwen3")((qwen3_config, qwen3_params))
