"""Qwen2-MoE (`model_type: qwen2_moe`) and Qwen3-MoE (`qwen3_moe`) folders.

Both: GQA attention, softmax top-k routing (renormalised only with `norm_topk_prob`), and
layer i sparse unless it is in `mlp_only_layers` or (i + 1) is not a multiple of
`decoder_sparse_step` (then a dense MLP of `intermediate_size`). Qwen2-MoE adds q/k/v biases
and a shared expert of `shared_expert_intermediate_size` scaled by sigmoid(x . gate).
Qwen3-MoE has no shared expert; its attention is dense Qwen3's (qwen3.py): q and k RMS-normalised
per head before RoPE, biases on all four projections when `attention_bias`.
"""

from __future__ import annotations

from chimera.architectures.config import ModelConfig
from chimera.architectures.hf import Checkpoint, register_converter
from chimera.architectures.hf.llama import HF_ACTIVATIONS, attention_params, embedding_params, llama_config, mlp_params
from chimera.architectures.hf.mixtral import moe_params
from chimera.architectures.hf.qwen3 import qk_norm_params, with_qk_norm
from chimera.moe.moe import MoE

QWEN_EXPERTS = {"w_gate": "gate_proj", "w_up": "up_proj", "w_down": "down_proj"}


def sparse_layers(hf: dict) -> list[bool]:
    """Whether each layer's FFN is the sparse MoE block (transformers' rule)."""
    dense = set(hf.get("mlp_only_layers") or [])
    step = hf.get("decoder_sparse_step", 1)
    n_experts = hf.get("num_experts", hf.get("num_local_experts", 0))
    return [i not in dense and n_experts > 0 and (i + 1) % step == 0 for i in range(hf["num_hidden_layers"])]


def shortest_pattern(layers: list) -> list:
    """The shortest prefix that, repeated, gives `layers` (all of it if none shorter does)."""
    for period in range(1, len(layers)):
        if all(layer == layers[i % period] for i, layer in enumerate(layers)):
            return layers[:period]
    return layers


def qwen_moe_config(hf: dict, qkv_bias: bool, shared_expert: bool) -> ModelConfig:
    if hf.get("use_sliding_window"):
        raise ValueError(f"{hf.get('model_type')}: use_sliding_window is not supported")
    config = llama_config(hf)  # attention, norms, embeddings and the dense `mlp`
    attn = {**config.mixers["attn"], "qkv_bias": qkv_bias, "out_bias": False}
    moe = {"kind": "moe", "n_experts": hf.get("num_experts", hf.get("num_local_experts")),
           "top_k": hf["num_experts_per_tok"], "d_ff": hf["moe_intermediate_size"],
           "activation": HF_ACTIVATIONS[hf.get("hidden_act", "silu")], "router": "softmax_topk",
           "renormalize": bool(hf.get("norm_topk_prob", False))}
    if shared_expert and hf.get("shared_expert_intermediate_size"):
        moe |= {"n_shared_experts": 1, "shared_d_ff": hf["shared_expert_intermediate_size"],
                "shared_expert_gate": True}
    sparse = sparse_layers(hf)
    ffns = {"moe": moe} if any(sparse) else {}
    if not all(sparse):
        ffns["mlp"] = config.ffns["mlp"]
    layers = [{"mixer": "attn", "ffn": "moe" if s else "mlp"} for s in sparse]
    return config.replace(mixers={"attn": attn}, ffns=ffns, layers=shortest_pattern(layers))


def qwen2_moe_config(hf: dict) -> ModelConfig:
    return qwen_moe_config(hf, qkv_bias=hf.get("qkv_bias", True), shared_expert=True)


def qwen3_moe_config(hf: dict) -> ModelConfig:
    bias = hf.get("attention_bias", False)
    config = qwen_moe_config(hf, qkv_bias=bias, shared_expert=False)
    return config.replace(mixers={"attn": with_qk_norm({**config.mixers["attn"], "out_bias": bias}, hf)})


def qwen_moe_params(config: ModelConfig, ckpt: Checkpoint) -> dict:
    layers = []
    for i, (attn, ffn) in enumerate(config.layer_blocks()):
        p = f"model.layers.{i}."
        if isinstance(ffn, MoE):
            ffn_params = moe_params(ckpt, p + "mlp.", ffn, QWEN_EXPERTS)
            if ffn.n_shared_experts:
                ffn_params["shared"] = mlp_params(ckpt, p + "mlp.shared_expert.", ffn.shared_mlp)
                ffn_params["shared_gate"] = ckpt.get(p + "mlp.shared_expert_gate.weight", lambda w: w[0])  # [1, D]
        else:
            ffn_params = mlp_params(ckpt, p + "mlp.", ffn)
        layers.append({"mixer_norm": ckpt.get(p + "input_layernorm.weight"),
                       "mixer": attention_params(ckpt, p + "self_attn.", attn, config.d_model)
                       | qk_norm_params(ckpt, p + "self_attn.", attn),
                       "ffn_norm": ckpt.get(p + "post_attention_layernorm.weight"),
                       "ffn": ffn_params})
    return {"layers": layers, **embedding_params(config, ckpt)}


register_converter("qwen2_moe")((qwen2_moe_config, qwen_moe_params))
register_converter("qwen3_moe")((qwen3_moe_config, qwen_moe_params))
