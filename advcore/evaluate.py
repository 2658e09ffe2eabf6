"""Command line: robust accuracy of a saved run, at the threat model it was trained for.

    python -m advcore.evaluate --workdir=DIR                         # the run's own eval attacks
    python -m advcore.evaluate --workdir=DIR --attacks=pgd40,aa_standard --n=1000
    python -m advcore.evaluate --workdir=DIR --attacks=aa_standard --cpu_devices=2  # 2-core CPU
    python -m advcore.evaluate --workdir=DIR --transfer_from=SOURCE_DIR  # black box

A checkpoint that was not trained here (PyTorch ``.pt``/``.pth``,
``safetensors``, a Flax/orbax run) is named by architecture and file::

    python -m advcore.evaluate --arch=preact_resnet18 --checkpoint=model.pt \
        --dataset=cifar10 --eps=0.031373 --attacks=pgd20,aa_standard

(``advcore.external``; it has no saved threat model, so ``--eps`` is required).

ε, the norm, the attacks and their step sizes come from the run's saved run
spec (what the model was trained for: an MNIST run trained at ε = 0.3 is
evaluated at 0.3); ``--eps``, ``--norm``, ``--attacks`` and ``--step_size``
override them. The result is printed and written to
``DIR/eval_<model>[_transfer].{md,json}`` with the whole threat model.
The library functions are in ``advcore.evaluation``.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from absl import flags

from advcore import cli, evaluation, external
from advcore.data import get_dataset_info

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.")
_MODEL = flags.DEFINE_string("model", "", "Which model of the run (default: the run's "
                             "default, e.g. 'robust'; LBGAT runs also have 'natural').")
_ATTACKS = flags.DEFINE_list("attacks", [], "Attack names (advcore.attacks.make_attack); "
                             "default: the run's evaluation attacks.")
_EPS = flags.DEFINE_float("eps", None, "Override the run's eps (pixel units in [0, 1]).")
_NORM = flags.DEFINE_enum("norm", None, ["linf", "l2", "l1"], "Override the run's norm.")
_STEP = flags.DEFINE_float("step_size", None, "Override every attack's step size "
                           "(default: each preset's own rule relative to eps).")
_N = flags.DEFINE_integer("n", 1000, "Number of test examples (the first n of the split).")
_SPLIT = flags.DEFINE_string("split", "", "Dataset split (default: the run's test split).")
_BATCH = flags.DEFINE_integer("batch_size", 200, "Global evaluation batch size.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the attacks' random starts.")
_TRANSFER = flags.DEFINE_string("transfer_from", "", "Workdir of a source model: craft the "
                                "attacks on it and score this run's model (black box).")
_OUT = flags.DEFINE_string("out_dir", "", "Where to write the result (default: --workdir, "
                           "or the checkpoint's folder).")
_ARCH = flags.DEFINE_string("arch", "", "External checkpoint: the architecture ("
                            "advcore.external.SUPPORTED_ARCHS).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "", "External checkpoint: a .pt/.pth, "
                                  ".safetensors file or a run's workdir.")
_DATASET = flags.DEFINE_string("dataset", "", "External checkpoint: the dataset to evaluate on.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 0, "External checkpoint: number of "
                                    "classes (default: the dataset's).")
_MODEL_KWARGS = flags.DEFINE_string("model_kwargs", "", "External checkpoint: JSON dict of "
                                    "architecture arguments, e.g. '{\"depth\": 34}'.")
_NORMALIZATION = flags.DEFINE_string(
    "normalization", "none", "External checkpoint: the input normalisation it expects: "
    "'none' or JSON {\"mean\": [...], \"std\": [...]} (applied inside the model).")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {list(argv[1:])}")
    if bool(_WORKDIR.value) == bool(_CHECKPOINT.value):
        raise ValueError("give either --workdir (a run of this library) or --arch with "
                         "--checkpoint (a checkpoint trained elsewhere)")
    cli.setup("evaluate")
    if _CHECKPOINT.value:
        payload = _evaluate_external()
        print(evaluation.format_payload(payload))
        return
    payload = evaluation.evaluate_run(
        _WORKDIR.value, model=_MODEL.value or None, attacks=_ATTACKS.value or None,
        eps=_EPS.value, norm=_NORM.value, step_size=_STEP.value, n=_N.value,
        split=_SPLIT.value or None, batch_size=_BATCH.value, seed=_SEED.value,
        transfer_from=_TRANSFER.value, out_dir=_OUT.value or None)
    print(evaluation.format_payload(payload))


def _evaluate_external() -> dict:
    if not _ARCH.value or not _DATASET.value:
        raise ValueError("--checkpoint needs --arch and --dataset")
    if _EPS.value is None:
        raise ValueError("--checkpoint needs --eps: an external checkpoint records no threat "
                         "model (e.g. --eps=0.031373 for 8/255)")
    try:
        kwargs = json.loads(_MODEL_KWARGS.value) if _MODEL_KWARGS.value else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"--model_kwargs must be a JSON dict, got {_MODEL_KWARGS.value!r} "
                         f"({err})") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--model_kwargs must be a JSON dict, got {_MODEL_KWARGS.value!r}")
    num_classes = _NUM_CLASSES.value or get_dataset_info(_DATASET.value).num_classes
    loaded = external.load_external_model(
        _ARCH.value, _CHECKPOINT.value, num_classes,
        normalization=external.parse_normalization(_NORMALIZATION.value), kwargs=kwargs)
    out_dir = _OUT.value or os.path.dirname(os.path.abspath(_CHECKPOINT.value))
    name = os.path.splitext(os.path.basename(os.path.normpath(_CHECKPOINT.value)))[0]
    threat = {"norm": _NORM.value or "linf", "eps": _EPS.value,
              "attacks": _ATTACKS.value or ["pgd20"], "step_size": _STEP.value}
    return evaluation.evaluate_model(
        loaded.apply_fn, loaded.variables, label=f"{_ARCH.value} ({name})",
        dataset={"name": _DATASET.value}, split=_SPLIT.value or "test", n=_N.value,
        threat_model=threat, batch_size=_BATCH.value, seed=_SEED.value,
        out_prefix=os.path.join(out_dir, f"eval_{name}"), extra={"model_spec": loaded.spec})


def run() -> None:
    """Console-script entry point."""
    cli.run(main)


if __name__ == "__main__":
    run()
