"""One entry point from a checkpoint file to an attackable model.

``load_external_model(arch, path, num_classes, normalization, kwargs)`` reads

* a PyTorch ``state_dict`` file (``torch.save``, zip or legacy format) without
  executing pickled code (``torch_pickle``),
* a ``.safetensors`` file (``safetensors``),
* or a run of this library (its workdir or ``checkpoints/`` folder, through
  ``advcore.checkpoint.load_raw_state``),

checks every tensor against the registry model ``arch`` (``layouts``), and
returns ``ExternalModel(apply_fn, variables, spec)``: ``apply_fn(variables, x)``
gives eval-mode logits for NHWC float images in [0, 1], with the checkpoint's
input normalisation applied inside, so attacks work in pixel space as for any
model of this library; ``spec`` is a JSON-able record of what was loaded
(architecture, kwargs, normalisation, file path, format and SHA-256), meant to
be written next to evaluation results.

The format is recognised by content, not by file extension.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from advcore import checkpoint, run_spec
from advcore.files import sha256_file
from advcore.external import layouts
from advcore.external.errors import ExternalCheckpointError
from advcore.external.safetensors import read_safetensors, sniff_safetensors
from advcore.external.torch_pickle import read_torch_file, sniff_torch_format
from advcore.models import MODEL_NAMES, NATIVE_INPUT_SHAPES, build_model, init_variables

FORMATS: tuple[str, ...] = ("auto", "torch_zip", "torch_legacy", "safetensors", "orbax")
ORBAX_MODELS = ("robust", "natural")


@dataclasses.dataclass(frozen=True)
class ExternalModel:
    """A loaded checkpoint, ready for ``advcore.attacks`` and ``advcore.evaluate``.

    Attributes:
      apply_fn: ``apply_fn(variables, x) -> logits``; x is NHWC float in [0, 1];
        eval mode (BatchNorm running statistics, no dropout); the
        normalisation of ``spec`` is applied inside.
      variables: ``{'params': ..., 'batch_stats': ...}`` (no ``batch_stats``
        for models without BatchNorm), float32 jax arrays.
      spec: JSON-able ``{'arch', 'num_classes', 'kwargs', 'normalization',
        'source': {'path', 'format', 'sha256', ...}}``.
    """

    apply_fn: Callable[[Any, jax.Array], jax.Array]
    variables: dict
    spec: dict


# --------------------------------------------------------------------------
# Normalisation.


def parse_normalization(text: Optional[str]) -> Optional[dict[str, list[float]]]:
    """Parses a command-line normalisation: '' or 'none', or JSON ``{"mean": [...], "std": [...]}``.

    The channel count is checked later, by ``load_external_model``.
    """
    if text is None or text.strip().lower() in ("", "none"):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            "normalization must be 'none' or JSON such as "
            f'\'{{"mean": [0.4914, 0.4822, 0.4465], "std": [0.2471, 0.2435, 0.2616]}}\', '
            f"got {text!r} ({err})") from err
    return check_normalization(value, channels=None)


def check_normalization(normalization: Any, channels: Optional[int]) -> Optional[dict]:
    """Validates ``None`` or ``{'mean': [...], 'std': [...]}``; returns lists of floats."""
    if normalization is None:
        return None
    ok = isinstance(normalization, Mapping) and set(normalization) == {"mean", "std"}
    if ok:
        mean, std = (normalization[k] for k in ("mean", "std"))
        ok = all(
            isinstance(v, (list, tuple)) and len(v) >= 1 and all(
                isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e)
                for e in v)
            for v in (mean, std)) and all(s > 0 for s in std) and len(mean) == len(std)
    if not ok:
        raise ValueError(
            "normalization must be None or {'mean': [...], 'std': [...]} with one finite "
            f"value per channel and std > 0, got {normalization!r}")
    if channels is not None and len(mean) != channels:
        raise ValueError(
            f"normalization must have {channels} values per statistic (the model's input "
            f"channels), got {len(mean)}: {normalization!r}")
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def _normalize(x: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
    # Kept tiny and private so that a shared helper in advcore.attacks can replace it.
    return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


# --------------------------------------------------------------------------
# Files.


def detect_format(path: str) -> str:
    """'torch_zip', 'torch_legacy', 'safetensors' or 'orbax' from ``path``'s content."""
    if os.path.isdir(path):
        return "orbax"
    with open(path, "rb") as f:
        header = f.read(16)
    fmt = sniff_torch_format(header)
    if fmt is not None:
        return fmt
    if sniff_safetensors(header):
        return "safetensors"
    raise ExternalCheckpointError(
        f"{path}: unrecognised checkpoint format (first bytes {header[:16]!r}); valid formats: "
        f"{', '.join(FORMATS[1:])}")


def _variable_shapes(model: Any, arch: str) -> Any:

    shape = (1, *NATIVE_INPUT_SHAPES[arch])
    return jax.eval_shape(lambda key: init_variables(model, key, shape), jax.random.key(0))


def _orbax_workdir(path: str) -> str:
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return path
    if os.path.basename(path) == "checkpoints":
        return os.path.dirname(path)
    raise ExternalCheckpointError(
        f"{path} is a directory but neither a run's workdir (with checkpoints/) nor its "
        "checkpoints/ folder")


def _check_tree(variables: Mapping, shapes: Mapping, source: str) -> None:
    found = {"/".join(p): tuple(np.shape(v)) for p, v in layouts.tree_leaves(variables)}
    wanted = {"/".join(p): tuple(v.shape) for p, v in layouts.tree_leaves(shapes)}
    problems = [f"missing {k} {s}" for k, s in wanted.items() if k not in found]
    problems += [f"unexpected {k} {s}" for k, s in found.items() if k not in wanted]
    problems += [f"{k} expected {s}, found {found[k]}" for k, s in wanted.items()
                 if k in found and found[k] != s]
    if problems:
        raise ExternalCheckpointError(f"{source} does not fit the model: "
                                      + layouts.summarize(problems))


def _load_orbax(path: str, arch: str, num_classes: int, kwargs: Optional[dict],
                which: str) -> tuple[Any, dict, dict, dict]:
    workdir = _orbax_workdir(path)
    state, _, meta = checkpoint.load_raw_state(workdir)
    spec = meta.get("run_spec") or {}
    models = spec.get("models", {})
    if which not in models:
        raise ValueError(f"which must name a model this run has ({sorted(models)}), "
                         f"got {which!r}")
    run_model = models[which]
    if run_model["arch"] != arch:
        raise ValueError(f"arch must be the run's model {run_model['arch']!r}, got {arch!r}")
    if num_classes != run_model["num_classes"]:
        raise ValueError(f"num_classes must be {run_model['num_classes']} for this run, "
                         f"got {num_classes}")
    merged = {**run_model.get("kwargs", {}), **(kwargs or {})}
    model = build_model(arch, num_classes, **merged)
    variables = run_spec.variables_from_state(run_model, state)
    variables = jax.tree.map(np.asarray, variables)
    _check_tree(variables, _variable_shapes(model, arch), f"{workdir} ({which} model)")
    source = {"path": workdir, "format": "orbax", "step": int(meta["step"]), "model": which,
              "sha256": meta["digest"]}
    return model, variables, merged, source


def _load_tensor_file(path: str, fmt: str, arch: str, num_classes: int,
                      kwargs: dict) -> tuple[Any, dict, Optional[dict], dict]:

    if arch not in layouts.SUPPORTED_ARCHS:
        raise ValueError(f"arch {arch!r} cannot be loaded from a {fmt} file; valid archs: "
                         f"{', '.join(layouts.SUPPORTED_ARCHS)}")
    if kwargs.get("num_bn_sets", 1) != 1:
        raise ValueError(f"kwargs num_bn_sets must be 1 for a PyTorch checkpoint, got "
                         f"{kwargs['num_bn_sets']!r}")
    model = build_model(arch, num_classes, **kwargs)
    obj = read_safetensors(path)[0] if fmt == "safetensors" else read_torch_file(path, fmt)[0]
    tensors, notes = layouts.unwrap_state_dict(obj, path)
    file_norm = layouts.pop_normalization_buffers(
        tensors, NATIVE_INPUT_SHAPES[arch][-1], path)
    variables, ignored = layouts.convert_state_dict(
        arch, tensors, _variable_shapes(model, arch), path)
    source = {"path": os.path.abspath(path), "format": fmt, "sha256": sha256_file(path),
              **notes, "ignored_tensors": ignored}
    return model, variables, file_norm, source


def load_external_model(
    arch: str,
    path: str,
    num_classes: int,
    normalization: Optional[Mapping[str, Any]] = None,
    kwargs: Optional[Mapping[str, Any]] = None,
    *,
    file_format: str = "auto",
    which: str = "robust",
) -> ExternalModel:
    """Loads a checkpoint file (or a run of this library) as an attackable model.

    Args:
      arch: an ``advcore.models`` registry name. PyTorch and safetensors files:
        one of ``layouts.SUPPORTED_ARCHS`` (``wrn`` for the TRADES/LBGAT
        WideResNets, ``resnet18_lbgat``, ``resnet18``, ``preact_resnet18``,
        ``small_cnn``); runs of this library: the run's model.
      path: a ``.pt``/``.pth`` file, a ``.safetensors`` file, or a run's workdir
        (or its ``checkpoints/`` folder).
      num_classes: number of logits.
      normalization: None (the model takes [0, 1] pixels) or ``{'mean': [...],
        'std': [...]}`` per input channel, applied as (x - mean) / std inside
        ``apply_fn``. A file with RobustBench ``mu``/``sigma`` buffers supplies
        its own; a different value here is refused.
      kwargs: registry keyword arguments, e.g. ``{'depth': 34, 'widen_factor':
        10}`` for ``wrn`` or ``{'final_bn': False, 'preact_shortcut': False}``
        for RobustBench's plain ``PreActResNet18()``. For a run, they default
        to the run's own.
      file_format: 'auto' (by content) or one of ``FORMATS``.
      which: for a run, 'robust' or 'natural' (LBGAT's natural model).

    Returns:
      ``ExternalModel(apply_fn, variables, spec)``.

    Raises:
      ValueError: unknown arch, format or kwargs, bad num_classes or
        normalisation (the message lists the valid values).
      ExternalCheckpointError (a ValueError): the file is unsafe, malformed,
        truncated, or does not fit the model (the tensor is named).
      FileNotFoundError: ``path`` does not exist.
    """

    if arch not in MODEL_NAMES:
        raise ValueError(f"arch must be one of {', '.join(MODEL_NAMES)}, got {arch!r}")
    if file_format not in FORMATS:
        raise ValueError(f"file_format must be one of {', '.join(FORMATS)}, got {file_format!r}")
    if which not in ORBAX_MODELS:
        raise ValueError(f"which must be one of {ORBAX_MODELS}, got {which!r}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ValueError(f"kwargs must be a mapping or None, got {kwargs!r}")
    channels = NATIVE_INPUT_SHAPES[arch][-1]
    normalization = check_normalization(normalization, channels)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint path does not exist: {path}")
    fmt = detect_format(path) if file_format == "auto" else file_format
    if (fmt == "orbax") != os.path.isdir(path):
        raise ValueError(f"file_format {fmt!r} does not match {path} "
                         f"({'a directory' if os.path.isdir(path) else 'a file'})")

    if fmt == "orbax":
        model, variables, used_kwargs, source = _load_orbax(
            path, arch, num_classes, None if kwargs is None else dict(kwargs), which)
        file_norm = None
    else:
        used_kwargs = dict(kwargs or {})
        model, variables, file_norm, source = _load_tensor_file(
            path, fmt, arch, num_classes, used_kwargs)
    if file_norm is not None and normalization is not None and not np.allclose(
        [normalization["mean"], normalization["std"]],
        [file_norm["mean"], file_norm["std"]], rtol=1e-6, atol=1e-7,
    ):
        raise ValueError(
            f"normalization {normalization} differs from the mu/sigma buffers stored in "
            f"{path}: {file_norm}")
    normalization = normalization or file_norm
    variables = jax.tree.map(jnp.asarray, variables)

    if normalization is None:
        def apply_fn(v: Any, x: jax.Array) -> jax.Array:
            return model.apply(v, x, train=False)
    else:
        mean, std = tuple(normalization["mean"]), tuple(normalization["std"])

        def apply_fn(v: Any, x: jax.Array) -> jax.Array:
            return model.apply(v, _normalize(x, mean, std), train=False)

    spec = {
        "arch": arch,
        "num_classes": int(num_classes),
        "kwargs": json.loads(json.dumps(used_kwargs, default=str)),
        "normalization": normalization,
        "source": source,
    }
    return ExternalModel(apply_fn, variables, spec)


__all__ = [
    "FORMATS",
    "ExternalModel",
    "check_normalization",
    "detect_format",
    "load_external_model",
    "parse_normalization",
]
