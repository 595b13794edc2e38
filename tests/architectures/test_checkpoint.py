"""Orbax checkpoints: params and config round-trip bit for bit, restored onto one device or
straight into another mesh's shardings; `chimera convert` writes an HF folder as one."""

import jax
import numpy as np
import pytest

import chimera
from chimera.runtime.cli import main
from chimera.sharding.shardings import param_shardings
import hf_parity
from sharding_cases import random_params


def assert_bit_exact(restored, original):
    assert jax.tree.structure(restored) == jax.tree.structure(original)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(original)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(np.asarray(got).view(np.uint8), np.asarray(want).view(np.uint8))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_onto_one_device(tmp_path, dtype):
    model = chimera.build(chimera.load_config("rwkv7-tiny").replace(dtype=dtype))  # layernorm dicts, ffn state
    params = jax.tree.map(jax.numpy.asarray, random_params(model))
    chimera.save_checkpoint(tmp_path / "ckpt", model, params)
    loaded, restored = chimera.load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == model.config
    assert_bit_exact(restored, params)
    assert all(leaf.sharding.device_set == {jax.local_devices()[0]} for leaf in jax.tree.leaves(restored))


def test_sharded_params_restore_into_another_mesh(tmp_path):
    """Saved from a data x tensor layout, restored into an expert x tensor one: every array is
    read directly into its new sharding (each device holds only its slice), bit for bit."""
    model = chimera.build(chimera.load_config("mixtral-tiny"))
    params = random_params(model)
    saved_from = chimera.make_mesh(data=4, tensor=2)
    chimera.save_checkpoint(tmp_path / "ckpt", model, jax.device_put(params, param_shardings(model, saved_from)))

    mesh = chimera.make_mesh(expert=4, tensor=2)
    loaded, restored = chimera.load_checkpoint(tmp_path / "ckpt", mesh=mesh)
    assert_bit_exact(restored, params)
    for leaf, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(param_shardings(loaded, mesh))):
        assert leaf.sharding == sharding
    w_gate = restored["layers"][0]["ffn"]["w_gate"]  # [8 experts, 64, 64]
    assert {shard.data.shape for shard in w_gate.addressable_shards} == {(2, 64, 32)}
    # and an Engine takes the restored params as they are
    engine = chimera.Engine(loaded, restored, max_batch=8, max_len=32, mesh=mesh)
    assert all(a is b for a, b in zip(jax.tree.leaves(engine.params), jax.tree.leaves(restored)))


def test_refusals(tmp_path):
    model = chimera.build(chimera.load_config("llama-tiny"))
    params = random_params(model)
    chimera.save_checkpoint(tmp_path / "ckpt", model, params)
    with pytest.raises(ValueError, match="already exists"):
        chimera.save_checkpoint(tmp_path / "ckpt", model, params)
    wrong_dtype = chimera.build(model.config.replace(dtype="bfloat16"))
    with pytest.raises(ValueError, match=r"params\['embed'\] is float32\[256, 64\], the config makes it bfloat16"):
        chimera.save_checkpoint(tmp_path / "other", wrong_dtype, params)
    with pytest.raises(FileNotFoundError, match="not a chimera checkpoint"):
        chimera.load_checkpoint(tmp_path)


def test_convert_hf_folder(tmp_path):
    """`chimera convert --hf DIR --out CKPT`: the checkpoint holds from_hf's params, config and tokenizer."""
    folder = tmp_path / "hf"
    hf_parity.tiny_llama_folder(folder, ["hello"])

    assert main(["convert", "--hf", str(folder), "--out", str(tmp_path / "ckpt"), "--dtype", "bfloat16"]) == 0
    model, params = chimera.from_hf(folder, dtype="bfloat16")
    loaded, restored = chimera.load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == model.config
    assert_bit_exact(restored, params)
    assert loaded.tokenizer.encode("hello").ids == [1]
    assert main(["convert", "--hf", str(folder), "--out", str(tmp_path / "ckpt")]) == 2  # exists: refused
