"""Maps PyTorch ``state_dict`` tensors onto this library's Flax variable trees.

The Flax models in ``advcore.models`` reproduce the papers' PyTorch modules
layer for layer, so a checkpoint maps onto them by *name*, with one rule per
kind of leaf:

==============================  ===============================  ==================
PyTorch (``state_dict``)        Flax (``variables``)             array transform
==============================  ===============================  ==================
``<conv>.weight`` (O, I, H, W)  ``params/<conv>/kernel``         to (H, W, I, O)
``<linear>.weight`` (out, in)   ``params/<dense>/kernel``        to (in, out)
``<layer>.bias``                ``params/<layer>/bias``          as is
``<bn>.weight``                 ``params/<bn>/scale``            as is
``<bn>.running_mean``           ``batch_stats/<bn>/mean``        as is
``<bn>.running_var``            ``batch_stats/<bn>/var``         as is
``<bn>.num_batches_tracked``    (none: PyTorch bookkeeping)      ignored
==============================  ===============================  ==================

and per architecture a rewrite of the module path (``_MODULE_RULES``), e.g.
the WRN's ``block1/layer_0/conv1`` is ``block1.layer.0.conv1``, the ResNets'
``layer2/block_0/shortcut_conv`` is ``layer2.0.shortcut.0``, TRADES' SmallCNN
``conv1`` is ``feature_extractor.conv1``.

No Linear follows a flatten of a spatial map except SmallCNN's ``fc1``, and
that model flattens in PyTorch's (C, H, W) order (``layers.flatten_chw``), so
every Linear weight is a plain transpose; the WRN and ResNets pool to 1x1
first.

The expected names and shapes come from the Flax model itself
(``jax.eval_shape`` of its init), so the check is exact: a missing, unexpected
or misshaped tensor is refused with its name (and both shapes). The only
tensors that may be left over are ``num_batches_tracked`` of a BatchNorm the
model has, and for the WRN the unused ``sub_block1`` that TRADES and LBGAT
build and save (loaded into the model only with
``include_unused_sub_block=True``). RobustBench's ``mu``/``sigma``
normalisation buffers are taken out before, by ``pop_normalization_buffers``,
and become the model's input normalisation.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Mapping, Optional

import ml_dtypes
import numpy as np

from advcore.external.errors import ExternalCheckpointError

_RESNET_RULES = (
    (r"block_(\d+)", r"\1"),
    (r"shortcut_conv", "shortcut.0"),
    (r"shortcut_bn", "shortcut.1"),
)

# Flax module-path segment -> PyTorch name, per architecture (full matches;
# other segments keep their name).
_MODULE_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "wrn": ((r"layer_(\d+)", r"layer.\1"),),
    "resnet18_lbgat": _RESNET_RULES,
    "resnet18": _RESNET_RULES,
    "cifar_resnet18": _RESNET_RULES,
    "preact_resnet18": _RESNET_RULES[:2],
    "small_cnn": ((r"(conv\d+)", r"feature_extractor.\1"), (r"(fc\d+)", r"classifier.\1")),
}

SUPPORTED_ARCHS: tuple[str, ...] = tuple(_MODULE_RULES)

# (collection, Flax leaf) -> PyTorch leaf.
_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "bias"): "bias",
    ("params", "scale"): "weight",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}

# Weights may be stored in any of these; they are loaded as float32.
FLOAT_DTYPES = tuple(np.dtype(d) for d in (np.float32, np.float64, np.float16, ml_dtypes.bfloat16))

# Keys that wrap a state_dict in the official scripts' checkpoints, in the
# order they are tried.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "net", "model")
DATA_PARALLEL_PREFIX = "module."
# RobustBench's wrapper models register their input normalisation as buffers.
NORMALIZATION_BUFFERS = ("mu", "sigma")


@dataclasses.dataclass(frozen=True)
class TorchTensor:
    """Where one PyTorch tensor goes in the Flax variables.

    Attributes:
      name: the ``state_dict`` key.
      collection: 'params' or 'batch_stats'.
      path: the leaf's path inside the collection.
      torch_shape: the shape the PyTorch tensor must have.
    """

    name: str
    collection: str
    path: tuple[str, ...]
    torch_shape: tuple[int, ...]


def _check_arch(arch: str) -> None:
    if arch not in _MODULE_RULES:
        raise ValueError(
            f"arch {arch!r} has no PyTorch layout; valid archs: {', '.join(SUPPORTED_ARCHS)}")


def _torch_module_name(arch: str, path: Iterable[str]) -> str:
    parts = []
    for segment in path:
        for pattern, replacement in _MODULE_RULES[arch]:
            if re.fullmatch(pattern, segment):
                segment = re.sub(pattern, replacement, segment)
                break
        parts.append(segment)
    return ".".join(parts)


def _torch_shape(flax_shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    if leaf == "kernel" and len(flax_shape) == 4:  # HWIO -> OIHW
        h, w, i, o = flax_shape
        return (o, i, h, w)
    if leaf == "kernel" and len(flax_shape) == 2:  # (in, out) -> (out, in)
        return tuple(reversed(flax_shape))
    return tuple(flax_shape)


def tree_leaves(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
    """``(path, leaf)`` for every leaf of a nested mapping, in order."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from tree_leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def torch_layout(arch: str, variable_shapes: Mapping[str, Any]) -> dict[str, TorchTensor]:
    """``{state_dict key: TorchTensor}`` for a model's variables (arrays or shape structs)."""
    _check_arch(arch)
    layout: dict[str, TorchTensor] = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in tree_leaves(variable_shapes.get(collection, {})):
            torch_leaf = _LEAF_NAMES.get((collection, path[-1]))
            if torch_leaf is None:
                raise ValueError(
                    f"{arch}: variable {collection}/{'/'.join(path)} has no PyTorch counterpart "
                    "(BatchNorm sets, num_bn_sets > 1, have none)")
            name = f"{_torch_module_name(arch, path[:-1])}.{torch_leaf}"
            if name in layout:
                raise ValueError(f"{arch}: two variables map to the PyTorch name {name!r}")
            layout[name] = TorchTensor(
                name, collection, path, _torch_shape(tuple(leaf.shape), path[-1]))
    return layout


def _to_flax(array: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and array.ndim == 4:
        return np.transpose(array, (2, 3, 1, 0))
    if leaf == "kernel" and array.ndim == 2:
        return array.T
    return array


def is_ignorable(arch: str, name: str, layout: Mapping[str, TorchTensor]) -> bool:
    """Whether a file tensor outside ``layout`` may be left unused (see the module docstring)."""
    module, _, leaf = name.rpartition(".")
    if leaf == "num_batches_tracked" and f"{module}.running_mean" in layout:
        return True
    # TRADES/LBGAT save the never-run sub_block1; a model built without it ignores it.
    return arch == "wrn" and name.startswith("sub_block1.") and not any(
        key.startswith("sub_block1.") for key in layout)


def summarize(items: list[str], limit: int = 8) -> str:
    """The first ``limit`` items, comma-separated, and how many more there are."""
    more = f", ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _hints(arch: str, missing: list[str], unexpected: list[str],
           misshaped: list[str]) -> list[str]:
    hints = []
    if arch == "preact_resnet18" and "bn.weight" in missing:
        hints.append("the file has no final BatchNorm 'bn.*': a RobustBench PreActResNet18() "
                     "without bn_before_fc needs kwargs final_bn=False (and, for its plain "
                     "PreActBlock, preact_shortcut=False)")
    if arch == "preact_resnet18" and "bn.weight" in unexpected:
        hints.append("the file has a final BatchNorm 'bn.*': use final_bn=True")
    if any(name.split(" ")[0] in ("fc.weight", "linear.weight", "classifier.fc3.weight")
           for name in misshaped):
        hints.append("the output layer's shape differs: check num_classes")
    return hints


def convert_state_dict(
    arch: str,
    tensors: Mapping[str, np.ndarray],
    variable_shapes: Mapping[str, Any],
    source: str = "checkpoint",
) -> tuple[dict[str, dict], list[str]]:
    """PyTorch ``tensors`` -> Flax ``variables`` for a model with ``variable_shapes``.

    Args:
      arch: a name in ``SUPPORTED_ARCHS``.
      tensors: the ``state_dict`` (prefixes and wrappers already removed; see
        ``unwrap_state_dict``).
      variable_shapes: the model's variables or their ``jax.eval_shape``.
      source: how to name the file in error messages.

    Returns:
      ``(variables, ignored)``: ``{'params': ..., 'batch_stats': ...}`` as float32
      numpy arrays (no ``batch_stats`` for models without BN), and the sorted
      names of the tensors that were deliberately not used.

    Raises:
      ExternalCheckpointError: missing, unexpected, misshaped, non-floating or
        non-finite tensors, each named.
    """
    layout = torch_layout(arch, variable_shapes)
    missing = [f"{n} {t.torch_shape}" for n, t in layout.items() if n not in tensors]
    ignored, unexpected, misshaped = [], [], []
    for name, array in tensors.items():
        if name in layout:
            expected = layout[name].torch_shape
            if tuple(np.shape(array)) != expected:
                misshaped.append(f"{name} expected {expected}, found {tuple(np.shape(array))}")
        elif is_ignorable(arch, name, layout):
            ignored.append(name)
        else:
            unexpected.append(f"{name} {tuple(np.shape(array))}")
    problems = [(label, items) for label, items in (
        ("missing tensors", missing), ("unexpected tensors", unexpected),
        ("misshaped tensors", misshaped)) if items]
    if problems:
        hints = _hints(arch, [m.split(" ")[0] for m in missing],
                       [u.split(" ")[0] for u in unexpected], misshaped)
        raise ExternalCheckpointError(
            f"{source} does not fit {arch}: "
            + "; ".join(f"{label}: {summarize(items)}" for label, items in problems)
            + "".join(f". Hint: {h}" for h in hints))
    variables: dict[str, dict] = {}
    for name, slot in layout.items():
        array = np.asarray(tensors[name])
        if array.dtype not in FLOAT_DTYPES:
            raise ExternalCheckpointError(
                f"{source}: tensor {name} has dtype {array.dtype}, expected one of "
                f"{[d.name for d in FLOAT_DTYPES]}")
        array = array.astype(np.float32)
        if not np.all(np.isfinite(array)):
            raise ExternalCheckpointError(f"{source}: tensor {name} has non-finite values")
        node = variables.setdefault(slot.collection, {})
        for key in slot.path[:-1]:
            node = node.setdefault(key, {})
        node[slot.path[-1]] = np.ascontiguousarray(_to_flax(array, slot.path[-1]))
    return variables, sorted(ignored)


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> tuple[dict[str, np.ndarray], dict]:
    """The ``state_dict`` inside a loaded checkpoint object.

    Accepts a plain ``{name: array}`` mapping, or a dict holding one under a key
    of ``WRAPPER_KEYS`` (other entries such as ``epoch`` or ``optimizer`` are
    ignored), and strips the ``module.`` prefix that ``nn.DataParallel`` adds
    (when every key has it).

    Returns:
      ``(tensors, notes)``; ``notes`` says which wrapper key and prefix were
      removed (``{'wrapper_key': ..., 'stripped_prefix': ...}``).
    """
    notes: dict[str, Optional[str]] = {"wrapper_key": None, "stripped_prefix": None}

    def is_state_dict(value: Any) -> bool:
        return isinstance(value, Mapping) and bool(value) and all(
            isinstance(k, str) and isinstance(v, np.ndarray) for k, v in value.items())

    if not isinstance(obj, Mapping):
        raise ExternalCheckpointError(
            f"{source} holds a {type(obj).__name__}, not a state_dict (a mapping of tensors)")
    if not is_state_dict(obj):
        for key in WRAPPER_KEYS:
            if is_state_dict(obj.get(key)):
                obj, notes["wrapper_key"] = obj[key], key
                break
        else:
            found = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:12])
            raise ExternalCheckpointError(
                f"{source} is neither a state_dict nor a dict holding one under "
                f"{list(WRAPPER_KEYS)}; its entries: {found}")
    tensors = dict(obj)
    while all(k.startswith(DATA_PARALLEL_PREFIX) for k in tensors):
        tensors = {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in tensors.items()}
        notes["stripped_prefix"] = (notes["stripped_prefix"] or "") + DATA_PARALLEL_PREFIX
    return tensors, notes


def pop_normalization_buffers(
    tensors: dict[str, np.ndarray], channels: int, source: str = "checkpoint"
) -> Optional[dict[str, list[float]]]:
    """Removes RobustBench-style ``mu`` / ``sigma`` buffers and returns them.

    Returns ``{'mean': [...], 'std': [...]}`` (length ``channels``), or None
    when the file has neither buffer.
    """
    present = [k for k in NORMALIZATION_BUFFERS if k in tensors]
    if not present:
        return None
    if len(present) != 2:
        raise ExternalCheckpointError(
            f"{source} has buffer {present[0]!r} without its partner; expected both "
            f"{list(NORMALIZATION_BUFFERS)}")
    values = []
    for key in NORMALIZATION_BUFFERS:
        array = np.asarray(tensors.pop(key), np.float64)
        if array.size != channels:
            raise ExternalCheckpointError(
                f"{source}: buffer {key!r} has shape {array.shape}, expected {channels} values "
                f"(one per input channel)")
        values.append([float(v) for v in array.reshape(-1)])
    return {"mean": values[0], "std": values[1]}


__all__ = [
    "DATA_PARALLEL_PREFIX",
    "FLOAT_DTYPES",
    "NORMALIZATION_BUFFERS",
    "SUPPORTED_ARCHS",
    "TorchTensor",
    "WRAPPER_KEYS",
    "convert_state_dict",
    "is_ignorable",
    "summarize",
    "tree_leaves",
    "pop_normalization_buffers",
    "torch_layout",
    "unwrap_state_dict",
]
