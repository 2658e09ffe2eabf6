"""Workdir layout, config fingerprints and per-unit "done" markers.

Every stage writes its outputs under the workdir and, when a unit of work
(e.g. ``generator/ae`` or ``finetune/ladder``) has finished, an atomic marker
``markers/<unit>.json`` holding the unit's config fingerprint. A later run
skips a unit whose marker carries the same fingerprint, so any stage can be
re-run alone and finished work is never redone; if the relevant config
changed, the unit is redone and its marker replaced.

A unit's fingerprint hashes the config sections its stage reads plus the
fingerprints of the stages upstream of it, so changing e.g. ``svm.c``
invalidates ``svm`` and everything generated from it but not the classifier
or the generator. Fields that only select which units run (``generate.variants``,
``finetune.rows``, ...) or change nothing computed (progress bars,
checkpoint frequency) are left out, so adding a variant does not redo the
others.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Iterable, Mapping, Optional

# Config sections each stage reads, and its upstream stages.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "classifier": ("seed", "dataset", "model", "classifier"),
    "latents": ("latents",),
    "generator": ("generator",),
    "svm": ("svm",),
    "generate": ("generate",),
    "finetune": ("finetune", "attacks"),
    "evaluate": ("evaluate", "attacks"),
}
STAGE_UPSTREAM: dict[str, tuple[str, ...]] = {
    "classifier": (),
    "latents": ("classifier",),
    "generator": ("latents",),
    "svm": ("latents",),
    "generate": ("generator", "svm"),
    "finetune": ("generate",),
    "evaluate": ("finetune",),
}
# Leaf names that never change a stage's results.
_IGNORED_LEAVES = frozenset({
    "progress_bar", "stages", "checkpoint_every_epochs", "eval_batch_size",
    "kinds", "variants", "rows", "attacks", "ladder_attack",
    "grid_images", "sweep_eps", "sweep_num_images",
})


def _to_plain(config: Any) -> Any:
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if isinstance(config, Mapping):
        return {str(k): _to_plain(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [_to_plain(v) for v in config]
    return config


def _strip(tree: Any) -> Any:
    """Drops ignored leaves inside a section (the section names themselves stay,
    so the top-level ``attacks`` section counts while ``evaluate.attacks``,
    which only selects units, does not)."""
    if isinstance(tree, dict):
        return {k: _strip(v) for k, v in sorted(tree.items()) if k not in _IGNORED_LEAVES}
    return tree


def stable_hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def name_seed(name: str) -> int:
    """A stable per-name seed offset, so that adding or reordering rows, variants
    or attacks leaves every other unit's random draws unchanged."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:6], 16)


class Workdir:
    """Paths, fingerprints and markers of one LADDER run."""

    def __init__(self, root: str, config: Any):
        self.root = os.path.abspath(root)
        self.config = _to_plain(config)
        os.makedirs(self.root, exist_ok=True)
        self._cache: dict[str, str] = {}

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def ensure_dir(self, *parts: str) -> str:
        p = self.path(*parts)
        os.makedirs(p, exist_ok=True)
        return p

    # -- fingerprints --------------------------------------------------------
    def stage_fingerprint(self, stage: str) -> str:
        if stage not in STAGE_SECTIONS:
            raise ValueError(f"stage must be one of {tuple(STAGE_SECTIONS)}, got {stage!r}")
        if stage not in self._cache:
            sections = {s: _strip(self.config.get(s)) for s in STAGE_SECTIONS[stage]}
            upstream = [self.stage_fingerprint(u) for u in STAGE_UPSTREAM[stage]]
            self._cache[stage] = stable_hash({"sections": sections, "upstream": upstream})
        return self._cache[stage]

    def section_hash(self, *names: str) -> str:
        """Hash of config sections (or ``section.field`` paths), ignored leaves dropped."""
        picked = {}
        for name in names:
            head, _, rest = name.partition(".")
            value = self.config.get(head)
            if rest:
                for part in rest.split("."):
                    value = value.get(part) if isinstance(value, dict) else None
            picked[name] = _strip(value)
        return stable_hash(picked)

    def unit_fingerprint(self, stage: str, extra: Any = None) -> str:
        """The stage fingerprint, refined by unit-specific ``extra`` settings."""
        return stable_hash({"stage": self.stage_fingerprint(stage), "extra": extra})

    # -- markers -------------------------------------------------------------
    def marker_path(self, unit: str) -> str:
        return self.path("markers", unit.replace("/", "__") + ".json")

    def read_marker(self, unit: str) -> Optional[dict]:
        try:
            with open(self.marker_path(unit)) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def is_done(self, unit: str, fingerprint: str) -> bool:
        marker = self.read_marker(unit)
        return marker is not None and marker.get("fingerprint") == fingerprint

    def mark_done(self, unit: str, fingerprint: str, info: Optional[Mapping] = None) -> None:
        """Writes the marker atomically (write + rename)."""
        path = self.marker_path(unit)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        payload = {"unit": unit, "fingerprint": fingerprint,
                   "finished_at": time.time(), "info": dict(info or {})}
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2, default=str)
        os.replace(tmp, path)

    def clear_marker(self, unit: str) -> None:
        try:
            os.remove(self.marker_path(unit))
        except FileNotFoundError:
            pass

    def done_units(self) -> Iterable[str]:
        d = self.path("markers")
        if not os.path.isdir(d):
            return []
        return sorted(f[:-5].replace("__", "/") for f in os.listdir(d) if f.endswith(".json"))

    def write_config(self) -> None:
        with open(self.path("config.json"), "w") as f:
            json.dump(self.config, f, indent=2, default=str)
