"""One epoch-based, data-parallel, resumable training loop shared by the stages.

The state is replicated over the ``('data',)`` mesh and each global batch is
sharded along its leading axis (``advcore.parallel``); losses are global
means, so XLA inserts the gradient all-reduce and BatchNorm sees the global
batch. Batches of an epoch come from ``epoch_permutation(seed, epoch)``, so a
run resumed from a checkpoint (saved at epoch boundaries) replays exactly the
batches it would have seen. Each process feeds rows ``[p*L, (p+1)*L)`` of
every global batch.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Iterator, Mapping, Optional

import jax
import numpy as np
from tqdm import tqdm

from advcore import parallel
from advcore.metrics import MetricWriter
from ladder_jax.train_utils import epoch_permutation, restore_latest

BatchFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]


def epoch_batches(
    n: int, global_batch: int, seed: int, epoch: int, make_batch: BatchFn, stream: int = 0
) -> Iterator[Mapping[str, np.ndarray]]:
    """The full global batches of one epoch (the last partial one is dropped).

    ``make_batch(rows)`` turns this process's row indices into arrays.
    """
    perm = epoch_permutation(n, seed, epoch, stream)
    p, num_p = jax.process_index(), jax.process_count()
    local = global_batch // num_p
    for start in range(0, n - global_batch + 1, global_batch):
        rows = perm[start:start + global_batch][p * local:(p + 1) * local]
        yield make_batch(rows)


def effective_batch(requested: int, num_examples: int) -> int:
    """The global batch actually used: at most the data size, a multiple of the devices.

    Only tiny (smoke / test) datasets are affected; the paper's batch sizes
    are kept whenever the data has at least that many examples and the
    device count divides them.
    """
    devices = jax.device_count()
    b = min(requested, num_examples)
    b -= b % devices
    if b < 1:
        raise ValueError(f"need at least {devices} training examples (one per device), got "
                         f"{num_examples}")
    if requested % devices and requested <= num_examples:
        raise ValueError(f"batch size {requested} must be divisible by the number of "
                         f"devices ({devices})")
    return b


@functools.lru_cache(maxsize=None)
def _jit_step(step_fn: Callable) -> Callable:
    # Reusing one jit wrapper per step function lets rows that share a step
    # (e.g. every Eq. 6 fine-tuning row) share its compilation.
    return jax.jit(step_fn, donate_argnums=0)


def fit(
    *,
    state: Any,
    step_fn: Callable[[Any, Mapping[str, jax.Array]], tuple[Any, Mapping[str, jax.Array]]],
    num_examples: int,
    global_batch: int,
    make_batch: BatchFn,
    epochs: int,
    seed: int,
    checkpointer: Any = None,
    checkpoint_every_epochs: int = 1,
    eval_fn: Optional[Callable[[Any], Mapping[str, float]]] = None,
    eval_every_epochs: int = 0,
    writer: Optional[MetricWriter] = None,
    progress: bool = True,
    desc: str = "train",
    stream: int = 0,
) -> Any:
    """Trains for ``epochs`` epochs, resuming from ``checkpointer`` if it has a step.

    ``step_fn`` is jitted here with the state donated. Returns the final state
    (replicated on the mesh).
    """
    if global_batch > num_examples:
        raise ValueError(
            f"batch size must be <= the number of training examples ({num_examples}), "
            f"got {global_batch}"
        )
    steps_per_epoch = num_examples // global_batch
    mesh = parallel.make_mesh()
    start_epoch = 0
    if checkpointer is not None:
        state, step = restore_latest(checkpointer, state)
        if step is not None:
            start_epoch = step // steps_per_epoch
    # Via the host: the initial state may share buffers with arrays the caller
    # keeps (e.g. the cached vanilla weights), which donation would delete.
    state = parallel.replicate(jax.device_get(state), mesh)
    jitted = _jit_step(step_fn)
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        sums: dict[str, float] = {}
        bar = tqdm(total=steps_per_epoch, desc=f"{desc} epoch {epoch + 1}/{epochs}",
                   disable=not progress, leave=False)
        for batch in epoch_batches(num_examples, global_batch, seed, epoch, make_batch, stream):
            state, metrics = jitted(state, parallel.shard_batch(dict(batch), mesh))
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.update(1)
        bar.close()
        record = {f"train/{k}": v / max(steps_per_epoch, 1) for k, v in sums.items()}
        record["epoch"] = epoch + 1
        record["epoch_seconds"] = time.time() - t0
        last = epoch + 1 == epochs
        due = bool(eval_every_epochs) and (epoch + 1) % eval_every_epochs == 0
        if eval_fn is not None and (last or due):
            record.update({f"eval/{k}": v for k, v in eval_fn(state).items()})
        if writer is not None:
            writer.write((epoch + 1) * steps_per_epoch, record)
        if checkpointer is not None and (last or (epoch + 1) % checkpoint_every_epochs == 0):
            checkpointer.save((epoch + 1) * steps_per_epoch, state)
    if checkpointer is not None:
        checkpointer.wait()
    return state
