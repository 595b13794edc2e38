"""DeepSeek-V3 folders (`model_type: deepseek_v3`): Multi-head Latent Attention (`mla`),
RMSNorm, `first_k_dense_replace` dense gated-MLP layers (`first_layers`), then MoE layers:
sigmoid router with a selection-only bias, group-limited top-k, routed scaling, shared experts."""

from __future__ import annotations

import jax.numpy as jnp

from chimera.architectures.config import ModelConfig
from chimera.architectures.hf import Checkpoint, register_converter
from chimera.architectures.hf.llama import HF_ACTIVATIONS, embedding_params, mlp_params, rope_fields
from chimera.architectures.hf.mixtral import moe_params
from chimera.architectures.hf.qwen_moe import QWEN_EXPERTS
from chimera.attention.mla import MLA
from chimera.moe.mlp import GatedMLP

# transformers' DeepseekV3Config defaults, for config.json files that leave a field out.
DEFAULTS = {"q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
            "v_head_dim": 128, "first_k_dense_replace": 3, "rope_interleave": True, "rms_norm_eps": 1e-6,
            "hidden_act": "silu", "max_position_embeddings": 4096}
# transformers builds q_a_layernorm and kv_a_layernorm with DeepseekV3RMSNorm's default
# epsilon, not `rms_norm_eps`.
LATENT_NORM_EPS = 1e-6


def get(hf: dict, key: str):
    return hf[key] if key in hf else DEFAULTS[key]


def deepseek_rope_fields(hf: dict) -> dict:
    """rope_theta and rope_scaling; yarn as transformers reads it, the other types as Llama."""
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    if rope.get("rope_type", rope.get("type")) != "yarn":
        return rope_fields(hf)
    original = rope.get("original_max_position_embeddings") or get(hf, "max_position_embeddings")
    scaling = {"type": "yarn",
               # DeepSeek-V3 may leave `factor` out: then it is the context's growth
               "factor": rope.get("factor") or get(hf, "max_position_embeddings") / original,
               "original_max_position_embeddings": original,
               "beta_fast": rope.get("beta_fast") or 32.0, "beta_slow": rope.get("beta_slow") or 1.0,
               "truncate": rope.get("truncate", True)}
    for key in ("mscale", "mscale_all_dim"):  # transformers treats 0 as absent
        if rope.get(key):
            scaling[key] = rope[key]
    if rope.get("attention_factor") is not None:
        scaling["attention_factor"] = rope["attention_factor"]
    return {"rope_theta": rope.get("rope_theta", hf.get("rope_theta", 10000.0)), "rope_scaling": scaling}


def deepseek_v3_config(hf: dict) -> ModelConfig:
    n_layers = hf["num_hidden_layers"]
    dense = min(get(hf, "first_k_dense_replace"), n_layers)
    if hf.get("attention_bias"):
        raise ValueError("deepseek_v3: attention_bias is not supported")
    activation = get(hf, "hidden_act")
    if activation not in HF_ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {activation!r}")
    return ModelConfig.from_dict({
        "name": hf.get("_name_or_path") or "deepseek_v3",
        "vocab_size": hf["vocab_size"],
        "d_model": hf["hidden_size"],
        "n_layers": n_layers,
        "norm_eps": get(hf, "rms_norm_eps"),
        "tie_embeddings": hf.get("tie_word_embeddings", False),
        "first_layers": [{"mixer": "attn", "ffn": "mlp"}] * dense if dense < n_layers else [],
        "layers": [{"mixer": "attn", "ffn": "moe" if dense < n_layers else "mlp"}],
        "mixers": {"attn": {
            "kind": "mla",
            "n_heads": hf["num_attention_heads"],
            **{key: get(hf, key) for key in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                                             "qk_rope_head_dim", "v_head_dim", "rope_interleave")},
            "norm_eps": LATENT_NORM_EPS,
            **deepseek_rope_fields(hf),
        }},
        "ffns": {"mlp": {"kind": "mlp", "d_ff": hf["intermediate_size"], "activation": HF_ACTIVATIONS[activation]},
                 "moe": moe_config(hf, HF_ACTIVATIONS[activation])},
    })


def moe_config(hf: dict, activation: str) -> dict:
    n_shared = hf.get("n_shared_experts") or 0
    return {"kind": "moe", "n_experts": hf.get("n_routed_experts", 256), "top_k": hf.get("num_experts_per_tok", 8),
            "d_ff": hf.get("moe_intermediate_size", 2048), "activation": activation, "router": "sigmoid_group",
            "renormalize": hf.get("norm_topk_prob", True), "n_group": hf.get("n_group") or 1,
            "topk_group": hf.get("topk_group") or 1, "routed_scaling_factor": hf.get("routed_scaling_factor", 2.5),
            "n_shared_experts": n_shared}


def ffn_params(ckpt: Checkpoint, prefix: str, ffn) -> dict:
    """A dense MLP, or an MoE: router `gate.weight` [E, D] and its `e_score_correction_bias`,
    per-expert `experts.{e}.*_proj`, shared experts as one MLP."""
    if isinstance(ffn, GatedMLP):
        return mlp_params(ckpt, prefix, ffn)
    params = moe_params(ckpt, prefix, ffn, QWEN_EXPERTS)
    params["selection_bias"] = ckpt.get(prefix + "gate.e_score_correction_bias")
    if ffn.n_shared_experts:
        params["shared"] = mlp_params(ckpt, prefix + "shared_experts.", ffn.shared_mlp)
    return params


def mla_params(ckpt: Checkpoint, prefix: str, mla: MLA, d_model: int) -> dict:
    """Projections under `prefix` (e.g. `model.layers.0.self_attn.`). torch Linear weights are
    [out, in]; ours are [in, ...], split per head, and the fused projections are split."""
    h, r, dn = mla.n_heads, mla.kv_lora_rank, mla.qk_nope_head_dim
    qk, dv = mla.qk_head_dim, mla.v_head_dim
    if mla.q_lora_rank is None:
        params = {"wq": ckpt.get(prefix + "q_proj.weight", lambda w: w.T.reshape(d_model, h, qk))}
    else:
        params = {"wq_a": ckpt.get(prefix + "q_a_proj.weight", lambda w: w.T),
                  "q_norm": ckpt.get(prefix + "q_a_layernorm.weight"),
                  "wq_b": ckpt.get(prefix + "q_b_proj.weight", lambda w: w.T.reshape(mla.q_lora_rank, h, qk))}
    kv_a = ckpt.numpy(prefix + "kv_a_proj_with_mqa.weight").T  # [D, R + dr]: the latent, then the rope key
    kv_b = ckpt.numpy(prefix + "kv_b_proj.weight").T.reshape(r, h, dn + dv)  # per head: key (nope), then value
    as_param = lambda a: jnp.asarray(a, ckpt.dtype)  # noqa: E731
    return params | {
        "wkv_a": as_param(kv_a[:, :r]), "wk_rope": as_param(kv_a[:, r:]),
        "kv_norm": ckpt.get(prefix + "kv_a_layernorm.weight"),
        "wk_b": as_param(kv_b[..., :dn]), "wv_b": as_param(kv_b[..., dn:]),
        "wo": ckpt.get(prefix + "o_proj.weight", lambda w: w.T.reshape(h, dv, d_model)),
    }


def layer_of(name: str) -> int:
    """`model.layers.7.mlp...` -> 7; -1 outside the layers."""
    return int(name.split(".")[2]) if name.startswith("model.layers.") else -1


def deepseek_v3_params(config: ModelConfig, ckpt: Checkpoint) -> dict:
    layers = []
    for i, (mla, mlp) in enumerate(config.layer_blocks()):
        p = f"model.layers.{i}."
        layers.append({"mixer_norm": ckpt.get(p + "input_layernorm.weight"),
                       "mixer": mla_params(ckpt, p + "self_attn.", mla, config.d_model),
                       "ffn_norm": ckpt.get(p + "post_attention_layernorm.weight"),
                       "ffn": ffn_params(ckpt, p + "mlp.", mlp)})
    # Released checkpoints append multi-token-prediction modules as extra layers
    # (model.layers.{n_layers}..., each with an `eh_proj`); plain decoding does not use them,
    # as in transformers. Any other extra layer stays an unused-tensor error.
    mtp = {layer_of(name) for name in ckpt.files if name.endswith(".eh_proj.weight")}
    for name in ckpt.files:
        if layer_of(name) >= config.n_layers and layer_of(name) in mtp:
            ckpt.used.add(name)  # skipped unread
    return {"layers": layers, **embedding_params(config, ckpt)}


register_converter("deepseek_v3")((deepseek_v3_config, deepseek_v3_params))
