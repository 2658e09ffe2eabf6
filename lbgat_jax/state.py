"""The LBGAT train state: one pure pytree holding both models and the optimizer.

``TrainState`` is a ``flax.struct`` dataclass, so it is a pytree that jit,
sharding and orbax handle directly. Fields that a method does not use are
empty dicts (never None), which keeps the checkpoint layout uniform.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from advcore import checkpoint as ckpt_lib
from advcore import run_spec
from advcore.models import build_model, init_variables
from advcore.variables import ModelVars
from lbgat_jax.methods import MethodSpec


@struct.dataclass
class TrainState:
    """Everything a train step reads and writes.

    Attributes:
      step: global step (int32 scalar).
      robust: the robust model M_r (θ).
      natural: the learnable natural model M_n (θ*), or ``{}``.
      teacher: frozen teacher ensemble ``{'0': ModelVars, ...}`` (BGAT), or ``{}``.
      opt_state: one optimizer over ``{'robust': θ, 'natural': θ*}``.
      key: root PRNG key (raw uint32); per-step keys are ``fold_in(key, step)``.
    """

    step: jax.Array
    robust: ModelVars
    natural: Any
    teacher: Any
    opt_state: Any
    key: jax.Array

    def trainable_params(self) -> dict:
        params = {"robust": self.robust.params}
        if isinstance(self.natural, ModelVars):
            params["natural"] = self.natural.params
        return params


@dataclasses.dataclass(frozen=True)
class Models:
    """The static (non-array) halves of the networks: Flax module definitions."""

    robust: nn.Module
    natural: Optional[nn.Module]
    teachers: tuple[nn.Module, ...]
    shared_bn: bool  # Table 2 ablation: M_n is M_r's conv with BN set 1.


def build_models(config, spec: MethodSpec, num_classes: int,
                 teacher_modules: tuple[nn.Module, ...] = ()) -> Models:
    """Builds the Flax modules named in ``config.model`` (frozen teachers: ``load_teachers``)."""
    # bf16 mode: bf16 compute, fp32 params and BN statistics (the models' dtype).
    precision = {"dtype": "bfloat16"} if config.precision == "bfloat16" else {}
    robust_kwargs = {**dict(config.model.robust.kwargs), **precision}
    if config.shared_conv_separate_bn:
        robust_kwargs["num_bn_sets"] = 2
    robust = build_model(config.model.robust.name, num_classes, **robust_kwargs)
    natural = None
    if spec.teacher == "learnable" and not config.shared_conv_separate_bn:
        natural = build_model(
            config.model.natural.name, num_classes,
            **{**dict(config.model.natural.kwargs), **precision},
        )
    return Models(robust, natural, tuple(teacher_modules), bool(config.shared_conv_separate_bn))


def teacher_workdirs(config) -> list[str]:
    return [p for p in config.teacher.workdirs.split(",") if p]


def load_teachers(config) -> tuple[tuple[nn.Module, ...], dict]:
    """The frozen teachers (BGAT): ``(modules, {"0": ModelVars, ...})``.

    Each workdir's newest checkpoint is verified in full, and its default model
    is rebuilt from the run spec stored with it.
    """
    modules, variables = [], {}
    for i, workdir in enumerate(teacher_workdirs(config)):
        state, _, meta = ckpt_lib.load_raw_state(workdir)
        spec = meta.get("run_spec") or {}
        if not spec:
            raise ValueError(f"config.teacher.workdirs: {workdir} has no run spec (saved by an "
                             "older version of this library); retrain the teacher")
        model = spec["models"][spec["default_model"]]
        modules.append(run_spec.build(model))
        variables[str(i)] = ModelVars.from_variables(run_spec.variables_from_state(model, state))
    return tuple(modules), variables


def create_train_state(
    config,
    models: Models,
    tx: optax.GradientTransformation,
    key: jax.Array,
    input_shape: tuple[int, ...],
    teacher_vars: Optional[dict] = None,
) -> TrainState:
    """Initialises both networks from ``key`` (random init, as the paper states)."""
    key_robust, key_natural, key_root = jax.random.split(key, 3)
    sample_shape = (1, *input_shape)
    robust = ModelVars.from_variables(init_variables(models.robust, key_robust, sample_shape))
    natural: Any = {}
    if models.natural is not None:
        natural = ModelVars.from_variables(init_variables(models.natural, key_natural, sample_shape))
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        robust=robust,
        natural=natural,
        teacher=teacher_vars or {},
        opt_state=None,
        key=key_root,
    )
    return state.replace(opt_state=tx.init(state.trainable_params()))
