"""Carlini-Wagner L2 and JSMA on the tiny trained model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import basic_attacks_model as tiny
from advcore import attacks


def _l2(a, b):
    return np.sqrt(np.sum(np.square(np.asarray(a) - np.asarray(b)).reshape(len(a), -1), axis=1))


@pytest.fixture(scope="module")
def setup():
    f = tiny.logits_fn_for(0)
    x, y = tiny.make_data(9, 32)
    return f, jnp.asarray(x), jnp.asarray(y)


@pytest.fixture(scope="module")
def cw_runs(setup):
    """Untargeted CW-L2, PGD-L2 and targeted CW-L2, compiled together once."""
    f, x, y = setup
    targets = attacks.random_targets(tiny.key(3), y, tiny.NUM_CLASSES)

    @jax.jit
    def run(x, y, t, key):
        cw = attacks.cw_l2(f, x, y, max_iterations=100, binary_search_steps=5)
        pgd = attacks.pgd(f, x, y, key, eps=1.5, step_size=0.3, num_steps=10, norm="l2")
        cw_t = attacks.cw_l2(f, x, None, targeted=True, target=t, max_iterations=100,
                             binary_search_steps=5)
        return cw, pgd, cw_t

    return (*run(x, y, targets, tiny.key(0)), targets)


def test_cw_l2_smaller_than_pgd_l2_on_common_successes(setup, cw_runs):
    f, x, y = setup
    x_cw, x_pgd, _, _ = cw_runs
    ok_cw = tiny.predict(f, x_cw) != np.asarray(y)
    ok_pgd = tiny.predict(f, x_pgd) != np.asarray(y)
    both = ok_cw & ok_pgd
    assert both.sum() >= 0.5 * len(y)
    d_cw = _l2(x_cw, x)[both]
    d_pgd = _l2(x_pgd, x)[both]
    assert d_cw.mean() < 0.9 * d_pgd.mean()


def test_cw_l2_outputs_in_bounds_and_failures_unchanged(setup, cw_runs):
    f, x, y = setup
    x_cw = cw_runs[0]
    assert float(x_cw.min()) >= 0.0 and float(x_cw.max()) <= 1.0
    failed = tiny.predict(f, x_cw) == np.asarray(y)
    np.testing.assert_array_equal(np.asarray(x_cw)[failed], np.asarray(x)[failed])
    assert bool(jnp.all(jnp.isfinite(x_cw)))


def test_cw_l2_targeted_reaches_targets(setup, cw_runs):
    f, x, _ = setup
    x_t, targets = cw_runs[2], cw_runs[3]
    hit = tiny.predict(f, x_t) == np.asarray(targets)
    assert hit.mean() >= 0.5
    # examples that missed their target are returned unchanged
    np.testing.assert_array_equal(np.asarray(x_t)[~hit], np.asarray(x)[~hit])


def test_cw_l2_argument_checks():
    f = lambda z: z.reshape(z.shape[0], -1)[:, :4]  # noqa: E731
    x, y = jnp.zeros((2,) + tiny.SHAPE), jnp.zeros(2, jnp.int32)
    with pytest.raises(ValueError, match="binary_search_steps"):
        attacks.cw_l2(f, x, y, binary_search_steps=0)
    with pytest.raises(ValueError, match="target"):
        attacks.cw_l2(f, x, None, targeted=True)


@pytest.fixture(scope="module")
def jsma_run(setup):
    f, x, y = setup
    key = tiny.key(5)
    x_adv, x_capped = jax.jit(lambda x, y, k: (
        attacks.jsma(f, x, y, k, gamma=0.25), attacks.jsma(f, x, y, k, gamma=0.1)))(x, y, key)
    return x_adv, attacks.random_targets(key, y, tiny.NUM_CLASSES), x_capped


def test_jsma_changes_at_most_gamma_fraction_of_pixels(setup, jsma_run):
    _, x, _ = setup
    x_adv, _, x_capped = jsma_run
    n_features = int(np.prod(tiny.SHAPE))
    changed = (np.asarray(x_adv) != np.asarray(x)).reshape(x.shape[0], -1).sum(1)
    assert changed.max() <= 0.25 * n_features
    assert changed.max() > 0
    # gamma = 0.1 binds: floor(0.1 * 64 / 2) = 3 pair iterations, <= 6.4 pixels
    capped = (np.asarray(x_capped) != np.asarray(x)).reshape(x.shape[0], -1).sum(1)
    assert capped.max() <= 0.1 * n_features and capped.max() == 6
    # same trajectory, cut short: examples needing > 3 pairs stop exactly at the cap
    assert np.any(changed > 6)
    np.testing.assert_array_equal(capped[changed > 6], 6)
    np.testing.assert_array_equal(capped[changed <= 6], changed[changed <= 6])
    # theta = +1: pixels only increase, and changed pixels are saturated at 1
    assert bool(jnp.all(x_adv >= x))
    np.testing.assert_array_equal(np.asarray(x_adv)[np.asarray(x_adv != x)], 1.0)


def test_jsma_reaches_target_for_most_examples(setup, jsma_run):
    f, _, y = setup
    x_adv, targets, _ = jsma_run
    assert not np.any(np.asarray(targets == y))
    assert np.mean(tiny.predict(f, x_adv) == np.asarray(targets)) >= 0.5


def test_jsma_runs_on_mnist_sized_inputs():
    w = jax.random.normal(tiny.key(0), (784, 10))
    f = lambda z: z.reshape(z.shape[0], -1) @ w  # noqa: E731
    x = jax.random.uniform(tiny.key(1), (2, 28, 28, 1), maxval=0.5)
    t = jnp.asarray([3, 7])
    x_adv = jax.jit(lambda x: attacks.jsma(f, x, None, target=t, max_iters=3))(x)
    changed = (np.asarray(x_adv) != np.asarray(x)).reshape(2, -1).sum(1)
    assert changed.max() <= 6 and changed.min() >= 2  # two pixels per iteration


def test_jsma_argument_checks():
    f = lambda z: z.reshape(z.shape[0], -1)[:, :4]  # noqa: E731
    x = jnp.zeros((2,) + tiny.SHAPE)
    with pytest.raises(ValueError, match=r"gamma must be a finite number in \(0, 1\], got 0.0"):
        attacks.jsma(f, x, None, target=jnp.zeros(2, jnp.int32), gamma=0.0)
    with pytest.raises(ValueError, match="target"):
        attacks.jsma(f, x, None)


def _jsma_reference(w, c, x, target, theta, max_iters, lo=0.0, hi=1.0):
    """Plain numpy JSMA for the linear model ``z = x @ w + c`` (cleverhans v3
    control flow, flat row-major argmax over the pair scores)."""
    x = x.copy()
    n = x.shape[0]
    a = w[:, target]
    b = w.sum(axis=1) - a  # constant gradients: a linear model
    domain = (x < hi) if theta > 0 else (x > lo)
    for _ in range(max_iters):
        if np.argmax(x @ w + c) == target or domain.sum() < 2:
            break
        pair_a = a[:, None] + a[None, :]
        pair_b = b[:, None] + b[None, :]
        ok = domain[:, None] & domain[None, :] & ~np.eye(n, dtype=bool)
        ok &= (pair_a > 0) & (pair_b < 0) if theta > 0 else (pair_a < 0) & (pair_b > 0)
        if not ok.any():
            break
        best = np.argmax(np.where(ok, -pair_a * pair_b, -np.inf))
        p, q = divmod(best, n)
        x[[p, q]] = np.clip(x[[p, q]] + theta, lo, hi)
        domain[[p, q]] = False
    return x


@pytest.mark.parametrize("theta", [1.0, -1.0])
def test_jsma_matches_a_numpy_reference_pair_by_pair(theta):
    # Pixels share one of 4 weight rows, so many pair scores tie and the
    # tie-break (first maximum in row-major order) decides which pixels move;
    # few iterations, so most pixels stay unchanged and a wrong choice shows.
    rng = np.random.default_rng(0)
    n, k, batch, iters = 20, 4, 8, 2
    rows = (rng.integers(-3, 4, size=(4, k)) / 4.0).astype(np.float32)
    w = rows[rng.integers(0, 4, size=n)]
    c = np.zeros(k, np.float32)
    x = rng.integers(0, 3, size=(batch, n)).astype(np.float32) / 2.0
    target = rng.integers(0, k, size=batch).astype(np.int32)
    f = lambda v: v @ w + c  # noqa: E731
    got = np.asarray(jax.jit(lambda v, t: attacks.jsma(
        f, v, None, target=t, theta=theta, max_iters=iters))(jnp.asarray(x), jnp.asarray(target)))
    for i in range(batch):
        want = _jsma_reference(w, c, x[i], int(target[i]), theta, iters)
        np.testing.assert_array_equal(got[i], want, err_msg=f"example {i}")
