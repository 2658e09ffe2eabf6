"""The LADDER stages 1-5 and the stage registry (SPEC 3.1).

Each stage function takes a ``Context`` and works in units (e.g. one unit per
generator kind or per generated variant). A unit whose marker in
``markers/`` carries the current config fingerprint is skipped, so re-running
a stage (or ``--stage=all``) never redoes finished work; ``force=True``
redoes it. Stage 6 lives in ``finetune.py`` and stage 7 in ``evaluate.py``.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from advcore.optim import torch_sgd
from ladder_jax import attention_svm, generate, generator_train, generators, plots
from ladder_jax.classifier import (accuracy, create_state, init_classifier_vars,
                                   make_clean_step)
from ladder_jax.context import Context
from ladder_jax.train_loop import effective_batch, fit
from ladder_jax.workdir import name_seed
from ladder_jax.train_utils import (ModelVars, apply_model, host, open_checkpointer,
                                    restore_latest)

log = logging.getLogger("ladder_jax")


def run_unit(ctx: Context, unit: str, fingerprint: str, fn: Callable[[], dict],
             force: bool = False) -> bool:
    """Runs ``fn`` unless ``unit`` is already done under ``fingerprint``.

    Returns True when the unit ran. ``fn`` returns a small info dict that is
    stored in the marker and logged to ``metrics.jsonl``.
    """
    if not force and ctx.wd.is_done(unit, fingerprint):
        log.info("skipping %s (done, fingerprint %s)", unit, fingerprint)
        return False
    ctx.wd.clear_marker(unit)
    t0 = time.time()
    log.info("running %s", unit)
    info = dict(fn() or {})
    info["seconds"] = round(time.time() - t0, 3)
    ctx.wd.mark_done(unit, fingerprint, info)
    scalars = {f"{unit}/{k}": v for k, v in info.items() if isinstance(v, (int, float))}
    ctx.writer.write(0, scalars)
    return True


def _to_float(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, np.float32) / 255.0


# -- 1. vanilla classifier -----------------------------------------------------------

def stage_classifier(ctx: Context, force: bool = False) -> None:
    fp = ctx.wd.unit_fingerprint("classifier")

    def work() -> dict:
        c = ctx.config
        train, test = ctx.train_set(), ctx.test_set()
        images, labels = train.images, train.labels
        if c.classifier.train_fraction < 1.0:
            # SVHN's vanilla model sees a random 30 % of the train split (SPEC 2.3).
            rng = np.random.default_rng(np.random.SeedSequence([c.seed, 303]))
            keep = np.sort(rng.permutation(len(labels))[: int(c.classifier.train_fraction
                                                              * len(labels))])
            images, labels = images[keep], labels[keep]
        clf = ctx.classifier
        key = jax.random.key(c.seed)
        mv = init_classifier_vars(clf, key, ctx.image_shape)
        tx = torch_sgd(c.classifier.lr, c.classifier.momentum, c.classifier.weight_decay)
        state = create_state(mv, tx, jax.random.fold_in(key, 1))
        ckpt = open_checkpointer(ctx.wd.path("models", "vanilla", "checkpoints"),
                                 ctx.checkpoint_config("vanilla", fp))
        from advcore.metrics import MetricWriter

        def make_batch(rows):
            return {"image": _to_float(images[rows]), "label": labels[rows]}

        def eval_fn(st):
            return {"test_accuracy": accuracy(clf, host(st.robust), test.images, test.labels,
                                              c.classifier.eval_batch_size)}

        batch = effective_batch(c.classifier.batch_size, len(labels))
        state = fit(state=state, step_fn=make_clean_step(clf, tx), num_examples=len(labels),
                    global_batch=batch, make_batch=make_batch, epochs=c.classifier.epochs,
                    seed=c.seed, checkpointer=ckpt,
                    checkpoint_every_epochs=c.classifier.checkpoint_every_epochs,
                    eval_fn=eval_fn, eval_every_epochs=c.classifier.checkpoint_every_epochs,
                    writer=MetricWriter(ctx.model_dir("vanilla")),
                    progress=ctx.progress, desc="vanilla")
        if ckpt.latest_step() is None:  # epochs == 0: still leave an evaluable model
            ckpt.save(0, state)
        ckpt.close()
        return {"test_accuracy": eval_fn(state)["test_accuracy"],
                "train_examples": int(len(labels))}

    run_unit(ctx, "classifier", fp, work, force)


# -- 2. latents ------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _features_and_pred_fn(clf):
    def run(mv, x):
        z = clf.features(mv, x)
        return z, clf.predict_logits(clf.classify(mv, z))

    return jax.jit(run)


def compute_latents(ctx: Context, images: np.ndarray, scale: float = 1.0,
                    batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(z, predicted label) for uint8 images, eval mode; ``scale`` multiplies x.

    ``scale=255`` reproduces the authors' unscaled SVM inputs (SPEC 3.3).
    """
    fn = _features_and_pred_fn(ctx.classifier)
    mv = ctx.vanilla
    bs = batch_size or ctx.config.latents.batch_size
    zs, preds = [], []
    for start in range(0, len(images), bs):
        x = _to_float(images[start:start + bs]) * scale
        n = len(x)
        if n < bs:
            x = np.concatenate([x, np.zeros((bs - n,) + x.shape[1:], x.dtype)])
        z, p = fn(mv, jnp.asarray(x))
        zs.append(np.asarray(z)[:n])
        preds.append(np.asarray(p)[:n])
    return np.concatenate(zs), np.concatenate(preds).astype(np.int32)


def stage_latents(ctx: Context, force: bool = False) -> None:
    fp = ctx.wd.unit_fingerprint("latents")

    def work() -> dict:
        out = ctx.wd.ensure_dir("latents")
        info = {}
        for split, ds in (("train", ctx.train_set()), ("test", ctx.test_set())):
            z, pred = compute_latents(ctx, ds.images)
            np.save(f"{out}/{split}_z.npy", z.astype(np.float32))
            np.save(f"{out}/{split}_labels.npy", ds.labels)
            np.save(f"{out}/{split}_pred.npy", pred)
            info[f"{split}_count"] = int(len(z))
            info[f"{split}_accuracy"] = 100.0 * float(np.mean(pred == ds.labels))
            info["dim"] = int(z.shape[1])
        return info

    run_unit(ctx, "latents", fp, work, force)


# -- 3. generator ------------------------------------------------------------------------

def _generator_modules(ctx: Context, kind: str):
    g = ctx.config.generator
    gen = generators.build_generator(g.arch, g.width_scale, g.legacy_convt_init)
    disc = generators.Discriminator(g.d_width_scale) if kind == "gan" else None
    g_tx, d_tx = generator_train.make_optimizers(g.lr, g.b1, g.b2, g.d_lr_scale)
    return gen, disc, g_tx, d_tx


def _generator_target_state(ctx: Context, kind: str, z_dim: int, abstract: bool = False):
    """The generator modules and an initial state (shapes only if ``abstract``)."""
    gen, disc, g_tx, d_tx = _generator_modules(ctx, kind)

    def init(key):
        return generator_train.init_state(gen, disc, key, z_dim, ctx.image_shape, g_tx, d_tx)

    key = jax.random.key(ctx.config.seed + 7)
    state = jax.eval_shape(init, key) if abstract else init(key)
    return gen, disc, g_tx, d_tx, state


def _generator_ckpt(ctx: Context, kind: str, fp: str):
    return open_checkpointer(ctx.wd.path("generator", kind, "checkpoints"),
                             {"generator": ctx.config.generator.to_dict(),
                              "dataset": ctx.config.dataset.name, "kind": kind,
                              "unit_fingerprint": fp})


def load_generator(ctx: Context, kind: str):
    """(module, ModelVars) of the trained generator ``kind``."""
    z_dim = int(np.load(ctx.wd.path("latents", "train_z.npy"), mmap_mode="r").shape[1])
    # Restoring needs only the state's structure: no (slow) initialisation.
    gen, _, _, _, target = _generator_target_state(ctx, kind, z_dim, abstract=True)
    fp = ctx.wd.unit_fingerprint("generator", kind)
    ckpt = _generator_ckpt(ctx, kind, fp)
    state, step = restore_latest(ckpt, target)
    ckpt.close()
    if step is None:
        raise FileNotFoundError(f"no trained generator '{kind}' in {ctx.wd.path('generator')}; "
                                "run --stage=generator first")
    return gen, state.g


def _check_generator_fits(ctx: Context, z_dim: int) -> None:
    spec = ctx.generator_spec()
    if spec.z_dim != z_dim:
        # Fine for reduced-width smoke models (the Linear adapts to any z);
        # on a paper model it means the wrong latent layer (cf. SPEC 3.2).
        log.warning("generator.arch=%r was designed for %d-d latents, the classifier's "
                    "features are %d-d", spec.name, spec.z_dim, z_dim)
    if tuple(spec.image_shape) != ctx.image_shape:
        raise ValueError(f"generator.arch={spec.name!r} makes {spec.image_shape} images, the "
                         f"dataset has {ctx.image_shape}")


def stage_generator(ctx: Context, force: bool = False) -> None:
    g = ctx.config.generator
    for kind in g.kinds:
        fp = ctx.wd.unit_fingerprint("generator", kind)
        run_unit(ctx, f"generator/{kind}", fp,
                 functools.partial(_train_generator, ctx, kind, fp), force)


def _train_generator(ctx: Context, kind: str, fp: str) -> dict:
    from advcore.metrics import MetricWriter

    c, g = ctx.config, ctx.config.generator
    lat = ctx.latents("train")
    z_all = lat["z"]
    _check_generator_fits(ctx, int(z_all.shape[1]))
    spec = ctx.generator_spec()
    images = ctx.train_set().images
    n_all = len(images)
    keep = np.arange(n_all)
    if g.train_fraction < 1.0:
        rng = np.random.default_rng(np.random.SeedSequence([c.seed, 404]))
        keep = np.sort(rng.permutation(n_all)[: int(g.train_fraction * n_all)])
    gen, disc, g_tx, d_tx, state = _generator_target_state(ctx, kind, int(z_all.shape[1]))
    ckpt = _generator_ckpt(ctx, kind, fp)
    step = generator_train.make_train_step(gen, disc, g_tx, d_tx, g.loss, g.gan_lambda,
                                           microbatch=g.microbatch if kind == "ae" else 0)

    def step_fn(st, batch):
        return step(st, batch["z"], batch["target"])

    def make_batch(rows):
        rows = keep[rows]
        x = _to_float(images[rows])
        return {"z": np.asarray(z_all[rows], np.float32),
                "target": np.asarray(generators.image_to_target(x, spec.target_range))}

    out_dir = ctx.wd.ensure_dir("generator", kind)
    batch = effective_batch(g.batch_size, len(keep))
    state = fit(state=state, step_fn=step_fn, num_examples=len(keep), global_batch=batch,
                make_batch=make_batch, epochs=g.epochs, seed=c.seed, checkpointer=ckpt,
                checkpoint_every_epochs=g.checkpoint_every_epochs,
                writer=MetricWriter(out_dir), progress=ctx.progress, desc=f"generator/{kind}",
                stream=1)
    if ckpt.latest_step() is None:
        ckpt.save(0, state)
    ckpt.close()
    return _generator_report(ctx, kind, gen, host(state.g), out_dir)


def _generator_report(ctx: Context, kind: str, gen, gv: ModelVars, out_dir: str) -> dict:
    """Reconstruction MSE (train/test) and the Fig. 4 grid."""
    import json

    g = ctx.config.generator
    spec = ctx.generator_spec()
    decode = jax.jit(lambda v, z: generators.output_to_image(
        apply_model(gen, v, z, train=False)[0], spec.target_range))
    report = {"kind": kind, "loss": g.loss, "epochs": g.epochs,
              "gan_lambda": g.gan_lambda if kind == "gan" else 0.0}
    grids = {}
    for split, ds in (("train", ctx.train_set()), ("test", ctx.test_set())):
        lat = ctx.latents(split)
        n = min(g.mse_eval_limit, len(ds.labels))
        bs = min(ctx.config.latents.batch_size, max(n, 1))
        se, ae, count = 0.0, 0.0, 0
        recon_first = None
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            z = np.asarray(lat["z"][start:stop], np.float32)
            pad = bs - len(z)
            zp = np.concatenate([z, np.repeat(z[:1], pad, 0)]) if pad else z
            rec = np.asarray(decode(gv, jnp.asarray(zp)))[: stop - start]
            x = _to_float(ds.images[start:stop])
            # MSE in [0, 1] image space (the paper's figure for MNIST, whose
            # targets are [0, 1]); CIFAR's [-1, 1] target-space MSE is 4x this.
            se += float(np.sum((rec - x) ** 2))
            ae += float(np.sum(np.abs(rec - x)))
            count += x.size
            if recon_first is None:
                recon_first = (x[: g.grid_images], rec[: g.grid_images])
        report[f"mse_{split}"] = se / max(count, 1)
        report[f"l1_{split}"] = ae / max(count, 1)
        report[f"num_{split}"] = int(n)
        grids[split] = recon_first
    with open(f"{out_dir}/report.json", "w") as f:
        json.dump(report, f, indent=2)
    if grids["train"] is not None and grids["test"] is not None:
        plots.reconstruction_grid(
            f"{out_dir}/reconstruction.png", grids["train"][0], grids["train"][1],
            grids["test"][0], grids["test"][1],
            title=f"{ctx.config.dataset.name} generator ({kind}): MSE train "
                  f"{report['mse_train']:.5f} / test {report['mse_test']:.5f}")
    return {k: v for k, v in report.items() if isinstance(v, (int, float))}


# -- 4. attention SVMs ---------------------------------------------------------------------

def svm_class_latents(ctx: Context) -> np.ndarray:
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
        # The code fits MNIST/SVHN SVMs on latents of x in [0, 255] (SPEC 3.3).
        images = ctx.train_set().images[idx.reshape(-1)]
        z, _ = compute_latents(ctx, images, scale=255.0)
        return z.reshape(k, n, -1)
    return np.asarray(lat["z"][idx.reshape(-1)], np.float32).reshape(k, n, -1)


def stage_svm(ctx: Context, force: bool = False) -> None:
    fp = ctx.wd.unit_fingerprint("svm")
    run_unit(ctx, "svm", fp, functools.partial(_train_svms, ctx), force)


def _train_svms(ctx: Context) -> dict:
    import json

    s = ctx.config.svm
    k = ctx.num_classes
    class_z = jnp.asarray(svm_class_latents(ctx))
    pairs = attention_svm.ordered_pairs(k)
    keys = attention_svm.pair_keys(jax.random.key(ctx.config.seed + 11), pairs, k)
    chunk = s.pair_chunk_size or len(pairs)
    kwargs = dict(test_size=s.test_size, c=s.c, lr=s.lr, epochs=s.epochs,
                  batch_size=s.batch_size, use_exp=s.attention_exp)
    results = []
    from tqdm import tqdm

    for start in tqdm(range(0, len(pairs), chunk), desc="svm", disable=not ctx.progress,
                      leave=False):
        sl = np.arange(start, min(start + chunk, len(pairs)))
        pad = chunk - len(sl)
        # Pad the last chunk so that every chunk reuses one compiled program.
        sl_p = np.concatenate([sl, np.repeat(sl[:1], pad)]) if pad else sl
        res = attention_svm.train_pairs(keys[sl_p], class_z, jnp.asarray(pairs[sl_p]), **kwargs)
        results.append(jax.tree.map(lambda a: np.asarray(a)[: len(sl)], res))
    res = jax.tree.map(lambda *a: np.concatenate(a), *results)
    params = res.params
    if s.legacy_unordered_svm_cache:
        params = attention_svm.apply_legacy_unordered_cache(params, pairs)
    out = ctx.wd.ensure_dir("svm")
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
    with open(f"{out}/report.json", "w") as f:
        json.dump(report, f, indent=2)
    warning = attention_svm.stale_normal_warning(res.init_cos)
    if warning:
        log.warning(warning)
    return {"mean_train_accuracy": float(np.mean(res.train_acc)),
            "mean_init_cos": float(np.mean(res.init_cos)),
            "mean_heldout_accuracy": float(np.mean(res.heldout_acc)),
            "min_heldout_accuracy": float(np.min(res.heldout_acc)),
            "mean_w_norm": float(np.mean(report["w_norm"])),
            "num_pairs": int(len(pairs))}


# -- 5. generation ---------------------------------------------------------------------------

def selected_train_images(ctx: Context) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, sources, targets) of the training images to perturb."""
    labels = np.asarray(ctx.latents("train")["labels"])
    idx = generate.select_indices(labels, ctx.config.generate.per_class_cap,
                                  ctx.num_classes, ctx.config.seed)
    sources = labels[idx].astype(np.int32)
    targets = generate.choose_targets(sources, ctx.num_classes, ctx.config.seed)
    return idx, sources, targets


def generation_settings(ctx: Context, variant: str, eps_values=None
                        ) -> generate.GenerationSettings:
    gc = ctx.config.generate
    return generate.GenerationSettings(
        variant=variant, eps_values=tuple(float(e) for e in (eps_values or gc.eps_list)),
        use_exp=ctx.config.svm.attention_exp, target_range=ctx.generator_spec().target_range,
        cav_random_std=gc.cav_random_std, random_std=gc.random_std, quantize=gc.quantize,
        legacy_uint8_wrap=gc.legacy_uint8_wrap, eps_init=gc.eps_init, eps_step=gc.eps_step,
        eps_max=gc.eps_max, ite_max_eps=gc.ite_max_eps)


def run_generation(ctx: Context, variant: str, images: np.ndarray, z: np.ndarray,
                   sources: np.ndarray, targets: np.ndarray, clean_pred: np.ndarray,
                   key_offset: int, eps_values=None) -> dict[str, np.ndarray]:
    """LADDER generation for given images and latents; returns (E, N) arrays."""
    kind = "gan" if variant == "ladder_gan" else "ae"
    gen, gv = load_generator(ctx, kind)
    svm_p, pairs = ctx.svm_params()
    table = attention_svm.pair_index_table(pairs, ctx.num_classes)
    settings = generation_settings(ctx, variant, eps_values)
    chunk_fn = generate.make_chunk_fn(gen, ctx.classifier, settings)
    bs = min(ctx.config.generate.batch_size, max(len(sources), 1))
    return generate.generate(chunk_fn, gv, ctx.vanilla, svm_p, table, np.asarray(z, np.float32),
                             sources, targets, np.asarray(clean_pred), batch_size=bs,
                             key=jax.random.key(ctx.config.seed + key_offset),
                             progress=ctx.progress)


def stage_generate(ctx: Context, force: bool = False) -> None:
    gc = ctx.config.generate
    for variant in gc.variants:
        fp = ctx.wd.unit_fingerprint("generate", variant)
        run_unit(ctx, f"generate/{variant}", fp,
                 functools.partial(_generate_variant, ctx, variant,
                                   name_seed("generate/" + variant)), force)
    fp = ctx.wd.unit_fingerprint("generate", {"sweep": list(gc.sweep_eps),
                                              "n": gc.sweep_num_images})
    run_unit(ctx, "generate/sweep", fp, functools.partial(_eps_sweep, ctx), force)


def _generate_variant(ctx: Context, variant: str, key_offset: int) -> dict:
    idx, sources, targets = selected_train_images(ctx)
    lat = ctx.latents("train")
    z = np.asarray(lat["z"][idx], np.float32)
    clean_pred = np.asarray(lat["pred"][idx])
    res = run_generation(ctx, variant, ctx.train_set().images, z, sources, targets, clean_pred,
                         key_offset)
    clean = ctx.train_set().images[idx]
    arrays = generate.flatten_eps(res, clean, sources, targets, idx)
    info = {"variant": variant, "split": "train", "eps_list": list(ctx.config.generate.eps_list),
            "quantize": ctx.config.generate.quantize,
            "legacy_uint8_wrap": ctx.config.generate.legacy_uint8_wrap,
            "attention_exp": ctx.config.svm.attention_exp}
    generate.save_generated_set(ctx.wd.path("generated", variant), arrays, info)
    out = {"count": int(len(arrays["label"])),
           "fooling_rate": float(np.mean(arrays["fools"])),
           "latent_flip_rate": float(np.mean(arrays["latent_pred"] != arrays["label"]))}
    for e in np.unique(arrays["eps"]):
        if ctx.config.generate.eps_list != (-1.0,):
            out[f"fooling_rate_eps{e:g}"] = float(np.mean(arrays["fools"][arrays["eps"] == e]))
    out["mean_eps"] = float(np.mean(arrays["eps"]))
    return out


def _eps_sweep(ctx: Context) -> dict:
    gc = ctx.config.generate
    idx, sources, targets = selected_train_images(ctx)
    n = min(gc.sweep_num_images, len(idx))
    idx, sources, targets = idx[:n], sources[:n], targets[:n]
    lat = ctx.latents("train")
    res = run_generation(ctx, "ladder", ctx.train_set().images, np.asarray(lat["z"][idx]),
                         sources, targets, np.asarray(lat["pred"][idx]), 999,
                         eps_values=tuple(gc.sweep_eps))
    train = ctx.train_set()
    labels = np.asarray(lat["labels"])
    target_examples = np.stack([train.images[np.nonzero(labels == t)[0][0]] for t in targets])
    generated = np.transpose(res["x_adv"], (1, 0, 2, 3, 4))  # (N, E, H, W, C)
    path = ctx.wd.path("generated", "eps_sweep.png")
    ctx.wd.ensure_dir("generated")
    plots.eps_sweep_grid(path, train.images[idx], generated, list(gc.sweep_eps),
                         target_examples, sources, targets, res["pred"].T,
                         title=f"LADDER ε sweep ({ctx.config.dataset.name})")
    return {"images": int(n), "columns": len(gc.sweep_eps)}


STAGE_FUNCS: dict[str, Callable[[Context, bool], None]] = {
    "classifier": stage_classifier,
    "latents": stage_latents,
    "generator": stage_generator,
    "svm": stage_svm,
    "generate": stage_generate,
}
