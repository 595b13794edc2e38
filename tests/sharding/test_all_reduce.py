"""chimera's all-reduce (sharding/all_reduce.py): when a product takes it, and that the shard_map it
runs in decodes what one device decodes. The kernel itself needs NVIDIA GPUs with peer access
(checked on them: benchmarks/all_reduce.py, gpu_runs.sh x2-allreduce-i); here `lax.psum` stands in
for it inside the same shard_map."""

import ctypes
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chimera
from chimera.sharding import all_reduce
from sharding_cases import greedy_tokens, random_params, tensor_mesh


@pytest.mark.parametrize("preset", ["llama-tiny", "mla-tiny", "deepseek-moe-tiny"])
@pytest.mark.parametrize("tensor", [2, 4])
def test_decoding_through_the_shard_map_equals_one_device(preset, tensor, psum_for_kernel):
    model = chimera.build(chimera.load_config(preset))
    params = random_params(model)
    want = greedy_tokens(model, params)
    assert greedy_tokens(model, params, tensor_mesh(tensor)) == want
    assert psum_for_kernel, "no product took the shard_map"


def applies_under(mesh, *args):
    """`all_reduce.applies(mesh, ...)` traced under `mesh`."""
    with jax.set_mesh(mesh):
        return all_reduce.applies(mesh, *args)


def test_which_products_take_it(psum_for_kernel):
    x, w = jnp.zeros((1, 1, 8, 16), jnp.bfloat16), jnp.zeros((8, 16, 64), jnp.bfloat16)
    spec = "bthk,hkd->btd"
    assert applies_under(tensor_mesh(2), spec, x, w, "h")
    assert not all_reduce.applies(tensor_mesh(2), spec, x, w, "h")  # not traced under it
    assert not all_reduce.applies(None, spec, x, w, "h")
    assert not applies_under(tensor_mesh(1), spec, x, w, "h")
    assert not applies_under(chimera.make_mesh(data=2, tensor=2, devices=jax.devices()[:4]), spec, x, w, "h")
    assert not applies_under(chimera.make_mesh(expert=2, tensor=2, devices=jax.devices()[:4]), spec, x, w, "h")
    odd = jnp.zeros((1, 1, 3, 16), jnp.bfloat16), jnp.zeros((3, 16, 64), jnp.bfloat16)
    assert not applies_under(tensor_mesh(2), spec, *odd, "h")  # 3 heads on 2: replicated, nothing to sum
    rows = all_reduce.MAX_BYTES // (64 * 2)  # outputs up to the kernel's buffer, in multiples of 16 bytes
    assert applies_under(tensor_mesh(2), spec, jnp.zeros((rows, 1, 8, 16), jnp.bfloat16), w, "h")
    assert not applies_under(tensor_mesh(2), spec, jnp.zeros((rows + 1, 1, 8, 16), jnp.bfloat16), w, "h")
    narrow = jnp.zeros((8, 16, 4), jnp.bfloat16)  # 1 x 4 bf16 = 8 bytes
    assert not applies_under(tensor_mesh(2), spec, x, narrow, "h")


def test_unprepared_devices_keep_xla_all_reduce():
    x, w = jnp.zeros((1, 1, 8, 16)), jnp.zeros((8, 16, 64))
    assert not applies_under(tensor_mesh(2), "bthk,hkd->btd", x, w, "h")


def test_cpu_meshes_are_not_prepared():
    mesh = tensor_mesh(2)
    with pytest.raises(all_reduce.Unavailable, match="NVIDIA GPUs only"):
        all_reduce.prepare(mesh)
    assert not all_reduce.prepare_if_wanted(mesh)
    assert not all_reduce.prepared(mesh)


def test_choice_is_checked():
    assert all_reduce.choice({}) == "chimera"
    assert all_reduce.choice({"CHIMERA_ALL_REDUCE": "xla"}) == "xla"
    with pytest.raises(ValueError, match="CHIMERA_ALL_REDUCE must be 'chimera' or 'xla'"):
        all_reduce.choice({"CHIMERA_ALL_REDUCE": "nccl"})


def test_groups_are_the_tensor_rows_in_mesh_order():
    mesh = chimera.make_mesh(data=2, tensor=4)
    want = [device.local_hardware_id for device in np.asarray(jax.devices()).reshape(2, 4).flat]
    assert all_reduce.groups(mesh).tolist() == want


def test_buffer_sizes_agree_with_the_kernel_source():
    """all_reduce.py's limits are the kernel's (checked again when the library loads)."""
    source = all_reduce.SOURCE.read_text()
    constant = {name: int(value) for name, value in re.findall(r"constexpr int (k\w+) = (\d+);", source)}
    assert all_reduce.MAX_RANKS == constant["kMaxRanks"]
    assert all_reduce.MAX_BYTES == constant["kMaxBlocks"] * constant["kThreads"] * 16
    assert (all_reduce.MAX_ROWS, all_reduce.MAX_ROW_BYTES) == (constant["kMaxRows"], constant["kRowBytes"])


def test_no_nvcc_is_unavailable(monkeypatch, tmp_path):
    monkeypatch.setattr(all_reduce.shutil, "which", lambda name: None)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    with pytest.raises(all_reduce.Unavailable, match="nvcc not found"):
        all_reduce.build()


def test_the_kernel_builds_and_loads(monkeypatch, tmp_path):
    """Compiles all_reduce.cu where nvcc is installed (not on CI's machine) and reads its sizes."""
    try:
        all_reduce.find_nvcc()
    except all_reduce.Unavailable:
        pytest.skip("no nvcc here")
    monkeypatch.setenv("CHIMERA_CACHE", str(tmp_path))
    library = ctypes.CDLL(str(all_reduce.build()))
    assert (library.chimera_all_reduce_max_bytes(), library.chimera_all_reduce_max_ranks(),
            library.chimera_all_reduce_max_rows(), library.chimera_all_reduce_max_row_bytes()) == (
        all_reduce.MAX_BYTES, all_reduce.MAX_RANKS, all_reduce.MAX_ROWS, all_reduce.MAX_ROW_BYTES)
    assert hasattr(library, "chimera_add_rms_norm")
    assert all_reduce.build() == next(tmp_path.glob("all_reduce-*.so"))  # cached: built once
