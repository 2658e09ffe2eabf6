"""Sanity checks that flag models an AutoAttack evaluation may overrate.

Port of ``fra31/auto-attack`` ``autoattack/checks.py`` (see its
``flags_doc.md``) to pure-function JAX models. Each check returns warning
strings instead of printing; :func:`run_sanity_checks` collects them before
an evaluation and :func:`check_square_sr` runs after one:

* randomness: repeated calls on the same input disagree (use ``version="rand"``);
* probability outputs: every row is in [0, 1] and sums to 1 (attacks need logits);
* zero gradients: some points get an exactly zero input gradient of the CE
  loss (masked gradients, e.g. ``stop_gradient`` or a quantised input);
  the message names the gradient-blocking primitives found in the model's
  jaxpr (``stop_gradient``, ``round``, ``floor``, ``ceil``, ``sign``), a
  JAX-specific hint (these alone are no flag: softmax / logsumexp use
  ``stop_gradient`` harmlessly);
* dynamic defences: the forward pass itself calls ``jax.grad`` / ``vjp`` /
  ``jvp`` (upstream traces ``backward`` calls with ``sys.settrace``) or
  contains loops (``while`` / ``scan``), i.e. an inner optimisation;
* class count vs. the number of APGD-T / FAB-T targets and the DLR losses;
* after a run: Square (query-only) lowering the robust accuracy below the
  white-box attacks by more than 0.2% (gradient masking likely).
"""

from __future__ import annotations

import sys
import warnings
from typing import Callable, Iterable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from advcore.attacks import losses

__all__ = ["check_square_sr", "run_sanity_checks"]

LogitsFn = Callable[..., jax.Array]

CHECKS_DOC = "upstream auto-attack flags_doc.md"

_MASKING_PRIMITIVES = ("stop_gradient", "round", "floor", "ceil", "sign")
_LOOP_PRIMITIVES = ("while", "scan")
_AUTODIFF_FUNCTIONS = frozenset(
    ("grad", "value_and_grad", "vjp", "jvp", "linearize", "jacrev", "jacfwd", "hessian"))


def _call(logits_fn: LogitsFn, x: jax.Array, key: jax.Array, stochastic: bool) -> jax.Array:
    return logits_fn(x, key) if stochastic else logits_fn(x)


def _check_randomized(logits_fn, x, y, key, stochastic, n, alpha) -> list[str]:
    """Upstream ``check_randomized``: ``n`` eager calls on the same input."""
    outputs, correct = [], []
    for i in range(n):
        out = np.asarray(_call(logits_fn, x, jax.random.fold_in(key, i), stochastic), np.float64)
        correct.append(int(np.sum(out.argmax(-1) == np.asarray(y))))
        outputs.append(out / (np.linalg.norm(out, axis=-1, keepdims=True) + 1e-10))
    max_diff = 0.0
    for a in range(n - 1):
        for b in range(a + 1, n):
            max_diff = max(max_diff, float(np.linalg.norm(outputs[a] - outputs[b], axis=-1).max()))
    if len(set(correct)) > 1 or max_diff > alpha:
        return [f"the model seems to be randomised (outputs differ across identical calls, "
                f"max normalised difference {max_diff:.2e}); use version='rand' "
                f"(see {CHECKS_DOC})."]
    return []


def _check_range_output(logits: np.ndarray, alpha: float = 1e-5) -> list[str]:
    """Upstream ``check_range_output``: outputs that look like probabilities."""
    if (logits.max() < 1.0 + alpha and logits.min() > -alpha
            and bool(np.all(np.abs(logits.sum(-1) - 1.0) < alpha))):
        return ["the output seems to be a probability distribution (rows in [0, 1] summing "
                f"to 1); make sure logits_fn returns logits (see {CHECKS_DOC})."]
    return []


def _check_zero_gradients(logits_fn, x, y, key, stochastic, prims: set[str]) -> list[str]:
    """Upstream ``check_zero_gradients``, on the CE gradient at the clean points."""
    def total(x_in):
        return jnp.sum(losses.ce(_call(logits_fn, x_in, key, stochastic), y))

    # Jitted: one compile is much cheaper than eager op-by-op autodiff.
    grad = np.asarray(jax.jit(jax.grad(total))(x))
    l1 = np.abs(grad.reshape(grad.shape[0], -1)).sum(-1)
    n_zero = int(np.sum(l1 == 0))
    if n_zero:
        masking = sorted(prims & set(_MASKING_PRIMITIVES))
        hint = f" The model uses gradient-blocking primitives {masking}." if masking else ""
        return [f"there are {n_zero} of {len(l1)} points with zero gradient; this might "
                "lead to unreliable evaluation with gradient-based attacks (masked "
                f"gradients?).{hint} Run Square / a BPDA attack (see {CHECKS_DOC})."]
    return []


def _primitives(closed_jaxpr) -> set[str]:
    """Names of all primitives in a jaxpr, sub-jaxprs included."""
    from jax.extend.core import jaxprs_in_params  # local: only needed here

    names: set[str] = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            names.add(eqn.primitive.name)
            for sub in jaxprs_in_params(eqn.params):
                walk(getattr(sub, "jaxpr", sub))

    walk(closed_jaxpr.jaxpr)
    return names


def _trace_with_autodiff_count(logits_fn, x, key, stochastic):
    """Traces ``logits_fn`` to a jaxpr while counting calls to JAX autodiff
    entry points from inside it (upstream ``check_dynamic``'s settrace)."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if (event == "call" and frame.f_code.co_name in _AUTODIFF_FUNCTIONS
                and str(frame.f_globals.get("__name__", "")).startswith("jax")):
            count += 1
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        if stochastic:
            jaxpr = jax.make_jaxpr(lambda v, k: logits_fn(v, k))(x, key)
        else:
            jaxpr = jax.make_jaxpr(lambda v: logits_fn(v))(x)
    finally:
        sys.settrace(previous)
    return jaxpr, count


def _check_graph(logits_fn, x, key, stochastic) -> tuple[list[str], set[str]]:
    """Dynamic-defence checks on the traced forward pass; also returns the
    primitive names (for the zero-gradient hint)."""
    out: list[str] = []
    try:
        jaxpr, n_autodiff = _trace_with_autodiff_count(logits_fn, x, key, stochastic)
    except Exception as err:  # noqa: BLE001 -- a non-traceable model is itself a flag
        return [f"logits_fn could not be traced by JAX ({type(err).__name__}: {err}); "
                "gradient-based attacks will not work on it."], set()
    prims = _primitives(jaxpr)
    if n_autodiff:
        out.append(f"it seems to be a dynamic defence: the forward pass calls JAX autodiff "
                   f"{n_autodiff} time(s); the evaluation with AutoAttack might be "
                   f"insufficient (see {CHECKS_DOC}).")
    loops = sorted(prims & set(_LOOP_PRIMITIVES))
    if loops:
        out.append(f"the forward pass contains loops {loops} (an iterative / dynamic "
                   "defence?); the evaluation with AutoAttack might be insufficient.")
    return out, prims


def _check_n_classes(n_cls: int, attacks_to_run: Sequence[str], apgd_targets: int,
                     fab_targets: int) -> list[str]:
    """Upstream ``check_n_classes`` (with the target counts reported correctly)."""
    out = []
    if "apgd-dlr" in attacks_to_run or "apgd-t" in attacks_to_run:
        if n_cls <= 2:
            out.append(f"with only {n_cls} classes it is not possible to use the DLR loss!")
        elif n_cls == 3 and "apgd-t" in attacks_to_run:
            out.append(f"with only {n_cls} classes it is not possible to use the targeted "
                       "DLR loss!")
        elif "apgd-t" in attacks_to_run and apgd_targets + 1 > n_cls:
            out.append(f"more target classes ({apgd_targets}) than possible ({n_cls - 1}) "
                       "are used in APGD-T!")
    if "fab-t" in attacks_to_run and fab_targets + 1 > n_cls:
        out.append(f"more target classes ({fab_targets}) than possible ({n_cls - 1}) are "
                   "used in FAB-T!")
    return out


def run_sanity_checks(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
    stochastic: bool = False, version: str = "standard", norm: str = "linf",
    attacks_to_run: Optional[Iterable[str]] = None, n_target_classes: Optional[int] = None,
    n_repeats: int = 5, alpha: float = 1e-4, warn: bool = False,
) -> list[str]:
    """Runs the pre-evaluation checks; returns a list of warning messages.

    Args:
      logits_fn: the model, NHWC [0, 1] images -> logits; ``logits_fn(x, key)``
        when ``stochastic``. It is called eagerly (not jitted), so Python-side
        randomness is seen too.
      x, y: a batch of clean images and labels (e.g. the first 250).
      key: PRNG key for the stochastic calls.
      version, norm: the AutoAttack version and threat model to be run; as
        upstream, the randomness check is skipped for ``"rand"``.
      attacks_to_run: attack names (default: the version's) for the class check.
      n_target_classes: APGD-T / FAB-T targets (None: the version's, e.g. 9,
        or 5 for APGD-T in L1 'standard').
      n_repeats, alpha: randomness check repeats (5) and tolerance (1e-4).
      warn: also emit each message through ``warnings.warn``.

    Returns:
      The warnings (empty for a plain deterministic logits model).
    """
    from advcore.attacks.autoattack import check_config  # avoid an import cycle

    config = check_config(norm=norm, version=version, attacks_to_run=attacks_to_run,
                          n_target_classes=n_target_classes, warn=False)
    attacks = config.attacks
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    out: list[str] = []
    if version != "rand":
        out += _check_randomized(logits_fn, x, y, key, stochastic, n_repeats, alpha)
    logits = np.asarray(_call(logits_fn, x, key, stochastic))
    out += _check_range_output(logits)
    graph_msgs, prims = _check_graph(logits_fn, x, key, stochastic)
    out += _check_zero_gradients(logits_fn, x, y, key, stochastic, prims)
    out += graph_msgs
    out += _check_n_classes(logits.shape[-1], attacks, config.apgd_t_targets,
                            config.fab_targets)
    if warn:
        for msg in out:
            warnings.warn(msg, stacklevel=2)
    return out


def check_square_sr(robust_accuracy: Mapping[str, float], alpha: float = 0.002,
                    warn: bool = False) -> list[str]:
    """Upstream ``check_square_sr``, usable on ``autoattack(..., return_details=True)``.

    Warns when the robust accuracy after Square is more than ``alpha`` below
    the lowest robust accuracy after any other (white-box) stage: a query-only
    attack beating gradient attacks points at gradient masking. Needs
    ``"square"`` and at least two other entries (``"clean"`` counts, as
    upstream); array values and a ``"robust"`` mask entry are accepted.
    """
    accs = {k: float(np.asarray(v)) for k, v in robust_accuracy.items()
            if k != "robust" and np.ndim(v) == 0}
    if "square" not in accs or len(accs) <= 2:
        return []
    best_other = min(v for k, v in accs.items() if k != "square")
    if accs["square"] < best_other - alpha:
        msg = (f"Square Attack has decreased the robust accuracy by "
               f"{best_other - accs['square']:.2%}; this might indicate that the robustness "
               "evaluation using AutoAttack is unreliable (gradient masking?). Consider "
               "running Square with more iterations and restarts or an adaptive attack "
               f"(see {CHECKS_DOC}).")
        if warn:
            warnings.warn(msg, stacklevel=2)
        return [msg]
    return []
