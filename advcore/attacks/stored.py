"""Stored attack sets: adversarial examples crafted once, saved, re-scored later.

LADDER evaluates every defended model on attack sets generated **once against
the vanilla model** (docs/ladder.md#evaluation, the black-box tables). A set is a directory::

    images.npy    (N, H, W, C) uint8 (default) or float32 in [0, 1]
    labels.npy    (N,) int32   true labels of the source images
    targets.npy   (N,) int32   target labels (targeted attacks only; optional)
    indices.npy   (N,) int64   indices of the source images in their split
    meta.json     attack name + params, dataset, split, source model, creation
                  time, library version, image dtype, and per file its
                  sha256 / shape / dtype

Image format: ``"uint8"`` (default) stores ``round(255 * x)`` -- rounding,
never truncation -- which matches the PNG files LADDER stored and moves each
pixel by at most 0.5/255 (so an L-inf perturbation may exceed eps by up to
0.5/255 = 0.002); ``"float32"`` stores the attack output bit-exactly.

``meta.json`` carries a digest of its own content (``meta_digest``: SHA-256
of the canonical JSON of everything else in it), so an edited attack name,
its parameters, the dataset, split or file list is detected too.
``load_attack_set`` checks that digest, recomputes every file's sha256 and
checks shapes and dtypes against ``meta.json``; any mismatch (a modified,
truncated, missing or foreign file) raises ``AttackSetError`` (a
``ValueError``) naming the file. ``meta.json`` is written last, so an
interrupted save is also refused.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from typing import Any, Mapping, Optional, Union

import numpy as np

from advcore.files import sha256_file
from advcore.version import __version__

FORMAT_VERSION = 1
IMAGE_FORMATS = ("uint8", "float32")
_META = "meta.json"


class AttackSetError(ValueError):
    """A stored attack set is missing, corrupt or inconsistent."""


@dataclasses.dataclass(frozen=True)
class AttackSet:
    """A loaded attack set (see the module docstring for the fields)."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    meta: dict
    targets: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def attack(self) -> str:
        return self.meta["attack"]["name"]

    def float_images(self) -> np.ndarray:
        """The images as float32 in [0, 1] whatever the stored format."""
        if self.images.dtype == np.uint8:
            return self.images.astype(np.float32) / 255.0
        return self.images.astype(np.float32)


def _meta_digest(meta: Mapping[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()


def _jsonable(value: Any) -> Any:
    """Attack params / model descriptions as JSON (tuples -> lists, numpy -> python)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    return repr(value)


def _to_images(images: Any, image_format: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype == np.uint8:
        if image_format == "uint8":
            return images
        return images.astype(np.float32) / 255.0
    images = images.astype(np.float32)
    if not np.all(np.isfinite(images)):
        raise ValueError("images contain NaN or Inf")
    if images.size and (images.min() < 0.0 or images.max() > 1.0):
        raise ValueError(
            f"float images must lie in [0, 1], got range [{images.min()}, {images.max()}]"
        )
    if image_format == "uint8":
        return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    return images


def save_attack_set(
    directory: Union[str, os.PathLike],
    images: Any,
    labels: Any,
    *,
    indices: Any,
    attack: str,
    attack_params: Optional[Mapping[str, Any]] = None,
    dataset: str,
    split: str,
    source_model: Union[str, Mapping[str, Any]],
    targets: Any = None,
    image_format: str = "uint8",
    extra: Optional[Mapping[str, Any]] = None,
    overwrite: bool = False,
) -> str:
    """Writes an attack set to ``directory`` and returns its path.

    Args:
      images: ``(N, H, W, C)`` float in [0, 1] or uint8 adversarial images.
      labels: ``(N,)`` true labels; targets: ``(N,)`` target labels or None.
      indices: ``(N,)`` indices of the source images in ``dataset/split``.
      attack, attack_params: the ``make_attack`` name and its resolved params.
      dataset, split: where the source images came from.
      source_model: a description of the attacked (vanilla) model.
      image_format: ``"uint8"`` (rounded, default) or ``"float32"`` (exact).
      extra: more JSON metadata to keep under ``meta["extra"]``.
      overwrite: replace an existing set (otherwise a ``FileExistsError``).
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    imgs = _to_images(images, image_format)
    if imgs.ndim < 2:
        raise ValueError(f"images must have shape (N, ...), got {imgs.shape}")
    n = imgs.shape[0]
    arrays = {"images": imgs}
    for name, value, dtype in (("labels", labels, np.int32), ("indices", indices, np.int64),
                               ("targets", targets, np.int32)):
        if value is None:
            if name == "targets":
                continue
            raise ValueError(f"{name} is required")
        arr = np.asarray(value)
        if arr.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) to match images, got {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
        arrays[name] = arr.astype(dtype)

    directory = os.fspath(directory)
    meta_path = os.path.join(directory, _META)
    if os.path.exists(meta_path) and not overwrite:
        raise FileExistsError(f"an attack set already exists at {directory} (overwrite=False)")
    os.makedirs(directory, exist_ok=True)
    if overwrite and os.path.exists(meta_path):
        os.remove(meta_path)  # the set is invalid until the new meta is written
    for stale in ("targets",):
        path = os.path.join(directory, f"{stale}.npy")
        if stale not in arrays and os.path.exists(path):
            os.remove(path)

    files = {}
    for name, arr in arrays.items():
        path = os.path.join(directory, f"{name}.npy")
        np.save(path, arr, allow_pickle=False)
        files[name] = {"sha256": sha256_file(path), "shape": list(arr.shape), "dtype": str(arr.dtype)}

    meta = {
        "format_version": FORMAT_VERSION,
        "attack": {"name": attack, "params": _jsonable(dict(attack_params or {}))},
        "dataset": dataset,
        "split": split,
        "source_model": _jsonable(source_model),
        "num_examples": int(n),
        "image_shape": list(imgs.shape[1:]),
        "image_format": image_format,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "library_version": __version__,
        "files": files,
        "extra": _jsonable(dict(extra or {})),
    }
    meta["meta_digest"] = _meta_digest(meta)
    tmp = meta_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    os.replace(tmp, meta_path)
    return directory


def load_attack_set(directory: Union[str, os.PathLike], *, verify: bool = True) -> AttackSet:
    """Loads and validates an attack set written by ``save_attack_set``.

    ``verify=True`` (default) recomputes the sha256 of every array file.
    Raises ``AttackSetError`` on a missing / corrupt / inconsistent set.
    """
    directory = os.fspath(directory)
    meta_path = os.path.join(directory, _META)
    if not os.path.isfile(meta_path):
        raise AttackSetError(f"no attack set at {directory}: {_META} is missing")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise AttackSetError(f"{meta_path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise AttackSetError(f"{meta_path} is not a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise AttackSetError(
            f"{directory}: unsupported attack-set format_version "
            f"{meta.get('format_version')!r} (expected {FORMAT_VERSION})"
        )
    files = meta.get("files", {})
    for required in ("images", "labels", "indices"):
        if required not in files:
            raise AttackSetError(f"{meta_path} lists no {required!r} file")

    arrays = {}
    for name, info in files.items():
        path = os.path.join(directory, f"{name}.npy")
        if not os.path.isfile(path):
            raise AttackSetError(f"{directory}: {name}.npy is missing")
        if verify:
            digest = sha256_file(path)
            if digest != info.get("sha256"):
                raise AttackSetError(
                    f"{path}: sha256 mismatch (stored {info.get('sha256')}, file {digest}); "
                    "the attack set is corrupt or was modified -- regenerate it"
                )
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as e:  # truncated / not an .npy file
            raise AttackSetError(f"{path} cannot be read: {e}") from None
        if list(arr.shape) != info.get("shape") or str(arr.dtype) != info.get("dtype"):
            raise AttackSetError(
                f"{path}: shape/dtype {arr.shape}/{arr.dtype} do not match meta.json "
                f"{info.get('shape')}/{info.get('dtype')}"
            )
        arrays[name] = arr

    n = meta.get("num_examples")
    for name, arr in arrays.items():
        if arr.shape[0] != n:
            raise AttackSetError(f"{directory}: {name}.npy has {arr.shape[0]} rows, "
                                 f"meta.json says num_examples={n}")
    if str(arrays["images"].dtype) != meta.get("image_format"):
        raise AttackSetError(f"{directory}: images dtype {arrays['images'].dtype} does not match "
                             f"image_format {meta.get('image_format')!r}")
    # Last, so that the structural checks above give their specific messages.
    if meta.get("meta_digest") != _meta_digest(meta):
        raise AttackSetError(
            f"{meta_path} was modified after saving (its content does not match its "
            "meta_digest); the attack set cannot be trusted -- regenerate it")
    return AttackSet(images=arrays["images"], labels=arrays["labels"],
                     indices=arrays["indices"], targets=arrays.get("targets"), meta=meta)
