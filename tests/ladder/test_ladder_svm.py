"""Attention SVM: hand-computed attention, separation, normal direction, vmap == per pair."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ladder_jax import attention_svm as A


def _np_attention(att_w, att_b, z, use_exp):
    a = np.tanh(z @ att_w.T + att_b)
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    s = e / e.sum(axis=-1, keepdims=True)
    return np.exp(s) if use_exp else s


@pytest.mark.parametrize("use_exp", [True, False])
def test_attention_matches_hand_computation(use_exp):
    rng = np.random.default_rng(0)
    dim = 7
    params = A.SVMParams(att_w=rng.normal(size=(dim, dim)).astype(np.float32),
                         att_b=rng.normal(size=dim).astype(np.float32),
                         w=rng.normal(size=dim).astype(np.float32),
                         b=np.float32(0.3))
    z = rng.normal(size=(5, dim)).astype(np.float32)
    beta = np.asarray(A.attention(params, jnp.asarray(z), use_exp))
    expected = _np_attention(params.att_w, params.att_b, z, use_exp)
    np.testing.assert_allclose(beta, expected, rtol=1e-5, atol=1e-6)
    # Without exp the weights sum to 1; with it every weight is exp(s) > 1.
    if use_exp:
        assert (beta > 1.0).all()
    else:
        np.testing.assert_allclose(beta.sum(-1), 1.0, rtol=1e-5)
    h = np.asarray(A.svm_score(params, jnp.asarray(z), use_exp))
    np.testing.assert_allclose(h, (z * expected) @ params.w + params.b, rtol=1e-5, atol=1e-5)


def test_loss_is_c_hinge_plus_mean_w_squared():
    rng = np.random.default_rng(1)
    dim = 4
    p = A.init_svm_params(jax.random.key(0), dim)
    z = rng.normal(size=(3, dim)).astype(np.float32)
    y = np.array([1.0, -1.0, 1.0], np.float32)
    mask = np.array([1.0, 1.0, 0.0], np.float32)
    h = np.asarray(A.svm_score(p, jnp.asarray(z)))
    hinge = np.maximum(0, 1 - y * h)
    expected = 0.01 * (hinge[:2].mean()) + np.mean(np.asarray(p.w) ** 2)
    got = A.svm_loss(p, jnp.asarray(z), jnp.asarray(y), jnp.asarray(mask), 0.01)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_pytorch_default_init_bounds():
    p = A.init_svm_params(jax.random.key(3), 100)
    for leaf in p:
        assert np.abs(np.asarray(leaf)).max() <= 0.1 + 1e-7


def test_split_sizes_match_sklearn_counts():
    assert A.split_sizes(200, 0.33) == (134, 66)  # 268 fitted, 132 held out
    with pytest.raises(ValueError, match="test_size"):
        A.split_sizes(200, 1.5)


def test_svm_separates_gaussians_and_normal_points_to_target():
    rng = np.random.default_rng(0)
    dim, n = 16, 60
    mu_src = np.zeros(dim, np.float32)
    mu_tgt = np.zeros(dim, np.float32)
    mu_tgt[:4] = 3.0
    z_src = (mu_src + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)
    z_tgt = (mu_tgt + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)
    # Large c so a few epochs suffice (the paper's c = 0.01 needs many more).
    res = A.train_pair(jax.random.key(0), jnp.asarray(z_src), jnp.asarray(z_tgt),
                       test_size=0.33, c=1.0, lr=0.05, epochs=5, batch_size=1, use_exp=True)
    assert float(res.heldout_acc) >= 0.95 and float(res.train_acc) >= 0.95
    # d = w points from the source toward the target class.
    assert float(np.dot(np.asarray(res.params.w), mu_tgt - mu_src)) > 0


def test_vmapped_pairs_equal_per_pair_training():
    rng = np.random.default_rng(2)
    k, n, dim = 3, 10, 8
    class_z = jnp.asarray(rng.normal(size=(k, n, dim)).astype(np.float32)
                          + np.arange(k)[:, None, None])
    pairs = A.ordered_pairs(k)
    keys = A.pair_keys(jax.random.key(5), pairs, k)
    kw = dict(test_size=0.33, c=0.5, lr=0.02, epochs=3, batch_size=2, use_exp=True)
    together = A.train_pairs(keys, class_z, jnp.asarray(pairs), **kw)
    single = jax.jit(A.train_pair, static_argnames=tuple(kw))
    for i, (y, t) in enumerate(pairs):
        alone = single(keys[i], class_z[y], class_z[t], **kw)
        for a, b in zip(jax.tree.leaves(alone.params),
                        jax.tree.leaves(jax.tree.map(lambda x: x[i], together.params))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
        assert float(alone.heldout_acc) == pytest.approx(float(together.heldout_acc[i]))
    # A pair's result does not depend on which pairs it is trained with.
    sub = A.train_pairs(keys[2:4], class_z, jnp.asarray(pairs[2:4]), **kw)
    np.testing.assert_allclose(np.asarray(sub.params.w), np.asarray(together.params.w[2:4]),
                               atol=1e-5)


def test_legacy_unordered_cache_shares_attention():
    pairs = A.ordered_pairs(3)
    p = len(pairs)
    params = A.SVMParams(att_w=np.arange(p, dtype=np.float32)[:, None, None] * np.ones((p, 2, 2)),
                         att_b=np.arange(p, dtype=np.float32)[:, None] * np.ones((p, 2)),
                         w=np.arange(p, dtype=np.float32)[:, None] * np.ones((p, 2)),
                         b=np.arange(p, dtype=np.float32))
    out = A.apply_legacy_unordered_cache(params, pairs)
    table = A.pair_index_table(pairs, 3)
    for y, t in pairs:
        i, j = table[y, t], table[max(y, t), min(y, t)]
        assert out.att_w[i, 0, 0] == j and out.att_b[i, 0] == j  # attention of (max, min)
        assert out.w[i, 0] == i and out.b[i] == i  # own normal and bias


def test_init_cos_measures_how_far_the_hinge_moved_the_normal():
    # The code's SVM settings (c = 0.01, lr 0.01, 10 epochs, batch 1). On
    # small latents the hinge barely moves w off its random init; on latents
    # 255x larger (the authors' MNIST/SVHN x*255 inputs) w leaves it.
    rng = np.random.default_rng(0)
    dim, n = 64, 200
    shift = np.zeros(dim, np.float32)
    shift[:8] = 0.5
    z_src = np.abs(rng.normal(size=(n, dim))).astype(np.float32)
    z_tgt = (np.abs(rng.normal(size=(n, dim))) + shift).astype(np.float32)
    kw = dict(test_size=0.33, c=0.01, lr=0.01, epochs=10, batch_size=1, use_exp=True)
    fit = jax.jit(A.train_pair, static_argnames=tuple(kw))
    key = jax.random.key(0)
    cos = {}
    for scale in (1.0, 255.0):
        res = fit(key, jnp.asarray(z_src * scale), jnp.asarray(z_tgt * scale), **kw)
        w0 = np.asarray(A.plan_pair(key, n, dim, test_size=0.33, epochs=10,
                                    batch_size=1).params0.w)
        w = np.asarray(res.params.w)
        expected = w @ w0 / (np.linalg.norm(w) * np.linalg.norm(w0))
        assert float(res.init_cos) == pytest.approx(expected, abs=1e-5)
        cos[scale] = float(res.init_cos)
    assert cos[1.0] > 0.8 and cos[255.0] < 0.2


def test_stale_normal_warning_names_the_cause_and_the_flag():
    assert A.stale_normal_warning(np.array([0.1, 0.3])) is None
    assert A.stale_normal_warning(np.array([0.9, 0.9])) is None  # at the threshold
    msg = A.stale_normal_warning(np.array([0.95, 0.97]))
    assert "0.960" in msg and "svm.legacy_pixel_scale" in msg
