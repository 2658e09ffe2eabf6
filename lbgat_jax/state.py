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
from advcore.models import build_model, init_variables
from lbgat_jax.methods import MethodSpec


@struct.dataclass
class ModelVars:
    """One network's variables. ``batch_stats`` is ``{}`` for BN-free models."""

    params: Any
    batch_stats: Any


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


def _model_vars(variables: dict) -> ModelVars:
    return ModelVars(
        params=variables["params"], batch_stats=variables.get("batch_stats", {})
    )


def build_models(config, spec: MethodSpec, num_classes: int) -> Models:
    """Builds the Flax modules named in ``config.model``."""
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
    teachers = ()
    if spec.teacher == "frozen":
        teachers = tuple(
            build_model(t["name"], num_classes, **t["kwargs"])
            for t in load_teacher_configs(config)
        )
    return Models(robust, natural, teachers, bool(config.shared_conv_separate_bn))


def teacher_workdirs(config) -> list[str]:
    return [p for p in config.teacher.workdirs.split(",") if p]


def load_teacher_configs(config) -> list[dict]:
    """The model specs of the frozen teachers, read from their runs' configs."""
    specs = []
    for workdir in teacher_workdirs(config):
        run_config = ckpt_lib.load_run_config(workdir)
        specs.append(
            {
                "name": run_config["model"]["robust"]["name"],
                "kwargs": dict(run_config["model"]["robust"]["kwargs"]),
            }
        )
    return specs


def load_teacher_vars(config) -> dict:
    """Frozen teacher variables from the newest checkpoint of each workdir."""
    teachers = {}
    for i, workdir in enumerate(teacher_workdirs(config)):
        state, _, _ = ckpt_lib.load_raw_state(workdir)
        teachers[str(i)] = ModelVars(
            params=jax.tree.map(jnp.asarray, state["robust"]["params"]),
            batch_stats=jax.tree.map(jnp.asarray, state["robust"].get("batch_stats", {})),
        )
    return teachers


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
    robust = _model_vars(init_variables(models.robust, key_robust, sample_shape))
    natural: Any = {}
    if models.natural is not None:
        natural = _model_vars(init_variables(models.natural, key_natural, sample_shape))
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        robust=robust,
        natural=natural,
        teacher=teacher_vars or {},
        opt_state=None,
        key=key_root,
    )
    return state.replace(opt_state=tx.init(state.trainable_params()))
