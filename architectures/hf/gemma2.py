"""Gemma-2 folders (`model_type: gemma2`): alternating sliding-window and global attention,
(1 + w) RMSNorms before and after each block, sqrt(d_model)-scaled embeddings, soft-capped
attention and final logits, GeGLU MLP, tied embeddings."""

from __future__ import annotations

from chimera.architectures.config import ModelConfig
from chimera.architectures.hf import Checkpoint, register_converter
from chimera.architectures.hf.llama import HF_ACTIVATIONS, attention_params, embedding_params, mlp_params, rope_fields

LAYER_TYPES = {"sliding_attention": "local", "full_attention": "global"}


def shortest_period(items: list) -> list:
    """The shortest prefix that repeats to `items` (a config layer pattern may end partially)."""
    for period in range(1, len(items) + 1):
        if all(items[i] == items[i % period] for i in range(len(items))):
            return items[:period]
    return items


def gemma2_config(hf: dict) -> ModelConfig:
    n_layers = hf["num_hidden_layers"]
    layer_types = hf.get("layer_types") or [
        "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    unknown = set(layer_types) - set(LAYER_TYPES)
    if unknown:
        raise ValueError(f"unsupported Gemma-2 layer types {sorted(unknown)}")
    activation = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    attention = {
        "kind": "attention",
        "n_heads": hf["num_attention_heads"],
        "n_kv_heads": hf["num_key_value_heads"],
        "head_dim": hf["head_dim"],
        "scale": hf["query_pre_attn_scalar"] ** -0.5,
        "softcap": hf.get("attn_logit_softcapping"),
        "qkv_bias": hf.get("attention_bias", False),
        "out_bias": hf.get("attention_bias", False),
        **rope_fields(hf),
    }
    return ModelConfig.from_dict({
        "name": hf.get("_name_or_path") or "gemma2",
        "vocab_size": hf["vocab_size"],
        "d_model": hf["hidden_size"],
        "n_layers": n_layers,
        "norm": "rmsnorm_plus_one",
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "post_norms": True,
        "scale_embeddings": True,
        "final_logit_softcap": hf.get("final_logit_softcapping"),
        "tie_embeddings": hf.get("tie_word_embeddings", True),
        "layers": [{"mixer": LAYER_TYPES[t], "ffn": "mlp"} for t in shortest_period(layer_types)],
        "mixers": {"local": {**attention, "kind": "sliding_window", "window": hf["sliding_window"]},
                   "global": attention},
        "ffns": {"mlp": {"kind": "mlp", "d_ff": hf["intermediate_size"],
                         "activation": HF_ACTIVATIONS[activation]}},
    })


def gemma2_params(config: ModelConfig, ckpt: Checkpoint) -> dict:
    layers = []
    for i, (attn, mlp) in enumerate(config.layer_blocks()):
        p = f"model.layers.{i}."
        layers.append({"mixer_norm": ckpt.get(p + "input_layernorm.weight"),
                       "mixer": attention_params(ckpt, p + "self_attn.", attn, config.d_model),
                       "mixer_post_norm": ckpt.get(p + "post_attention_layernorm.weight"),
                       "ffn_norm": ckpt.get(p + "pre_feedforward_layernorm.weight"),
                       "ffn": mlp_params(ckpt, p + "mlp.", mlp),
                       "ffn_post_norm": ckpt.get(p + "post_feedforward_layernorm.weight")})
    return {"layers": layers, **embedding_params(config, ckpt)}


register_converter("gemma2")((gemma2_config, gemma2_params))
