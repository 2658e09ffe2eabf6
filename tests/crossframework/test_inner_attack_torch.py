"""The training step's inner maximisation, end to end, against the PyTorch reference.

``lbgat_jax.step.make_attack_fn`` with each method's default config against
``torch_reference.train_attack`` with the official constants (ε = 0.031,
step 0.007, 10 steps, start x + 0.001·N(0, I) not clipped before the first
gradient, robust model in eval mode, ``min(max(x', x − ε), x + ε)`` then a
clip to [0, 1]): the TRADES KL attack of the TRADES family and the CE "noisy
BIM" of the CE methods. Both sides start from the same point (the library's
own start for the step's attack key, given to the reference), and the
adversarial batches are compared by the fraction of pixels that are not
exactly equal, against the PyTorch float32-vs-float64 floor of the same batch
(``pixel_agreement``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advcore.variables import ModelVars
from lbgat_jax import state as state_lib
from lbgat_jax import step as step_lib
from lbgat_jax.methods import METHODS, get_method

import pixel_agreement
from conftest import NUM_CLASSES, method_config, import_torch_reference

tr = import_torch_reference()  # skips this module when PyTorch is absent
import torch  # noqa: E402  (only after the skip)

# The official inner maximisation (LBGAT's train_lbgat_cifar100.py / lbgat.py).
OFFICIAL = {"eps": 0.031, "step_size": 0.007, "num_steps": 10, "init_std": 0.001}

# One method per attack objective; the others share its attack.
ATTACK_CASES = [("lbgat_trades", "kl"), ("lbgat", "ce")]


def test_every_method_uses_its_official_attack_objective():
    for method, official in tr.OFFICIAL_METHODS.items():
        assert get_method(method).attack_loss == official.attack_loss, method
    # Methods without a reference entry share one of these structures.
    assert set(tr.OFFICIAL_METHODS) <= set(METHODS)


def jax_attack(pair, batch, method: str):
    """The library's adversarial batch for step 0 and the start it used."""
    config = method_config(method)
    spec = get_method(method)
    models = state_lib.build_models(config, spec, NUM_CLASSES)
    state = state_lib.TrainState(
        step=jnp.zeros((), jnp.int32), robust=ModelVars.from_variables(pair.robust_vars),
        natural={}, teacher={}, opt_state=None, key=jax.random.PRNGKey(7))
    keys = step_lib.step_keys(state)
    x, y = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
    x_adv = jax.jit(step_lib.make_attack_fn(config, spec, models))(state, x, y, keys)
    # The attack draws its start from the step's "attack" key (advcore.attacks.pgd).
    start = pixel_agreement.jitted_start(keys["attack"], x, norm="linf", eps=OFFICIAL["eps"],
                                         random_start="normal", init_std=OFFICIAL["init_std"])
    return np.asarray(x_adv), start


@pytest.fixture(scope="module", params=ATTACK_CASES, ids=[m for m, _ in ATTACK_CASES])
def attack_runs(request, pair, batch):
    method, loss = request.param
    ours, start = jax_attack(pair, batch, method)
    model = pair.torch_robust()
    args = (model, torch.from_numpy(batch["image"]), torch.from_numpy(batch["label"]).long(),
            torch.from_numpy(start))
    kwargs = dict(loss=loss, eps=OFFICIAL["eps"], step_size=OFFICIAL["step_size"],
                  num_steps=OFFICIAL["num_steps"])
    ref32 = tr.train_attack(*args, **kwargs).numpy()
    ref64 = tr.train_attack(*args, grad_dtype=torch.float64, **kwargs).numpy()
    return method, ours, ref32, ref64


def test_adversarial_batch_matches_reference(attack_runs, batch):
    method, ours, ref32, ref64 = attack_runs
    floor = pixel_agreement.mismatch(ref32, ref64)
    differ = pixel_agreement.mismatch(ours, ref32)
    bound = pixel_agreement.allowed_mismatch(floor)
    assert differ <= bound, (
        f"{method}: {differ:.3%} of the pixels differ from the reference, more than "
        f"{bound:.3%} (PyTorch float32 vs float64 floor {floor:.3%})")


def test_adversarial_batch_is_a_real_attack(attack_runs, batch):
    """The comparison above is only meaningful if the attack moved the pixels."""
    method, ours, _, _ = attack_runs
    x = batch["image"]
    assert np.all(np.abs(ours - x) <= OFFICIAL["eps"] + 1e-6) and ours.min() >= 0.0
    assert ours.max() <= 1.0
    moved = np.mean(np.abs(ours - x) >= OFFICIAL["step_size"] - 1e-6)
    assert moved > 0.5, f"{method}: only {moved:.1%} of the pixels moved a full step"
