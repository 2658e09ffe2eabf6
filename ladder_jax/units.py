"""What a unit of LADDER work is: its name, the config it reads, its inputs and outputs.

Every stage is a list of units (one per generator kind, generated variant,
fine-tuned row, attack set, ...). A stage module builds them from the config
with ``units(ctx)``; ``ladder_jax.runner`` turns them into a graph, decides
which are done and runs the others.

A unit declares

* ``settings``: the config values it reads itself (``config_values``), with
  the leaves that cannot change its result left out (``IGNORED_LEAVES``);
* ``inputs``: the units whose outputs it reads (e.g. ``svm`` reads
  ``latents``);
* ``outputs``: the workdir paths it owns (logged when written, moved aside
  by ``--force``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Mapping

# Leaves that never change what a unit computes: they select which units
# exist (``variants``, ``rows``, ``kinds``, ``evaluate.attacks``), or only
# affect progress display, checkpoint frequency, figures and evaluation
# batching. They are dropped inside sections (a section named ``attacks`` at
# the top level still counts: only leaves are dropped).
IGNORED_LEAVES = frozenset({
    "progress_bar", "stages", "checkpoint_every_epochs", "eval_batch_size",
    "kinds", "variants", "rows", "attacks", "ladder_attack",
    "grid_images", "sweep_eps", "sweep_num_images",
})


def plain_config(config: Any) -> Any:
    """A ConfigDict (or any mapping/sequence tree) as plain dicts and lists."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if isinstance(config, Mapping):
        return {str(k): plain_config(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [plain_config(v) for v in config]
    return config


def _strip(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _strip(v) for k, v in sorted(tree.items()) if k not in IGNORED_LEAVES}
    return tree


def config_values(config: Any, *paths: str) -> dict[str, Any]:
    """``{path: value}`` for dotted config ``paths`` (sections lose ``IGNORED_LEAVES``).

    An explicitly named leaf is kept even if its name is ignored inside
    sections (``"generate.sweep_eps"`` counts for the sweep unit).
    """
    plain = plain_config(config)
    picked = {}
    for path in paths:
        value: Any = plain
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                raise ValueError(f"unit settings: config has no field {path!r}")
            value = value[part]
        picked[path] = _strip(value)
    return picked


def stable_hash(obj: Any) -> str:
    """A short SHA-256 of ``obj``'s canonical JSON."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Unit:
    """One unit of work of a stage.

    ``work(ctx, identity)`` produces the outputs and returns a small dict of
    scalars for the marker and the log (a training unit adds
    ``output_digest``, its final checkpoint's SHA-256). ``identity`` is
    ``{"unit", "fingerprint", "inputs"}``: what a checkpoint of the unit
    stores, so that a checkpoint made from other inputs is never resumed.
    """

    name: str
    stage: str
    settings: Mapping[str, Any]
    work: Callable[[Any, dict], Mapping[str, Any]]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
