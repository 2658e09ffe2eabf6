"""Every random stream of a LADDER run, by name.

All randomness of a run derives from ``config.seed`` and a *stream name*, so
two draws never share a stream by accident and adding a row, variant or
attack leaves every other unit's draws unchanged:

* ``numpy_rng(seed, name)``: ``np.random.default_rng(SeedSequence([seed, id]))``
  for host-side selections;
* ``jax_key(seed, name)``: ``fold_in(jax.random.key(seed), id)`` for device
  draws (initialisations, attack starts, generation noise);
* ``data_seed(seed, name)``: the shuffling seed of a training iterator
  (``advcore.data.make_batch_iterator``).

``STREAMS`` lists the fixed streams with what each one draws. Streams of one
unit among many (a generated variant, a fine-tuned row, an attack set) are
``"<unit kind>/<name>"`` (``UNIT_STREAMS``) and get a stable id from a hash of
the full name. The fixed ids of the four selection streams are kept from the
first versions of the pipeline, so a run's images, targets and subsets stay
the ones earlier runs drew.
"""

from __future__ import annotations

import hashlib

import jax
import numpy as np

# name -> (id, what it draws). Ids are part of the results: never change one.
STREAMS: dict[str, tuple[int, str]] = {
    "generate_images": (101, "the seeded order of the training images to perturb (per-class cap)"),
    "generate_targets": (202, "the target class t != y of every selected training image"),
    "classifier_subset": (303, "the random part of the training split the vanilla model sees "
                               "(classifier.train_fraction, SVHN's 30 %)"),
    "generator_subset": (404, "the random part of the training split the generator sees "
                              "(generator.train_fraction)"),
    "classifier_init": (505, "the vanilla classifier's initial weights and its step keys "
                             "(dropout)"),
    "classifier_batches": (606, "the vanilla classifier's batch order"),
    "generator_init": (707, "the generators' and discriminator's initial weights and step keys"),
    "generator_batches": (808, "the generators' batch order"),
    "svm_pairs": (909, "every attention SVM's split, initialisation and SGD order (one key "
                       "per ordered pair is folded in from it)"),
    "eps_sweep": (1010, "the noise of the ε-sweep figure's generation"),
    "testset_ladder": (1111, "the noise of the LADDER attack on test images"),
    "testset_ladder_targets": (1212, "the target class of every test image of the LADDER "
                                     "attack"),
    "substitute_init": (1313, "the substitute classifier's initial weights and step keys "
                              "(the model that crafts the black-box test sets)"),
    "substitute_batches": (1414, "the substitute classifier's batch order"),
    "substitute_subset": (1515, "the random part of the training split the substitute sees "
                                "(classifier.train_fraction)"),
    "svm_direction_check": (1616, "the random directions the svm stage's direction check "
                                  "compares LADDER's push with"),
}

# Per-unit stream templates: "<kind>/<unit name>".
UNIT_STREAMS: dict[str, str] = {
    "generate": "generation noise of one variant (cavRandom / Random directions)",
    "trainset": "the attack's random starts / targets on the training images of an "
                "'X Adv.' row",
    "testset": "the attack's random starts / targets on the test images of one black-box set",
    "finetune": "a fine-tuned row's step keys (dropout) and batch order",
}


def stream_id(name: str) -> int:
    """The integer id of stream ``name`` (a ``STREAMS`` key or ``"<kind>/<unit>"``)."""
    if name in STREAMS:
        return STREAMS[name][0]
    kind, sep, unit = name.partition("/")
    if not sep or kind not in UNIT_STREAMS or not unit:
        raise ValueError(f"stream name must be one of {sorted(STREAMS)} or "
                         f"'<kind>/<unit>' with kind in {sorted(UNIT_STREAMS)}, got {name!r}")
    # 24 bits of a hash: stable across runs and platforms, and far above the
    # fixed ids' range (< 2**16) so the two kinds never meet.
    return (1 << 24) + int(hashlib.sha256(name.encode()).hexdigest()[:6], 16)


def numpy_rng(seed: int, name: str) -> np.random.Generator:
    """A numpy generator for host-side draws of stream ``name``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream_id(name)]))


def jax_key(seed: int, name: str) -> jax.Array:
    """A JAX key for device draws of stream ``name``."""
    return jax.random.fold_in(jax.random.key(int(seed)), stream_id(name))


def data_seed(seed: int, name: str) -> int:
    """A non-negative int shuffling seed for a training iterator of stream ``name``."""
    state = np.random.SeedSequence([int(seed), stream_id(name)]).generate_state(1)[0]
    return int(state) & 0x7FFFFFFF
