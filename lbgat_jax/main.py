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

import copy
import importlib.util
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


def apply_overrides(config, overrides: dict):
    """Returns a copy of ``config`` with dotted-path ``overrides`` applied."""
    config = copy.deepcopy(config)
    with config.unlocked():
        for path, value in overrides.items():
            node = config
            *parents, leaf = path.split(".")
            for p in parents:
                node = node[p]
            if leaf not in node:
                raise ValueError(f"sweep override {path!r} names no config field")
            node[leaf] = value
    return config


def _load_sweep(config_flag_value: str) -> list[dict]:
    path = config_flag_value.split(":")[0]
    spec = importlib.util.spec_from_file_location("_sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"--sweep: {path} defines no get_sweep()")
    return module.get_sweep()


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
    from lbgat_jax import train

    config = _CONFIG.value
    if not _SWEEP.value:
        train.train_and_evaluate(config, _WORKDIR.value)
        return
    raw_flag = flags.FLAGS["config"].config_filename
    for i, overrides in enumerate(_load_sweep(raw_flag)):
        name = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in overrides.items())
        workdir = os.path.join(_WORKDIR.value, f"{i:02d}_{name}")
        print(f"== sweep run {i}: {overrides} -> {workdir}")
        train.train_and_evaluate(apply_overrides(config, overrides), workdir)


if __name__ == "__main__":
    app.run(main)
