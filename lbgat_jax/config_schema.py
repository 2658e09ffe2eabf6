"""The LBGAT-family config schema: every field, its valid values, and what may change on resume.

``validate_config(config)`` runs before data or models are built (the CLI
calls it first), so a typo fails in the first second with one line such as
``config.optim.lr must be a number in [0, inf), got inf`` instead of after an
hour of training. The evaluation settings are checked here too, including
that every name in ``eval.attacks`` builds an attack at ``eval.eps``.
"""

from __future__ import annotations

from typing import Any, Mapping

from advcore import config_schema as cs
from advcore.attacks import make_attack
from advcore.data.info import DATASET_NAMES
from advcore.models import MODEL_NAMES
from lbgat_jax.methods import METHODS

SCHEMA: dict[str, cs.Check] = {
    "method": cs.choice(sorted(METHODS)),
    "seed": cs.integer(0),
    "dataset.name": cs.choice(DATASET_NAMES),
    "dataset.source": cs.choice(("auto", "tfds", "local")),
    "dataset.data_dir": cs.string,
    "dataset.train_split": cs.string,
    "dataset.test_split": cs.string,
    "dataset.train_limit": cs.integer(0),
    "dataset.augment": cs.choice(("default", "crop_flip", "none")),
    "model.robust.name": cs.string,
    "model.robust.kwargs": cs.mapping,
    "model.natural.name": cs.string,
    "model.natural.kwargs": cs.mapping,
    "shared_conv_separate_bn": cs.boolean,
    "teacher.workdirs": cs.string,
    "attack.eps": cs.number(0.0, 1.0),
    "attack.step_size": cs.number(0.0, lo_open=True),
    "attack.num_steps": cs.integer(1),
    "attack.norm": cs.choice(("linf", "l2")),
    "attack.loss": cs.choice(("auto", "ce", "kl", "cw")),
    "attack.random_start": cs.choice(("none", "uniform", "normal")),
    "attack.init_std": cs.number(0.0),
    "attack.bn_mode": cs.choice(("eval", "batch_stats")),
    "attack.unroll": cs.integer(1),
    "loss.alpha": cs.number(0.0, extra=(-1,)),
    "loss.natural_ce_weight": cs.number(0.0),
    "loss.boundary": cs.choice(("mse", "kl")),
    "loss.extra_robust_ce": cs.choice(("none", "clean", "adv")),
    "loss.skip_unused_clean_pass": cs.boolean,
    "optim.lr": cs.number(0.0),
    "optim.momentum": cs.number(0.0, 1.0, hi_open=True),
    "optim.weight_decay": cs.number(0.0),
    "optim.nesterov": cs.boolean,
    "optim.warmup_epochs": cs.integer(0),
    "optim.warmup_lr": cs.number(0.0),
    "optim.decay_epochs": cs.numbers_tuple(0, allow_empty=True, increasing=True),
    "optim.decay_factor": cs.number(0.0),
    "num_epochs": cs.integer(1),
    "batch_size": cs.integer(1),
    "precision": cs.choice(("float32", "bfloat16")),
    "eval.attacks": cs.string,
    "eval.eps": cs.number(0.0, 1.0),
    "eval.step_size": cs.number(0.0),
    "eval.num_examples": cs.integer(0),
    "eval.batch_size": cs.integer(1),
    "eval_every_epochs": cs.integer(0),
    "final_eval": cs.boolean,
    "log_every_steps": cs.integer(1),
    "checkpoint_every_steps": cs.integer(0),
    "keep_checkpoints": cs.integer(1),
    "progress_bar": cs.boolean,
    "tensorboard": cs.boolean,
    "stop_after_steps": cs.integer(0),
}

# Fields that do not change what a step computes, so a run may resume with
# other values: how long to train, and how often to log, evaluate and save.
RESUMABLE = (
    "num_epochs", "eval", "eval_every_epochs", "final_eval", "log_every_steps",
    "checkpoint_every_steps", "keep_checkpoints", "progress_bar", "tensorboard",
    "stop_after_steps",
)


def _decay_epochs_are_epochs(flat: Mapping[str, Any]) -> None:
    if any(not cs.is_int(e) for e in flat["optim.decay_epochs"]):
        raise cs.ConfigError("config.optim.decay_epochs must be increasing non-negative epochs "
                             f"(ints), got {tuple(flat['optim.decay_epochs'])}")


def _shared_bn_needs_a_learnable_wrn(flat: Mapping[str, Any]) -> None:
    if not flat["shared_conv_separate_bn"]:
        return
    if flat["model.robust.name"] != "wrn":
        raise cs.ConfigError("config.shared_conv_separate_bn needs config.model.robust.name="
                             f"'wrn', got {flat['model.robust.name']!r}")
    if METHODS[flat["method"]].teacher != "learnable":
        raise cs.ConfigError(
            "config.shared_conv_separate_bn needs a learnable-teacher method "
            f"(lbgat, lbgat_trades, lbgat_alp), got method={flat['method']!r}")


def _frozen_teacher_needs_workdirs(flat: Mapping[str, Any]) -> None:
    if METHODS[flat["method"]].teacher == "frozen" and not flat["teacher.workdirs"]:
        raise cs.ConfigError(
            f"config.teacher.workdirs must list the frozen teacher runs for method="
            f"{flat['method']!r} (comma-separated workdirs of runs trained with "
            "method='natural')")


def _models_exist(flat: Mapping[str, Any]) -> None:
    for which in ("robust", "natural"):
        cs.choice(MODEL_NAMES)(f"config.model.{which}.name", flat[f"model.{which}.name"])


def _eval_attacks_build(flat: Mapping[str, Any]) -> None:
    """Every ``eval.attacks`` entry must build at the run's threat model, now."""
    overrides = {"eps": flat["eval.eps"]}
    if flat["eval.step_size"]:
        overrides["step_size"] = flat["eval.step_size"]
    for name in (a.strip() for a in flat["eval.attacks"].split(",") if a.strip()):
        try:
            make_attack(name, **overrides)
        except ValueError as err:
            raise cs.ConfigError(f"config.eval.attacks entry {name!r}: {err}") from None


RULES = (_decay_epochs_are_epochs, _shared_bn_needs_a_learnable_wrn,
         _frozen_teacher_needs_workdirs, _models_exist, _eval_attacks_build)


def validate_config(config: Any) -> None:
    """Raises ``ConfigError`` (a ``ValueError``) naming the first bad field."""
    cs.validate(config, SCHEMA, RULES)
