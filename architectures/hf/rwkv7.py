"""RWKV-7 folders in the flash-linear-attention format (`model_type: rwkv7`, RWKV7ForCausalLM).

Each layer: LayerNorm -> RWKV-7 time-mix -> LayerNorm -> channel-mix; layer 0 also normalises
the embeddings first (`pre_norm`, BlinkDL's ln0) and provides the value-residual source, so it
is `first_layers[0]` and the rest repeat one pattern. fla stores each LoRA as
Linear(D, r) -> act -> Linear(r, D, bias): `lora.0.weight` [r, D], `lora.2.weight` [D, r],
`lora.2.bias` [D] (BlinkDL's w1^T, w2^T, w0).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from chimera.architectures.config import ModelConfig
from chimera.architectures.hf import Checkpoint, register_converter
from chimera.ssm.rwkv7 import SHIFTS

LORAS = {"decay": "w_lora", "iclr": "a_lora", "value": "v_lora", "gate": "g_lora"}  # ours: fla's


def default_lora_rank(scale: float, hidden: int, head_dim: int) -> int:
    """fla's rank when config.json leaves one unset: a multiple of 32, at least 32."""
    return max(32, int(round(scale * hidden ** 0.5 * head_dim / 64 / 32) * 32))


def rwkv7_config(hf: dict) -> ModelConfig:
    d = hf["hidden_size"]
    head_dim = hf.get("head_dim") or d // hf["num_heads"]
    unsupported = {
        "hidden_act": (hf.get("hidden_act", "sqrelu") != "sqrelu", "only sqrelu (RWKV-7's channel-mix) is supported"),
        "value_dim": (any(v != d for v in np.atleast_1d(hf.get("value_dim") or d)),
                      "value_dim other than hidden_size is an fla extension, not supported"),
        "attn": (hf.get("attn") is not None, "hybrid attention layers are not supported"),
        "norm_bias": (not hf.get("norm_bias", True), "LayerNorms without bias are not supported"),
    }
    for field, (bad, why) in unsupported.items():
        if bad:
            raise ValueError(f"rwkv7 config.json: {field}={hf.get(field)!r}: {why}")
    ranks = {
        "decay_lora": hf.get("decay_low_rank_dim") or default_lora_rank(2.5, d, head_dim),
        "iclr_lora": hf.get("a_low_rank_dim") or default_lora_rank(2.5, d, head_dim),
        "gate_lora": hf.get("gate_low_rank_dim") or max(32, int(round(5 * d ** 0.5 / 32) * 32)),
    }
    value_lora = hf.get("v_low_rank_dim") or default_lora_rank(1.7, d, head_dim)
    d_ff = hf.get("intermediate_size") or 32 * -(-int(d * (hf.get("hidden_ratio") or 4)) // 32)
    norm_eps = hf.get("norm_eps", 1e-5)
    time_mix = {"kind": "rwkv7", "head_dim": head_dim, "group_norm_eps": head_dim * norm_eps, **ranks}
    return ModelConfig.from_dict({
        "name": hf.get("_name_or_path") or "rwkv7",
        "vocab_size": hf["vocab_size"],
        "d_model": d,
        "n_layers": hf["num_hidden_layers"],
        "norm": "layernorm",
        "norm_eps": norm_eps,
        "embed_norm": hf.get("norm_first", True),
        "tie_embeddings": hf.get("tie_word_embeddings", False),
        "first_layers": [{"mixer": "time_mix_first", "ffn": "channel_mix"}],
        "layers": [{"mixer": "time_mix", "ffn": "channel_mix"}],
        "mixers": {"time_mix_first": time_mix, "time_mix": {**time_mix, "value_lora": value_lora}},
        "ffns": {"channel_mix": {"kind": "rwkv7_channel_mix", "d_ff": d_ff}},
    })


def layer_norm(ckpt: Checkpoint, prefix: str) -> dict:
    return {"weight": ckpt.get(prefix + ".weight"), "bias": ckpt.get(prefix + ".bias")}


def time_mix_params(ckpt: Checkpoint, prefix: str, mixer) -> dict:
    """The RWKV7Attention under `prefix` (e.g. `model.layers.3.attn.`)."""
    d, h, n = mixer.d_model, mixer.n_heads, mixer.head_dim
    flat = lambda w: w.reshape(-1)  # noqa: E731  [1, 1, D] -> [D]
    params = {
        "shift_mix": jnp.asarray(np.stack([ckpt.numpy(prefix + "x_" + c).reshape(-1) for c in SHIFTS]),
                                 ckpt.dtype),  # [6, D]
        "w_r": ckpt.get(prefix + "r_proj.weight", lambda w: w.T.reshape(d, h, n)),
        "w_k": ckpt.get(prefix + "k_proj.weight", lambda w: w.T.reshape(d, h, n)),
        "w_v": ckpt.get(prefix + "v_proj.weight", lambda w: w.T.reshape(d, h, n)),
        "w_o": ckpt.get(prefix + "o_proj.weight", lambda w: w.T.reshape(h, n, d)),
        "key_norm_scale": ckpt.get(prefix + "k_k", flat),
        "key_iclr_mix": ckpt.get(prefix + "k_a", flat),
        "bonus": ckpt.get(prefix + "r_k", lambda w: w.reshape(h, n)),
        "out_norm": layer_norm(ckpt, prefix + "g_norm"),
    }
    for ours in mixer.lora_ranks():
        lora = f"{prefix}{LORAS[ours]}.lora."
        params[f"{ours}_down"] = ckpt.get(lora + "0.weight", lambda w: w.T)
        params[f"{ours}_up"] = ckpt.get(lora + "2.weight", lambda w: w.T)
        if ours != "gate":
            params[f"{ours}_bias"] = ckpt.get(lora + "2.bias")
    return params


def rwkv7_params(config: ModelConfig, ckpt: Checkpoint) -> dict:
    layers = []
    for i, (time_mix, channel_mix) in enumerate(config.layer_blocks()):
        p = f"model.layers.{i}."
        if time_mix.value_lora is None and p + "attn.v_lora.lora.0.weight" in ckpt:
            # Older fla versions built a value LoRA in layer 0 too; RWKV-7 never uses it there.
            for name in ("lora.0.weight", "lora.2.weight", "lora.2.bias"):
                ckpt.numpy(p + "attn.v_lora." + name)
        layers.append({
            "mixer_norm": layer_norm(ckpt, p + "attn_norm"),
            "mixer": time_mix_params(ckpt, p + "attn.", time_mix),
            "ffn_norm": layer_norm(ckpt, p + "ffn_norm"),
            "ffn": {"shift_mix": ckpt.get(p + "ffn.x_k", lambda w: w.reshape(-1)),
                    "w_key": ckpt.get(p + "ffn.key.weight", lambda w: w.T),
                    "w_value": ckpt.get(p + "ffn.value.weight", lambda w: w.T)},
        })
    params = {"embed": ckpt.get("model.embeddings.weight"), "layers": layers,
              "final_norm": layer_norm(ckpt, "model.norm")}
    if config.embed_norm:
        params["embed_norm"] = layer_norm(ckpt, "model.layers.0.pre_norm")
    if not config.tie_embeddings:
        params["lm_head"] = ckpt.get("lm_head.weight", lambda w: w.T)
    elif "lm_head.weight" in ckpt:  # a tied export may store the shared matrix twice
        ckpt.numpy("lm_head.weight")
    return params


register_converter("rwkv7")((rwkv7_config, rwkv7_params))
