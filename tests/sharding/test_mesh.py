"""make_mesh: the (data, expert, tensor) axes over the available devices."""

import jax
import pytest
from jax.sharding import AxisType

import chimera


def test_axes_and_shape():
    mesh = chimera.make_mesh(data=2, expert=2, tensor=2)
    assert mesh.axis_names == ("data", "expert", "tensor")
    assert dict(mesh.shape) == {"data": 2, "expert": 2, "tensor": 2}
    assert mesh.axis_types == (AxisType.Auto,) * 3  # shardings propagate; jax.make_mesh would make Explicit axes
    # tensor innermost: its groups are neighbouring devices
    assert [d.id for d in mesh.devices[0, 0]] == [jax.devices()[0].id, jax.devices()[1].id]


def test_defaults_need_one_device():
    assert chimera.make_mesh(devices=jax.devices()[:1]).size == 1


@pytest.mark.parametrize("sizes", [dict(tensor=4), dict(data=3, tensor=2), dict(data=16)])
def test_product_must_match_the_devices(sizes):
    with pytest.raises(ValueError, match=f"but {jax.device_count()} are available"):
        chimera.make_mesh(**sizes)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_bad_axis_sizes(bad):
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        chimera.make_mesh(tensor=bad)
