"""The files of one LADDER run: its layout, the per-unit markers, discarded outputs.

```
WORKDIR/
  config.json                      the run's resolved config
  metrics.jsonl                    unit-level metrics (JSON lines)
  markers/<unit>.json              finished units (``unit`` with '/' written '__')
  models/<row>/                    evaluable checkpoints/, metrics.jsonl, report.json
                                   (rows: vanilla, substitute, ladder, fgsm, ...)
  latents/{train,test}_{z,labels,pred}.npy
  generator/<ae|gan>/              checkpoints/, metrics.jsonl, report.json, reconstruction.png
  svm/                             att_w/att_b/w/b/mu/sigma/pairs .npy, report.json (fit
                                   statistics, direction check, calibrated ε)
  generated/<variant>/             LADDER sets (x_adv, x, label, target, eps, fools, ...)
  generated/eps_sweep.png          the ε sweep grid (Figs. 7/10)
  attack_sets/train/<name>/        "X Adv." training sets, crafted on the vanilla model
  attack_sets/test/<name>/         black-box test sets, crafted on evaluate.attack_source
  evaluate/                        scores/<row>.json, table*.md / .json
  discarded/<time>-<unit>/         outputs moved aside by --force or a config change
```

A marker is written atomically when its unit has finished and records what
the unit was made from (``ladder_jax.runner`` decides what that means):

```
{"unit": "svm", "fingerprint": "...", "inputs": {"latents": "<output id>"},
 "output": "<output id>", "finished_at": 1700000000.0, "info": {...}}
```
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Iterable, Mapping, Optional

from advcore import files


class Workdir:
    """Paths and markers of one LADDER run directory."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def ensure_dir(self, *parts: str) -> str:
        p = self.path(*parts)
        os.makedirs(p, exist_ok=True)
        return p

    # -- markers -------------------------------------------------------------
    def marker_path(self, unit: str) -> str:
        return self.path("markers", unit.replace("/", "__") + ".json")

    def read_marker(self, unit: str) -> Optional[dict]:
        """The unit's marker, or None (missing or cut off by a kill)."""
        marker = files.read_json(self.marker_path(unit))
        return marker if isinstance(marker, dict) else None

    def write_marker(self, unit: str, payload: Mapping[str, Any]) -> None:
        files.write_json(self.marker_path(unit), {"unit": unit, "finished_at": time.time(),
                                                  **dict(payload)})

    def clear_marker(self, unit: str) -> None:
        try:
            os.remove(self.marker_path(unit))
        except FileNotFoundError:
            pass

    def done_units(self) -> list[str]:
        d = self.path("markers")
        if not os.path.isdir(d):
            return []
        return sorted(f[:-5].replace("__", "/") for f in os.listdir(d) if f.endswith(".json"))

    # -- discarded outputs ---------------------------------------------------
    def move_aside(self, unit: str, relpaths: Iterable[str]) -> Optional[str]:
        """Moves the existing ``relpaths`` to ``discarded/<time>-<unit>/`` (never deletes).

        Returns the folder they went to, or None when none of them existed.
        """
        existing = [r for r in relpaths if os.path.lexists(self.path(r))]
        if not existing:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 10**9:09d}"
        target = self.path("discarded", f"{stamp}-{unit.replace('/', '__')}")
        for rel in existing:
            dst = os.path.join(target, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.move(self.path(rel), dst)
        return target

    def write_config(self, config: Mapping[str, Any]) -> None:
        files.write_json(self.path("config.json"), config)
