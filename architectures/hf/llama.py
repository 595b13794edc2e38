"""Llama-family folders (`model_type: llama`): GQA/MQA attention, gated MLP, RMSNorm."""

from __future__ import annotations

from chimera.architectures.config import ModelConfig
from chimera.architectures.hf import Checkpoint, register_converter
from chimera.attention.attention import Attention
from chimera.moe.mlp import GatedMLP

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


def attention_params(ckpt: Checkpoint, prefix: str, attn: Attention, d_model: int) -> dict:
    """q/k/v/o projections under `prefix` (e.g. `model.layers.0.self_attn.`): torch Linear
    weights are [out, in]; ours are [in, ...] split per head."""
    h, kv, hd, d = attn.n_heads, attn.n_kv_heads, attn.head_dim, d_model
    params = {
        "wq": ckpt.get(prefix + "q_proj.weight", lambda w: w.T.reshape(d, h, hd)),
        "wk": ckpt.get(prefix + "k_proj.weight", lambda w: w.T.reshape(d, kv, hd)),
        "wv": ckpt.get(prefix + "v_proj.weight", lambda w: w.T.reshape(d, kv, hd)),
        "wo": ckpt.get(prefix + "o_proj.weight", lambda w: w.T.reshape(h, hd, d)),
    }
    if attn.qkv_bias:
        params |= {"bq": ckpt.get(prefix + "q_proj.bias", lambda b: b.reshape(h, hd)),
                   "bk": ckpt.get(prefix + "k_proj.bias", lambda b: b.reshape(kv, hd)),
                   "bv": ckpt.get(prefix + "v_proj.bias", lambda b: b.reshape(kv, hd))}
    if attn.out_bias:
        params["bo"] = ckpt.get(prefix + "o_proj.bias")
    if prefix + "rotary_emb.inv_freq" in ckpt:  # a derived buffer some old exports carry
        ckpt.numpy(prefix + "rotary_emb.inv_freq")
    return params


def mlp_params(ckpt: Checkpoint, prefix: str, mlp: GatedMLP) -> dict:
    """gate/up/down projections under `prefix` (e.g. `model.layers.0.mlp.`)."""
    names = (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj"))
    params = {f"w_{ours}": ckpt.get(f"{prefix}{theirs}.weight", lambda w: w.T) for ours, theirs in names}
    if mlp.bias:
        params |= {f"b_{ours}": ckpt.get(f"{prefix}{theirs}.bias") for ours, theirs in names}
    return params


def embedding_params(config: ModelConfig, ckpt: Checkpoint, embed: str = "model.embed_tokens.weight",
                     final_norm: str = "model.norm.weight") -> dict:
    """embed, final_norm and (untied) lm_head, from the tensors of those names."""
    params = {"embed": ckpt.get(embed), "final_norm": ckpt.get(final_norm)}
    if config.tie_embeddings:
        if "lm_head.weight" in ckpt:  # some tied exports store the shared matrix twice
            ckpt.numpy("lm_head.weight")
    else:
        params["lm_head"] = ckpt.get("lm_head.weight", lambda w: w.T)
    return params


def llama_params(config: ModelConfig, ckpt: Checkpoint) -> dict:
    layers = []
    for i, (attn, mlp) in enumerate(config.layer_blocks()):
        p = f"model.layers.{i}."
        layers.append({"mixer_norm": ckpt.get(p + "input_layernorm.weight"),
                       "mixer": attention_params(ckpt, p + "self_attn.", attn, config.d_model),
                       "ffn_norm": ckpt.get(p + "post_attention_layernorm.weight"),
                       "ffn": mlp_params(ckpt, p + "mlp.", mlp)})
    return {"layers": layers, **embedding_params(config, ckpt)}


register_converter("llama")((llama_config, llama_params))


def to_hf_config(config: ModelConfig) -> dict:
    """The transformers `LlamaConfig` fields for a single-attention-kind, single-MLP config
    (the inverse of `llama_config`; used to build reference models for benchmarks)."""
    if len(config.mixer_blocks) != 1 or len(config.ffn_blocks) != 1 or config.first_layers:
        raise ValueError(f"{config.name}: only a uniform attention + mlp stack has a Llama equivalent")
    (attn,), (mlp,) = config.mixer_blocks.values(), config.ffn_blocks.values()
    # Exact types: a subclass (a window, sinks, ...) attends differently.
    plain_blocks = (type(attn) is Attention and type(mlp) is GatedMLP and attn.use_rope and not attn.qk_norm
                    and attn.scale == attn.head_dim ** -0.5 and attn.softcap is None and not attn.learned_sinks
                    and attn.qkv_bias == attn.out_bias and mlp.activation == "silu")
    plain_model = (config.norm == "rmsnorm" and not (config.post_norms or config.embed_norm or config.scale_embeddings)
                   and config.final_logit_softcap is None)
    if not (plain_blocks and plain_model):
        raise ValueError(f"{config.name}: only RMSNorm, RoPE attention (all or no biases, no q/k norm, soft-cap, "
                         f"sinks or custom scale) + SiLU mlp layers have a Llama equivalent")
    rope = {"rope_type": "default", "rope_theta": attn.rope_theta}
    if attn.rope_scaling is not None:
        rope |= attn.rope_scaling.parameters()
        rope["rope_type"] = attn.rope_scaling.type
    return {
        "vocab_size": config.vocab_size, "hidden_size": config.d_model, "num_hidden_layers": config.n_layers,
        "num_attention_heads": attn.n_heads, "num_key_value_heads": attn.n_kv_heads, "head_dim": attn.head_dim,
        "intermediate_size": mlp.d_ff, "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings, "attention_bias": attn.qkv_bias,
        "mlp_bias": mlp.bias, "hidden_act": "silu", "rope_parameters": rope,
        "max_position_embeddings": 131072,
    }
