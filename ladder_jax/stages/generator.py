"""Stage 3: the generators G: z -> x (``ae``) and LADDER-GAN (``gan``), one unit per kind.

Each minimises the reconstruction loss of the training latents (the
classifier frozen; ``ladder_jax.generator_train``), then reports the
reconstruction MSE in [0, 1] image space on the first
``generator.mse_eval_limit`` images of each split (``report.json``) and draws
the paper's Fig. 4 grid (``reconstruction.png``).
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from advcore import data, files
from advcore.batching import map_batches
from advcore.metrics import MetricWriter
from advcore.variables import ModelVars, apply_eval
from ladder_jax import generator_train, generators, plots, streams, training
from ladder_jax.classifier import on_mesh
from ladder_jax.units import Unit, config_values

log = logging.getLogger("ladder_jax")

STAGE = "generator"


def units(ctx) -> list[Unit]:
    base = config_values(ctx.config, "generator")
    return [Unit(f"generator/{kind}", STAGE, {**base, "kind": kind},
                 functools.partial(train_generator, kind=kind), inputs=("latents",),
                 outputs=(f"generator/{kind}",))
            for kind in ctx.config.generator.kinds]


def _check_generator_fits(ctx, z_dim: int) -> None:
    spec = ctx.generator_spec()
    if spec.z_dim != z_dim:
        # Fine for reduced-width smoke models (the Linear adapts to any z);
        # on a paper model it means the wrong latent layer.
        log.warning("generator.arch=%r was designed for %d-d latents, the classifier's "
                    "features are %d-d", spec.name, spec.z_dim, z_dim)
    if tuple(spec.image_shape) != ctx.image_shape:
        raise ValueError(f"generator.arch={spec.name!r} makes {spec.image_shape} images, the "
                         f"dataset has {ctx.image_shape}")


def train_generator(ctx, identity: dict, *, kind: str) -> dict:
    c, g = ctx.config, ctx.config.generator
    z_all = ctx.latents("train")["z"]
    _check_generator_fits(ctx, int(z_all.shape[1]))
    spec = ctx.generator_spec()
    images = ctx.train_set().images
    keep = np.arange(len(images))
    if g.train_fraction < 1.0:
        rng = streams.numpy_rng(c.seed, "generator_subset")
        keep = np.sort(rng.permutation(len(images))[: int(g.train_fraction * len(images))])
    gen, disc, g_tx, d_tx, state = generator_train.build(
        g, kind, int(z_all.shape[1]), ctx.image_shape, streams.jax_key(c.seed, "generator_init"))
    step = generator_train.make_train_step(gen, disc, g_tx, d_tx, g.loss, g.gan_lambda,
                                           microbatch=g.microbatch if kind == "ae" else 0)

    def step_fn(st, batch):
        return step(st, batch["z"], batch["target"])

    def make_batch(rows):
        rows = keep[rows]
        return {"z": np.asarray(z_all[rows], np.float32),
                "target": generators.image_to_target(data.to_float(images[rows]),
                                                     spec.target_range)}

    unit_dir = f"generator/{kind}"
    out_dir = ctx.wd.ensure_dir(unit_dir)
    ckpt = training.open_checkpointer(ctx.wd, unit_dir, identity)
    try:
        state, _ = training.fit(
            state=state, step_fn=training.jit_step(step_fn, ctx.mesh), num_examples=len(keep),
            batch_size=training.effective_batch(g.batch_size, len(keep), ctx.mesh.devices.size),
            make_batch=make_batch, epochs=g.epochs,
            seed=streams.data_seed(c.seed, "generator_batches"), checkpointer=ckpt,
            checkpoint_every_epochs=g.checkpoint_every_epochs, writer=MetricWriter(out_dir),
            mesh=ctx.mesh, progress=ctx.progress, desc=f"generator/{kind}")
        digest = training.checkpoint_digest(ckpt)
    finally:
        ckpt.close()
    return {**_report(ctx, kind, gen, jax.device_get(state.g), out_dir),
            "output_digest": digest}


def _report(ctx, kind: str, gen, gv: ModelVars, out_dir: str) -> dict:
    """Reconstruction MSE / L1 (train, test) and the Fig. 4 grid."""
    g = ctx.config.generator
    target_range = ctx.generator_spec().target_range

    gv = on_mesh(gv, ctx.mesh)

    @jax.jit
    def reconstruct(gv, z, x):
        rec = generators.output_to_image(apply_eval(gen, gv, z), target_range)
        err = rec - x
        axes = tuple(range(1, err.ndim))
        return jnp.sum(err ** 2, axis=axes), jnp.sum(jnp.abs(err), axis=axes), rec

    report = {"kind": kind, "loss": g.loss, "epochs": g.epochs,
              "gan_lambda": g.gan_lambda if kind == "gan" else 0.0}
    grids = {}
    for split, ds in (("train", ctx.train_set()), ("test", ctx.test_set())):
        n = min(g.mse_eval_limit, len(ds.labels))
        z = np.asarray(ctx.latents(split)["z"][:n], np.float32)
        bs = min(ctx.config.latents.batch_size, max(n, 1))
        # MSE in [0, 1] image space (the paper's figure for MNIST, whose
        # targets are [0, 1]); CIFAR's [-1, 1] target-space MSE is 4x this.
        se, ae = map_batches(lambda zb, xb: reconstruct(gv, zb, xb)[:2], (z, ds.images[:n]),
                             batch_size=bs, mesh=ctx.mesh)
        count = n * int(np.prod(ds.images.shape[1:]))
        report[f"mse_{split}"] = float(np.sum(se)) / max(count, 1)
        report[f"l1_{split}"] = float(np.sum(ae)) / max(count, 1)
        report[f"num_{split}"] = int(n)
        k = min(g.grid_images, n)
        rec = map_batches(lambda zb, xb: reconstruct(gv, zb, xb)[2], (z[:k], ds.images[:k]),
                          batch_size=bs, mesh=ctx.mesh)
        grids[split] = (data.to_float(ds.images[:k]), rec)
    files.write_json(f"{out_dir}/report.json", report)
    plots.reconstruction_grid(
        f"{out_dir}/reconstruction.png", grids["train"][0], grids["train"][1],
        grids["test"][0], grids["test"][1],
        title=f"{ctx.config.dataset.name} generator ({kind}): MSE train "
              f"{report['mse_train']:.5f} / test {report['mse_test']:.5f}")
    return {k: v for k, v in report.items() if isinstance(v, (int, float))}
