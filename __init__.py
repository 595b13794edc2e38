"""chimera: a pure-functional LLM inference runtime on JAX."""

from chimera.runtime.protocol import Context, register_ffn, register_mixer
from chimera.runtime.state import DecodeState
from chimera.architectures.config import ConfigError, ModelConfig, list_presets, load_config

# Built-in blocks register themselves on import.
from chimera.attention.attention import Attention
from chimera.attention.h2o import H2OAttention
from chimera.attention.mla import MLA
from chimera.attention.sinks import SinkAttention
from chimera.attention.sparse import BlockSparseAttention
from chimera.attention.window import SlidingWindowAttention
from chimera.moe.mlp import GatedMLP
from chimera.moe.moe import MoE
from chimera.ssm.mamba import Mamba
from chimera.ssm.mamba2 import Mamba2
from chimera.ssm.rwkv7 import RWKV7
from chimera.ssm.channel_mix import RWKV7ChannelMix

from chimera.runtime.model import Model, build
from chimera.runtime.sampling import Sampling
from chimera.runtime.engine import Engine, Generation
from chimera.architectures.hf import from_hf
from chimera.sharding.mesh import make_mesh
from chimera.architectures.checkpoint import load_checkpoint, save_checkpoint

__all__ = [
    "Attention", "BlockSparseAttention", "ConfigError", "H2OAttention", "MLA", "SinkAttention", "SlidingWindowAttention", "Context", "DecodeState", "Engine", "GatedMLP", "MoE", "Generation", "Mamba", "Mamba2", "Model", "RWKV7", "RWKV7ChannelMix",
    "ModelConfig", "Sampling", "build", "from_hf", "list_presets", "load_checkpoint", "load_config", "make_mesh",
    "register_ffn", "register_mixer", "save_checkpoint",
]
