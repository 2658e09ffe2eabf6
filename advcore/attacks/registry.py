"""``make_attack``: the table of named attack presets.

``make_attack(name, **overrides)`` returns an ``Attack``: a callable
``attack(logits_fn, x, y, key) -> x_adv`` carrying ``.name``, the function
``.fn`` and the resolved keyword ``.params`` (JSON-friendly; stored attack
sets record them). Arguments are validated when the attack is built (a dry
trace on a tiny dummy model), so a bad override fails at configuration time,
not mid-evaluation.

Every name is one entry of ``PRESETS``: a function, its default parameters
and a **step rule** that gives ``step_size`` from the resolved ``eps`` and
``num_steps`` (K). The rules keep each paper's ratio of step to radius, so a
preset stays the same attack at any ``eps``: ``pgd20`` at eps 0.3 takes steps
of 0.029, not the 0.003 that suits eps 0.031. ``{K}`` entries are families:
``pgd7`` is ``pgd{K}`` with K = 7 (any K >= 1 without leading zeros); an exact
name (``pgd20``) takes precedence over its family. eps is in input units
([0, 1] pixels, 0.031 = TRADES / LBGAT's CIFAR radius, not 8/255).

The table (``text_table()`` renders it, ``markdown_table()`` as Markdown; a test
keeps this copy exact). K is ``num_steps``::

    name         function         defaults / step rule / source setting
    -----------  ---------------  -----------------------------------------------------------------
    fgsm         fgsm             defaults  eps=0.031, loss='ce'
                                  step      none (one step of eps)
                                  source    FGSM (Goodfellow et al. 2015); LBGAT's white-box FGSM,
                                            eps 0.031
    pgd20        pgd              defaults  eps=0.031, num_steps=20, norm='linf',
                                            random_start='uniform', loss='ce'
                                  step      0.003 * eps / 0.031
                                  source    TRADES / LBGAT CIFAR evaluation: PGD-20, eps 0.031,
                                            step 0.003
    pgd40        pgd              defaults  eps=0.031, num_steps=40, norm='linf',
                                            random_start='uniform', loss='ce'
                                  step      0.01 * eps / 0.3
                                  source    TRADES MNIST evaluation: PGD-40, eps 0.3, step 0.01
    pgd{K}       pgd              defaults  eps=0.031, num_steps=K, norm='linf',
                                            random_start='uniform', loss='ce'
                                  step      2.5 * eps / K
                                  source    Madry et al. 2018's rule: K steps cover 2.5 eps
    pgd{K}_l2    pgd              defaults  eps=0.5, num_steps=K, norm='l2',
                                            random_start='uniform', loss='ce'
                                  step      2.5 * eps / K
                                  source    Madry et al. 2018's rule (L2): K steps cover 2.5 eps
    cw20         pgd              defaults  eps=0.031, num_steps=20, norm='linf',
                                            random_start='uniform', loss='cw', kappa=0.0
                                  step      0.003 * eps / 0.031
                                  source    LBGAT CIFAR evaluation: CW-20, PGD-20's loop on the CW
                                            margin loss
    cw{K}        pgd              defaults  eps=0.031, num_steps=K, norm='linf',
                                            random_start='uniform', loss='cw', kappa=0.0
                                  step      2.5 * eps / K
                                  source    PGD-K on the CW margin loss, Madry et al. 2018's rule
    mifgsm       mi_fgsm          defaults  eps=0.031, num_steps=10, decay=1.0
                                  step      eps / K
                                  source    MI-FGSM (Dong et al. 2018): 10 steps of eps / 10, decay
                                            1
    cw_l2        cw_l2            defaults  targeted=False
                                  step      none (no eps; num_steps sets max_iterations)
                                  source    Carlini & Wagner 2017, cleverhans v3 defaults: lr 5e-3,
                                            5 search steps, 1000 iterations, c0 1e-2
    jsma         jsma             defaults  theta=1.0, gamma=1.0
                                  step      none (no eps; num_steps sets max_iters)
                                  source    JSMA (Papernot et al. 2016), cleverhans v3: targeted,
                                            random targets
    aa_standard  make_autoattack  defaults  eps=0.031, norm='linf' and the version's settings
    aa_plus                       step      none (step-size free; num_steps sets num_iters)
    aa_rand                       source    AutoAttack (Croce & Hein 2020), fra31/auto-attack
                                            versions
    apgd_ce      make_autoattack  defaults  eps=0.031, norm='linf'
    apgd_dlr                      step      none (step-size free; num_steps sets num_iters,
    apgd_t                                  n_queries for square)
    fab                           source    AutoAttack's single stages (Croce & Hein 2020)
    fab_t
    square

Overrides: any keyword of the underlying function (``kappa``, ``loss``,
``restarts``, ``max_iterations``, ``bounds``, ...). An explicit ``step_size``
always wins; otherwise the entry's rule gives the step from the *resolved*
eps and K, so ``make_attack("pgd20", eps=0.3)`` steps 0.003 * 0.3 / 0.031.
The generic ``eps``, ``step_size`` and ``num_steps`` are accepted by every
name so that one CLI flag can apply to a mixed list; where they are
meaningless they are checked (finite, eps >= 0) and dropped (``step_size``
and ``num_steps`` for FGSM, ``eps`` and ``step_size`` for CW-L2 / JSMA), and
``num_steps`` maps to CW-L2's ``max_iterations`` and JSMA's ``max_iters``.
Unknown keywords raise ``ValueError``.

Threat-model checks at build time: eps must be a finite number >= 0, and for
L-inf at most ``hi - lo`` of ``bounds`` (1 for [0, 1] inputs); the L2
diameter bound ``(hi - lo) * sqrt(d)`` needs the number of features ``d`` and
is checked when the attack sees ``x`` (its static shape, also under ``jit``).
Inputs outside ``bounds`` are refused, never clipped: eagerly by the attack,
under ``jit`` by calling ``check_input_range`` on each batch beforehand.

Random targets (``jsma``, ``cw_l2`` with ``targeted=True``) are
``random_targets(key, y, K)`` with the key passed to the attack, so a caller
can recompute them (``Attack.draws_random_targets`` says when).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import textwrap
from typing import Any, Callable, Mapping, Optional, Tuple, Union

import jax
import jax.numpy as jnp

from advcore.attacks import _validation as V
from advcore.attacks.cw_l2 import cw_l2
from advcore.attacks.jsma import jsma
from advcore.attacks.pgd import fgsm, mi_fgsm, pgd

GENERIC = ("eps", "step_size", "num_steps")
_SIGNATURE_ARGS = ("logits_fn", "x", "y", "key")
# AutoAttack's cascades and single stages, built by make_autoattack. Spelled
# out here (not read from the autoattack module) so that importing the
# registry does not import AutoAttack.
AA_CASCADE_NAMES = ("aa_standard", "aa_plus", "aa_rand")
AA_STAGE_NAMES = ("apgd_ce", "apgd_dlr", "apgd_t", "fab", "fab_t", "square")

LINF_EPS = 0.031  # TRADES / LBGAT's CIFAR radius (their code's value, not 8/255)
L2_EPS = 0.5


# --------------------------------------------------------------------------
# Step rules.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RatioStep:
    """``step = ref_step * eps / ref_eps``: a paper's step at its radius, scaled.

    Computed as ``ref_step * (eps / ref_eps)`` so that the paper's own radius
    gives its step exactly (0.003 at 0.031, not 0.0030000000000000005).
    """

    ref_step: float
    ref_eps: float

    def __call__(self, eps: float, num_steps: int) -> float:
        return self.ref_step * (eps / self.ref_eps)

    def __str__(self) -> str:
        return f"{self.ref_step:g} * eps / {self.ref_eps:g}"


@dataclasses.dataclass(frozen=True)
class PathStep:
    """``step = path * eps / K``: the K steps together cover ``path * eps``."""

    path: float

    def __call__(self, eps: float, num_steps: int) -> float:
        return self.path * eps / num_steps

    def __str__(self) -> str:
        return "eps / K" if self.path == 1 else f"{self.path:g} * eps / K"


StepRule = Union[RatioStep, PathStep]


# --------------------------------------------------------------------------
# Table entries.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preset:
    """One registry entry: ``fn`` with ``defaults`` and a step rule.

    ``generic`` maps each generic keyword to the function's keyword, or to
    None where the function has no such notion (the value is checked and
    dropped). ``family=True`` marks a ``{K}`` entry: ``num_steps`` comes from
    the name. ``no_step_rule`` says in words why ``step_rule`` is None.
    """

    fn: Callable
    defaults: Mapping[str, Any]
    step_rule: Optional[StepRule]
    source: str
    generic: Mapping[str, Optional[str]] = dataclasses.field(
        default_factory=lambda: {k: k for k in GENERIC})
    family: bool = False
    no_step_rule: str = ""

    def defaults_text(self) -> str:
        items = dict(self.defaults)
        parts = []
        for k, v in items.items():
            parts.append(f"{k}={v!r}")
            if k == "eps" and self.family:
                parts.append("num_steps=K")
        return ", ".join(parts)

    def rule_text(self) -> str:
        return str(self.step_rule) if self.step_rule is not None else self.no_step_rule


@dataclasses.dataclass(frozen=True)
class Delegated:
    """An entry built by ``advcore.attacks.autoattack.make_autoattack``."""

    defaults_text_: str
    no_step_rule: str
    source: str

    def defaults_text(self) -> str:
        return self.defaults_text_

    def rule_text(self) -> str:
        return self.no_step_rule


_PGD_LINF = {"norm": "linf", "random_start": "uniform", "loss": "ce"}
_CW_LINF = {"norm": "linf", "random_start": "uniform", "loss": "cw", "kappa": 0.0}
_MADRY = PathStep(2.5)
_LBGAT_CIFAR = RatioStep(ref_step=0.003, ref_eps=LINF_EPS)
_NO_STEPS = {"eps": "eps", "step_size": None, "num_steps": None}
_AA_CASCADE = Delegated(
    "eps=0.031, norm='linf' and the version's settings",
    "none (step-size free; num_steps sets num_iters)",
    "AutoAttack (Croce & Hein 2020), fra31/auto-attack versions")
_AA_STAGE = Delegated(
    "eps=0.031, norm='linf'",
    "none (step-size free; num_steps sets num_iters, n_queries for square)",
    "AutoAttack's single stages (Croce & Hein 2020)")

PRESETS: dict[str, Union[Preset, Delegated]] = {
    "fgsm": Preset(
        fgsm, {"eps": LINF_EPS, "loss": "ce"}, None,
        "FGSM (Goodfellow et al. 2015); LBGAT's white-box FGSM, eps 0.031",
        generic=_NO_STEPS, no_step_rule="none (one step of eps)"),
    "pgd20": Preset(
        pgd, {"eps": LINF_EPS, "num_steps": 20, **_PGD_LINF}, _LBGAT_CIFAR,
        "TRADES / LBGAT CIFAR evaluation: PGD-20, eps 0.031, step 0.003"),
    "pgd40": Preset(
        pgd, {"eps": LINF_EPS, "num_steps": 40, **_PGD_LINF}, RatioStep(0.01, 0.3),
        "TRADES MNIST evaluation: PGD-40, eps 0.3, step 0.01"),
    "pgd{K}": Preset(
        pgd, {"eps": LINF_EPS, **_PGD_LINF}, _MADRY,
        "Madry et al. 2018's rule: K steps cover 2.5 eps", family=True),
    "pgd{K}_l2": Preset(
        pgd, {"eps": L2_EPS, "norm": "l2", "random_start": "uniform", "loss": "ce"}, _MADRY,
        "Madry et al. 2018's rule (L2): K steps cover 2.5 eps", family=True),
    "cw20": Preset(
        pgd, {"eps": LINF_EPS, "num_steps": 20, **_CW_LINF}, _LBGAT_CIFAR,
        "LBGAT CIFAR evaluation: CW-20, PGD-20's loop on the CW margin loss"),
    "cw{K}": Preset(
        pgd, {"eps": LINF_EPS, **_CW_LINF}, _MADRY,
        "PGD-K on the CW margin loss, Madry et al. 2018's rule", family=True),
    "mifgsm": Preset(
        mi_fgsm, {"eps": LINF_EPS, "num_steps": 10, "decay": 1.0}, PathStep(1.0),
        "MI-FGSM (Dong et al. 2018): 10 steps of eps / 10, decay 1"),
    "cw_l2": Preset(
        cw_l2, {"targeted": False}, None,
        "Carlini & Wagner 2017, cleverhans v3 defaults: lr 5e-3, 5 search steps, "
        "1000 iterations, c0 1e-2",
        generic={"eps": None, "step_size": None, "num_steps": "max_iterations"},
        no_step_rule="none (no eps; num_steps sets max_iterations)"),
    "jsma": Preset(
        jsma, {"theta": 1.0, "gamma": 1.0}, None,
        "JSMA (Papernot et al. 2016), cleverhans v3: targeted, random targets",
        generic={"eps": None, "step_size": None, "num_steps": "max_iters"},
        no_step_rule="none (no eps; num_steps sets max_iters)"),
    **{name: _AA_CASCADE for name in AA_CASCADE_NAMES},
    **{name: _AA_STAGE for name in AA_STAGE_NAMES},
}

VALID_NAMES = tuple(PRESETS)


def _function_text(name: str, entry: Union[Preset, Delegated]) -> str:
    return "make_autoattack(name)" if isinstance(entry, Delegated) else entry.fn.__name__


def table_rows() -> list[tuple[str, str, str, str, str]]:
    """``(names, function, defaults, step rule, source)`` per table row.

    Consecutive names sharing one ``Delegated`` entry share a row.
    """
    rows: list[tuple[str, str, str, str, str]] = []
    last_entry = None
    for name, entry in PRESETS.items():
        cells = (_function_text(name, entry), entry.defaults_text(), entry.rule_text(),
                 entry.source)
        if isinstance(entry, Delegated) and entry is last_entry:
            rows[-1] = (f"{rows[-1][0]}, `{name}`",) + rows[-1][1:]
        else:
            rows.append((f"`{name}`",) + cells)
        last_entry = entry
    return [(names, f"`{fn}`", d, r, s) for names, fn, d, r, s in rows]


def text_table(width: int = 95) -> str:
    """The table as wrapped plain text (the module docstring quotes it)."""
    name_w, fn_w, label_w = 13, 17, 10
    text_w = width - name_w - fn_w - label_w
    rule = "-" * (name_w - 2)
    lines = [f"{'name':<{name_w}}{'function':<{fn_w}}defaults / step rule / source setting",
             f"{rule:<{name_w}}{'-' * (fn_w - 2):<{fn_w}}{'-' * (label_w + text_w)}"]
    for names, fn, defaults, step, source in table_rows():
        name_lines = [n.strip(" `") for n in names.split(",")]
        body = []
        for label, text in (("defaults", defaults), ("step", step), ("source", source)):
            wrapped = textwrap.wrap(text, text_w) or [""]
            body += [f"{label:<{label_w}}{wrapped[0]}"] + [" " * label_w + w for w in wrapped[1:]]
        fn_text = fn.strip("`").replace("(name)", "")
        for i in range(max(len(name_lines), len(body))):
            left = name_lines[i] if i < len(name_lines) else ""
            mid = fn_text if i == 0 else ""
            right = body[i] if i < len(body) else ""
            lines.append(f"{left:<{name_w}}{mid:<{fn_w}}{right}".rstrip())
    return "\n".join(lines)


def markdown_table() -> str:
    """The table as Markdown (for the README)."""
    lines = ["| name | function | defaults | step rule | source setting |",
             "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows()]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# The built attack.
# --------------------------------------------------------------------------


class Attack:
    """``attack(logits_fn, x, y, key) -> x_adv`` with its name, function and params."""

    def __init__(self, name: str, fn: Callable, params: Mapping[str, Any]):
        self.name = name
        self.fn = fn
        self.params = dict(params)
        self._call = functools.partial(fn, **self.params)
        self.__doc__ = fn.__doc__

    def __call__(self, logits_fn, x, y, key):
        return self._call(logits_fn, x, y, key)

    @property
    def draws_random_targets(self) -> bool:
        """Whether the attack draws ``random_targets(key, y, K)`` from its key.

        True for JSMA and targeted CW-L2 without fixed ``target`` labels; a
        caller recomputes the targets with the same key to store them.
        """
        if self.params.get("target") is not None:
            return False
        return self.fn is jsma or (self.fn is cw_l2 and bool(self.params.get("targeted")))

    def __repr__(self) -> str:
        return f"Attack({self.name!r}, {self.params!r})"


# --------------------------------------------------------------------------
# Building.
# --------------------------------------------------------------------------


def _unknown_name_error(name: Any) -> ValueError:
    return ValueError(
        f"unknown attack name {name!r}; valid names: {', '.join(VALID_NAMES)} "
        "({K} = number of steps >= 1, e.g. pgd7, pgd10_l2, cw2)")


def _family_steps(template: str, name: str) -> Optional[int]:
    """K if ``name`` is ``template`` with ``{K}`` replaced by an int >= 1, else None."""
    prefix, _, suffix = template.partition("{K}")
    if not (name.startswith(prefix) and name.endswith(suffix)
            and len(name) > len(prefix) + len(suffix)):
        return None
    digits = name[len(prefix):len(name) - len(suffix)]
    # ASCII digits without a leading zero, so each attack has one name.
    if not (digits.isascii() and digits.isdigit()) or digits[0] == "0":
        return None
    return int(digits)


def lookup(name: str) -> Tuple[Union[Preset, Delegated], Optional[int]]:
    """``(entry, K)`` for a registry name; K is None for exact entries."""
    if not isinstance(name, str):
        raise _unknown_name_error(name)
    if name in PRESETS:
        return PRESETS[name], None
    for template, entry in PRESETS.items():
        if isinstance(entry, Preset) and entry.family:
            k = _family_steps(template, name)
            if k is not None:
                return entry, k
    raise _unknown_name_error(name)


def _split_cfg(name_or_cfg: Any, overrides: dict) -> tuple[str, dict]:
    if isinstance(name_or_cfg, str):
        return name_or_cfg, overrides
    getter = getattr(name_or_cfg, "get", None)
    if getter is None or getter("name") is None:
        raise ValueError(
            f"make_attack takes a name or a config with a 'name' field, got {name_or_cfg!r}"
        )
    cfg_over = getter("overrides") or {}
    if hasattr(cfg_over, "to_dict"):
        cfg_over = cfg_over.to_dict()
    return str(getter("name")), {**dict(cfg_over), **overrides}


def _check_dropped_generic(key: str, value: Any) -> None:
    """A generic keyword the attack has no use for still has to make sense."""
    if key == "num_steps":
        V.check_int("num_steps", value, min_value=1)
    else:
        V.check_number(key, value, min_value=0.0)


def _make_delegated(name: str, overrides: dict) -> Callable:
    norm = overrides.get("norm", "linf")
    if "eps" in overrides and isinstance(norm, str) and norm.lower() in V.EPS_NORMS:
        # AutoAttack works on [0, 1] inputs; the L2 diameter needs x's shape.
        V.check_eps(overrides["eps"], norm=norm.lower(), bounds=(0.0, 1.0))
    if "step_size" in overrides:
        _check_dropped_generic("step_size", overrides["step_size"])
    try:
        from advcore.attacks.autoattack import make_autoattack
    except ImportError as e:
        raise ImportError(
            f"attack {name!r} needs advcore.attacks.autoattack, which is not available: {e}"
        ) from e
    return make_autoattack(name, **overrides)


def _resolve_params(name: str, entry: Preset, k: Optional[int], overrides: dict) -> dict:
    """Defaults, then overrides (generic keywords translated), then the step rule."""
    accepted = set(inspect.signature(entry.fn).parameters) - set(_SIGNATURE_ARGS)
    params = dict(entry.defaults)
    if k is not None:
        params["num_steps"] = k
    given: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in GENERIC:
            target = entry.generic.get(key)
            if target is None:
                _check_dropped_generic(key, value)
                continue
            if target != key and target in overrides:
                raise ValueError(
                    f"attack {name!r}: give either num_steps or {target}, not both "
                    f"(got num_steps={value!r}, {target}={overrides[target]!r})")
            given[target] = value
        elif key in accepted:
            given[key] = value
        else:
            raise ValueError(
                f"attack {name!r} has no parameter {key!r}; valid: "
                f"{sorted(accepted | set(GENERIC))}")
    params.update(given)
    bounds = V.check_bounds(params.get("bounds", (0.0, 1.0)))
    if entry.step_rule is not None and "step_size" not in given:
        # The rule needs a sane eps and K; checked here so that the error
        # names them rather than the step they would produce.
        norm = params.get("norm", "linf")
        V.check_choice("norm", norm, V.EPS_NORMS)
        V.check_eps(params["eps"], norm=norm, bounds=bounds)
        V.check_int("num_steps", params["num_steps"], min_value=1)
        params["step_size"] = entry.step_rule(params["eps"], params["num_steps"])
    return params


# Beyond any real input (a 1024 x 1024 x 3 image has ~2**22 features).
_MAX_FEATURES = 2**40


def _dry_run(attack: Attack) -> None:
    """Traces the attack on a tiny model (no FLOPs: ``eval_shape``) so that
    every argument the function checks fails now, not mid-evaluation.

    The dummy input has enough features for the requested radius: an L2 eps
    is only bounded by the diameter ``(hi - lo) * sqrt(d)`` of the real
    input, which is not known yet.
    """
    features = 16
    eps, norm = attack.params.get("eps"), attack.params.get("norm", "linf")
    lo, hi = attack.params.get("bounds", (0.0, 1.0))
    if norm == "l2" and isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0:
        features = max(features, math.ceil((eps / (hi - lo)) ** 2))
        if features > _MAX_FEATURES:
            raise ValueError(
                f"eps must be in [0, {(hi - lo) * math.sqrt(_MAX_FEATURES):g}] for norm 'l2' "
                f"(the diameter of an input with 2**40 features in bounds [{lo:g}, {hi:g}]), "
                f"got {eps!r}")

    def logits_fn(x):
        s = jnp.sum(x.reshape(x.shape[0], -1), axis=-1, keepdims=True)
        return s * jnp.linspace(-1.0, 1.0, 10)

    x = jax.ShapeDtypeStruct((2, features, 1, 1), jnp.float32)
    y = jax.ShapeDtypeStruct((2,), jnp.int32)
    jax.eval_shape(lambda x, y, k: attack(logits_fn, x, y, k), x, y, jax.random.PRNGKey(0))


def make_attack(name_or_cfg: Any, **overrides: Any) -> Callable:
    """Builds an attack ``(logits_fn, x, y, key) -> x_adv`` from a table name.

    ``name_or_cfg`` is a name (see the module docstring's table) or a
    config/dict with ``name`` and optional ``overrides``; keyword
    ``overrides`` win over the config's. An explicit ``step_size`` wins over
    the entry's step rule, which otherwise applies to the resolved ``eps``
    and ``num_steps``. Returns an ``Attack`` (AutoAttack names: the callable
    of ``make_autoattack``, which carries ``.name`` and ``.params`` too).
    Raises ``ValueError`` for unknown names, unknown keywords and invalid
    values (eps outside its norm's range, non-finite numbers, bad bounds).
    """
    name, overrides = _split_cfg(name_or_cfg, dict(overrides))
    entry, k = lookup(name)
    if isinstance(entry, Delegated):
        return _make_delegated(name, overrides)
    attack = Attack(name, entry.fn, _resolve_params(name, entry, k, overrides))
    _dry_run(attack)
    return attack
