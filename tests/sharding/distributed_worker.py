"""One process of the 2-process test (tests/test_distributed.py): joins the run, loads each
case's checkpoint straight into a mesh spanning both processes' devices, decodes greedily,
saves the params as placed to a second checkpoint and prints the tokens as JSON.

    python distributed_worker.py PORT PROCESS_ID N_PROCESSES FOLDER
    (FOLDER/<i>/in: case i's checkpoint to load; FOLDER/<i>/out: where to save it back)
"""

import json
import sys
from pathlib import Path

import jax

import chimera
import chimera.distributed
from sharding_cases import MULTI_PROCESS_CASES, greedy_tokens


def main(port: int, process_id: int, n_processes: int, folder: Path) -> None:
    chimera.distributed.initialize(f"localhost:{port}", num_processes=n_processes, process_id=process_id,
                                   initialization_timeout=60)
    results = {}
    for i, (preset, mesh) in enumerate(MULTI_PROCESS_CASES):
        mesh = chimera.make_mesh(**mesh)
        model, params = chimera.load_checkpoint(folder / str(i) / "in", mesh=mesh)
        results[preset] = greedy_tokens(model, params, mesh)
        chimera.save_checkpoint(folder / str(i) / "out", model, params)
    print("RESULT " + json.dumps({"process": jax.process_index(), "devices": jax.device_count(),
                                   "local_devices": jax.local_device_count(), "tokens": results}),
          flush=True)


if __name__ == "__main__":
    main(*map(int, sys.argv[1:4]), Path(sys.argv[4]))
