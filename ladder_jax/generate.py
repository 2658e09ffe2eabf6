"""Batched LADDER generation: x_hat = G(z + eps * step) for many images at once.

step is beta(z) * d in the unit of ``generate.eps_unit`` (``perturb``).
Images are grouped by their ordered pair (y, t); each group is processed in
fixed-size chunks by one jitted program that computes the attention, the
per-image directions, every eps of ``eps_list`` (or the adaptive eps), the
decoded images, their uint8 quantisation and the vanilla model's
predictions. There is no per-image Python loop.

Choices (docs/ladder.md, "Stage 5"):

* Images: the train set in a seeded random order, at most ``per_class_cap``
  per source class (MNIST 450 -> 4,500); ``-1`` keeps every image.
* Target t: uniform over the classes != y, per image. The authors' code
  builds a per-(source, target) balancing matrix and then overwrites t with
  exactly this random choice (a bug), so only the per-source cap is
  effective; we implement what ran.
* Quantisation: the image is clipped to [0, 1] *before* x255 and the cast,
  fixing the code's wrap-around of negative tanh outputs (SVHN/CelebA);
  ``legacy_uint8_wrap`` reproduces the wrap (truncate toward zero, mod 256).
  ``quantize='truncate'`` is the code's cast (floor for the clipped, non-
  negative values), ``'round'`` rounds to nearest (unbiased by 0.5/255).
* ``fools``: the vanilla model's prediction on the *stored* uint8 image
  differs from the source label y. Every generated image is kept regardless
  (the code trains on all of them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from advcore.batching import map_batches
from advcore.data import to_float
from advcore.variables import ModelVars, apply_eval
from ladder_jax import attention_svm, generators, perturb


def select_indices(labels: np.ndarray, per_class_cap: int, num_classes: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Indices of the images to perturb: a shuffle drawn from ``rng``, capped per class."""
    labels = np.asarray(labels)
    order = rng.permutation(len(labels))
    if per_class_cap == -1:
        return order
    counts = np.zeros(num_classes, np.int64)
    keep = []
    for i in order:
        y = labels[i]
        if counts[y] < per_class_cap:
            counts[y] += 1
            keep.append(i)
    return np.asarray(keep, np.int64)


def choose_targets(sources: np.ndarray, num_classes: int, rng: np.random.Generator
                   ) -> np.ndarray:
    """t uniform over {0..K-1} \\ {y} per image, drawn from ``rng`` (CelebA: the other class)."""
    sources = np.asarray(sources, np.int64)
    offset = rng.integers(1, num_classes, size=sources.shape)
    return ((sources + offset) % num_classes).astype(np.int32)


def quantize(images: jax.Array, mode: str = "truncate", legacy_wrap: bool = False) -> jax.Array:
    """Float images ([0, 1] nominal) -> uint8, as stored and later trained on."""
    if mode not in ("truncate", "round"):
        raise ValueError(f"quantize must be 'truncate' or 'round', got {mode!r}")
    if legacy_wrap:
        # np.uint8(float) truncates toward zero and wraps modulo 256: -0.1*255
        # becomes 231, a bright pixel where a dark one was meant.
        v = jnp.trunc(images * 255.0).astype(jnp.int32)
        return jnp.mod(v, 256).astype(jnp.uint8)
    v = jnp.clip(images, 0.0, 1.0) * 255.0
    v = jnp.floor(v) if mode == "truncate" else jnp.round(v)
    return v.astype(jnp.uint8)


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """Static settings of one generation program."""

    variant: str
    eps_values: tuple[float, ...]  # (-1,) = adaptive; no 0 (calibrated values are resolved)
    use_exp: bool
    target_range: str
    eps_unit: str = "latent_norm"  # perturb.EPS_UNITS
    cav_random_std: float = 0.01
    random_std: float = 0.1
    quantize: str = "truncate"
    legacy_uint8_wrap: bool = False
    eps_init: float = 0.5
    eps_step: float = 0.1
    eps_max: float = 26.0
    ite_max_eps: int = 100

    @property
    def adaptive(self) -> bool:
        return tuple(self.eps_values) == (-1.0,) or tuple(self.eps_values) == (-1,)


def make_chunk_fn(gen: nn.Module, clf: Any, s: GenerationSettings) -> Callable:
    """jit(g_vars, c_vars, svm, latent_norm, z, idx, clean_pred, key) -> dict of (E, B) arrays.

    ``clf`` is a ``ladder_jax.classifier.Classifier`` (the frozen vanilla
    model), ``svm`` one pair's ``attention_svm.LatentSVM`` and
    ``latent_norm`` the mean training-latent norm r ('latent_norm' unit).
    The caller keeps the returned program to share its compilation
    (``Context.generation_program``: one per settings for the whole run).
    """
    if s.eps_unit not in perturb.EPS_UNITS:
        raise ValueError(f"eps_unit must be one of {perturb.EPS_UNITS}, got {s.eps_unit!r}")

    def decode_images(g_vars, zp):
        return generators.output_to_image(apply_eval(gen, g_vars, zp), s.target_range)

    def run(g_vars, c_vars, svm, latent_norm, z, idx, clean_pred, key):
        b = z.shape[0]
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
        noise = jax.vmap(lambda k: jax.random.normal(k, (z.shape[-1],), z.dtype))(keys)
        d = perturb.variant_directions(s.variant, svm, noise, s.cav_random_std, s.random_std)
        beta = attention_svm.latent_attention(svm, z, s.use_exp)
        step = perturb.step_direction(beta * d, s.eps_unit, latent_norm)
        if s.adaptive:
            def predict_fn(zp):
                x = decode_images(g_vars, zp)
                return clf.predict_logits(clf.logits(c_vars, jnp.clip(x, 0.0, 1.0)))

            eps = perturb.adaptive_eps(
                predict_fn, z, step, clean_pred, eps_init=s.eps_init,
                eps_step=s.eps_step, eps_max=s.eps_max, ite_max_eps=s.ite_max_eps)
            eps = eps[None, :]  # (1, B)
        else:
            eps = jnp.broadcast_to(jnp.asarray(s.eps_values, z.dtype)[:, None],
                                   (len(s.eps_values), b))
        zp = z[None] + eps[..., None] * step[None]  # (E, B, D)
        e = zp.shape[0]
        flat = zp.reshape(e * b, -1)
        x_hat = decode_images(g_vars, flat)
        q = quantize(x_hat, s.quantize, s.legacy_uint8_wrap)
        # The vanilla model's label for the stored uint8 image.
        pred = clf.predict_logits(clf.logits(c_vars, to_float(q)))
        latent_pred = clf.predict_logits(clf.classify(c_vars, flat))
        h = attention_svm.latent_score(svm, flat, s.use_exp)
        return {
            "x_adv": q.reshape((e, b) + q.shape[1:]),
            "pred": pred.reshape(e, b),
            "latent_pred": latent_pred.reshape(e, b),
            "svm_h": h.reshape(e, b),
            "eps": eps,
        }

    return jax.jit(run)


def generate(
    chunk_fn: Callable,
    g_vars: ModelVars,
    c_vars: ModelVars,
    svms: attention_svm.LatentSVM,
    pair_table: np.ndarray,
    z: np.ndarray,
    sources: np.ndarray,
    targets: np.ndarray,
    clean_pred: np.ndarray,
    *,
    batch_size: int,
    key: jax.Array,
    latent_norm: float = 1.0,
    mesh=None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Runs ``chunk_fn`` over all images, grouped by ordered pair.

    ``z`` (N, D) are the images' latents; ``svms`` leaves have a leading
    pair axis indexed by ``pair_table[y, t]``; ``latent_norm`` is r of the
    'latent_norm' unit. Each image's noise is keyed by its row index, so
    results do not depend on the batching.
    Returns arrays with a leading (E, N) layout in the input order.
    """
    n = len(sources)
    pair_ids = pair_table[np.asarray(sources), np.asarray(targets)]
    if np.any(pair_ids < 0):
        raise ValueError("some (source, target) pairs have no trained SVM")
    z = np.asarray(z, np.float32)
    clean_pred = np.asarray(clean_pred, np.int32)
    r = jnp.float32(latent_norm)
    out: dict[str, np.ndarray] = {}
    groups = [(p, np.nonzero(pair_ids == p)[0]) for p in np.unique(pair_ids)]
    # One chunk shape for all calls (one compilation), but no bigger than the
    # largest pair group needs: MNIST's ~50 images per pair would otherwise be
    # padded to the full batch size.
    largest = max(len(g) for _, g in groups)
    batch_size = min(batch_size, -(-largest // 8) * 8)
    for p, rows in tqdm(groups, desc="generate", disable=not progress, leave=False):
        svm_p = jax.tree.map(lambda a: jnp.asarray(a[p]), svms)

        def batch_first(zb, idx, cp, svm_p=svm_p):
            res = chunk_fn(g_vars, c_vars, svm_p, r, zb, idx, cp, key)
            return {name: jnp.moveaxis(v, 0, 1) for name, v in res.items()}

        res = map_batches(batch_first, (z[rows], rows.astype(np.int32), clean_pred[rows]),
                          batch_size=batch_size, mesh=mesh, float_images=(False, False, False))
        for name, value in res.items():  # (rows, E, ...) -> (E, N, ...)
            value = np.moveaxis(value, 0, 1)
            if name not in out:
                out[name] = np.zeros((value.shape[0], n) + value.shape[2:], value.dtype)
            out[name][:, rows] = value
    return out


# -- storage ------------------------------------------------------------------

SET_ARRAYS = ("x_adv", "x", "label", "target", "eps", "pred", "fools", "latent_pred",
              "svm_h", "index")


def save_generated_set(directory: str, arrays: dict[str, np.ndarray],
                       info: Optional[dict[str, Any]] = None) -> None:
    """Writes one generated set: ``<name>.npy`` per array plus ``info.json``.

    Written into a temporary directory and renamed, so a set is either
    complete or absent.
    """
    missing = [k for k in SET_ARRAYS if k not in arrays]
    if missing:
        raise ValueError(f"generated set is missing arrays {missing}")
    tmp = directory.rstrip("/") + ".tmp"
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    for name in SET_ARRAYS:
        np.save(os.path.join(tmp, name + ".npy"), np.asarray(arrays[name]))
    payload = dict(info or {})
    payload["count"] = int(len(arrays["label"]))
    payload["fooling_rate"] = float(np.mean(arrays["fools"])) if len(arrays["fools"]) else 0.0
    with open(os.path.join(tmp, "info.json"), "w") as f:
        json.dump(payload, f, indent=2, default=str)
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    os.replace(tmp, directory)


def load_generated_set(directory: str, mmap: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    arrays = {name: np.load(os.path.join(directory, name + ".npy"),
                            mmap_mode="r" if mmap else None) for name in SET_ARRAYS}
    with open(os.path.join(directory, "info.json")) as f:
        info = json.load(f)
    return arrays, info


def flatten_eps(result: dict[str, np.ndarray], clean: np.ndarray, sources: np.ndarray,
                targets: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    """(E, N) generation output -> one flat set of E*N rows (eps-major)."""
    e, n = result["pred"].shape
    x_adv = result["x_adv"].reshape((e * n,) + result["x_adv"].shape[2:])
    label = np.tile(np.asarray(sources, np.int32), e)
    pred = result["pred"].reshape(-1).astype(np.int32)
    return {
        "x_adv": x_adv,
        "x": np.tile(clean, (e, 1, 1, 1)),
        "label": label,
        "target": np.tile(np.asarray(targets, np.int32), e),
        "eps": result["eps"].reshape(-1).astype(np.float32),
        "pred": pred,
        "fools": pred != label,
        "latent_pred": result["latent_pred"].reshape(-1).astype(np.int32),
        "svm_h": result["svm_h"].reshape(-1).astype(np.float32),
        "index": np.tile(np.asarray(index, np.int64), e),
    }
