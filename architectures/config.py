"""The model config: a layer pattern over named blocks, strictly validated.

Every error is a `ConfigError` whose message starts with the dotted path of the
offending field (`mixers.attn.n_kv_heads: ...`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from chimera.runtime.protocol import FFNS, MIXERS

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A bad config; `field` is the dotted path of the offending field."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)

    def under(self, prefix: str) -> ConfigError:
        return ConfigError(f"{prefix}.{self.field}" if self.field else prefix, self.message)


# --- generic typed construction of frozen dataclasses from plain mappings ---

def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", str(annotation))


def coerce(value: Any, annotation: Any, path: str) -> Any:
    """Check `value` against a type annotation; return it in canonical form."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: X's own error, with its nested field path
            return coerce(value, options[0], path)
        errors = []
        for option in options:
            try:
                return coerce(value, option, path)
            except ConfigError as e:
                errors.append(e.message)
        raise ConfigError(path, " or ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ConfigError(path, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {type(value).__name__} {value!r}")
        item_type = args[0]
        return tuple(coerce(v, item_type, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        return from_mapping(annotation, value, path)
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected a bool, got {type(value).__name__} {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {type(value).__name__} {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"{path}: unsupported annotation {annotation!r}")


def from_mapping(cls, data: Any, path: str, given: Mapping[str, Any] | None = None):
    """Build dataclass `cls` from a mapping, checking names and types.

    `given` holds fields the caller sets itself (e.g. a block's `d_model`);
    the mapping may not set those.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(path, f"expected a mapping, got {type(data).__name__} {data!r}")
    given = dict(given or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = dict(given)
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key in given:
            raise ConfigError(where, "is set by the model, not here")
        if key not in fields:
            known = sorted(set(fields) - set(given))
            raise ConfigError(where, f"unknown field; known fields: {', '.join(known)}")
        kwargs[key] = coerce(value, hints[key], where)
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in kwargs:
            raise ConfigError(f"{path}.{name}" if path else name, "is required")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise e.under(path) if path else e


def require_positive(obj, *names: str) -> None:
    """Raise ConfigError naming the first of `names` that is not > 0 (None is allowed)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise ConfigError(name, f"must be positive, got {value!r}")


def build_block(registry: Mapping[str, type], what: str, path: str, spec: Any, d_model: int):
    """Build a registered block (mixer or ffn) from its YAML mapping plus `d_model`."""
    if not isinstance(spec, Mapping):
        raise ConfigError(path, f"expected a mapping with a 'kind', got {spec!r}")
    if "kind" not in spec:
        raise ConfigError(f"{path}.kind", f"is required; registered {what} kinds: {', '.join(sorted(registry))}")
    kind = spec["kind"]
    if kind not in registry:
        raise ConfigError(f"{path}.kind",
                          f"unknown {what} kind {kind!r}; registered: {', '.join(sorted(registry))}")
    fields = {k: v for k, v in spec.items() if k != "kind"}
    return from_mapping(registry[kind], fields, path, given={"d_model": d_model})


# --- the model config ---

@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One entry of the layer pattern: names from `mixers` and `ffns` (ffn may be absent)."""
    mixer: str
    ffn: str | None = None


DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A model: embeddings, `n_layers` pre-norm residual layers, a final norm and the LM head.

    `layers` is a pattern repeated to `n_layers`: layer i is `layers[i % len(layers)]`
    (the last repetition may be partial, as in Gemma-3's 5:1 pattern over 26 layers).
    `first_layers` come before the pattern, once (DeepSeek's dense first layers, RWKV-7's
    value-residual source): layer i < len(first_layers) is first_layers[i], and the pattern
    repeats over the remaining n_layers - len(first_layers).
    `norm`: `rmsnorm` (x * w, Llama), `rmsnorm_plus_one` (x * (1 + w), Gemma) or `layernorm`
    (with bias; RWKV). `post_norms` also normalises each block's output before the residual add
    (Gemma-2's sandwich norms). `embed_norm` normalises the embeddings before the first layer
    (RWKV's ln0). `scale_embeddings` multiplies embeddings by sqrt(d_model);
    `final_logit_softcap` c maps logits to c * tanh(logits / c) (both Gemma-2).
    """
    name: str
    vocab_size: int
    d_model: int
    n_layers: int
    layers: tuple[LayerSpec, ...]
    mixers: dict[str, Any]
    ffns: dict[str, Any] = dataclasses.field(default_factory=dict)
    first_layers: tuple[LayerSpec, ...] = ()
    norm_eps: float = 1e-5
    norm: Literal["rmsnorm", "rmsnorm_plus_one", "layernorm"] = "rmsnorm"
    post_norms: bool = False
    embed_norm: bool = False
    scale_embeddings: bool = False
    final_logit_softcap: float | None = None
    tie_embeddings: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    description: str = ""

    def __post_init__(self):
        require_positive(self, "vocab_size", "d_model", "n_layers")
        require_positive(self, "norm_eps", "final_logit_softcap")
        if self.dtype not in DTYPES:
            raise ConfigError("dtype", f"must be one of {list(DTYPES)}, got {self.dtype!r}")
        if not self.layers:
            raise ConfigError("layers", "must name at least one layer")
        if len(self.first_layers) > self.n_layers:
            raise ConfigError("first_layers", f"has {len(self.first_layers)} entries but n_layers is {self.n_layers}")
        for field in ("first_layers", "layers"):
            for i, layer in enumerate(getattr(self, field)):
                if layer.mixer not in self.mixers:
                    raise ConfigError(f"{field}[{i}].mixer",
                                      f"names {layer.mixer!r}, which is not defined under mixers "
                                      f"(defined: {', '.join(sorted(self.mixers)) or 'none'})")
                if layer.ffn is not None and layer.ffn not in self.ffns:
                    raise ConfigError(f"{field}[{i}].ffn",
                                      f"names {layer.ffn!r}, which is not defined under ffns "
                                      f"(defined: {', '.join(sorted(self.ffns)) or 'none'})")
        # Build every block once so that a bad block field fails here, not at model build.
        self.mixer_blocks, self.ffn_blocks  # noqa: B018
        self._check_context_flow()

    def _check_context_flow(self):
        """Every Context field a block needs must be set by a block of an earlier layer."""
        provided: set[str] = set()
        for i, (name, block) in enumerate(self.named_layer_blocks()):
            for role, blk in zip(("mixer", "ffn"), block):
                if blk is None:
                    continue
                missing = [f for f in getattr(blk, "context_needs", ()) if f not in provided]
                if missing:
                    raise ConfigError(f"{name}.{role}",
                                      f"layer {i}'s {type(blk).__name__} needs {', '.join(missing)} from an "
                                      f"earlier layer, and none provides it")
                provided.update(getattr(blk, "context_provides", ()))

    @functools.cached_property
    def mixer_blocks(self) -> dict[str, Any]:
        return {name: build_block(MIXERS, "mixer", f"mixers.{name}", spec, self.d_model)
                for name, spec in self.mixers.items()}

    @functools.cached_property
    def ffn_blocks(self) -> dict[str, Any]:
        return {name: build_block(FFNS, "ffn", f"ffns.{name}", spec, self.d_model)
                for name, spec in self.ffns.items()}

    def layer_specs(self) -> list[tuple[str, LayerSpec]]:
        """(where it comes from, spec) of each of the `n_layers` layers."""
        n_first = len(self.first_layers)
        out = []
        for i in range(self.n_layers):
            if i < n_first:
                out.append((f"first_layers[{i}]", self.first_layers[i]))
            else:
                j = (i - n_first) % len(self.layers)
                out.append((f"layers[{j}]", self.layers[j]))
        return out

    def named_layer_blocks(self) -> list[tuple[str, tuple[Any, Any | None]]]:
        return [(name, (self.mixer_blocks[spec.mixer],
                        self.ffn_blocks[spec.ffn] if spec.ffn is not None else None))
                for name, spec in self.layer_specs()]

    def layer_blocks(self) -> list[tuple[Any, Any | None]]:
        """The (mixer, ffn) block objects of each of the `n_layers` layers."""
        return [blocks for _, blocks in self.named_layer_blocks()]

    # --- (de)serialisation ---

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        data = copy.deepcopy(dict(data)) if isinstance(data, Mapping) else data
        return from_mapping(cls, data, "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "vocab_size": self.vocab_size,
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "dtype": self.dtype,
            "norm_eps": self.norm_eps,
            "norm": self.norm,
            "post_norms": self.post_norms,
            "embed_norm": self.embed_norm,
            "scale_embeddings": self.scale_embeddings,
            "final_logit_softcap": self.final_logit_softcap,
            "tie_embeddings": self.tie_embeddings,
            "first_layers": [{k: v for k, v in dataclasses.asdict(layer).items() if v is not None}
                             for layer in self.first_layers],
            "layers": [{k: v for k, v in dataclasses.asdict(layer).items() if v is not None}
                       for layer in self.layers],
            "mixers": copy.deepcopy(self.mixers),
            "ffns": copy.deepcopy(self.ffns),
        }

    @classmethod
    def from_yaml(cls, path: str | Path) -> ModelConfig:
        text = Path(path).read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError("", f"malformed YAML in {path}: {e}") from None
        if not isinstance(data, Mapping):
            raise ConfigError("", f"{path} must hold a mapping of config fields, got {type(data).__name__}")
        return cls.from_dict(data)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace(self, **changes) -> ModelConfig:
        """A copy with some top-level fields changed (validated again)."""
        return ModelConfig.from_dict({**self.to_dict(), **changes})


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_config(name_or_path: str | Path) -> ModelConfig:
    """A bundled preset by name (`llama-tiny`) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"no config file at {path}")
        return ModelConfig.from_yaml(path)
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    if not preset.exists():
        raise ConfigError("", f"unknown preset {str(name_or_path)!r}; bundled presets: {', '.join(list_presets())}")
    return ModelConfig.from_yaml(preset)
