"""Does LADDER's boundary normal d carry the SVM's boundary, or its random init?

    python -m experiments.ladder_direction_check --dataset=mnist --scale=cpu

Why: the LADDER studies found ‖w‖ ≈ 0.53 for every attention SVM, and
LADDER, cavRandom and Random examples that fool the vanilla model equally
often. PyTorch's default init of the SVM's fc weight, U(±1/√D), has norm
1/√3 ≈ 0.577 whatever D, and the code's penalty mean_j(w_j²) shrinks it by
only exp(-2·lr·steps/D) ≈ 0.90 over 10 epochs of 268 batch-1 steps
(D = 500). The hinge term is weighted by c = 0.01, so on latents of [0, 1]
images (‖z‖ ≈ 45) each violating step moves w by about lr·c·‖z‖ ≈ 0.005:
the fitted normal may be mostly its random init. The authors' MNIST/SVHN
code fits the SVMs on latents of x·255 (SPEC 3.3, ``svm.legacy_pixel_scale``),
which makes every hinge step ~255× larger.

This script measures, for SVMs fitted both ways with the study's own
settings (same pairs, keys, splits and SGD as the ``svm`` stage):

* per pair: ‖w‖, the norm of its init w0, cos(w, w0), and cos(w, μ_t − μ_y)
  (μ: mean [0, 1]-image latent of a class over the SVM's samples);
* on the 4,500 training images the ``generate`` stage perturbs (source y,
  random target t), with z' = z + ε·β⊙d as in Eq. 3 and d = w (LADDER),
  w + N(0, 0.01²) (cavRandom) or N(0, 0.1²) (Random): how often the vanilla
  classifier's head on z' predicts t, or any class other than y, and the
  relative step ‖ε·β⊙d‖ / ‖z‖.

No generator is involved: this isolates the direction from decoding. The
classifier and latents come from the LADDER study's own stages (run if
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

EPS_GRID = (0.5, 2.0, 5.0, 10.0, 20.0, 30.0)
SCALES = {"[0,1] (library default)": 1.0, "x·255 (authors' MNIST code)": 255.0}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def fit_svms(ctx, scale: float):
    """(PairResult, w0 (P, D), pairs (P, 2)) as the ``svm`` stage, at input scale ``scale``."""
    import jax
    import jax.numpy as jnp

    from ladder_jax import attention_svm, streams

    s = ctx.config.svm
    k = ctx.num_classes
    labels = np.asarray(ctx.latents("train")["labels"])
    n = int(min(s.samples_per_class, np.bincount(labels, minlength=k).min()))
    idx = np.stack([np.nonzero(labels == c)[0][:n] for c in range(k)])
    z, _ = ctx.compute_latents(ctx.train_set().images[idx.reshape(-1)], scale=scale)
    class_z = jnp.asarray(z.reshape(k, n, -1))
    pairs = attention_svm.ordered_pairs(k)
    keys = attention_svm.pair_keys(streams.jax_key(ctx.config.seed, "svm_pairs"), pairs, k)
    res = attention_svm.train_pairs(keys, class_z, jnp.asarray(pairs), test_size=s.test_size,
                                    c=s.c, lr=s.lr, epochs=s.epochs, batch_size=s.batch_size,
                                    use_exp=s.attention_exp)
    w0 = jax.vmap(lambda key: attention_svm.plan_pair(
        key, n, class_z.shape[-1], test_size=s.test_size, epochs=s.epochs,
        batch_size=s.batch_size).params0.w)(keys)
    return res, np.asarray(w0), pairs, idx


def flip_rates(ctx, params, pairs, seed: int) -> dict:
    """Latent flip / target-hit rates and relative step size per variant and ε."""
    import jax
    import jax.numpy as jnp

    from ladder_jax import attention_svm

    use_exp = ctx.config.svm.attention_exp
    idx, sources, targets = ctx.selected_train_images()
    z = jnp.asarray(np.asarray(ctx.latents("train")["z"][idx], np.float32))
    pair_of = attention_svm.pair_index_table(pairs, ctx.num_classes)[sources, targets]
    # beta of each image's own z under its pair's attention, one pair at a time
    # (gathering a (D, D) attention kernel per image would take gigabytes).
    beta = np.zeros(z.shape, np.float32)
    for p in np.unique(pair_of):
        rows = np.nonzero(pair_of == p)[0]
        params_p = jax.tree.map(lambda a: jnp.asarray(a)[p], params)
        beta[rows] = np.asarray(attention_svm.attention(params_p, z[rows], use_exp))
    w = jnp.asarray(np.asarray(params.w)[pair_of])  # (N, D): each image's d = w
    clf, mv = ctx.classifier, ctx.vanilla
    predict = jax.jit(lambda zz: clf.predict_logits(clf.classify(mv, zz)))
    gc = ctx.config.generate
    k_cav, k_rand = jax.random.split(jax.random.key(seed))
    # The generate stage's variants (ladder_jax.perturb.directions), per image.
    d = {"LADDER": w,
         "cavRandom": w + gc.cav_random_std * jax.random.normal(k_cav, w.shape),
         "Random": gc.random_std * jax.random.normal(k_rand, w.shape)}
    y, t = jnp.asarray(sources), jnp.asarray(targets)
    znorm = jnp.linalg.norm(z, axis=-1)
    out = {}
    for name, dd in d.items():
        rows = {}
        for eps in EPS_GRID:
            step = eps * beta * dd
            pred = predict(z + step)
            rows[f"{eps:g}"] = {
                "off_source": 100.0 * float(jnp.mean(pred != y)),
                "to_target": 100.0 * float(jnp.mean(pred == t)),
                "rel_step": float(jnp.mean(jnp.linalg.norm(step, axis=-1) / znorm)),
            }
        out[name] = rows
    out["clean_off_source"] = 100.0 * float(jnp.mean(predict(z) != y))
    out["num_images"] = int(len(idx))
    return out


def pair_stats(res, w0, class_z_unit: np.ndarray, pairs: np.ndarray) -> dict:
    w = np.asarray(res.params.w)
    mu = class_z_unit.mean(axis=1)  # (K, D)
    gap = mu[pairs[:, 1]] - mu[pairs[:, 0]]  # from source y toward target t
    cos_init = np.sum(_unit(w) * _unit(w0), axis=-1)
    cos_gap = np.sum(_unit(w) * _unit(gap), axis=-1)
    cos_moved_gap = np.sum(_unit(w - w0) * _unit(gap), axis=-1)
    return {"w_norm": float(np.mean(np.linalg.norm(w, axis=-1))),
            "w0_norm": float(np.mean(np.linalg.norm(w0, axis=-1))),
            "cos_w_w0": float(np.mean(cos_init)),
            "cos_w_gap": float(np.mean(cos_gap)),
            "cos_update_gap": float(np.mean(cos_moved_gap)),
            "heldout_acc": 100.0 * float(np.mean(np.asarray(res.heldout_acc))),
            "min_heldout_acc": 100.0 * float(np.min(np.asarray(res.heldout_acc)))}


def write_markdown(result: dict, path: str) -> None:
    L = [f"## LADDER direction check, {result['dataset']} ({result['scale']})", ""]
    L += [f"Vanilla classifier: {result['vanilla_accuracy']:.2f} % test accuracy. "
          "SVMs fitted with the `svm` stage's settings on latents of images at two input "
          "scales; directions applied to the latents of the "
          f"{result['num_images']} training images the `generate` stage perturbs "
          f"(the vanilla classifier's head predicts another class than y for "
          f"{result['clean_off_source']:.2f} % of the unperturbed latents).", ""]
    L += ["| SVM inputs | mean ‖w‖ | mean ‖w0‖ (init) | cos(w, w0) | cos(w, μ_t−μ_y) | "
          "cos(w−w0, μ_t−μ_y) | held-out acc. (mean / min) |", "|---|---|---|---|---|---|---|"]
    for name, r in result["fits"].items():
        p = r["pairs"]
        L.append(f"| {name} | {p['w_norm']:.3f} | {p['w0_norm']:.3f} | {p['cos_w_w0']:.3f} | "
                 f"{p['cos_w_gap']:.3f} | {p['cos_update_gap']:.3f} | "
                 f"{p['heldout_acc']:.1f} / {p['min_heldout_acc']:.1f} |")
    L.append("")
    eps = list(EPS_GRID)
    L += ["Latent flip rate: % of perturbed latents the vanilla head assigns to another "
          "class than the source y (to the target t in brackets); mean ‖ε·β⊙d‖ / ‖z‖ "
          "below each.", ""]
    L += ["| SVM inputs | direction | " + " | ".join(f"ε={e:g}" for e in eps) + " |",
          "|---|---|" + "---|" * len(eps)]
    for name, r in result["fits"].items():
        for variant in ("LADDER", "cavRandom", "Random"):
            rows = r["flips"][variant]
            cells = [f"{rows[f'{e:g}']['off_source']:.1f} ({rows[f'{e:g}']['to_target']:.1f})"
                     f"<br>step {rows[f'{e:g}']['rel_step']:.3f}" for e in eps]
            L.append(f"| {name} | {variant} | " + " | ".join(cells) + " |")
    L.append("")
    L.append(f"Command: `{result['command']}` ({result['seconds']:.0f} s).")
    write_text(path, "\n".join(L) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist", choices=ladder_study.DATASETS)
    # Scales that link another's vanilla model (cpu_svm255) are checked there.
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
    result = {"dataset": args.dataset, "scale": args.scale, "fits": {},
              "vanilla_accuracy": marker["info"]["test_accuracy"],
              "command": f"python -m experiments.ladder_direction_check "
                         f"--dataset={args.dataset} --scale={args.scale}"}
    class_z_unit = None
    for name, scale in SCALES.items():
        res, w0, pairs, idx = fit_svms(ctx, scale)
        if class_z_unit is None:
            k, n = idx.shape
            class_z_unit = np.asarray(ctx.latents("train")["z"][idx.reshape(-1)],
                                      np.float32).reshape(k, n, -1)
        flips = flip_rates(ctx, res.params, pairs, seed=config.seed)
        result["num_images"] = flips.pop("num_images")
        result["clean_off_source"] = flips.pop("clean_off_source")
        result["fits"][name] = {"input_scale": scale,
                                "pairs": pair_stats(res, w0, class_z_unit, pairs),
                                "flips": flips}
        print(name, json.dumps(result["fits"][name]["pairs"]), flush=True)
    result["seconds"] = time.time() - t0
    out = os.path.join(args.results_dir, args.dataset, args.scale)
    write_json(os.path.join(out, "ladder_direction_check.json"), result)
    write_markdown(result, os.path.join(out, "ladder_direction_check.md"))
    print(open(os.path.join(out, "ladder_direction_check.md")).read())


if __name__ == "__main__":
    main()
