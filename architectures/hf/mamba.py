"""Mamba-1 folders (`model_type: mamba`, MambaForCausalLM): RMSNorm then a Mamba mixer per
layer, no feed-forward; embeddings tied to the LM head unless tie_word_embeddings is false.

transformers keeps the residual stream in float32 (`residual_in_fp32`); chimera keeps it in
the model's dtype, which is the same thing for float32 imports.
"""

from __future__ import annotations

from chimera.architectures.config import ModelConfig
from chimera.architectures.hf import Checkpoint, register_converter
from chimera.architectures.hf.llama import embedding_params
from chimera.ssm.mamba import Mamba


def mamba_config(hf: dict) -> ModelConfig:
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r} (Mamba uses silu)")
    d_model, expand = hf["hidden_size"], hf.get("expand", 2)
    if hf.get("intermediate_size", expand * d_model) != expand * d_model:
        raise ValueError(f"intermediate_size {hf['intermediate_size']} is not expand {expand} x hidden_size {d_model}")
    rank = hf.get("time_step_rank", "auto")
    return ModelConfig.from_dict({
        "name": hf.get("_name_or_path") or "mamba",
        "vocab_size": hf["vocab_size"],
        "d_model": d_model,
        "n_layers": hf["num_hidden_layers"],
        "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
        "tie_embeddings": hf.get("tie_word_embeddings", True),  # MambaConfig's default
        "layers": [{"mixer": "ssm"}],
        "mixers": {"ssm": {
            "kind": "mamba",
            "d_state": hf.get("state_size", 16),
            "d_conv": hf.get("conv_kernel", 4),
            "expand": expand,
            "dt_rank": None if rank == "auto" else rank,
            "conv_bias": hf.get("use_conv_bias", True),
            "bias": hf.get("use_bias", False),
            "dt_min": hf.get("time_step_min", 0.001),
            "dt_max": hf.get("time_step_max", 0.1),
            "dt_init_floor": hf.get("time_step_floor", 1e-4),
        }},
    })


def mamba_mixer_params(ckpt: Checkpoint, prefix: str, mixer: Mamba) -> dict:
    """A MambaMixer's tensors under `prefix` (e.g. `backbone.layers.0.mixer.`): torch Linear
    weights are [out, in], ours [in, out]; in_proj stacks x over z; conv1d.weight is [E, 1, K]."""
    e = mixer.d_inner
    params = {
        "in_x": ckpt.get(prefix + "in_proj.weight", lambda w: w[:e].T),  # [D, E]
        "in_z": ckpt.get(prefix + "in_proj.weight", lambda w: w[e:].T),  # [D, E]
        "conv_weight": ckpt.get(prefix + "conv1d.weight", lambda w: w[:, 0, :].T),  # [K, E]
        "x_proj": ckpt.get(prefix + "x_proj.weight", lambda w: w.T),  # [E, R + 2N]
        "dt_proj": ckpt.get(prefix + "dt_proj.weight", lambda w: w.T),  # [R, E]
        "dt_bias": ckpt.get(prefix + "dt_proj.bias"),
        "A_log": ckpt.get(prefix + "A_log"),  # [E, N]
        "D": ckpt.get(prefix + "D"),
        "out_proj": ckpt.get(prefix + "out_proj.weight", lambda w: w.T),  # [E, D]
    }
    if mixer.conv_bias:
        params["conv_bias"] = ckpt.get(prefix + "conv1d.bias")
    if mixer.bias:
        params |= {"in_x_bias": ckpt.get(prefix + "in_proj.bias", lambda b: b[:e]),
                   "in_z_bias": ckpt.get(prefix + "in_proj.bias", lambda b: b[e:]),
                   "out_bias": ckpt.get(prefix + "out_proj.bias")}
    if mixer.dt_bc_norm:
        params |= {"dt_norm": ckpt.get(prefix + "dt_layernorm.weight"),
                   "B_norm": ckpt.get(prefix + "b_layernorm.weight"),
                   "C_norm": ckpt.get(prefix + "c_layernorm.weight")}
    return params


def mamba_params(config: ModelConfig, ckpt: Checkpoint) -> dict:
    layers = []
    for i, (mixer, _) in enumerate(config.layer_blocks()):
        p = f"backbone.layers.{i}."
        layers.append({"mixer_norm": ckpt.get(p + "norm.weight"),
                       "mixer": mamba_mixer_params(ckpt, p + "mixer.", mixer)})
    # Old exports name the table `embedding` (transformers renames it on load).
    embed = "backbone.embeddings.weight" if "backbone.embeddings.weight" in ckpt else "backbone.embedding.weight"
    return {"layers": layers, **embedding_params(config, ckpt, embed, "backbone.norm_f.weight")}


register_converter("mamba")((mamba_config, mamba_params))
