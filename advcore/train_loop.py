"""The one training loop of the library: steps, metrics, checkpoints, clean stops.

``run(...)`` drives any jitted ``step(state, batch) -> (state, metrics)`` over a
resumable batch iterator (``advcore.data.make_batch_iterator``):

* **Exact resume.** It restores the newest intact checkpoint of the run (the
  train state and the iterator's position), so N steps, a stop and N more
  equal 2N steps in one go. Records that a killed run logged after its last
  checkpoint are dropped from ``metrics.jsonl`` on resume, because the resumed
  run logs those steps again (with the same values).
* **Asynchronous metrics.** Step metrics stay on the device until a log step,
  so the host never waits for a step to finish except there.
* **No silent NaNs.** Before every log line and every checkpoint the pending
  metrics are checked on the host; a non-finite loss (or parameters, when the
  step reports ``params_finite``) raises ``NonFiniteLossError``. Since no
  checkpoint is written before that check, every checkpoint holds a finite
  state, and any save still in flight is completed first.
* **Clean stops.** SIGINT (Ctrl-C) and SIGTERM (preemption) do not kill the
  step in flight: at the next step boundary the loop checks the pending
  metrics, saves the current step (the state and the iterator position, so
  the resumed run continues exactly), waits for the save, and raises
  ``TrainingInterrupted``.

Command lines turn these into one line and an exit code (``advcore.cli``):
``EXIT_NON_FINITE`` (3), ``EXIT_INTERRUPTED`` (130, SIGINT) and
``EXIT_PREEMPTED`` (143, SIGTERM).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Optional

import jax
import numpy as np
from tqdm import tqdm

from advcore import parallel
from advcore.metrics import MetricWriter

log = logging.getLogger("advcore")

EXIT_NON_FINITE = 3
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_PREEMPTED = 128 + signal.SIGTERM


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or Inf; the newest finite checkpoint is kept."""

    exit_code = EXIT_NON_FINITE


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; the current step was saved first."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


@contextlib.contextmanager
def _deferred_signals() -> Iterator[dict]:
    """Catches SIGINT/SIGTERM into a flag for the loop to act on at a step boundary."""
    caught: dict = {}
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum, _frame):
        caught.setdefault("signum", signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def check_finite(pending: list[tuple[int, Mapping[str, Any]]]) -> list[tuple[int, dict]]:
    """Fetches pending ``(step, metrics)`` to the host; raises on a non-finite loss."""
    fetched = []
    for step, metrics in pending:
        host = {k: np.asarray(v).item() for k, v in parallel.fetch_to_host(dict(metrics)).items()}
        if not math.isfinite(host["loss"]) or not host.get("params_finite", True):
            what = (f"loss became {host['loss']}" if not math.isfinite(host["loss"])
                    else "parameters became non-finite")
            raise NonFiniteLossError(
                f"{what} at step {step}; training stopped and the newest finite "
                "checkpoint was kept (try a lower optim.lr)")
        fetched.append((step, host))
    return fetched


def run(
    *,
    state: Any,
    step_fn: Callable[[Any, Any], tuple[Any, Mapping[str, jax.Array]]],
    batches: Any,
    mesh: Any,
    total_steps: int,
    steps_per_epoch: int,
    global_batch_size: int,
    checkpointer: Any = None,
    checkpoint_every_steps: int = 0,
    writer: Optional[MetricWriter] = None,
    log_every_steps: int = 50,
    eval_fn: Optional[Callable[[Any, int], Mapping[str, float]]] = None,
    eval_every_epochs: int = 0,
    stop_after_steps: int = 0,
    progress: bool = True,
    desc: str = "train",
    postfix: Callable[[dict], dict] = lambda mean: {"loss": f"{mean['loss']:.4f}"},
) -> tuple[Any, int]:
    """Trains until ``total_steps`` (resuming from ``checkpointer``); returns ``(state, step)``.

    Args:
      state: the initial train state, already placed on ``mesh``; its shape
        is the target a checkpoint is restored into.
      step_fn: the jitted step; its metrics must include ``loss``.
      batches: a resumable iterator of *local* batches (``get_state`` /
        ``set_state``); each is sharded over ``mesh`` before the step.
      total_steps, steps_per_epoch, global_batch_size: the run's length.
      checkpointer: an ``advcore.checkpoint.Checkpointer`` (None: no
        checkpoints, no resume).
      checkpoint_every_steps: 0 = at the end of every epoch.
      writer: where log records go (``metrics.jsonl``).
      log_every_steps: steps per log record (mean of the steps' metrics).
      eval_fn: ``eval_fn(state, step) -> {name: value}``, logged under
        ``eval/`` at the end of every ``eval_every_epochs``-th epoch (not after
        the last step: the caller evaluates the final model itself).
      stop_after_steps: > 0 stops (checkpointed) after that many steps of this call.
      progress: a tqdm bar with throughput and ETA (process 0 only).
    """
    start_step = 0
    if checkpointer is not None:
        restored = checkpointer.restore_latest(state)
        if restored is not None:
            state, meta = restored
            batches.set_state(meta["data_iterator"])
            start_step = int(meta["step"])
            if parallel.is_main_process():
                log.info("%s: resumed from step %d (%s)", desc, start_step,
                         checkpointer.directory)
    if writer is not None:
        # Records a killed run logged after the step we resume from (or all of
        # them, when no checkpoint survived) are logged again below.
        writer.truncate_after(start_step)
    checkpoint_every = checkpoint_every_steps or steps_per_epoch
    stop_at = total_steps
    if stop_after_steps:
        stop_at = min(total_steps, start_step + stop_after_steps)

    bar = None
    if progress and parallel.is_main_process() and start_step < stop_at:
        bar = tqdm(total=total_steps, initial=start_step, unit="step", desc=desc,
                   dynamic_ncols=True)
    pending: list[tuple[int, Mapping[str, jax.Array]]] = []
    step = start_step
    saved_step = start_step if checkpointer is not None else None
    log_time = time.time()
    try:
        with _deferred_signals() as caught:
            while step < stop_at:
                batch = parallel.shard_batch(next(batches), mesh)
                state, metrics = step_fn(state, batch)
                step += 1
                pending.append((step, metrics))
                if bar is not None:
                    bar.update(1)

                if step % log_every_steps == 0 or step == stop_at:
                    fetched = check_finite(pending)
                    pending = []
                    elapsed, log_time = time.time() - log_time, time.time()
                    mean = _mean_record(fetched, steps_per_epoch, global_batch_size, elapsed)
                    if writer is not None:
                        writer.write(fetched[-1][0], mean)
                    if bar is not None:
                        bar.set_postfix(postfix(mean))

                if checkpointer is not None and (step % checkpoint_every == 0
                                                 or step == stop_at or "signum" in caught):
                    check_finite(pending)  # never checkpoint a non-finite state
                    checkpointer.save(step, state, batches.get_state())
                    saved_step = step
                if "signum" in caught:
                    break
                end_of_epoch = step % steps_per_epoch == 0
                if (eval_fn is not None and eval_every_epochs and end_of_epoch
                        and (step // steps_per_epoch) % eval_every_epochs == 0
                        and step < total_steps):
                    record = eval_fn(state, step)
                    if writer is not None:
                        writer.write(step, {f"eval/{k}": v for k, v in record.items()})
    finally:
        if bar is not None:
            bar.close()
        if checkpointer is not None:
            # A save in flight must land before the process ends, whatever
            # ended the loop (a NaN, a signal, an exception).
            checkpointer.wait()
    if "signum" in caught:
        signum = caught["signum"]
        name = signal.Signals(signum).name
        where = f"saved at step {saved_step}" if saved_step is not None else "not saved"
        raise TrainingInterrupted(
            f"{name} received: training stopped at step {step}, {where}; run the same "
            "command again to resume", signum)
    return state, step


def _mean_record(fetched: list[tuple[int, dict]], steps_per_epoch: int, batch_size: int,
                 elapsed: float) -> dict:
    last_step, last = fetched[-1]
    mean = {k: float(np.mean([m[k] for _, m in fetched])) for k in last
            if k != "params_finite"}
    mean["epoch"] = last_step / steps_per_epoch
    mean["images_per_sec"] = len(fetched) * batch_size / max(elapsed, 1e-9)
    return mean
