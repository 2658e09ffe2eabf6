"""Configs: every file and variant validates; bad fields fail with the field's name; CLI flags."""

from __future__ import annotations

import importlib
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from ladder_jax.config_schema import validate_config

DATASETS = ("mnist", "fashion_mnist", "svhn", "celeba", "cifar10")


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("variant", [None, "smoke", "smoke,legacy", "adaptive", "paper_eps"])
def test_configs_validate(name, variant):
    c = importlib.import_module(f"configs.ladder.{name}").get_config(variant)
    validate_config(c)
    if variant and "legacy" in variant:
        assert c.svm.legacy_pixel_scale and c.svm.legacy_unordered_svm_cache
        assert c.generate.legacy_uint8_wrap and c.generator.legacy_convt_init
    else:
        assert not c.svm.legacy_pixel_scale and not c.generate.legacy_uint8_wrap
    assert c.svm.attention_exp  # the code's behaviour is the default


@pytest.mark.parametrize("name", ("mnist", "svhn"))
def test_svm255_turns_on_only_the_svm_pixel_scale(name):
    module = importlib.import_module(f"configs.ladder.{name}")
    base, svm255 = module.get_config().to_dict(), module.get_config("svm255")
    validate_config(svm255)
    svm255 = svm255.to_dict()
    assert svm255["svm"].pop("legacy_pixel_scale") is True
    assert base["svm"].pop("legacy_pixel_scale") is False
    assert svm255 == base


def test_paper_hyperparameters():
    mnist = importlib.import_module("configs.ladder.mnist").get_config()
    assert (mnist.classifier.lr, mnist.classifier.momentum, mnist.classifier.batch_size) == \
        (0.01, 0.5, 64)
    assert mnist.generate.per_class_cap * 10 == 4500 and mnist.finetune.alpha == 0.5
    assert (mnist.svm.c, mnist.svm.lr, mnist.svm.batch_size, mnist.svm.epochs,
            mnist.svm.samples_per_class) == (0.01, 0.01, 1, 10, 200)
    svhn = importlib.import_module("configs.ladder.svhn").get_config()
    assert (svhn.finetune.lr, svhn.finetune.batch_size, svhn.finetune.weight_decay) == \
        (0.001, 128, 5e-4)
    assert svhn.classifier.train_fraction == 0.3
    celeba = importlib.import_module("configs.ladder.celeba").get_config()
    assert celeba.model.head == "binary" and not celeba.model.legacy_celeba_threshold
    cifar = importlib.import_module("configs.ladder.cifar10").get_config()
    assert cifar.generator.b1 == 0.5 and cifar.generate.per_class_cap == -1
    assert cifar.generator.gan_lambda > 0 and "gan" in cifar.generator.kinds


@pytest.mark.parametrize("field,value,message", [
    ("svm.test_size", 1.5, r"svm.test_size must be a number in \(0, 1\)"),
    ("generator.loss", "l3", r"generator.loss must be one of \('l1', 'l2'\)"),
    ("dataset.name", "imagenet", "dataset.name must be one of"),
    ("generate.variants", ("ladder", "bogus"), "generate.variants entries must be in"),
    ("generate.per_class_cap", 0, "generate.per_class_cap must be an int >= 1"),
    ("finetune.eps", 3.0, "finetune.eps must be one of generate.eps_list"),
    ("generator.gan_lambda", 0.0, "generator.gan_lambda must be a number in"),
    ("model.head", "binary", "legacy_celeba_threshold|binary"),
])
def test_bad_values_name_the_field(field, value, message):
    c = importlib.import_module("configs.ladder.mnist").get_config()
    section, leaf = field.split(".")
    c[section][leaf] = value
    if field == "model.head":  # a cross-field rule: binary head on MNIST is allowed...
        validate_config(c)
        c.model.legacy_celeba_threshold = True
        c.model.head = "softmax"
        message = "legacy_celeba_threshold may only be True"
    with pytest.raises(ValueError, match=message):
        validate_config(c)


def test_unknown_field_and_bad_variant():
    c = importlib.import_module("configs.ladder.mnist").get_config()
    c.svm.unlock()
    c.svm.gamma = 1.0
    with pytest.raises(ValueError, match="unknown config field 'svm.gamma'"):
        validate_config(c)
    with pytest.raises(ValueError, match="config variant must be one of"):
        importlib.import_module("configs.ladder.mnist").get_config("smok")


def test_cli_config_flags_override_and_lock(monkeypatch):
    # config_flags reads the overrides from sys.argv, as under absl.app.run.
    argv = ["prog", "--config=configs/ladder/mnist.py:smoke", "--config.svm.attention_exp=False",
            "--config.generate.eps_list=(0.5,2.0)"]
    monkeypatch.setattr(sys, "argv", argv)
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True)
    fv(argv)
    assert fv.config.svm.attention_exp is False
    assert tuple(fv.config.generate.eps_list) == (0.5, 2.0)
    assert fv.config.dataset.train_limit == 400
    validate_config(fv.config)
    argv = ["prog", "--config=configs/ladder/mnist.py", "--config.svm.nonexistent=1"]
    monkeypatch.setattr(sys, "argv", argv)
    fv2 = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv2, lock_config=True)
    with pytest.raises(Exception, match="nonexistent"):
        fv2(argv)
