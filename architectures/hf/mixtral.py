"""Mixtral folders (`model_type: mixtral`): Mistral's attention (a sliding window when
`sliding_window` is set), every FFN a sparse MoE of `num_local_experts` SiLU experts, top
`num_experts_per_tok`, softmax router renormalised over the chosen experts."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from chimera.architectures.config import ModelConfig
from chimera.architectures.hf import Checkpoint, register_converter
from chimera.architectures.hf.llama import HF_ACTIVATIONS, attention_params, embedding_params
from chimera.architectures.hf.mistral import mistral_config
from chimera.moe.moe import MoE


def mixtral_config(hf: dict) -> ModelConfig:
    config = mistral_config(hf)  # attention, norms, embeddings; its dense `mlp` is replaced
    moe = {"kind": "moe", "n_experts": hf["num_local_experts"], "top_k": hf["num_experts_per_tok"],
           "d_ff": hf["intermediate_size"], "activation": HF_ACTIVATIONS[hf.get("hidden_act", "silu")],
           "router": "softmax_topk", "renormalize": True}
    return config.replace(layers=[{"mixer": "attn", "ffn": "moe"}], ffns={"moe": moe})


def stacked_experts(ckpt: Checkpoint, prefix: str, n_experts: int, names: dict[str, str]) -> dict:
    """Per-expert torch Linear weights `{prefix}{e}.{theirs}.weight` ([out, in]) stacked into our
    [E, in, out] arrays; names maps ours (w_gate, w_up, w_down) to theirs."""
    def stack(theirs):
        return jnp.asarray(np.stack([ckpt.numpy(f"{prefix}{e}.{theirs}.weight").T for e in range(n_experts)]),
                           ckpt.dtype)
    return {ours: stack(theirs) for ours, theirs in names.items()}


def moe_params(ckpt: Checkpoint, prefix: str, moe: MoE, expert_names: dict[str, str]) -> dict:
    """The router (`{prefix}gate.weight`, [E, D]) and the experts under `{prefix}experts.`."""
    return {"router": ckpt.get(prefix + "gate.weight", lambda w: w.T),
            **stacked_experts(ckpt, prefix + "experts.", moe.n_experts, expert_names)}


MIXTRAL_EXPERTS = {"w_gate": "w1", "w_up": "w3", "w_down": "w2"}


def mixtral_params(config: ModelConfig, ckpt: Checkpoint) -> dict:
    layers = []
    for i, (attn, moe) in enumerate(config.layer_blocks()):
        p = f"model.layers.{i}."
        layers.append({"mixer_norm": ckpt.get(p + "input_layernorm.weight"),
                       "mixer": attention_params(ckpt, p + "self_attn.", attn, config.d_model),
                       "ffn_norm": ckpt.get(p + "post_attention_layernorm.weight"),
                       "ffn": moe_params(ckpt, p + "block_sparse_moe.", moe, MIXTRAL_EXPERTS)})
    return {"layers": layers, **embedding_params(config, ckpt)}


register_converter("mixtral")((mixtral_config, mixtral_params))
