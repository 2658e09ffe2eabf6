"""What every LADDER stage shares: config, workdir, data, the stored outputs, compiled programs.

The stages exchange everything through files in the workdir (the authors'
pipeline is offline too; ``ladder_jax/workdir.py`` has the layout), so any
stage can run alone. ``Context`` reads those files and owns the programs
several units share, each built once per run:

* the classifier's evaluation programs (``Classifier.correct``,
  ``Classifier.features_and_pred``): vanilla and fine-tuning evaluation,
  latents, the LADDER test set and the scores;
* one generation program per generation settings (``generation_program``):
  a variant's training-set generation and the LADDER test set share it;
* one attack program per attack and source model (``attack_program``): the
  "X Adv." training set of an attack (crafted on the vanilla model) and its
  black-box test set share it when the test sets are crafted on the vanilla
  model too (``evaluate.attack_source='vanilla'``).

Helpers that several stages need live here too: latents of any images
(``compute_latents``), the training images LADDER perturbs and their targets
(``selected_train_images``), the svm stage's report and its calibrated eps
(``svm_report``, ``resolve_eps``), and LADDER generation with the run's
generator and SVMs (``generate_examples``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from advcore import checkpoint as ckpt_lib
from advcore import data, files, parallel
from advcore.batching import map_batches
from advcore.metrics import MetricWriter
from advcore.variables import ModelVars
from ladder_jax import attack_sets, attention_svm, generate, generators, streams
from ladder_jax.classifier import Classifier, make_run_spec, model_spec
from ladder_jax.units import plain_config
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
    _generation_programs: dict = dataclasses.field(default_factory=dict)
    _attack_programs: dict = dataclasses.field(default_factory=dict)

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

    @functools.cached_property
    def mesh(self):
        return parallel.make_mesh()

    # -- models -----------------------------------------------------------------
    @functools.cached_property
    def model_spec(self) -> dict:
        return model_spec(self.config, self.num_classes)

    @functools.cached_property
    def classifier(self) -> Classifier:
        return Classifier.from_spec(self.model_spec)

    @functools.cached_property
    def substitute_spec(self) -> dict:
        """The substitute's model: ``evaluate.substitute_model`` ('' = the vanilla model's)."""
        sub = self.config.evaluate.substitute_model
        if not sub.name:
            return self.model_spec
        return model_spec(self.config, self.num_classes, name=sub.name,
                          kwargs=dict(sub.kwargs))

    @functools.cached_property
    def substitute_classifier(self) -> Classifier:
        return Classifier.from_spec(self.substitute_spec)

    def source_classifier(self, source: str) -> Classifier:
        """The classifier of ``models/<source>`` (``vanilla`` or ``substitute``)."""
        if source not in ("vanilla", "substitute"):
            raise ValueError(f"source must be 'vanilla' or 'substitute', got {source!r}")
        return self.classifier if source == "vanilla" else self.substitute_classifier

    def run_spec(self, row: str) -> dict:
        """The run spec stored with every checkpoint of ``models/<row>``."""
        spec = self.substitute_spec if row == "substitute" else self.model_spec
        return make_run_spec(self.config, spec, row)

    def model_dir(self, row: str) -> str:
        return self.wd.path("models", row)

    def load_model_vars(self, row: str) -> ModelVars:
        """The newest checkpoint of ``models/<row>`` (digest-verified)."""
        state, _, _ = ckpt_lib.load_raw_state(self.model_dir(row))
        return _model_vars(state["model"])

    @functools.cached_property
    def vanilla(self) -> ModelVars:
        return self.load_model_vars("vanilla")

    def generator_spec(self) -> generators.GeneratorSpec:
        return generators.GENERATOR_SPECS[self.config.generator.arch]

    @functools.cached_property
    def generator_module(self):
        g = self.config.generator
        return generators.build_generator(g.arch, g.width_scale, g.legacy_convt_init)

    def load_generator(self, kind: str) -> ModelVars:
        """The trained generator ``kind`` (newest checkpoint, digest-verified)."""
        state, _, _ = ckpt_lib.load_raw_state(self.wd.path("generator", kind))
        return _model_vars(state["g"])

    # -- latents / svm ----------------------------------------------------------
    def latents(self, split: str, mmap: bool = True) -> dict[str, np.ndarray]:
        mode = "r" if mmap else None
        return {k: np.load(self.wd.path("latents", f"{split}_{k}.npy"), mmap_mode=mode)
                for k in ("z", "labels", "pred")}

    def compute_latents(self, images: np.ndarray, scale: float = 1.0,
                        batch_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """(z, predicted label) of uint8 images under the vanilla model, eval mode.

        ``scale`` multiplies the [0, 1] images first: 255 gives the authors'
        SVM inputs (``svm.latent_scaling='pixels255'``).
        """
        clf, mv = self.classifier, self.vanilla
        scale = np.float32(scale)
        z, pred = map_batches(lambda x: clf.features_and_pred(mv, x, scale), (images,),
                              batch_size=batch_size or self.config.latents.batch_size,
                              mesh=self.mesh)
        return z.astype(np.float32), pred.astype(np.int32)

    def svm_params(self) -> tuple[attention_svm.LatentSVM, np.ndarray]:
        """Every pair's SVM with its fit space (leading pair axis), and the pairs."""
        d = self.wd.path("svm")

        def load(fields):
            return {k: np.load(os.path.join(d, f"{k}.npy"), mmap_mode="r") for k in fields}

        svms = attention_svm.LatentSVM(
            attention_svm.SVMParams(**load(attention_svm.SVMParams._fields)),
            attention_svm.LatentScale(**load(attention_svm.LatentScale._fields)))
        return svms, np.load(os.path.join(d, "pairs.npy"))

    def svm_report(self) -> dict:
        """``svm/report.json``: fit statistics, the direction check and the calibrated eps."""
        report = files.read_json(self.wd.path("svm", "report.json"))
        if not isinstance(report, dict) or "calibration" not in report:
            raise ValueError(f"{self.wd.path('svm', 'report.json')} is missing or was written "
                             "by an older version; rerun --stage=svm")
        return report

    def calibrated_eps(self) -> float:
        """The eps the svm stage calibrated (``0`` in ``generate.eps_list`` / ``finetune.eps``)."""
        return float(self.svm_report()["calibration"]["eps"])

    def resolve_eps(self, values) -> tuple[float, ...]:
        """``values`` with 0 ("calibrated") replaced by ``calibrated_eps``, duplicates dropped."""
        out: list[float] = []
        for e in values:
            e = self.calibrated_eps() if float(e) == 0.0 else float(e)
            if e not in out:
                out.append(e)
        return tuple(out)

    # -- generation ---------------------------------------------------------------
    def selected_train_images(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices, sources, targets) of the training images LADDER perturbs.

        The "X Adv." rows' attack sets are crafted on the same images.
        """
        c = self.config
        labels = np.asarray(self.train_set().labels)
        idx = generate.select_indices(labels, c.generate.per_class_cap, self.num_classes,
                                      streams.numpy_rng(c.seed, "generate_images"))
        sources = labels[idx].astype(np.int32)
        targets = generate.choose_targets(sources, self.num_classes,
                                          streams.numpy_rng(c.seed, "generate_targets"))
        return idx, sources, targets

    def generation_settings(self, variant: str, eps_values=None) -> generate.GenerationSettings:
        """Static settings of ``variant``'s program; 0 in the eps values is the calibrated eps."""
        gc = self.config.generate
        return generate.GenerationSettings(
            variant=variant, eps_values=self.resolve_eps(eps_values or gc.eps_list),
            use_exp=self.config.svm.attention_exp, eps_unit=gc.eps_unit,
            target_range=self.generator_spec().target_range,
            cav_random_std=gc.cav_random_std, random_std=gc.random_std, quantize=gc.quantize,
            legacy_uint8_wrap=gc.legacy_uint8_wrap, eps_init=gc.eps_init, eps_step=gc.eps_step,
            eps_max=gc.eps_max, ite_max_eps=gc.ite_max_eps)

    def generation_program(self, settings: generate.GenerationSettings) -> Callable:
        """The compiled generation program of ``settings`` (built once per run)."""
        if settings not in self._generation_programs:
            self._generation_programs[settings] = generate.make_chunk_fn(
                self.generator_module, self.classifier, settings)
        return self._generation_programs[settings]

    def generate_examples(self, variant: str, z: np.ndarray, sources: np.ndarray,
                          targets: np.ndarray, clean_pred: np.ndarray, key: jax.Array,
                          eps_values=None) -> dict[str, np.ndarray]:
        """LADDER generation with the run's generator and SVMs; returns (E, N) arrays."""
        kind = "gan" if variant == "ladder_gan" else "ae"
        gv = self.load_generator(kind)
        svms, pairs = self.svm_params()
        table = attention_svm.pair_index_table(pairs, self.num_classes)
        program = self.generation_program(self.generation_settings(variant, eps_values))
        bs = min(self.config.generate.batch_size, max(len(sources), 1))
        return generate.generate(program, gv, self.vanilla, svms, table,
                                 np.asarray(z, np.float32), sources, targets,
                                 np.asarray(clean_pred), batch_size=bs, key=key,
                                 latent_norm=self.svm_report()["mean_latent_norm"],
                                 mesh=self.mesh, progress=self.progress)

    # -- attacks --------------------------------------------------------------------
    def attack_program(self, key_name: str, source: str = "vanilla"
                       ) -> tuple[Callable, Callable]:
        """``(attack, jitted run)`` of ``config.attacks.<key_name>`` against ``models/<source>``.

        The substitute shares the vanilla program when it has the same model.
        """
        clf = self.source_classifier(source)
        same = source == "vanilla" or self.substitute_spec == self.model_spec
        cache_key = (key_name, "vanilla" if same else source)
        if cache_key not in self._attack_programs:
            cfg = self.config.attacks[key_name]
            num_classes = 2 if clf.head == "binary" else self.num_classes
            self._attack_programs[cache_key] = attack_sets.make_attack_program(
                clf, cfg.name, attack_sets.overrides_of(cfg), num_classes)
        return self._attack_programs[cache_key]


def _model_vars(entry: dict) -> ModelVars:
    return ModelVars(params=jax.tree.map(jnp.asarray, entry["params"]),
                     batch_stats=jax.tree.map(jnp.asarray, entry.get("batch_stats") or {}))


def make_context(config: Any, workdir: str) -> Context:
    """Validates ``config``, writes it to ``<workdir>/config.json`` and opens the run."""
    from ladder_jax.config_schema import validate_config

    validate_config(config)
    info = data.get_dataset_info(config.dataset.name)
    wd = Workdir(workdir)
    os.makedirs(wd.root, exist_ok=True)
    if parallel.is_main_process():
        wd.write_config(plain_config(config))
    return Context(config=config, wd=wd, info=info, writer=MetricWriter(wd.root),
                   progress=bool(config.progress_bar))
