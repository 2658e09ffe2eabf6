"""Stage 4: attention SVMs for all ordered class pairs, in vmapped chunks of pairs.

Each pair (y, t) separates the first ``svm.samples_per_class`` training
latents of class y (label -1) from those of class t (+1); ``attention_svm``
has the model and its training. The stage stores every pair's parameters and
reports train / held-out accuracy, ‖w‖ and cos(w, w_init) (a warning when the
normals barely left their random init).
"""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np

from advcore import files
from advcore.batching import map_batches
from ladder_jax import attention_svm, streams
from ladder_jax.units import Unit, config_values

log = logging.getLogger("ladder_jax")

STAGE = "svm"
OUTPUT = "svm"


def units(ctx) -> list[Unit]:
    c = ctx.config
    # x*255 latents are recomputed through the vanilla model.
    inputs = ("classifier", "latents") if c.svm.legacy_pixel_scale else ("latents",)
    return [Unit("svm", STAGE, config_values(c, "svm", "seed"), train_svms, inputs=inputs,
                 outputs=(OUTPUT,))]


def class_latents(ctx) -> np.ndarray:
    """(K, n, D): the first n training latents of every class, in dataset order.

    n = min(samples_per_class, smallest class count): every pair then has the
    same shapes, so all pairs train in one vmapped program. On the full
    datasets every class has >= 200 images, which matches the code's per-pair
    truncation to the smaller class.
    """
    s = ctx.config.svm
    lat = ctx.latents("train")
    labels = np.asarray(lat["labels"])
    k = ctx.num_classes
    counts = np.bincount(labels, minlength=k)
    n = int(min(s.samples_per_class, counts.min()))
    if n < 2:
        raise ValueError(f"svm.samples_per_class: every class needs >= 2 training images, "
                         f"the smallest class has {int(counts.min())}")
    idx = np.stack([np.nonzero(labels == c)[0][:n] for c in range(k)])  # (K, n)
    if s.legacy_pixel_scale:
        # The authors' MNIST/SVHN code fits the SVMs on latents of x in [0, 255].
        z, _ = ctx.compute_latents(ctx.train_set().images[idx.reshape(-1)], scale=255.0)
        return z.reshape(k, n, -1)
    return np.asarray(lat["z"][idx.reshape(-1)], np.float32).reshape(k, n, -1)


def train_svms(ctx, identity: dict) -> dict:
    del identity  # no checkpoints: the SVMs are written whole
    s = ctx.config.svm
    k = ctx.num_classes
    class_z = jnp.asarray(class_latents(ctx))
    pairs = attention_svm.ordered_pairs(k)
    keys = attention_svm.pair_keys(streams.jax_key(ctx.config.seed, "svm_pairs"), pairs, k)
    kwargs = dict(test_size=s.test_size, c=s.c, lr=s.lr, epochs=s.epochs,
                  batch_size=s.batch_size, use_exp=s.attention_exp)

    def train_chunk(rows):
        # Every chunk has one shape (the last is padded), so one compiled program.
        return attention_svm.train_pairs(keys[rows], class_z, jnp.asarray(pairs)[rows], **kwargs)

    res = map_batches(train_chunk, (np.arange(len(pairs), dtype=np.int32),),
                      batch_size=s.pair_chunk_size or len(pairs), progress=ctx.progress,
                      desc="svm")
    params = res.params
    if s.legacy_unordered_svm_cache:
        params = attention_svm.apply_legacy_unordered_cache(params, pairs)
    out = ctx.wd.ensure_dir(OUTPUT)
    for name, value in params._asdict().items():
        np.save(f"{out}/{name}.npy", np.asarray(value, np.float32))
    np.save(f"{out}/pairs.npy", pairs)
    report = {
        "pairs": pairs.tolist(),
        "train_accuracy": np.asarray(res.train_acc).tolist(),
        "heldout_accuracy": np.asarray(res.heldout_acc).tolist(),
        "w_norm": np.linalg.norm(np.asarray(params.w), axis=1).tolist(),
        "init_cos": np.asarray(res.init_cos).tolist(),
        "samples_per_class": int(class_z.shape[1]),
        "attention_exp": s.attention_exp,
    }
    files.write_json(f"{out}/report.json", report)
    warning = attention_svm.stale_normal_warning(res.init_cos)
    if warning:
        log.warning(warning)
    return {"mean_train_accuracy": float(np.mean(res.train_acc)),
            "mean_init_cos": float(np.mean(res.init_cos)),
            "mean_heldout_accuracy": float(np.mean(res.heldout_acc)),
            "min_heldout_accuracy": float(np.min(res.heldout_acc)),
            "mean_w_norm": float(np.mean(report["w_norm"])),
            "num_pairs": int(len(pairs))}
