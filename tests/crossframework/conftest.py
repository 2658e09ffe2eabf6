"""Shared fixtures of the PyTorch cross-framework tests: one model pair, one batch.

The robust model M_r is a WRN-10-1, the natural model M_n an LBGAT-layout
ResNet18 at base width 4 (the official architectures, scaled down so that a
CPU runs every case in seconds). Both start from the library's own
initialisation; then their BatchNorm layers are set so that ReLU inputs stay
away from 0 (``shift_batch_norm``) and their running statistics are
calibrated on the batch (``calibrate_running_stats``), as a trained model's
would be. The same variables are copied into the PyTorch reference.

Everything here is created once per session. The JAX training-step side runs
op by op (un-jitted): JAX caches the compiled kernel of every operation by
shape, so after the first method each further method costs about a second,
where a fresh ``jit`` of each method's step would compile for 5-9 s.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from advcore import data as data_lib
from advcore import parallel
from advcore.models import build_model, init_variables
from configs.lbgat import cifar10
from lbgat_jax import train

NUM_CLASSES = 10
BATCH = 8
IMAGE_SHAPE = (32, 32, 3)
ROBUST_MODEL = ("wrn", {"depth": 10, "widen_factor": 1})
NATURAL_MODEL = ("resnet18_lbgat", {"base_width": 4})
# Seed of the images, labels and teacher-forced x'. With it no ReLU input of
# the compared passes comes within 1e-5 of 0 (test_no_relu_input_near_zero).
BATCH_SEED = 4


TORCH_MISSING = ("PyTorch (a test-only dependency) is not installed: these tests compare "
                 "the library with a PyTorch reference")


def import_torch_reference():
    """``torch_reference``; skips the calling test module when PyTorch is absent."""
    pytest.importorskip("torch", reason=TORCH_MISSING)
    import torch_reference

    return torch_reference


def shift_batch_norm(variables: dict, seed: int) -> dict:
    """BN scale γ ~ U(0.8, 1.2) and bias β = γ·U(2, 3), per channel.

    In train mode a BN output is γ·x̂ + β with x̂ standardised over the batch,
    so β ≥ 2γ keeps nearly every ReLU input 2-3 standard deviations away from
    0 (the ReLUs still gate about 1 % of the units). Near 0 the two
    frameworks' fp32 pre-activations differ by up to ~4e-6 (measured on these
    models) and a ReLU gated differently there changes a whole gradient term;
    with β = 0 there are a few such inputs in every batch of this size.
    """
    rng = np.random.default_rng(seed)

    def shift(tree):
        if "scale" in tree and "bias" in tree:
            scale = rng.uniform(0.8, 1.2, np.shape(tree["scale"]))
            bias = scale * rng.uniform(2.0, 3.0, np.shape(tree["bias"]))
            return {**tree, "scale": scale.astype(np.float32), "bias": bias.astype(np.float32)}
        return {k: shift(v) if isinstance(v, dict) else v for k, v in tree.items()}

    return {**variables, "params": shift(_as_dict(variables["params"]))}


def calibrate_running_stats(module, variables: dict, x: np.ndarray, seed: int) -> dict:
    """Running statistics near ``x``'s batch statistics, as a trained model's would be.

    One train-mode pass from running mean 0 / variance 1 gives
    ``0.1·batch_mean`` and ``0.9 + 0.1·batch_var`` (PyTorch momentum), from
    which the batch statistics are recovered; they are then perturbed
    (mean + 0.1·std·N(0, 1), variance × U(0.8, 1.25)) so that eval mode is not
    train mode. Eval-mode ReLU inputs then stay away from 0 like the
    train-mode ones, and the eval-mode attacks see a realistic model.
    """
    rng = np.random.default_rng(seed)
    reset = _map_stats(_as_dict(variables["batch_stats"]),
                       lambda m, v: (np.zeros_like(m), np.ones_like(v)))
    _, updates = module.apply({"params": variables["params"], "batch_stats": reset}, x,
                              train=True, mutable=["batch_stats"])

    def perturb(mean, var):
        batch_mean = 10.0 * np.asarray(mean, np.float64)
        batch_var = 10.0 * (np.asarray(var, np.float64) - 0.9)
        mean = batch_mean + 0.1 * np.sqrt(batch_var) * rng.normal(size=batch_mean.shape)
        var = batch_var * rng.uniform(0.8, 1.25, batch_var.shape)
        return mean.astype(np.float32), var.astype(np.float32)

    stats = _map_stats(_as_dict(jax.device_get(updates["batch_stats"])), perturb)
    return {"params": variables["params"], "batch_stats": stats}


def _as_dict(tree) -> dict:
    return {k: _as_dict(v) if hasattr(v, "items") else np.asarray(v) for k, v in tree.items()}


def _map_stats(tree: dict, fn) -> dict:
    if "mean" in tree and "var" in tree:
        mean, var = fn(tree["mean"], tree["var"])
        return {**tree, "mean": mean, "var": var}
    return {k: _map_stats(v, fn) for k, v in tree.items()}


@dataclasses.dataclass(frozen=True)
class ModelPair:
    """The JAX modules and variables of M_r and M_n, and torch copies on demand."""

    robust_module: object
    natural_module: object
    robust_vars: dict
    natural_vars: dict

    def torch_robust(self):
        tr = import_torch_reference()
        model = tr.WideResNet(ROBUST_MODEL[1]["depth"], ROBUST_MODEL[1]["widen_factor"],
                              NUM_CLASSES)
        tr.load_flax_variables(model, self.robust_vars)
        return model

    def torch_natural(self):
        tr = import_torch_reference()
        model = tr.ResNetCifar(NUM_CLASSES, NATURAL_MODEL[1]["base_width"])
        tr.load_flax_variables(model, self.natural_vars)
        return model


def make_pair(x: np.ndarray) -> ModelPair:
    """The model pair, its running statistics calibrated on the images ``x``."""
    robust = build_model(ROBUST_MODEL[0], NUM_CLASSES, **ROBUST_MODEL[1])
    natural = build_model(NATURAL_MODEL[0], NUM_CLASSES, **NATURAL_MODEL[1])
    sample = (1, *IMAGE_SHAPE)
    robust_vars = shift_batch_norm(init_variables(robust, jax.random.PRNGKey(0), sample), 1)
    natural_vars = shift_batch_norm(init_variables(natural, jax.random.PRNGKey(1), sample), 2)
    robust_vars = calibrate_running_stats(robust, robust_vars, x, 3)
    natural_vars = calibrate_running_stats(natural, natural_vars, x, 4)
    return ModelPair(robust, natural, robust_vars, natural_vars)


def method_config(method: str, alpha: float = -1.0):
    """The library's CIFAR-10 config of ``method`` with this folder's models and batch."""
    config = cifar10.get_config(method)
    config.model.robust.name, config.model.robust.kwargs = ROBUST_MODEL
    config.model.natural.name, config.model.natural.kwargs = NATURAL_MODEL
    config.loss.alpha = alpha
    config.batch_size = BATCH
    return config


def smooth_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """Images on the 8-bit grid (like decoded CIFAR) with image-level structure:
    a colour, a smooth pattern (4x4 noise upsampled to 32x32) and fine noise.

    Independent uniform pixels would give every image nearly the same
    features, hence the same prediction with the same margin; these give the
    models different predictions and margins of the size an ε = 0.031
    attack changes, so robust-accuracy flags can differ between examples.
    """
    colour = rng.uniform(0.25, 0.75, (n, 1, 1, 3))
    pattern = np.kron(rng.normal(size=(n, 4, 4, 3)), np.ones((1, 8, 8, 1)))
    fine = rng.normal(size=(n, *IMAGE_SHAPE))
    pixels = np.clip(colour + 0.2 * pattern + 0.05 * fine, 0.0, 1.0)
    return (np.round(pixels * 255.0) / 255.0).astype(np.float32)


def make_batch() -> dict:
    """The images, labels, and a teacher-forced x' = clip(x ± 0.031) with random
    signs (a corner of the ε-ball)."""
    rng = np.random.default_rng(BATCH_SEED)
    x = smooth_images(rng, BATCH)
    y = rng.integers(0, NUM_CLASSES, (BATCH,)).astype(np.int32)
    signs = np.sign(rng.normal(size=x.shape)).astype(np.float32)
    x_adv = np.clip(x + np.float32(0.031) * signs, 0.0, 1.0).astype(np.float32)
    return {"image": x, "label": y, "x_adv": x_adv}


@pytest.fixture(scope="module", autouse=True)
def reference_settings():
    """The reference's torch settings for this folder's tests only."""
    with import_torch_reference().reference_settings():
        yield


@pytest.fixture(scope="session")
def batch() -> dict:
    return make_batch()


@pytest.fixture(scope="session")
def pair(batch) -> ModelPair:
    return make_pair(batch["image"])


@pytest.fixture(scope="session")
def run_optimizer(batch):
    """``(tx, lr_schedule)`` exactly as a training run builds them
    (``lbgat_jax.train.build_run``), over a stand-in training split made of
    this batch (no dataset is read). Every method here shares the optimizer
    config, so one run serves all of them."""
    images = np.round(batch["image"] * 255.0).astype(np.uint8)
    split = data_lib.ArrayDataset(images, batch["label"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data_lib, "load_split", lambda *args, **kwargs: split)
        run = train.build_run(method_config("lbgat_trades"),
                              mesh=parallel.make_mesh(jax.devices()[:1]))
    return run["tx"], run["lr_schedule"]
