"""Attack sets crafted once against a source model and stored.

* ``split='train'``: the "X Adv." baselines' training data, crafted against
  the vanilla model on the same selected training images as LADDER (so every
  row fine-tunes on pairs of the same clean images).
* ``split='test'``: the black-box evaluation sets scored on every model,
  crafted against ``evaluate.attack_source``: the substitute (default) or the
  vanilla model.

Sets are written with ``advcore.attacks.save_attack_set`` (uint8, rounded).
Targeted attacks (CW-L2 with ``targeted=True``, JSMA) draw random targets with
``random_targets(key, y, K)`` from the batch key handed to the attack, so the
same draw is repeated next to the attack and the targets are stored with the
set.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from advcore import attacks
from advcore.attacks.targets import random_targets
from advcore.batching import map_batches


def attack_set_dir(wd: Any, split: str, key_name: str) -> str:
    return wd.path("attack_sets", split, key_name)


def make_attack_program(clf: Any, name: str, overrides: dict, num_classes: int
                        ) -> tuple[Callable, Callable]:
    """``(attack, jit(mv, x, y, key) -> (x_adv, prediction, target))`` against ``clf``.

    The attack sees ``clf``'s decision logits, so "correct" means the model's
    own prediction rule (a binary head's threshold included). ``target`` is
    the attack's random target for targeted attacks, else -1.
    """
    attack = attacks.make_attack(name, **overrides)
    targeted = attack.draws_random_targets

    @jax.jit
    def run(mv, x, y, key):
        logits_fn = lambda xx: clf.decision_logits(clf.logits(mv, xx))  # noqa: E731
        x_adv = attack(logits_fn, x, y, key)
        target = random_targets(key, y, num_classes) if targeted else jnp.full_like(y, -1)
        return x_adv, jnp.argmax(logits_fn(x_adv), axis=-1), target

    return attack, run


def overrides_of(attack_config: Any) -> dict:
    """An attack config's ``overrides`` as a plain dict."""
    o = attack_config.overrides
    return json.loads(json.dumps(o.to_dict() if hasattr(o, "to_dict") else dict(o)))


def craft_attack_set(ctx: Any, key_name: str, images: np.ndarray, labels: np.ndarray,
                     indices: np.ndarray, split: str, key: jax.Array,
                     source: str = "vanilla") -> dict:
    """Crafts ``config.attacks.<key_name>`` on ``images`` against ``models/<source>``, stores it.

    Batch ``start`` uses ``fold_in(key, start)``, so a set does not depend on
    how many batches came before. The info reports the source model's
    accuracy on the set (``source_accuracy``) and, for a substitute, the
    vanilla model's too.
    """
    attack, run = ctx.attack_program(key_name, source)
    mv = ctx.vanilla if source == "vanilla" else ctx.load_model_vars(source)
    labels = np.asarray(labels, np.int32)
    x_adv, pred, target = map_batches(
        lambda x, y, k: run(mv, x, y, k), (images, labels),
        batch_size=min(ctx.config.evaluate.attack_batch_size, max(len(labels), 1)),
        mesh=ctx.mesh, key=key, progress=ctx.progress, desc=f"{split}/{key_name}")
    tgt = target if attack.draws_random_targets else None
    directory = attack_set_dir(ctx.wd, split, key_name)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    source_accuracy = 100.0 * float(np.mean(pred == labels))
    spec = ctx.model_spec if source == "vanilla" else ctx.substitute_spec
    attacks.save_attack_set(
        directory, x_adv, labels, indices=indices, attack=attack.name,
        attack_params=attack.params, dataset=ctx.config.dataset.name, split=split,
        source_model={"row": source, "name": spec["arch"]}, targets=tgt,
        extra={"source_accuracy_on_set": source_accuracy}, overwrite=True)
    info = {"count": int(len(labels)), "source": source, "source_accuracy": source_accuracy}
    if tgt is not None:
        info["target_success_rate"] = 100.0 * float(np.mean(pred == tgt))
    return info


def load_pairs_from_attack_set(wd: Any, key_name: str, train_images: np.ndarray
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, x_adv, y) uint8 pairs of a stored train-split attack set."""
    s = attacks.load_attack_set(attack_set_dir(wd, "train", key_name))
    return train_images[s.indices], s.images, s.labels


def load_test_set(wd: Any, key_name: str) -> attacks.AttackSet:
    return attacks.load_attack_set(attack_set_dir(wd, "test", key_name))
