"""PyTorch-equivalent SGD and per-epoch piecewise-constant learning rates.

PyTorch's ``SGD(weight_decay=wd, momentum=m)`` adds ``wd·θ`` to the gradient
*before* the momentum buffer (coupled decay) and uses ``buf = m·buf + g``
without dampening; ``optax.chain(add_decayed_weights, sgd(momentum))`` is the
same update. The papers set the LR once per epoch, so the schedule is a
function of the epoch index ``step // steps_per_epoch``.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import optax


def epoch_piecewise_schedule(
    base_lr: float,
    steps_per_epoch: int,
    decay_epochs: Sequence[int] = (),
    decay_factor: float = 0.1,
    warmup_epochs: int = 0,
    warmup_lr: float = 0.0,
) -> optax.Schedule:
    """LR for 1-based epoch ``e = step // steps_per_epoch + 1``.

    * ``e <= warmup_epochs``: ``warmup_lr`` (LBGAT's code: 0.02 in epoch 1).
    * otherwise ``base_lr · decay_factor**k`` with ``k`` the number of
      ``decay_epochs`` entries ``b`` with ``e > b``. LBGAT uses
      ``decay_epochs=(75, 90)``: epochs 76-90 run at 0.01 and 91-100 at 0.001.
      TRADES' "×0.1 at epoch ≥ 75" is ``decay_epochs=(74, 89, 99)``.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if base_lr < 0 or warmup_lr < 0:
        raise ValueError(f"learning rates must be >= 0, got {base_lr}, {warmup_lr}")
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    boundaries = jnp.asarray(sorted(decay_epochs) or [10**9], jnp.int32)
    has_decay = bool(decay_epochs)

    def schedule(step):
        epoch = jnp.asarray(step, jnp.int32) // steps_per_epoch + 1
        num_decays = jnp.sum(epoch > boundaries) if has_decay else 0
        lr = base_lr * jnp.power(decay_factor, num_decays)
        return jnp.where(epoch <= warmup_epochs, warmup_lr, lr).astype(jnp.float32)

    return schedule


def torch_sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """``torch.optim.SGD`` semantics: coupled weight decay, undampened momentum."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    return optax.chain(
        optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
        optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov),
    )
