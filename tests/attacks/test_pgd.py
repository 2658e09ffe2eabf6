"""PGD / FGSM / MI-FGSM and the attack registry on a tiny trained model.

Every attack call is jitted (eager op-by-op dispatch compiles each primitive
separately, which is slow on XLA:CPU) and most tests use rbg keys (see
``basic_attacks_model.key``); checks are done in numpy.
"""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import basic_attacks_model as tiny
from advcore import attacks
from advcore.attacks import losses, norms

EPS = 0.11


@pytest.fixture(scope="module")
def model():
    apply_fn, variables = tiny.trained(0)
    return apply_fn, variables, tiny.logits_fn_for(0)


@pytest.fixture(scope="module")
def data():
    x, y = tiny.make_data(7, 64)
    return jnp.asarray(x), jnp.asarray(y)


@functools.lru_cache(maxsize=None)
def jitted(apply_fn, **kw):
    """A factory-made jitted PGD: one compilation per configuration."""

    @jax.jit
    def run(variables, x, y, key):
        return attacks.pgd(lambda z: apply_fn(variables, z), x, y, key, **kw)

    return run


def make_traced_once_pgd(apply_fn, **kw):
    """The user-facing pattern: a jitted (variables, x, y, key) -> x_adv."""

    @jax.jit
    @chex.assert_max_traces(n=1)
    def attack_step(variables, x, y, key):
        return attacks.pgd(lambda z: apply_fn(variables, z), x, y, key, **kw)

    return attack_step


def _pgd(model, x, y, key, **kw):
    kw = {"eps": EPS, "step_size": EPS / 4, "num_steps": 10, **kw}
    return jitted(model[0], **kw)(model[1], x, y, key)


@functools.lru_cache(maxsize=None)
def _input_grad(logits_fn):
    return jax.jit(jax.grad(lambda z, y: losses.ce(logits_fn(z), y).sum()))


# --------------------------------------------------------------------------
# Threat model invariants.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def linf_runs(model, data):
    """PGD-10 L-inf with each random start, plus saturated inputs, one program."""
    x, y = data
    xs = jnp.concatenate([jnp.zeros_like(x[:16]), jnp.ones_like(x[:16]), x[32:]])
    f = model[2]

    @jax.jit
    def run(x, xs, y, k):
        kw = dict(eps=EPS, step_size=EPS / 4, num_steps=10)
        out = {s: attacks.pgd(f, x, y, k, random_start=s, **kw)
               for s in ("uniform", "normal", "none")}
        out["saturated"] = attacks.pgd(f, xs, y, k, **kw)
        return out

    return xs, run(x, xs, y, tiny.key(0))


@pytest.mark.parametrize("random_start", ["uniform", "normal", "none"])
def test_linf_output_in_ball_and_bounds(data, linf_runs, random_start):
    x, _ = data
    x_adv = linf_runs[1][random_start]
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    dist = np.abs(np.asarray(x_adv - x))
    assert dist.max() <= EPS + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert dist.max() > 0.5 * EPS  # it actually moved


def test_bounds_clip_applies_to_saturated_pixels(linf_runs):
    xs, runs = linf_runs
    x_adv = np.asarray(runs["saturated"])
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.abs(x_adv - np.asarray(xs)).max() <= EPS + 1e-6
    assert np.any(x_adv[:16] > 0) and np.any(x_adv[16:32] < 1)


def test_l2_output_in_ball_and_bounds(model, data):
    x, y = data
    x_adv = _pgd(model, x, y, tiny.key(0), norm="l2", eps=0.8, step_size=0.2)
    dist = np.asarray(norms.l2_norm(x_adv - x))
    assert dist.max() <= 0.8 * (1 + 1e-5)
    assert dist.min() > 0.4
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_deterministic_per_key_and_keys_differ(model, data):
    # Default threefry keys here (the rest of the file uses rbg keys).
    x, y = data
    a = _pgd(model, x, y, jax.random.PRNGKey(3))
    b = _pgd(model, x, y, jax.random.PRNGKey(3))
    c = _pgd(model, x, y, jax.random.PRNGKey(4))
    np.testing.assert_array_equal(a, b)
    assert float(jnp.max(jnp.abs(a - c))) > 1e-3


def test_l2_zero_gradient_gives_no_nan():
    const = lambda z: jnp.zeros((z.shape[0], 3)) + 0.0 * z.sum()  # noqa: E731
    x = jnp.full((2,) + tiny.SHAPE, 0.5)
    y = jnp.zeros(2, jnp.int32)
    run = jax.jit(lambda k: [attacks.pgd(const, x, y, k, eps=0.5, step_size=0.1, num_steps=3,
                                         norm="l2", random_start=s) for s in ("none", "uniform")])
    x_none, x_unif = run(tiny.key(0))
    assert bool(jnp.all(jnp.isfinite(x_unif)))
    np.testing.assert_array_equal(x_none, x)
    assert np.all(np.isfinite(np.asarray(norms.l2_direction(np.zeros((2, 3), np.float32)))))


# --------------------------------------------------------------------------
# jit, tracing, reference loop, step size.
# --------------------------------------------------------------------------


def test_jit_traces_once_across_calls(model, data):
    apply_fn, variables, _ = model
    x, y = data
    chex.clear_trace_counter()
    run = make_traced_once_pgd(apply_fn, eps=EPS, step_size=0.01, num_steps=3, loss="kl",
                               random_start="normal")
    other = jax.tree_util.tree_map(lambda p: p * 1.01, variables)
    for i, v in enumerate([variables, other, variables]):
        run(v, x + 0.001 * i, y, tiny.key(i))  # would raise on a 2nd trace
    assert run._cache_size() == 1


def _reference_pgd(logits_fn, x, y, key, *, eps, step_size, num_steps, loss, random_start):
    """Plain Python loop, no fori_loop, written independently of pgd.py."""
    if random_start == "uniform":
        x_adv = x + eps * jax.random.uniform(key, x.shape, jnp.float32, -1.0, 1.0)
    else:
        x_adv = x + 0.001 * jax.random.normal(key, x.shape, jnp.float32)
    ref_logits = logits_fn(x)
    if loss == "ce":
        def total(z):
            logp = jax.nn.log_softmax(logits_fn(z))
            return -jnp.sum(jnp.take_along_axis(logp, y[:, None], 1))
    else:
        def total(z):
            p = jax.nn.softmax(ref_logits)
            return jnp.sum(p * (jax.nn.log_softmax(ref_logits) - jax.nn.log_softmax(logits_fn(z))))
    for _ in range(num_steps):
        g = jax.grad(total)(x_adv)
        x_adv = x_adv + step_size * jnp.sign(g)
        x_adv = jnp.minimum(jnp.maximum(x_adv, x - eps), x + eps)
        x_adv = jnp.clip(x_adv, 0.0, 1.0)
    return x_adv


def test_fori_loop_matches_python_reference(model, data):
    x, y = data
    f = model[2]
    key = tiny.key(11)
    configs = [dict(eps=EPS, step_size=0.02, num_steps=5, loss="ce", random_start="uniform"),
               dict(eps=EPS, step_size=0.02, num_steps=5, loss="kl", random_start="normal")]

    @jax.jit
    def run(x, y, k):
        return [(attacks.pgd(f, x, y, k, **kw), _reference_pgd(f, x, y, k, **kw))
                for kw in configs]

    for got, want in run(x, y, key):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
        assert np.abs(np.asarray(got - x)).max() > 0.05


def test_linf_step_magnitude_equals_step_size(model, data):
    x, y = data
    f = model[2]
    step = 0.013
    x_adv = jax.jit(lambda x, y: attacks.pgd(f, x, y, None, eps=1.0, step_size=step,
                                             num_steps=1, random_start="none"))(x, y)
    g = np.asarray(_input_grad(f)(x, y))
    x, x_adv = np.asarray(x), np.asarray(x_adv)
    moved = np.abs(x_adv - x)
    interior = (x > step) & (x < 1 - step)
    nonzero = g != 0
    assert interior.mean() > 0.9 and nonzero.mean() > 0.5
    np.testing.assert_allclose(moved[interior & nonzero], step, atol=1e-6)
    np.testing.assert_array_equal(moved[~nonzero], 0.0)
    # and the direction is the gradient's sign
    np.testing.assert_array_equal(np.sign(x_adv - x)[interior], np.sign(g)[interior])


# --------------------------------------------------------------------------
# Attack strength.
# --------------------------------------------------------------------------


def test_pgd_beats_random_noise_of_same_radius(model, data, linf_runs):
    x, y = data
    f = model[2]
    x_adv = linf_runs[1]["uniform"]
    signs = np.sign(np.random.default_rng(5).standard_normal(x.shape)).astype(np.float32)
    x_noise = np.clip(np.asarray(x) + EPS * signs, 0.0, 1.0)
    l_adv, l_noise = tiny.np_ce(f, x_adv, y), tiny.np_ce(f, x_noise, y)
    assert l_adv.mean() > 2 * l_noise.mean()
    assert (l_adv > l_noise).mean() >= 0.95


@pytest.fixture(scope="module")
def one_step_runs(model, data):
    x, y = data
    f = model[2]

    @jax.jit
    def run(x, y):
        return (attacks.fgsm(f, x, y, eps=EPS), attacks.mi_fgsm(f, x, y, eps=EPS),
                attacks.fgsm(f, x, y, eps=0.05))

    return run(x, y)


def test_accuracy_order_pgd_fgsm_clean(model, data, linf_runs, one_step_runs):
    x, y = data
    f = model[2]
    clean = tiny.accuracy(f, x, y)
    acc_fgsm = tiny.accuracy(f, one_step_runs[0], y)
    acc_mi = tiny.accuracy(f, one_step_runs[1], y)
    acc_pgd = tiny.accuracy(f, linf_runs[1]["uniform"], y)
    assert clean >= 0.95
    assert acc_pgd <= acc_fgsm <= clean
    assert acc_pgd < clean - 0.3
    assert acc_mi < clean - 0.2
    assert np.abs(np.asarray(one_step_runs[1] - x)).max() <= EPS + 1e-6


def test_fgsm_is_one_sign_step(model, data, one_step_runs):
    x, y = data
    g = np.asarray(_input_grad(model[2])(x, y))
    np.testing.assert_allclose(one_step_runs[2], np.clip(np.asarray(x) + 0.05 * np.sign(g), 0, 1),
                               atol=1e-6)


def test_cw_loss_and_targeted_pgd(model, data):
    x, y = data
    f = model[2]
    target = attacks.random_targets(tiny.key(2), y, tiny.NUM_CLASSES)

    @jax.jit
    def run(x, y, t, k):
        untargeted = attacks.pgd(f, x, y, k, eps=EPS, step_size=EPS / 4, num_steps=10, loss="cw")
        return [untargeted] + [
            attacks.pgd(f, x, None, k, eps=0.2, step_size=0.02, num_steps=20, loss=loss,
                        targeted=True, target=t) for loss in ("ce", "cw")]

    x_cw, *x_targeted = run(x, y, target, tiny.key(0))
    assert tiny.accuracy(f, x_cw, y) < 0.5
    for x_t in x_targeted:
        assert np.mean(tiny.predict(f, x_t) == np.asarray(target)) > 0.6


def test_restarts_keep_every_success_of_the_first_run(model, data):
    x, y = data
    f = model[2]
    key = tiny.key(21)
    kw = dict(eps=0.08, step_size=0.02, num_steps=3)
    first, best = jax.jit(lambda x, y, k: (
        attacks.pgd(f, x, y, jax.random.split(k, 3)[0], **kw),
        attacks.pgd(f, x, y, k, restarts=3, **kw)))(x, y, key)
    wrong_first = tiny.predict(f, first) != np.asarray(y)
    wrong_best = tiny.predict(f, best) != np.asarray(y)
    assert np.all(wrong_best[wrong_first])
    assert float(jnp.max(jnp.abs(best - x))) <= 0.08 + 1e-6
    # Where no run succeeds, the highest-loss run is kept.
    l_first, l_best = tiny.np_ce(f, first, y), tiny.np_ce(f, best, y)
    assert np.all(l_best[~wrong_best] >= l_first[~wrong_best] - 1e-5)


def test_vmap_and_traced_eps(model, data):
    # threefry keys: rbg keys are not vmap-invariant by design.
    x, y = data
    f = model[2]
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    run = lambda k: attacks.pgd(f, x[:8], y[:8], k, eps=EPS, step_size=0.02,  # noqa: E731
                                num_steps=2)

    @jax.jit
    def both(ks, e):
        traced = attacks.pgd(f, x[:8], y[:8], None, eps=e, step_size=0.01, num_steps=2,
                             random_start="none")
        return jax.vmap(run)(ks), run(ks[1]), traced

    batched, single, traced = both(keys, 0.02)
    np.testing.assert_allclose(batched[1], single, atol=1e-6)
    assert float(jnp.max(jnp.abs(traced - x[:8]))) <= 0.02 + 1e-6


def test_kl_attack_ignores_labels_and_raises_kl(model, data):
    x, _ = data
    f = model[2]

    @jax.jit
    def run(x, k):
        x_adv = attacks.pgd(f, x, None, k, eps=EPS, step_size=0.02, num_steps=5, loss="kl",
                            random_start="normal")
        x_noise = x + 0.001 * jax.random.normal(k, x.shape)
        return losses.kl(f(x_adv), f(x)), losses.kl(f(x_noise), f(x))

    kl_adv, kl_noise = run(x, tiny.key(0))
    assert float(kl_adv.mean()) > 10 * float(kl_noise.mean())


@pytest.mark.parametrize("kwargs,match", [
    (dict(eps=-0.1), r"eps must be in \[0, 1\]"),
    (dict(num_steps=0), "num_steps must be >= 1"),
    (dict(norm="l1"), "norm must be one of"),
    (dict(loss="hinge"), "loss must be one of"),
    (dict(random_start="gauss"), "random_start must be one of"),
    (dict(bounds=(1.0, 0.0)), "bounds must be"),
    (dict(targeted=True), "target"),
    (dict(loss="kl", targeted=True, target=np.zeros(2, np.int32)), "targeted"),
    (dict(restarts=0), "restarts must be >= 1"),
])
def test_bad_arguments_raise(kwargs, match):
    f = lambda z: z.reshape(z.shape[0], -1)[:, :4]  # noqa: E731
    x, y = np.zeros((2,) + tiny.SHAPE, np.float32), np.zeros(2, np.int32)
    kw = {**dict(eps=0.1, step_size=0.01, num_steps=1, random_start="none"), **kwargs}
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda x, y: attacks.pgd(f, x, y, None, **kw), x, y)


# --------------------------------------------------------------------------
# Registry.
# --------------------------------------------------------------------------


def test_registry_names_and_defaults(model, data):
    a = attacks.make_attack("pgd20")
    assert a.params == dict(eps=0.031, step_size=0.003, num_steps=20, norm="linf",
                            random_start="uniform", loss="ce")
    assert a.fn is attacks.pgd
    assert attacks.make_attack("cw20").params["loss"] == "cw"
    assert attacks.make_attack("pgd40", eps=0.3, step_size=0.01).params["num_steps"] == 40
    assert attacks.make_attack("pgd10_l2").params["norm"] == "l2"
    assert attacks.make_attack("cw_l2", num_steps=7).params["max_iterations"] == 7
    assert attacks.make_attack({"name": "pgd10", "overrides": {"num_steps": 2}}
                               ).params["num_steps"] == 2
    # generic overrides that do not apply are ignored, unknown ones are refused
    assert "step_size" not in attacks.make_attack("fgsm", step_size=0.003).params
    with pytest.raises(ValueError, match="no parameter 'foo'"):
        attacks.make_attack("pgd20", foo=1)
    # Every registry attack, AutoAttack included, carries the name and params
    # a stored attack set records (LADDER's AA column once failed on this).
    for name in ("fgsm", "jsma", "cw_l2", "aa_standard"):
        built = attacks.make_attack(name, eps=0.3)  # eps is dropped where unused
        assert built.name == name and built.params.get("eps", 0.3) == 0.3
        json.dumps(built.params)
    assert attacks.make_attack("aa_standard").params["version"] == "standard"
    with pytest.raises(ValueError, match="valid names: fgsm"):
        attacks.make_attack("pgdx")
    with pytest.raises(ValueError, match="eps must be in"):
        attacks.make_attack("pgd20", eps=-1.0)
    # the built attack runs and equals the direct call
    x, y = data
    f = model[2]
    a, b = jax.jit(lambda x, y, k: (
        attacks.make_attack("pgd3", eps=EPS, step_size=0.02)(f, x, y, k),
        attacks.pgd(f, x, y, k, eps=EPS, step_size=0.02, num_steps=3,
                    random_start="uniform")))(x, y, tiny.key(0))
    np.testing.assert_array_equal(a, b)
