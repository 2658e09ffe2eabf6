"""The svm stage's direction check: hand-computed flip fractions, calibration, loud failure."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from advcore import cli
from ladder_jax import attention_svm as A
from ladder_jax import direction_check as C


def _tiny_problem():
    """Two classes in 2-d; the head predicts class 1 iff z1 > z0.

    The SVM of (0 -> 1) has w = (-1, 1), mu = 0, sigma = 1 and an attention
    with zero weights, so beta = softmax(0) = (1/2, 1/2) exactly
    (attention_exp=False) and beta * d = (-1/2, 1/2). Its reverse pair
    (1 -> 0) has w = (1, -1).
    """
    zeros = np.zeros((2, 2, 2), np.float32)
    params = A.SVMParams(att_w=zeros, att_b=np.zeros((2, 2), np.float32),
                         w=np.array([[-1.0, 1.0], [1.0, -1.0]], np.float32),
                         b=np.zeros(2, np.float32))
    svms = A.LatentSVM(params, A.LatentScale(np.zeros((2, 2), np.float32),
                                             np.ones((2, 2), np.float32)))
    pairs = A.ordered_pairs(2)  # (0, 1), (1, 0)
    # Class-0 latents at gaps z0 - z1 = 0.5, 1, 2, 4; one class-1 latent at gap -1.
    z = np.array([[2.5, 2.0], [3.0, 2.0], [4.0, 2.0], [6.0, 2.0], [1.0, 2.0]], np.float32)
    sources = np.array([0, 0, 0, 0, 1])
    targets = 1 - sources
    return svms, pairs, z, sources, targets


def _predict(z):
    return (z[:, 1] > z[:, 0]).astype(jnp.int32)


def test_flip_fractions_match_a_hand_computation():
    svms, pairs, z, sources, targets = _tiny_problem()
    r = 2.0 * np.sqrt(2.0)  # so a latent_norm step of eps moves z1 - z0 by 4 * eps
    eps = (0.1, 0.2, 0.3, 0.6, 1.2)
    check = C.direction_check(_predict, svms, pairs, z, sources, targets, eps_values=eps,
                              eps_unit="latent_norm", latent_norm=r, use_exp=False,
                              rng=np.random.default_rng(0))
    # A step of eps along unit((-1, 1)) * r moves the gap z0 - z1 by 4 * eps.
    # Class-0 rows (gaps 0.5, 1, 2, 4) flip when 4 * eps > gap; the class-1
    # row (gap -1, pushed along (1, -1)) flips when 4 * eps >= 1 (ties go to
    # class 0: z1 > z0 is false at equality).
    gaps0 = np.array([0.5, 1.0, 2.0, 4.0])
    expected = [(np.sum(4 * e > gaps0) + (4 * e >= 1.0)) / 5 for e in eps]
    np.testing.assert_allclose(check["ladder_flip"], expected)
    np.testing.assert_allclose(check["ladder_to_target"], expected)  # 2 classes: flip = target
    assert check["eps"] == list(eps) and check["num_latents"] == 5
    norms = np.linalg.norm(z, axis=1)
    np.testing.assert_allclose(check["relative_step"], [e * r * np.mean(1 / norms) for e in eps],
                               rtol=1e-5)
    # The raw unit: step = beta * d = (-1/2, 1/2), so eps moves the gap by eps:
    # at 0.6 only the gap-0.5 row flips; at 1.5 the gaps 0.5 and 1 and the
    # class-1 row do.
    raw = C.direction_check(_predict, svms, pairs, z, sources, targets, eps_values=(0.6, 1.5),
                            eps_unit="raw", latent_norm=r, use_exp=False,
                            rng=np.random.default_rng(0))
    np.testing.assert_allclose(raw["ladder_flip"], [1 / 5, 3 / 5])


def test_random_baseline_has_the_same_length_per_latent():
    step = np.array([[3.0, 4.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    rand = C.same_length_random(step, np.random.default_rng(2))
    np.testing.assert_allclose(np.linalg.norm(rand, axis=1), [5.0, 1.0, np.sqrt(2.0)],
                               rtol=1e-6)
    assert not np.allclose(rand / np.linalg.norm(rand, axis=1, keepdims=True),
                           step / np.linalg.norm(step, axis=1, keepdims=True))


def test_normal_gap_cos_and_latent_statistics_by_hand():
    svms, pairs, z, _, _ = _tiny_problem()
    labels = np.array([0, 0, 1, 1, 1])
    means = C.class_means(z, labels, 2)
    np.testing.assert_allclose(means, [[2.75, 2.0], [11 / 3, 2.0]])
    # d(0->1) = (-1, 1), mu_1 - mu_0 = (11/12, 0): cos = -(11/12) / (sqrt(2) * 11/12).
    np.testing.assert_allclose(C.normal_gap_cos(svms, pairs, means),
                               [-1 / np.sqrt(2), -1 / np.sqrt(2)], rtol=1e-6)
    assert C.mean_latent_norm(z) == pytest.approx(np.mean(np.linalg.norm(z, axis=1)))


def test_calibration_picks_the_smallest_eps_reaching_the_target():
    eps = (0.5, 0.1, 0.3, 0.2)  # any order
    flips = (0.9, 0.05, 0.5, 0.4)
    assert C.calibrate(eps, flips, 0.5) == (0.3, True)  # equality reaches the target
    assert C.calibrate(eps, flips, 0.41) == (0.3, True)
    assert C.calibrate(eps, flips, 0.04) == (0.1, True)
    assert C.calibrate(eps, flips, 0.95) == (0.5, False)  # none: the largest, not reached
    with pytest.raises(ValueError, match="one flip fraction per eps"):
        C.calibrate(eps, flips[:2])


def test_untrained_normals_fail_loudly_naming_the_fields():
    assert C.require_trained_normals(0.3, allow=False) is None
    assert C.require_trained_normals(C.UNTRAINED_COS, allow=False) is None  # at the threshold
    with pytest.raises(C.UntrainedNormalsError) as err:
        C.require_trained_normals(0.943, allow=False)
    message = str(err.value)
    assert isinstance(err.value, ValueError) and isinstance(err.value, cli.USER_ERRORS)
    assert "\n" not in message and "0.943 > 0.9" in message
    assert "svm.latent_scaling" in message and "svm.allow_untrained_normals=True" in message
    warning = C.require_trained_normals(0.943, allow=True)
    assert "0.943" in warning and "allowed by svm.allow_untrained_normals=True" in warning
