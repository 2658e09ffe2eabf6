"""Configs: every file and variant validates; bad fields fail with the field's name; CLI flags."""

from __future__ import annotations

import importlib
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from ladder_jax.config_schema import validate_config

DATASETS = ("mnist", "fashion_mnist", "svhn", "celeba", "cifar10")


# The authors' SVM inputs per dataset: their MNIST/SVHN code reads [0, 255]
# tensors, their CelebA/CIFAR-10 code divides by 255.
AUTHORS_SVM_INPUTS = {"mnist": "pixels255", "fashion_mnist": "pixels255", "svhn": "pixels255",
                      "celeba": "none", "cifar10": "none"}


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("variant", [None, "smoke", "smoke,legacy", "adaptive", "paper_eps",
                                     "svm255", "previous_defaults", "legacy,paper_eps,adaptive"])
def test_configs_validate(name, variant):
    c = importlib.import_module(f"configs.ladder.{name}").get_config(variant)
    validate_config(c)
    tokens = (variant or "").split(",")
    if "legacy" in tokens:
        assert c.svm.latent_scaling == AUTHORS_SVM_INPUTS[name]
        assert c.svm.allow_untrained_normals and c.svm.legacy_unordered_svm_cache
        assert c.generate.legacy_uint8_wrap and c.generator.legacy_convt_init
    else:
        assert not c.generate.legacy_uint8_wrap and not c.svm.legacy_unordered_svm_cache
    if not {"legacy", "svm255", "previous_defaults"} & set(tokens):
        # The faithful defaults: a fit that must leave its init.
        assert c.svm.latent_scaling == "standardize" and not c.svm.allow_untrained_normals
    assert c.svm.attention_exp  # the code's behaviour is the default


@pytest.mark.parametrize("name", DATASETS)
def test_defaults_are_the_faithful_method(name):
    c = importlib.import_module(f"configs.ladder.{name}").get_config()
    assert (c.svm.latent_scaling, c.svm.fit_norm, c.svm.allow_untrained_normals) == \
        ("standardize", 1e4, False)
    assert c.generate.eps_unit == "latent_norm"
    assert tuple(c.generate.eps_list) == (0.0,) and c.finetune.eps == 0.0  # calibrated
    assert c.svm.flip_target == 0.5 and c.svm.check_eps[-1] == 1.0
    assert c.evaluate.attack_source == "substitute" and c.evaluate.substitute_model.name == ""


@pytest.mark.parametrize("name", ("mnist", "svhn", "celeba"))
def test_svm255_sets_only_the_authors_pixel_scale(name):
    module = importlib.import_module(f"configs.ladder.{name}")
    base, svm255 = module.get_config().to_dict(), module.get_config("svm255")
    validate_config(svm255)
    svm255 = svm255.to_dict()
    assert svm255["svm"].pop("latent_scaling") == "pixels255"
    assert base["svm"].pop("latent_scaling") == "standardize"
    assert svm255 == base


def test_paper_eps_and_previous_defaults_tokens():
    module = importlib.import_module("configs.ladder.mnist")
    paper = module.get_config("paper_eps")
    assert paper.generate.eps_unit == "raw" and paper.finetune.eps == 0.5
    assert tuple(paper.generate.eps_list) == (0.5, 2.0, 5.0, 10.0, 12.0, 15.0, 18.0, 20.0, 25.0)
    assert tuple(paper.svm.check_eps) == tuple(paper.generate.eps_list)  # raw check grid
    assert (paper.generate.eps_init, paper.generate.eps_step, paper.generate.eps_max) == \
        (0.5, 0.1, 26.0)  # jobgeneration.sh's adaptive search
    assert paper.generate.sweep_eps[-1] == 30.0  # Fig. 10 in raw units
    assert paper.svm.latent_scaling == "standardize"  # only the ε changes
    old = module.get_config("previous_defaults")
    assert (old.svm.latent_scaling, old.svm.allow_untrained_normals) == ("none", True)
    assert (old.generate.eps_unit, tuple(old.generate.eps_list), old.finetune.eps) == \
        ("raw", (0.5,), 0.5)
    assert old.evaluate.attack_source == "vanilla"


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
    ("generate.eps_list", (0.0, 0.0), "generate.eps_list must not repeat values"),
    ("generate.eps_unit", "pixels", r"generate.eps_unit must be one of \('latent_norm', 'raw'\)"),
    ("svm.latent_scaling", "zscore", r"svm.latent_scaling must be one of \('standardize'"),
    ("svm.check_eps", (0.5, 0.1), "svm.check_eps must be increasing"),
    ("svm.flip_target", 0.0, r"svm.flip_target must be a number in \(0, 1\]"),
    ("evaluate.attack_source", "parent", r"evaluate.attack_source must be one of "
                                         r"\('substitute', 'vanilla'\)"),
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


def test_substitute_kwargs_need_a_substitute_name():
    c = importlib.import_module("configs.ladder.mnist").get_config()
    c.evaluate.substitute_model.kwargs = {"width": 2}
    with pytest.raises(ValueError, match="evaluate.substitute_model.kwargs must be empty when "
                                         "evaluate.substitute_model.name is ''"):
        validate_config(c)
    c.evaluate.substitute_model.name = "small_cnn"
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
            "--config.generate.eps_list=(0,0.5,2.0)", "--config.finetune.eps=0.5"]
    monkeypatch.setattr(sys, "argv", argv)
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True)
    fv(argv)
    assert fv.config.svm.attention_exp is False
    assert tuple(fv.config.generate.eps_list) == (0, 0.5, 2.0) and fv.config.finetune.eps == 0.5
    assert fv.config.dataset.train_limit == 400
    validate_config(fv.config)
    argv = ["prog", "--config=configs/ladder/mnist.py", "--config.svm.nonexistent=1"]
    monkeypatch.setattr(sys, "argv", argv)
    fv2 = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv2, lock_config=True)
    with pytest.raises(Exception, match="nonexistent"):
        fv2(argv)


@pytest.mark.parametrize("name", DATASETS)
def test_every_evaluation_attack_builds_its_attack_program(name):
    # The evaluate stage crafts each `evaluate.attacks` key through
    # attack_sets.make_attack_program; building must work for every key of
    # the default config (AutoAttack included), not just the smoke ones.
    from ladder_jax import attack_sets

    c = importlib.import_module(f"configs.ladder.{name}").get_config()
    assert "aa" in c.evaluate.attacks
    for key in c.evaluate.attacks:
        attack, run = attack_sets.make_attack_program(
            None, c.attacks[key].name, attack_sets.overrides_of(c.attacks[key]), 10)
        assert attack.draws_random_targets == (key in ("cw", "jsma")), key
        assert callable(run)
