"""FAB / FAB-T (incl. the L-inf hyperplane projection) and Square on a tiny model."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linprog

import aa_tiny_model as tiny
from advcore.attacks.fab import fab, fab_targeted, projection_linf
from advcore.attacks.pgd import pgd
from advcore.attacks.square import _side_table, square, square_p_schedule

EPS = tiny.EPS
FAST = tiny.FAST


@pytest.fixture(scope="module")
def data():
    return tiny.jnp_data(7, 64)


_apply = tiny.apply


def _masked_apply(params, x):
    """The same model with its input gradient masked (always zero)."""
    return _apply(params, jax.lax.stop_gradient(x))


def _jit(attack, model=_apply, **kw):
    def run(params, x, y, key, active):
        return attack(lambda z: model(params, z), x, y, key, active=active, **kw)

    return jax.jit(chex.assert_max_traces(run, n=1), compiler_options=FAST)


@pytest.fixture(scope="module")
def fab_t():
    return _jit(fab_targeted, eps=EPS, num_iters=15, n_target_classes=3)


@pytest.fixture(scope="module")
def square_masked():
    # Square is query-only, so it behaves the same on the masked model; testing
    # it there also shows it does not need gradients.
    return _jit(square, model=_masked_apply, eps=tiny.EPS_LARGE, n_queries=200)


def _all(x):
    return jnp.ones((x.shape[0],), bool)


def _linf(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)).reshape(len(a), -1).max(1)


# --------------------------------------------------------------------------
# The minimal L-inf box-constrained projection onto a hyperplane.
# --------------------------------------------------------------------------


def _lp_min_linf(t, w, b):
    """min ||d||_inf s.t. <w, t + d> = b, 0 <= t + d <= 1 (None if infeasible)."""
    dim = len(t)
    c = np.r_[np.zeros(dim), 1.0]
    a_ub = np.r_[np.c_[np.eye(dim), -np.ones(dim)], np.c_[-np.eye(dim), -np.ones(dim)]]
    bounds = [(-t[i], 1 - t[i]) for i in range(dim)] + [(0, None)]
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(2 * dim), A_eq=np.r_[w, 0.0][None],
                  b_eq=[b - w @ t], bounds=bounds)
    return res.fun if res.status == 0 else None


@pytest.mark.parametrize("ties", [False, True])
def test_projection_linf_is_the_lp_optimum(ties):
    rng = np.random.default_rng(0)
    n, dim = 40, 12
    t = rng.uniform(0, 1, (n, dim))
    if ties:  # MNIST-like: many equal pixels, hence tied breakpoints
        t = np.round(t * 3) / 3
    w = rng.normal(size=(n, dim))
    w[::4, :3] = 0.0  # some zero coordinates
    # Hyperplanes through a random box point (feasible) or far away (infeasible).
    b = np.where(np.arange(n) % 5 == 4, 3.0 * np.abs(w).sum(1),
                 (w * rng.uniform(0, 1, (n, dim))).sum(1))
    d = np.asarray(jax.jit(projection_linf)(*(jnp.asarray(a, jnp.float32) for a in (t, w, b))))
    assert np.all(t + d >= -1e-6) and np.all(t + d <= 1 + 1e-6)
    n_feasible = 0
    for i in range(n):
        opt = _lp_min_linf(t[i], w[i], b[i])
        if opt is None:
            continue
        n_feasible += 1
        assert abs(w[i] @ (t[i] + d[i]) - b[i]) < 1e-4, i
        assert abs(np.abs(d[i]).max() - opt) < 1e-4, (i, np.abs(d[i]).max(), opt)
    assert n_feasible >= 30
    # Zero-weight coordinates never move; a zero hyperplane gives a zero step.
    assert np.all(d[::4, :3] == 0)
    zero = projection_linf(jnp.full((1, 5), 0.5), jnp.zeros((1, 5)), jnp.ones((1,)))
    np.testing.assert_array_equal(zero, 0.0)


# --------------------------------------------------------------------------
# FAB-T / FAB.
# --------------------------------------------------------------------------


def test_fab_t_invariants_and_success_within_eps(fab_t, params, data):
    x, y = data
    f = lambda z: _apply(params, z)  # noqa: E731
    out = fab_t(params, x, y, jax.random.key(0), _all(x))
    assert out.shape == x.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    changed = np.any(np.asarray(out) != np.asarray(x), axis=(1, 2, 3))
    pred = np.asarray(jnp.argmax(f(out), -1))
    assert changed.sum() > 0
    # Every reported success is misclassified and within eps; the rest is x.
    assert np.all(pred[changed] != np.asarray(y)[changed])
    assert _linf(out, x)[changed].max() <= EPS + 1e-6
    assert tiny.accuracy(f, out, y) < 0.9
    # Deterministic (FAB-T with one restart draws nothing random).
    np.testing.assert_array_equal(fab_t(params, x, y, jax.random.key(3), _all(x)), out)
    # Inactive points unchanged, active ones as in the full run.
    active = jnp.arange(x.shape[0]) % 3 == 0
    masked = np.asarray(fab_t(params, x, y, jax.random.key(0), active))
    np.testing.assert_array_equal(masked[~np.asarray(active)], np.asarray(x)[~np.asarray(active)])
    np.testing.assert_allclose(masked[np.asarray(active)], np.asarray(out)[np.asarray(active)],
                               atol=1e-6)


def test_fab_t_finds_small_perturbations(fab_t, params, data):
    """FAB minimises the norm: with a huge eps it still returns points close to
    the boundary, far inside the budget (PGD would use all of it)."""
    x, y = data
    run = _jit(fab_targeted, eps=0.5, num_iters=15, n_target_classes=3)
    out = run(params, x, y, jax.random.key(0), _all(x))
    dist = _linf(out, x)
    broken = np.asarray(jnp.argmax(_apply(params, out), -1)) != np.asarray(y)
    assert broken.mean() > 0.9
    assert np.median(dist[broken]) < 0.1


def test_fab_untargeted_with_restarts(params, data):
    x, y = data
    run = _jit(fab, eps=EPS, num_iters=10, restarts=2)
    out = run(params, x, y, jax.random.key(0), _all(x))
    changed = np.any(np.asarray(out) != np.asarray(x), axis=(1, 2, 3))
    assert changed.sum() > 0
    assert _linf(out, x).max() <= EPS + 1e-6
    assert np.all(np.asarray(jnp.argmax(_apply(params, out), -1))[changed]
                  != np.asarray(y)[changed])


def test_fab_bad_arguments():
    f = lambda z: jnp.zeros((z.shape[0], 4))  # noqa: E731
    x, y, k = jnp.zeros((2, 4, 4, 1)), jnp.zeros((2,), jnp.int32), jax.random.key(0)
    with pytest.raises(ValueError, match="norm"):
        fab_targeted(f, x, y, k, eps=0.1, norm="l0")
    with pytest.raises(ValueError, match="n_target_classes"):
        fab_targeted(f, x, y, k, eps=0.1, n_target_classes=4)
    with pytest.raises(ValueError, match="alpha_max"):
        fab_targeted(f, x, y, k, eps=0.1, alpha_max=2.0)


# --------------------------------------------------------------------------
# Square.
# --------------------------------------------------------------------------


def test_square_p_schedule_and_sides():
    # Halvings happen strictly after 10, 50, 200, ... queries (upstream p_selection).
    expected = {0: 0.8, 10: 0.8, 11: 0.4, 50: 0.4, 51: 0.2, 201: 0.1, 501: 0.05,
                1001: 0.025, 2001: 0.0125, 4001: 0.00625, 6001: 0.8 / 256, 8001: 0.8 / 512}
    for i, p in expected.items():
        assert square_p_schedule(i) == pytest.approx(p), i
    # Rescaled schedule (not used by AutoAttack): 1000 queries count as 10000.
    assert square_p_schedule(2, n_queries=1000, rescale=True) == pytest.approx(0.4)
    sides = _side_table(5000, 0.8, 28, 28, False)
    assert sides[0] == 25 and sides[11] == 18 and sides[51] == 13 and sides[4999] == 2
    assert _side_table(5000, 0.8, 4, 4, False).max() <= 4
    assert _side_table(5000, 0.8, 8, 8, False).min() >= 1


def test_square_breaks_a_gradient_masked_model(square_masked, params, data):
    x, y = data
    f = lambda z: _apply(params, z)  # noqa: E731
    eps = tiny.EPS_LARGE
    clean = tiny.accuracy(f, x, y)
    # Gradient attacks get nowhere on the masked model ...
    x_pgd = pgd(lambda z: _masked_apply(params, z), x, y, jax.random.key(0), eps=eps,
                step_size=eps / 4, num_steps=5, random_start="none")
    assert tiny.accuracy(f, x_pgd, y) == clean
    # ... while Square, with forward passes only, lowers the accuracy.
    out = square_masked(params, x, y, jax.random.key(0), _all(x))
    assert tiny.accuracy(f, out, y) < clean - 0.1
    assert _linf(out, x).max() <= eps + 1e-6
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    changed = np.any(np.asarray(out) != np.asarray(x), axis=(1, 2, 3))
    assert np.all(np.asarray(jnp.argmax(f(out), -1))[changed] != np.asarray(y)[changed])


def test_square_invariants(square_masked, params, data):
    x, y = data
    key = jax.random.key(0)
    out = np.asarray(square_masked(params, x, y, key, _all(x)))
    np.testing.assert_array_equal(square_masked(params, x, y, key, _all(x)), out)
    other = np.asarray(square_masked(params, x, y, jax.random.key(1), _all(x)))
    assert not np.array_equal(other, out)
    active = np.arange(x.shape[0]) % 2 == 1
    masked = np.asarray(square_masked(params, x, y, key, jnp.asarray(active)))
    np.testing.assert_array_equal(masked[~active], np.asarray(x)[~active])
    # No point is active: nothing changes (and the loop exits at once).
    np.testing.assert_array_equal(square_masked(params, x, y, key, ~_all(x)), x)


def test_square_stops_early_when_everything_is_broken(data):
    """A model that is right at the clean points and wrong at any perturbed
    one: the stripes init breaks every point, so the query loop never runs
    (3 forward passes in all: clean, init, final check), budget or not."""
    x, y = data
    calls = []

    def fragile(z):
        jax.debug.callback(lambda: calls.append(1))
        same = jnp.all(jnp.abs(z - x) < 1e-7, axis=(1, 2, 3))
        label = jnp.where(same, y, (y + 1) % tiny.NUM_CLASSES)
        return jax.nn.one_hot(label, tiny.NUM_CLASSES)

    out = jax.jit(lambda k: square(fragile, x, y, k, eps=EPS, n_queries=1000))(
        jax.random.key(0))
    jax.effects_barrier()
    assert len(calls) == 3
    assert np.all(np.asarray(jnp.argmax(fragile(out), -1)) != np.asarray(y))
    assert _linf(out, x).max() <= EPS + 1e-6
