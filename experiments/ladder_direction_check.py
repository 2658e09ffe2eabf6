"""Is LADDER's boundary normal d a boundary normal? The svm stage's check, for each SVM input scale.

    python -m experiments.ladder_direction_check --dataset=mnist --scale=cpu

The ``svm`` stage measures this for the run's own ``svm.latent_scaling``
(``ladder_jax.direction_check``, written to ``svm/report.json``). This
script runs the same library code (``ladder_jax.stages.svm.fit_svms`` and
``direction_report``) for the three choices side by side, with the study's
settings (same pairs, keys, splits and SGD as the stage):

* ``none``: the latents as they are (the library's former default; the
  normals stayed within cos 0.96 of their random init on MNIST);
* ``pixels255``: latents of x·255 (the authors' MNIST/SVHN code);
* ``standardize``: centred and rescaled to mean norm ``svm.fit_norm`` (the
  default).

For each: mean cos(w, w_init) (fit space), mean cos(d, mu_t - mu_y) (latent
space, class means of the training latents), held-out accuracy, and, on the
training latents the ``generate`` stage perturbs, the fraction whose vanilla
prediction (the classifier head on z') changes when pushed along beta*d at
every eps of ``svm.check_eps`` (in ``generate.eps_unit`` units: a fraction of
the mean latent norm by default), against a random direction of the same
length, and the calibrated eps. No generator is involved.

The classifier and latents come from the LADDER study's own stages (run if
missing, in the study's workdir). Writes
``experiments/results/<dataset>/<scale>/ladder_direction_check.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from experiments import ladder_study
from experiments.jsonio import read_json, write_json, write_text

SCALINGS = {
    "none": "latents as they are (the former default)",
    "pixels255": "latents of x·255 (the authors' MNIST/SVHN code)",
    "standardize": "standardized, mean norm svm.fit_norm (the default)",
}


def check_scalings(ctx) -> dict:
    """``{latent_scaling: summary}`` of the svm stage's fit and direction check."""
    from ladder_jax.stages import svm as svm_stage

    out = {}
    for scaling in SCALINGS:
        t0 = time.time()
        res, pairs = svm_stage.fit_svms(ctx, scaling)
        report = svm_stage.direction_report(ctx, res, pairs)
        heldout = np.asarray(report["heldout_accuracy"])
        out[scaling] = {
            "mean_w_norm": float(np.mean(report["w_norm"])),
            "mean_init_cos": report["mean_init_cos"],
            "mean_normal_gap_cos": report["mean_normal_gap_cos"],
            "heldout_acc": 100.0 * float(np.mean(heldout)),
            "min_heldout_acc": 100.0 * float(np.min(heldout)),
            "direction_check": report["direction_check"],
            "calibration": report["calibration"],
            "seconds": time.time() - t0,
        }
        print(scaling, json.dumps({k: v for k, v in out[scaling].items()
                                   if k != "direction_check"}), flush=True)
    return out


def write_markdown(result: dict, path: str) -> None:
    fits = result["fits"]
    first = next(iter(fits.values()))["direction_check"]
    if first["eps_unit"] == "latent_norm":
        unit = f"ε times the mean latent norm r = {first['latent_norm']:.2f}"
    else:
        unit = "ε·β⊙d (raw units)"
    L = [f"## LADDER direction check, {result['dataset']} ({result['scale']})", ""]
    L += [f"Vanilla classifier: {result['vanilla_accuracy']:.2f} % test accuracy. The "
          "attention SVMs of every ordered pair are fitted with the `svm` stage's settings for "
          "each `svm.latent_scaling`; the directions push the latents of the "
          f"{first['num_latents']} training images the `generate` stage perturbs, by {unit}.",
          ""]
    L += ["| `svm.latent_scaling` | mean ‖w‖ (fit space) | cos(w, w_init) | cos(d, μ_t−μ_y) | "
          "held-out acc. (mean / min) | calibrated ε (LADDER / random flips) |",
          "|---|---|---|---|---|---|"]
    for name, r in fits.items():
        cal = r["calibration"]
        reached = "" if cal["reached"] else ", target not reached"
        L.append(f"| `{name}`: {SCALINGS[name]} | {r['mean_w_norm']:.3f} | "
                 f"{r['mean_init_cos']:.3f} | {r['mean_normal_gap_cos']:.3f} | "
                 f"{r['heldout_acc']:.1f} / {r['min_heldout_acc']:.1f} | {cal['eps']:g} "
                 f"({100 * cal['ladder_flip']:.1f} % / {100 * cal['random_flip']:.1f} %"
                 f"{reached}) |")
    L.append("")
    eps = first["eps"]
    L += ["Flip rate: % of the pushed latents whose vanilla prediction changes, along β⊙d "
          "(LADDER; to the target t in brackets) and along a random direction of the same "
          "length per latent; mean ‖step‖ / ‖z‖ in the last row.", ""]
    L += ["| `svm.latent_scaling` | direction | " + " | ".join(f"ε={e:g}" for e in eps) + " |",
          "|---|---|" + "---|" * len(eps)]
    for name, r in fits.items():
        c = r["direction_check"]
        L.append(f"| `{name}` | LADDER | " + " | ".join(
            f"{100 * f:.1f} ({100 * t:.1f})" for f, t in zip(c["ladder_flip"],
                                                             c["ladder_to_target"])) + " |")
        random = " | ".join(f"{100 * f:.1f}" for f in c["random_flip"])
        L.append(f"| `{name}` | random | {random} |")
    L.append("| (all) | step / ‖z‖ | " + " | ".join(f"{s:.3f}" for s in
                                                   first["relative_step"]) + " |")
    L.append("")
    L.append(f"Command: `{result['command']}` ({result['seconds']:.0f} s).")
    write_text(path, "\n".join(L) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist", choices=ladder_study.DATASETS)
    # Scales that link another's vanilla model (cpu_svm255, ...) are checked there.
    parser.add_argument("--scale", default="cpu", choices=[
        s for s in ladder_study.SCALES if s not in ladder_study.UPSTREAM_SCALE])
    parser.add_argument("--runs_dir", default=ladder_study.DEFAULT_RUNS)
    parser.add_argument("--results_dir", default=ladder_study.DEFAULT_RESULTS)
    args = parser.parse_args(argv)
    if ladder_study.REPO not in sys.path:
        sys.path.insert(0, ladder_study.REPO)
    from ladder_jax.context import make_context

    t0 = time.time()
    root = os.path.join(args.runs_dir, args.dataset, args.scale)
    wd = os.path.join(root, "ladder")
    log = ladder_study.Log(root)
    overrides = ladder_study.scale_overrides(args.scale)
    for stage in ("classifier", "latents"):  # the study's own stages (skipped when done)
        ladder_study.run_stage(log, "main", args.dataset, args.scale, stage, wd, overrides)
    config = ladder_study._load_config(args.dataset, args.scale)
    ctx = make_context(config, wd)
    marker = read_json(os.path.join(wd, "markers", "classifier.json"))
    result = {"dataset": args.dataset, "scale": args.scale,
              "vanilla_accuracy": marker["info"]["test_accuracy"],
              "command": f"python -m experiments.ladder_direction_check "
                         f"--dataset={args.dataset} --scale={args.scale}",
              "fits": check_scalings(ctx)}
    result["seconds"] = time.time() - t0
    out = os.path.join(args.results_dir, args.dataset, args.scale)
    write_json(os.path.join(out, "ladder_direction_check.json"), result)
    write_markdown(result, os.path.join(out, "ladder_direction_check.md"))
    print(open(os.path.join(out, "ladder_direction_check.md")).read())


if __name__ == "__main__":
    main()
