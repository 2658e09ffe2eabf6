"""LADDER command line: run one stage or all of them on a workdir.

    python -m ladder_jax.main --config=configs/ladder/mnist.py --stage=all --workdir=DIR
    python -m ladder_jax.main --config=configs/ladder/mnist.py:smoke --stage=svm \\
        --workdir=DIR --config.svm.attention_exp=False

Stages: classifier, latents, generator, svm, generate, finetune, evaluate
(``all`` runs ``config.stages`` in order). Finished units are skipped; a
stage whose inputs are missing or stale is refused with the commands that
redo them; ``--force`` redoes the selected stage's units from scratch
(``ladder_jax/runner.py``). Common flags (``--debug``, ``--cpu_devices``, the
compilation cache, multi-host) are ``advcore.cli``'s; a user error ends in
one line and exit code 1.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

import jax
from absl import flags
from ml_collections import config_flags

from advcore import cli
from ladder_jax import runner
from ladder_jax.config_schema import STAGES

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/ladder/*.py file (optionally ':variant').",
    lock_config=True)
_STAGE = flags.DEFINE_enum("stage", "all", ("all",) + STAGES, "Stage to run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created if missing).")
_FORCE = flags.DEFINE_bool("force", False, "Redo the selected stage(s)' units from scratch "
                           "(their previous outputs are moved to <workdir>/discarded/).")

log = logging.getLogger("ladder_jax")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {list(argv[1:])}")
    if _CONFIG.value is None:
        raise ValueError("--config is required, e.g. --config=configs/ladder/mnist.py:smoke")
    if not _WORKDIR.value:
        raise ValueError("--workdir is required")
    cli.setup("ladder_jax.main")
    log.setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)
    log.info("config:\n%s", _CONFIG.value)
    runner.run(_CONFIG.value, _WORKDIR.value, _STAGE.value, _FORCE.value,
               command=runner.command_from_argv(sys.argv))


def run() -> None:
    """Console-script entry point."""
    cli.run(main)


if __name__ == "__main__":
    run()
