"""Rotary position embeddings (rotate-half layout, as Hugging Face Llama): default, linear, llama3, yarn."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from chimera.architectures.config import ConfigError, require_positive


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """`linear` divides every frequency by `factor`; `llama3` divides only the low
    frequencies, blending smoothly between `low_freq_factor` and `high_freq_factor`.

    `yarn` (YaRN, as transformers and DeepSeek compute it) keeps the dimensions that turn
    more than `beta_fast` times over `original_max_position_embeddings`, divides those that
    turn fewer than `beta_slow` times, ramps linearly in between (`truncate` rounds the ramp's
    ends to whole dimensions), and multiplies cos/sin by `attention_factor` (default: from
    `mscale` / `mscale_all_dim` when both are given, else 0.1 ln(factor) + 1).
    """
    type: Literal["linear", "llama3", "yarn"]
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True

    def __post_init__(self):
        require_positive(self, "factor", "low_freq_factor", "high_freq_factor",
                         "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale",
                         "mscale_all_dim", "attention_factor")
        if self.type == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ConfigError("high_freq_factor", "must exceed low_freq_factor")
        if self.type == "yarn" and self.beta_fast <= self.beta_slow:
            raise ConfigError("beta_fast", f"must exceed beta_slow {self.beta_slow}, got {self.beta_fast}")

    def parameters(self) -> dict:
        """The fields this type uses, unset ones left out (transformers' `rope_parameters` names)."""
        return {name: getattr(self, name) for name in TYPE_FIELDS[self.type] if getattr(self, name) is not None}


TYPE_FIELDS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
             "attention_factor", "truncate"),
}


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction 0.1 * mscale * ln(factor) + 1 (1 when not extending)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_attention_factor(scaling: RopeScaling | None) -> float:
    """What cos and sin are multiplied by: 1 except under yarn."""
    if scaling is None or scaling.type != "yarn":
        return 1.0
    if scaling.attention_factor is not None:
        return scaling.attention_factor
    if scaling.mscale is not None and scaling.mscale_all_dim is not None:
        return yarn_mscale(scaling.factor, scaling.mscale) / yarn_mscale(scaling.factor, scaling.mscale_all_dim)
    return yarn_mscale(scaling.factor)


def _yarn(inv_freq: np.ndarray, head_dim: int, theta: float, scaling: RopeScaling) -> np.ndarray:
    """Blend original (extrapolated) and `factor`-divided (interpolated) frequencies by a
    linear ramp over the dimension index, between the dimensions that turn beta_fast and
    beta_slow times over the original context."""
    def dim_of(rotations):  # the (fractional) dimension whose wavelength fits `rotations` times
        return head_dim * math.log(scaling.original_max_position_embeddings / (rotations * 2 * math.pi)) / (
            2 * math.log(theta))

    low, high = dim_of(scaling.beta_fast), dim_of(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # as transformers: avoid a division by zero
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    return inv_freq / scaling.factor * ramp + inv_freq * (1 - ramp)


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
    """[head_dim // 2] float32 angular frequencies."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling is None:
        pass
    elif scaling.type == "linear":
        inv_freq = inv_freq / scaling.factor
    elif scaling.type == "llama3":
        old_len = scaling.original_max_position_embeddings
        low_wavelen = old_len / scaling.low_freq_factor
        high_wavelen = old_len / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
        smooth = (old_len / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor)
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = np.where(medium, smoothed, scaled)
    elif scaling.type == "yarn":
        inv_freq = _yarn(inv_freq, head_dim, theta, scaling)
    else:  # from_mapping's Literal check makes this unreachable from configs
        raise ConfigError("type", f"unknown rope scaling {scaling.type!r}")
    return inv_freq.astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray, scale: float = 1.0) -> jax.Array:
    """x [B, T, H, Dh], positions [B, T] -> x rotated, same dtype (angles in float32).
    `scale` multiplies cos and sin (yarn's `rope_attention_factor`)."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, Dh/2]
    cos = (jnp.cos(angles) * scale)[:, :, None, :].astype(x.dtype)  # [B, T, 1, Dh/2]
    sin = (jnp.sin(angles) * scale)[:, :, None, :].astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)  # [B, T, H, Dh/2] each
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
