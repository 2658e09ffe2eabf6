"""Every LBGAT config loads and validates; every method's smoke variant runs a step."""

import glob
import importlib.util
import os

import jax
import numpy as np
import pytest

from advcore import parallel
from lbgat_jax import train
from lbgat_jax.config_schema import validate_config
from lbgat_jax.methods import METHODS

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "lbgat")
VARIANTS = ["", "smoke", "trades,alpha6", "lbgat_trades,alpha6,wrn34_20", "vanilla_at",
            "lbgat", "lbgat_alp", "alp", "with_ce", "with_ce_adv", "kl_boundary",
            "shared_bn", "trades_schedule,trades,alpha1", "natural"]


def load_module(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONFIG_FILES = sorted(
    p for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
    if not os.path.basename(p).startswith(("_", "common"))
)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_config_and_variant_validates(path, variant):
    module = load_module(path)
    if "ablations" in path:
        variant = ",".join(["cifar100"] + [t for t in variant.split(",") if t])
    config = module.get_config(variant or None)
    config.lock()
    if METHODS[config.method].teacher == "frozen":
        config.teacher.workdirs = "/some/teacher"
    if "shared_bn" in variant and "mnist" in path:
        # SmallCNN has no BatchNorm: the ablation is refused with a clear error.
        with pytest.raises(ValueError, match="shared_conv_separate_bn needs"):
            validate_config(config)
        return
    validate_config(config)


def test_sweep_entries_apply_to_the_config():
    from lbgat_jax.sweeps import apply_overrides

    module = load_module(os.path.join(CONFIG_DIR, "ablations.py"))
    base = module.get_config("cifar10")
    base.lock()
    configs = [apply_overrides(base, o) for o in module.get_sweep()]
    assert [c.method for c in configs] == [
        "vanilla_at", "trades", "lbgat_trades", "lbgat_trades", "lbgat_trades"]
    assert configs[2].loss.boundary == "kl" and configs[3].loss.extra_robust_ce == "clean"
    with pytest.raises(ValueError, match="names no config field"):
        apply_overrides(base, {"loss.alhpa": 1.0})
    from lbgat_jax import sweeps

    path = os.path.join(CONFIG_DIR, "ablations.py")
    assert sweeps.load_sweep(path + ":cifar10") == module.get_sweep()
    assert sweeps.run_name(2, {"loss.boundary": "kl"}) == "02_boundary-kl"
    with pytest.raises(ValueError, match="defines no get_sweep"):
        sweeps.load_sweep(os.path.join(CONFIG_DIR, "cifar10.py"))


@pytest.mark.parametrize("field,value,message", [
    ("method", "lbgta", "config.method must be one of"),
    ("attack.eps", -0.1, r"config.attack.eps must be a number in \[0, 1\]"),
    ("dataset.name", "imagenet", "config.dataset.name must be one of"),
    ("attack.bn_mode", "train", "config.attack.bn_mode must be one of"),
    ("optim.momentum", 1.0, r"config.optim.momentum must be a number in \[0, 1\)"),
    ("loss.boundary", "l1", "config.loss.boundary must be one of"),
])
def test_bad_fields_are_named(field, value, message):
    config = load_module(os.path.join(CONFIG_DIR, "cifar10.py")).get_config()
    node = config
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=message):
        validate_config(config)


@pytest.fixture(scope="module")
def teacher_workdir(tmp_path_factory):
    """A tiny naturally trained model: the frozen BGAT teacher."""
    from configs.lbgat import mnist

    config = mnist.get_config("smoke,natural")
    config.final_eval = False
    workdir = str(tmp_path_factory.mktemp("teacher"))
    train.train_and_evaluate(config, workdir)
    return workdir


@pytest.mark.parametrize("method", sorted(m for m in METHODS if m != "natural"))
def test_smoke_variant_runs_one_step_for_every_method(method, teacher_workdir):
    from configs.lbgat import mnist

    config = mnist.get_config(f"smoke,{method}")
    if METHODS[method].teacher == "frozen":
        config.teacher.workdirs = teacher_workdir
    mesh = parallel.make_mesh()
    run = train.build_run(config, mesh=mesh)
    from advcore import data

    batch = next(data.make_train_iterator(run["train"], global_batch_size=config.batch_size,
                                          seed=0, augment="none"))
    state, metrics = run["train_step"](run["state"], parallel.shard_batch(batch, mesh))
    metrics = jax.device_get(metrics)
    assert np.isfinite(metrics["loss"]) and int(state.step) == 1
    expected_parts = {"lbgat_trades": {"boundary_mse", "natural_ce", "trades_kl"},
                      "bgat": {"boundary_mse"}, "vanilla_at": {"robust_ce_adv"}}
    if method in expected_parts:
        assert {k.split("/")[1] for k in metrics if k.startswith("loss/")} == expected_parts[method]


def test_cifar_smoke_runs_through_the_tfds_path_and_evaluates(tmp_path):
    """CIFAR-10's genuine tfds path under mock data, a shared-BN WRN, and the final table."""
    import tensorflow_datasets as tfds

    from configs.lbgat import cifar10

    config = cifar10.get_config("smoke,shared_bn")
    config.dataset.source = "tfds"
    config.eval.num_examples = 16
    with tfds.testing.mock_data(num_examples=64):
        result = train.train_and_evaluate(config, str(tmp_path))
    rows = result["eval"]
    assert set(rows) == {"lbgat_trades (robust)", "lbgat_trades (natural)"}
    for row in rows.values():
        assert 0 <= row["pgd2"] <= row["clean"] <= 100 and row["n"] == 16
    assert os.path.exists(tmp_path / "eval.md") and os.path.exists(tmp_path / "metrics.jsonl")
