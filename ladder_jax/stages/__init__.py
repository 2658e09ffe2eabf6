"""The seven LADDER stages, one module each; ``ladder_jax.runner`` runs them.

Every stage module has one job and the same interface:

* ``units(ctx) -> list[Unit]``: its units (``ladder_jax.units.Unit``), each
  naming the config values it reads, the units whose outputs it reads and
  the workdir paths it writes;
* optionally ``finish(ctx)``: what runs after its units (the tables of
  ``evaluate``).

Stages never import each other: what several of them need is in
``ladder_jax.context`` (data, stored outputs, compiled programs, latents,
image selection, generation) or a library module.

Units (what they read -> what they write):

* ``classifier``: ``classifier`` (data -> ``models/vanilla/``), ``substitute``
  (data -> ``models/substitute/``, when the black-box sets are crafted on it)
* ``latents``: ``latents`` (``classifier`` -> ``latents/``)
* ``generator``: ``generator/<kind>`` (``latents`` -> ``generator/<kind>/``)
* ``svm``: ``svm`` (``latents``, ``classifier`` -> ``svm/``: the SVMs, the
  direction check and the calibrated ε)
* ``generate``: ``generate/<variant>``, ``generate/sweep`` (``classifier``, ``latents``,
  ``generator/<kind>``, ``svm`` -> ``generated/``)
* ``finetune``: ``trainset/<row>`` (``classifier`` -> ``attack_sets/train/<row>``),
  ``finetune/<row>`` (``classifier`` and ``generate/<variant>`` or ``trainset/<row>``
  -> ``models/<row>/``)
* ``evaluate``: ``testset/<attack>`` (``substitute``, or ``classifier`` when
  ``evaluate.attack_source='vanilla'`` -> ``attack_sets/test/``),
  ``testset/ladder`` (``classifier``, ``generator/ae``, ``svm``), ``score/<row>``
  (the row's model and every test set -> ``evaluate/scores/``); ``finish`` writes
  the tables
"""

from __future__ import annotations

from ladder_jax.stages import (classifier, evaluate, finetune, generate, generator, latents,
                               svm)

STAGE_MODULES = {
    "classifier": classifier,
    "latents": latents,
    "generator": generator,
    "svm": svm,
    "generate": generate,
    "finetune": finetune,
    "evaluate": evaluate,
}
