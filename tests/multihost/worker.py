"""One process of the simulated multi-host run (started by test_multiprocess.py).

    python tests/multihost/worker.py --coordinator_address=127.0.0.1:PORT \
        --num_processes=2 --process_id=I --local_devices=2 --workdir=DIR --out=FILE.npz

Simulates ``--local_devices`` CPU devices in this process, joins the
``jax.distributed`` cluster through ``advcore.parallel.initialize_distributed``
and runs ``multihost_scenario.run_scenario`` over the global mesh.
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator_address", required=True)
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--process_id", type=int, required=True)
    parser.add_argument("--local_devices", type=int, default=2)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [here, os.path.dirname(os.path.dirname(here))]

    import jax

    # Both settings must precede the first JAX computation.
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", args.local_devices)
    from advcore import parallel

    assert parallel.initialize_distributed(
        args.coordinator_address, args.num_processes, args.process_id)
    assert jax.process_count() == args.num_processes, jax.process_count()
    assert jax.local_device_count() == args.local_devices

    import multihost_scenario

    mesh = parallel.make_mesh()
    result = multihost_scenario.run_scenario(args.workdir, mesh)
    result["process_index"] = jax.process_index()
    result["global_devices"] = mesh.devices.size
    multihost_scenario.save_result(result, args.out)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
