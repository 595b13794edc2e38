"""Mamba-2 folders (`model_type: mamba2`, Mamba2ForCausalLM): every layer an RMSNorm then a
Mamba-2 mixer (no feed-forward), a final RMSNorm, tied or untied LM head."""

from __future__ import annotations

import math

from chimera.architectures.config import ModelConfig
from chimera.architectures.hf import Checkpoint, register_converter
from chimera.architectures.hf.llama import embedding_params
from chimera.ssm.mamba2 import Mamba2


def json_float(value):
    """A float from config.json: transformers 5 writes inf as {"__float__": "Infinity"}, older
    versions as a bare `Infinity` (which json.loads reads as inf)."""
    if isinstance(value, dict) and set(value) == {"__float__"}:
        return float(value["__float__"])  # "Infinity", "-Infinity", "NaN"
    return value


def mamba2_config(hf: dict) -> ModelConfig:
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):
        raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r} (Mamba-2 uses silu)")
    low, high = map(json_float, hf.get("time_step_limit") or (0.0, math.inf))
    return ModelConfig.from_dict({
        "name": hf.get("_name_or_path") or "mamba2",
        "vocab_size": hf["vocab_size"],
        "d_model": hf["hidden_size"],
        "n_layers": hf["num_hidden_layers"],
        "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
        "tie_embeddings": hf.get("tie_word_embeddings", False),
        "layers": [{"mixer": "ssm"}],
        "mixers": {"ssm": {
            "kind": "mamba2",
            "n_heads": hf["num_heads"],
            "head_dim": hf["head_dim"],
            "d_state": hf["state_size"],
            "n_groups": hf.get("n_groups", 8),
            "d_conv": hf.get("conv_kernel", 4),
            "expand": hf.get("expand", 2),
            "chunk_size": hf.get("chunk_size", 256),
            "conv_bias": hf.get("use_conv_bias", True),
            "bias": hf.get("use_bias", False),
            "dt_limit": [low, None if high == math.inf else high],  # JSON's Infinity as YAML-friendly null
            "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
            "dt_min": hf.get("time_step_min", 0.001),
            "dt_max": hf.get("time_step_max", 0.1),
            "dt_init_floor": hf.get("time_step_floor", 1e-4),
        }},
    })


def mixer_params(ckpt: Checkpoint, prefix: str, mixer: Mamba2) -> dict:
    """The mixer under `prefix` (e.g. `backbone.layers.0.mixer.`): torch Linear weights are
    [out, in], ours [in, out]; the depthwise Conv1d weight [C, 1, K] becomes [K, C]."""
    params = {
        "in_proj": ckpt.get(prefix + "in_proj.weight", lambda w: w.T),
        "conv_weight": ckpt.get(prefix + "conv1d.weight", lambda w: w[:, 0, :].T),
        "dt_bias": ckpt.get(prefix + "dt_bias"),
        "a_log": ckpt.get(prefix + "A_log"),
        "d_skip": ckpt.get(prefix + "D"),
        "norm": ckpt.get(prefix + "norm.weight"),
        "out_proj": ckpt.get(prefix + "out_proj.weight", lambda w: w.T),
    }
    if mixer.conv_bias:
        params["conv_bias"] = ckpt.get(prefix + "conv1d.bias")
    if mixer.bias:
        params |= {"in_proj_bias": ckpt.get(prefix + "in_proj.bias"),
                   "out_proj_bias": ckpt.get(prefix + "out_proj.bias")}
    return params


def mamba2_params(config: ModelConfig, ckpt: Checkpoint) -> dict:
    layers = [{"mixer_norm": ckpt.get(f"backbone.layers.{i}.norm.weight"),
               "mixer": mixer_params(ckpt, f"backbone.layers.{i}.mixer.", mixer)}
              for i, (mixer, _) in enumerate(config.layer_blocks())]
    return {"layers": layers, **embedding_params(config, ckpt, "backbone.embeddings.weight", "backbone.norm_f.weight")}


register_converter("mamba2")((mamba2_config, mamba2_params))
