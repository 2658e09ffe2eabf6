"""Validates an LBGAT config before anything is built.

Every check raises ``ValueError`` naming the config field, its value and the
valid range, so a typo on the command line fails in the first second rather
than after an hour of compilation.
"""

from __future__ import annotations

from typing import Any, Iterable

from lbgat_jax.methods import METHODS


def _choice(field: str, value: Any, valid: Iterable[Any]) -> None:
    valid = list(valid)
    if value not in valid:
        raise ValueError(f"config.{field} must be one of {valid}, got {value!r}")


def _at_least(field: str, value: Any, low: float, strict: bool = False) -> None:
    if strict and not value > low:
        raise ValueError(f"config.{field} must be > {low}, got {value!r}")
    if not strict and not value >= low:
        raise ValueError(f"config.{field} must be >= {low}, got {value!r}")


def validate_config(c) -> None:
    from advcore.data import DATASET_NAMES

    _choice("method", c.method, sorted(METHODS))
    spec = METHODS[c.method]
    _choice("dataset.name", c.dataset.name, DATASET_NAMES)
    _choice("dataset.source", c.dataset.source, ["auto", "tfds", "local"])
    _choice("dataset.augment", c.dataset.augment, ["default", "crop_flip", "none"])
    _at_least("dataset.train_limit", c.dataset.train_limit, 0)

    a = c.attack
    if not 0.0 <= a.eps <= 1.0:
        raise ValueError(f"config.attack.eps must be in [0, 1] (pixel units), got {a.eps}")
    _at_least("attack.step_size", a.step_size, 0.0, strict=True)
    _at_least("attack.num_steps", a.num_steps, 1)
    _choice("attack.norm", a.norm, ["linf", "l2"])
    _choice("attack.loss", a.loss, ["auto", "ce", "kl", "cw"])
    _choice("attack.random_start", a.random_start, ["none", "uniform", "normal"])
    _at_least("attack.init_std", a.init_std, 0.0)
    _choice("attack.bn_mode", a.bn_mode, ["eval", "batch_stats"])
    _at_least("attack.unroll", a.unroll, 1)

    if not (c.loss.alpha >= 0 or c.loss.alpha == -1):
        raise ValueError(f"config.loss.alpha must be >= 0 (or -1 = method default), got {c.loss.alpha}")
    _at_least("loss.natural_ce_weight", c.loss.natural_ce_weight, 0.0)
    _choice("loss.boundary", c.loss.boundary, ["mse", "kl"])
    _choice("loss.extra_robust_ce", c.loss.extra_robust_ce, ["none", "clean", "adv"])

    o = c.optim
    _at_least("optim.lr", o.lr, 0.0)
    if not 0.0 <= o.momentum < 1.0:
        raise ValueError(f"config.optim.momentum must be in [0, 1), got {o.momentum}")
    _at_least("optim.weight_decay", o.weight_decay, 0.0)
    _at_least("optim.warmup_epochs", o.warmup_epochs, 0)
    _at_least("optim.warmup_lr", o.warmup_lr, 0.0)
    _at_least("optim.decay_factor", o.decay_factor, 0.0)
    if list(o.decay_epochs) != sorted(o.decay_epochs) or any(e < 0 for e in o.decay_epochs):
        raise ValueError(
            f"config.optim.decay_epochs must be increasing non-negative epochs, got {o.decay_epochs}"
        )

    _at_least("num_epochs", c.num_epochs, 1)
    _at_least("batch_size", c.batch_size, 1)
    _choice("precision", c.precision, ["float32", "bfloat16"])
    _at_least("eval.eps", c.eval.eps, 0.0)
    _at_least("eval.num_examples", c.eval.num_examples, 0)
    _at_least("eval.batch_size", c.eval.batch_size, 1)
    _at_least("eval_every_epochs", c.eval_every_epochs, 0)
    _at_least("log_every_steps", c.log_every_steps, 1)
    _at_least("checkpoint_every_steps", c.checkpoint_every_steps, 0)
    _at_least("keep_checkpoints", c.keep_checkpoints, 1)
    _at_least("stop_after_steps", c.stop_after_steps, 0)

    if c.shared_conv_separate_bn:
        if c.model.robust.name != "wrn":
            raise ValueError(
                "config.shared_conv_separate_bn needs config.model.robust.name='wrn', "
                f"got {c.model.robust.name!r}"
            )
        if spec.teacher != "learnable":
            raise ValueError(
                "config.shared_conv_separate_bn needs a learnable-teacher method "
                f"(lbgat, lbgat_trades, lbgat_alp), got method={c.method!r}"
            )
    if spec.teacher == "frozen" and not c.teacher.workdirs:
        raise ValueError(
            f"config.teacher.workdirs must list the frozen teacher runs for method={c.method!r} "
            "(comma-separated workdirs of runs trained with method='natural')"
        )
