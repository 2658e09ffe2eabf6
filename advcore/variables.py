"""One network's variables as a pytree, and the two ways the library applies a network.

* ``ModelVars``: ``params`` and ``batch_stats`` (``{}`` for a network without
  BatchNorm), a ``flax.struct`` dataclass, so jit, sharding and orbax handle
  it directly.
* ``apply_train``: train mode (batch statistics, dropout); returns the output
  and the updated running statistics, so a step can thread them through
  several forward passes in a fixed order.
* ``apply_eval``: eval mode (running statistics, no dropout, nothing updated).

Both apply the backend's model rewrites (``advcore.backend``), so every step,
attack and evaluation of the library runs the fastest form for the backend.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
from flax import struct

from advcore import backend


@struct.dataclass
class ModelVars:
    """One network's variables; ``batch_stats`` is ``{}`` for BN-free networks."""

    params: Any
    batch_stats: Any

    @classmethod
    def from_variables(cls, variables: Mapping[str, Any]) -> "ModelVars":
        """From a Flax variables dict (``{'params': ..., 'batch_stats': ...}``)."""
        return cls(params=variables["params"], batch_stats=variables.get("batch_stats") or {})

    def as_variables(self, params: Any = None) -> dict:
        """The Flax variables dict; ``params`` replaces ``self.params`` (inside ``grad``)."""
        variables = {"params": self.params if params is None else params}
        if self.batch_stats:
            variables["batch_stats"] = self.batch_stats
        return variables


def apply_train(
    module: nn.Module,
    mv: ModelVars,
    x: jax.Array,
    *,
    params: Any = None,
    dropout_key: Optional[jax.Array] = None,
    **kwargs: Any,
) -> tuple[jax.Array, Any]:
    """Train-mode forward: ``(output, updated batch_stats)``.

    ``params`` overrides ``mv.params`` (the argument ``jax.grad`` differentiates);
    ``kwargs`` go to the module (e.g. ``bn_set``, ``method``). A network without
    BatchNorm returns its (empty) statistics unchanged.
    """
    rngs = {} if dropout_key is None else {"dropout": dropout_key}
    variables = mv.as_variables(params)
    with backend.model_rewrites():
        if not mv.batch_stats:
            return module.apply(variables, x, train=True, rngs=rngs, **kwargs), mv.batch_stats
        out, updates = module.apply(variables, x, train=True, mutable=["batch_stats"],
                                    rngs=rngs, **kwargs)
    return out, updates["batch_stats"]


def apply_eval(module: nn.Module, mv: ModelVars, x: jax.Array, **kwargs: Any) -> jax.Array:
    """Eval-mode forward (running statistics, no dropout)."""
    with backend.model_rewrites():
        return module.apply(mv.as_variables(), x, train=False, **kwargs)
