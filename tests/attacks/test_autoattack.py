"""AutoAttack cascade, make_autoattack and the sanity checks on a tiny trained model."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aa_tiny_model as tiny
from advcore.attacks.autoattack import (_bucket_sizes, _compacted, autoattack, make_autoattack,
                                        version_attacks)
from advcore.attacks.checks import check_square_sr, run_sanity_checks
from advcore.attacks.pgd import fgsm, pgd

EPS = tiny.EPS
FAST = tiny.FAST
# Small budgets keep the test quick; the cascade logic is budget-independent.
AA_KW = dict(eps=EPS, num_iters=10, n_queries=100, n_target_classes=3)


@pytest.fixture(scope="module")
def data():
    return tiny.jnp_data(11, 96)


_apply = tiny.apply


@pytest.fixture(scope="module")
def aa_run():
    chex.clear_trace_counter()

    def run(params, x, y, key):
        return autoattack(lambda z: _apply(params, z), x, y, key, return_details=True, **AA_KW)

    return jax.jit(chex.assert_max_traces(run, n=1), compiler_options=FAST)


@pytest.fixture(scope="module")
def aa_result(aa_run, params, data):
    x, y = data
    return aa_run(params, x, y, jax.random.key(0))


def test_accuracy_ordering(aa_result, params, data):
    """AutoAttack <= PGD-20 <= FGSM <= clean accuracy."""
    x, y = data
    f = lambda z: _apply(params, z)  # noqa: E731
    x_aa, details = aa_result
    clean = tiny.accuracy(f, x, y)
    acc_fgsm = tiny.accuracy(f, fgsm(f, x, y, None, eps=EPS), y)
    pgd20 = jax.jit(lambda p, x, y, k: pgd(lambda z: _apply(p, z), x, y, k, eps=EPS,
                                            step_size=EPS / 4, num_steps=20),
                    compiler_options=FAST)
    acc_pgd = tiny.accuracy(f, pgd20(params, x, y, jax.random.key(0)), y)
    acc_aa = tiny.accuracy(f, x_aa, y)
    assert acc_aa <= acc_pgd <= acc_fgsm <= clean
    assert acc_aa < clean - 0.2  # the budget really bites
    assert float(details["square"]) == pytest.approx(acc_aa)


def test_cascade_bookkeeping(aa_result, params, data):
    x, y = data
    f = lambda z: _apply(params, z)  # noqa: E731
    x_aa, details = aa_result
    # (jit returns dicts with sorted keys; version_attacks gives the order.)
    assert set(details) == {"clean", "apgd-ce", "apgd-t", "fab-t", "square", "robust"}
    accs = [float(details[k]) for k in ("clean", "apgd-ce", "apgd-t", "fab-t", "square")]
    assert accs[0] == pytest.approx(tiny.accuracy(f, x, y))
    assert all(a >= b for a, b in zip(accs, accs[1:]))  # robust-only cascade
    robust = np.asarray(details["robust"])
    pred = np.asarray(jnp.argmax(f(x_aa), -1))
    # Robust points are returned unchanged and still correct; the others are
    # misclassified, inside the eps-ball and the box.
    np.testing.assert_array_equal(np.asarray(x_aa)[robust], np.asarray(x)[robust])
    assert np.all(pred[robust] == np.asarray(y)[robust])
    assert np.all(pred[~robust] != np.asarray(y)[~robust])
    linf = np.abs(np.asarray(x_aa) - np.asarray(x)).reshape(len(x), -1).max(1)
    assert linf.max() <= EPS + 1e-6
    assert float(x_aa.min()) >= 0.0 and float(x_aa.max()) <= 1.0


def test_clean_misclassified_points_are_untouched(aa_run, params, data):
    """Labels shifted for a third of the points: those are wrong at the clean
    input, count as non-robust and are returned as the clean input."""
    x, y = data
    wrong = np.arange(len(y)) % 3 == 0
    y_bad = jnp.where(jnp.asarray(wrong), (y + 1) % tiny.NUM_CLASSES, y)
    x_aa, details = aa_run(params, x, y_bad, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(x_aa)[wrong], np.asarray(x)[wrong])
    assert not np.any(np.asarray(details["robust"])[wrong])
    assert float(details["clean"]) == pytest.approx(1.0 - wrong.mean())


def test_deterministic_and_traced_once(aa_run, aa_result, params, data):
    x, y = data
    x_aa, details = aa_run(params, x, y, jax.random.key(0))  # traced-once check inside
    np.testing.assert_array_equal(x_aa, aa_result[0])
    assert float(details["square"]) == float(aa_result[1]["square"])


def test_compaction_routes_points_correctly():
    """``_compacted`` runs the stage on the active points only (sorted to the
    front, smallest bucket) and scatters the results back."""
    seen = []

    def stage(xs, ys, key, act):
        seen.append(xs.shape[0])  # trace-time bucket sizes
        return xs + 10.0 * act[:, None], ~act

    x = jnp.arange(8.0)[:, None]
    y = jnp.zeros((8,), jnp.int32)
    active = jnp.array([0, 1, 0, 0, 1, 0, 0, 0], bool)
    adv, robust = jax.jit(lambda a: _compacted(stage, x, y, jax.random.key(0), a, 4))(active)
    assert sorted(seen) == [2, 4, 6, 8]
    np.testing.assert_array_equal(adv[:, 0], np.arange(8.0) + 10.0 * np.asarray(active))
    np.testing.assert_array_equal(robust, ~np.asarray(active))
    assert _bucket_sizes(64, 4) == (16, 32, 48, 64) and _bucket_sizes(5, 4) == (2, 3, 4, 5)
    assert _bucket_sizes(64, 1) == (64,)


def test_compacted_cascade_matches_masked_for_deterministic_stage(params, data):
    """FAB-T draws nothing random, so compaction must not change its result."""
    x, y = data
    kw = dict(AA_KW, attacks_to_run=("fab-t",))
    runs = [jax.jit(lambda p, x, y, k, c=c: autoattack(lambda z: _apply(p, z), x, y, k,
                                                        compact=c, **kw),
                    compiler_options=FAST)(params, x, y, jax.random.key(0)) for c in (1, 2)]
    np.testing.assert_allclose(runs[0], runs[1], atol=1e-5)


def test_versions_and_arguments():
    assert version_attacks("standard") == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert version_attacks("plus") == ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
    assert version_attacks("rand") == ("apgd-ce", "apgd-dlr")
    f = lambda z: jnp.zeros((z.shape[0], 10))  # noqa: E731
    x, y, k = jnp.zeros((2, 4, 4, 1)), jnp.zeros((2,), jnp.int32), jax.random.key(0)
    with pytest.raises(ValueError, match="version"):
        autoattack(f, x, y, k, eps=0.1, version="fast")
    with pytest.raises(ValueError, match="attacks_to_run"):
        autoattack(f, x, y, k, eps=0.1, attacks_to_run=("pgd",))
    with pytest.raises(ValueError, match="l0"):
        autoattack(f, x, y, k, eps=0.1, norm="l0")
    with pytest.raises(ValueError, match="eps"):
        autoattack(f, x, y, k, eps=-1.0)


def test_rand_version_with_a_randomised_model(params, data):
    x, y = data

    def noisy(z, key, p=params):
        return _apply(p, z) + 0.05 * jax.random.normal(key, (z.shape[0], tiny.NUM_CLASSES))

    run = jax.jit(lambda x, y, k: autoattack(noisy, x, y, k, eps=EPS, version="rand",
                                             num_iters=5, eot_iters=3, stochastic=True,
                                             return_details=True),
                  compiler_options=FAST)
    x_aa, details = run(x, y, jax.random.key(0))
    assert set(details) == {"clean", "apgd-ce", "apgd-dlr", "robust"}
    assert float(details["apgd-dlr"]) < float(details["clean"])
    linf = np.abs(np.asarray(x_aa) - np.asarray(x)).reshape(len(x), -1).max(1)
    assert linf.max() <= EPS + 1e-6


def test_make_autoattack(params, data):
    x, y = data
    f = lambda z: _apply(params, z)  # noqa: E731
    for name in ("aa_standard", "aa_plus", "aa_rand", "apgd_ce", "apgd-dlr", "apgd_t", "fab",
                 "fab_t", "square"):
        assert callable(make_autoattack(name))
    with pytest.raises(ValueError, match="unknown AutoAttack attack name"):
        make_autoattack("aa_turbo")
    with pytest.raises(ValueError, match="num_iter"):
        make_autoattack("apgd_ce", num_iter=5)  # typo of num_iters
    # Registry generics: num_steps -> num_iters, step_size ignored; defaults eps 0.031.
    attack = make_autoattack("apgd_ce", num_steps=3, step_size=0.5)
    out = jax.jit(lambda x, y, k: attack(f, x, y, k))(x, y, jax.random.key(0))
    linf = np.abs(np.asarray(out) - np.asarray(x)).reshape(len(x), -1).max(1)
    assert linf.max() <= 0.031 + 1e-6 and linf.max() > 0.0
    # The general registry builds the single stages too (README's attack
    # table, advcore.evaluate --attacks=apgd_ce), as the same attack.
    from advcore.attacks import make_attack
    from advcore.attacks.autoattack import MAKE_NAMES
    from advcore.attacks.registry import AA_STAGE_NAMES
    assert set(AA_STAGE_NAMES) == {n for n in MAKE_NAMES if not n.startswith("aa_")}
    for name in AA_STAGE_NAMES:
        stage = make_attack(name)
        assert stage.shard_local and stage.params == make_autoattack(name).params
    via_registry = make_attack("apgd_ce", num_steps=3, step_size=0.5)
    again = jax.jit(lambda x, y, k: via_registry(f, x, y, k))(x, y, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(again), np.asarray(out))


# --------------------------------------------------------------------------
# Sanity checks.
# --------------------------------------------------------------------------


def test_sanity_checks_flag_bad_models(params, data):
    x, y = data
    f = lambda z: _apply(params, z)  # noqa: E731
    key = jax.random.key(0)
    assert run_sanity_checks(f, x, y, key) == []
    masked = run_sanity_checks(lambda z: f(jax.lax.stop_gradient(z)), x, y, key)
    assert len(masked) == 1 and "zero gradient" in masked[0] and "stop_gradient" in masked[0]
    quantised = run_sanity_checks(lambda z: f(jnp.round(z * 255) / 255), x, y, key)
    assert any("zero gradient" in m for m in quantised)
    probs = run_sanity_checks(lambda z: jax.nn.softmax(f(z)), x, y, key)
    assert any("probability" in m for m in probs)
    rng = np.random.default_rng(0)
    noisy = run_sanity_checks(lambda z: f(z) + rng.normal(size=(z.shape[0], 10)), x, y, key)
    assert any("randomised" in m for m in noisy)
    assert run_sanity_checks(lambda z: f(z) + rng.normal(size=(z.shape[0], 10)), x, y, key,
                             version="rand") == []
    stoch = run_sanity_checks(lambda z, k: f(z) + jax.random.normal(k, (z.shape[0], 10)),
                              x, y, key, stochastic=True)
    assert any("randomised" in m for m in stoch)

    def dynamic(z):  # a test-time "defence" that runs an inner gradient step
        g = jax.grad(lambda v: jnp.sum(f(v)))(z)
        return f(z + 0.01 * g)

    assert any("dynamic" in m for m in run_sanity_checks(dynamic, x, y, key))
    few = run_sanity_checks(lambda z: f(z)[:, :4], x, y % 4, key)
    assert any("target classes" in m for m in few)


def test_square_success_check():
    assert check_square_sr({"clean": 1.0, "apgd-ce": 0.5, "apgd-t": 0.45, "square": 0.40})
    assert not check_square_sr({"clean": 1.0, "apgd-ce": 0.5, "apgd-t": 0.45, "square": 0.449})
    assert not check_square_sr({"clean": 1.0, "square": 0.1})  # needs > 2 entries
    details = {"clean": jnp.float32(1.0), "apgd-ce": jnp.float32(0.6),
               "square": jnp.float32(0.5), "robust": jnp.zeros((4,), bool)}
    assert len(check_square_sr(details)) == 1
