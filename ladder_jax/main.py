"""LADDER command line: run one stage or all of them on a workdir.

    python -m ladder_jax.main --config=configs/ladder/mnist.py --stage=all --workdir=DIR
    python -m ladder_jax.main --config=configs/ladder/mnist.py:smoke --stage=svm \\
        --workdir=DIR --config.svm.attention_exp=False

Stages: classifier, latents, generator, svm, generate, finetune, evaluate
(``all`` runs ``config.stages`` in order). Finished units are skipped unless
``--force``; see ``ladder_jax/workdir.py``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from ladder_jax.config_schema import STAGES

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/ladder/*.py file (optionally ':variant').",
    lock_config=True)
_STAGE = flags.DEFINE_enum("stage", "all", ("all",) + STAGES, "Stage to run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created if missing).")
_FORCE = flags.DEFINE_bool("force", False, "Redo finished units of the selected stage(s).")

log = logging.getLogger("ladder_jax")


def stage_functions() -> dict:
    from ladder_jax.evaluate import stage_evaluate
    from ladder_jax.finetune import stage_finetune
    from ladder_jax.stages import STAGE_FUNCS

    return {**STAGE_FUNCS, "finetune": stage_finetune, "evaluate": stage_evaluate}


def run(config: Any, workdir: str, stage: str = "all", force: bool = False) -> None:
    """Runs ``stage`` (or every stage of ``config.stages``) on ``workdir``."""
    from ladder_jax.context import make_context

    ctx = make_context(config, workdir)
    funcs = stage_functions()
    selected: Sequence[str] = tuple(config.stages) if stage == "all" else (stage,)
    if stage != "all" and stage not in funcs:
        raise ValueError(f"stage must be one of {('all',) + STAGES}, got {stage!r}")
    for name in STAGES:  # always in pipeline order
        if name not in selected:
            continue
        t0 = time.time()
        log.info("stage %s", name)
        funcs[name](ctx, force)
        ctx.writer.write(0, {f"stage_seconds/{name}": time.time() - t0})
        log.info("stage %s finished in %.1fs", name, time.time() - t0)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required")
    # Orbax and tfds log every file operation at INFO; keep the console for
    # the stage log, the progress bars and the tables.
    absl_logging.set_verbosity(absl_logging.WARNING)
    log.setLevel(logging.INFO)
    # Multi-host runs (JAX_COORDINATOR_ADDRESS etc.) must initialise first.
    from advcore import parallel

    parallel.initialize_distributed()
    run(_CONFIG.value, _WORKDIR.value, _STAGE.value, _FORCE.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
