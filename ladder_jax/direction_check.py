"""Is LADDER's d a boundary normal? The numbers the ``svm`` stage reports and checks.

For the attention SVMs of a run and the training latents LADDER perturbs
(each with its source y and target t), ``direction_check`` measures

* ``cos(w, w_init)`` per pair, in the SVM's fit space (``PairResult.init_cos``):
  near 1 the hinge barely moved the normal and d is mostly its random init;
* ``cos(d, mu_t - mu_y)`` per pair, in latent space, with mu_c the mean
  training latent of class c (``normal_gap_cos``);
* at every eps of a grid, the fraction of latents whose vanilla prediction
  (the classifier head on z) changes when z is pushed along beta * d with the
  run's eps unit (``perturb.step_direction``), against a random direction of
  the same length per latent (``flip_fractions``).

``calibrate`` picks the smallest eps of the grid whose LADDER flip fraction
reaches a target (``finetune.eps = 0`` / ``0`` in ``generate.eps_list``):
an eps fixed from training latents only, at which LADDER's examples cross
the boundary. ``require_trained_normals`` is the stage's loud failure when
the normals stayed at their random init.

No generator is involved: the check isolates the direction from decoding.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ladder_jax import attention_svm, perturb

# Above this mean cos(w, w_init) the normals are mostly their random init
# (the library's former default measured 0.96 on MNIST; a fit that finds the
# boundary measured 0.14-0.28).
UNTRAINED_COS = 0.9
# calibrate's default: LADDER examples should cross the boundary for at least
# half of the perturbed training latents.
DEFAULT_FLIP_TARGET = 0.5


class UntrainedNormalsError(ValueError):
    """The attention SVMs' normals stayed at their random init (d is not a boundary normal)."""


def require_trained_normals(mean_init_cos: float, allow: bool,
                            threshold: float = UNTRAINED_COS) -> Optional[str]:
    """None when the normals left their init; else a warning (``allow``) or an error.

    Raises:
      UntrainedNormalsError: mean cos(w, w_init) > ``threshold`` and not
        ``allow`` (one line naming the fields that change it).
    """
    mean_init_cos = float(mean_init_cos)
    if mean_init_cos <= threshold:
        return None
    message = (f"the attention SVMs' normals stayed at their random init (mean cos(w, w_init) "
               f"= {mean_init_cos:.3f} > {threshold}), so LADDER's d is not a boundary normal; "
               f"fit on scaled latents (svm.latent_scaling='standardize', the default, or "
               f"'pixels255'), or set svm.allow_untrained_normals=True to run this legacy "
               f"behaviour anyway")
    if not allow:
        raise UntrainedNormalsError(message)
    return message + " (allowed by svm.allow_untrained_normals=True)"


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (..., D) arrays (0 for a zero row)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.sum(a * b, axis=-1) / np.maximum(den, 1e-300)


def class_means(z: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, D) mean latent of every class (float64)."""
    labels = np.asarray(labels)
    sums = np.zeros((num_classes, z.shape[-1]), np.float64)
    np.add.at(sums, labels, np.asarray(z, np.float64))
    counts = np.bincount(labels, minlength=num_classes)
    return sums / np.maximum(counts, 1)[:, None]


def mean_latent_norm(z: np.ndarray) -> float:
    """r of the 'latent_norm' eps unit: the mean Euclidean norm of the latents."""
    return float(np.mean(np.linalg.norm(np.asarray(z, np.float64), axis=-1)))


def normal_gap_cos(svms: attention_svm.LatentSVM, pairs: np.ndarray, means: np.ndarray
                   ) -> np.ndarray:
    """(P,) cos(d, mu_t - mu_y) of every pair's boundary normal d (latent space)."""
    d = np.asarray(attention_svm.boundary_normal(svms))
    pairs = np.asarray(pairs)
    return cosine_rows(d, means[pairs[:, 1]] - means[pairs[:, 0]])


def _pad_rows(a: np.ndarray, multiple: int) -> np.ndarray:
    pad = -len(a) % multiple
    return np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a


_latent_attention = jax.jit(attention_svm.latent_attention, static_argnames=("use_exp",))


def pair_attention(svms: attention_svm.LatentSVM, pair_of: np.ndarray, z: np.ndarray,
                   use_exp: bool, chunk: int = 64) -> np.ndarray:
    """(N, D) beta of every latent under its own pair's SVM (``pair_of[i]`` indexes ``svms``).

    One pair at a time (gathering a (D, D) attention kernel per latent would
    take gigabytes), in padded chunks of one shape: one compiled program.
    """
    z = np.asarray(z, np.float32)
    beta = np.zeros(z.shape, np.float32)
    for p in np.unique(pair_of):
        rows = np.nonzero(pair_of == p)[0]
        svm = jax.tree.map(lambda a: jnp.asarray(a[p]), svms)
        zp = _pad_rows(z[rows], chunk)
        out = np.concatenate([np.asarray(_latent_attention(svm, zp[i:i + chunk],
                                                           use_exp=use_exp))
                              for i in range(0, len(zp), chunk)])
        beta[rows] = out[:len(rows)]
    return beta


def predict_rows(predict: Callable[[jax.Array], jax.Array], z: np.ndarray,
                 batch: int = 1024) -> np.ndarray:
    """``predict`` over (N, D) latents in padded batches of one shape."""
    z = np.asarray(z, np.float32)
    if len(z) == 0:
        return np.zeros((0,), np.int32)
    batch = min(batch, len(z))
    zp = _pad_rows(z, batch)
    out = np.concatenate([np.asarray(predict(jnp.asarray(zp[i:i + batch])))
                          for i in range(0, len(zp), batch)])
    return out[:len(z)]


def flip_fractions(predict: Callable[[jax.Array], jax.Array], z: np.ndarray,
                   step: np.ndarray, eps_values: Sequence[float],
                   targets: Optional[np.ndarray] = None) -> dict[str, list[float]]:
    """For each eps: the fraction of rows whose prediction changes at z + eps * step.

    Returns ``{"flip": [...]}`` (and ``"to_target"``: the fraction predicted as
    ``targets``, when given), one value per eps.
    """
    clean = predict_rows(predict, z)
    out: dict[str, list[float]] = {"flip": []}
    if targets is not None:
        out["to_target"] = []
    for eps in eps_values:
        pred = predict_rows(predict, z + np.float32(eps) * step)
        out["flip"].append(float(np.mean(pred != clean)))
        if targets is not None:
            out["to_target"].append(float(np.mean(pred == targets)))
    return out


def same_length_random(step: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A Gaussian direction per row (drawn from ``rng``), scaled to that row's ||step||."""
    u = rng.standard_normal(step.shape)
    length = np.linalg.norm(np.asarray(step, np.float64), axis=-1, keepdims=True)
    return (u * length / np.maximum(np.linalg.norm(u, axis=-1, keepdims=True), 1e-300)
            ).astype(np.float32)


def direction_check(
    predict: Callable[[jax.Array], jax.Array],
    svms: attention_svm.LatentSVM,
    pairs: np.ndarray,
    z: np.ndarray,
    sources: np.ndarray,
    targets: np.ndarray,
    *,
    eps_values: Sequence[float],
    eps_unit: str,
    latent_norm: float,
    use_exp: bool,
    rng: np.random.Generator,
) -> dict:
    """Flip fractions of LADDER's push and of a same-length random push, per eps.

    ``z`` (N, D) are the latents LADDER perturbs, ``sources``/``targets``
    their pair; ``svms`` the stacked SVMs of ``pairs``; ``predict`` maps
    latents to the vanilla model's labels (jit it: it runs once per eps in
    batches of one shape). ``latent_norm`` is r of the 'latent_norm' unit;
    ``rng`` draws the random directions.
    """
    z = np.asarray(z, np.float32)
    num_classes = int(np.max(pairs)) + 1
    pair_of = attention_svm.pair_index_table(pairs, num_classes)[sources, targets]
    if np.any(pair_of < 0):
        raise ValueError("direction_check: some (source, target) pairs have no SVM")
    beta = pair_attention(svms, pair_of, z, use_exp)
    d = np.asarray(attention_svm.boundary_normal(svms))[pair_of]
    step = np.asarray(perturb.step_direction(jnp.asarray(beta * d), eps_unit, latent_norm))
    ladder = flip_fractions(predict, z, step, eps_values, targets=np.asarray(targets))
    random = flip_fractions(predict, z, same_length_random(step, rng), eps_values)
    rel = np.linalg.norm(step, axis=-1) / np.maximum(np.linalg.norm(z, axis=-1), 1e-30)
    return {
        "eps_unit": eps_unit,
        "latent_norm": float(latent_norm),
        "eps": [float(e) for e in eps_values],
        "num_latents": int(len(z)),
        "ladder_flip": ladder["flip"],
        "ladder_to_target": ladder["to_target"],
        "random_flip": random["flip"],
        # mean ||eps * step|| / ||z|| at each eps
        "relative_step": [float(e * np.mean(rel)) for e in eps_values],
    }


def calibrate(eps_values: Sequence[float], flips: Sequence[float],
              target: float = DEFAULT_FLIP_TARGET) -> tuple[float, bool]:
    """(eps, reached): the smallest eps whose flip fraction is >= ``target``.

    When no eps reaches it, the largest eps and False (the caller warns).
    """
    if len(eps_values) == 0 or len(eps_values) != len(flips):
        raise ValueError(f"calibrate needs one flip fraction per eps, got {len(eps_values)} eps "
                         f"and {len(flips)} fractions")
    order = np.argsort(np.asarray(eps_values, np.float64))
    for i in order:
        if flips[i] >= target:
            return float(eps_values[i]), True
    return float(eps_values[order[-1]]), False


def format_table(check: dict) -> str:
    """The check as a few log lines: eps, LADDER / random flip %, relative step."""
    lines = [f"direction check on {check['num_latents']} training latents "
             f"(eps in {check['eps_unit']} units):"]
    for i, eps in enumerate(check["eps"]):
        lines.append(f"  eps={eps:g}: LADDER flips {100 * check['ladder_flip'][i]:.1f} % "
                     f"(to target {100 * check['ladder_to_target'][i]:.1f} %), random "
                     f"{100 * check['random_flip'][i]:.1f} %, step "
                     f"{check['relative_step'][i]:.3f} of |z|")
    return "\n".join(lines)
