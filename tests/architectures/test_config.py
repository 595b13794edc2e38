"""The config schema: presets load, configs round-trip, and every bad field is named."""

import copy

import pytest

import chimera
from chimera.architectures.config import PRESETS_DIR

PRESETS = chimera.list_presets()


def test_presets_are_bundled():
    """The YAML files in configs/ are the presets, and the tiny Llama is among them."""
    assert PRESETS == sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    assert "llama-tiny" in PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_load_preset_by_name(name):
    cfg = chimera.load_config(name)
    assert isinstance(cfg, chimera.ModelConfig)
    assert cfg.name == name
    assert len(cfg.layer_blocks()) == cfg.n_layers


@pytest.mark.parametrize("name", PRESETS)
def test_load_by_yaml_path(name, tmp_path):
    """A path (str or Path, outside configs/) loads the same config as the preset name."""
    path = tmp_path / "model.yaml"
    path.write_text((PRESETS_DIR / f"{name}.yaml").read_text())
    assert chimera.load_config(path) == chimera.load_config(name)
    assert chimera.load_config(str(path)) == chimera.load_config(name)


@pytest.mark.parametrize("name", PRESETS)
def test_dict_round_trip(name):
    cfg = chimera.load_config(name)
    assert chimera.ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", PRESETS)
def test_yaml_round_trip(name, tmp_path):
    cfg = chimera.load_config(name)
    cfg.to_yaml(tmp_path / "out.yaml")
    assert chimera.ModelConfig.from_yaml(tmp_path / "out.yaml") == cfg


# A small valid config that each error case below breaks in exactly one place.
BASE = {
    "name": "test",
    "vocab_size": 32,
    "d_model": 16,
    "n_layers": 2,
    "layers": [{"mixer": "attn", "ffn": "mlp"}],
    "mixers": {"attn": {"kind": "attention", "n_heads": 4, "n_kv_heads": 2, "head_dim": 8}},
    "ffns": {"mlp": {"kind": "mlp", "d_ff": 32}},
}


def base_with(**changes):
    d = copy.deepcopy(BASE)
    d.update(changes)
    return d


def attn_with(**changes):
    d = copy.deepcopy(BASE)
    d["mixers"]["attn"].update(changes)
    return d


def test_base_is_valid():
    """Guards the error cases: each must fail because of its one change, not because BASE is bad."""
    chimera.ModelConfig.from_dict(BASE)


def test_layer_pattern_repeats_with_partial_last_repetition():
    """A pattern of 2 over 5 layers: a b a b a, each layer sharing its named block objects."""
    d = base_with(n_layers=5, layers=[{"mixer": "a", "ffn": "mlp"}, {"mixer": "b"}],
                  mixers={"a": {"kind": "attention", "n_heads": 4},
                          "b": {"kind": "attention", "n_heads": 2}})
    cfg = chimera.ModelConfig.from_dict(d)
    a, b, mlp = cfg.mixer_blocks["a"], cfg.mixer_blocks["b"], cfg.ffn_blocks["mlp"]
    assert a.n_heads == 4 and b.n_heads == 2
    blocks = cfg.layer_blocks()
    assert len(blocks) == 5
    expected = [(a, mlp), (b, None), (a, mlp), (b, None), (a, mlp)]
    for (mixer, ffn), (want_mixer, want_ffn) in zip(blocks, expected):
        assert mixer is want_mixer and ffn is want_ffn


def rope(**scaling):
    return attn_with(rope_scaling=scaling)


# (bad config, the field its message must start with, a fragment the message must contain)
BAD_CONFIGS = {
    "unknown top-level field": (base_with(foo=1), "foo", "unknown field"),
    "unknown block field": (attn_with(foo=1), "mixers.attn.foo", "unknown field"),
    "unknown block kind": (attn_with(kind="transformer"), "mixers.attn.kind", "attention"),
    "missing kind": ({**BASE, "ffns": {"mlp": {"d_ff": 32}}}, "ffns.mlp.kind", "is required"),
    "string for an int": (base_with(vocab_size="32"), "vocab_size", "integer"),
    "bool for an int": (base_with(n_layers=True), "n_layers", "integer"),
    "float for an int": (base_with(d_model=16.0), "d_model", "integer"),
    "string for a block int": (attn_with(n_kv_heads="2"), "mixers.attn.n_kv_heads", "integer"),
    "list for a mapping": (base_with(mixers=[{"kind": "attention"}]), "mixers", "mapping"),
    "list for a block mapping": (base_with(ffns={"mlp": ["mlp", 32]}), "ffns.mlp", "mapping"),
    "vocab_size 0": (base_with(vocab_size=0), "vocab_size", "positive"),
    "d_model -1": (base_with(d_model=-1), "d_model", "positive"),
    "n_heads 0": (attn_with(n_heads=0), "mixers.attn.n_heads", "positive"),
    "d_ff 0": ({**BASE, "ffns": {"mlp": {"kind": "mlp", "d_ff": 0}}}, "ffns.mlp.d_ff", "positive"),
    "n_kv_heads does not divide n_heads": (attn_with(n_kv_heads=3), "mixers.attn.n_kv_heads", "divide"),
    "undefined mixer": (base_with(layers=[{"mixer": "ssm", "ffn": "mlp"}]), "layers[0].mixer", "ssm"),
    "undefined ffn": (base_with(layers=[{"mixer": "attn"}, {"mixer": "attn", "ffn": "moe"}]),
                      "layers[1].ffn", "moe"),
    "block sets d_model": (attn_with(d_model=16), "mixers.attn.d_model", "set by the model"),
    "unknown rope scaling type": (rope(type="longrope", factor=2.0), "mixers.attn.rope_scaling.type", "longrope"),
    "zero rope factor": (rope(type="linear", factor=0.0), "mixers.attn.rope_scaling.factor", "positive"),
    "negative rope factor": (rope(type="llama3", factor=-8.0), "mixers.attn.rope_scaling.factor", "positive"),
    "bad dtype": (base_with(dtype="int8"), "dtype", "int8"),
}


@pytest.mark.parametrize("data, field, fragment", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_config_names_the_field(data, field, fragment):
    with pytest.raises(chimera.ConfigError) as e:
        chimera.ModelConfig.from_dict(data)
    assert isinstance(e.value, ValueError)
    assert str(e.value).startswith(field + ":"), str(e.value)
    assert e.value.field == field
    assert fragment in str(e.value)


@pytest.mark.parametrize("text, fragment", [
    ("name: x\nvocab_size: [1, 2\n", "malformed YAML"),  # unclosed flow sequence
    ("- name: x\n- vocab_size: 32\n", "mapping"),  # a list, not a mapping
    ("just a string\n", "mapping"),
], ids=["malformed", "list", "scalar"])
def test_bad_yaml_file(text, fragment, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(chimera.ConfigError) as e:
        chimera.load_config(path)
    assert fragment in str(e.value)
    assert str(path) in str(e.value)  # says which file


def test_unknown_preset_lists_presets():
    with pytest.raises(chimera.ConfigError) as e:
        chimera.load_config("no-such-model")
    assert "no-such-model" in str(e.value)
    for name in PRESETS:
        assert name in str(e.value)
