"""APGD / APGD-T: schedule, losses, invariants and strength on a tiny trained model."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aa_tiny_model as tiny
from advcore.attacks import losses
from advcore.attacks.apgd import _checkpoint_tables, _loss_fn, apgd, apgd_checkpoints, apgd_targeted
from advcore.attacks.pgd import pgd

EPS = tiny.EPS
FAST = tiny.FAST


@pytest.fixture(scope="module")
def data():
    return tiny.jnp_data(7, 64)


_apply = tiny.apply


def _jit(attack, **kw):
    """A jitted ``(params, x, y, key, active) -> x_adv`` that may be traced once."""

    def run(params, x, y, key, active):
        return attack(lambda z: _apply(params, z), x, y, key, active=active, **kw)

    return jax.jit(chex.assert_max_traces(run, n=1), compiler_options=FAST)


@pytest.fixture(scope="module")
def apgd_ce():
    chex.clear_trace_counter()
    return _jit(apgd, eps=EPS, loss="ce", num_iters=20)


@pytest.fixture(scope="module")
def apgd_t():
    return _jit(apgd_targeted, eps=EPS, num_iters=10, n_target_classes=3)


@pytest.fixture(scope="module")
def apgd_dlr_l2():
    return _jit(apgd, eps=0.5, norm="l2", loss="dlr", num_iters=10, restarts=2)


def _all(x):
    return jnp.ones((x.shape[0],), bool)


# --------------------------------------------------------------------------
# Schedule and losses.
# --------------------------------------------------------------------------


def test_checkpoints_100():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_checkpoint_windows_and_small_budgets():
    is_ckpt, window = _checkpoint_tables(100)
    assert np.flatnonzero(is_ckpt).tolist() == [21, 40, 56, 69, 79, 86, 92, 98]
    assert window[is_ckpt].tolist() == [22, 19, 16, 13, 10, 7, 6, 6]
    # int(0.22 * 20) = 4, shrink max(int(0.6), 1) = 1, min max(int(1.2), 1) = 1.
    assert apgd_checkpoints(20) == [4, 7, 9] + list(range(10, 21))
    assert apgd_checkpoints(1) == [1]
    with pytest.raises(ValueError, match="num_iters"):
        apgd_checkpoints(0)


LOGITS = np.array([[3.0, 1.0, 2.0, -1.0, 0.5],
                   [0.0, 4.0, 1.0, 2.0, 3.0],
                   [1.0, 1.5, -2.0, 0.0, 2.5]], np.float32)
LABELS = np.array([0, 2, 4], np.int32)
TARGETS = np.array([2, 1, 1], np.int32)


def _dlr_ref(z, y):
    out = []
    for row, label in zip(z, y):
        s = np.sort(row)[::-1]
        other = np.max(np.delete(row, label))
        out.append(-(row[label] - other) / (s[0] - s[2] + 1e-12))
    return np.array(out)


def _tdlr_ref(z, y, t):
    out = []
    for row, label, target in zip(z, y, t):
        s = np.sort(row)[::-1]
        out.append(-(row[label] - row[target]) / (s[0] - 0.5 * (s[2] + s[3]) + 1e-12))
    return np.array(out)


def test_dlr_losses_match_formulas():
    z, y, t = jnp.asarray(LOGITS), jnp.asarray(LABELS), jnp.asarray(TARGETS)
    np.testing.assert_allclose(losses.dlr(z, y), _dlr_ref(LOGITS, LABELS), rtol=1e-6)
    np.testing.assert_allclose(losses.targeted_dlr(z, y, t), _tdlr_ref(LOGITS, LABELS, TARGETS),
                               rtol=1e-6)
    # Hand values: row 0: -(3 - 2) / (3 - 1); row 1: -(1 - 4) / (4 - 2).
    np.testing.assert_allclose(_dlr_ref(LOGITS, LABELS)[:2], [-0.5, 1.5], rtol=1e-6)
    # What APGD ascends is exactly these losses (and CE / -CE(target)).
    np.testing.assert_allclose(_loss_fn("dlr")(z, y, t), _dlr_ref(LOGITS, LABELS), rtol=1e-6)
    np.testing.assert_allclose(_loss_fn("dlr_targeted")(z, y, t),
                               _tdlr_ref(LOGITS, LABELS, TARGETS), rtol=1e-6)
    np.testing.assert_allclose(_loss_fn("ce")(z, y, t), losses.ce(z, y), rtol=1e-6)
    np.testing.assert_allclose(_loss_fn("ce_targeted")(z, y, t), -losses.ce(z, t), rtol=1e-6)


def test_dlr_is_shift_and_scale_invariant():
    z, y = jnp.asarray(LOGITS), jnp.asarray(LABELS)
    np.testing.assert_allclose(losses.dlr(3.0 * z + 7.0, y), losses.dlr(z, y), rtol=1e-5)


# --------------------------------------------------------------------------
# Invariants.
# --------------------------------------------------------------------------


def _check_ball(x_adv, x, eps, norm="linf"):
    x_adv, x = np.asarray(x_adv), np.asarray(x)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    d = (x_adv - x).reshape(len(x), -1)
    n = np.abs(d).max(1) if norm == "linf" else np.sqrt((d ** 2).sum(1))
    assert n.max() <= eps * (1 + 1e-5) + 1e-6


@pytest.mark.parametrize("which", ["apgd_ce", "apgd_t", "apgd_dlr_l2"])
def test_invariants(which, request, params, data):
    attack = request.getfixturevalue(which)
    x, y = data
    eps, norm = (0.5, "l2") if which == "apgd_dlr_l2" else (EPS, "linf")
    key = jax.random.key(0)
    out1 = attack(params, x, y, key, _all(x))
    _check_ball(out1, x, eps, norm)
    # Deterministic per key, and the key matters (random starts).
    np.testing.assert_array_equal(attack(params, x, y, key, _all(x)), out1)
    out_other = attack(params, x, y, jax.random.key(1), _all(x))
    assert not np.array_equal(np.asarray(out_other), np.asarray(out1))
    # Inactive points come back unchanged; active ones match the full run.
    active = jnp.arange(x.shape[0]) % 2 == 0
    out_masked = np.asarray(attack(params, x, y, key, active))
    np.testing.assert_array_equal(out_masked[1::2], np.asarray(x)[1::2])
    np.testing.assert_allclose(out_masked[0::2], np.asarray(out1)[0::2], atol=1e-6)
    # Broken points are misclassified; others are returned as the clean input.
    changed = np.any(np.asarray(out1) != np.asarray(x), axis=(1, 2, 3))
    pred = np.asarray(jnp.argmax(_apply(params, out1), -1))
    assert changed.sum() > 0
    assert np.all(pred[changed] != np.asarray(y)[changed])


def test_traced_once(apgd_ce, params, data):
    """Repeated calls with new keys / masks / params reuse one trace (the
    chex counter inside ``_jit`` raises on a second trace)."""
    x, y = data
    for seed in range(3):
        apgd_ce(params, x, y, jax.random.key(seed), _all(x) if seed else ~_all(x))
    params2 = jax.tree.map(lambda p: p * 1.01, params)
    apgd_ce(params2, x, y, jax.random.key(5), _all(x))


def test_all_inactive_returns_input(apgd_t, params, data):
    x, y = data
    out = apgd_t(params, x, y, jax.random.key(0), ~_all(x))
    np.testing.assert_array_equal(out, x)


def test_bad_arguments():
    f = lambda z: jnp.zeros((z.shape[0], 10))  # noqa: E731
    x, y = jnp.zeros((2, 8, 8, 2)), jnp.zeros((2,), jnp.int32)
    k = jax.random.key(0)
    with pytest.raises(ValueError, match="eps"):
        apgd(f, x, y, k, eps=-0.1)
    with pytest.raises(ValueError, match="norm"):
        apgd(f, x, y, k, eps=0.1, norm="l0")
    with pytest.raises(ValueError, match="loss"):
        apgd(f, x, y, k, eps=0.1, loss="dlr_targeted")
    with pytest.raises(ValueError, match="n_target_classes"):
        apgd_targeted(f, x, y, k, eps=0.1, n_target_classes=10)
    with pytest.raises(ValueError, match="4 classes"):
        apgd_targeted(lambda z: jnp.zeros((z.shape[0], 3)), x, y, k, eps=0.1,
                      n_target_classes=2)


# --------------------------------------------------------------------------
# Strength on the trained model.
# --------------------------------------------------------------------------


def test_apgd_ce_at_least_as_strong_as_pgd(apgd_ce, params, data):
    """Same budget (20 gradient steps): APGD-CE <= PGD-20 accuracy (+1 point slack)."""
    x, y = data
    f = lambda z: _apply(params, z)  # noqa: E731
    clean = tiny.accuracy(f, x, y)
    acc_apgd = tiny.accuracy(f, apgd_ce(params, x, y, jax.random.key(0), _all(x)), y)
    pgd_fn = jax.jit(lambda p, x, y, k: pgd(lambda z: _apply(p, z), x, y, k, eps=EPS,
                                             step_size=EPS / 4, num_steps=20),
                     compiler_options=FAST)
    acc_pgd = tiny.accuracy(f, pgd_fn(params, x, y, jax.random.key(0)), y)
    assert clean == 1.0
    assert acc_apgd < clean
    assert acc_apgd <= acc_pgd + 1.0 / len(y)


def test_apgd_t_breaks_points_and_targets_rank(apgd_t, params, data):
    x, y = data
    f = lambda z: _apply(params, z)  # noqa: E731
    out = apgd_t(params, x, y, jax.random.key(0), _all(x))
    assert tiny.accuracy(f, out, y) < 0.9
    # Broken points are mostly classified as one of the 3 targeted classes
    # (ranks 2..4 by clean logit); a random wrong class would hit 3/9 of the time.
    order = np.argsort(np.asarray(f(x)), axis=-1)[:, ::-1][:, 1:4]
    pred = np.asarray(jnp.argmax(f(out), -1))
    broken = pred != np.asarray(y)
    hits = np.mean([p in row for p, row in zip(pred[broken], order[broken])])
    assert hits >= 0.8, hits


def test_best_loss_mode_raises_the_loss(params, data):
    x, y = data
    f = lambda z: _apply(params, z)  # noqa: E731
    run = jax.jit(lambda p, x, y, k: apgd(lambda z: _apply(p, z), x, y, k, eps=EPS,
                                           num_iters=10, best_loss=True),
                  compiler_options=FAST)
    out = run(params, x, y, jax.random.key(0))
    _check_ball(out, x, EPS)
    gain = np.asarray(losses.ce(f(out), y) - losses.ce(f(x), y))
    assert np.all(gain > 0)


def test_eot_with_a_randomised_model(params, data):
    """``stochastic=True``: logits_fn(x, key) gets fresh keys; EOT averages."""
    x, y = data

    def noisy(p, z, key):
        return _apply(p, z) + 0.05 * jax.random.normal(key, (z.shape[0], tiny.NUM_CLASSES))

    run = jax.jit(lambda p, x, y, k: apgd(lambda z, kk: noisy(p, z, kk), x, y, k, eps=EPS,
                                           num_iters=5, eot_iters=4, stochastic=True),
                  compiler_options=FAST)
    out = run(params, x, y, jax.random.key(0))
    _check_ball(out, x, EPS)
    assert tiny.accuracy(lambda z: _apply(params, z), out, y) < 1.0
    np.testing.assert_array_equal(run(params, x, y, jax.random.key(0)), out)
