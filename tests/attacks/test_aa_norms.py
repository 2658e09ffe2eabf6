"""The L2 / L1 AutoAttack stages against their definitions (no PyTorch needed).

Projections against independent float64 solutions (a multiplier bisection,
an LP), APGD-L1's step rules and schedules against hand values, eta patterns
and square sides against hand computations, every attack's output against
its threat model, and the norm x version table against the reference's
settings.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linprog

import aa_tiny_model as tiny
from advcore.attacks import make_attack
from advcore.attacks.apgd import (_sparse_step, apgd, apgd_targeted, l1_checkpoint_step,
                                  l1_checkpoint_window, largereps_schedule)
from advcore.attacks.autoattack import autoattack, check_config, make_autoattack
from advcore.attacks.fab import fab, fab_targeted, projection_l1, projection_l2
from advcore.attacks.norms import flat_norm, l1_box_projection
from advcore.attacks.square import square
from advcore.attacks.square_lp import eta_pattern, init_tiles, lp_side_table

FAST = tiny.FAST
# Budgets at which the tiny MLP is partly robust (about half the points).
EPS = {"l2": 0.25, "l1": 1.5}


@pytest.fixture(scope="module")
def data():
    return tiny.jnp_data(7, 48)


_apply = tiny.apply


def _jit(attack, **kw):
    def run(params, x, y, key):
        return attack(lambda z: _apply(params, z), x, y, key, **kw)

    return jax.jit(run, compiler_options=FAST)


def _norms(a, b, norm):
    return np.asarray(flat_norm(jnp.asarray(a) - jnp.asarray(b), norm))


def _check_threat_model(x_adv, x, y, params, norm, eps):
    """In the box, within eps, and every changed point misclassified."""
    x_adv, x = np.asarray(x_adv), np.asarray(x)
    assert x_adv.shape == x.shape
    assert x_adv.min() >= -1e-6 and x_adv.max() <= 1 + 1e-6
    assert _norms(x_adv, x, norm).max() <= eps * (1 + 1e-5) + 1e-6
    changed = np.any(x_adv != x, axis=(1, 2, 3))
    pred = np.asarray(jnp.argmax(_apply(params, x_adv), -1))
    assert np.all(pred[changed] != np.asarray(y)[changed])
    return changed


# --------------------------------------------------------------------------
# Projections.
# --------------------------------------------------------------------------


def _soft_box_projection(x, delta, eps):
    """Float64 Euclidean projection of ``x + delta`` onto ``{z in [0, 1]^D :
    ||z - x||_1 <= eps}``: ``d_i = clip(soft(delta_i, lam), -x_i, 1 - x_i)``
    with the smallest ``lam >= 0`` meeting the budget (bisection)."""
    lo, hi = -x, 1 - x

    def d_of(lam):
        return np.clip(np.sign(delta) * np.maximum(np.abs(delta) - lam, 0), lo, hi)

    if np.abs(d_of(0.0)).sum() <= eps:
        return d_of(0.0)
    a, b = 0.0, np.abs(delta).max()
    for _ in range(200):
        m = (a + b) / 2
        a, b = (m, b) if np.abs(d_of(m)).sum() > eps else (a, m)
    return d_of(b)


@pytest.mark.parametrize("ties", [False, True])
def test_l1_box_projection_is_the_euclidean_projection(ties):
    rng = np.random.default_rng(0)
    n = 24
    x = rng.uniform(0, 1, (n, 5, 5, 2))
    if ties:  # quantised images and zero coordinates: tied breakpoints
        x = np.round(x * 4) / 4
    delta = rng.normal(size=x.shape) * rng.uniform(0.05, 1.0, (n, 1, 1, 1))
    delta[::3, :2] = 0.0
    eps = rng.uniform(0.5, 12.0, n)
    r = np.stack([np.asarray(l1_box_projection(jnp.asarray(x[i:i + 1], jnp.float32),
                                               jnp.asarray(delta[i:i + 1], jnp.float32),
                                               float(eps[i])))[0] for i in range(n)])
    z = x + delta + r
    for i in range(n):
        expected = x[i] + _soft_box_projection(x[i].ravel(), delta[i].ravel(),
                                               eps[i]).reshape(x[i].shape)
        np.testing.assert_allclose(z[i], expected, atol=2e-5, err_msg=str(i))
        assert np.abs(z[i] - x[i]).sum() <= eps[i] * (1 + 1e-5)
    assert z.min() >= -1e-6 and z.max() <= 1 + 1e-6
    # Inside the set already: only the box part of the correction (none here).
    inside = l1_box_projection(jnp.full((1, 4), 0.5), jnp.full((1, 4), 0.1), 1.0)
    np.testing.assert_array_equal(inside, 0.0)
    # Outside the box only: clipped back onto it, nothing more.
    clip_only = l1_box_projection(jnp.array([[0.9, 0.2]]), jnp.array([[0.3, -0.1]]), 5.0)
    np.testing.assert_allclose(clip_only, [[-0.2, 0.0]], atol=1e-7)


def _min_l2_step(t, w, rhs):
    """Float64 minimal-L2 ``d`` with ``<w, d> = rhs`` and ``-t <= d <= 1 - t``
    (``d = clip(lam w, -t, 1 - t)``, ``lam`` by bisection); None if unreachable."""
    def g(lam):
        return w @ np.clip(lam * w, -t, 1 - t)

    big = 1e9
    if not g(-big) <= rhs <= g(big):
        return None
    a, b = -big, big
    for _ in range(400):
        m = (a + b) / 2
        a, b = (m, b) if g(m) < rhs else (a, m)
    return np.clip((a + b) / 2 * w, -t, 1 - t)


def _min_l1_norm(t, w, rhs):
    """Optimal value of ``min ||d||_1`` s.t. ``<w, d> = rhs``, box (LP)."""
    dim = len(t)
    # d = p - q, p, q >= 0; minimise sum(p + q).
    res = linprog(np.ones(2 * dim), A_eq=np.r_[w, -w][None], b_eq=[rhs],
                  bounds=[(0, 1 - t[i]) for i in range(dim)] + [(0, t[i]) for i in range(dim)])
    return res.fun if res.status == 0 else None


def _hyperplanes(seed, ties=False):
    rng = np.random.default_rng(seed)
    n, dim = 40, 12
    t = rng.uniform(0, 1, (n, dim))
    if ties:
        t = np.round(t * 3) / 3
    w = rng.normal(size=(n, dim))
    w[::4, :3] = 0.0
    b = np.where(np.arange(n) % 5 == 4, 3.0 * np.abs(w).sum(1),
                 (w * rng.uniform(0, 1, (n, dim))).sum(1))
    return t, w, b


def _assert_nearest_box_corner(t, w, b, d):
    """An unreachable hyperplane: the step goes to the box corner closest to it."""
    side = np.sign(w @ t - b)
    corner = np.where(side * w > 0, 0.0, 1.0)
    np.testing.assert_allclose((t + d)[w != 0], corner[w != 0], atol=1e-6)


@pytest.mark.parametrize("ties", [False, True])
def test_fab_l2_projection_is_the_minimal_l2_step(ties):
    t, w, b = _hyperplanes(1, ties)
    d = np.asarray(jax.jit(projection_l2)(*(jnp.asarray(a, jnp.float32) for a in (t, w, b))))
    assert np.all(t + d >= -1e-6) and np.all(t + d <= 1 + 1e-6)
    n_feasible = 0
    for i in range(len(t)):
        opt = _min_l2_step(t[i], w[i], b[i] - w[i] @ t[i])
        if opt is None:
            _assert_nearest_box_corner(t[i], w[i], b[i], d[i])
            continue
        n_feasible += 1
        np.testing.assert_allclose(d[i], opt, atol=2e-5, err_msg=str(i))
    assert n_feasible >= 30
    assert np.all(d[::4, :3] == 0)


@pytest.mark.parametrize("ties", [False, True])
def test_fab_l1_projection_is_the_minimal_l1_step(ties):
    t, w, b = _hyperplanes(2, ties)
    d = np.asarray(jax.jit(projection_l1)(*(jnp.asarray(a, jnp.float32) for a in (t, w, b))))
    assert np.all(t + d >= -1e-6) and np.all(t + d <= 1 + 1e-6)
    n_feasible = 0
    for i in range(len(t)):
        opt = _min_l1_norm(t[i], w[i], b[i] - w[i] @ t[i])
        if opt is None:
            _assert_nearest_box_corner(t[i], w[i], b[i], d[i])
            continue
        n_feasible += 1
        assert abs(w[i] @ (t[i] + d[i]) - b[i]) < 1e-4, i
        assert abs(np.abs(d[i]).sum() - opt) < 1e-4, (i, np.abs(d[i]).sum(), opt)
        assert np.count_nonzero(np.abs(d[i]) > 1e-7) <= np.count_nonzero(w[i]), i
    assert n_feasible >= 30
    assert np.all(d[::4, :3] == 0)


# --------------------------------------------------------------------------
# APGD-L1: schedules, step rule, sparse direction, attacks.
# --------------------------------------------------------------------------


def test_largereps_schedule_and_l1_checkpoint_window():
    epss, iters = largereps_schedule(0.5, 100)
    assert epss == (1.5, 1.0, 0.5) and iters == (30, 30, 40)
    assert largereps_schedule(1.0, 7)[1] == (3, 3, 1)  # ceil(2.1) = 3 twice, 1 left
    assert largereps_schedule(1.0, 2)[1] == (1, 1, 0)
    with pytest.raises(ValueError, match="num_iters must be >= 2 with use_largereps"):
        largereps_schedule(1.0, 1)
    # Checkpoints every int(0.04 n) iterations (at least 1): 4 for 100, and
    # 1 inside the 30 / 40-iteration large-reps runs.
    assert [l1_checkpoint_window(n) for n in (100, 50, 40, 30, 10)] == [4, 2, 1, 1, 1]


def test_l1_checkpoint_step_rule():
    step = jnp.array([1.0, 1.0, 0.2, 0.11, 1.0])
    now = jnp.array([90.0, 96.0, 80.0, 100.0, 0.0])
    before = jnp.array([100.0, 100.0, 100.0, 100.0, 0.0])
    new, restart = l1_checkpoint_step(step, now, before, max_step=2.0)
    # < 0.95 x sparser: back to eps (2.0) and restart; else / 1.5, >= eps / 10.
    np.testing.assert_array_equal(restart, [True, False, True, False, False])  # 0/0: NaN
    np.testing.assert_allclose(new, [2.0, 1.0 / 1.5, 2.0, 0.2, 1.0 / 1.5], rtol=1e-6)


def test_sparse_step_moves_the_top_k_signs_with_unit_l1_norm():
    g = jnp.array([[0.1, -0.9, 0.3, 0.0, -0.5, 0.2, 0.8, -0.05]]).reshape(1, 2, 2, 2)
    # topk 0.25 of 8 features: threshold = the 7th smallest |g| (0.8): 2 entries.
    out = np.asarray(_sparse_step(g, jnp.array([0.25]))).ravel()
    np.testing.assert_allclose(out, [0, -0.5, 0, 0, 0, 0, 0.5, 0])
    # topk 0.3: int((1 - 0.3) * 8) = int(5.6) = 5, threshold 0.5: 3 entries.
    out = np.asarray(_sparse_step(g, jnp.array([0.3]))).ravel()
    np.testing.assert_allclose(out, np.array([0, -1, 0, 0, -1, 0, 1, 0]) / 3, rtol=1e-6)


@pytest.mark.parametrize("largereps", [False, True])
def test_apgd_l1_respects_the_threat_model_and_breaks_points(largereps, params, data):
    x, y = data
    eps = EPS["l1"]
    run = _jit(apgd, eps=eps, norm="l1", num_iters=20, restarts=2, use_largereps=largereps)
    out = run(params, x, y, jax.random.key(0))
    changed = _check_threat_model(out, x, y, params, "l1", eps)
    assert 0.1 < changed.mean() < 0.95
    np.testing.assert_array_equal(run(params, x, y, jax.random.key(0)), out)
    # L1 attacks are sparse: the broken points change few of the 128 features.
    l0 = np.count_nonzero(np.asarray(out - x).reshape(len(x), -1), axis=1)
    assert np.median(l0[changed]) < 64


def test_apgd_t_l1_largereps(params, data):
    x, y = data
    out = _jit(apgd_targeted, eps=EPS["l1"], norm="l1", num_iters=10, n_target_classes=3,
               use_largereps=True)(params, x, y, jax.random.key(1))
    assert _check_threat_model(out, x, y, params, "l1", EPS["l1"]).mean() > 0.1


def test_apgd_bad_norm_settings():
    f = lambda z: jnp.zeros((z.shape[0], 10))  # noqa: E731
    x, y, k = jnp.zeros((2, 4, 4, 1)), jnp.zeros((2,), jnp.int32), jax.random.key(0)
    with pytest.raises(ValueError, match="use_largereps=True is defined for norm 'l1' only"):
        apgd(f, x, y, k, eps=0.1, norm="l2", use_largereps=True)
    with pytest.raises(ValueError, match="num_iters must be >= 2"):
        apgd(f, x, y, k, eps=0.1, norm="l1", num_iters=1, use_largereps=True)


# --------------------------------------------------------------------------
# FAB L2 / L1.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_fab_t_l2_l1_minimal_adversarial_points(norm, params, data):
    x, y = data
    eps = EPS[norm]
    out = _jit(fab_targeted, eps=eps, norm=norm, num_iters=15, n_target_classes=3)(
        params, x, y, jax.random.key(0))
    changed = _check_threat_model(out, x, y, params, norm, eps)
    assert changed.mean() > 0.2
    # With a huge eps FAB still returns points near the boundary.
    far = _jit(fab_targeted, eps=100.0, norm=norm, num_iters=15, n_target_classes=3)(
        params, x, y, jax.random.key(0))
    broken = np.asarray(jnp.argmax(_apply(params, far), -1)) != np.asarray(y)
    assert broken.mean() > 0.9
    assert np.median(_norms(far, x, norm)[broken]) < 2 * eps


def test_fab_untargeted_l2_with_restarts(params, data):
    x, y = data
    out = _jit(fab, eps=EPS["l2"], norm="l2", num_iters=10, restarts=2)(
        params, x, y, jax.random.key(0))
    assert _check_threat_model(out, x, y, params, "l2", EPS["l2"]).mean() > 0.2


# --------------------------------------------------------------------------
# Square L2 / L1.
# --------------------------------------------------------------------------


def test_eta_patterns_by_hand():
    # s = 3, L2: top row from rectangles(1, 3) = [.25, 1.25, .25] (unit L2),
    # bottom from rectangles(2, 3) = [[.25, .25, .25], [.25, 1.25, .25]] (unit
    # L2), negated; then the whole square normalised.
    top = np.array([[0.25, 1.25, 0.25]])
    bottom = np.array([[0.25, 0.25, 0.25], [0.25, 1.25, 0.25]])
    expected = np.r_[top / np.linalg.norm(top), -bottom / np.linalg.norm(bottom)]
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(eta_pattern(3, "l2"), expected, rtol=1e-6)
    # L1: weights 1 / (k + 1)^4 and unit L1 norms.
    top = np.array([[1 / 16, 1 + 1 / 16, 1 / 16]])
    bottom = np.array([[1 / 16] * 3, [1 / 16, 1 + 1 / 16, 1 / 16]])
    expected = np.r_[top / np.abs(top).sum(), -bottom / np.abs(bottom).sum()]
    np.testing.assert_allclose(eta_pattern(3, "l1"), expected / np.abs(expected).sum(),
                               rtol=1e-6)
    for side in (1, 4, 5, 15):
        assert np.linalg.norm(eta_pattern(side, "l2")) == pytest.approx(1.0, rel=1e-6)
        assert np.abs(eta_pattern(side, "l1")).sum() == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_array_equal(eta_pattern(1, "l2"), [[-1.0]])


def test_square_lp_sides_and_init_tiles():
    sides = lp_side_table(5000, 0.8, 16, 16, 1, False)
    # p = 0.8, 0.4, 0.2, 0.1, 0.05, 0.025: round(sqrt(p * 256)) = 14, 10, 7, 5,
    # 4, 3, made odd and at least 3.
    for i, s in {0: 15, 10: 15, 11: 11, 51: 7, 201: 5, 501: 5, 1001: 3, 4999: 3}.items():
        assert sides[i] == s, i
    assert lp_side_table(100, 0.8, 8, 8, 2, False).max() <= 8
    side, corners = init_tiles(16, 16)
    assert side == 3 and len(corners) == 25 and corners[0] == (0, 0) and corners[-1] == (12, 12)
    side, corners = init_tiles(28, 28)
    assert side == 5 and corners[0] == (1, 1) and len(corners) == 25
    side, corners = init_tiles(8, 8)  # tiles starting at row / column 8 are dropped
    assert side == 1 and len(corners) == 49 and corners[-1] == (7, 7)
    with pytest.raises(ValueError, match="cannot tile a 12x12 image"):
        init_tiles(12, 12)
    with pytest.raises(ValueError, match="at least 5 pixels high"):
        init_tiles(4, 4)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_square_l2_l1_query_only_on_a_masked_model(norm, params, data):
    """On a model whose gradient is masked, Square (forward passes only)
    still breaks points within the L2 / L1 budget."""
    x, y = data
    eps = 3 * EPS[norm]

    def run(p, x, y, k):
        return square(lambda z: _apply(p, jax.lax.stop_gradient(z)), x, y, k, eps=eps,
                      norm=norm, n_queries=200)

    out = jax.jit(run, compiler_options=FAST)(params, x, y, jax.random.key(0))
    changed = _check_threat_model(out, x, y, params, norm, eps)
    assert changed.mean() > 0.1
    np.testing.assert_array_equal(jax.jit(run, compiler_options=FAST)(
        params, x, y, jax.random.key(0)), out)


# --------------------------------------------------------------------------
# The norm x version table.
# --------------------------------------------------------------------------


def test_version_settings_per_norm_are_the_reference_s():
    for norm in ("linf", "l2"):
        c = check_config(norm=norm, version="standard")
        assert c.attacks == ("apgd-ce", "apgd-t", "fab-t", "square")
        assert (c.apgd_restarts, c.apgd_t_targets, c.fab_restarts, c.fab_targets) == (1, 9, 1, 9)
        assert not c.apgd_largereps and not c.apgd_t_largereps
    c = check_config(norm="L1", version="standard")
    assert c.norm == "l1" and c.attacks == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert (c.apgd_restarts, c.apgd_t_targets, c.fab_restarts, c.fab_targets) == (5, 5, 1, 9)
    assert c.apgd_largereps and c.apgd_t_largereps and c.n_queries == 5000
    for norm in ("linf", "l2", "l1"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = check_config(norm=norm, version="plus")
        assert c.attacks == ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
        assert (c.apgd_restarts, c.fab_restarts, c.apgd_t_targets, c.fab_targets) == (5, 5, 9, 9)
        assert not c.apgd_largereps
        c = check_config(norm=norm, version="rand")
        assert c.attacks == ("apgd-ce", "apgd-dlr")
        assert (c.apgd_restarts, c.apgd_eot_iters, c.apgd_t_eot_iters) == (1, 20, 1)
    with pytest.warns(UserWarning, match='"plus" version is used with L1 norm: please check'):
        check_config(norm="l1", version="plus")
    c = check_config(norm="l1", version="standard", n_target_classes=3, restarts=2,
                     use_largereps=False)
    assert (c.apgd_t_targets, c.fab_targets, c.apgd_restarts, c.fab_restarts) == (3, 3, 2, 2)
    assert not c.apgd_largereps


def test_undefined_combinations_are_refused_when_built():
    with pytest.raises(ValueError, match=r"norm 'l0' is not defined for AutoAttack version "
                                         r"'standard'; valid norm x version combinations: "
                                         r"linf x standard, l2 x standard, l1 x standard"):
        make_autoattack("aa_standard", norm="l0")
    with pytest.raises(ValueError, match=r"version 'fast' is not defined .* norm 'l2'"):
        check_config(norm="l2", version="fast")
    with pytest.raises(ValueError, match=r"use_largereps=True is not defined for norm 'l2' "
                                         r"\(AutoAttack version 'standard'\)"):
        make_autoattack("aa_standard", norm="l2", use_largereps=True)
    with pytest.raises(ValueError, match=r"stage\(s\) \['fab', 'square', 'fab-t'\] with "
                                         r"stochastic=True are not defined"):
        make_autoattack("aa_plus", stochastic=True)
    with pytest.raises(ValueError, match=r"norm 'l3' is not defined for AutoAttack stage "
                                         r"'fab_t'"):
        make_autoattack("fab_t", norm="l3")
    with pytest.raises(ValueError, match=r"use_largereps=True is not defined for norm 'linf' "
                                         r"\(stage 'apgd_ce'\)"):
        make_autoattack("apgd_ce", use_largereps=True)
    with pytest.raises(ValueError, match="attacks_to_run entry"):
        make_autoattack("aa_standard", attacks_to_run=("apgd-ce", "pgd"))
    with pytest.raises(ValueError, match="restarts"):
        make_autoattack("aa_standard", restarts=0)
    # Every defined cell builds, directly and through the general registry.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for version in ("standard", "plus", "rand"):
            for norm in ("linf", "l2", "l1", "Linf", "L2", "L1"):
                assert make_autoattack(f"aa_{version}", norm=norm, eps=0.5).shard_local
    assert make_attack("aa_standard", norm="l1", eps=10.0).params["norm"] == "l1"
    assert make_autoattack("apgd_ce", norm="l1", use_largereps=True).params["use_largereps"]


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_standard_cascade_l2_l1(norm, params, data):
    x, y = data
    eps = EPS[norm]
    run = jax.jit(lambda p, x, y, k: autoattack(
        lambda z: _apply(p, z), x, y, k, eps=eps, norm=norm, num_iters=6, n_queries=40,
        n_target_classes=3, return_details=True), compiler_options=FAST)
    x_adv, details = run(params, x, y, jax.random.key(0))
    assert set(details) == {"clean", "apgd-ce", "apgd-t", "fab-t", "square", "robust"}
    robust = np.asarray(details["robust"])
    changed = _check_threat_model(x_adv, x, y, params, norm, eps)
    np.testing.assert_array_equal(changed, ~robust & (np.asarray(jnp.argmax(
        _apply(params, x), -1)) == np.asarray(y)))
    assert float(details["square"]) < float(details["clean"]) - 0.2


def test_sanity_checks_use_the_norm_s_target_counts():
    """L1 'standard' runs APGD-T with 5 targets (FAB-T keeps 9): with 7
    classes only FAB-T asks for more targets than exist."""
    from advcore.attacks.checks import run_sanity_checks

    w = jnp.asarray(np.random.default_rng(0).normal(size=(16, 7)), jnp.float32)
    f = lambda z: z.reshape(z.shape[0], -1) @ w  # noqa: E731
    x = jnp.linspace(0.1, 0.9, 3 * 16).reshape(3, 4, 4, 1)
    y = jnp.argmax(f(x), -1)
    key = jax.random.key(0)
    l1 = run_sanity_checks(f, x, y, key, norm="l1")
    assert any("(9) than possible (6) are used in FAB-T" in m for m in l1)
    assert not any("APGD-T" in m for m in l1)
    linf = run_sanity_checks(f, x, y, key)
    assert any("(9) than possible (6)" in m and "APGD-T" in m for m in linf)
