"""How large are the logits each boundary-guided robust model is asked to copy?

    python -m experiments.lbgat_logit_scale_check --dataset=mnist --scale=cpu60k

Why: at the converged MNIST schedule, BGAT (robust model regresses onto a
*frozen*, separately trained natural model) is far more robust than LBGAT
(robust and natural model trained together). One untested reading of the
LBGAT results was that a confident natural model's logits are too hard a
regression target. BGAT's target is exactly such a model, so this script
measures what actually differs: the scale and the margin of the target
logits, and how far each robust model is from its target on clean images.

For every cached run of the LBGAT study that has a natural model (the
natural baseline, BGAT's teacher, LBGAT-family runs' jointly trained one),
on the first ``--num_examples`` test images:

* mean L2 norm of the natural model's logit vector;
* mean margin: logit of the true class minus the largest other logit;
* for runs with a robust model too: the same two figures for the robust
  model, and the mean squared logit difference robust vs natural on clean
  images (the MSE the boundary loss drives down, there on PGD examples).

Reads the study's runs cache only (nothing is trained); runs whose training
has not finished are skipped. Writes
``experiments/results/<dataset>/<scale>/lbgat_logit_scale.{json,md}``. The
runs cache is not in git, so the committed rows of runs the cache lacks are
kept (``merge_rows``): a fresh clone with one new run adds its row and drops
none.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import numpy as np

from experiments.lbgat_study import (
    DATASETS, DEFAULT_RESULTS, DEFAULT_RUNS, EXTRA_RUNS, RUNS, SCALES, in_study_order)
from experiments.jsonio import read_json, write_json, write_text

# Which natural model a run's robust model is trained to copy, when it is not
# stored in the run's own state (BGAT's is frozen and loaded from the teacher).
_TEACHER_RUN = {"bgat": "natural"}


def logit_stats(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean L2 norm and mean true-class margin of a batch of logit vectors."""
    true = logits[np.arange(len(labels)), labels]
    others = logits.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    return {
        "logit_norm": float(np.linalg.norm(logits, axis=1).mean()),
        "margin": float((true - others.max(axis=1)).mean()),
        "accuracy": float((logits.argmax(axis=1) == labels).mean()),
    }


def _logits(workdir: str, which: str, x: np.ndarray) -> np.ndarray:
    import jax
    import jax.numpy as jnp

    from advcore import evaluation as ev

    apply_fn, variables, _ = ev.load_evaluable(workdir, which=which)
    fn = jax.jit(apply_fn)
    return np.concatenate([np.asarray(fn(variables, jnp.asarray(x[i:i + 500])))
                           for i in range(0, len(x), 500)])


def _has_model(workdir: str, which: str) -> bool:
    from advcore import checkpoint as ckpt_lib

    try:
        state, _, _ = ckpt_lib.load_raw_state(workdir)
    except FileNotFoundError:
        return False
    return bool(state.get(which))


def measure(dataset: str, scale: str, runs_dir: str, n: int) -> dict[str, dict]:
    from advcore.data import load_split

    test = load_split(dataset, "test", limit=n)
    x = test.images.astype(np.float32) / 255.0
    labels = np.asarray(test.labels)
    out: dict[str, dict] = {}
    for run in RUNS + EXTRA_RUNS:
        workdir = os.path.join(runs_dir, dataset, scale, run.key)
        # Only finished runs: a half-trained model's logits say nothing about
        # where training ends (runs resume, so a cut-off one is on disk).
        if not (read_json(os.path.join(workdir, "study_train.json")) or {}).get("finished"):
            continue
        natural_dir = workdir
        if run.key in _TEACHER_RUN:
            natural_dir = os.path.join(runs_dir, dataset, scale, _TEACHER_RUN[run.key])
        row: dict[str, dict] = {}
        # The natural baseline stores its model in the 'robust' slot.
        nat_which = "robust" if run.key == "natural" else "natural"
        if run.key in _TEACHER_RUN:
            nat_which = "robust"
        if _has_model(natural_dir, nat_which):
            nat = _logits(natural_dir, nat_which, x)
            row["natural"] = logit_stats(nat, labels)
        else:
            nat = None
        if run.key != "natural" and _has_model(workdir, "robust"):
            rob = _logits(workdir, "robust", x)
            row["robust"] = logit_stats(rob, labels)
            if nat is not None:
                row["robust_vs_natural_mse"] = float(((rob - nat) ** 2).sum(axis=1).mean())
        if row:
            out[run.key] = {"label": run.label, **row}
            print(f"[{run.key}] {json.dumps(row)}", flush=True)
    return out


def merge_rows(measured: dict[str, dict], committed: Optional[dict],
               n: int) -> dict[str, dict]:
    """``measured`` plus the committed rows of runs it lacks, in the study's order.

    A measured row replaces the committed one (the cache holds the model now).
    Committed rows taken on another number of test images are dropped, since
    their figures are not comparable.
    """
    old = (committed or {}).get("rows") or {}
    if (committed or {}).get("num_examples") != n:
        old = {}
    return in_study_order({**old, **measured})


def to_markdown(rows: dict[str, dict], n: int) -> str:
    lines = [
        f"Clean logits on the first {n} test images. Natural = the model the robust "
        "model is trained to copy (BGAT: its frozen teacher; LBGAT family: the "
        "jointly trained one). MSE = mean over images of the squared L2 distance "
        "between robust and natural logits (summed over classes).",
        "",
        "| run | natural ‖logits‖ | natural margin | robust ‖logits‖ | robust margin | robust−natural MSE |",
        "|---|---|---|---|---|---|",
    ]

    def cell(row, part, field):
        return f"{row[part][field]:.2f}" if part in row else "–"

    for row in rows.values():
        mse = f"{row['robust_vs_natural_mse']:.2f}" if "robust_vs_natural_mse" in row else "–"
        lines.append(
            f"| {row['label']} | {cell(row, 'natural', 'logit_norm')} | "
            f"{cell(row, 'natural', 'margin')} | {cell(row, 'robust', 'logit_norm')} | "
            f"{cell(row, 'robust', 'margin')} | {mse} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=DATASETS)
    parser.add_argument("--scale", default="cpu60k", choices=SCALES)
    parser.add_argument("--runs_dir", default=DEFAULT_RUNS)
    parser.add_argument("--results_dir", default=DEFAULT_RESULTS)
    parser.add_argument("--num_examples", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.num_examples < 1:
        sys.exit(f"--num_examples must be >= 1, got {args.num_examples}")
    measured = measure(args.dataset, args.scale, args.runs_dir, args.num_examples)
    if not measured:
        sys.exit(f"no cached runs under {args.runs_dir}/{args.dataset}/{args.scale}")
    out_dir = os.path.join(args.results_dir, args.dataset, args.scale)
    json_path = os.path.join(out_dir, "lbgat_logit_scale.json")
    rows = merge_rows(measured, read_json(json_path), args.num_examples)
    write_json(json_path, {"num_examples": args.num_examples, "rows": rows})
    write_text(os.path.join(out_dir, "lbgat_logit_scale.md"),
               to_markdown(rows, args.num_examples))
    print(to_markdown(rows, args.num_examples))


if __name__ == "__main__":
    main()
