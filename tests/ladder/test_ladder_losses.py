"""Eq. 6, TRADES+LADDER and the binary (CelebA) head against numpy hand computations."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from advcore.losses import cross_entropy
from configs.ladder import celeba, mnist
from ladder_jax import losses
from ladder_jax.classifier import Classifier, model_spec


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_ce(logits, y):
    return -np.mean(_np_log_softmax(logits)[np.arange(len(y)), y])


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    clean = rng.normal(size=(6, 10)).astype(np.float32) * 3
    gen = rng.normal(size=(6, 10)).astype(np.float32) * 3
    y = rng.integers(0, 10, size=6).astype(np.int32)
    return clean, gen, y


@pytest.mark.parametrize("alpha", [0.5, 0.2])
def test_eq6_matches_hand_computation(batch, alpha):
    clean, gen, y = batch
    expected = alpha * _np_ce(clean, y) + (1 - alpha) * _np_ce(gen, y)
    got = losses.eq6_loss(jnp.asarray(clean), jnp.asarray(gen), jnp.asarray(y), alpha)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_trades_ladder_matches_hand_computation(batch):
    clean, gen, y = batch
    p_log, q_log = _np_log_softmax(clean), _np_log_softmax(gen)
    kl = np.mean(np.sum(np.exp(p_log) * (p_log - q_log), axis=-1))
    beta = 6.0
    expected = _np_ce(clean, y) + beta * kl
    got = losses.trades_ladder_loss(jnp.asarray(clean), jnp.asarray(gen), jnp.asarray(y), beta)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_trades_pgd_plus_ladder_matches_hand_computation(batch):
    clean, gen, y = batch
    pgd = gen[::-1].copy()
    p_log, q_log = _np_log_softmax(clean), _np_log_softmax(pgd)
    kl = np.mean(np.sum(np.exp(p_log) * (p_log - q_log), axis=-1))
    expected = 0.5 * _np_ce(clean, y) + 0.5 * _np_ce(gen, y) + 1.0 * kl
    got = losses.trades_pgd_plus_ladder_loss(jnp.asarray(clean), jnp.asarray(pgd),
                                             jnp.asarray(gen), jnp.asarray(y), 1.0, 0.5)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_binary_head_is_bce_with_logits():
    rng = np.random.default_rng(1)
    logit = rng.normal(size=(8, 1)).astype(np.float32) * 2
    y = rng.integers(0, 2, size=8).astype(np.int32)
    sig = 1 / (1 + np.exp(-logit[:, 0]))
    bce = -np.mean(y * np.log(sig) + (1 - y) * np.log(1 - sig))
    ce = cross_entropy(losses.as_class_logits(jnp.asarray(logit), "binary"), jnp.asarray(y))
    np.testing.assert_allclose(float(ce), bce, rtol=1e-5)


def _classifier(head, legacy_threshold=False):
    """The classifier a config builds (its prediction rule comes from the run spec)."""
    c = celeba.get_config() if head == "binary" else mnist.get_config()
    c.model.legacy_celeba_threshold = legacy_threshold
    return Classifier.from_spec(model_spec(c, 2 if head == "binary" else 10))


def test_binary_prediction_threshold():
    logit = jnp.asarray([[-0.1], [0.0 + 1e-4], [0.3], [0.6]])
    np.testing.assert_array_equal(np.asarray(_classifier("binary").predict_logits(logit)),
                                  [0, 1, 1, 1])
    # The CelebA code's quirk: "smiling" iff logit >= 0.5.
    np.testing.assert_array_equal(
        np.asarray(_classifier("binary", True).predict_logits(logit)), [0, 0, 0, 1])
    softmax = jnp.asarray([[0.1, 2.0, -1.0]])
    assert int(_classifier("softmax").predict_logits(softmax)[0]) == 1
