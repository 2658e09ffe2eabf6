"""Command-line entry point for LBGAT-family training.

    python -m lbgat_jax.main --config=configs/lbgat/cifar10.py:trades,alpha6 \
        --workdir=runs/trades6 [--config.batch_size=256 ...]

    # every run of a config's get_sweep(), one workdir each:
    python -m lbgat_jax.main --config=configs/lbgat/ablations.py:cifar10 \
        --workdir=runs/table1 --sweep

Multi-host: pass ``--coordinator_address``, ``--num_processes`` and
``--process_id`` (or the JAX_* environment variables; see README).
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, with an optional ':variant'.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and tables.")
_SWEEP = flags.DEFINE_bool("sweep", False, "Run every entry of the config file's get_sweep().")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Orbax and tfds log every file operation at INFO; keep the console for
    # the progress bar and the tables.
    logging.set_verbosity(logging.WARNING)
    # Distributed init must precede every other JAX call.
    from advcore import parallel

    parallel.initialize_distributed(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
    )
    from lbgat_jax import sweeps, train

    config = _CONFIG.value
    if not _SWEEP.value:
        train.train_and_evaluate(config, _WORKDIR.value)
        return
    raw_flag = flags.FLAGS["config"].config_filename
    for i, overrides in enumerate(sweeps.load_sweep(raw_flag)):
        workdir = os.path.join(_WORKDIR.value, sweeps.run_name(i, overrides))
        print(f"== sweep run {i}: {overrides} -> {workdir}")
        train.train_and_evaluate(sweeps.apply_overrides(config, overrides), workdir)


if __name__ == "__main__":
    app.run(main)
