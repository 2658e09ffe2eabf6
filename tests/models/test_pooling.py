"""advcore.backend.max_pool_first_max == nn.max_pool, values and PyTorch's tie-breaking gradient."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advcore.backend import max_pool_first_max as max_pool
from advcore.models import layers


@pytest.mark.parametrize("shape,k", [((3, 8, 8, 4), 2), ((2, 7, 9, 3), 2), ((2, 9, 10, 2), 3),
                                     ((1, 5, 5, 1), 1)])
def test_values_and_gradient_match_reduce_window(shape, k):
    # Integer-valued inputs: most windows hold ties, where a tie-splitting
    # gradient (plain jnp.max) would differ from the first-max rule.
    x = jnp.asarray(np.random.default_rng(0).integers(0, 3, shape).astype(np.float32))
    ref_out, ref_vjp = jax.vjp(lambda x: nn.max_pool(x, (k, k), strides=(k, k)), x)
    out, vjp = jax.vjp(lambda x: max_pool(x, k), x)
    np.testing.assert_array_equal(out, ref_out)
    g = jax.random.normal(jax.random.PRNGKey(1), out.shape)
    np.testing.assert_array_equal(vjp(g)[0], ref_vjp(g)[0])


def test_gradient_goes_to_the_first_maximum_in_row_major_order():
    # One 2x2 window [[1, 5], [5, 2]]: PyTorch's max_pool2d sends the whole
    # cotangent to (0, 1), the first 5; nothing to the tied (1, 0).
    x = jnp.asarray([[1.0, 5.0], [5.0, 2.0]]).reshape(1, 2, 2, 1)
    dx = jax.grad(lambda x: jnp.sum(max_pool(x, 2) * 3.0))(x)
    np.testing.assert_array_equal(dx.reshape(2, 2), [[0.0, 3.0], [0.0, 0.0]])


def test_jits_inside_a_loop_and_matches():
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 12, 12, 3))
    step = lambda fn: jax.jit(lambda x: jax.lax.fori_loop(  # noqa: E731
        0, 3, lambda i, z: z + 0.1 * jnp.sign(jax.grad(lambda z: jnp.sum(fn(z) ** 2))(z)), x))
    np.testing.assert_array_equal(step(lambda z: max_pool(z, 2))(x),
                                  step(lambda z: nn.max_pool(z, (2, 2), strides=(2, 2)))(x))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="window k must be an int >= 1"):
        layers.MaxPool2d(0).apply({}, jnp.zeros((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="H, W >= k=3"):
        layers.MaxPool2d(3).apply({}, jnp.zeros((1, 2, 4, 1)))
