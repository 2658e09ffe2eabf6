"""Generators and discriminator: shapes, output ranges, PyTorch ConvT semantics, init.

The transposed convolution is the library's ``advcore.models.layers.ConvTranspose2d``;
its tests here pin it to Flax's ``nn.ConvTranspose`` (as the generators used it
before), to the scatter definition and to PyTorch.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advcore.backend import compile_once
from advcore.models import layers
from ladder_jax import generators as G


def _init(module, z):
    # Compiled without XLA backend optimisation on CPU (fast to compile).
    return compile_once(lambda k, z: module.init(k, z), jax.random.key(0), z)


@pytest.mark.parametrize("name", ["mnist", "svhn", "celeba", "cifar10"])
def test_full_size_output_shapes(name):
    spec = G.GENERATOR_SPECS[name]
    gen = G.build_generator(name)
    z = jax.ShapeDtypeStruct((3, spec.z_dim), jnp.float32)
    variables = jax.eval_shape(lambda z: gen.init(jax.random.key(0), z), z)
    out = jax.eval_shape(lambda v, z: gen.apply(v, z), variables, z)
    assert out.shape == (3,) + spec.image_shape


def _random_variables(module, z, seed=0):
    """Variables of ``module`` filled with N(0, 0.05) (BN: mean 0, var 1).

    The range checks only need *some* weights; a real init of the deep
    generators costs seconds of XLA compile time on CPU.
    """
    abstract = jax.eval_shape(lambda z: module.init(jax.random.key(0), z), z)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "var" in name:
            return np.ones(leaf.shape, np.float32)
        if "mean" in name:
            return np.zeros(leaf.shape, np.float32)
        return rng.normal(0.0, 0.05, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.mark.parametrize("name,scale", [("mnist", 1.0), ("svhn", 0.125), ("cifar10", 0.125),
                                        ("celeba", 1 / 32)])
def test_output_ranges(name, scale):
    spec = G.GENERATOR_SPECS[name]
    gen = G.build_generator(name, width_scale=scale)
    z = 3.0 * jax.random.normal(jax.random.key(1), (2, spec.z_dim))
    out = np.asarray(jax.jit(gen.apply)(_random_variables(gen, z), z))
    assert out.shape == (2,) + spec.image_shape
    if name == "mnist":  # sigmoid
        assert out.min() >= 0.0 and out.max() <= 1.0
    else:  # tanh
        assert out.min() >= -1.0 and out.max() <= 1.0 and out.min() < 0.0
    img = np.asarray(G.output_to_image(jnp.asarray(out), spec.target_range))
    if spec.target_range == "pm1":
        assert img.min() >= 0.0 and img.max() <= 1.0
    x = np.linspace(0, 1, 5, dtype=np.float32)
    np.testing.assert_allclose(
        np.asarray(G.output_to_image(G.image_to_target(x, spec.target_range),
                                     spec.target_range)), x, atol=1e-6)


def test_real_init_forward_pass():
    gen = G.build_generator("mnist", width_scale=0.5)
    z = jax.random.normal(jax.random.key(1), (2, 500))
    out = np.asarray(jax.jit(gen.apply)(_init(gen, z), z))
    assert out.shape == (2, 28, 28, 1) and 0.0 <= out.min() <= out.max() <= 1.0


def test_conv_transpose_matches_pytorch_scatter():
    """out[i*s + a, j*s + b] += x[i, j] . W[a, b] with out size (in-1)*s + k."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 4, 4, 3)).astype(np.float32)
    for k, s in [(2, 4), (2, 3), (2, 2)]:
        m = G.conv_transpose(2, k, s)
        v = m.init(jax.random.key(0), x)
        kern = np.asarray(v["params"]["kernel"])  # (k, k, out, in)
        y = np.asarray(m.apply(v, x))[0]
        n = 3 * s + k
        ref = np.zeros((n, n, 2), np.float32)
        for i in range(4):
            for j in range(4):
                ref[i * s:i * s + k, j * s:j * s + k] += np.einsum("c,hwoc->hwo", x[0, i, j], kern)
        assert y.shape == (n, n, 2)
        np.testing.assert_allclose(y, ref, atol=1e-5)


class _FlaxConvTranspose(nn.Module):
    """The generators' previous transposed convolution: Flax's 'VALID' ConvTranspose
    with PyTorch's kernel layout, cropped to PyTorch's (in - 1) * s + k rows."""

    features: int
    kernel: int
    stride: int

    @nn.compact
    def __call__(self, x):
        y = nn.ConvTranspose(self.features, (self.kernel, self.kernel),
                             strides=(self.stride, self.stride), padding="VALID",
                             transpose_kernel=True)(x)
        h = (x.shape[1] - 1) * self.stride + self.kernel
        w = (x.shape[2] - 1) * self.stride + self.kernel
        return y[:, :h, :w, :]


@pytest.mark.parametrize("k,s", [(2, 4), (2, 3), (2, 2), (3, 2), (3, 1), (4, 2)])
def test_conv_transpose_layer_equals_flax_conv_transpose(k, s):
    """Same parameter shapes, same outputs on random weights as the old module."""
    rng = np.random.default_rng(k * 10 + s)
    x = jnp.asarray(rng.normal(size=(2, 5, 4, 3)).astype(np.float32))
    new = layers.ConvTranspose2d(6, k, s)
    old = _FlaxConvTranspose(6, k, s)
    v_new = jax.eval_shape(lambda: new.init(jax.random.key(0), x))
    v_old = jax.eval_shape(lambda: old.init(jax.random.key(0), x))
    old_p = v_old["params"]["ConvTranspose_0"]
    assert v_new["params"]["kernel"].shape == old_p["kernel"].shape == (k, k, 6, 3)
    assert v_new["params"]["bias"].shape == old_p["bias"].shape == (6,)
    kernel = rng.normal(size=(k, k, 6, 3)).astype(np.float32)
    bias = rng.normal(size=(6,)).astype(np.float32)
    y_new = new.apply({"params": {"kernel": kernel, "bias": bias}}, x)
    y_old = old.apply({"params": {"ConvTranspose_0": {"kernel": kernel, "bias": bias}}}, x)
    assert y_new.shape == (2, 4 * s + k, 3 * s + k, 6)
    np.testing.assert_allclose(np.asarray(y_new), np.asarray(y_old), atol=1e-5)


@pytest.mark.parametrize("k,s,p", [(2, 4, 0), (2, 2, 0), (3, 2, 1), (4, 2, 1), (3, 1, 2)])
def test_conv_transpose_layer_equals_pytorch(k, s, p):
    torch = pytest.importorskip("torch", reason="torch is needed for the PyTorch reference")
    rng = np.random.default_rng(k + 7 * s + 31 * p)
    x = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
    ref = torch.nn.ConvTranspose2d(3, 6, k, stride=s, padding=p)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    weight = ref.weight.detach().numpy()  # (in, out, k, k)
    params = {"kernel": weight.transpose(2, 3, 1, 0), "bias": ref.bias.detach().numpy()}
    got = layers.ConvTranspose2d(6, k, s, padding=p).apply({"params": params}, jnp.asarray(x))
    assert got.shape == expected.shape
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)


def test_conv_transpose_layer_default_init_is_pytorchs():
    """kaiming_uniform(a=sqrt 5) with PyTorch's fan-in out * k * k, weights and bias."""
    v = compile_once(lambda key: layers.ConvTranspose2d(8, 3, 2).init(
        key, jnp.zeros((1, 4, 4, 40))), jax.random.key(0))
    bound = 1 / np.sqrt(8 * 3 * 3)
    for name in ("kernel", "bias"):
        a = np.asarray(v["params"][name])
        assert np.abs(a).max() <= bound and np.abs(a).max() > 0.9 * bound


def test_mnist_generator_intermediate_sizes():
    # 4 -> 14 (k2, s4) and 12 -> 35 (k2, s3): the code's strides.
    m = G.conv_transpose(5, 2, 4)
    assert jax.eval_shape(lambda: m.init_with_output(
        jax.random.key(0), jnp.zeros((1, 4, 4, 5)))[0]).shape == (1, 14, 14, 5)
    m = G.conv_transpose(5, 2, 3)
    assert jax.eval_shape(lambda: m.init_with_output(
        jax.random.key(0), jnp.zeros((1, 12, 12, 5)))[0]).shape == (1, 35, 35, 5)


@pytest.mark.parametrize("legacy,mean", [(False, 0.0), (True, 1.0)])
def test_weights_init(legacy, mean):
    """The code's weights_init on each layer type."""
    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, z, train=False):
            h = G.dense(4 * 4 * 64, use_bias=False)(z).reshape(-1, 4, 4, 64)
            h = G.conv_transpose(64, 2, 2, legacy)(h)
            h = G.batch_norm(train)(h)
            return G.conv(64, 3, padding=1)(h)

    v = _init(Tiny(), jnp.zeros((1, 256)))
    p = v["params"]
    convt = np.asarray(p["ConvTranspose2d_0"]["kernel"])
    assert abs(convt.mean() - mean) < 0.005 and abs(convt.std() - 0.02) < 0.003
    assert (np.asarray(p["ConvTranspose2d_0"]["bias"]) == 0).all()
    gamma = np.asarray(p["BatchNorm_0"]["scale"])
    assert abs(gamma.mean() - 1.0) < 0.01 and abs(gamma.std() - 0.02) < 0.01
    assert (np.asarray(p["BatchNorm_0"]["bias"]) == 0).all()
    dense = np.asarray(p["Dense_0"]["kernel"])
    assert abs(dense.mean()) < 0.002 and abs(dense.std() - 0.02) < 0.002
    conv = p["Conv2d_0"]
    assert abs(np.asarray(conv["kernel"]).std() - 0.02) < 0.002
    bound = 1 / np.sqrt(64 * 9)  # PyTorch default bias: U(+-1/sqrt(fan_in))
    b = np.asarray(conv["bias"])
    assert np.abs(b).max() <= bound and np.abs(b).max() > bound / 2


@pytest.mark.parametrize("size", [32, 128])
def test_discriminator_one_logit_per_image(size):
    d = G.Discriminator(width_scale=0.125)
    x = jnp.zeros((2, size, size, 3))
    v = jax.eval_shape(lambda: d.init(jax.random.key(0), x))
    assert jax.eval_shape(lambda v: d.apply(v, x), v).shape == (2,)


def test_unknown_generator_name():
    with pytest.raises(ValueError, match="generator name must be one of"):
        G.build_generator("imagenet")


def test_microbatched_generator_step_equals_full_batch():
    from ladder_jax import generator_train as gt

    class DenseGen(nn.Module):  # BN-free, cheap to compile: the logic is generic
        @nn.compact
        def __call__(self, z, train=False):
            return nn.sigmoid(nn.Dense(16)(nn.relu(nn.Dense(32)(z)))).reshape(-1, 4, 4, 1)

    gen = DenseGen()
    tx, dtx = gt.make_optimizers(1e-3, 0.9, 0.999, 0.1)
    s0 = gt.init_state(gen, None, jax.random.key(0), 10, (4, 4, 1), tx, dtx)
    z = jax.random.normal(jax.random.key(1), (8, 10))
    x = jax.random.uniform(jax.random.key(2), (8, 4, 4, 1))
    full, m_full = jax.jit(gt.make_train_step(gen, None, tx, dtx, "l1", 0.0))(s0, z, x)
    micro, m_micro = jax.jit(gt.make_train_step(gen, None, tx, dtx, "l1", 0.0, microbatch=2))(
        s0, z, x)
    assert float(m_full["rec_loss"]) == pytest.approx(float(m_micro["rec_loss"]), rel=1e-5)
    for a, b in zip(jax.tree.leaves(full.g.params), jax.tree.leaves(micro.g.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
