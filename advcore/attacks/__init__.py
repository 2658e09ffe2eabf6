"""JAX-native adversarial attacks (DESIGN.md "Attacks").

Every attack is a pure function ``attack(logits_fn, x, y, key, **hparams) ->
stop_gradient(x_adv)`` of a ``logits_fn: (B, H, W, C) in [0, 1] -> (B, K)``;
hyper-parameters are Python values (static under ``jit``). Per-example losses
live in ``advcore.attacks.losses``; ``make_attack(name, **overrides)`` builds
an attack from a registry name such as ``"pgd20"``.
"""

from advcore.attacks import losses, norms
from advcore.attacks.pgd import fgsm, mi_fgsm, pgd
