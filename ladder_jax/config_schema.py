"""Validation of LADDER configs: every field, with errors naming field and valid values.

``validate_config(config)`` is called by the CLI before any stage runs and by
every stage entry point, so a typo or an out-of-range value fails at once
with e.g. ``ValueError("svm.test_size must be a number in (0, 1), got 1.5")``.
Unknown fields are rejected too (a misspelt field in a config file would
otherwise be silently ignored); ``model.kwargs`` and ``attacks.*.overrides``
are free-form keyword dicts.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Mapping

DATASETS = ("mnist", "fashion_mnist", "svhn_cropped", "celeb_a", "cifar10")
SOURCES = ("auto", "tfds", "local")
MODELS = ("lenet", "vgg8_svhn", "vgg11bn_celeba", "cifar_resnet18", "small_cnn")
HEADS = ("softmax", "binary")
STAGES = ("classifier", "latents", "generator", "svm", "generate", "finetune",
          "evaluate")
GENERATOR_ARCHS = ("mnist", "svhn", "celeba", "cifar10")
GENERATOR_KINDS = ("ae", "gan")
GENERATOR_LOSSES = ("l1", "l2")
VARIANTS = ("ladder", "cavRandom", "random", "ladder_gan")
QUANTIZE = ("truncate", "round")
ATTACK_KEYS = ("fgsm", "pgd", "cw", "jsma", "aa")
BASELINE_ROWS = ("fgsm", "pgd", "cw", "jsma")
FINETUNE_ROWS = VARIANTS + ("trades_ladder",) + BASELINE_ROWS
TRADES_MODES = ("kl_pairs", "pgd_kl_plus_ladder")

_FREE_FORM = ("model.kwargs", "attacks.fgsm.overrides", "attacks.pgd.overrides",
              "attacks.cw.overrides", "attacks.jsma.overrides", "attacks.aa.overrides")


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _choice(choices: tuple) -> Callable[[str, Any], None]:
    def check(path, v):
        if v not in choices:
            raise ValueError(f"{path} must be one of {choices}, got {v!r}")

    return check


def _int(lo: int | None = None, hi: int | None = None, extra: tuple = ()) -> Callable:
    def check(path, v):
        if _is_int(v) and v in extra:
            return
        if not _is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            alt = f" (or one of {extra})" if extra else ""
            raise ValueError(f"{path} must be an int {rng}{alt}, got {v!r}")

    return check


def _num(lo: float | None = None, hi: float | None = None, lo_open=False,
         hi_open=False) -> Callable:
    def check(path, v):
        bad = not _is_num(v)
        if not bad and lo is not None:
            bad = v <= lo if lo_open else v < lo
        if not bad and hi is not None:
            bad = v >= hi if hi_open else v > hi
        if bad:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            lo_s = "-inf" if lo is None else lo
            hi_s = "inf" if hi is None else hi
            raise ValueError(f"{path} must be a number in {left}{lo_s}, {hi_s}{right}, got {v!r}")

    return check


def _bool(path, v):
    if not isinstance(v, bool):
        raise ValueError(f"{path} must be True or False, got {v!r}")


def _str(path, v):
    if not isinstance(v, str):
        raise ValueError(f"{path} must be a string, got {v!r}")


def _subset(choices: tuple, allow_empty: bool = False) -> Callable:
    def check(path, v):
        if isinstance(v, str) or not isinstance(v, (tuple, list)):
            raise ValueError(f"{path} must be a tuple of values from {choices}, got {v!r}")
        if not v and not allow_empty:
            raise ValueError(f"{path} must not be empty; valid values: {choices}")
        for item in v:
            if item not in choices:
                raise ValueError(f"{path} entries must be in {choices}, got {item!r}")
        if len(set(v)) != len(v):
            raise ValueError(f"{path} must not repeat entries, got {tuple(v)!r}")

    return check


def _eps_list(path, v):
    if isinstance(v, str) or not isinstance(v, (tuple, list)) or not v:
        raise ValueError(f"{path} must be a non-empty tuple of eps > 0 (or -1 for "
                         f"adaptive), got {v!r}")
    for e in v:
        if not _is_num(e) or not (e > 0 or e == -1):
            raise ValueError(f"{path} entries must be > 0 or -1 (adaptive), got {e!r}")


def _positive_tuple(path, v):
    if isinstance(v, str) or not isinstance(v, (tuple, list)) or not v:
        raise ValueError(f"{path} must be a non-empty tuple of numbers > 0, got {v!r}")
    for e in v:
        if not _is_num(e) or e <= 0:
            raise ValueError(f"{path} entries must be numbers > 0, got {e!r}")


def _mapping(path, v):
    if not isinstance(v, Mapping) and not hasattr(v, "to_dict"):
        raise ValueError(f"{path} must be a dict of keyword arguments, got {v!r}")


SCHEMA: dict[str, Callable[[str, Any], None]] = {
    "seed": _int(0),
    "progress_bar": _bool,
    "stages": _subset(STAGES),
    "dataset.name": _choice(DATASETS),
    "dataset.source": _choice(SOURCES),
    "dataset.data_dir": _str,
    "dataset.train_limit": _int(0),
    "dataset.test_limit": _int(0),
    "model.name": _choice(MODELS),
    "model.kwargs": _mapping,
    "model.head": _choice(HEADS),
    "model.legacy_celeba_threshold": _bool,
    "classifier.epochs": _int(0),
    "classifier.batch_size": _int(1),
    "classifier.lr": _num(0, lo_open=True),
    "classifier.momentum": _num(0, 1, hi_open=True),
    "classifier.weight_decay": _num(0),
    "classifier.train_fraction": _num(0, 1, lo_open=True),
    "classifier.eval_batch_size": _int(1),
    "classifier.checkpoint_every_epochs": _int(1),
    "latents.batch_size": _int(1),
    "generator.arch": _choice(GENERATOR_ARCHS),
    "generator.width_scale": _num(0, lo_open=True),
    "generator.kinds": _subset(GENERATOR_KINDS),
    "generator.loss": _choice(GENERATOR_LOSSES),
    "generator.epochs": _int(0),
    "generator.batch_size": _int(1),
    "generator.lr": _num(0, lo_open=True),
    "generator.b1": _num(0, 1, hi_open=True),
    "generator.b2": _num(0, 1, hi_open=True),
    "generator.train_fraction": _num(0, 1, lo_open=True),
    "generator.gan_lambda": _num(0, lo_open=True),
    "generator.d_lr_scale": _num(0, lo_open=True),
    "generator.d_width_scale": _num(0, lo_open=True),
    "generator.legacy_convt_init": _bool,
    "generator.grid_images": _int(1),
    "generator.mse_eval_limit": _int(1),
    "generator.checkpoint_every_epochs": _int(1),
    "generator.microbatch": _int(0),
    "svm.samples_per_class": _int(2),
    "svm.test_size": _num(0, 1, lo_open=True, hi_open=True),
    "svm.c": _num(0, lo_open=True),
    "svm.lr": _num(0, lo_open=True),
    "svm.batch_size": _int(1),
    "svm.epochs": _int(1),
    "svm.attention_exp": _bool,
    "svm.legacy_pixel_scale": _bool,
    "svm.legacy_unordered_svm_cache": _bool,
    "svm.pair_chunk_size": _int(0),
    "generate.variants": _subset(VARIANTS),
    "generate.per_class_cap": _int(1, extra=(-1,)),
    "generate.eps_list": _eps_list,
    "generate.eps_init": _num(0, lo_open=True),
    "generate.eps_step": _num(0, lo_open=True),
    "generate.eps_max": _num(0, lo_open=True),
    "generate.ite_max_eps": _int(0),
    "generate.cav_random_std": _num(0),
    "generate.random_std": _num(0, lo_open=True),
    "generate.batch_size": _int(1),
    "generate.quantize": _choice(QUANTIZE),
    "generate.legacy_uint8_wrap": _bool,
    "generate.sweep_eps": _positive_tuple,
    "generate.sweep_num_images": _int(1),
    "finetune.rows": _subset(FINETUNE_ROWS, allow_empty=True),
    "finetune.eps": _num(),
    "finetune.alpha": _num(0, 1),
    "finetune.epochs": _int(0),
    "finetune.batch_size": _int(1),
    "finetune.lr": _num(0, lo_open=True),
    "finetune.momentum": _num(0, 1, hi_open=True),
    "finetune.weight_decay": _num(0),
    "finetune.eval_batch_size": _int(1),
    "finetune.checkpoint_every_epochs": _int(1),
    "finetune.trades_mode": _choice(TRADES_MODES),
    "finetune.trades_beta": _num(0),
    "finetune.trades_eps": _num(0, lo_open=True),
    "finetune.trades_step_size": _num(0, lo_open=True),
    "finetune.trades_num_steps": _int(1),
    "evaluate.attacks": _subset(ATTACK_KEYS, allow_empty=True),
    "evaluate.ladder_attack": _bool,
    "evaluate.num_images": _int(0),
    "evaluate.batch_size": _int(1),
    "evaluate.attack_batch_size": _int(1),
}
for _key in ATTACK_KEYS:
    SCHEMA[f"attacks.{_key}.name"] = _str
    SCHEMA[f"attacks.{_key}.overrides"] = _mapping


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    items = config.items() if hasattr(config, "items") else []
    out: dict[str, Any] = {}
    for k, v in items:
        path = f"{prefix}{k}"
        if path in _FREE_FORM:
            out[path] = v
        elif hasattr(v, "items"):
            out.update(_flatten(v, path + "."))
        else:
            out[path] = v
    return out


def validate_config(config: Any) -> None:
    """Raises ``ValueError`` naming the first bad field and its valid values."""
    flat = _flatten(config)
    for path in flat:
        if path not in SCHEMA:
            raise ValueError(
                f"unknown config field {path!r}; valid fields: {', '.join(sorted(SCHEMA))}"
            )
    for path, check in SCHEMA.items():
        if path not in flat:
            raise ValueError(f"config field {path!r} is missing")
        check(path, flat[path])

    # Cross-field rules.
    head = flat["model.head"]
    if flat["dataset.name"] == "celeb_a" and head != "binary":
        raise ValueError("model.head must be 'binary' for dataset.name='celeb_a', "
                         f"got {head!r}")
    if head != "binary" and flat["model.legacy_celeba_threshold"]:
        raise ValueError("model.legacy_celeba_threshold may only be True with "
                         "model.head='binary'")
    if "ladder_gan" in flat["generate.variants"] and "gan" not in flat["generator.kinds"]:
        raise ValueError("generate.variants contains 'ladder_gan', so generator.kinds "
                         f"must contain 'gan'; got {tuple(flat['generator.kinds'])}")
    if "ae" not in flat["generator.kinds"]:
        raise ValueError("generator.kinds must contain 'ae' (the LADDER generator), "
                         f"got {tuple(flat['generator.kinds'])}")
    for row in flat["finetune.rows"]:
        needed = "ladder" if row == "trades_ladder" else row
        if needed in VARIANTS and needed not in flat["generate.variants"]:
            raise ValueError(f"finetune.rows contains {row!r}, which needs generate."
                             f"variants to contain {needed!r}; got "
                             f"{tuple(flat['generate.variants'])}")
    mb = flat["generator.microbatch"]
    if mb and (flat["generator.arch"] != "mnist" or "gan" in flat["generator.kinds"]):
        raise ValueError("generator.microbatch > 0 needs the BatchNorm-free MNIST generator "
                         f"without 'gan' (got arch={flat['generator.arch']!r}, kinds="
                         f"{tuple(flat['generator.kinds'])}); use 0")
    if mb and flat["generator.batch_size"] % mb:
        raise ValueError(f"generator.microbatch ({mb}) must divide generator.batch_size "
                         f"({flat['generator.batch_size']})")
    eps_list = tuple(flat["generate.eps_list"])
    if flat["finetune.eps"] not in eps_list:
        raise ValueError(f"finetune.eps must be one of generate.eps_list {eps_list}, "
                         f"got {flat['finetune.eps']!r}")
    if -1 in eps_list and len(eps_list) > 1:
        raise ValueError("generate.eps_list must be (-1,) alone for adaptive mode, "
                         f"got {eps_list}")
    if flat["generate.eps_init"] > flat["generate.eps_max"]:
        raise ValueError("generate.eps_init must be <= generate.eps_max, got "
                         f"{flat['generate.eps_init']} > {flat['generate.eps_max']}")
