"""Shared run context of the LADDER stages: config, workdir, data, models on disk.

The stages exchange everything through files in the workdir (SPEC 3.1: the
authors' pipeline is offline too), so any stage can be re-run alone:

```
WORKDIR/
  config.json                      the run's config
  metrics.jsonl                    stage-level metrics (JSON lines)
  markers/<unit>.json              finished units + config fingerprints
  models/<row>/checkpoints/        evaluable checkpoints (vanilla, ladder, fgsm, ...)
  models/<row>/metrics.jsonl       per-epoch training metrics, report.json
  latents/{train,test}_{z,labels,pred}.npy
  generator/<ae|gan>/              checkpoints, report.json, reconstruction.png
  svm/                             att_w/att_b/w/b/pairs .npy, report.json
  generated/<variant>/             LADDER sets (x_adv, x, label, target, eps, fools, ...)
  generated/eps_sweep.png          the ε sweep grid (Figs. 7/10)
  attack_sets/{train,test}/<name>/ stored attack sets crafted on the vanilla model
  evaluate/                        scores per row, table.md / table.json
```
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from advcore import data
from advcore.metrics import MetricWriter
from ladder_jax import attention_svm, generators
from ladder_jax.classifier import Classifier, build_classifier
from ladder_jax.train_utils import ModelVars
from ladder_jax.workdir import Workdir

log = logging.getLogger("ladder_jax")


@dataclasses.dataclass
class Context:
    config: Any
    wd: Workdir
    info: data.DatasetInfo
    writer: MetricWriter
    progress: bool
    _train: Optional[data.ArrayDataset] = None
    _test: Optional[data.ArrayDataset] = None

    # -- data -------------------------------------------------------------------
    def _load(self, split: str, limit: int) -> data.ArrayDataset:
        d = self.config.dataset
        return data.load_split(d.name, split, source=d.source, data_dir=d.data_dir or None,
                               limit=limit or None)

    def train_set(self) -> data.ArrayDataset:
        if self._train is None:
            self._train = self._load("train", self.config.dataset.train_limit)
        return self._train

    def test_set(self) -> data.ArrayDataset:
        if self._test is None:
            self._test = self._load("test", self.config.dataset.test_limit)
        return self._test

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.info.image_shape)

    # -- models -----------------------------------------------------------------
    @functools.cached_property
    def classifier(self) -> Classifier:
        return build_classifier(self.config, self.num_classes)

    def model_dir(self, row: str) -> str:
        return self.wd.path("models", row)

    def checkpoint_config(self, row: str, fingerprint: str) -> dict:
        """The config JSON stored with an evaluable checkpoint (DESIGN.md)."""
        c = self.config
        return {
            "model": {"robust": {"name": c.model.name, "kwargs": c.model.kwargs.to_dict()},
                      "head": c.model.head,
                      "legacy_celeba_threshold": c.model.legacy_celeba_threshold},
            "dataset": {"name": c.dataset.name, "source": c.dataset.source,
                        "data_dir": c.dataset.data_dir},
            "method": f"ladder/{row}",
            "ladder": {"row": row, "unit_fingerprint": fingerprint},
        }

    def load_model_vars(self, row: str) -> ModelVars:
        """The newest checkpoint of ``models/<row>`` (digest-verified)."""
        from advcore import checkpoint as ckpt_lib

        state, _, _ = ckpt_lib.load_raw_state(self.model_dir(row))
        robust = state["robust"]
        return ModelVars(params=jax.tree.map(jnp.asarray, robust["params"]),
                         batch_stats=jax.tree.map(jnp.asarray, robust.get("batch_stats") or {}))

    @functools.cached_property
    def vanilla(self) -> ModelVars:
        return self.load_model_vars("vanilla")

    # -- latents / svm ----------------------------------------------------------
    def latents(self, split: str, mmap: bool = True) -> dict[str, np.ndarray]:
        mode = "r" if mmap else None
        return {k: np.load(self.wd.path("latents", f"{split}_{k}.npy"), mmap_mode=mode)
                for k in ("z", "labels", "pred")}

    def svm_params(self) -> tuple[attention_svm.SVMParams, np.ndarray]:
        d = self.wd.path("svm")
        params = attention_svm.SVMParams(
            **{k: np.load(os.path.join(d, f"{k}.npy"), mmap_mode="r")
               for k in attention_svm.SVMParams._fields})
        return params, np.load(os.path.join(d, "pairs.npy"))

    def generator_spec(self) -> generators.GeneratorSpec:
        return generators.GENERATOR_SPECS[self.config.generator.arch]


def make_context(config: Any, workdir: str) -> Context:
    from ladder_jax.config_schema import validate_config

    validate_config(config)
    info = data.get_dataset_info(config.dataset.name)
    wd = Workdir(workdir, config)
    wd.write_config()
    return Context(config=config, wd=wd, info=info, writer=MetricWriter(wd.root),
                   progress=bool(config.progress_bar))
