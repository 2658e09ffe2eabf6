"""Attack sets crafted once against the vanilla model and stored (SPEC 3.7, 4.6).

* ``split='train'``: the "X Adv." baselines' training data, crafted on the
  same selected training images as LADDER (so every row fine-tunes on pairs
  of the same clean images).
* ``split='test'``: the black-box evaluation sets scored on every model.

Sets are written with ``advcore.attacks.save_attack_set`` (uint8, rounded);
targeted attacks (CW-L2 with ``targeted=True``, JSMA) draw random targets with
``random_targets(key, y, K)`` from the batch key handed to the attack, so the
targets are recomputed here and stored alongside.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from advcore import attacks
from advcore.attacks.targets import random_targets
from ladder_jax import losses
from ladder_jax.context import Context


def attack_set_dir(ctx: Context, split: str, key_name: str) -> str:
    return ctx.wd.path("attack_sets", split, key_name)


def _decision_logits_fn(clf, mv):
    """logits_fn whose argmax is ``clf``'s prediction (binary head: [thr, l])."""

    def logits_fn(x):
        return losses.decision_logits(clf.logits(mv, x), clf.head, clf.legacy_threshold)

    return logits_fn


@functools.lru_cache(maxsize=None)
def _attack_runner(clf, name: str, overrides_json: str):
    """(attack, jit(mv, x, y, key) -> (x_adv, pred)), cached so that the train
    and test sets of one attack share a compilation."""
    attack = attacks.make_attack(name, **json.loads(overrides_json))

    @jax.jit
    def run(mv, x, y, key):
        logits_fn = _decision_logits_fn(clf, mv)
        x_adv = attack(logits_fn, x, y, key)
        return x_adv, jnp.argmax(logits_fn(x_adv), axis=-1)

    return attack, run


def craft_attack_set(ctx: Context, key_name: str, images: np.ndarray, labels: np.ndarray,
                     indices: np.ndarray, split: str, seed_offset: int) -> dict:
    """Crafts ``config.attacks.<key_name>`` on ``images`` against vanilla and stores it."""
    cfg = ctx.config.attacks[key_name]
    overrides = json.dumps(dict(cfg.overrides.to_dict() if hasattr(cfg.overrides, "to_dict")
                                else cfg.overrides), sort_keys=True)
    attack, run = _attack_runner(ctx.classifier, cfg.name, overrides)
    num_classes = 2 if ctx.classifier.head == "binary" else ctx.num_classes

    bs = min(ctx.config.evaluate.attack_batch_size, max(len(labels), 1))
    base = jax.random.key(ctx.config.seed + seed_offset)
    outs, preds, targets = [], [], []
    for start in tqdm(range(0, len(labels), bs), desc=f"{split}/{key_name}",
                      disable=not ctx.progress, leave=False):
        x = np.asarray(images[start:start + bs], np.float32) / 255.0
        y = np.asarray(labels[start:start + bs], np.int32)
        n = len(y)
        if n < bs:  # one shape for jit; padded rows are dropped below
            x = np.concatenate([x, np.repeat(x[:1], bs - n, 0)])
            y = np.concatenate([y, np.repeat(y[:1], bs - n, 0)])
        key = jax.random.fold_in(base, start)
        x_adv, pred = run(ctx.vanilla, jnp.asarray(x), jnp.asarray(y), key)
        outs.append(np.asarray(x_adv)[:n])
        preds.append(np.asarray(pred)[:n])
        if attack.draws_random_targets:
            targets.append(np.asarray(random_targets(key, jnp.asarray(y), num_classes))[:n])
    x_adv = np.concatenate(outs)
    pred = np.concatenate(preds)
    tgt = np.concatenate(targets) if targets else None
    directory = attack_set_dir(ctx, split, key_name)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    attacks.save_attack_set(
        directory, x_adv, labels, indices=indices, attack=attack.name,
        attack_params=attack.params, dataset=ctx.config.dataset.name, split=split,
        source_model={"row": "vanilla", "name": ctx.config.model.name}, targets=tgt,
        extra={"vanilla_accuracy_on_set": 100.0 * float(np.mean(pred == labels))},
        overwrite=True)
    info = {"count": int(len(labels)),
            "vanilla_accuracy": 100.0 * float(np.mean(pred == labels))}
    if tgt is not None:
        info["target_success_rate"] = 100.0 * float(np.mean(pred == tgt))
    return info


def load_pairs_from_attack_set(ctx: Context, key_name: str, train_images: np.ndarray
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, x_adv, y) uint8 pairs of a stored train-split attack set."""
    s = attacks.load_attack_set(attack_set_dir(ctx, "train", key_name))
    return train_images[s.indices], s.images, s.labels


def load_test_set(ctx: Context, key_name: str) -> attacks.AttackSet:
    return attacks.load_attack_set(attack_set_dir(ctx, "test", key_name))
