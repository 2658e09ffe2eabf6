"""Validation of LADDER configs: every field, with errors naming field and valid values.

``validate_config(config)`` is called by the CLI before any stage runs and by
every stage entry point, so a typo or an out-of-range value fails at once
with e.g. ``config.svm.test_size must be a number in (0, 1), got 1.5``.
Unknown fields are rejected too (a misspelt field in a config file would
otherwise be silently ignored); ``model.kwargs`` and ``attacks.*.overrides``
are free-form keyword dicts.
"""

from __future__ import annotations

from typing import Any, Mapping

from advcore import config_schema as cs

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
LATENT_SCALINGS = ("standardize", "none", "pixels255")  # attention_svm.LATENT_SCALINGS
EPS_UNITS = ("latent_norm", "raw")  # perturb.EPS_UNITS
ATTACK_SOURCES = ("substitute", "vanilla")

SCHEMA: dict[str, cs.Check] = {
    "seed": cs.integer(0),
    "progress_bar": cs.boolean,
    "stages": cs.subset(STAGES),
    "dataset.name": cs.choice(DATASETS),
    "dataset.source": cs.choice(SOURCES),
    "dataset.data_dir": cs.string,
    "dataset.train_limit": cs.integer(0),
    "dataset.test_limit": cs.integer(0),
    "model.name": cs.choice(MODELS),
    "model.kwargs": cs.mapping,
    "model.head": cs.choice(HEADS),
    "model.legacy_celeba_threshold": cs.boolean,
    "classifier.epochs": cs.integer(0),
    "classifier.batch_size": cs.integer(1),
    "classifier.lr": cs.number(0, lo_open=True),
    "classifier.momentum": cs.number(0, 1, hi_open=True),
    "classifier.weight_decay": cs.number(0),
    "classifier.train_fraction": cs.number(0, 1, lo_open=True),
    "classifier.eval_batch_size": cs.integer(1),
    "classifier.checkpoint_every_epochs": cs.integer(1),
    "latents.batch_size": cs.integer(1),
    "generator.arch": cs.choice(GENERATOR_ARCHS),
    "generator.width_scale": cs.number(0, lo_open=True),
    "generator.kinds": cs.subset(GENERATOR_KINDS),
    "generator.loss": cs.choice(GENERATOR_LOSSES),
    "generator.epochs": cs.integer(0),
    "generator.batch_size": cs.integer(1),
    "generator.lr": cs.number(0, lo_open=True),
    "generator.b1": cs.number(0, 1, hi_open=True),
    "generator.b2": cs.number(0, 1, hi_open=True),
    "generator.train_fraction": cs.number(0, 1, lo_open=True),
    "generator.gan_lambda": cs.number(0, lo_open=True),
    "generator.d_lr_scale": cs.number(0, lo_open=True),
    "generator.d_width_scale": cs.number(0, lo_open=True),
    "generator.legacy_convt_init": cs.boolean,
    "generator.grid_images": cs.integer(1),
    "generator.mse_eval_limit": cs.integer(1),
    "generator.checkpoint_every_epochs": cs.integer(1),
    "generator.microbatch": cs.integer(0),
    "svm.samples_per_class": cs.integer(2),
    "svm.test_size": cs.number(0, 1, lo_open=True, hi_open=True),
    "svm.c": cs.number(0, lo_open=True),
    "svm.lr": cs.number(0, lo_open=True),
    "svm.batch_size": cs.integer(1),
    "svm.epochs": cs.integer(1),
    "svm.attention_exp": cs.boolean,
    "svm.latent_scaling": cs.choice(LATENT_SCALINGS),
    "svm.fit_norm": cs.number(0, lo_open=True),
    "svm.allow_untrained_normals": cs.boolean,
    "svm.check_eps": cs.numbers_tuple(0, lo_open=True, increasing=True),
    "svm.flip_target": cs.number(0, 1, lo_open=True),
    "svm.legacy_unordered_svm_cache": cs.boolean,
    "svm.pair_chunk_size": cs.integer(0),
    "generate.variants": cs.subset(VARIANTS),
    "generate.per_class_cap": cs.integer(1, extra=(-1,)),
    "generate.eps_unit": cs.choice(EPS_UNITS),
    # 0 = the calibrated eps (svm stage), -1 = adaptive
    "generate.eps_list": cs.numbers_tuple(0, extra=(-1,)),
    "generate.eps_init": cs.number(0, lo_open=True),
    "generate.eps_step": cs.number(0, lo_open=True),
    "generate.eps_max": cs.number(0, lo_open=True),
    "generate.ite_max_eps": cs.integer(0),
    "generate.cav_random_std": cs.number(0),
    "generate.random_std": cs.number(0, lo_open=True),
    "generate.batch_size": cs.integer(1),
    "generate.quantize": cs.choice(QUANTIZE),
    "generate.legacy_uint8_wrap": cs.boolean,
    "generate.sweep_eps": cs.numbers_tuple(0, lo_open=True),
    "generate.sweep_num_images": cs.integer(1),
    "finetune.rows": cs.subset(FINETUNE_ROWS, allow_empty=True),
    "finetune.eps": cs.number(),
    "finetune.alpha": cs.number(0, 1),
    "finetune.epochs": cs.integer(0),
    "finetune.batch_size": cs.integer(1),
    "finetune.lr": cs.number(0, lo_open=True),
    "finetune.momentum": cs.number(0, 1, hi_open=True),
    "finetune.weight_decay": cs.number(0),
    "finetune.eval_batch_size": cs.integer(1),
    "finetune.checkpoint_every_epochs": cs.integer(1),
    "finetune.trades_mode": cs.choice(TRADES_MODES),
    "finetune.trades_beta": cs.number(0),
    "finetune.trades_eps": cs.number(0, lo_open=True),
    "finetune.trades_step_size": cs.number(0, lo_open=True),
    "finetune.trades_num_steps": cs.integer(1),
    "evaluate.attacks": cs.subset(ATTACK_KEYS, allow_empty=True),
    "evaluate.attack_source": cs.choice(ATTACK_SOURCES),
    "evaluate.substitute_model.name": cs.choice(("",) + MODELS),
    "evaluate.substitute_model.kwargs": cs.mapping,
    "evaluate.ladder_attack": cs.boolean,
    "evaluate.num_images": cs.integer(0),
    "evaluate.batch_size": cs.integer(1),
    "evaluate.attack_batch_size": cs.integer(1),
}
for _key in ATTACK_KEYS:
    SCHEMA[f"attacks.{_key}.name"] = cs.string
    SCHEMA[f"attacks.{_key}.overrides"] = cs.mapping


def _head_rules(flat: Mapping[str, Any]) -> None:
    head = flat["model.head"]
    if flat["dataset.name"] == "celeb_a" and head != "binary":
        raise cs.ConfigError("config.model.head must be 'binary' for dataset.name='celeb_a', "
                             f"got {head!r}")
    if head != "binary" and flat["model.legacy_celeba_threshold"]:
        raise cs.ConfigError("config.model.legacy_celeba_threshold may only be True with "
                             "model.head='binary'")


def _generator_rules(flat: Mapping[str, Any]) -> None:
    kinds = tuple(flat["generator.kinds"])
    if "ladder_gan" in flat["generate.variants"] and "gan" not in kinds:
        raise cs.ConfigError("config.generate.variants contains 'ladder_gan', so "
                             f"generator.kinds must contain 'gan'; got {kinds}")
    if "ae" not in kinds:
        raise cs.ConfigError("config.generator.kinds must contain 'ae' (the LADDER generator), "
                             f"got {kinds}")
    mb = flat["generator.microbatch"]
    if mb and (flat["generator.arch"] != "mnist" or "gan" in kinds):
        raise cs.ConfigError(
            "config.generator.microbatch > 0 needs the BatchNorm-free MNIST generator without "
            f"'gan' (got arch={flat['generator.arch']!r}, kinds={kinds}); use 0")
    if mb and flat["generator.batch_size"] % mb:
        raise cs.ConfigError(f"config.generator.microbatch ({mb}) must divide "
                             f"generator.batch_size ({flat['generator.batch_size']})")


def _finetune_rows_have_their_data(flat: Mapping[str, Any]) -> None:
    for row in flat["finetune.rows"]:
        needed = "ladder" if row == "trades_ladder" else row
        if needed in VARIANTS and needed not in flat["generate.variants"]:
            raise cs.ConfigError(
                f"config.finetune.rows contains {row!r}, which needs generate.variants to "
                f"contain {needed!r}; got {tuple(flat['generate.variants'])}")


def _eps_rules(flat: Mapping[str, Any]) -> None:
    eps_list = tuple(flat["generate.eps_list"])
    if flat["finetune.eps"] not in eps_list:
        raise cs.ConfigError(f"config.finetune.eps must be one of generate.eps_list {eps_list} "
                             f"(0 = calibrated, -1 = adaptive), got {flat['finetune.eps']!r}")
    if -1 in eps_list and len(eps_list) > 1:
        raise cs.ConfigError("config.generate.eps_list must be (-1,) alone for adaptive mode, "
                             f"got {eps_list}")
    if len(set(eps_list)) != len(eps_list):
        raise cs.ConfigError(f"config.generate.eps_list must not repeat values, got {eps_list}")
    if flat["generate.eps_init"] > flat["generate.eps_max"]:
        raise cs.ConfigError("config.generate.eps_init must be <= generate.eps_max, got "
                             f"{flat['generate.eps_init']} > {flat['generate.eps_max']}")


def _substitute_rules(flat: Mapping[str, Any]) -> None:
    kwargs = flat["evaluate.substitute_model.kwargs"]
    if not flat["evaluate.substitute_model.name"] and kwargs:
        raise cs.ConfigError(
            "config.evaluate.substitute_model.kwargs must be empty when "
            "evaluate.substitute_model.name is '' (the substitute then is the vanilla model's "
            f"architecture with model.kwargs); got {dict(kwargs)!r}")


RULES = (_head_rules, _generator_rules, _finetune_rows_have_their_data, _eps_rules,
         _substitute_rules)


def validate_config(config: Any) -> None:
    """Raises ``ConfigError`` (a ``ValueError``) naming the first bad field and its valid values."""
    cs.validate(config, SCHEMA, RULES)
