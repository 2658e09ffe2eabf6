"""What a run records for whoever evaluates it: each model, resolved, and its threat model.

Every training run (any method) stores a *run spec* with each checkpoint, so
that ``advcore.evaluate`` rebuilds any of its models without knowing which
method trained it:

```
{"version": 1,
 "method": "lbgat_trades",
 "dataset": {"name": "mnist", "source": "auto", "data_dir": "", "test_split": "test"},
 "models": {"robust": {model spec}, "natural": {model spec}},
 "default_model": "robust",
 "threat_model": {"norm": "linf", "eps": 0.3, "attacks": ["pgd40"], "step_size": null}}
```

A *model spec* is fully resolved: architecture name and every keyword
argument (``num_bn_sets`` included), the call keywords (``bn_set``), where its
variables live in the saved state, its output head, and the input
normalisation it expects (applied inside its ``apply_fn``, so attacks always
work on [0, 1] pixels).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from advcore.models import build_model
from advcore.variables import ModelVars, apply_eval

SPEC_VERSION = 1
HEADS = ("softmax", "binary")


def model_spec(
    arch: str,
    num_classes: int,
    *,
    kwargs: Optional[Mapping[str, Any]] = None,
    call_kwargs: Optional[Mapping[str, Any]] = None,
    state_key: str = "robust",
    head: str = "softmax",
    binary_threshold: float = 0.0,
    normalization: Optional[Mapping[str, Sequence[float]]] = None,
) -> dict:
    """A resolved, JSON-able description of one network of a run.

    Args:
      arch, num_classes, kwargs: ``advcore.models.build_model`` arguments
        (``num_classes`` is the number of logits: 1 for a binary head).
      call_kwargs: keywords of every call (e.g. ``{"bn_set": 1}``).
      state_key: the entry of the saved state holding ``{params, batch_stats}``.
      head: ``"softmax"`` (argmax of the logits) or ``"binary"`` (one logit,
        class 1 iff it exceeds ``binary_threshold``).
      normalization: ``{"mean": [...], "std": [...]}`` per channel, or None.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if normalization is not None:
        mean, std = normalization.get("mean"), normalization.get("std")
        if mean is None or std is None or len(mean) != len(std) or min(std) <= 0:
            raise ValueError("normalization must be {'mean': [...], 'std': [...]} with one "
                             f"positive std per mean, got {dict(normalization)!r}")
        normalization = {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}
    return {
        "arch": arch,
        "num_classes": int(num_classes),
        "kwargs": _plain(dict(kwargs or {})),
        "call_kwargs": _plain(dict(call_kwargs or {})),
        "state_key": state_key,
        "head": head,
        "binary_threshold": float(binary_threshold),
        "normalization": normalization,
    }


def run_spec(*, method: str, dataset: Mapping[str, Any], models: Mapping[str, dict],
             default_model: str, threat_model: Mapping[str, Any]) -> dict:
    """The run spec stored with every checkpoint (module docstring)."""
    if default_model not in models:
        raise ValueError(f"default_model must be one of {sorted(models)}, got {default_model!r}")
    return _plain({"version": SPEC_VERSION, "method": method, "dataset": dict(dataset),
                   "models": dict(models), "default_model": default_model,
                   "threat_model": dict(threat_model)})


def _plain(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def decision_logits(logits: jax.Array, head: str, threshold: float = 0.0) -> jax.Array:
    """Logits whose argmax is the model's *prediction* (what accuracy and attacks use).

    A binary head's single logit ``l`` becomes ``[threshold, l]``: class 1 iff
    ``l > threshold`` (ties have measure zero).
    """
    if head == "softmax":
        return logits
    if head != "binary":
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    l = logits.reshape(logits.shape[0])
    return jnp.stack([jnp.full_like(l, threshold), l], axis=-1)


def build(spec: Mapping[str, Any]):
    """The Flax module of a model spec."""
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["kwargs"].items()}
    return build_model(spec["arch"], spec["num_classes"], **kwargs)


def make_apply_fn(spec: Mapping[str, Any]) -> Callable[[dict, jax.Array], jax.Array]:
    """``apply_fn(variables, x) -> decision logits`` in eval mode, x NHWC in [0, 1]."""
    module = build(spec)
    call_kwargs = dict(spec.get("call_kwargs") or {})
    head, threshold = spec.get("head", "softmax"), spec.get("binary_threshold", 0.0)
    norm = spec.get("normalization")
    mean = None if norm is None else jnp.asarray(norm["mean"], jnp.float32)
    std = None if norm is None else jnp.asarray(norm["std"], jnp.float32)

    def apply_fn(variables: dict, x: jax.Array) -> jax.Array:
        if mean is not None:
            x = (x - mean) / std
        logits = apply_eval(module, ModelVars.from_variables(variables), x, **call_kwargs)
        return decision_logits(logits, head, threshold)

    return apply_fn


def variables_from_state(spec: Mapping[str, Any], state: Mapping[str, Any]) -> dict:
    """The model's ``{params[, batch_stats]}`` from a saved state's pure dict."""
    key = spec["state_key"]
    if key not in state or not state[key]:
        raise ValueError(f"the checkpoint's state has no {key!r} entry for this model")
    entry = state[key]
    variables = {"params": entry["params"]}
    if entry.get("batch_stats"):
        variables["batch_stats"] = entry["batch_stats"]
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), variables)
