"""The LBGAT-family training loop: data, state, checkpoints, logging, evaluation.

``train_and_evaluate(config, workdir)`` trains any method of
``lbgat_jax.methods`` from a config, resumes exactly from the newest
checkpoint in ``workdir``, and ends with a clean/PGD table.

Guarantees:
* **Exact resume**: the checkpoint holds the whole train state (both models,
  optimizer, step, root key) and the data iterator's position; per-step keys
  are ``fold_in(key, step)``. N steps, a stop, a resume and N more equal 2N
  steps in one go.
* **No silent NaNs**: losses are checked on the host before every checkpoint
  and every log line; a non-finite loss raises ``NonFiniteLossError`` and the
  last good checkpoint stays in place.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from advcore import checkpoint as ckpt_lib
from advcore import data as data_lib
from advcore import evaluate as eval_lib
from advcore import metrics as metrics_lib
from advcore import optim as optim_lib
from advcore import parallel
from advcore import tables
from lbgat_jax import state as state_lib
from lbgat_jax import step as step_lib
from lbgat_jax.config_validation import validate_config
from lbgat_jax.methods import get_method


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or Inf loss; the last good checkpoint is kept."""


def _augment_for(config, info) -> str:
    return info.train_augment if config.dataset.augment == "default" else config.dataset.augment


def _eval_table(config, spec, models, state, test, mesh, key) -> dict[str, dict]:
    """Clean and PGD accuracy of the robust model (and the natural one)."""
    names = [a for a in config.eval.attacks.split(",") if a]
    attack_fns = eval_lib.build_attacks(
        names, eps=config.eval.eps, step_size=config.eval.step_size
    )
    rows = {}
    targets = [("robust", models.robust, state.robust, {})]
    if models.natural is not None:
        targets.append(("natural", models.natural, state.natural, {}))
    elif models.shared_bn:
        targets.append(("natural", models.robust, state.robust, {"bn_set": 1}))
    for label, module, mv, kwargs in targets:
        def apply_fn(v, x, module=module, kwargs=kwargs):
            return module.apply(v, x, train=False, **kwargs)

        variables = step_lib._variables(mv)
        rows[f"{config.method} ({label})"] = eval_lib.evaluate_classifier(
            apply_fn, variables, test.images, test.labels, attack_fns,
            batch_size=config.eval.batch_size, mesh=mesh, key=key,
            progress=config.progress_bar,
        )
    return rows


def _check_finite(pending: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
    """Fetches pending step metrics and raises on a non-finite loss."""
    fetched = []
    for step, metrics in pending:
        host = jax.tree.map(lambda a: np.asarray(a).item(), metrics)
        if not math.isfinite(host["loss"]) or not host.get("params_finite", True):
            what = (f"loss became {host['loss']}" if not math.isfinite(host["loss"])
                    else "parameters became non-finite")
            raise NonFiniteLossError(
                f"{what} at step {step}; training stopped and the last good "
                "checkpoint was kept (try a lower optim.lr)"
            )
        fetched.append((step, host))
    return fetched


def build_run(config: ml_collections.ConfigDict, mesh=None):
    """Everything a run needs, without training: used by train and tests."""
    validate_config(config)
    spec = get_method(config.method)
    info = data_lib.get_dataset_info(config.dataset.name)
    mesh = parallel.make_mesh() if mesh is None else mesh
    limit = config.dataset.train_limit or None
    train = data_lib.load_split(
        config.dataset.name, config.dataset.train_split, source=config.dataset.source,
        data_dir=config.dataset.data_dir or None, limit=limit,
    )
    if config.batch_size > len(train.labels):
        raise ValueError(
            f"config.batch_size ({config.batch_size}) must be <= the number of "
            f"training examples ({len(train.labels)})"
        )
    if config.batch_size % mesh.devices.size:
        raise ValueError(
            f"config.batch_size ({config.batch_size}) must be divisible by the "
            f"device count ({mesh.devices.size})"
        )
    steps_per_epoch = data_lib.steps_per_epoch(len(train.labels), config.batch_size)
    lr_schedule = optim_lib.epoch_piecewise_schedule(
        config.optim.lr, steps_per_epoch, tuple(config.optim.decay_epochs),
        config.optim.decay_factor, config.optim.warmup_epochs, config.optim.warmup_lr,
    )
    tx = optim_lib.torch_sgd(
        lr_schedule, config.optim.momentum, config.optim.weight_decay, config.optim.nesterov
    )
    models = state_lib.build_models(config, spec, info.num_classes)
    teacher_vars = state_lib.load_teacher_vars(config) if spec.teacher == "frozen" else None
    state = state_lib.create_train_state(
        config, models, tx, jax.random.PRNGKey(config.seed), info.image_shape, teacher_vars
    )
    state = parallel.replicate(state, mesh)
    train_step = step_lib.make_train_step(config, spec, models, tx, lr_schedule, mesh)
    return dict(
        spec=spec, info=info, mesh=mesh, train=train, steps_per_epoch=steps_per_epoch,
        lr_schedule=lr_schedule, tx=tx, models=models, state=state, train_step=train_step,
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) the run in ``workdir``; returns the final eval rows."""
    run = build_run(config)
    spec, info, mesh = run["spec"], run["info"], run["mesh"]
    models, state, train_step = run["models"], run["state"], run["train_step"]
    steps_per_epoch = run["steps_per_epoch"]
    total_steps = config.num_epochs * steps_per_epoch

    os.makedirs(workdir, exist_ok=True)
    if parallel.is_main_process():
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    writer = metrics_lib.MetricWriter(workdir, tensorboard=config.tensorboard)
    checkpointer = ckpt_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), config.to_dict(),
        max_to_keep=config.keep_checkpoints,
    )

    train_iter = data_lib.make_train_iterator(
        run["train"], global_batch_size=config.batch_size, seed=config.seed,
        augment=_augment_for(config, info),
    )
    restored = checkpointer.restore_latest(state)
    if restored is not None:
        state, meta = restored
        train_iter.set_state(meta["data_iterator"])
        print(f"Resumed from step {int(state.step)} in {workdir}")
    start_step = int(jax.device_get(state.step))

    checkpoint_every = config.checkpoint_every_steps or steps_per_epoch
    stop_at = total_steps
    if config.stop_after_steps:
        stop_at = min(total_steps, start_step + config.stop_after_steps)

    progress = None
    if config.progress_bar and parallel.is_main_process():
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=start_step, unit="step",
                        desc=f"{config.method}", dynamic_ncols=True)

    pending: list[tuple[int, dict]] = []
    step = start_step
    step_time = time.time()
    while step < stop_at:
        batch = parallel.shard_batch(next(train_iter), mesh)
        state, metrics = train_step(state, batch)
        step += 1
        pending.append((step, metrics))
        if progress is not None:
            progress.update(1)

        if step % config.log_every_steps == 0 or step == stop_at:
            fetched = _check_finite(pending)
            pending = []
            elapsed = time.time() - step_time
            step_time = time.time()
            last_step, last = fetched[-1]
            mean = {k: float(np.mean([m[k] for _, m in fetched])) for k in last
                    if k != "params_finite"}
            mean["epoch"] = last_step / steps_per_epoch
            mean["images_per_sec"] = len(fetched) * config.batch_size / max(elapsed, 1e-9)
            writer.write(last_step, mean)
            if progress is not None:
                progress.set_postfix(loss=f"{mean['loss']:.4f}",
                                     adv_acc=f"{mean.get('train/adv_acc', mean.get('train/acc', 0)):.3f}")

        end_of_epoch = step % steps_per_epoch == 0
        if step % checkpoint_every == 0 or step == stop_at:
            _check_finite(pending)  # never checkpoint a NaN state
            checkpointer.save(step, state, train_iter.get_state())
        if (config.eval_every_epochs and end_of_epoch
                and (step // steps_per_epoch) % config.eval_every_epochs == 0
                and step < total_steps):
            rows = _eval_table(config, spec, models, state, _test_split(config), mesh,
                               jax.random.PRNGKey(config.seed + 1))
            for label, row in rows.items():
                writer.write(step, {f"eval/{label}/{k}": v for k, v in row.items()})

    if progress is not None:
        progress.close()
    checkpointer.wait()

    rows: dict[str, dict] = {}
    if step >= total_steps and config.final_eval:
        rows = _eval_table(config, spec, models, state, _test_split(config), mesh,
                           jax.random.PRNGKey(config.seed + 1))
        for label, row in rows.items():
            writer.write(step, {f"eval/{label}/{k}": v for k, v in row.items()})
        if parallel.is_main_process():
            tables.write_table(
                os.path.join(workdir, "eval"),
                {k: {c: v for c, v in r.items() if c != "n"} for k, r in rows.items()},
                title=f"{config.dataset.name}: clean and robust accuracy (%), "
                      f"n={next(iter(rows.values()))['n']}",
            )
            print(open(os.path.join(workdir, "eval.md")).read())
    checkpointer.close()
    writer.close()
    return {"state": state, "eval": rows, "step": step}


def _test_split(config):
    return data_lib.load_split(
        config.dataset.name, config.dataset.test_split, source=config.dataset.source,
        data_dir=config.dataset.data_dir or None,
        limit=config.eval.num_examples or None,
    )
