"""Stage 4: attention SVMs for all ordered class pairs, and the check that d is a boundary normal.

Each pair (y, t) separates the first ``svm.samples_per_class`` training
latents of class y (label -1) from those of class t (+1), in the fit space
``svm.latent_scaling`` chooses (``attention_svm``: 'standardize' by default,
'none', or the authors' 'pixels255'). The stage stores every pair's
parameters and its fit space (``att_w``, ``att_b``, ``w``, ``b``, ``mu``,
``sigma``), then runs the direction check (``ladder_jax.direction_check``)
on the training latents LADDER perturbs and writes ``svm/report.json``:
train / held-out accuracy, cos(w, w_init), cos(d, mu_t - mu_y), the flip
fractions of LADDER's push and of a same-length random push at every eps of
``svm.check_eps`` (in ``generate.eps_unit`` units), and the calibrated eps
(the smallest of them flipping at least ``svm.flip_target`` of the latents).

It fails with one line (``UntrainedNormalsError``) when the normals stayed
at their random init, unless ``svm.allow_untrained_normals`` (the legacy
reproductions) lets it go on with a warning.
"""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np

from advcore import files
from advcore.batching import map_batches
from ladder_jax import attention_svm, direction_check, streams
from ladder_jax.units import Unit, config_values

log = logging.getLogger("ladder_jax")

STAGE = "svm"
OUTPUT = "svm"


def units(ctx) -> list[Unit]:
    c = ctx.config
    # The check perturbs the selected training images (per-class cap, seed) in
    # the run's eps unit and classifies them with the vanilla head; the
    # 'pixels255' fit recomputes latents through the vanilla model.
    settings = config_values(c, "svm", "seed", "generate.eps_unit", "generate.per_class_cap")
    return [Unit("svm", STAGE, settings, train_svms, inputs=("latents", "classifier"),
                 outputs=(OUTPUT,))]


def samples_per_class(ctx) -> int:
    """min(svm.samples_per_class, the smallest class count); at least 2."""
    labels = np.asarray(ctx.latents("train")["labels"])
    smallest = int(np.bincount(labels, minlength=ctx.num_classes).min())
    if smallest < 2:
        raise ValueError(f"svm.samples_per_class: every class needs >= 2 training images, "
                         f"the smallest class has {smallest}")
    return int(min(ctx.config.svm.samples_per_class, smallest))


def class_latents(ctx, latent_scaling: str | None = None) -> np.ndarray:
    """(K, n, D): the first n training latents of every class, in dataset order.

    ``latent_scaling`` defaults to ``svm.latent_scaling`` ('pixels255'
    recomputes them from x*255 images).

    n = min(samples_per_class, smallest class count): every pair then has the
    same shapes, so all pairs train in one vmapped program. On the full
    datasets every class has >= 200 images, which matches the code's per-pair
    truncation to the smaller class.
    """
    s = ctx.config.svm
    lat = ctx.latents("train")
    labels = np.asarray(lat["labels"])
    k = ctx.num_classes
    n = samples_per_class(ctx)
    idx = np.stack([np.nonzero(labels == c)[0][:n] for c in range(k)])  # (K, n)
    if (latent_scaling or s.latent_scaling) == "pixels255":
        # The authors' MNIST/SVHN code fits the SVMs on latents of x in [0, 255].
        z, _ = ctx.compute_latents(ctx.train_set().images[idx.reshape(-1)], scale=255.0)
        return z.reshape(k, n, -1)
    return np.asarray(lat["z"][idx.reshape(-1)], np.float32).reshape(k, n, -1)


def _latent_statistics(z: np.ndarray, labels: np.ndarray, num_classes: int,
                       chunk: int = 8192) -> tuple[np.ndarray, float]:
    """(class means (K, D), mean latent norm r) of the training latents, in chunks."""
    sums = np.zeros((num_classes, z.shape[1]), np.float64)
    norm_sum = 0.0
    for i in range(0, len(z), chunk):
        zc = np.asarray(z[i:i + chunk], np.float64)
        np.add.at(sums, np.asarray(labels[i:i + chunk]), zc)
        norm_sum += float(np.sum(np.linalg.norm(zc, axis=-1)))
    counts = np.bincount(np.asarray(labels), minlength=num_classes)
    return sums / np.maximum(counts, 1)[:, None], norm_sum / max(len(z), 1)


def fit_svms(ctx, latent_scaling: str | None = None
             ) -> tuple[attention_svm.PairResult, np.ndarray]:
    """Every ordered pair's SVM as the stage fits it: (result with a pair axis, pairs).

    ``latent_scaling`` defaults to ``svm.latent_scaling`` (the direction-check
    experiment compares the three). ``svm.legacy_unordered_svm_cache`` is
    applied to the result's parameters.
    """
    c, s = ctx.config, ctx.config.svm
    scaling = latent_scaling or s.latent_scaling
    k = ctx.num_classes
    class_z = jnp.asarray(class_latents(ctx, scaling))
    pairs = attention_svm.ordered_pairs(k)
    keys = attention_svm.pair_keys(streams.jax_key(c.seed, "svm_pairs"), pairs, k)
    kwargs = dict(test_size=s.test_size, c=s.c, lr=s.lr, epochs=s.epochs,
                  batch_size=s.batch_size, use_exp=s.attention_exp,
                  fit_norm=s.fit_norm if scaling == "standardize" else None)

    def train_chunk(rows):
        # Every chunk has one shape (the last is padded), so one compiled program.
        return attention_svm.train_pairs(keys[rows], class_z, jnp.asarray(pairs)[rows], **kwargs)

    res = map_batches(train_chunk, (np.arange(len(pairs), dtype=np.int32),),
                      batch_size=s.pair_chunk_size or len(pairs), progress=ctx.progress,
                      desc="svm")
    if s.legacy_unordered_svm_cache:
        res = res._replace(params=attention_svm.apply_legacy_unordered_cache(res.params, pairs))
    return res, pairs


def direction_report(ctx, res: attention_svm.PairResult, pairs: np.ndarray) -> dict:
    """The fitted SVMs' statistics, the direction check and the calibrated eps.

    The check perturbs the training latents LADDER perturbs
    (``Context.selected_train_images``) at every eps of ``svm.check_eps`` in
    ``generate.eps_unit`` units.
    """
    c, s = ctx.config, ctx.config.svm
    svms = res.svm
    lat = ctx.latents("train")
    means, latent_norm = _latent_statistics(lat["z"], np.asarray(lat["labels"]),
                                            ctx.num_classes)
    gap_cos = direction_check.normal_gap_cos(svms, pairs, means)
    idx, sources, targets = ctx.selected_train_images()
    clf, mv = ctx.classifier, ctx.vanilla
    check = direction_check.direction_check(
        lambda z: clf.latent_pred(mv, z), svms, pairs,
        np.asarray(lat["z"][idx], np.float32), sources, targets,
        eps_values=tuple(s.check_eps), eps_unit=c.generate.eps_unit, latent_norm=latent_norm,
        use_exp=s.attention_exp, rng=streams.numpy_rng(c.seed, "svm_direction_check"))
    eps, reached = direction_check.calibrate(check["eps"], check["ladder_flip"], s.flip_target)
    at = check["eps"].index(eps)
    init_cos = np.asarray(res.init_cos)
    return {
        "pairs": np.asarray(pairs).tolist(),
        "train_accuracy": np.asarray(res.train_acc).tolist(),
        "heldout_accuracy": np.asarray(res.heldout_acc).tolist(),
        "w_norm": np.linalg.norm(np.asarray(res.params.w), axis=1).tolist(),  # fit space
        "init_cos": init_cos.tolist(),  # fit space
        "normal_gap_cos": gap_cos.tolist(),  # latent space
        "mean_init_cos": float(np.mean(init_cos)),
        "mean_normal_gap_cos": float(np.mean(gap_cos)),
        "untrained_cos_threshold": direction_check.UNTRAINED_COS,
        "attention_exp": s.attention_exp,
        "mean_latent_norm": latent_norm,
        "direction_check": check,
        "calibration": {"eps": eps, "reached": reached, "flip_target": s.flip_target,
                        "eps_unit": c.generate.eps_unit, "ladder_flip": check["ladder_flip"][at],
                        "random_flip": check["random_flip"][at]},
    }


def train_svms(ctx, identity: dict) -> dict:
    del identity  # no checkpoints: the SVMs are written whole
    c, s = ctx.config, ctx.config.svm
    res, pairs = fit_svms(ctx)
    out = ctx.wd.ensure_dir(OUTPUT)
    for name, value in {**res.params._asdict(), **res.scale._asdict()}.items():
        np.save(f"{out}/{name}.npy", np.asarray(value, np.float32))
    np.save(f"{out}/pairs.npy", pairs)
    report = {"latent_scaling": s.latent_scaling,
              "fit_norm": s.fit_norm if s.latent_scaling == "standardize" else None,
              "samples_per_class": samples_per_class(ctx),
              **direction_report(ctx, res, pairs)}
    files.write_json(f"{out}/report.json", report)
    check, cal = report["direction_check"], report["calibration"]
    log.info("svm (%s): mean cos(w, w_init) %.3f, mean cos(d, mu_t - mu_y) %.3f, held-out "
             "accuracy %.1f %%", s.latent_scaling, report["mean_init_cos"],
             report["mean_normal_gap_cos"], 100 * float(np.mean(res.heldout_acc)))
    log.info(direction_check.format_table(check))
    calibration = (f"calibrated eps = {cal['eps']:g} ({c.generate.eps_unit} units): LADDER "
                   f"flips {100 * cal['ladder_flip']:.1f} % of the training latents, a random "
                   f"direction {100 * cal['random_flip']:.1f} %")
    if cal["reached"]:
        log.info("%s (target %.0f %%)", calibration, 100 * s.flip_target)
    else:
        log.warning("%s: no eps of svm.check_eps reaches svm.flip_target = %g, so the largest "
                    "is used", calibration, s.flip_target)
    # Raises only now, so that the parameters and the report can be inspected.
    warning = direction_check.require_trained_normals(report["mean_init_cos"],
                                                      s.allow_untrained_normals)
    if warning:
        log.warning(warning)
    return {"mean_train_accuracy": float(np.mean(res.train_acc)),
            "mean_init_cos": report["mean_init_cos"],
            "mean_normal_gap_cos": report["mean_normal_gap_cos"],
            "mean_heldout_accuracy": float(np.mean(res.heldout_acc)),
            "min_heldout_accuracy": float(np.min(res.heldout_acc)),
            "mean_w_norm": float(np.mean(report["w_norm"])),
            "mean_latent_norm": report["mean_latent_norm"],
            "calibrated_eps": cal["eps"],
            "calibration_reached": bool(cal["reached"]),
            "ladder_flip_at_calibrated_eps": cal["ladder_flip"],
            "random_flip_at_calibrated_eps": cal["random_flip"],
            "num_pairs": int(len(pairs))}
