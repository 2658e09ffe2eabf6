"""JAX-native adversarial attacks (DESIGN.md "Attacks").

Every attack is a pure function ``attack(logits_fn, x, y, key, **hparams) ->
stop_gradient(x_adv)`` of a ``logits_fn: (B, H, W, C) in [0, 1] -> (B, K)``;
hyper-parameters are Python values (static under ``jit``). Per-example losses
live in ``advcore.attacks.losses``; ``make_attack(name, **overrides)`` builds
an attack from a table name such as ``"pgd20"`` (``registry`` documents the
table and its step-size rules).

Inputs must lie in the attack's ``bounds`` (default [0, 1]); they are refused,
never clipped. Eager calls check ``x`` themselves; jitted code calls
``check_input_range(x, bounds)`` on each concrete batch first. A model that
expects normalised inputs is attacked through ``normalized_logits_fn``.
"""

from advcore.attacks import losses, norms
from advcore.attacks._validation import check_input_range
from advcore.attacks.cw_l2 import cw_l2
from advcore.attacks.jsma import jsma
from advcore.attacks.normalize import normalized_logits_fn
from advcore.attacks.pgd import fgsm, mi_fgsm, pgd
from advcore.attacks.registry import Attack, make_attack
from advcore.attacks.stored import AttackSet, AttackSetError, load_attack_set, save_attack_set
from advcore.attacks.targets import random_targets
from advcore.attacks.transfer import evaluate_transfer, transfer_attack
from advcore.attacks.apgd import apgd, apgd_targeted
from advcore.attacks.autoattack import autoattack, make_autoattack
from advcore.attacks.checks import run_sanity_checks
from advcore.attacks.fab import fab_targeted
from advcore.attacks.square import square
