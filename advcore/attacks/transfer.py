"""Black-box transfer attacks (LBGAT §4.2; docs/attacks.md#transfer).

Adversarial examples are crafted white-box on a *source* model and scored on
a *target* model that the attack never queries. Both ``logits_fn`` arguments
must call their model in eval mode.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from advcore.attacks._validation import check_input_range

LogitsFn = Callable[[jax.Array], jax.Array]
Attack = Callable[[LogitsFn, jax.Array, jax.Array, jax.Array], jax.Array]


def _resolve(attack: Union[str, Attack]) -> Attack:
    if isinstance(attack, str):
        from advcore.attacks.registry import make_attack

        return make_attack(attack)
    if not callable(attack):
        raise ValueError(f"attack must be a registry name or a callable, got {attack!r}")
    return attack


def transfer_attack(
    source_logits_fn: LogitsFn,
    target_logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    attack: Union[str, Attack] = "pgd20",
) -> tuple[jax.Array, jax.Array]:
    """Crafts ``attack`` on the source model and classifies with the target.

    Args:
      source_logits_fn / target_logits_fn: ``(B, ...) -> (B, K)`` logits.
      x, y: clean inputs (in the attack's bounds) and true labels.
      key: the attack's PRNG key.
      attack: ``attack(logits_fn, x, y, key) -> x_adv`` or a ``make_attack``
        name (default ``"pgd20"``: LBGAT's transfer protocol).

    Returns:
      ``(x_adv, target_pred)``: the transferred examples (crafted on the
      source only) and the target model's int predictions on them. Pure and
      jit-able (``attack`` is a Python value).
    """
    x_adv = _resolve(attack)(source_logits_fn, x, y, key)
    target_pred = jnp.argmax(target_logits_fn(x_adv), axis=-1)
    return x_adv, target_pred


def evaluate_transfer(
    source_logits_fn: LogitsFn,
    target_logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    attack: Union[str, Attack] = "pgd20",
    *,
    batch_size: Optional[int] = None,
) -> dict[str, float]:
    """Accuracies (fractions in [0, 1]) of a transfer attack over ``(x, y)``.

    Returns ``{'target_clean', 'target_transfer', 'source_clean',
    'source_whitebox', 'n'}``: the target's accuracy on clean and transferred
    inputs, and the source's own clean and white-box accuracy (how strong the
    examples were where they were crafted). Runs one jitted program per
    batch shape; batch ``i`` uses ``fold_in(key, i)``. ``x`` must lie in the
    attack's ``bounds`` (default [0, 1]); it is checked on the host first,
    since the jitted attack cannot check a traced batch.
    """
    attack = _resolve(attack)
    x = np.asarray(x)
    y = np.asarray(y)
    n = len(y)
    if n == 0:
        raise ValueError("evaluate_transfer needs at least one example, got 0")
    # The attack runs jitted (traced x): check the whole set here, on the host.
    check_input_range(x, getattr(attack, "params", {}).get("bounds", (0.0, 1.0)))
    if batch_size is None:
        batch_size = n
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    @jax.jit
    def run(xb, yb, kb):
        x_adv, tgt_adv = transfer_attack(source_logits_fn, target_logits_fn, xb, yb, kb, attack)
        return jnp.stack([
            jnp.argmax(target_logits_fn(xb), -1) == yb,
            tgt_adv == yb,
            jnp.argmax(source_logits_fn(xb), -1) == yb,
            jnp.argmax(source_logits_fn(x_adv), -1) == yb,
        ]).sum(axis=1)

    counts = np.zeros(4, np.int64)
    for i, start in enumerate(range(0, n, batch_size)):
        stop = min(start + batch_size, n)
        counts += np.asarray(run(x[start:stop], y[start:stop], jax.random.fold_in(key, i)))
    names = ("target_clean", "target_transfer", "source_clean", "source_whitebox")
    result = {k: float(c) / n for k, c in zip(names, counts)}
    result["n"] = n
    return result
