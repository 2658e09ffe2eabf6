"""advcore.attacks.losses against hand computations on fixed logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advcore.attacks import losses

Z = np.array([[2.0, 1.0, 0.5, -1.0],
              [0.0, 3.0, 3.0, 1.0],
              [-1.0, -2.0, 4.0, 0.0]], np.float32)
Y = np.array([0, 1, 0], np.int32)
T = np.array([2, 3, 1], np.int32)


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_ce_matches_hand_computation():
    # row 0: logsumexp([2,1,.5,-1]) - 2
    expected = [np.log(np.exp(Z[i]).sum()) - Z[i, Y[i]] for i in range(3)]
    np.testing.assert_allclose(losses.ce(jnp.asarray(Z), Y), expected, rtol=1e-6)
    assert losses.ce(jnp.asarray(Z), Y).shape == (3,)


def test_cw_margin_matches_hand_computation_and_kappa_clamp():
    # margins max_{j!=y} z_j - z_y: row0 1-2=-1, row1 3-3=0, row2 4-(-1)=5
    np.testing.assert_allclose(losses.cw_margin(jnp.asarray(Z), Y), [-1.0, 0.0, 0.0])
    np.testing.assert_allclose(losses.cw_margin(jnp.asarray(Z), Y, kappa=2.0), [-1.0, 0.0, 2.0])
    np.testing.assert_allclose(losses.cw_margin(jnp.asarray(Z), Y, kappa=10.0), [-1.0, 0.0, 5.0])
    # targeted (ascent) form: z_t - max_{j!=t} z_j: row0 .5-2, row1 1-3, row2 -2-4
    np.testing.assert_allclose(losses.cw_targeted_margin(jnp.asarray(Z), T, kappa=1.0),
                               [-1.5, -2.0, -6.0])
    np.testing.assert_allclose(
        losses.cw_targeted_margin(jnp.asarray([[0.0, 5.0]]), jnp.asarray([1]), kappa=1.0), [1.0])


def test_cw_margin_ascent_direction_increases_misclassification():
    z = jnp.asarray([[2.0, 1.0, 0.0]])
    g = jax.grad(lambda z: losses.cw_margin(z, jnp.asarray([0])).sum())(z)
    np.testing.assert_allclose(g, [[-1.0, 1.0, 0.0]])


def test_kl_matches_hand_computation():
    adv = np.array([[0.0, 1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, -1.0]],
                   np.float32)
    lp, lq = _np_log_softmax(Z), _np_log_softmax(adv)
    expected = (np.exp(lp) * (lp - lq)).sum(-1)
    got = losses.kl(jnp.asarray(adv), jnp.asarray(Z))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert np.all(np.asarray(got) > 0)
    np.testing.assert_allclose(losses.kl(jnp.asarray(Z), jnp.asarray(Z)), 0.0, atol=1e-6)
    # KL(p || q) is not symmetric: the reference is the second argument.
    assert not np.allclose(losses.kl(jnp.asarray(Z), jnp.asarray(adv)), expected, rtol=1e-3)


def test_dlr_matches_hand_computation():
    # row0: sorted 2,1,.5,-1; y=0 -> -(2-1)/(2-.5)
    # row1: y=1 (3), max other 3 -> 0 / (3-1)
    # row2: y=0 (-1), max other 4 -> -(-1-4)/(4-(-1))
    expected = [-(1.0) / 1.5, 0.0, 5.0 / 5.0]
    np.testing.assert_allclose(losses.dlr(jnp.asarray(Z), Y), expected, rtol=1e-6, atol=1e-7)


def test_targeted_dlr_matches_hand_computation():
    # row0: -(2 - .5) / (2 - (.5 + -1)/2)
    # row1: -(3 - 1) / (3 - (1 + 0)/2)
    # row2: -(-1 - -2) / (4 - (-1 + -2)/2)
    expected = [-1.5 / 2.25, -2.0 / 2.5, -1.0 / 5.5]
    np.testing.assert_allclose(losses.targeted_dlr(jnp.asarray(Z), Y, T), expected, rtol=1e-6)


def test_class_count_requirements():
    z3 = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="at least 4 classes"):
        losses.targeted_dlr(z3, jnp.zeros(2, jnp.int32), jnp.ones(2, jnp.int32))
    with pytest.raises(ValueError, match="at least 3 classes"):
        losses.dlr(jnp.zeros((2, 2)), jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match="same shape"):
        losses.kl(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


def test_losses_are_jit_and_vmap_safe():
    f = jax.jit(jax.vmap(lambda z, y, t: losses.targeted_dlr(z[None], y[None], t[None])[0]))
    np.testing.assert_allclose(f(jnp.asarray(Z), Y, T),
                               losses.targeted_dlr(jnp.asarray(Z), Y, T), rtol=1e-6)
