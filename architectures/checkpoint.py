"""Orbax checkpoints of a model: its params plus the config (and tokenizer) beside them.

A checkpoint is a folder:

    config.yaml      the ModelConfig (ModelConfig.from_yaml reads it)
    params/          the params pytree, written by orbax (one array per leaf, sharded files)
    tokenizer.json   the model's tokenizer, when it has one (an HF import)

`load_checkpoint(path, mesh)` restores every array straight into its sharding on the mesh
(sharding/rules.py): each device reads its own slice, the model is never gathered on one
device. Without a mesh the params land on the first local device.
"""

from __future__ import annotations

from pathlib import Path

import jax
from jax.sharding import Mesh, SingleDeviceSharding

from chimera.architectures.config import ModelConfig
from chimera.runtime.model import Model
from chimera.sharding.shardings import param_shardings

CONFIG_FILE, PARAMS_DIR, TOKENIZER_FILE = "config.yaml", "params", "tokenizer.json"


def checkpointer():
    """Orbax's checkpointer for a pytree of arrays. Imported here, when needed: orbax would
    add a third to the time of `import chimera`."""
    import orbax.checkpoint as ocp
    return ocp.StandardCheckpointer()


def check_params(model: Model, params) -> None:
    """The params must be the tree `model.init` makes: same structure, shapes and dtypes."""
    expected = jax.eval_shape(model.init, jax.random.key(0))
    if jax.tree.structure(expected) != jax.tree.structure(params):
        raise ValueError(f"the params do not have the tree of {model.config.name}'s model.init")
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(params)):
        if want.shape != got.shape or want.dtype != got.dtype:
            raise ValueError(f"params{jax.tree_util.keystr(path)} is {got.dtype}{list(got.shape)}, the config "
                             f"makes it {want.dtype}{list(want.shape)}")


def barrier(name: str) -> None:
    """Wait here for every process (a no-op with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def save_checkpoint(path: str | Path, model: Model, params) -> None:
    """Write `params` (sharded or not, on any mesh) and `model.config` to the folder `path`,
    which must not exist yet. With several processes every one calls it, with a path they
    all reach (a shared filesystem): orbax writes each process's shards, the first process
    the config."""
    path = Path(path).absolute()  # orbax wants absolute paths
    if path.exists():  # every process looks before any creates it (the barrier below)
        raise ValueError(f"{path} already exists; a checkpoint is written to a new folder")
    check_params(model, params)
    barrier(f"chimera.save_checkpoint {path}: checked")
    if jax.process_index() == 0:
        path.mkdir(parents=True)
        model.config.to_yaml(path / CONFIG_FILE)
        if model.tokenizer is not None:
            model.tokenizer.save(str(path / TOKENIZER_FILE))
    barrier(f"chimera.save_checkpoint {path}: created")
    with checkpointer() as orbax:
        orbax.save(path / PARAMS_DIR, params)
        orbax.wait_until_finished()


def load_checkpoint(path: str | Path, mesh: Mesh | None = None) -> tuple[Model, dict]:
    """(model, params) from a folder `save_checkpoint` wrote; with a mesh each array is read
    directly into its sharding there (any mesh: it need not be the one it was saved from)."""
    path = Path(path).absolute()
    if not (path / CONFIG_FILE).is_file() or not (path / PARAMS_DIR).is_dir():
        raise FileNotFoundError(f"{path} is not a chimera checkpoint (no {CONFIG_FILE} and {PARAMS_DIR}/)")
    tokenizer = None
    if (path / TOKENIZER_FILE).is_file():
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_file(str(path / TOKENIZER_FILE))
    model = Model(ModelConfig.from_yaml(path / CONFIG_FILE), tokenizer=tokenizer)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    if mesh is None:
        shardings = jax.tree.map(lambda _: SingleDeviceSharding(jax.local_devices()[0]), shapes)
    else:
        shardings = param_shardings(model, mesh)
    target = jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                          shapes, shardings)
    with checkpointer() as orbax:
        params = orbax.restore(path / PARAMS_DIR, target)
    return model, params
