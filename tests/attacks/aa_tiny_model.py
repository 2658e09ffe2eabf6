"""A tiny trained classifier for the AutoAttack tests (not a test module).

8x8x2 NHWC images in [0, 1], 10 classes: class ``k`` is a fixed random
+-``AMPLITUDE`` template around grey plus Gaussian noise, so the problem is
separable while an L-inf budget of ``EPS`` flips a good part of the
predictions. The model is a one-hidden-layer MLP (XLA:CPU compiles MLPs much
faster than convolutions, which keeps the attack tests quick), trained with
Adam in one ``lax.scan``; weights are cached per process.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

NUM_CLASSES = 10
SHAPE = (8, 8, 2)
AMPLITUDE = 0.04
# Budgets: EPS breaks part of the points (FGSM ~ 0.4, PGD-20 ~ 0.35 accuracy),
# EPS_LARGE lets the query-only Square attack break some within few queries.
EPS = 0.03
EPS_LARGE = 0.05


class TinyMLP(nn.Module):
    features: int = 64
    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.features)(x))
        return nn.Dense(self.num_classes)(x)


def make_data(seed: int, n: int, noise: float = 0.06):
    """``(x, y)`` float32 NHWC in [0, 1] and int32 labels."""
    rng = np.random.default_rng(4321)  # templates fixed across seeds
    templates = rng.choice([-AMPLITUDE, AMPLITUDE], size=(NUM_CLASSES,) + SHAPE)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NUM_CLASSES, size=n)
    x = 0.5 + templates[y] + noise * rng.standard_normal((n,) + SHAPE)
    return np.clip(x, 0, 1).astype(np.float32), y.astype(np.int32)


def _adam_train(model, params, x, y, steps: int):
    """``steps`` Adam steps (lr 3e-3, batch 128, cycling through ``x``) in one scan."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    tx = optax.adam(3e-3)

    def loss(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb).mean()

    @jax.jit
    def train(p):
        def step(carry, i):
            p, s = carry
            idx = (jnp.arange(128) + 128 * i) % x.shape[0]
            g = jax.grad(loss)(p, x[idx], y[idx])
            upd, s = tx.update(g, s, p)
            return (optax.apply_updates(p, upd), s), None

        (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), jnp.arange(steps))
        return p

    return train(params)


@functools.lru_cache(maxsize=None)
def trained_params(steps: int = 300, seed: int = 0):
    """Parameters of ``TinyMLP`` after ``steps`` Adam steps (batch 128)."""
    model = TinyMLP()
    params = model.init(jax.random.key(seed), jnp.zeros((1,) + SHAPE))
    return _adam_train(model, params, *make_data(100 + seed, 2048), steps)


def apply(params, x):
    """The tiny MLP's logits."""
    return TinyMLP().apply(params, x)


def jnp_data(seed: int, n: int):
    """``make_data`` as device arrays."""
    x, y = make_data(seed, n)
    return jnp.asarray(x), jnp.asarray(y)


# Backend optimisation off: compile time dominates these tiny runs on XLA:CPU.
FAST = {"xla_backend_optimization_level": 0}


def logits_fn():
    """The trained model as ``x -> logits``."""
    model, params = TinyMLP(), trained_params()
    return lambda x: model.apply(params, x)


def accuracy(fn, x, y) -> float:
    return float(jnp.mean(jnp.argmax(fn(x), axis=-1) == y))


# --------------------------------------------------------------------------
# A tiny CNN for the PyTorch cross-checks (the same weights run in both).
# --------------------------------------------------------------------------

CNN_SHAPE = (16, 16, 1)  # Square L2/L1's init tiling needs H // 5 tiles that fit


class TinyCNN(nn.Module):
    """conv 3x3 (8) - ReLU - conv 3x3 stride 2 (16) - ReLU - dense (10), all
    unpadded, flattened in NHWC order (``cnn_layers`` mirrors it in PyTorch)."""

    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), padding="VALID", name="conv1")(x))
        x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2), padding="VALID", name="conv2")(x))
        return nn.Dense(self.num_classes, name="fc")(x.reshape(x.shape[0], -1))


def make_cnn_data(seed: int, n: int, noise: float = 0.12):
    """``(x, y)``: 16x16x1 images in [0, 1]; class ``k`` is a fixed smooth
    pattern (a 4x4 random grid upsampled) around grey plus pixel noise."""
    rng = np.random.default_rng(8765)  # templates fixed across seeds
    coarse = rng.uniform(-0.25, 0.25, size=(NUM_CLASSES, 4, 4, 1))
    templates = np.kron(coarse, np.ones((1, 4, 4, 1)))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NUM_CLASSES, size=n)
    x = 0.5 + templates[y] + noise * rng.standard_normal((n,) + CNN_SHAPE)
    return np.clip(x, 0, 1).astype(np.float32), y.astype(np.int32)


@functools.lru_cache(maxsize=None)
def trained_cnn_params(steps: int = 300, seed: int = 0):
    """Parameters of ``TinyCNN`` after ``steps`` Adam steps (batch 128)."""
    model = TinyCNN()
    params = model.init(jax.random.key(seed), jnp.zeros((1,) + CNN_SHAPE))
    return _adam_train(model, params, *make_cnn_data(200 + seed, 4096), steps)


# ``TinyCNN`` for ``bench.reference_compare.flax_layers``.
CNN_SPEC = (("conv", "conv1", 1), ("relu",), ("conv", "conv2", 2), ("relu",),
            ("flatten", "nhwc"), ("dense", "fc"))
