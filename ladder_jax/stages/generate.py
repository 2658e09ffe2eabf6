"""Stage 5: LADDER examples x_hat = G(z + ε·step) of the selected training images.

One unit per variant of ``generate.variants`` (``ladder``, ``ladder_gan``,
``cavRandom``, ``random``; stored in ``generated/<variant>/``) and one for
the ε-sweep figure (``generated/eps_sweep.png``). The images, their targets
and every ε are the same for all variants; see ``ladder_jax.generate`` for
the generation itself and its storage, ``ladder_jax.perturb`` for the step
and its unit (``generate.eps_unit``). A ``0`` in ``generate.eps_list`` is the
ε the svm stage calibrated (its ``report.json``); the set's ``info.json``
records the value as ``calibrated_eps``.
"""

from __future__ import annotations

import functools

import numpy as np

from ladder_jax import generate, plots, streams
from ladder_jax.units import Unit, config_values

STAGE = "generate"


def _generator_unit(variant: str) -> str:
    return "generator/gan" if variant == "ladder_gan" else "generator/ae"


def units(ctx) -> list[Unit]:
    c = ctx.config
    base = config_values(c, "generate", "seed")
    out = [Unit(f"generate/{variant}", STAGE, {**base, "variant": variant},
                functools.partial(generate_variant, variant=variant),
                inputs=("classifier", "latents", _generator_unit(variant), "svm"),
                outputs=(f"generated/{variant}",))
           for variant in c.generate.variants]
    out.append(Unit("generate/sweep", STAGE,
                    {**base, **config_values(c, "generate.sweep_eps",
                                             "generate.sweep_num_images")},
                    eps_sweep, inputs=("classifier", "latents", "generator/ae", "svm"),
                    outputs=("generated/eps_sweep.png",)))
    return out


def generate_variant(ctx, identity: dict, *, variant: str) -> dict:
    del identity  # no checkpoints: the set is written whole
    gc = ctx.config.generate
    idx, sources, targets = ctx.selected_train_images()
    lat = ctx.latents("train")
    res = ctx.generate_examples(variant, np.asarray(lat["z"][idx], np.float32), sources,
                                targets, np.asarray(lat["pred"][idx]),
                                streams.jax_key(ctx.config.seed, f"generate/{variant}"))
    clean = ctx.train_set().images[idx]
    arrays = generate.flatten_eps(res, clean, sources, targets, idx)
    calibrated = ctx.calibrated_eps() if 0 in tuple(gc.eps_list) else None
    info = {"variant": variant, "split": "train", "eps_list": list(ctx.resolve_eps(gc.eps_list)),
            "eps_unit": gc.eps_unit, "calibrated_eps": calibrated,
            "quantize": gc.quantize, "legacy_uint8_wrap": gc.legacy_uint8_wrap,
            "attention_exp": ctx.config.svm.attention_exp,
            "latent_scaling": ctx.config.svm.latent_scaling}
    generate.save_generated_set(ctx.wd.path("generated", variant), arrays, info)
    out = {"count": int(len(arrays["label"])),
           "fooling_rate": float(np.mean(arrays["fools"])),
           "latent_flip_rate": float(np.mean(arrays["latent_pred"] != arrays["label"]))}
    if tuple(gc.eps_list) != (-1.0,):
        for e in np.unique(arrays["eps"]):
            out[f"fooling_rate_eps{e:g}"] = float(np.mean(arrays["fools"][arrays["eps"] == e]))
    out["mean_eps"] = float(np.mean(arrays["eps"]))
    if calibrated is not None:
        out["calibrated_eps"] = calibrated
    return out


def eps_sweep(ctx, identity: dict) -> dict:
    """Figs. 7/10: a few selected images generated at every ε of ``generate.sweep_eps``."""
    del identity
    gc = ctx.config.generate
    idx, sources, targets = ctx.selected_train_images()
    n = min(gc.sweep_num_images, len(idx))
    idx, sources, targets = idx[:n], sources[:n], targets[:n]
    lat = ctx.latents("train")
    res = ctx.generate_examples("ladder", np.asarray(lat["z"][idx]), sources, targets,
                                np.asarray(lat["pred"][idx]),
                                streams.jax_key(ctx.config.seed, "eps_sweep"),
                                eps_values=tuple(gc.sweep_eps))
    train = ctx.train_set()
    labels = np.asarray(train.labels)
    target_examples = np.stack([train.images[np.nonzero(labels == t)[0][0]] for t in targets])
    generated = np.transpose(res["x_adv"], (1, 0, 2, 3, 4))  # (N, E, H, W, C)
    ctx.wd.ensure_dir("generated")
    plots.eps_sweep_grid(ctx.wd.path("generated", "eps_sweep.png"), train.images[idx],
                         generated, list(gc.sweep_eps), target_examples, sources, targets,
                         res["pred"].T, title=f"LADDER ε sweep ({ctx.config.dataset.name}, "
                                              f"ε in {gc.eps_unit} units)")
    return {"images": int(n), "columns": len(gc.sweep_eps)}
