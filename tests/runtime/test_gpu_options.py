"""runtime/gpu_options.py: which devices and jaxlibs get the GPU decode options, and how they are
added to XLA_FLAGS (the Engine passing them to its decode program: tests/runtime/test_engine.py)."""

import importlib.metadata

import jax
import numpy as np
import pytest

from chimera.runtime import gpu_options
from chimera.runtime.gpu_options import (CAPTURE_ALL_COLLECTIVES, GPU_DECODE_OPTIONS,
                                         ONE_ROW_TENSOR_PARALLEL_OPTIONS, as_xla_flags, decode_compiler_options,
                                         default_compiler_options, gpu_decode_options, set_xla_flags)

FILTER = "xla_gpu_enable_collectives_command_buffer_filter"


@pytest.fixture(autouse=True)
def nccl_mixing_as_by_default(monkeypatch):
    """NCCL's graph-mixing support as NCCL has it unless told (these tests set it where they need to)."""
    monkeypatch.delenv("NCCL_GRAPH_MIXING_SUPPORT", raising=False)


class FakeDevice:
    def __init__(self, platform):
        self.platform = platform


@pytest.mark.parametrize("platform, knows, expected", [
    ("gpu", True, GPU_DECODE_OPTIONS), ("gpu", False, {}), ("cpu", True, {})])
def test_default_compiler_options(monkeypatch, platform, knows, expected):
    monkeypatch.setattr(gpu_options, "jax_knows_options", lambda: knows)
    assert default_compiler_options([FakeDevice(platform)] * 2) == expected
    assert default_compiler_options([FakeDevice("gpu"), FakeDevice("cpu")]) == {}


class FakeMesh:
    def __init__(self, platform, **sizes):
        self.shape = {"data": 1, "expert": 1, "tensor": 1, **sizes}
        self.devices = np.array([FakeDevice(platform)] * int(np.prod(list(self.shape.values()))))


@pytest.mark.parametrize("sizes, batch, symmetric", [
    ({"tensor": 2}, 1, True), ({"tensor": 8}, 1, True), ({"tensor": 2}, 2, False), ({"tensor": 2}, 16, False),
    ({"expert": 2}, 1, False), ({"expert": 2, "tensor": 2}, 1, False), ({"data": 2, "tensor": 2}, 2, False)])
def test_symmetric_buffers_only_for_one_row_tensor_parallel_steps(monkeypatch, sizes, batch, symmetric):
    """NCCL's symmetric buffers were measured faster for one-row tensor=2 steps and slower for
    batch 16 and expert parallelism (BENCHMARKS.md), so only the first get them."""
    monkeypatch.setattr(gpu_options, "jax_knows_options", lambda: True)
    options = decode_compiler_options(FakeMesh("gpu", **sizes), batch)
    assert options == (GPU_DECODE_OPTIONS | ONE_ROW_TENSOR_PARALLEL_OPTIONS if symmetric else GPU_DECODE_OPTIONS)
    assert decode_compiler_options(FakeMesh("cpu", **sizes), batch) == {}


@pytest.mark.parametrize("value, captured", [(None, "ALLREDUCE"), ("1", "ALLREDUCE"), ("0", "ALLCOLLECTIVES")])
def test_every_collective_captured_only_when_nccl_graph_mixing_is_off(monkeypatch, value, captured):
    """With NCCL's graph mixing on, a loop graph holding a collective other than the all-reduces
    does not instantiate; with it off, no NCCL call may run uncaptured beside a graph's."""
    environ = {} if value is None else {"NCCL_GRAPH_MIXING_SUPPORT": value}
    assert gpu_decode_options(environ) == {**GPU_DECODE_OPTIONS, FILTER: captured}
    if value is not None:
        monkeypatch.setenv("NCCL_GRAPH_MIXING_SUPPORT", value)
    monkeypatch.setattr(gpu_options, "jax_knows_options", lambda: True)
    assert decode_compiler_options(FakeMesh("gpu", tensor=2), 1)[FILTER] == captured
    assert decode_compiler_options(FakeMesh("gpu", expert=2), 16)[FILTER] == captured
    assert decode_compiler_options(FakeMesh("cpu", tensor=2), 1) == {}


def test_jax_knows_options_below_0_11_without_asking_xla(monkeypatch):
    monkeypatch.setattr(gpu_options.importlib.metadata, "version", lambda name: "0.10.2")
    monkeypatch.setattr(gpu_options.subprocess, "run", None)  # not called
    gpu_options.jax_knows_options.cache_clear()
    assert not gpu_options.jax_knows_options()
    gpu_options.jax_knows_options.cache_clear()


def test_jax_knows_options_trusts_the_jaxlibs_seen_to_accept_them(monkeypatch):
    monkeypatch.setattr(gpu_options.importlib.metadata, "version", lambda name: gpu_options.ACCEPTING_JAXLIBS[0])
    monkeypatch.setattr(gpu_options.subprocess, "run", None)  # not called
    gpu_options.jax_knows_options.cache_clear()
    assert gpu_options.jax_knows_options()
    gpu_options.jax_knows_options.cache_clear()


@pytest.mark.parametrize("option, accepted", [("xla_gpu_graph_min_graph_size", True), ("xla_gpu_no_such_option", False)])
def test_jax_knows_options_asks_xla_for_other_jaxlibs(monkeypatch, option, accepted):
    """Another jaxlib from 0.11 on: a child process starts XLA with the options; a name it does
    not parse (XLA drops options between releases) means no options, with a warning."""
    monkeypatch.setattr(gpu_options.importlib.metadata, "version", lambda name: "0.11.99")
    monkeypatch.setattr(gpu_options, "GPU_DECODE_OPTIONS", {option: 1})
    monkeypatch.setattr(gpu_options, "ONE_ROW_TENSOR_PARALLEL_OPTIONS", {})
    monkeypatch.setattr(gpu_options, "CAPTURE_ALL_COLLECTIVES", {})
    gpu_options.jax_knows_options.cache_clear()
    if accepted:
        assert gpu_options.jax_knows_options()
    else:
        with pytest.warns(UserWarning, match="does not accept"):
            assert not gpu_options.jax_knows_options()
    gpu_options.jax_knows_options.cache_clear()


def test_cuda_plugin_installed(monkeypatch):
    class Distribution:
        def __init__(self, name):
            self.metadata = {"Name": name}
    for names, installed in [(["numpy", "jax-cuda13-plugin"], True), (["jax_cuda12_pjrt"], True), (["jax", "jaxlib"], False)]:
        monkeypatch.setattr(gpu_options.importlib.metadata, "distributions", lambda n=names: map(Distribution, n))
        assert gpu_options.cuda_plugin_installed() == installed, names


def process_options_settable(monkeypatch):
    from jax._src import xla_bridge
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.setattr(gpu_options, "cuda_plugin_installed", lambda: True)
    monkeypatch.setattr(gpu_options, "jax_knows_options", lambda: True)


def test_set_xla_flags_appends_and_keeps_the_users(monkeypatch):
    process_options_settable(monkeypatch)
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_gpu_graph_min_graph_size=5"}
    assert set_xla_flags(environ)
    flags = environ["XLA_FLAGS"].split()
    assert flags[:2] == ["--xla_force_host_platform_device_count=8", "--xla_gpu_graph_min_graph_size=5"]
    assert "--xla_gpu_experimental_use_collective_kernels=" in flags
    assert "--xla_gpu_enable_collectives_command_buffer_filter=ALLREDUCE" in flags
    assert sum(flag.startswith("--xla_gpu_graph_min_graph_size") for flag in flags) == 1  # the user's stays
    assert len(flags) == 2 + len(GPU_DECODE_OPTIONS) - 1


@pytest.mark.parametrize("mixing, captured", [(None, "ALLREDUCE"), ("1", "ALLREDUCE"), ("0", "ALLCOLLECTIVES")])
def test_set_xla_flags_captures_every_collective_when_nccl_graph_mixing_is_off(monkeypatch, mixing, captured):
    """The process's flags follow the user's NCCL setting, which chimera leaves alone."""
    process_options_settable(monkeypatch)
    environ = {} if mixing is None else {"NCCL_GRAPH_MIXING_SUPPORT": mixing}
    assert set_xla_flags(environ)
    assert environ.get("NCCL_GRAPH_MIXING_SUPPORT") == mixing
    assert f"--{FILTER}={captured}" in environ["XLA_FLAGS"].split()
    assert len(environ["XLA_FLAGS"].split()) == len(GPU_DECODE_OPTIONS)


@pytest.mark.skipif(tuple(map(int, importlib.metadata.version("jaxlib").split(".")[:2])) < (0, 11),
                    reason="this jaxlib predates some of the options")
def test_this_jaxlib_accepts_the_options():
    """The option names are current for the installed jaxlib (XLA drops options between
    releases; chimera then decodes with XLA's defaults, and this fails until they are updated)."""
    assert gpu_options.xla_flags_error(GPU_DECODE_OPTIONS | ONE_ROW_TENSOR_PARALLEL_OPTIONS) == ""
    assert gpu_options.xla_flags_error(GPU_DECODE_OPTIONS | CAPTURE_ALL_COLLECTIVES) == ""


def test_set_xla_flags_does_nothing_once_a_backend_runs_without_cuda_or_options(monkeypatch):
    jax.devices()  # a backend runs in this process
    environ = {}
    assert not set_xla_flags(environ) and environ == {}
    from jax._src import xla_bridge
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.setattr(gpu_options, "cuda_plugin_installed", lambda: False)
    monkeypatch.setattr(gpu_options, "jax_knows_options", lambda: True)
    assert not set_xla_flags(environ) and environ == {}  # a CPU-only install: not even XLA is asked
    monkeypatch.setattr(gpu_options, "cuda_plugin_installed", lambda: True)
    monkeypatch.setattr(gpu_options, "jax_knows_options", lambda: False)
    assert not set_xla_flags(environ) and environ == {}


def test_as_xla_flags_spells_booleans_as_xla_does():
    assert as_xla_flags({"xla_a": True, "xla_b": False, "xla_c": "", "xla_d": 1}) == [
        "--xla_a=true", "--xla_b=false", "--xla_c=", "--xla_d=1"]
