"""Small shared pieces of the LADDER training loops.

* ``ModelVars``: one network's ``params`` and ``batch_stats`` (``{}`` when the
  network has no BatchNorm), a pytree that jit, sharding and orbax handle.
* ``apply_model``: Linen apply in train or eval mode that also returns the
  updated batch statistics.
* ``epoch_permutation``: the shuffling order of one epoch, a pure function of
  (seed, epoch), so a run resumed at an epoch boundary sees the same batches.
* ``open_checkpointer``: an ``advcore.checkpoint.Checkpointer`` whose stale
  checkpoints (saved under another config) are discarded instead of refused,
  because the workdir markers already decided that this unit must be redone.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import numpy as np
from flax import struct

from advcore import checkpoint as ckpt_lib

log = logging.getLogger("ladder_jax")


@struct.dataclass
class ModelVars:
    """One network's variables; ``batch_stats`` is ``{}`` for BN-free networks."""

    params: Any
    batch_stats: Any

    @classmethod
    def from_variables(cls, variables: Mapping[str, Any]) -> "ModelVars":
        return cls(params=variables["params"], batch_stats=variables.get("batch_stats", {}))

    def as_variables(self) -> dict:
        v = {"params": self.params}
        if self.batch_stats:
            v["batch_stats"] = self.batch_stats
        return v


def apply_model(
    module: nn.Module,
    mv: ModelVars,
    x: jax.Array,
    *,
    train: bool,
    dropout_key: Optional[jax.Array] = None,
    params: Any = None,
    method: Any = None,
) -> tuple[jax.Array, Any]:
    """``module.apply`` returning ``(output, new_batch_stats)``.

    ``params`` overrides ``mv.params`` (used inside ``jax.grad``). In eval
    mode the statistics are returned unchanged.
    """
    variables = {"params": mv.params if params is None else params}
    if mv.batch_stats:
        variables["batch_stats"] = mv.batch_stats
    kwargs = {} if method is None else {"method": method}
    if not train:
        return module.apply(variables, x, train=False, **kwargs), mv.batch_stats
    rngs = {} if dropout_key is None else {"dropout": dropout_key}
    out, updates = module.apply(
        variables, x, train=True, mutable=["batch_stats"], rngs=rngs, **kwargs
    )
    return out, updates.get("batch_stats", mv.batch_stats) if mv.batch_stats else {}


def run_init(fn: Any, *args: Any) -> Any:
    """Runs a one-off initialisation function as one compiled program.

    On CPU it is compiled without XLA backend optimisation: XLA:CPU spends
    seconds per parameter tensor optimising unrolled threefry code for a
    program that runs once in milliseconds (the same trick as
    ``advcore.models.init_variables``).
    """
    jitted = jax.jit(fn)
    traced = any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(args))
    if traced or jax.default_backend() != "cpu":
        return jitted(*args)
    compiled = jitted.lower(*args).compile(
        compiler_options={"xla_backend_optimization_level": 0})
    return compiled(*args)


def epoch_permutation(n: int, seed: int, epoch: int, stream: int = 0) -> np.ndarray:
    """A permutation of ``range(n)`` determined by (seed, stream, epoch)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(stream), int(epoch)]))
    return rng.permutation(n)


def check_batch_divisible(name: str, batch_size: int) -> None:
    devices = jax.device_count()
    if batch_size % devices:
        raise ValueError(
            f"{name} must be divisible by the number of devices ({devices}), got {batch_size}"
        )


def open_checkpointer(
    directory: str, config: Mapping[str, Any], max_to_keep: int = 2
) -> ckpt_lib.Checkpointer:
    """A Checkpointer for ``directory``; a checkpoint from another config is wiped.

    The config passed here carries the unit fingerprint, so a checkpoint
    whose fingerprint differs belongs to superseded work.
    """
    ckpt = ckpt_lib.Checkpointer(directory, config, max_to_keep=max_to_keep)
    step = ckpt.latest_step()
    if step is not None:
        try:
            meta = ckpt.read_meta(step)
            stale = meta.get("config_fingerprint") != ckpt.fingerprint
        except ckpt_lib.CheckpointCorruptError:
            stale = True
        if stale:
            log.warning("discarding checkpoints in %s saved under another config", directory)
            ckpt.close()
            shutil.rmtree(directory, ignore_errors=True)
            os.makedirs(directory, exist_ok=True)
            ckpt = ckpt_lib.Checkpointer(directory, config, max_to_keep=max_to_keep)
    return ckpt


def restore_latest(ckpt: ckpt_lib.Checkpointer, target: Any) -> tuple[Any, Optional[int]]:
    """``(state, step)`` from the newest checkpoint, or ``(target, None)``."""
    restored = ckpt.restore_latest(target)
    if restored is None:
        return target, None
    state, meta = restored
    return state, int(meta["step"])


def host(tree: Any) -> Any:
    """Device arrays -> host numpy (for saving)."""
    return jax.tree.map(np.asarray, jax.device_get(tree))
