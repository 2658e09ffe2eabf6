"""LADDER's training units on the library's one training loop (``advcore.train_loop``).

The vanilla classifier, the generators and every fine-tuned row train with
``fit``: batches from ``advcore.data.make_batch_iterator`` (shuffled per
epoch, the last partial batch dropped), the state replicated over the
``('data',)`` mesh and each batch sharded, so BatchNorm sees the global
batch. From the loop they get exact mid-epoch resume, the non-finite check,
asynchronous metrics and clean SIGINT/SIGTERM stops.

A unit's checkpoints store its identity (unit, fingerprint, input ids) as
their config: a checkpoint made under another config or from other inputs is
moved aside (``discarded/``) instead of resumed.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np

from advcore import checkpoint as ckpt_lib
from advcore import data, parallel, train_loop
from advcore.metrics import MetricWriter

log = logging.getLogger("ladder_jax")

BatchFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]


def effective_batch(requested: int, num_examples: int, num_devices: int) -> int:
    """The global batch actually used: at most the data size, a multiple of the devices.

    Only tiny (smoke / test) datasets are affected; the paper's batch sizes
    are kept whenever the data has at least that many examples and the
    device count divides them.
    """
    b = min(requested, num_examples)
    b -= b % num_devices
    if b < 1:
        raise ValueError(f"need at least {num_devices} training examples (one per device), "
                         f"got {num_examples}")
    if requested % num_devices and requested <= num_examples:
        raise ValueError(f"batch size {requested} must be divisible by the number of "
                         f"devices ({num_devices})")
    return b


def jit_step(step: Callable, mesh) -> Callable:
    """``jit(step)`` over ``mesh``: state replicated and donated, batch sharded."""
    repl, shard = parallel.replicated(mesh), parallel.data_sharded(mesh)
    return jax.jit(step, in_shardings=(repl, shard), out_shardings=(repl, repl),
                   donate_argnums=(0,))


def open_checkpointer(wd: Any, unit_dir: str, identity: Mapping[str, Any],
                      run_spec: Optional[Mapping[str, Any]] = None, max_to_keep: int = 2
                      ) -> ckpt_lib.Checkpointer:
    """The checkpointer of ``<unit_dir>/checkpoints`` for the unit ``identity`` names.

    Checkpoints saved under another identity (config or inputs changed since)
    are moved aside with ``<unit_dir>/metrics.jsonl``, so training restarts;
    checkpoints of the same identity are resumed.
    """
    directory = wd.path(unit_dir, "checkpoints")
    config = dict(identity)
    ckpt = ckpt_lib.Checkpointer(directory, config, max_to_keep=max_to_keep, run_spec=run_spec)
    step = ckpt.latest_step()
    if step is None:
        return ckpt
    try:
        stale = ckpt.read_meta(step).get("config_fingerprint") != ckpt.fingerprint
    except ckpt_lib.CheckpointCorruptError:
        stale = False  # restore_latest sets damaged steps aside itself
    if not stale:
        return ckpt
    ckpt.close()
    moved = wd.move_aside(identity["unit"], [os.path.join(unit_dir, "checkpoints"),
                                             os.path.join(unit_dir, "metrics.jsonl")])
    log.warning("%s: its checkpoints were made under another config or from other inputs; "
                "moved them to %s and training from scratch", identity["unit"], moved)
    return ckpt_lib.Checkpointer(directory, config, max_to_keep=max_to_keep, run_spec=run_spec)


def checkpoint_digest(checkpointer: ckpt_lib.Checkpointer) -> str:
    """The SHA-256 of the newest checkpoint (arrays, config and metadata): the
    content identity of a training unit's output."""
    return checkpointer.read_meta(checkpointer.latest_step())["digest"]


def fit(
    *,
    state: Any,
    step_fn: Callable,
    num_examples: int,
    batch_size: int,
    make_batch: BatchFn,
    epochs: int,
    seed: int,
    checkpointer: ckpt_lib.Checkpointer,
    checkpoint_every_epochs: int,
    writer: MetricWriter,
    mesh,
    eval_fn: Optional[Callable[[Any], Mapping[str, float]]] = None,
    eval_every_epochs: int = 0,
    progress: bool = True,
    desc: str = "train",
) -> tuple[Any, bool]:
    """Trains ``epochs`` epochs (resuming from ``checkpointer``); returns ``(state, trained)``.

    ``step_fn`` is the jitted step (``jit_step``); ``make_batch(rows)`` turns
    this process's rows of a global batch into host arrays. ``eval_fn`` runs
    after every ``eval_every_epochs``-th epoch but the last (the caller
    evaluates the final model). ``trained`` is False when the finished
    checkpoint was restored and no step ran. With ``epochs == 0`` the initial
    state is saved, so the unit still leaves an evaluable model.
    """
    steps_per_epoch = num_examples // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch size must be <= the number of training examples "
                         f"({num_examples}), got {batch_size}")
    batches = data.make_batch_iterator(num_examples, global_batch_size=batch_size, seed=seed,
                                       make_batch=lambda _step, rows: make_batch(rows))
    # Via the host: the initial state may share buffers with arrays the caller
    # keeps (e.g. the vanilla weights), which the donating step would delete.
    state = parallel.replicate(jax.device_get(state), mesh)
    steps_run = [0]

    def counted_step(st, batch):
        steps_run[0] += 1
        return step_fn(st, batch)

    state, _ = train_loop.run(
        state=state, step_fn=counted_step, batches=batches, mesh=mesh,
        total_steps=epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch,
        global_batch_size=batch_size, checkpointer=checkpointer,
        checkpoint_every_steps=checkpoint_every_epochs * steps_per_epoch, writer=writer,
        log_every_steps=steps_per_epoch,
        eval_fn=None if eval_fn is None else (lambda st, _step: eval_fn(st)),
        eval_every_epochs=eval_every_epochs, progress=progress, desc=desc)
    if epochs == 0 and checkpointer.latest_step() is None:
        checkpointer.save(0, state, batches.get_state())
    checkpointer.wait()
    return state, steps_run[0] > 0
