"""Generation: h monotone in ε, the ε units, adaptive ε, quantisation, image/target
selection, variants."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advcore.variables import ModelVars
from ladder_jax import attention_svm as A
from ladder_jax import generate, perturb
from ladder_jax.classifier import Classifier
from ladder_jax.generate import GenerationSettings

DIM = 16


class TinyClassifier(nn.Module):
    """A LADDER-style classifier with features/classify on 4x4x1 images."""

    def setup(self):
        self.f = nn.Dense(DIM)
        self.c = nn.Dense(3)

    def features(self, x, train=False):
        return self.f(x.reshape(x.shape[0], -1))

    def classify(self, z, train=False):
        return self.c(nn.relu(z))

    def __call__(self, x, train=False):
        return self.classify(self.features(x))


class TinyGenerator(nn.Module):
    @nn.compact
    def __call__(self, z, train=False):
        return nn.sigmoid(nn.Dense(16)(z)).reshape(-1, 4, 4, 1)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    clf = Classifier(TinyClassifier(), "softmax")
    c_vars = ModelVars.from_variables(clf.module.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1))))
    gen = TinyGenerator()
    g_vars = ModelVars.from_variables(gen.init(jax.random.key(1), jnp.zeros((1, DIM))))
    # One trained pair SVM on two shifted Gaussian classes.
    z_src = rng.normal(size=(30, DIM)).astype(np.float32)
    z_tgt = (rng.normal(size=(30, DIM)) + 2.0).astype(np.float32)
    res = A.train_pair(jax.random.key(2), jnp.asarray(z_src), jnp.asarray(z_tgt),
                       test_size=0.33, c=1.0, lr=0.05, epochs=3, batch_size=1, use_exp=True)
    return clf, c_vars, gen, g_vars, res.svm, z_src


def test_svm_score_increases_monotonically_with_eps(setup):
    clf, c_vars, gen, g_vars, svm_p, z_src = setup
    eps = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    s = GenerationSettings(variant="ladder", eps_values=eps, use_exp=True, target_range="unit",
                           eps_unit="raw")
    fn = generate.make_chunk_fn(gen, clf, s)
    z = jnp.asarray(z_src[:8])
    out = fn(g_vars, c_vars, svm_p, 1.0, z, jnp.arange(8), jnp.zeros(8, jnp.int32),
             jax.random.key(0))
    h = np.asarray(out["svm_h"])  # (E, B)
    assert h.shape == (len(eps), 8)
    assert (np.diff(h, axis=0) > 0).all(), h
    # Source latents start on the source side and end on the target side.
    assert (h[0] < 0).mean() > 0.5 and (h[-1] > 0).all()
    assert out["x_adv"].shape == (len(eps), 8, 4, 4, 1) and out["x_adv"].dtype == jnp.uint8
    # eps = 0 reproduces G(z).
    g0 = np.asarray(gen.apply({"params": g_vars.params}, z))
    np.testing.assert_array_equal(np.asarray(out["x_adv"][0]),
                                  np.floor(np.clip(g0, 0, 1) * 255).astype(np.uint8))


def test_perturbation_rule_is_z_plus_eps_beta_d(setup):
    _, _, _, _, svm_p, z_src = setup
    z = jnp.asarray(z_src[:3])
    beta = np.asarray(A.attention(svm_p.params, z, True))
    w = svm_p.params.w
    zp = perturb.perturb_for_pair(svm_p, z, jnp.broadcast_to(w, z.shape), 2.5, True)
    np.testing.assert_allclose(np.asarray(zp), z_src[:3] + 2.5 * beta * np.asarray(w),
                               rtol=1e-6)


def test_direction_variants(setup):
    _, _, _, _, svm_p, _ = setup
    w = np.asarray(svm_p.params.w)
    key = jax.random.key(0)
    np.testing.assert_array_equal(np.asarray(perturb.directions("ladder", svm_p, key, 4)),
                                  np.broadcast_to(w, (4, DIM)))
    cav = np.asarray(perturb.directions("cavRandom", svm_p, key, 2000))
    assert abs((cav - w).std() - 0.01) < 0.001
    rnd = np.asarray(perturb.directions("random", svm_p, key, 2000))
    assert abs(rnd.std() - 0.1) < 0.005 and abs(rnd.mean()) < 0.005
    # A standardized SVM: LADDER pushes along d = w / sigma; cavRandom's noise
    # is added to w in the fit space, then mapped back.
    sigma = np.linspace(0.5, 2.0, DIM).astype(np.float32)
    scaled = A.LatentSVM(svm_p.params, A.LatentScale(jnp.zeros(DIM), jnp.asarray(sigma)))
    np.testing.assert_allclose(np.asarray(perturb.directions("ladder", scaled, key, 2))[0],
                               w / sigma, rtol=1e-6)
    cav = np.asarray(perturb.directions("cavRandom", scaled, key, 2000))
    assert abs((cav * sigma - w).std() - 0.01) < 0.001


@pytest.fixture(scope="module")
def standardized_svm(setup):
    """An SVM fitted in the standardized space, so d = w / sigma differs from w."""
    zs = jnp.asarray(setup[-1])
    return A.train_pair(jax.random.key(4), zs, zs + 2.0, test_size=0.33, c=0.01, lr=0.01,
                        epochs=2, batch_size=1, use_exp=True, fit_norm=1e4).svm


@pytest.mark.parametrize("variant", ["ladder", "cavRandom", "random"])
def test_latent_norm_unit_moves_every_latent_by_eps_times_r(setup, standardized_svm, variant):
    """'latent_norm': ||z' - z|| = eps * r for every image and variant; 'raw' is eps * beta * d."""
    clf, c_vars, gen, g_vars, svm_p, z_src = setup
    fitted = standardized_svm
    z = jnp.asarray(z_src[:6])
    d = perturb.directions(variant, fitted, jax.random.key(1), 6)
    r = 7.5
    for eps in (0.05, 0.2, 1.0):
        zp = perturb.perturb_for_pair(fitted, z, d, eps, True, "latent_norm", r)
        np.testing.assert_allclose(np.linalg.norm(np.asarray(zp - z), axis=1), eps * r,
                                   rtol=1e-5)
        raw = perturb.perturb_for_pair(fitted, z, d, eps, True, "raw")
        beta = np.asarray(A.latent_attention(fitted, z, True))
        np.testing.assert_allclose(np.asarray(raw - z), eps * beta * np.asarray(d), rtol=1e-5,
                                   atol=1e-6)
    # The generation program pushes the same way: its SVM score is the score of
    # z + eps * r * unit(beta * d), computed here by hand.
    s = GenerationSettings(variant="ladder", eps_values=(0.3,), use_exp=True,
                           target_range="unit", eps_unit="latent_norm")
    out = generate.make_chunk_fn(gen, clf, s)(g_vars, c_vars, fitted, r, z, jnp.arange(6),
                                              jnp.zeros(6, jnp.int32), jax.random.key(0))
    beta = np.asarray(A.latent_attention(fitted, z, True))
    step = beta * np.asarray(A.boundary_normal(fitted))
    zp = z_src[:6] + 0.3 * r * step / np.linalg.norm(step, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out["svm_h"][0]),
                               np.asarray(A.latent_score(fitted, jnp.asarray(zp), True)),
                               rtol=1e-4, atol=1e-3)


def _reference_adaptive(f, clean, eps_init, step, eps_max, ite_max):
    """img_trans.compute_eps_generate_img's loop, with float32 arithmetic."""
    eps = np.float32(eps_init)
    remaining = ite_max
    while remaining >= 0:
        if f(eps) != clean or eps >= eps_max or remaining == 0:
            return eps
        remaining -= 1
        eps = np.float32(eps + (np.float32(10 * step) if eps >= 1.0 else np.float32(step)))
    return eps


@pytest.mark.parametrize("ite_max", [3, 100])
def test_adaptive_eps_follows_the_code(ite_max):
    thresholds = np.array([0.55, 3.0, 100.0, -1.0], np.float32)
    z = jnp.zeros((4, 1))
    beta_d = jnp.ones((4, 1))

    def predict_fn(zp):
        return (zp[:, 0] > jnp.asarray(thresholds)).astype(jnp.int32)

    got = np.asarray(perturb.adaptive_eps(predict_fn, z, beta_d, jnp.zeros(4, jnp.int32),
                                          eps_init=0.5, eps_step=0.1, eps_max=5.0,
                                          ite_max_eps=ite_max))
    for i, thr in enumerate(thresholds):
        ref = _reference_adaptive(lambda e: int(e > thr), 0, 0.5, 0.1, 5.0, ite_max)
        assert got[i] == pytest.approx(ref, abs=1e-5), (i, got[i], ref)


def test_adaptive_generation_changes_label(setup):
    clf, c_vars, gen, g_vars, svm_p, z_src = setup
    s = GenerationSettings(variant="ladder", eps_values=(-1.0,), use_exp=True, target_range="unit",
                           eps_init=0.5, eps_step=0.5, eps_max=50.0, ite_max_eps=200,
                           eps_unit="raw")
    fn = generate.make_chunk_fn(gen, clf, s)
    z = jnp.asarray(z_src[:4])
    clean = clf.predict_logits(clf.logits(c_vars, nn.sigmoid(jnp.zeros((4, 4, 4, 1)))))
    out = fn(g_vars, c_vars, svm_p, 1.0, z, jnp.arange(4), clean, jax.random.key(0))
    assert out["eps"].shape == (1, 4) and (np.asarray(out["eps"]) >= 0.5).all()


def test_quantize_clips_before_casting():
    x = jnp.asarray([-0.1, 0.0, 0.5, 0.999, 1.2])
    np.testing.assert_array_equal(np.asarray(generate.quantize(x, "truncate")),
                                  [0, 0, 127, 254, 255])
    np.testing.assert_array_equal(np.asarray(generate.quantize(x, "round")),
                                  [0, 0, 128, 255, 255])
    # The authors' wrap-around: -0.1 * 255 -> -25 -> 231; 1.2 * 255 = 306 -> 50.
    np.testing.assert_array_equal(np.asarray(generate.quantize(x, legacy_wrap=True)),
                                  [231, 0, 127, 254, 50])


def test_selection_caps_per_class_and_targets_differ():
    labels = np.repeat(np.arange(4), [10, 3, 7, 20]).astype(np.int32)
    idx = generate.select_indices(labels, 5, 4, np.random.default_rng(0))
    counts = np.bincount(labels[idx], minlength=4)
    np.testing.assert_array_equal(counts, [5, 3, 5, 5])
    assert len(set(idx.tolist())) == len(idx)
    assert len(generate.select_indices(labels, -1, 4, np.random.default_rng(0))) == len(labels)
    sources = np.repeat(np.arange(10), 300).astype(np.int32)
    targets = generate.choose_targets(sources, 10, np.random.default_rng(1))
    assert (targets != sources).all()
    # Uniform over the 9 other classes.
    freq = np.bincount(targets[sources == 0], minlength=10)[1:] / 300
    assert np.abs(freq - 1 / 9).max() < 0.06
    binary = generate.choose_targets(np.array([0, 1, 1, 0]), 2, np.random.default_rng(0))
    np.testing.assert_array_equal(binary, [1, 0, 0, 1])
