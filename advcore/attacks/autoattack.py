"""AutoAttack: the robust-only cascade of APGD, FAB and Square for L-inf, L2 and L1.

Reference: F. Croce and M. Hein, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", ICML 2020
(arXiv:2003.01690), and for L1 "Mind the box: l1-APGD for sparse adversarial
attacks on image classifiers", ICML 2021; semantics follow ``fra31/auto-attack``
``autoattack/autoattack.py`` (``run_standard_evaluation`` and the version
settings of ``_set_version``).

Cascade: the clean prediction marks the robust points; each attack then runs
only on the points still robust (a boolean mask, so shapes never change) and
a point is broken when the model misclassifies the attack's output; the
first attack that breaks a point sets its ``x_adv`` (per-point worst case);
points never broken are returned as ``x``. Robust accuracy after each stage
is returned with ``return_details``; the host-level driver
:func:`advcore.attacks.autoattack_eval.run_autoattack` runs the same stages
batch by batch, logs the reference's per-stage lines with timings and can
resume an interrupted evaluation.

Versions (the reference's settings; 100 iterations for APGD and FAB, Square
with 5000 queries and ``p_init`` 0.8; "targets" are the classes ranked 2, 3,
... by clean logit, one run each):

======== ========= ==================================== =========================================
version  norm      stages, in order                     settings
======== ========= ==================================== =========================================
standard linf, l2  APGD-CE, APGD-T, FAB-T, Square       APGD-CE 1 restart; APGD-T 9 targets;
                                                        FAB-T 9 targets; Square 1 run
standard l1        APGD-CE, APGD-T, FAB-T, Square       APGD-CE 5 restarts and APGD-T 5 targets,
                                                        both with ``use_largereps`` (each run:
                                                        radii 3, 2, 1 x eps for 30 + 30 + 40
                                                        iterations); FAB-T (L1) 9 targets;
                                                        Square (L1) 1 run
plus     linf, l2, APGD-CE, APGD-DLR, FAB, Square,      APGD-CE / APGD-DLR 5 restarts; FAB 5
         l1        APGD-T, FAB-T                        restarts; APGD-T 9 targets; FAB-T 9
                                                        targets; no large reps for L1
rand     linf, l2, APGD-CE, APGD-DLR                    1 restart each, EOT over 20 gradients
         l1                                             (randomised models, ``stochastic=True``)
======== ========= ==================================== =========================================

Every norm x version cell above is one the reference defines. 'plus' with
L1 runs, but the reference flags it ("please check": the version was
designed for L-inf / L2); it is run exactly as the reference runs it, with
the same warning. Anything else is refused when the attack is built
(:func:`check_config`, called by :func:`autoattack` and
:func:`make_autoattack`): an unknown norm or version, ``use_largereps`` with
L-inf / L2 (the reference asserts L1), FAB / Square stages with
``stochastic=True`` (the reference's 'rand' runs only APGD on randomised
models). APGD-T and FAB-T always use 1 restart per target.

Reference quirks kept: in 'rand' the EOT setting reaches APGD-CE / -DLR only
(APGD-T keeps 1 unless ``eot_iters`` is given); FAB untargeted keeps the
constructor's 5 restarts outside 'standard' (where it is 1).

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

import dataclasses
import functools
import inspect
import math
import warnings
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

from advcore.attacks import _validation as val
from advcore.attacks.apgd import (apgd, apgd_targeted, apgd_targeted_with_flags,
                                  apgd_with_flags, call_logits, check_common, check_largereps)
from advcore.attacks.fab import fab, fab_targeted, fab_targeted_with_flags, fab_with_flags
from advcore.attacks.norms import ATTACK_NORMS, bcast
from advcore.attacks.square import square, square_with_flags

__all__ = ["ATTACK_NAMES", "NORMS", "VERSIONS", "AutoAttackConfig", "autoattack",
           "check_config", "make_autoattack", "make_stage", "version_attacks"]

LogitsFn = Callable[..., jax.Array]
StageFn = Callable[[jax.Array, jax.Array, jax.Array, Optional[jax.Array]],
                   Tuple[jax.Array, jax.Array]]

ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSIONS = ("standard", "plus", "rand")
NORMS = ATTACK_NORMS
_QUERY_ONLY_OR_FAB = ("fab", "fab-t", "square")

_VERSION_ATTACKS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}


@dataclasses.dataclass(frozen=True)
class AutoAttackConfig:
    """The resolved settings of one AutoAttack configuration (hashable).

    ``attacks`` in cascade order; ``apgd_*`` apply to APGD-CE / APGD-DLR,
    ``apgd_t_*`` to APGD-T, ``fab_restarts`` to untargeted FAB (FAB-T uses 1
    per target), ``fab_targets`` to FAB-T.
    """

    version: str
    norm: str
    attacks: Tuple[str, ...]
    num_iters: int = 100
    n_queries: int = 5000
    apgd_restarts: int = 1
    apgd_eot_iters: int = 1
    apgd_largereps: bool = False
    apgd_t_targets: int = 9
    apgd_t_eot_iters: int = 1
    apgd_t_largereps: bool = False
    fab_restarts: int = 1
    fab_targets: int = 9

    def as_dict(self) -> Dict[str, Any]:
        """JSON-friendly form (state files, logs)."""
        out = dataclasses.asdict(self)
        out["attacks"] = list(self.attacks)
        return out


def _reference_settings(version: str, norm: str) -> Dict[str, Any]:
    """The reference's ``AutoAttack.__init__`` defaults plus ``_set_version``."""
    # Constructor defaults: APGD 5 restarts, FAB 5 restarts / 9 targets,
    # APGD-T 1 restart / 9 targets, EOT 1, no large reps.
    settings: Dict[str, Any] = dict(apgd_restarts=5, apgd_eot_iters=1, apgd_largereps=False,
                                    apgd_t_targets=9, apgd_t_eot_iters=1,
                                    apgd_t_largereps=False, fab_restarts=5, fab_targets=9)
    if version == "standard":
        if norm == "l1":
            settings.update(apgd_largereps=True, apgd_t_largereps=True, apgd_restarts=5,
                            apgd_t_targets=5)
        else:
            settings.update(apgd_restarts=1, apgd_t_targets=9)
        settings.update(fab_restarts=1, fab_targets=9)
    elif version == "plus":
        settings.update(apgd_restarts=5, fab_restarts=5, fab_targets=9, apgd_t_targets=9)
    else:  # rand
        settings.update(apgd_restarts=1, apgd_eot_iters=20)
    return settings


def _combinations() -> str:
    return ", ".join(f"{n} x {v}" for v in VERSIONS for n in NORMS)


def check_config(
    *, norm: str, version: str, attacks_to_run: Optional[Sequence[str]] = None,
    num_iters: int = 100, n_queries: int = 5000, n_target_classes: Optional[int] = None,
    restarts: Optional[int] = None, eot_iters: Optional[int] = None,
    use_largereps: Optional[bool] = None, stochastic: bool = False,
    warn: bool = True,
) -> AutoAttackConfig:
    """Validates an AutoAttack configuration and resolves it (build time).

    Raises ``ValueError`` for a norm x version / stage combination the
    reference does not define, naming the norm, the version or stage and
    the valid combinations (module docstring). ``n_target_classes``,
    ``restarts``, ``eot_iters`` and ``use_largereps`` override the
    version's settings (None: the reference's): targets for APGD-T and FAB-T,
    restarts for APGD-CE / -DLR and FAB, EOT for every APGD stage, large
    reps for every APGD stage. ``warn``: emit the reference's warning for
    'plus' with L1.
    """
    if not isinstance(norm, str) or norm.lower() not in NORMS:
        raise ValueError(
            f"norm {norm!r} is not defined for AutoAttack version {version!r}; valid "
            f"norm x version combinations: {_combinations()}")
    norm = norm.lower()
    if version not in VERSIONS:
        raise ValueError(
            f"version {version!r} is not defined for AutoAttack with norm {norm!r}; valid "
            f"norm x version combinations: {_combinations()}")
    attacks = tuple(_VERSION_ATTACKS[version] if attacks_to_run is None else attacks_to_run)
    if not attacks:
        raise ValueError(f"attacks_to_run must name at least one of {ATTACK_NAMES}, got ()")
    for name in attacks:
        val.check_choice("attacks_to_run entry", name, ATTACK_NAMES)
    if len(set(attacks)) != len(attacks):
        raise ValueError(f"attacks_to_run must not repeat an attack, got {attacks}")
    val.check_int("num_iters", num_iters, min_value=1)
    val.check_int("n_queries", n_queries, min_value=1)
    settings = _reference_settings(version, norm)
    if n_target_classes is not None:
        val.check_int("n_target_classes", n_target_classes, min_value=1)
        settings.update(apgd_t_targets=n_target_classes, fab_targets=n_target_classes)
    if restarts is not None:
        val.check_int("restarts", restarts, min_value=1)
        settings.update(apgd_restarts=restarts, fab_restarts=restarts)
    if eot_iters is not None:
        val.check_int("eot_iters", eot_iters, min_value=1)
        settings.update(apgd_eot_iters=eot_iters, apgd_t_eot_iters=eot_iters)
    if use_largereps is not None:
        if not isinstance(use_largereps, bool):
            raise ValueError(f"use_largereps must be None, True or False, got {use_largereps!r}")
        if use_largereps and norm != "l1":
            raise ValueError(
                f"use_largereps=True is not defined for norm {norm!r} (AutoAttack version "
                f"{version!r}): the reference's decreasing-eps APGD runs with norm 'l1' only")
        settings.update(apgd_largereps=use_largereps, apgd_t_largereps=use_largereps)
    for flag in ("apgd_largereps", "apgd_t_largereps"):
        check_largereps(norm, settings[flag], num_iters)
    if stochastic:
        if not isinstance(stochastic, bool):
            raise ValueError(f"stochastic must be True or False, got {stochastic!r}")
        bad = [a for a in attacks if a in _QUERY_ONLY_OR_FAB]
        if bad:
            raise ValueError(
                f"stage(s) {bad} with stochastic=True are not defined (norm {norm!r}, version "
                f"{version!r}): randomised models are evaluated with APGD stages only, as the "
                "reference's 'rand' version (valid stages: apgd-ce, apgd-dlr, apgd-t)")
    if warn and version == "plus" and norm == "l1":
        warnings.warn('AutoAttack "plus" version is used with L1 norm: please check (the '
                      "reference designed it for L-inf / L2 and warns the same)", stacklevel=3)
    return AutoAttackConfig(version=version, norm=norm, attacks=attacks, num_iters=num_iters,
                            n_queries=n_queries, **settings)


def version_attacks(version: str) -> Tuple[str, ...]:
    """The attacks of an AutoAttack version, in upstream order (every norm)."""
    val.check_choice("version", version, VERSIONS)
    return _VERSION_ATTACKS[version]


def make_stage(name: str, logits_fn: LogitsFn, config: AutoAttackConfig, *, eps: float,
               stochastic: bool = False, unroll: int = 1) -> StageFn:
    """One cascade stage as ``stage(x, y, key, active) -> (x_adv, robust)``.

    ``robust[i]`` is False where point ``i`` was active and broken. Used by
    :func:`autoattack` and by the host-level driver
    (``advcore.attacks.autoattack_eval``), so both run identical stages.
    """
    c, norm = config, config.norm
    apgd_kw = dict(eps=eps, norm=norm, num_iters=c.num_iters, stochastic=stochastic,
                   unroll=unroll)
    if name == "apgd-ce" or name == "apgd-dlr":
        loss = "ce" if name == "apgd-ce" else "dlr"
        return lambda xs, ys, k, a: apgd_with_flags(
            logits_fn, xs, ys, k, loss=loss, restarts=c.apgd_restarts, active=a,
            eot_iters=c.apgd_eot_iters, use_largereps=c.apgd_largereps, **apgd_kw)
    if name == "apgd-t":
        return lambda xs, ys, k, a: apgd_targeted_with_flags(
            logits_fn, xs, ys, k, n_target_classes=c.apgd_t_targets, restarts=1, active=a,
            eot_iters=c.apgd_t_eot_iters, use_largereps=c.apgd_t_largereps, **apgd_kw)
    if name == "fab":
        return lambda xs, ys, k, a: fab_with_flags(
            logits_fn, xs, ys, k, eps=eps, norm=norm, num_iters=c.num_iters,
            restarts=c.fab_restarts, active=a, unroll=unroll)
    if name == "fab-t":
        return lambda xs, ys, k, a: fab_targeted_with_flags(
            logits_fn, xs, ys, k, eps=eps, norm=norm, num_iters=c.num_iters,
            n_target_classes=c.fab_targets, restarts=1, active=a, unroll=unroll)
    if name == "square":
        return lambda xs, ys, k, a: square_with_flags(
            logits_fn, xs, ys, k, eps=eps, norm=norm, n_queries=c.n_queries, active=a)
    raise ValueError(f"stage must be one of {ATTACK_NAMES}, got {name!r}")


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
    num_iters: int = 100, n_queries: int = 5000, n_target_classes: Optional[int] = None,
    restarts: Optional[int] = None, eot_iters: Optional[int] = None,
    use_largereps: Optional[bool] = None, stochastic: bool = False, compact: int = 1,
    unroll: int = 1,
) -> Union[jax.Array, Tuple[jax.Array, Dict[str, jax.Array]]]:
    """AutoAttack (Croce & Hein 2020) as a pure, jit-able function.

    Args:
      logits_fn: NHWC float images in [0, 1] -> logits ``(B, K)`` (called as
        ``logits_fn(x, key)`` when ``stochastic``).
      x, y: clean images and int labels.
      key: PRNG key; stage ``i`` uses ``fold_in(key, i)``.
      eps: radius (0.031 or 8/255 for CIFAR L-inf; state which).
      norm: ``"linf"``, ``"l2"`` or ``"l1"`` (every version; module docstring).
      version: ``"standard"``, ``"plus"`` or ``"rand"`` (module docstring).
      attacks_to_run: optional subset / order of ``ATTACK_NAMES``; the
        version still sets restarts, targets, EOT and large reps.
      return_details: also return ``{"clean": acc, <attack>: robust acc after
        it, ..., "robust": (B,) bool}`` (upstream's log as arrays; a jitted
        call returns the keys sorted, ``version_attacks`` gives the order).
      num_iters: APGD / FAB iterations (100). n_queries: Square budget (5000).
      n_target_classes: APGD-T and FAB-T targets (None: the version's, 9;
        5 for APGD-T in L1 'standard').
      restarts, eot_iters: override the version's APGD-CE/-DLR and FAB
        restarts / every APGD stage's EOT (None: the version's; APGD-T and
        FAB-T always use 1 restart per target).
      use_largereps: override the version's APGD large-reps schedule (None:
        on for L1 'standard' only; True needs ``norm="l1"``).
      stochastic: whether ``logits_fn`` takes a key (randomised defences).
      compact: number of batch buckets for running each stage on the
        still-robust points only (1: no compaction; module docstring).
      unroll: ``fori_loop`` unroll factor inside APGD / FAB.

    Returns:
      ``x_adv`` (stop-gradient), and the details dict if ``return_details``.
    """
    check_common(x, y, eps)
    config = check_config(norm=norm, version=version, attacks_to_run=attacks_to_run,
                          num_iters=num_iters, n_queries=n_queries,
                          n_target_classes=n_target_classes, restarts=restarts,
                          eot_iters=eot_iters, use_largereps=use_largereps,
                          stochastic=stochastic)
    val.check_int("compact", compact, min_value=1)
    stages = {name: make_stage(name, logits_fn, config, eps=eps, stochastic=stochastic,
                               unroll=unroll) for name in config.attacks}

    k_clean, k_stages = jax.random.split(key)
    robust = jnp.argmax(call_logits(logits_fn, x, k_clean, stochastic), axis=-1) == y
    details: Dict[str, jax.Array] = {"clean": jnp.mean(robust.astype(jnp.float32))}
    x_adv = x
    for i, name in enumerate(config.attacks):
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


def _check_at_build(name: str, fn: Callable, kwargs: Dict[str, Any]) -> None:
    """The argument checks that do not need the data, run when the attack is
    built: norm x version / stage combinations, counts, flags."""
    val.check_number("eps", kwargs["eps"], min_value=0.0)
    if fn is autoattack:
        params = inspect.signature(autoattack).parameters
        get = lambda k: kwargs.get(k, params[k].default)  # noqa: E731
        check_config(norm=get("norm"), version=get("version"),
                     attacks_to_run=get("attacks_to_run"), num_iters=get("num_iters"),
                     n_queries=get("n_queries"), n_target_classes=get("n_target_classes"),
                     restarts=get("restarts"), eot_iters=get("eot_iters"),
                     use_largereps=get("use_largereps"), stochastic=get("stochastic"))
        val.check_int("compact", get("compact"), min_value=1)
        return
    norm = kwargs.get("norm", "linf")
    if not isinstance(norm, str) or norm.lower() not in NORMS:
        raise ValueError(f"norm {norm!r} is not defined for AutoAttack stage {name!r}; "
                         f"valid norms: {NORMS}")
    if "use_largereps" in kwargs:
        if kwargs["use_largereps"] and norm.lower() != "l1":
            raise ValueError(f"use_largereps=True is not defined for norm {norm!r} (stage "
                             f"{name!r}): the reference's decreasing-eps APGD is L1 only")


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
    be closed over and jitted. Arguments that do not depend on the data are
    checked here, at build time: a norm x version or norm x stage
    combination the reference does not define raises ``ValueError``
    (:func:`check_config`).
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
    _check_at_build(key_name, fn, kwargs)
    attack = functools.partial(fn, **kwargs)

    def run(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array) -> jax.Array:
        return attack(logits_fn, x, y, key)

    run.__name__ = key_name
    run.__doc__ = f"{key_name}: {fn.__name__} with {kwargs}"
    # The registry's Attack interface: stored attack sets record these.
    run.name = key_name
    run.params = dict(kwargs)
    # Targeted stages pick their targets from the clean logits, never from
    # the key, so there are no random targets to store with an attack set.
    run.draws_random_targets = False
    # Data-dependent cost (compaction, early exits): advcore.evaluate runs it
    # per device shard instead of as one partitioned program.
    run.shard_local = True
    return run
