"""The jitted data-parallel LBGAT step: device-count invariance, routing, resume, NaN."""

import jax
import numpy as np
import pytest

from advcore import checkpoint as ckpt_lib
from advcore import parallel
from configs.lbgat import mnist as mnist_config
from lbgat_jax import train


def tiny_config(method="lbgat_trades", **overrides):
    c = mnist_config.get_config(f"smoke,{method}")
    c.dataset.train_limit = 64
    c.batch_size = 16
    c.attack.num_steps = 2
    c.attack.step_size = 0.1
    c.eval.num_examples = 16
    c.final_eval = False
    for path, value in overrides.items():
        node = c
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def first_batch(run):
    from advcore import data

    it = data.make_train_iterator(run["train"], global_batch_size=16, seed=0, augment="none")
    return next(it)


def jitter(params, seed):
    """Adds fixed noise so no layer starts at exactly zero (SmallCNN's last layer does)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(
        treedef, [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


def run_one_step(config, mesh, nonzero_init=False):
    run = train.build_run(config, mesh=mesh)
    batch = parallel.shard_batch(first_batch(run), mesh)
    state = run["state"]
    if nonzero_init:
        state = state.replace(
            robust=state.robust.replace(params=jitter(state.robust.params, 1)),
            natural=state.natural.replace(params=jitter(state.natural.params, 2)))
    state, metrics = run["train_step"](state, batch)
    return jax.device_get(state), jax.device_get(metrics)


def leaves_close(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def test_one_and_four_devices_give_the_same_step():
    config = tiny_config()
    s1, m1 = run_one_step(config, parallel.make_mesh(jax.devices()[:1]))
    s4, m4 = run_one_step(config, parallel.make_mesh(jax.devices()[:4]))
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5, atol=1e-6)
    leaves_close(s1.robust, s4.robust, rtol=1e-5, atol=1e-6)
    leaves_close(s1.natural, s4.natural, rtol=1e-5, atol=1e-6)


def test_gradient_routing_through_the_real_step():
    # SmallCNN's zero-initialised last layer makes every logit 0 at init, where
    # the KL term's gradient vanishes whatever the routing: start off zero.
    mesh = parallel.make_mesh(jax.devices()[:1])
    base, _ = run_one_step(tiny_config(**{"loss.alpha": 0.0}), mesh, True)
    # β·CE(M_n(x), y) never reaches the robust model...
    no_ce, _ = run_one_step(
        tiny_config(**{"loss.alpha": 0.0, "loss.natural_ce_weight": 0.0}), mesh, True)
    leaves_close(base.robust.params, no_ce.robust.params, rtol=0, atol=0)
    with pytest.raises(AssertionError):
        leaves_close(base.natural.params, no_ce.natural.params, rtol=0, atol=0)
    # ... and α·KL never reaches the natural model.
    kl, _ = run_one_step(tiny_config(**{"loss.alpha": 6.0}), mesh, True)
    leaves_close(base.natural.params, kl.natural.params, rtol=0, atol=0)
    with pytest.raises(AssertionError):
        leaves_close(base.robust.params, kl.robust.params, rtol=0, atol=0)


def params_of(workdir):
    state, _, meta = ckpt_lib.load_raw_state(workdir)
    return state, meta["step"]


def test_interrupted_run_resumes_exactly(tmp_path):
    config = tiny_config(**{"num_epochs": 2, "checkpoint_every_steps": 2})
    straight = str(tmp_path / "straight")
    train.train_and_evaluate(config, straight)  # 2 epochs x 4 steps = 8 steps

    resumed = str(tmp_path / "resumed")
    half = tiny_config(**{"num_epochs": 2, "checkpoint_every_steps": 2, "stop_after_steps": 5})
    train.train_and_evaluate(half, resumed)
    assert params_of(resumed)[1] == 5
    train.train_and_evaluate(config, resumed)

    (a, step_a), (b, step_b) = params_of(straight), params_of(resumed)
    assert step_a == step_b == 8
    leaves_close(a, b, rtol=0, atol=0)


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config(
        method="trades",
        # Epoch 1 (4 steps) trains normally; epoch 2's LR blows the weights up.
        **{"optim.warmup_epochs": 1, "optim.warmup_lr": 0.01, "optim.lr": 1e30,
           "log_every_steps": 1, "checkpoint_every_steps": 1, "num_epochs": 2},
    )
    workdir = str(tmp_path / "nan")
    with pytest.raises(train.NonFiniteLossError, match="step"):
        train.train_and_evaluate(config, workdir)
    state, step = params_of(workdir)
    assert 4 <= step < 8
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["robust"]))
