"""PyTorch-equivalence of the building blocks in ``advcore.models.layers``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advcore.models import layers


def torch_conv2d_reference(x, kernel, bias, stride, padding):
    """Direct NCHW-semantics convolution on NHWC arrays, as torch.nn.Conv2d computes it."""
    x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    b, h, w, _ = x.shape
    k = kernel.shape[0]
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    out = np.zeros((b, ho, wo, kernel.shape[-1]))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            out[:, i, j, :] = np.einsum("bhwc,hwco->bo", patch, kernel)
    return out + bias


@pytest.mark.parametrize("stride,padding,size", [(2, 1, 8), (1, 1, 5), (2, 0, 7), (1, 0, 6)])
def test_conv2d_matches_pytorch_padding(stride, padding, size):
    # Hand-made parameters: no random init to compile.
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, size, size, 3)).astype(np.float32)
    p = {"kernel": rng.normal(size=(3, 3, 3, 5)).astype(np.float32),
         "bias": rng.normal(size=(5,)).astype(np.float32)}
    y = layers.Conv2d(5, 3, stride, padding).apply({"params": p}, x)
    ref = torch_conv2d_reference(x.astype(np.float64), p["kernel"].astype(np.float64),
                                 p["bias"].astype(np.float64), stride, padding)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_batch_norm_matches_pytorch_semantics():
    bn = layers.BatchNorm()
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (4, 3, 3, 6))
    variables = bn.init(jax.random.key(1), x, train=False)
    apply = jax.jit(bn.apply, static_argnames=("train", "mutable"))
    y, updates = apply(variables, x, train=True, mutable=("batch_stats",))
    xn = np.asarray(x, np.float64).reshape(-1, 6)
    mean, var = xn.mean(0), xn.var(0)
    np.testing.assert_allclose(
        np.asarray(y).reshape(-1, 6), (xn - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4
    )
    n = xn.shape[0]
    stats = updates["batch_stats"]
    # torch: running = 0.9 * running + 0.1 * batch, with the unbiased variance.
    np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
    # Eval mode normalises with the running statistics.
    y_eval = apply({**variables, **updates}, x, train=False)
    np.testing.assert_allclose(
        np.asarray(y_eval).reshape(-1, 6),
        (xn - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var * n / (n - 1) + 1e-5), rtol=1e-4, atol=1e-4,
    )


def test_batch_norm_bf16_keeps_float32_stats():
    bn = layers.BatchNorm(dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (8, 4)).astype(jnp.bfloat16)
    variables = bn.init(jax.random.key(1), x, train=False)
    y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    assert y.dtype == jnp.bfloat16
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(updates))


def test_canonical_dtype():
    assert layers.canonical_dtype("bfloat16") == jnp.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        layers.canonical_dtype("int32")
    with pytest.raises(ValueError, match="dtype"):
        layers.canonical_dtype("not-a-dtype")


def test_flatten_chw_matches_nchw_view():
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # NHWC
    expected = x.transpose(0, 3, 1, 2).reshape(2, -1)  # torch .view on NCHW
    np.testing.assert_array_equal(layers.flatten_chw(jnp.asarray(x)), expected)


# --------------------------------------------------------------------------
# Residual blocks against a NumPy transcription of the PyTorch forward passes.


def random_params_like(module, *args, seed=0, **kwargs):
    """Variables with the module's tree, filled from NumPy (no random init to compile)."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
    rng = np.random.default_rng(seed)
    fill = lambda s: rng.normal(scale=0.3, size=s.shape).astype(np.float32)  # noqa: E731
    variables = jax.tree.map(fill, shapes)
    # Valid running variances.
    variables["batch_stats"] = jax.tree_util.tree_map_with_path(
        lambda p, v: np.abs(v) + 0.5 if p[-1].key == "var" else v, variables["batch_stats"])
    return variables


def bn_eval(x, p, s):
    return (x - s["mean"]) / np.sqrt(s["var"] + 1e-5) * p["scale"] + p["bias"]


def relu(x):
    return np.maximum(x, 0.0)


def conv_ref(x, p, stride, padding):
    return torch_conv2d_reference(x, np.asarray(p["kernel"], np.float64), 0.0, stride, padding)


@pytest.mark.parametrize("cin,cout,stride", [(4, 6, 2), (6, 6, 1)])
def test_wrn_block_matches_pytorch_forward(cin, cout, stride):
    from advcore.models.wide_resnet import WRNBlock

    block = WRNBlock(cout, stride, 0.0, 1, jnp.float32)
    x = np.random.default_rng(1).normal(size=(2, 6, 6, cin)).astype(np.float32)
    v = random_params_like(block, x, False, 0)
    y = block.apply(v, x, False, 0)
    p, s = v["params"], v["batch_stats"]
    x64 = x.astype(np.float64)
    a = relu(bn_eval(x64, p["bn1"], s["bn1"]))
    out = relu(bn_eval(conv_ref(a, p["conv1"], stride, 1), p["bn2"], s["bn2"]))
    out = conv_ref(out, p["conv2"], 1, 1)
    # Width change: the 1x1 shortcut sees the pre-activated a (docs/lbgat.md#wrn); else raw x.
    shortcut = conv_ref(a, p["convShortcut"], stride, 0) if cin != cout else x64
    np.testing.assert_allclose(y, out + shortcut, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cin,cout,stride", [(4, 6, 2), (6, 6, 1)])
def test_resnet_block_matches_pytorch_forward(cin, cout, stride):
    from advcore.models.resnet import BasicBlock

    block = BasicBlock(cout, stride, jnp.float32)
    x = np.random.default_rng(1).normal(size=(2, 6, 6, cin)).astype(np.float32)
    v = random_params_like(block, x, False)
    y = block.apply(v, x, False)
    p, s = v["params"], v["batch_stats"]
    x64 = x.astype(np.float64)
    out = relu(bn_eval(conv_ref(x64, p["conv1"], stride, 1), p["bn1"], s["bn1"]))
    out = bn_eval(conv_ref(out, p["conv2"], 1, 1), p["bn2"], s["bn2"])
    if cin != cout or stride != 1:
        shortcut = bn_eval(conv_ref(x64, p["shortcut_conv"], stride, 0),
                           p["shortcut_bn"], s["shortcut_bn"])
    else:
        shortcut = x64
    np.testing.assert_allclose(y, relu(out + shortcut), rtol=1e-4, atol=1e-4)
