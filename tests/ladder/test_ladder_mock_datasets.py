"""SVHN / CelebA / CIFAR-10 configs and their data plumbing under ``tfds.testing.mock_data``.

Those datasets are tfds-only here, so the mock checks that each config's
dataset loads through the stage context, that the classifier, generator and
SVM shapes line up with it, and (SVHN, the cheapest model to compile) that
the classifier -> latents -> SVM stages run on it.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from ladder_jax import generators  # noqa: E402
from ladder_jax.context import make_context  # noqa: E402


def _config(name):
    c = importlib.import_module(f"configs.ladder.{name}").get_config("smoke")
    c.dataset.source = "tfds"
    c.dataset.train_limit = 24
    c.dataset.test_limit = 8
    return c


@pytest.mark.parametrize("name,dataset,logits", [("svhn", "svhn_cropped", 10),
                                                 ("celeba", "celeb_a", 1),
                                                 ("cifar10", "cifar10", 10)])
def test_data_and_shapes_line_up(tmp_path, name, dataset, logits):
    c = _config(name)
    assert c.dataset.name == dataset
    with tfds.testing.mock_data(num_examples=24):
        ctx = make_context(c, str(tmp_path))
        train, test = ctx.train_set(), ctx.test_set()
    assert train.images.shape == (24,) + ctx.image_shape and train.images.dtype == np.uint8
    assert len(test) == 8 and train.labels.max() < ctx.num_classes
    clf = ctx.classifier
    x = jnp.zeros((2,) + ctx.image_shape)
    variables = jax.eval_shape(lambda: clf.module.init(jax.random.key(0), x, train=False))
    z = jax.eval_shape(lambda v: clf.module.apply(v, x, train=False, method="features"),
                       variables)
    out = jax.eval_shape(lambda v, z: clf.module.apply(v, z, train=False, method="classify"),
                         variables, z)
    assert out.shape == (2, logits)
    # The generator maps this classifier's latents back to the dataset's images.
    gen = generators.build_generator(c.generator.arch, c.generator.width_scale)
    g_vars = jax.eval_shape(lambda: gen.init(jax.random.key(0), jnp.zeros(z.shape)))
    img = jax.eval_shape(lambda v: gen.apply(v, jnp.zeros(z.shape)), g_vars)
    assert img.shape == (2,) + ctx.image_shape
    # The full-width model's latent has the paper's dimension.
    spec = generators.GENERATOR_SPECS[c.generator.arch]
    full = importlib.import_module(f"configs.ladder.{name}").get_config()
    full_clf = make_context(full, str(tmp_path / "full")).classifier
    v_full = jax.eval_shape(lambda: full_clf.module.init(jax.random.key(0), x, train=False))
    z_full = jax.eval_shape(
        lambda v: full_clf.module.apply(v, x, train=False, method="features"), v_full)
    assert z_full.shape == (2, spec.z_dim)


def test_svhn_classifier_latents_svm_stages_on_mock_data(tmp_path):
    from ladder_jax.runner import run_stages

    c = _config("svhn")
    c.classifier.epochs = 0  # an initialised model is enough for the plumbing
    c.svm.samples_per_class = 2
    c.svm.test_size = 0.5
    c.svm.batch_size = 2
    with tfds.testing.mock_data(num_examples=24):
        ctx = make_context(c, str(tmp_path))
        # Mock labels are random; give every class two examples for the SVMs.
        ctx.train_set()
        object.__setattr__(ctx._train, "labels",
                           np.tile(np.arange(10, dtype=np.int32), 3)[:24])
        ctx.test_set()
        run_stages(ctx, ("classifier", "latents", "svm"))
    z = np.load(tmp_path / "latents" / "train_z.npy")
    assert z.shape == (24, 256)  # 4096 * width_multiplier 1/16
    w = np.load(tmp_path / "svm" / "w.npy")
    assert w.shape == (90, 256) and np.isfinite(w).all()
    assert (tmp_path / "models" / "vanilla" / "checkpoints").is_dir()
    # The substitute of the black-box protocol: the same recipe (its own 30 % subset).
    assert (tmp_path / "models" / "substitute" / "checkpoints").is_dir()
