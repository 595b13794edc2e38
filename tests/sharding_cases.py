"""Shared by the sharding tests and the 2-process worker: random params drawn on the host
(the same in every process, no PRNG to compile), ragged prompts, greedy decoding."""

import jax
import numpy as np

import chimera

# 8 ragged prompts: every test mesh (data x expert up to 8) splits the batch evenly.
PROMPTS = [np.random.default_rng(i).integers(0, 256, n).tolist() for i, n in enumerate([5, 12, 3, 9, 7, 11, 4, 8])]
NEW_TOKENS = 4
MAX_LEN = 32

# (preset, mesh) decoded by 2 processes x 4 CPU devices: the expert axis spans both processes
# (devices 0,2 | 4,6 ...), so the experts' all-to-all and the batch split cross the process
# boundary; tensor pairs stay within a process, as they would within a host.
MULTI_PROCESS_CASES = [("mixtral-tiny", dict(expert=4, tensor=2))]


def random_params(model, seed=0):
    """Normal params of the model's shapes, matrices scaled by their fan-in (axis -2)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    return jax.tree.map(lambda s: np.asarray(rng.normal(size=s.shape) * (s.shape[-2] ** -0.5 if s.ndim > 1 else 0.3),
                                             s.dtype), shapes)


def greedy_tokens(model, params, mesh=None):
    engine = chimera.Engine(model, params, max_batch=len(PROMPTS), max_len=MAX_LEN, mesh=mesh)
    return [out.tokens for out in engine.generate(PROMPTS, max_new_tokens=NEW_TOKENS)]


def tensor_mesh(tensor):
    """A mesh split over `tensor` alone, of the first devices."""
    return chimera.make_mesh(tensor=tensor, devices=jax.devices()[:tensor])
