"""AutoAttack: the robust-only cascade of APGD-CE, APGD-T, FAB-T and Square (SPEC 4.5).

Reference: F. Croce and M. Hein, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", ICML 2020
(arXiv:2003.01690); semantics follow ``fra31/auto-attack``
``autoattack/autoattack.py`` (``run_standard_evaluation``, ``set_version``).

Cascade: the clean prediction marks the robust points; each attack then runs
only on the points still robust (a boolean mask, so shapes never change) and
a point is broken when the model misclassifies the attack's output; the
first attack that breaks a point sets its ``x_adv`` (per-point worst case);
points never broken are returned as ``x``. Robust accuracy after each stage
is reported like upstream's log.

Versions (L-inf; attack settings as upstream ``set_version``):

* ``standard``: APGD-CE (1 restart), APGD-T (9 targets), FAB-T (9 targets),
  Square (5000 queries); 100 iterations each.
* ``plus``: APGD-CE (5 restarts), APGD-DLR (5), FAB (5), Square (5000),
  APGD-T (9 targets), FAB-T (9 targets).
* ``rand``: APGD-CE and APGD-DLR, 1 restart, EOT over 20 gradient calls
  (for randomised models, ``stochastic=True``: ``logits_fn(x, key)``).

Speed: upstream attacks only the still-robust subset; with fixed shapes that
would mean paying for the whole batch at every stage. ``compact=n`` sorts the
robust points to the front and runs each stage on the smallest of ``n``
evenly spaced batch buckets (``ceil(B k / n)``, ``k = 1..n``) that holds them,
chosen by ``lax.switch`` at run time. That keeps the cascade jit-able, at the
price of compiling each stage ``n`` times; ``compact=1`` (no compaction)
compiles fastest. Even spacing suits robust models (30-60% of the points
survive the first stage); e.g. ``B = 64``, ``n = 4`` gives 16/32/48/64.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

from advcore.attacks import _validation as val
from advcore.attacks.apgd import (apgd, apgd_targeted, apgd_targeted_with_flags,
                                  apgd_with_flags, as_active, bcast, call_logits,
                                  canonical_norm, check_common)
from advcore.attacks.fab import fab, fab_targeted, fab_targeted_with_flags, fab_with_flags
from advcore.attacks.square import square, square_with_flags

__all__ = ["ATTACK_NAMES", "VERSIONS", "autoattack", "make_autoattack", "version_attacks"]

LogitsFn = Callable[..., jax.Array]

ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSIONS = ("standard", "plus", "rand")

# Upstream ``set_version``: the attack order and the per-attack restarts / EOT.
_VERSION_ATTACKS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
_VERSION_RESTARTS = {"standard": 1, "plus": 5, "rand": 1}
_VERSION_EOT = {"standard": 1, "plus": 1, "rand": 20}


def version_attacks(version: str) -> Tuple[str, ...]:
    """The attacks of an AutoAttack version, in upstream order."""
    val.check_choice("version", version, VERSIONS)
    return _VERSION_ATTACKS[version]


def _bucket_sizes(batch: int, compact: int) -> Tuple[int, ...]:
    """Ascending distinct bucket sizes ``ceil(B k / compact)``, ``k = 1..compact``."""
    return tuple(sorted({max(1, math.ceil(batch * k / compact)) for k in range(1, compact + 1)}))


def _compacted(
    stage: Callable[[jax.Array, jax.Array, jax.Array, jax.Array], Tuple[jax.Array, jax.Array]],
    x: jax.Array, y: jax.Array, key: jax.Array, active: jax.Array, compact: int,
) -> Tuple[jax.Array, jax.Array]:
    """Runs ``stage(x, y, key, active) -> (adv, robust)`` on the smallest
    bucket holding every active point (active points sorted to the front).

    Inactive rows are passed through unchanged with ``robust = True``.
    """
    batch = x.shape[0]
    sizes = _bucket_sizes(batch, compact)
    if len(sizes) == 1:
        return stage(x, y, key, active)
    order = jnp.argsort(~active, stable=True)  # active points first, order kept
    inverse = jnp.argsort(order)
    xs, ys, acts = x[order], y[order], active[order]

    def branch(size):
        def run(operands):
            xs, ys, acts, key = operands
            adv, robust = stage(xs[:size], ys[:size], key, acts[:size])
            if size == batch:
                return adv, robust
            return (jnp.concatenate([adv, xs[size:]], axis=0),
                    jnp.concatenate([robust, jnp.ones((batch - size,), jnp.bool_)], axis=0))
        return run

    n_active = jnp.sum(active.astype(jnp.int32))
    index = jnp.sum((n_active > jnp.asarray(sizes[:-1])).astype(jnp.int32))
    adv, robust = jax.lax.switch(index, [branch(s) for s in sizes], (xs, ys, acts, key))
    return adv[inverse], robust[inverse]


def autoattack(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
    eps: float, norm: str = "linf", version: str = "standard",
    attacks_to_run: Optional[Sequence[str]] = None, return_details: bool = False,
    num_iters: int = 100, n_queries: int = 5000, n_target_classes: int = 9,
    restarts: Optional[int] = None, eot_iters: Optional[int] = None,
    stochastic: bool = False, compact: int = 1, unroll: int = 1,
) -> Union[jax.Array, Tuple[jax.Array, Dict[str, jax.Array]]]:
    """AutoAttack (Croce & Hein 2020) as a pure, jit-able function.

    Args:
      logits_fn: NHWC float images in [0, 1] -> logits ``(B, K)`` (called as
        ``logits_fn(x, key)`` when ``stochastic``).
      x, y: clean images and int labels.
      key: PRNG key; stage ``i`` uses ``fold_in(key, i)``.
      eps: radius (0.031 or 8/255 for CIFAR L-inf; state which).
      norm: ``"linf"``; ``"l2"`` only for the APGD stages (FAB / Square are
        L-inf only here).
      version: ``"standard"``, ``"plus"`` or ``"rand"`` (module docstring).
      attacks_to_run: optional subset / order of ``ATTACK_NAMES``; the
        version still sets restarts and EOT.
      return_details: also return ``{"clean": acc, <attack>: robust acc after
        it, ..., "robust": (B,) bool}`` (upstream's log as arrays; a jitted
        call returns the keys sorted, ``version_attacks`` gives the order).
      num_iters: APGD / FAB iterations (100). n_queries: Square budget (5000).
      n_target_classes: APGD-T / FAB-T targets (9).
      restarts, eot_iters: override the version's APGD-CE/-DLR and FAB
        restarts / EOT (None: the version's; APGD-T and FAB-T always use 1).
      stochastic: whether ``logits_fn`` takes a key (randomised defences).
      compact: number of batch buckets for running each stage on the
        still-robust points only (1: no compaction; module docstring).
      unroll: ``fori_loop`` unroll factor inside APGD / FAB.

    Returns:
      ``x_adv`` (stop-gradient), and the details dict if ``return_details``.
    """
    check_common(x, y, eps)
    norm = canonical_norm(norm)
    val.check_choice("version", version, VERSIONS)
    attacks = tuple(_VERSION_ATTACKS[version] if attacks_to_run is None else attacks_to_run)
    for name in attacks:
        val.check_choice("attacks_to_run entry", name, ATTACK_NAMES)
    if norm != "linf" and any(a in ("fab", "fab-t", "square") for a in attacks):
        raise ValueError(
            f"norm {norm!r} is only supported for the APGD stages; got attacks {attacks}")
    val.check_int("compact", compact, min_value=1)
    restarts = _VERSION_RESTARTS[version] if restarts is None else restarts
    eot_iters = _VERSION_EOT[version] if eot_iters is None else eot_iters
    val.check_int("restarts", restarts, min_value=1)
    val.check_int("eot_iters", eot_iters, min_value=1)

    # Deterministic models are called without a key by the FAB / Square stages.
    if stochastic and any(a in ("fab", "fab-t", "square") for a in attacks):
        raise ValueError("stochastic=True is only supported with APGD stages (version 'rand')")

    common = dict(eps=eps, norm=norm)
    apgd_kw = dict(common, num_iters=num_iters, eot_iters=eot_iters, stochastic=stochastic,
                   unroll=unroll)
    stages: Dict[str, Callable] = {
        "apgd-ce": lambda xs, ys, k, a: apgd_with_flags(
            logits_fn, xs, ys, k, loss="ce", restarts=restarts, active=a, **apgd_kw),
        "apgd-dlr": lambda xs, ys, k, a: apgd_with_flags(
            logits_fn, xs, ys, k, loss="dlr", restarts=restarts, active=a, **apgd_kw),
        "apgd-t": lambda xs, ys, k, a: apgd_targeted_with_flags(
            logits_fn, xs, ys, k, n_target_classes=n_target_classes, restarts=1, active=a,
            **apgd_kw),
        "fab": lambda xs, ys, k, a: fab_with_flags(
            logits_fn, xs, ys, k, num_iters=num_iters, restarts=restarts, active=a,
            unroll=unroll, **common),
        "fab-t": lambda xs, ys, k, a: fab_targeted_with_flags(
            logits_fn, xs, ys, k, num_iters=num_iters, n_target_classes=n_target_classes,
            restarts=1, active=a, unroll=unroll, **common),
        "square": lambda xs, ys, k, a: square_with_flags(
            logits_fn, xs, ys, k, n_queries=n_queries, active=a, **common),
    }

    k_clean, k_stages = jax.random.split(key)
    robust = jnp.argmax(call_logits(logits_fn, x, k_clean, stochastic), axis=-1) == y
    details: Dict[str, jax.Array] = {"clean": jnp.mean(robust.astype(jnp.float32))}
    x_adv = x
    for i, name in enumerate(attacks):
        k_stage, k_eval = jax.random.split(jax.random.fold_in(k_stages, i))
        adv_curr, _ = _compacted(stages[name], x, y, k_stage, robust, compact)
        # Upstream re-evaluates the returned points to decide who is broken.
        pred = jnp.argmax(call_logits(logits_fn, adv_curr, k_eval, stochastic), axis=-1)
        broken = robust & (pred != y)
        x_adv = jnp.where(bcast(broken, x), adv_curr, x_adv)
        robust = robust & ~broken
        details[name] = jnp.mean(robust.astype(jnp.float32))
    x_adv = jax.lax.stop_gradient(x_adv)
    if return_details:
        details["robust"] = robust
        return x_adv, details
    return x_adv


# --------------------------------------------------------------------------
# Registry entry point.
# --------------------------------------------------------------------------

_DEFAULTS = {"eps": 0.031, "norm": "linf"}

_FACTORIES: Dict[str, Tuple[Callable, Dict[str, Any]]] = {
    # compact=4: each stage runs on the smallest of 4 buckets holding the
    # still-robust points (bench: 64 SmallCNN images, 2 CPU devices, 96 s at
    # compact=2 vs 70 s at 4 vs 57 s at 8, compile 10 / 22 / 42 s).
    "aa_standard": (autoattack, {"version": "standard", "compact": 4}),
    "aa_plus": (autoattack, {"version": "plus", "compact": 4}),
    "aa_rand": (autoattack, {"version": "rand", "compact": 4}),
    "apgd_ce": (apgd, {"loss": "ce"}),
    "apgd_dlr": (apgd, {"loss": "dlr"}),
    "apgd_t": (apgd_targeted, {}),
    "fab": (fab, {}),
    "fab_t": (fab_targeted, {}),
    "square": (square, {}),
}

MAKE_NAMES = tuple(_FACTORIES)


def make_autoattack(name: str, **overrides: Any) -> Callable[..., jax.Array]:
    """Builds ``attack(logits_fn, x, y, key) -> x_adv`` from a registry name.

    Names: ``aa_standard``, ``aa_plus``, ``aa_rand``, ``apgd_ce``,
    ``apgd_dlr``, ``apgd_t``, ``fab``, ``fab_t``, ``square`` (hyphens are
    accepted for underscores). Defaults: ``eps=0.031``, ``norm="linf"`` plus
    the function's own defaults; ``overrides`` are keyword arguments of the
    underlying function (``autoattack``, ``apgd``, ...), checked by name.
    The registry's generic keywords are accepted too (``advcore.attacks.
    registry``): ``step_size`` is ignored (the attacks are step-size free) and
    ``num_steps`` sets ``num_iters`` (``n_queries`` for ``square``).
    Hyper-parameters are bound as Python values, so the returned callable can
    be closed over and jitted.
    """
    key_name = name.replace("-", "_") if isinstance(name, str) else name
    if key_name not in _FACTORIES:
        raise ValueError(f"unknown AutoAttack attack name {name!r}; valid names: {MAKE_NAMES}")
    fn, fixed = _FACTORIES[key_name]
    overrides = dict(overrides)
    overrides.pop("step_size", None)
    if "num_steps" in overrides:
        target = "n_queries" if key_name == "square" else "num_iters"
        if target in overrides:
            raise ValueError(f"give either num_steps or {target}, not both")
        overrides[target] = overrides.pop("num_steps")
    allowed = {p for p in inspect.signature(fn).parameters
               if p not in ("logits_fn", "x", "y", "key", "return_details")}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for {key_name!r}; valid options: {sorted(allowed)}")
    kwargs = {**_DEFAULTS, **fixed, **overrides}
    attack = functools.partial(fn, **kwargs)

    def run(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array) -> jax.Array:
        return attack(logits_fn, x, y, key)

    run.__name__ = key_name
    run.__doc__ = f"{key_name}: {fn.__name__} with {kwargs}"
    # The registry's Attack interface: stored attack sets record these.
    run.name = key_name
    run.params = dict(kwargs)
    # Data-dependent cost (compaction, early exits): advcore.evaluate runs it
    # per device shard instead of as one partitioned program.
    run.shard_local = True
    return run
