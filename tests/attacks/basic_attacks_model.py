"""A tiny fixed classifier for the basic-attack tests (not a test module).

8x8x1 images in [0, 1], 4 classes: each class is a fixed random template
(+-0.25 around grey) plus small noise, so the problem is separable but a
modest L-inf/L2 budget can flip predictions. The model is a small flax.linen
MLP trained with Adam for a few hundred steps; results are cached per
process so every test file reuses the same trained weights.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

NUM_CLASSES = 4
SHAPE = (8, 8, 1)


def key(seed: int) -> jax.Array:
    """A typed PRNG key with the "rbg" implementation.

    XLA:CPU needs ~0.9 s to compile every program that draws threefry random
    numbers, but ~0.15 s with rbg; the attacks are key-implementation
    agnostic, and a few tests keep the default ``jax.random.PRNGKey``.
    """
    return jax.random.key(seed, impl="rbg")


class TinyNet(nn.Module):
    features: int = 32
    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x, train: bool = False):
        # An MLP on NHWC input: cheap to compile on XLA:CPU (convs are not).
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.features)(x))
        return nn.Dense(self.num_classes)(x)


def make_data(seed: int, n: int, *, noise: float = 0.06):
    rng = np.random.default_rng(1234)  # templates fixed across seeds
    templates = rng.choice([-0.12, 0.12], size=(NUM_CLASSES,) + SHAPE)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NUM_CLASSES, size=n)
    x = 0.5 + templates[y] + noise * rng.standard_normal((n,) + SHAPE)
    return np.clip(x, 0, 1).astype(np.float32), y.astype(np.int32)


@functools.lru_cache(maxsize=None)
def trained(seed: int = 0, features: int = 32, steps: int = 200):
    """(apply_fn(variables, x) -> logits, variables) trained on synthetic data."""
    model = TinyNet(features=features)
    variables = model.init(key(seed), jnp.zeros((1,) + SHAPE))
    x, y = make_data(100 + seed, 512)
    x, y = jnp.asarray(x), jnp.asarray(y)
    tx = optax.adam(1e-2)

    def loss(v, xb, yb):
        logits = model.apply(v, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def train(v):
        def step(carry, i):
            v, s = carry
            idx = (jnp.arange(128) + 128 * i) % 512
            g = jax.grad(loss)(v, x[idx], y[idx])
            upd, s = tx.update(g, s, v)
            return (optax.apply_updates(v, upd), s), None

        (v, _), _ = jax.lax.scan(step, (v, tx.init(v)), jnp.arange(steps))
        return v

    variables = train(variables)

    def apply_fn(v, xb):
        return model.apply(v, xb)

    return apply_fn, variables


@functools.lru_cache(maxsize=None)
def logits_fn_for(seed: int = 0, features: int = 32):
    """The trained model as a jitted ``logits_fn`` (one object per seed, so its
    compilations are reused; it inlines when called inside another jit)."""
    apply_fn, variables = trained(seed, features)
    return jax.jit(lambda xb: apply_fn(variables, xb))


def predict(logits_fn, x) -> np.ndarray:
    return np.asarray(logits_fn(jnp.asarray(x))).argmax(-1)


def accuracy(logits_fn, x, y) -> float:
    return float(np.mean(predict(logits_fn, x) == np.asarray(y)))


def np_ce(logits_fn, x, y) -> np.ndarray:
    """Per-example cross-entropy in numpy (float64)."""
    z = np.asarray(logits_fn(jnp.asarray(x)), np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(len(z)), np.asarray(y)]
