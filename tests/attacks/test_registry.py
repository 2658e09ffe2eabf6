"""The attack table: step rules, override precedence, LADDER presets, jit/vmap.

Step sizes are compared with values computed by hand from the papers'
settings; the models are linear maps on 4x4x1 inputs (fast to compile).
"""

import importlib
import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advcore import attacks
from advcore.attacks import registry
from advcore.attacks.autoattack import make_autoattack

SHAPE = (4, 4, 1)
W = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)


def linear_logits(x):
    return x.reshape(x.shape[0], -1) @ W


# --------------------------------------------------------------------------
# Step rules, by hand.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name,overrides,step", [
    # TRADES / LBGAT CIFAR: 0.003 at 0.031, exactly; scaled with eps.
    ("pgd20", {}, 0.003),
    ("pgd20", {"eps": 0.3}, 0.3 * 0.003 / 0.031),
    ("pgd20", {"eps": 8 / 255}, (8 / 255) * 0.003 / 0.031),
    ("cw20", {}, 0.003),
    ("cw20", {"eps": 0.3}, 0.3 * 0.003 / 0.031),
    # TRADES MNIST: 0.01 at 0.3.
    ("pgd40", {"eps": 0.3}, 0.01),
    ("pgd40", {}, 0.031 * 0.01 / 0.3),
    # The {K} families: 2.5 eps / K.
    ("pgd2", {}, 2.5 * 0.031 / 2),
    ("pgd5", {"eps": 0.3}, 0.15),
    ("pgd7", {"eps": 0.1}, 2.5 * 0.1 / 7),
    ("cw2", {"eps": 0.3}, 0.375),
    ("pgd10_l2", {}, 0.125),
    ("pgd10_l2", {"eps": 1.5}, 0.375),
    ("pgd20_l2", {"eps": 2.0}, 0.25),
    # MI-FGSM: eps / K.
    ("mifgsm", {}, 0.0031),
    ("mifgsm", {"eps": 0.3, "num_steps": 5}, 0.06),
])
def test_step_rule_per_preset(name, overrides, step):
    params = attacks.make_attack(name, **overrides).params
    assert params["step_size"] == pytest.approx(step, rel=1e-12, abs=0)


def test_paper_defaults_are_exact():
    # Stored attack sets and result JSONs record these; no 0.0030000000000000005.
    assert attacks.make_attack("pgd20").params["step_size"] == 0.003
    assert attacks.make_attack("pgd40", eps=0.3).params["step_size"] == 0.01
    assert attacks.make_attack("pgd20").params == dict(
        eps=0.031, step_size=0.003, num_steps=20, norm="linf", random_start="uniform",
        loss="ce")
    assert attacks.make_attack("cw20").params == dict(
        eps=0.031, step_size=0.003, num_steps=20, norm="linf", random_start="uniform",
        loss="cw", kappa=0.0)


def test_override_precedence():
    make = attacks.make_attack
    # An explicit step wins over the rule, with or without an eps override.
    assert make("pgd20", step_size=0.01).params["step_size"] == 0.01
    assert make("pgd20", eps=0.3, step_size=0.01).params["step_size"] == 0.01
    assert make("mifgsm", eps=0.3, step_size=0.02).params["step_size"] == 0.02
    # num_steps alone: the ratio rule keeps the paper's step ...
    p = make("pgd20", num_steps=40).params
    assert (p["num_steps"], p["step_size"]) == (40, 0.003)
    # ... the per-K rules follow the new K.
    assert make("pgd5", num_steps=2, eps=0.2).params["step_size"] == pytest.approx(0.25)
    assert make("pgd10_l2", num_steps=5).params["step_size"] == pytest.approx(0.25)
    # A config's overrides, then keyword overrides on top.
    cfg = {"name": "pgd20", "overrides": {"eps": 0.3, "step_size": 0.05}}
    assert make(cfg).params["step_size"] == 0.05
    assert make(cfg, eps=0.1).params == {**make(cfg).params, "eps": 0.1}
    cfg = {"name": "pgd20", "overrides": {"eps": 0.3}}
    assert make(cfg, step_size=0.02).params["step_size"] == 0.02
    assert make(cfg).params["step_size"] == pytest.approx(0.3 * 0.003 / 0.031)
    # Generic keywords map onto the function's own names; both at once is ambiguous.
    assert make("jsma", num_steps=5).params["max_iters"] == 5
    with pytest.raises(ValueError, match="either num_steps or max_iterations"):
        make("cw_l2", num_steps=5, max_iterations=7)


def test_family_names():
    assert attacks.make_attack("pgd1").params["num_steps"] == 1
    assert attacks.make_attack("pgd100").params["step_size"] == pytest.approx(2.5 * 0.031 / 100)
    # Exact entries take precedence over their family.
    assert attacks.make_attack("pgd20").params["step_size"] == 0.003
    for bad in ("pgd0", "pgd05", "pgd", "pgd-3", "pgd2_l3", "cw2_l2", "pgd２", "ladder_pgd",
                "ladder_fgsm", "ladder_cw", "ladder_jsma"):
        with pytest.raises(ValueError, match="unknown attack name"):
            attacks.make_attack(bad)


def test_pgd20_at_large_eps_reaches_the_ball_boundary():
    """PGD-20 at eps 0.3 must be an eps-0.3 attack, not a 0.06 one.

    Two classes with logits (x.w, -x.w): the CE gradient for label 0 is
    -2 p_1 w, whose sign never changes, so every pixel walks straight to
    x - 0.3 sign(w) if the 20 steps are long enough.
    """
    w = np.where(np.arange(16) % 3 == 0, -1.0, 1.0).astype(np.float32)
    w *= np.linspace(0.5, 1.5, 16, dtype=np.float32)

    def two_class(x):
        s = x.reshape(x.shape[0], -1) @ w
        return jnp.stack([s, -s], axis=-1)

    x = jnp.full((4,) + SHAPE, 0.5)
    y = jnp.zeros(4, jnp.int32)
    preset = attacks.make_attack("pgd20", eps=0.3)
    no_start = attacks.make_attack("pgd20", eps=0.3, random_start="none")
    old_step = attacks.make_attack("pgd20", eps=0.3, step_size=0.003, random_start="none")
    out = jax.jit(lambda k: [a(two_class, x, y, k) for a in (preset, no_start, old_step)])(
        jax.random.PRNGKey(0))
    delta = [np.asarray(o - x).reshape(4, -1) for o in out]
    target = -0.3 * np.sign(w)
    # From x itself every pixel ends on the boundary, on the gradient's side.
    np.testing.assert_allclose(delta[1], np.broadcast_to(target, (4, 16)), atol=1e-6)
    # From the uniform start: the sup distance is exactly eps, and only
    # pixels that started within 0.02 of the far face fall short.
    assert np.abs(delta[0]).max() == pytest.approx(0.3, abs=1e-6)
    assert np.abs(delta[0]).max() <= 0.3 + 1e-6
    assert np.mean(np.abs(delta[0] - target) < 1e-6) > 0.9
    # The old fixed step 0.003 covers 20 * 0.003 = 0.06 only.
    assert np.abs(delta[2]).max() == pytest.approx(0.06, abs=1e-6)


# --------------------------------------------------------------------------
# The documented table is the table.
# --------------------------------------------------------------------------


def test_docstring_table_is_the_registry_table():
    assert textwrap.indent(registry.text_table(), "    ") in registry.__doc__
    names = {n.strip(" `") for row in registry.table_rows() for n in row[0].split(",")}
    assert names == set(registry.PRESETS)
    markdown = registry.markdown_table()
    assert "| `pgd20` | `pgd` | eps=0.031, num_steps=20, norm='linf', random_start='uniform', " \
           "loss='ce' | 0.003 * eps / 0.031 |" in markdown
    assert len(markdown.splitlines()) == 2 + len(registry.table_rows())
    # The rule text states what the rule computes.
    for entry in registry.PRESETS.values():
        rule = getattr(entry, "step_rule", None)
        if rule is not None:
            formula = str(rule).replace("eps", "0.2").replace("K", "8")
            assert eval(formula) == pytest.approx(rule(0.2, 8)), str(rule)
    assert not any(name.startswith("ladder_") for name in registry.PRESETS)


# --------------------------------------------------------------------------
# Every name builds, jits and vmaps.
# --------------------------------------------------------------------------


def _concrete_names():
    """Every table name, with K = 2 for the {K} families."""
    return [name.replace("{K}", "2") for name in registry.PRESETS]


# Cheap settings where the defaults would take long on a CPU.
_CHEAP = {"cw_l2": {"num_steps": 3, "binary_search_steps": 1}, "jsma": {"num_steps": 2}}


@pytest.mark.parametrize("name", [n for n in _concrete_names()
                                  if not isinstance(registry.lookup(n)[0], registry.Delegated)])
def test_every_preset_runs_under_jit_and_vmap(name):
    attack = attacks.make_attack(name, **_CHEAP.get(name, {}))
    assert attack.name == name
    json.dumps(attack.params)
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.uniform(0.2, 0.8, (2, 3) + SHAPE).astype(np.float32))
    ys = jnp.asarray(rng.integers(0, 3, (2, 3)).astype(np.int32))
    key = jax.random.PRNGKey(0)  # shared by the vmapped calls: same draws

    @jax.jit
    def run(xs, ys):
        batched = jax.vmap(lambda x, y: attack(linear_logits, x, y, key))(xs, ys)
        return batched, attack(linear_logits, xs[1], ys[1], key)

    batched, single = run(xs, ys)
    assert batched.shape == xs.shape and batched.dtype == xs.dtype
    assert np.all(np.isfinite(np.asarray(batched)))
    np.testing.assert_allclose(np.asarray(batched[1]), np.asarray(single), atol=1e-6)
    assert 0.0 <= float(batched.min()) and float(batched.max()) <= 1.0
    if "eps" in attack.params:
        dist = np.asarray(batched - xs).reshape(2, 3, -1)
        dist = (np.abs(dist).max(-1) if attack.params.get("norm", "linf") == "linf"
                else np.sqrt((dist ** 2).sum(-1)))
        assert dist.max() <= attack.params["eps"] * (1 + 1e-5)


@pytest.mark.parametrize("name", [n for n in _concrete_names()
                                  if isinstance(registry.lookup(n)[0], registry.Delegated)])
def test_autoattack_names_delegate(name):
    built = attacks.make_attack(name, eps=0.1, num_steps=3)
    assert built.name == name
    assert built.params == make_autoattack(name, eps=0.1, num_steps=3).params
    assert built.draws_random_targets is False  # the Attack interface, as every preset
    with pytest.raises(ValueError, match=r"eps must be in \[0, 1\] for norm 'linf'"):
        attacks.make_attack(name, eps=8)


def test_an_autoattack_stage_runs_under_jit_and_vmap():
    attack = attacks.make_attack("apgd_ce", num_steps=2)
    rng = np.random.default_rng(2)
    xs = jnp.asarray(rng.uniform(0.2, 0.8, (2, 3) + SHAPE).astype(np.float32))
    ys = jnp.asarray(rng.integers(0, 3, (2, 3)).astype(np.int32))
    key = jax.random.PRNGKey(0)
    batched = jax.jit(jax.vmap(lambda x, y: attack(linear_logits, x, y, key)))(xs, ys)
    assert batched.shape == xs.shape
    assert np.abs(np.asarray(batched - xs)).max() <= 0.031 + 1e-6


# --------------------------------------------------------------------------
# LADDER's attacks: core names plus overrides, the same attacks as before.
# --------------------------------------------------------------------------

# Attack.params of the former ladder_* presets built from configs/ladder
# (recorded before they left the core registry), as (function, params).
_OLD_LADDER = {
    "fgsm": ("fgsm", {"eps": 0.3, "loss": "ce"}),
    "pgd": ("pgd", {"eps": 0.3, "step_size": 0.05, "num_steps": 10, "random_start": "uniform",
                    "loss": "ce", "norm": "linf"}),
    "cw": ("cw_l2", {"targeted": True, "max_iterations": 1000, "binary_search_steps": 5,
                     "learning_rate": 0.005, "initial_const": 0.01, "confidence": 0.0}),
    "jsma": ("jsma", {"theta": 1.0, "gamma": 1.0, "max_iters": 392}),
}
_OLD_JSMA_ITERS = {"mnist": 392, "fashion_mnist": 392, "svhn": 1536, "cifar10": 1536,
                   "celeba": 24576}
_OLD_SMOKE = {"pgd": {"num_steps": 2}, "cw": {"max_iterations": 3, "binary_search_steps": 1},
              "jsma": {"max_iters": 3}}


@pytest.mark.parametrize("dataset", sorted(_OLD_JSMA_ITERS))
@pytest.mark.parametrize("variant", [None, "smoke"])
def test_ladder_attacks_are_unchanged(dataset, variant):
    config = importlib.import_module(f"configs.ladder.{dataset}").get_config(variant)
    for key, (fn_name, params) in _OLD_LADDER.items():
        expected = dict(params)
        if key == "jsma":
            expected["max_iters"] = _OLD_JSMA_ITERS[dataset]
        if variant == "smoke":
            expected.update(_OLD_SMOKE.get(key, {}))
        attack = attacks.make_attack(config.attacks[key])
        assert attack.fn is getattr(attacks, fn_name), key
        assert attack.params == expected, key
        # ladder_jax.attack_sets stores the random targets of exactly these.
        assert attack.draws_random_targets == (key in ("cw", "jsma")), key
