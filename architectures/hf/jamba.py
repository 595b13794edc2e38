"""Jamba folders (`model_type: jamba`, JambaForCausalLM): a hybrid of Mamba and attention layers,
dense and MoE feed-forwards, as transformers' `modeling_jamba`.

Layer i's mixer is attention where i % attn_layer_period == attn_layer_offset, else a Mamba-1
mixer with RMSNorms on dt, B and C (eps rms_norm_eps). The attention has no positional encoding
(the Mamba layers carry order) and no biases. Layer i's feed-forward is a sparse MoE of
`num_experts` gated MLPs of `intermediate_size` where i % expert_layer_period ==
expert_layer_offset (and num_experts > 1), else a dense gated MLP of the same width. The router
takes the softmax over all experts and keeps the top `num_experts_per_tok` probabilities without
renormalising them. Each layer is pre-norm (input_layernorm, pre_ff_layernorm); hidden_act must
be silu, which the Mamba mixer assumes.
"""

from __future__ import annotations

from chimera.architectures.config import ModelConfig
from chimera.architectures.hf import Checkpoint, register_converter
from chimera.architectures.hf.llama import attention_params, embedding_params, mlp_params
from chimera.architectures.hf.mamba import mamba_mixer_params
from chimera.architectures.hf.mixtral import stacked_experts
from chimera.architectures.hf.qwen_moe import QWEN_EXPERTS, shortest_pattern
from chimera.attention.attention import Attention
from chimera.moe.moe import MoE


def layer_kinds(hf: dict) -> list[dict]:
    """Each layer's {mixer, ffn} block names, by transformers' period/offset rules (a missing
    field takes JambaConfig's default)."""
    attn_period, attn_offset = hf.get("attn_layer_period", 8), hf.get("attn_layer_offset", 4)
    expert_period, expert_offset = hf.get("expert_layer_period", 2), hf.get("expert_layer_offset", 1)
    sparse = hf.get("num_experts", 16) > 1
    return [{"mixer": "attn" if i % attn_period == attn_offset else "ssm",
             "ffn": "moe" if sparse and i % expert_period == expert_offset else "mlp"}
            for i in range(hf["num_hidden_layers"])]


def jamba_config(hf: dict) -> ModelConfig:
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r} (Jamba's Mamba layers use silu)")
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    eps = hf.get("rms_norm_eps", 1e-6)
    rank = hf.get("mamba_dt_rank", "auto")
    layers = layer_kinds(hf)
    mixers = {
        "attn": {"kind": "attention", "n_heads": n_heads, "n_kv_heads": hf.get("num_key_value_heads") or n_heads,
                 "head_dim": hf.get("head_dim") or d_model // n_heads, "use_rope": False},
        "ssm": {"kind": "mamba", "d_state": hf.get("mamba_d_state", 16), "d_conv": hf.get("mamba_d_conv", 4),
                "expand": hf.get("mamba_expand", 2), "dt_rank": None if rank == "auto" else rank,
                "conv_bias": hf.get("mamba_conv_bias", True), "bias": hf.get("mamba_proj_bias", False),
                "dt_bc_norm": True, "norm_eps": eps},
    }
    ffns = {
        "mlp": {"kind": "mlp", "d_ff": hf["intermediate_size"]},
        "moe": {"kind": "moe", "n_experts": hf.get("num_experts", 16), "top_k": hf.get("num_experts_per_tok", 2),
                "d_ff": hf["intermediate_size"], "router": "softmax_topk", "renormalize": False},
    }
    used_mixers, used_ffns = {layer["mixer"] for layer in layers}, {layer["ffn"] for layer in layers}
    return ModelConfig.from_dict({
        "name": hf.get("_name_or_path") or "jamba",
        "vocab_size": hf["vocab_size"],
        "d_model": d_model,
        "n_layers": hf["num_hidden_layers"],
        "norm_eps": eps,
        "tie_embeddings": hf.get("tie_word_embeddings", False),
        "layers": shortest_pattern(layers),
        "mixers": {name: spec for name, spec in mixers.items() if name in used_mixers},
        "ffns": {name: spec for name, spec in ffns.items() if name in used_ffns},
    })


def jamba_params(config: ModelConfig, ckpt: Checkpoint) -> dict:
    layers = []
    for i, (mixer, ffn) in enumerate(config.layer_blocks()):
        p = f"model.layers.{i}."
        if isinstance(mixer, Attention):
            mixer_params = attention_params(ckpt, p + "self_attn.", mixer, config.d_model)
        else:  # the Mamba mixer: jamba_config builds only these two
            mixer_params = mamba_mixer_params(ckpt, p + "mamba.", mixer)
        if isinstance(ffn, MoE):
            ffn_params = {"router": ckpt.get(p + "feed_forward.router.weight", lambda w: w.T),  # [E, D] -> [D, E]
                          **stacked_experts(ckpt, p + "feed_forward.experts.", ffn.n_experts, QWEN_EXPERTS)}
        else:
            ffn_params = mlp_params(ckpt, p + "feed_forward.", ffn)
        layers.append({"mixer_norm": ckpt.get(p + "input_layernorm.weight"), "mixer": mixer_params,
                       "ffn_norm": ckpt.get(p + "pre_ff_layernorm.weight"), "ffn": ffn_params})
    return {"layers": layers, **embedding_params(config, ckpt, final_norm="model.final_layernorm.weight")}


register_converter("jamba")((jamba_config, jamba_params))
