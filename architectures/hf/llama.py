"""Llama-family folders (`model_type: llama`): GQA/MQA attention, gated MLP, RMSNorm."""

from __future__ import annotations

import dataclasses

from chimera.architectures.config import ModelConfig
from chimera.architectures.hf import Checkpoint, register_converter
from chimera.attention.attention import Attention

HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_new": "gelu_tanh"}


def rope_fields(hf: dict) -> dict:
    """rope_theta and rope_scaling from either transformers 5 (`rope_parameters`) or 4 (`rope_scaling`)."""
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    kind = rope.pop("rope_type", rope.pop("type", "default"))
    if kind == "default":
        return {"rope_theta": theta}
    if kind == "linear":
        return {"rope_theta": theta, "rope_scaling": {"type": "linear", "factor": rope["factor"]}}
    if kind == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        return {"rope_theta": theta, "rope_scaling": {"type": "llama3", **{k: rope[k] for k in keys}}}
    raise ValueError(f"unsupported rope type {kind!r} (supported: default, linear, llama3)")


def llama_config(hf: dict) -> ModelConfig:
    n_heads = hf["num_attention_heads"]
    activation = hf.get("hidden_act", "silu")
    if activation not in HF_ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {activation!r}")
    attention_bias = hf.get("attention_bias", False)
    return ModelConfig.from_dict({
        "name": hf.get("_name_or_path") or "llama",
        "vocab_size": hf["vocab_size"],
        "d_model": hf["hidden_size"],
        "n_layers": hf["num_hidden_layers"],
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "tie_embeddings": hf.get("tie_word_embeddings", False),
        "layers": [{"mixer": "attn", "ffn": "mlp"}],
        "mixers": {"attn": {
            "kind": "attention",
            "n_heads": n_heads,
            "n_kv_heads": hf.get("num_key_value_heads") or n_heads,
            "head_dim": hf.get("head_dim") or hf["hidden_size"] // n_heads,
            "qkv_bias": attention_bias,
            "out_bias": attention_bias,
            **rope_fields(hf),
        }},
        "ffns": {"mlp": {"kind": "mlp", "d_ff": hf["intermediate_size"],
                         "activation": HF_ACTIVATIONS[activation], "bias": hf.get("mlp_bias", False)}},
    })


def llama_params(config: ModelConfig, ckpt: Checkpoint) -> dict:
    """torch Linear weights are [out, in]; ours are [in, ...] split per head."""
    attn = config.mixer_blocks["attn"]
    h, kv, hd, d = attn.n_heads, attn.n_kv_heads, attn.head_dim, config.d_model
    layers = []
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        mixer = {
            "wq": ckpt.get(p + "self_attn.q_proj.weight", lambda w: w.T.reshape(d, h, hd)),
            "wk": ckpt.get(p + "self_attn.k_proj.weight", lambda w: w.T.reshape(d, kv, hd)),
            "wv": ckpt.get(p + "self_attn.v_proj.weight", lambda w: w.T.reshape(d, kv, hd)),
            "wo": ckpt.get(p + "self_attn.o_proj.weight", lambda w: w.T.reshape(h, hd, d)),
        }
        if attn.qkv_bias:
            mixer |= {"bq": ckpt.get(p + "self_attn.q_proj.bias", lambda b: b.reshape(h, hd)),
                      "bk": ckpt.get(p + "self_attn.k_proj.bias", lambda b: b.reshape(kv, hd)),
                      "bv": ckpt.get(p + "self_attn.v_proj.bias", lambda b: b.reshape(kv, hd))}
        if attn.out_bias:
            mixer["bo"] = ckpt.get(p + "self_attn.o_proj.bias")
        ffn = {name: ckpt.get(f"{p}mlp.{hf_name}.weight", lambda w: w.T)
               for name, hf_name in (("w_gate", "gate_proj"), ("w_up", "up_proj"), ("w_down", "down_proj"))}
        if config.ffn_blocks["mlp"].bias:
            ffn |= {name: ckpt.get(f"{p}mlp.{hf_name}.bias")
                    for name, hf_name in (("b_gate", "gate_proj"), ("b_up", "up_proj"), ("b_down", "down_proj"))}
        if p + "self_attn.rotary_emb.inv_freq" in ckpt:  # a derived buffer some old exports carry
            ckpt.numpy(p + "self_attn.rotary_emb.inv_freq")
        layers.append({"mixer_norm": ckpt.get(p + "input_layernorm.weight"), "mixer": mixer,
                       "ffn_norm": ckpt.get(p + "post_attention_layernorm.weight"), "ffn": ffn})
    params = {"embed": ckpt.get("model.embed_tokens.weight"), "layers": layers,
              "final_norm": ckpt.get("model.norm.weight")}
    if config.tie_embeddings:
        if "lm_head.weight" in ckpt:  # some tied exports store the shared matrix twice
            ckpt.numpy("lm_head.weight")
    else:
        params["lm_head"] = ckpt.get("lm_head.weight", lambda w: w.T)
    return params


register_converter("llama")((llama_config, llama_params))


def to_hf_config(config: ModelConfig) -> dict:
    """The transformers `LlamaConfig` fields for a single-attention-kind, single-MLP config
    (the inverse of `llama_config`; used to build reference models for benchmarks)."""
    if len(config.mixer_blocks) != 1 or len(config.ffn_blocks) != 1:
        raise ValueError(f"{config.name}: only a uniform attention + mlp stack has a Llama equivalent")
    (attn,), (mlp,) = config.mixer_blocks.values(), config.ffn_blocks.values()
    if not isinstance(attn, Attention) or attn.qkv_bias != attn.out_bias or mlp.activation != "silu":
        raise ValueError(f"{config.name}: only attention (all or no biases) + SiLU mlp layers have a "
                         f"Llama equivalent")
    rope = {"rope_type": "default", "rope_theta": attn.rope_theta}
    if attn.rope_scaling is not None:
        rope |= {k: v for k, v in dataclasses.asdict(attn.rope_scaling).items() if k != "type"}
        rope["rope_type"] = attn.rope_scaling.type
    return {
        "vocab_size": config.vocab_size, "hidden_size": config.d_model, "num_hidden_layers": config.n_layers,
        "num_attention_heads": attn.n_heads, "num_key_value_heads": attn.n_kv_heads, "head_dim": attn.head_dim,
        "intermediate_size": mlp.d_ff, "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings, "attention_bias": attn.qkv_bias,
        "mlp_bias": mlp.bias, "hidden_act": "silu", "rope_parameters": rope,
        "max_position_embeddings": 131072,
    }
