"""Stage 2: latents z = features(x) of the train and test sets under the vanilla model.

Eval mode, x in [0, 1] (each model folds its normalisation in); the vanilla
model's predicted label of every image is stored next to its latent.
"""

from __future__ import annotations

import numpy as np

from ladder_jax.units import Unit, config_values

STAGE = "latents"
OUTPUT = "latents"


def units(ctx) -> list[Unit]:
    return [Unit("latents", STAGE, config_values(ctx.config, "latents"), compute,
                 inputs=("classifier",), outputs=(OUTPUT,))]


def compute(ctx, identity: dict) -> dict:
    del identity  # no checkpoints: the arrays are written whole
    out = ctx.wd.ensure_dir(OUTPUT)
    info = {}
    for split, ds in (("train", ctx.train_set()), ("test", ctx.test_set())):
        z, pred = ctx.compute_latents(ds.images)
        np.save(f"{out}/{split}_z.npy", z)
        np.save(f"{out}/{split}_labels.npy", ds.labels)
        np.save(f"{out}/{split}_pred.npy", pred)
        info[f"{split}_count"] = int(len(z))
        info[f"{split}_accuracy"] = 100.0 * float(np.mean(pred == ds.labels))
        info["dim"] = int(z.shape[1])
    return info
