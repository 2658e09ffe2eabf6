"""Each method's outer loss equals a hand computation on fixed logits (numpy)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lbgat_jax import losses
from lbgat_jax.methods import METHODS, get_method

rng = np.random.default_rng(0)
B, C = 4, 5
ADV = rng.normal(size=(B, C)).astype(np.float32)
CLEAN = rng.normal(size=(B, C)).astype(np.float32)
TEACHER = rng.normal(size=(B, C)).astype(np.float32)
Y = np.array([0, 3, 1, 4], np.int32)
LOGITS = {"adv": ADV, "clean": CLEAN, "natural": TEACHER}


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_ce(z, y):
    return -np_log_softmax(z)[np.arange(len(y)), y].mean()


def np_mse(a, b):  # PyTorch MSELoss(): mean over B*C elements
    return ((a - b) ** 2).sum() / (a.shape[0] * a.shape[1])


def np_kl(ref, z):  # KLDivLoss(sum)(log_softmax(z), softmax(ref)) / B
    p = np.exp(np_log_softmax(ref))
    return (p * (np_log_softmax(ref) - np_log_softmax(z))).sum() / ref.shape[0]


EXPECTED = {
    "natural": lambda a: np_ce(ADV, Y),  # natural training: adv_logits are M(x)
    "vanilla_at": lambda a: np_ce(ADV, Y),
    "alp": lambda a: np_ce(ADV, Y) + a * np_mse(ADV, CLEAN),
    "trades": lambda a: np_ce(CLEAN, Y) + a * np_kl(CLEAN, ADV),
    "bgat": lambda a: np_mse(ADV, TEACHER),
    "lbgat": lambda a: np_mse(ADV, TEACHER) + np_ce(TEACHER, Y),
    "lbgat_trades": lambda a: np_mse(ADV, TEACHER) + np_ce(TEACHER, Y) + a * np_kl(CLEAN, ADV),
    "lbgat_alp": lambda a: np_mse(ADV, TEACHER) + np_ce(TEACHER, Y) + a * np_mse(ADV, CLEAN),
    "bgat_trades": lambda a: np_mse(ADV, TEACHER) + a * np_kl(CLEAN, ADV),
    "bgat_alp": lambda a: np_mse(ADV, TEACHER) + a * np_mse(ADV, CLEAN),
}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("alpha", [0.0, 6.0])
def test_method_loss_equals_hand_computation(method, alpha):
    total, parts = losses.outer_loss(get_method(method), Y, LOGITS, alpha=alpha)
    np.testing.assert_allclose(float(total), EXPECTED[method](alpha), rtol=1e-5)
    np.testing.assert_allclose(float(total), float(sum(parts.values())), rtol=1e-6)


def test_mse_is_element_mean_not_per_sample_sum():
    # The paper's Algorithm 1 would be C times larger; the code divides by B*C.
    value = float(losses.elementwise_mse(jnp.ones((2, 10)), jnp.zeros((2, 10))))
    assert value == pytest.approx(1.0)


def test_ablations_equal_hand_computation():
    spec = get_method("lbgat_trades")
    total, _ = losses.outer_loss(spec, Y, LOGITS, alpha=0.0, boundary_loss="kl")
    np.testing.assert_allclose(float(total), np_kl(TEACHER, ADV) + np_ce(TEACHER, Y), rtol=1e-5)
    total, _ = losses.outer_loss(spec, Y, LOGITS, alpha=0.0, extra_robust_ce="clean")
    np.testing.assert_allclose(
        float(total), np_mse(ADV, TEACHER) + np_ce(TEACHER, Y) + np_ce(CLEAN, Y), rtol=1e-5)
    total, _ = losses.outer_loss(spec, Y, LOGITS, alpha=0.0, extra_robust_ce="adv")
    np.testing.assert_allclose(
        float(total), np_mse(ADV, TEACHER) + np_ce(TEACHER, Y) + np_ce(ADV, Y), rtol=1e-5)
    total, _ = losses.outer_loss(spec, Y, LOGITS, alpha=0.0, natural_ce_weight=2.5)
    np.testing.assert_allclose(
        float(total), np_mse(ADV, TEACHER) + 2.5 * np_ce(TEACHER, Y), rtol=1e-5)


def test_gradient_routing_of_each_term():
    """Which logits each term differentiates: CE(M_n) never reaches M_r's logits,
    α·KL never reaches M_n's, and MSE reaches both (nothing is detached)."""
    spec = get_method("lbgat_trades")

    def part_grads(name, alpha=6.0):
        def f(adv, clean, teacher):
            _, parts = losses.outer_loss(spec, Y, {"adv": adv, "clean": clean, "natural": teacher}, alpha=alpha)
            return parts[name]
        return jax.grad(f, argnums=(0, 1, 2))(ADV, CLEAN, TEACHER)

    g_adv, g_clean, g_teacher = part_grads("natural_ce")
    assert not np.any(g_adv) and not np.any(g_clean) and np.any(g_teacher)
    g_adv, g_clean, g_teacher = part_grads("trades_kl")
    assert np.any(g_adv) and np.any(g_clean) and not np.any(g_teacher)
    g_adv, g_clean, g_teacher = part_grads("boundary_mse")
    assert np.any(g_adv) and not np.any(g_clean) and np.any(g_teacher)
    np.testing.assert_allclose(g_adv, -g_teacher, rtol=1e-6)


def test_unknown_method_names_the_valid_ones():
    with pytest.raises(ValueError, match="method must be one of"):
        get_method("lbgta")
