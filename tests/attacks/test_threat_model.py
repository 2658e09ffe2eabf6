"""Threat-model safety: nonsense radii, non-finite settings and inputs outside
the bounds are refused with a message naming the field, the value and the
valid range; and a normalising model is attacked through
``normalized_logits_fn`` in pixel space.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advcore import attacks

SHAPE = (4, 4, 1)
W = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)


def linear_logits(x):
    return x.reshape(x.shape[0], -1) @ W


X_OK = np.full((2,) + SHAPE, 0.5, np.float32)
Y = np.zeros(2, np.int32)


# --------------------------------------------------------------------------
# Radii and hyper-parameters, at build time.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name,overrides,message", [
    ("pgd20", {"eps": 8}, r"eps must be in [0, 1] for norm 'linf' (inputs in bounds [0, 1];"),
    ("pgd20", {"eps": -0.1}, r"eps must be in [0, 1] for norm 'linf'"),
    ("pgd20", {"eps": float("nan")}, "eps must be in [0, 1] for norm 'linf'"),
    ("pgd20", {"eps": float("inf")}, "got inf"),
    ("pgd20", {"eps": 0.6, "bounds": (0.0, 0.5)}, "eps must be in [0, 0.5] for norm 'linf'"),
    ("fgsm", {"eps": 2.0}, "eps must be in [0, 1] for norm 'linf'"),
    ("mifgsm", {"eps": 1.5}, "eps must be in [0, 1] for norm 'linf'"),
    ("cw20", {"eps": 8}, "got 8"),
    ("pgd10_l2", {"eps": -1.0}, "eps must be a finite number >= 0 (norm 'l2'), got -1.0"),
    ("pgd10_l2", {"eps": float("inf")}, "eps must be a finite number >= 0 (norm 'l2'), got inf"),
    ("pgd10_l2", {"eps": 1e7}, "eps must be in [0, 1.04858e+06] for norm 'l2' (the diameter "
                               "of an input with 2**40 features in bounds [0, 1]), got 10000000.0"),
    ("pgd20", {"eps": "0.1"}, "eps must be a finite number >= 0, got '0.1'"),
    ("aa_standard", {"eps": 8}, "eps must be in [0, 1] for norm 'linf'"),
    # eps is dropped by CW-L2 / JSMA, but a NaN is still nonsense.
    ("cw_l2", {"eps": float("nan")}, "eps must be a finite number >= 0, got nan"),
    ("pgd20", {"step_size": float("inf")}, "step_size must be a finite number >= 0, got inf"),
    ("pgd20", {"step_size": -0.1}, "step_size must be a finite number >= 0, got -0.1"),
    ("fgsm", {"step_size": float("nan")}, "step_size must be a finite number >= 0, got nan"),
    ("cw20", {"kappa": float("nan")}, "kappa must be a finite number >= 0, got nan"),
    ("mifgsm", {"decay": float("inf")}, "decay must be a finite number >= 0, got inf"),
    ("pgd20", {"init_std": float("nan")}, "init_std must be a finite number >= 0, got nan"),
    ("cw_l2", {"learning_rate": float("inf")}, "learning_rate must be a finite number > 0, "),
    ("cw_l2", {"confidence": -1.0}, "confidence must be a finite number >= 0, got -1.0"),
    ("cw_l2", {"initial_const": 0.0}, "initial_const must be a finite number > 0, got 0.0"),
    ("jsma", {"theta": float("nan")}, "theta must be a finite number, got nan"),
    ("jsma", {"theta": 0.0}, "theta must be a finite non-zero number, got 0.0"),
    ("pgd20", {"bounds": (1.0, 0.0)},
     "bounds must be a pair (lo, hi) of finite numbers with lo < hi, got (1.0, 0.0)"),
    ("pgd20", {"bounds": (0.0, float("inf"))}, "with lo < hi, got (0.0, inf)"),
    ("cw_l2", {"bounds": (0.0,)}, "bounds must be a pair (lo, hi)"),
    ("jsma", {"bounds": (float("nan"), 1.0)}, "got (nan, 1.0)"),
    ("pgd20", {"num_steps": 0}, "num_steps must be >= 1, got 0"),
])
def test_make_attack_rejects_nonsense(name, overrides, message):
    with pytest.raises(ValueError) as info:
        attacks.make_attack(name, **overrides)
    assert message in str(info.value)


def test_eps_bounds_follow_the_box_and_the_norm():
    # 8/255-style radii on a [0, 255] box are fine.
    assert attacks.make_attack("pgd20", eps=8.0, bounds=(0.0, 255.0)).params["eps"] == 8.0
    assert attacks.make_attack("pgd20", eps=1.0).params["eps"] == 1.0  # the whole box
    # L2: the diameter (hi - lo) * sqrt(d) of the input: 4 for 16 features.
    x = jnp.full((2,) + SHAPE, 0.5)
    with pytest.raises(ValueError) as info:
        jax.eval_shape(lambda x: attacks.pgd(linear_logits, x, Y, None, eps=4.5, step_size=0.1,
                                             num_steps=1, norm="l2", random_start="none"), x)
    assert str(info.value).startswith(
        "eps must be in [0, 4] for norm 'l2' (inputs in bounds [0, 1] with d = 16 features "
        "per example: (hi - lo) * sqrt(d);")
    assert str(info.value).endswith("got 4.5")
    jax.eval_shape(lambda x: attacks.pgd(linear_logits, x, Y, None, eps=4.0, step_size=0.1,
                                         num_steps=1, norm="l2", random_start="none"), x)
    # At build time the input size is unknown: a large L2 radius is accepted
    # there (for a large input) and refused where the attack meets a small one.
    big = attacks.make_attack("pgd10_l2", eps=30.0)
    with pytest.raises(ValueError, match=r"eps must be in \[0, 4\] for norm 'l2'"):
        jax.eval_shape(lambda x: big(linear_logits, x, Y, jax.random.PRNGKey(0)), x)


# --------------------------------------------------------------------------
# Inputs outside the bounds.
# --------------------------------------------------------------------------

X_NORMALISED = np.linspace(-1.9, 2.6, 32, dtype=np.float32).reshape((2,) + SHAPE)
_RANGE_MESSAGE = "x must lie in bounds [0, 1] (attacks work in pixel space and never clip " \
                 "their input), got min -1.9, max 2.6"


@pytest.mark.parametrize("attack", [
    lambda x: attacks.pgd(linear_logits, x, Y, None, eps=0.1, step_size=0.1, num_steps=1,
                          random_start="none"),
    lambda x: attacks.fgsm(linear_logits, x, Y, eps=0.1),
    lambda x: attacks.mi_fgsm(linear_logits, x, Y, eps=0.1),
    lambda x: attacks.cw_l2(linear_logits, x, Y, max_iterations=1),
    lambda x: attacks.jsma(linear_logits, x, Y, jax.random.PRNGKey(0), max_iters=1),
    lambda x: attacks.make_attack("pgd20")(linear_logits, x, Y, jax.random.PRNGKey(0)),
    lambda x: attacks.transfer_attack(linear_logits, linear_logits, x, Y, jax.random.PRNGKey(0),
                                      "fgsm"),
], ids=["pgd", "fgsm", "mi_fgsm", "cw_l2", "jsma", "make_attack", "transfer_attack"])
@pytest.mark.parametrize("as_jax", [False, True], ids=["numpy", "jax"])
def test_eager_attacks_refuse_inputs_outside_bounds(attack, as_jax):
    x = jnp.asarray(X_NORMALISED) if as_jax else X_NORMALISED
    with pytest.raises(ValueError) as info:
        attack(x)
    assert str(info.value).startswith(_RANGE_MESSAGE)
    assert "normalized_logits_fn" in str(info.value)


def test_check_input_range_on_the_host():
    check = attacks.check_input_range
    check(X_OK)
    check(jnp.asarray(X_OK))
    check(np.zeros((0,) + SHAPE, np.float32))
    check(np.array([0.0, 1.0]))  # the faces belong to the box
    check(X_NORMALISED * 50 + 100, bounds=(0.0, 255.0))
    for bad, got in [(np.array([0.0, 1.0 + 1e-6]), "got min 0, max 1.000001"),
                     (np.array([-1e-6, 0.5]), "got min -1e-06, max 0.5"),
                     (np.array([0.5, np.nan]), "got min nan, max nan"),
                     (jnp.asarray([0.5, jnp.inf]), "got min 0.5, max inf")]:
        with pytest.raises(ValueError, match="x must lie in bounds") as info:
            check(bad)
        assert got in str(info.value)
    with pytest.raises(ValueError, match="bounds must be a pair"):
        check(X_OK, bounds=(1.0, 1.0))


def test_traced_inputs_cannot_be_checked_but_constants_can():
    # Under jit x is a tracer: the attack runs (and clips), as documented;
    # the host-side check is what catches such a batch.
    run = jax.jit(lambda x: attacks.fgsm(linear_logits, x, Y, eps=0.1))
    assert run(X_NORMALISED).shape == X_NORMALISED.shape
    with pytest.raises(ValueError, match="x must lie in bounds"):
        attacks.check_input_range(X_NORMALISED)
    # A concrete batch closed over by a jitted function is still checked.
    const = jnp.asarray(X_NORMALISED)
    with pytest.raises(ValueError, match="x must lie in bounds"):
        jax.jit(lambda e: attacks.fgsm(linear_logits, const, Y, eps=e))(0.1)


def test_evaluate_transfer_checks_the_whole_set():
    with pytest.raises(ValueError, match="x must lie in bounds"):
        attacks.evaluate_transfer(linear_logits, linear_logits, X_NORMALISED, Y,
                                  jax.random.PRNGKey(0), "fgsm")


# --------------------------------------------------------------------------
# A normalising model, attacked in pixel space.
# --------------------------------------------------------------------------

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2471, 0.2435, 0.2616)
W_RGB = np.random.default_rng(3).standard_normal((4 * 4 * 3, 5)).astype(np.float32)


def model_on_normalised(z):
    """A model trained on (x - mean) / std inputs."""
    return z.reshape(z.shape[0], -1) @ W_RGB


def test_normalized_logits_fn_matches_hand_normalisation():
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (3, 4, 4, 3)).astype(np.float32)
    f = attacks.normalized_logits_fn(model_on_normalised, MEAN, STD)
    by_hand = ((x - np.asarray(MEAN)) / np.asarray(STD)).reshape(3, -1) @ W_RGB
    np.testing.assert_allclose(np.asarray(f(jnp.asarray(x))), by_hand, rtol=1e-5, atol=1e-5)
    # Gradients in pixel space carry the 1 / std of each channel.
    grad = jax.grad(lambda v: f(v)[:, 2].sum())(jnp.asarray(x))
    expected = (W_RGB[:, 2].reshape(4, 4, 3) / np.asarray(STD))[None].repeat(3, 0)
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5)
    # A scalar mean / std applies to every channel.
    g = attacks.normalized_logits_fn(model_on_normalised, 0.5, 0.25)
    np.testing.assert_allclose(np.asarray(g(jnp.asarray(x))),
                               ((x - 0.5) / 0.25).reshape(3, -1) @ W_RGB, rtol=1e-5, atol=1e-5)


def test_attacks_through_the_wrapper_stay_in_pixel_space():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.uniform(0, 1, (3, 4, 4, 3)).astype(np.float32))
    y = jnp.asarray(np.argmax(
        ((np.asarray(x) - np.asarray(MEAN)) / np.asarray(STD)).reshape(3, -1) @ W_RGB, -1))
    f = attacks.normalized_logits_fn(model_on_normalised, MEAN, STD)
    attack = attacks.make_attack("pgd20", eps=8 / 255)
    x_adv = jax.jit(lambda x, y: attack(f, x, y, jax.random.PRNGKey(0)))(x, y)
    assert float(jnp.abs(x_adv - x).max()) <= 8 / 255 + 1e-6
    assert 0.0 <= float(x_adv.min()) and float(x_adv.max()) <= 1.0
    # It is a real attack on the normalising model: predictions flip.
    assert np.mean(np.asarray(f(x_adv)).argmax(-1) == np.asarray(y)) < 1.0


@pytest.mark.parametrize("mean,std,message", [
    (MEAN, (0.2, 0.0, 0.3), "std must be > 0 in every channel"),
    (MEAN, (0.2, -0.1, 0.3), "std must be > 0 in every channel"),
    ((0.5, np.nan, 0.5), STD, "mean must be finite, got"),
    (MEAN, (0.2, 0.2), "mean and std must have one value per channel (or a single value), "
                       "got 3 and 2 values"),
    (np.zeros((3, 1)), STD, "mean must be a number or a 1-D sequence of numbers (one per "
                            "channel), got shape (3, 1)"),
    ((), STD, "got shape (0,)"),
    ("red", STD, "mean must be a number or a 1-D sequence"),
])
def test_normalized_logits_fn_validates(mean, std, message):
    with pytest.raises(ValueError) as info:
        attacks.normalized_logits_fn(model_on_normalised, mean, std)
    assert message in str(info.value)


def test_normalized_logits_fn_checks_channels():
    f = attacks.normalized_logits_fn(model_on_normalised, MEAN, STD)
    with pytest.raises(ValueError, match=r"x must have 3 channels on its last axis \(NHWC\) to "
                                         r"match mean/std, got shape \(2, 4, 4, 1\)"):
        f(jnp.zeros((2, 4, 4, 1)))
