"""Command line: robust accuracy of a saved run, at the threat model it was trained for.

    python -m advcore.evaluate --workdir=DIR                         # the run's own eval attacks
    python -m advcore.evaluate --workdir=DIR --attacks=pgd40,aa_standard --n=1000
    python -m advcore.evaluate --workdir=DIR --attacks=aa_standard --cpu_devices=2  # 2-core CPU
    python -m advcore.evaluate --workdir=DIR --transfer_from=SOURCE_DIR  # black box

ε, the norm, the attacks and their step sizes come from the run's saved run
spec (what the model was trained for: an MNIST run trained at ε = 0.3 is
evaluated at 0.3); ``--eps``, ``--norm``, ``--attacks`` and ``--step_size``
override them. The result is printed and written to
``DIR/eval_<model>[_transfer].{md,json}`` with the whole threat model.
The library functions are in ``advcore.evaluation``.
"""

from __future__ import annotations

from typing import Sequence

from absl import flags

from advcore import cli, evaluation

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
_OUT = flags.DEFINE_string("out_dir", "", "Where to write the result (default: --workdir).")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {list(argv[1:])}")
    if not _WORKDIR.value:
        raise ValueError("--workdir is required: a training run's workdir")
    cli.setup("evaluate")
    payload = evaluation.evaluate_run(
        _WORKDIR.value, model=_MODEL.value or None, attacks=_ATTACKS.value or None,
        eps=_EPS.value, norm=_NORM.value, step_size=_STEP.value, n=_N.value,
        split=_SPLIT.value or None, batch_size=_BATCH.value, seed=_SEED.value,
        transfer_from=_TRANSFER.value, out_dir=_OUT.value or None)
    print(evaluation.format_payload(payload))


def run() -> None:
    """Console-script entry point."""
    cli.run(main)


if __name__ == "__main__":
    run()
