"""runtime/gpu_options.py: which devices and jaxlibs get the GPU decode options, and how they are
added to XLA_FLAGS (the Engine passing them to its decode program: tests/runtime/test_engine.py)."""

import jax
import pytest

from chimera.runtime import gpu_options
from chimera.runtime.gpu_options import GPU_DECODE_OPTIONS, default_compiler_options, set_xla_flags


class FakeDevice:
    def __init__(self, platform):
        self.platform = platform


@pytest.mark.parametrize("platform, knows, expected", [
    ("gpu", True, GPU_DECODE_OPTIONS), ("gpu", False, {}), ("cpu", True, {})])
def test_default_compiler_options(monkeypatch, platform, knows, expected):
    monkeypatch.setattr(gpu_options, "jax_knows_options", lambda: knows)
    assert default_compiler_options([FakeDevice(platform)] * 2) == expected
    assert default_compiler_options([FakeDevice("gpu"), FakeDevice("cpu")]) == {}


def test_jax_knows_options_follows_the_jaxlib_version(monkeypatch):
    for version, knows in [("0.11.2", True), ("0.12.0.dev20261101", True), ("0.10.2", False), ("1.0", True)]:
        monkeypatch.setattr(gpu_options.importlib.metadata, "version", lambda name, v=version: v)
        assert gpu_options.jax_knows_options() == knows, version


def test_set_xla_flags_appends_and_keeps_the_users(monkeypatch):
    from jax._src import xla_bridge
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.setattr(gpu_options, "jax_knows_options", lambda: True)
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_gpu_graph_min_graph_size=5"}
    assert set_xla_flags(environ)
    flags = environ["XLA_FLAGS"].split()
    assert flags[:2] == ["--xla_force_host_platform_device_count=8", "--xla_gpu_graph_min_graph_size=5"]
    assert "--xla_gpu_experimental_use_collective_kernels=" in flags
    assert "--xla_gpu_enable_collectives_command_buffer_filter=ALLREDUCE" in flags
    assert sum(flag.startswith("--xla_gpu_graph_min_graph_size") for flag in flags) == 1  # the user's stays
    assert len(flags) == 2 + len(GPU_DECODE_OPTIONS) - 1


def test_set_xla_flags_does_nothing_once_a_backend_runs_or_on_an_older_jaxlib(monkeypatch):
    jax.devices()  # a backend runs in this process
    environ = {}
    assert not set_xla_flags(environ) and environ == {}
    from jax._src import xla_bridge
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.setattr(gpu_options, "jax_knows_options", lambda: False)
    assert not set_xla_flags(environ) and environ == {}
