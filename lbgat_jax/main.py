"""Command line for LBGAT-family training.

    python -m lbgat_jax.main --config=configs/lbgat/cifar10.py:trades,alpha6 \
        --workdir=runs/trades6 [--config.batch_size=256 ...]

    # every run of a config's get_sweep(), one workdir each:
    python -m lbgat_jax.main --config=configs/lbgat/ablations.py:cifar10 \
        --workdir=runs/table1 --sweep

Common flags (``--debug``, ``--cpu_devices``, the compilation cache, the
multi-host ``--coordinator_address`` / ``--num_processes`` / ``--process_id``)
are described in ``advcore.cli``. A bad config value fails at once with one
line naming the field; exit codes are listed there too.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

from absl import flags
from ml_collections import config_flags

from advcore import cli
from lbgat_jax import sweeps, train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, with an optional ':variant'.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and tables.")
_SWEEP = flags.DEFINE_bool("sweep", False, "Run every entry of the config file's get_sweep().")

log = logging.getLogger("advcore")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {list(argv[1:])}")
    if _CONFIG.value is None:
        raise ValueError("--config is required, e.g. --config=configs/lbgat/mnist.py:smoke")
    if not _WORKDIR.value:
        raise ValueError("--workdir is required")
    cli.setup("lbgat_jax.main")
    config = _CONFIG.value
    if not _SWEEP.value:
        log.info("config:\n%s", config)
        train.train_and_evaluate(config, _WORKDIR.value)
        return
    raw_flag = flags.FLAGS["config"].config_filename
    for i, overrides in enumerate(sweeps.load_sweep(raw_flag)):
        workdir = os.path.join(_WORKDIR.value, sweeps.run_name(i, overrides))
        log.info("sweep run %d: %s -> %s", i, overrides, workdir)
        train.train_and_evaluate(sweeps.apply_overrides(config, overrides), workdir)


def run() -> None:
    """Console-script entry point."""
    cli.run(main)


if __name__ == "__main__":
    run()
