"""The `rwkv` package's RWKV_x070 as a reference for RWKV-7 models: our params written in its
checkpoint format (BlinkDL's names; torch Linear weights [out, in]; shift coefficients and
w0/a0/v0/k_k/k_a as [1, 1, D])."""

import os

import numpy as np
import torch


def rwkv_state_dict(model, params) -> dict[str, torch.Tensor]:
    """A chimera RWKV-7 model's params under BlinkDL's names."""
    d = model.config.d_model
    t = lambda x: torch.tensor(np.asarray(x, np.float32))  # noqa: E731
    vec = lambda x: t(x).reshape(1, 1, -1)  # noqa: E731
    sd = {"emb.weight": t(params["embed"]), "head.weight": t(params["lm_head"]).T,
          "blocks.0.ln0.weight": t(params["embed_norm"]["weight"]), "blocks.0.ln0.bias": t(params["embed_norm"]["bias"]),
          "ln_out.weight": t(params["final_norm"]["weight"]), "ln_out.bias": t(params["final_norm"]["bias"])}
    for i, layer in enumerate(params["layers"]):
        p, att, ffn = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
        for ours, theirs in (("mixer_norm", "ln1"), ("ffn_norm", "ln2")):
            sd[p + theirs + ".weight"], sd[p + theirs + ".bias"] = t(layer[ours]["weight"]), t(layer[ours]["bias"])
        mix = layer["mixer"]
        for row, c in enumerate("rwkvag"):
            sd[att + "x_" + c] = vec(mix["shift_mix"][row])
        for ours, theirs in (("w_r", "receptance"), ("w_k", "key"), ("w_v", "value")):
            sd[att + theirs + ".weight"] = t(mix[ours]).reshape(d, d).T
        sd[att + "output.weight"] = t(mix["w_o"]).reshape(d, d).T
        for ours, theirs in (("decay", "w"), ("iclr", "a"), ("value", "v"), ("gate", "g")):
            if ours + "_down" in mix:
                sd[att + theirs + "1"], sd[att + theirs + "2"] = t(mix[ours + "_down"]), t(mix[ours + "_up"])
            if ours + "_bias" in mix:
                sd[att + theirs + "0"] = vec(mix[ours + "_bias"])
        sd[att + "k_k"], sd[att + "k_a"] = vec(mix["key_norm_scale"]), vec(mix["key_iclr_mix"])
        sd[att + "r_k"] = t(mix["bonus"])
        sd[att + "ln_x.weight"], sd[att + "ln_x.bias"] = t(mix["out_norm"]["weight"]), t(mix["out_norm"]["bias"])
        sd[ffn + "x_k"] = vec(layer["ffn"]["shift_mix"])
        sd[ffn + "key.weight"], sd[ffn + "value.weight"] = t(layer["ffn"]["w_key"]).T, t(layer["ffn"]["w_value"]).T
    return sd


def rwkv_package_model(state_dict, path):
    """RWKV_x070 (CPU, float32) holding state_dict. The package reads only `<path>.pth`
    (torch.load, weights_only), so the dict is written there first."""
    os.environ["RWKV_V7_ON"] = "1"  # read when rwkv.model is first imported
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    from rwkv.model import RWKV_x070  # noqa: PLC0415
    torch.save(state_dict, f"{path}.pth")
    return RWKV_x070(str(path), "cpu fp32")
