"""chimera.from_hf on RWKV-7 folders in the flash-linear-attention format (`model_type: rwkv7`).

fla's own model needs Triton GPU kernels, so the reference is the `rwkv` package's RWKV_x070
(CPU): random weights in BlinkDL's format are renamed to fla's by the rules of fla's
conversion script (ln0 -> pre_norm, ln1 -> attn_norm, ln2 -> ffn_norm, att -> attn,
receptance/key/value/output -> r/k/v/o_proj, ln_x -> g_norm, x1/x2/x0 -> x_lora.lora.0.weight^T /
lora.2.weight^T / lora.2.bias, k_k/k_a/ffn.x_k flattened), saved as safetensors with a
config.json, imported, and compared with the package on the original weights."""

import json

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import chimera
from hf_parity import rel_err
from rwkv_reference import rwkv_package_model, rwkv_state_dict

FLA_PARTS = {"att": "attn", "ffn": "ffn", "ln0": "pre_norm", "ln1": "attn_norm", "ln2": "ffn_norm"}
FLA_PROJECTIONS = {"receptance": "r_proj", "key": "k_proj", "value": "v_proj", "output": "o_proj", "ln_x": "g_norm"}
FLA_TOP = {"emb.weight": "model.embeddings.weight", "ln_out.weight": "model.norm.weight",
           "ln_out.bias": "model.norm.bias", "head.weight": "lm_head.weight"}


def to_fla(name: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
    """One BlinkDL tensor under fla's name and layout."""
    if name in FLA_TOP:
        return FLA_TOP[name], tensor
    _, layer, part, *rest = name.split(".")
    part = FLA_PARTS[part]
    leaf = ".".join(rest)
    if part == "attn" and len(leaf) == 2 and leaf[0] in "wavg" and leaf[1] in "012":
        fla_leaf = {"0": "lora.2.bias", "1": "lora.0.weight", "2": "lora.2.weight"}[leaf[1]]
        leaf = f"{leaf[0]}_lora.{fla_leaf}"
        tensor = tensor.reshape(-1) if fla_leaf.endswith("bias") else tensor.T
    elif part == "attn" and leaf.split(".")[0] in FLA_PROJECTIONS:
        head, _, tail = leaf.partition(".")
        leaf = f"{FLA_PROJECTIONS[head]}.{tail}"
    elif leaf in ("k_k", "k_a") or (part == "ffn" and leaf == "x_k"):
        tensor = tensor.reshape(-1)
    return f"model.layers.{layer}.{part}.{leaf}", tensor


def write_fla_folder(folder, blink: dict, config: dict):
    fla = dict(to_fla(name, tensor) for name, tensor in blink.items())
    save_file({name: t.contiguous() for name, t in fla.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return fla


def fla_config(model, **overrides):
    cfg = model.config
    time_mix, channel_mix = cfg.layer_blocks()[1]
    return {"model_type": "rwkv7", "architectures": ["RWKV7ForCausalLM"], "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers, "head_dim": time_mix.head_dim,
            "decay_low_rank_dim": time_mix.decay_lora, "a_low_rank_dim": time_mix.iclr_lora,
            "gate_low_rank_dim": time_mix.gate_lora, "v_low_rank_dim": time_mix.value_lora,
            "intermediate_size": channel_mix.d_ff, "hidden_act": "sqrelu", "norm_first": True, "norm_bias": True,
            "norm_eps": 1e-5, "tie_word_embeddings": False, "attn": None, "value_dim": None,
            "fuse_norm": True, **overrides}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A random 3-layer RWKV-7 in both formats: (the rwkv package's model, our import)."""
    source = chimera.build(chimera.load_config("rwkv7-tiny"))
    params = source.init(jax.random.key(5))
    blink = rwkv_state_dict(source, params)
    folder = tmp_path_factory.mktemp("rwkv7-fla")
    # head_dim 16: fla's group-norm eps is head_dim * norm_eps = 16e-5, where the package
    # hard-codes 64e-5 (right for its usual head size 64): the import must follow fla's config.
    write_fla_folder(folder, blink, fla_config(source))
    reference = rwkv_package_model(blink, folder / "blink")
    model, ours = chimera.from_hf(folder)
    return reference, model, ours


def test_config_is_imported(imported):
    _, model, params = imported
    cfg = model.config
    first, rest = cfg.layer_blocks()[0][0], cfg.layer_blocks()[1][0]
    assert cfg.norm == "layernorm" and cfg.embed_norm and not cfg.tie_embeddings
    assert first.value_lora is None and rest.value_lora == 8
    assert first.group_norm_eps == pytest.approx(16e-5)
    assert jax.tree.structure(params) == jax.tree.structure(model.init(jax.random.key(0)))


def test_logits_match_the_rwkv_package(imported):
    reference, model, params = imported
    # The package's group norm uses eps 64e-5; fla (and so the import) head_dim * 1e-5. Give the
    # imported model the package's eps to compare the weights' mapping exactly.
    cfg = model.config.to_dict()
    for mixer in cfg["mixers"].values():
        mixer["group_norm_eps"] = 64e-5
    model = chimera.build(chimera.ModelConfig.from_dict(cfg))
    prompt = np.random.default_rng(1).integers(0, 256, 19)
    with torch.no_grad():
        want, state = reference.forward(list(map(int, prompt)), None, full_output=True)
    assert rel_err(model.forward(params, prompt[None])[0], want) < 1e-4
    logits, ours = model.extend(params, model.init_state(1, 32), prompt[None])
    for token in (3, 141, 250):
        with torch.no_grad():
            want, state = reference.forward([token], state)
        logits, ours = model.extend(params, ours, np.array([[token]]))
        assert rel_err(logits[0], want) < 1e-4
        assert int(np.argmax(logits[0])) == int(torch.argmax(want))


def test_layer0_value_lora_of_older_fla_versions_is_accepted(tmp_path):
    source = chimera.build(chimera.load_config("rwkv7-tiny"))
    blink = rwkv_state_dict(source, source.init(jax.random.key(0)))
    rank, d = 8, 64
    blink |= {"blocks.0.att.v0": torch.zeros(1, 1, d), "blocks.0.att.v1": torch.zeros(d, rank),
              "blocks.0.att.v2": torch.zeros(rank, d)}
    write_fla_folder(tmp_path, blink, fla_config(source))
    model, params = chimera.from_hf(tmp_path)
    assert "value_down" not in params["layers"][0]["mixer"]


@pytest.mark.parametrize("override, message", [
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"value_dim": 128}, "value_dim"),
    ({"attn": {"layers": [1], "num_heads": 4}}, "attn"),
    ({"norm_bias": False}, "norm_bias"),
])
def test_unsupported_configs_are_refused(tmp_path, override, message):
    source = chimera.build(chimera.load_config("rwkv7-tiny"))
    write_fla_folder(tmp_path, rwkv_state_dict(source, source.init(jax.random.key(0))), fla_config(source, **override))
    with pytest.raises(ValueError, match=message):
        chimera.from_hf(tmp_path)
