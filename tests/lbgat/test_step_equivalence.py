"""Speed levers must not change the numbers: the LBGAT step, plain vs fast forms.

The plain formulation is ``lax.conv_general_dilated`` with JAX's own VJP and
the PGD loop as a rolled ``lax.fori_loop`` (unroll=1). The levers kept in the
library are checked against it:

* ``advcore.backend``'s CPU model rewrites (the input gradient as a
  canonical NHWC/HWIO convolution, which XLA:CPU runs with its fast
  convolution library even inside the PGD while-loop; unpadded convolutions
  through the padded path; reshape max pooling);
* the loop form (``attack.unroll`` 1 / 2 / full);
* the XLA:CPU flags ``advcore.backend.configure_cpu`` applies
  (``CPU_XLA_FLAGS``), in a process of their own.

fp32: loss, metrics and both models' parameters after a step agree to 1e-5.
bf16 (``precision='bfloat16'``: bf16 compute, fp32 parameters and
accumulation) is compared with fp32 under the documented bound below.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advcore import optim as optim_lib
from advcore import parallel
from advcore import backend
from configs.lbgat import cifar10
from lbgat_jax import state as state_lib
from lbgat_jax import step as step_lib
from lbgat_jax.methods import get_method

FP32_TOL = dict(rtol=1e-5, atol=1e-5)
# bf16 compute (8-bit mantissa, ~3e-3 relative per rounding) through a 10-layer
# WRN, 3 PGD steps and one SGD step: the loss stays within 5% and the
# parameter *updates* point the same way (cosine > 0.9).
BF16_LOSS_RTOL = 5e-2
BF16_UPDATE_COSINE = 0.9


@pytest.fixture(autouse=True)
def _restore_rewrites():
    yield
    backend.set_cpu_rewrites(None)


def tiny_config(unroll=1, precision="float32", num_steps=3):
    c = cifar10.get_config("lbgat_trades,smoke")  # WRN-10-1 pair
    c.batch_size = 8
    c.attack.num_steps = num_steps
    c.attack.unroll = unroll
    c.precision = precision
    return c


def one_step(config, conv_impl, batch_np):
    backend.set_cpu_rewrites(conv_impl == "canonical")
    method = get_method(config.method)
    models = state_lib.build_models(config, method, 10)
    schedule = optim_lib.epoch_piecewise_schedule(0.1, 10)
    tx = optim_lib.torch_sgd(schedule, 0.9, 2e-4)
    mesh = parallel.make_mesh(jax.devices()[:1])
    state = state_lib.create_train_state(config, models, tx, jax.random.PRNGKey(0), (32, 32, 3))
    state = parallel.replicate(state, mesh)
    step = step_lib.make_train_step(config, method, models, tx, schedule, mesh)
    before = jax.device_get(state)  # the step donates its state
    new_state, metrics = step(state, parallel.shard_batch(batch_np, mesh))
    return before, jax.device_get(new_state), jax.device_get(metrics)


def make_batch():
    rng = np.random.default_rng(0)
    return {"image": rng.uniform(0, 1, (8, 32, 32, 3)).astype(np.float32),
            "label": rng.integers(0, 10, (8,)).astype(np.int32)}


@pytest.fixture(scope="module")
def batch_np():
    return make_batch()


@pytest.fixture(scope="module")
def reference(batch_np):
    out = one_step(tiny_config(unroll=1), "plain", batch_np)
    backend.set_cpu_rewrites(None)
    return out


def assert_same_step(a, b):
    _, sa, ma = a
    _, sb, mb = b
    for k in ("loss", "grad_norm", "loss/boundary", "train/adv_acc"):
        if k in ma:
            np.testing.assert_allclose(ma[k], mb[k], err_msg=k, **FP32_TOL)
    for tree in ("robust", "natural"):
        for x, y in zip(jax.tree.leaves(getattr(sa, tree)), jax.tree.leaves(getattr(sb, tree))):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), **FP32_TOL)


# padding 0 takes the padded-and-sliced path, a 1x1 kernel with padding 0 the
# matrix-product path (advcore.backend docstring); 9x9 inputs leave a
# remainder row at stride 2, which both must drop as the convolution does.
@pytest.mark.parametrize("stride,padding,k", [(1, 1, 3), (2, 1, 3), (2, 0, 1), (1, 0, 1),
                                              (1, 1, 1), (1, 0, 3), (2, 0, 3), (1, 0, 5)])
def test_canonical_conv_vjp_equals_jax(stride, padding, k):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 4))
    w = jax.random.normal(jax.random.PRNGKey(1), (k, k, 4, 6))
    pads = ((padding, padding), (padding, padding))

    def f(fn):
        return lambda x, w: jnp.sum(jnp.sin(fn(x, w, (stride, stride), pads)))

    plain = jax.grad(f(backend.plain_conv2d), (0, 1))(x, w)
    canon = jax.grad(f(backend.canonical_conv2d), (0, 1))(x, w)
    for a, b in zip(plain, canon):
        np.testing.assert_allclose(a, b, **FP32_TOL)
    # ...also where it matters: inside a while loop.
    loop = lambda fn: jax.jit(lambda x, w: jax.lax.fori_loop(  # noqa: E731
        0, 2, lambda i, z: z + 0.1 * jax.grad(f(fn))(z, w), x))
    np.testing.assert_allclose(loop(backend.plain_conv2d)(x, w), loop(backend.canonical_conv2d)(x, w),
                               **FP32_TOL)


@pytest.mark.parametrize("stride", [1, 2])
def test_unpadded_pointwise_conv_is_a_matrix_product(stride):
    # The point of the 1x1 rewrite: no convolution is left for XLA:CPU to run
    # in its generic loop, neither forward nor in either gradient.
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4))
    w = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 4, 6))

    def loss(x, w):
        return jnp.sum(backend.canonical_conv2d(x, w, (stride, stride), ((0, 0), (0, 0))) ** 2)

    jaxpr = str(jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, w))
    assert "dot_general" in jaxpr and "conv_general_dilated" not in jaxpr
    with pytest.raises(ValueError, match="1x1 HWIO kernel"):
        backend.pointwise_conv2d(x, jnp.ones((3, 3, 4, 6)), (1, 1))


def test_cpu_rewrite_selection():
    assert backend.cpu_rewrites_enabled() == (jax.default_backend() == "cpu")
    backend.set_cpu_rewrites(False)
    assert not backend.cpu_rewrites_enabled()
    backend.set_cpu_rewrites(True)
    assert backend.cpu_rewrites_enabled()
    with pytest.raises(ValueError, match="enabled must be True, False or None"):
        backend.set_cpu_rewrites("winograd")


def test_configure_cpu_keeps_the_users_xla_flags(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
    backend.configure_cpu(xla_flags=("--xla_cpu_experimental_ynn_fusion_type=",
                                     "--xla_cpu_use_onednn=false"))
    import os

    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_cpu_experimental_ynn_fusion_type=individual_dot", "--xla_cpu_use_onednn=false"]


def test_models_are_plain_flax_outside_the_runtime():
    # The plain model (no rewrite) and the runtime's apply give the same
    # logits, and forward-mode AD works on the plain model.
    from advcore.models import build_model, init_variables
    from advcore.variables import ModelVars, apply_eval

    model = build_model("small_cnn", 10, channels=(4, 4, 8, 8), hidden_dim=16)
    v = init_variables(model, jax.random.PRNGKey(0), (1, 28, 28, 1))
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 28, 28, 1))
    backend.set_cpu_rewrites(True)
    fast = apply_eval(model, ModelVars.from_variables(v), x)
    np.testing.assert_allclose(model.apply(v, x, train=False), fast, **FP32_TOL)
    tangent = jax.jvp(lambda x: model.apply(v, x, train=False), (x,), (jnp.ones_like(x),))[1]
    assert tangent.shape == (2, 10) and bool(jnp.all(jnp.isfinite(tangent)))


@pytest.mark.parametrize("conv_impl,unroll", [("canonical", 1), ("canonical", 3), ("plain", 3)])
def test_fast_forms_match_the_plain_step(reference, batch_np, conv_impl, unroll):
    assert_same_step(reference, one_step(tiny_config(unroll=unroll), conv_impl, batch_np))


def test_bfloat16_step_within_documented_bound(reference, batch_np):
    before, s32, m32 = reference
    _, s16, m16 = one_step(tiny_config(precision="bfloat16"), "canonical", batch_np)
    assert np.isfinite(m16["loss"]) and bool(m16["params_finite"])
    np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=BF16_LOSS_RTOL)
    # Master weights stay fp32.
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(s16.robust.params))
    for tree in ("robust", "natural"):
        d32 = np.concatenate([np.ravel(a - b) for a, b in zip(
            jax.tree.leaves(getattr(s32, tree).params), jax.tree.leaves(getattr(before, tree).params))])
        d16 = np.concatenate([np.ravel(a - b) for a, b in zip(
            jax.tree.leaves(getattr(s16, tree).params), jax.tree.leaves(getattr(before, tree).params))])
        cosine = float(d32 @ d16 / (np.linalg.norm(d32) * np.linalg.norm(d16)))
        assert cosine > BF16_UPDATE_COSINE, (tree, cosine)


# Runs one fast-form step in a fresh process (XLA flags are read when the
# backend starts) and saves its metrics and parameters.
_STEP_IN_SUBPROCESS = """
import importlib.util, sys
import jax, numpy as np
spec = importlib.util.spec_from_file_location("step_equivalence", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
_, state, metrics = m.one_step(m.tiny_config(unroll=1), "canonical", m.make_batch())
arrays = {f"metric/{k}": np.asarray(v) for k, v in metrics.items()}
for tree in ("robust", "natural"):
    for i, leaf in enumerate(jax.tree.leaves(getattr(state, tree))):
        arrays[f"{tree}/{i}"] = np.asarray(leaf)
np.savez(sys.argv[2], **arrays)
"""


def test_cpu_xla_flags_keep_the_step(reference, tmp_path):
    if not backend.CPU_XLA_FLAGS:
        pytest.skip("advcore.backend.CPU_XLA_FLAGS is empty: nothing to compare")
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, XLA_FLAGS=" ".join(backend.CPU_XLA_FLAGS), JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "step.npz"
    proc = subprocess.run([sys.executable, "-c", _STEP_IN_SUBPROCESS, os.path.abspath(__file__),
                           str(out)], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = np.load(out)
    _, state, metrics = reference
    for k in ("loss", "grad_norm", "loss/boundary", "train/adv_acc"):
        if k in metrics:
            np.testing.assert_allclose(got[f"metric/{k}"], metrics[k], err_msg=k, **FP32_TOL)
    for tree in ("robust", "natural"):
        leaves = jax.tree.leaves(getattr(state, tree))
        for i, leaf in enumerate(leaves):
            np.testing.assert_allclose(got[f"{tree}/{i}"], np.asarray(leaf), err_msg=f"{tree}/{i}",
                                       **FP32_TOL)
