"""One LBGAT training/evaluation scenario, run identically on any process layout.

``run_scenario(workdir, mesh)`` is called by the 2-process workers
(``worker.py``, one call per process) and in-process by the test for the
1 process x 4 devices and 1 x 1 references. Everything a multi-host run does
goes through the library's own paths:

* data: ``make_train_iterator`` hands each process only its rows of the global
  batch; ``parallel.shard_batch`` assembles the global arrays;
* two jitted LBGAT steps (``train.build_run``), the metrics of each step
  written with ``MetricWriter`` (process 0 only);
* a collective ``Checkpointer`` save after step 1, a restore of step 1 (with the
  data iterator's position) and a replay of step 2 from it;
* ``evaluate_classifier`` with a PGD attack on a padded test set, plus the
  logits on PGD examples gathered with ``parallel.fetch_to_host`` (a
  per-example check, finer than accuracies).

The result is a flat dict of numpy arrays and floats (see ``save_result``).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

import jax
import numpy as np

from advcore import checkpoint as ckpt_lib
from advcore import data as data_lib
from advcore import evaluation as eval_lib
from advcore import metrics as metrics_lib
from advcore import parallel
from configs.lbgat import mnist as mnist_config
from lbgat_jax import train

GLOBAL_BATCH = 16
NUM_EVAL = 20  # not a multiple of the eval batch: the last batch is padded
EVAL_BATCH = 8


def tiny_config():
    """tests/lbgat/test_train_step.py's smoke config (MNIST, tiny SmallCNN pair)."""
    c = mnist_config.get_config("smoke,lbgat_trades")
    c.dataset.train_limit = 64
    c.batch_size = GLOBAL_BATCH
    c.attack.num_steps = 2
    c.attack.step_size = 0.1
    c.eval.num_examples = NUM_EVAL
    c.final_eval = False
    c.progress_bar = False
    return c


def pgd_attack():
    """PGD-2, L-inf, CE, uniform start: the registry's ``pgd2`` when present."""
    kwargs = dict(eps=0.3, step_size=0.1)
    try:
        from advcore.attacks import make_attack
    except ImportError:  # the registry is not there yet: the same attack by hand
        from advcore.attacks import pgd

        return functools.partial(
            lambda f, x, y, k, **kw: pgd(f, x, y, k, **kw), num_steps=2, norm="linf",
            loss="ce", random_start="uniform", **kwargs)
    return make_attack("pgd2", **kwargs)


def _jitter(state, mesh):
    """Host-side fixed noise on both models' params, identical on every process.

    SmallCNN's last layer starts at exactly zero (every logit 0), where the
    KL gradients vanish; a fixed perturbation makes the comparison meaningful.
    """
    host = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), state)
    rng = np.random.default_rng(1234)

    def jitter(p):
        return (p + 0.05 * rng.standard_normal(p.shape)).astype(p.dtype)

    host = host.replace(
        robust=host.robust.replace(params=jax.tree.map(jitter, host.robust.params)),
        natural=host.natural.replace(params=jax.tree.map(jitter, host.natural.params)),
    )
    return parallel.replicate(host, mesh)


def _host(tree):
    return jax.tree.map(np.asarray, parallel.fetch_to_host(tree))


def _flat(prefix, tree):
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {prefix + jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


class _Timer:
    """Phase timings on stderr (the test prints them when a worker fails)."""

    def __init__(self):
        self.t = time.perf_counter()

    def __call__(self, what):
        now = time.perf_counter()
        print(f"[p{jax.process_index()}] {what}: {now - self.t:.1f}s", file=sys.stderr,
              flush=True)
        self.t = now


def run_scenario(workdir: str, mesh) -> dict:
    tick = _Timer()
    config = tiny_config()
    os.makedirs(workdir, exist_ok=True)
    run = train.build_run(config, mesh=mesh)
    train_step, models = run["train_step"], run["models"]
    state = _jitter(run["state"], mesh)
    tick("build_run")

    def iterator():
        # process_index/process_count default to this process's; each process
        # receives only its rows of the global batch.
        return data_lib.make_train_iterator(
            run["train"], global_batch_size=GLOBAL_BATCH, seed=0, augment="none")

    it = iterator()
    local_rows = None
    writer = metrics_lib.MetricWriter(workdir)
    checkpointer = ckpt_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), config.to_dict(), max_to_keep=2)
    out: dict = {}

    local = next(it)
    local_rows = int(local["image"].shape[0])
    state, m1 = train_step(state, parallel.shard_batch(local, mesh))
    m1 = _host(m1)
    writer.write(1, {k: v for k, v in m1.items() if k != "params_finite"})
    checkpointer.save(1, state, it.get_state())
    checkpointer.wait()
    step1 = _host(state)
    tick("step 1 (compile) + save")

    state, m2 = train_step(state, parallel.shard_batch(next(it), mesh))
    m2 = _host(m2)
    writer.write(2, {k: v for k, v in m2.items() if k != "params_finite"})
    step2 = _host(state)

    # Collective restore of step 1 (into the live state's shardings), then
    # replay step 2 from the restored data-iterator position.
    restored, meta = checkpointer.restore(1, state)
    restored_host = _host(restored)
    it2 = iterator()
    it2.set_state(meta["data_iterator"])
    replay, m2b = train_step(restored, parallel.shard_batch(next(it2), mesh))
    m2b = _host(m2b)
    replay_host = _host(replay)
    checkpointer.close()
    writer.close()
    tick("step 2, restore, replay")

    out["local_rows"] = local_rows
    out["loss1"] = float(m1["loss"])
    out["loss2"] = float(m2["loss"])
    out["replay_loss2"] = float(m2b["loss"])
    out["restored_step"] = int(restored_host.step)
    out["restore_exact"] = all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(restored_host),
                                             jax.tree.leaves(step1)))
    out["replay_exact"] = all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(replay_host),
                                             jax.tree.leaves(step2)))
    out.update(_flat("params", {"robust": step2.robust.params,
                                "natural": step2.natural.params}))

    # Evaluation of the robust model after step 2, same key and examples.
    test = data_lib.load_split(config.dataset.name, "test", source=config.dataset.source,
                               limit=NUM_EVAL)
    module = models.robust
    variables = state.robust.as_variables()

    def apply_fn(v, x):
        return module.apply(v, x, train=False)

    attack = pgd_attack()
    key = jax.random.PRNGKey(7)
    accs = eval_lib.evaluate_classifier(
        apply_fn, variables, test.images, test.labels, {"pgd2": attack},
        batch_size=EVAL_BATCH, mesh=mesh, key=key)
    out.update({f"eval/{k}": float(v) for k, v in accs.items()})
    tick("evaluate_classifier")

    # Per-example: logits on the PGD examples of a 16-example global batch.
    x = test.images[:GLOBAL_BATCH].astype(np.float32) / 255.0
    y = test.labels[:GLOBAL_BATCH].astype(np.int32)
    p, num_p = jax.process_index(), jax.process_count()
    rows = GLOBAL_BATCH // num_p
    xs, ys = parallel.shard_batch(
        (x[p * rows:(p + 1) * rows], y[p * rows:(p + 1) * rows]), mesh)

    @functools.partial(jax.jit, in_shardings=(parallel.replicated(mesh),
                                              parallel.data_sharded(mesh),
                                              parallel.data_sharded(mesh), None),
                       out_shardings=parallel.data_sharded(mesh))
    def adv_logits(v, xb, yb, k):
        logits_fn = lambda z: apply_fn(v, z)  # noqa: E731
        return logits_fn(attack(logits_fn, xb, yb, k))

    out["adv_logits"] = parallel.fetch_to_host(adv_logits(variables, xs, ys, key))
    tick("adv logits")
    return out


def save_result(result: dict, path: str) -> None:
    arrays = {k: np.asarray(v) for k, v in result.items()}
    np.savez(path, **arrays)


def load_result(path: str) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def metric_lines(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
