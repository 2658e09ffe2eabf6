"""The data-parallel LBGAT train step: PGD inner loop and joint update in one jit.

``make_train_step`` returns ``train_step(state, batch) -> (state, metrics)``,
jitted over a ``('data',)`` mesh with the state replicated, the batch sharded
along its leading axis and the state's buffers donated. The PGD loop is a
``lax.fori_loop`` inside the same XLA program.

Forward-pass order follows the official code because BatchNorm running
statistics depend on it (SPEC 1.3): M_r(x') then M_r(x) then M_n(x), each a
separate train-mode call that normalises with its own batch statistics.
TRADES' own code runs M_r(x), M_r(x'), M_r(x); that order is used for
``method='trades'``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from advcore import attacks
from advcore import parallel
from lbgat_jax import losses
from lbgat_jax.methods import MethodSpec
from lbgat_jax.state import Models, ModelVars, TrainState


def _variables(mv: ModelVars, params: Any = None) -> dict:
    variables = {"params": mv.params if params is None else params}
    if mv.batch_stats:
        variables["batch_stats"] = mv.batch_stats
    return variables


def apply_train(model, params, batch_stats, x, dropout_key, **kwargs):
    """Train-mode forward; returns logits and the updated running statistics."""
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
        logits, updates = model.apply(
            variables, x, train=True, mutable=["batch_stats"],
            rngs={"dropout": dropout_key}, **kwargs,
        )
        return logits, updates["batch_stats"]
    logits = model.apply(variables, x, train=True, rngs={"dropout": dropout_key}, **kwargs)
    return logits, batch_stats


def apply_eval(model, mv: ModelVars, x, **kwargs):
    return model.apply(_variables(mv), x, train=False, **kwargs)


def make_attack_logits_fn(
    model, mv: ModelVars, bn_mode: str, dropout_key: jax.Array
) -> Callable[[jax.Array], jax.Array]:
    """The robust model as the attack sees it (running stats are never updated).

    ``eval``: BN uses running statistics and dropout is off (the official
    ``model.eval()``). ``batch_stats``: BN normalises with the attacked batch's
    own statistics (DeepMind's ``test_local_stats``); the updates are dropped.
    """
    if bn_mode == "eval":
        return lambda x: apply_eval(model, mv, x)
    if bn_mode == "batch_stats":
        return lambda x: apply_train(model, mv.params, mv.batch_stats, x, dropout_key)[0]
    raise ValueError(f"attack.bn_mode must be 'eval' or 'batch_stats', got {bn_mode!r}")


def teacher_ensemble_logits(models: Models, teacher: dict, x: jax.Array) -> jax.Array:
    """Mean logits of the frozen teachers, eval mode, no gradient (BGAT)."""
    logits = [
        apply_eval(module, teacher[str(i)], x) for i, module in enumerate(models.teachers)
    ]
    return jax.lax.stop_gradient(jnp.mean(jnp.stack(logits), axis=0))


def make_step_fn(
    config,
    spec: MethodSpec,
    models: Models,
    tx: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The un-jitted step; ``make_train_step`` wraps it for the mesh."""
    alpha = float(config.loss.alpha) if config.loss.alpha >= 0 else spec.default_alpha
    attack_loss = spec.attack_loss if config.attack.loss == "auto" else config.attack.loss
    needs_clean_student = (
        spec.trades_kl or spec.alp or spec.robust_ce_clean or spec.clean_student_pass
        or config.loss.extra_robust_ce == "clean"
    ) and spec.adversarial
    trades_order = spec.trades_kl and not spec.boundary  # the TRADES baseline
    compute_dtype = jnp.bfloat16 if config.precision == "bfloat16" else jnp.float32

    def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(state.key, state.step)
        key_attack, key_attack_dropout, key_dropout = jax.random.split(key, 3)
        x = batch["image"].astype(compute_dtype)
        y = batch["label"]

        if spec.adversarial:
            logits_fn = make_attack_logits_fn(
                models.robust, state.robust, config.attack.bn_mode, key_attack_dropout
            )
            x_adv = attacks.pgd(
                logits_fn, x, y, key_attack,
                eps=config.attack.eps,
                step_size=config.attack.step_size,
                num_steps=config.attack.num_steps,
                norm=config.attack.norm,
                loss=attack_loss,
                random_start=config.attack.random_start,
                init_std=config.attack.init_std,
                unroll=config.attack.unroll,
            )
            # The official code clips once more after the loop.
            x_adv = jnp.clip(x_adv, 0.0, 1.0).astype(compute_dtype)
        else:
            x_adv = x

        dropout_keys = iter(jax.random.split(key_dropout, 5))

        def loss_fn(trainable):
            robust_params = trainable["robust"]
            robust_stats = state.robust.batch_stats
            bn0 = {"bn_set": 0} if models.shared_bn else {}
            clean_logits = None
            if trades_order:
                clean_logits, robust_stats = apply_train(
                    models.robust, robust_params, robust_stats, x, next(dropout_keys), **bn0)
            adv_logits, robust_stats = apply_train(
                models.robust, robust_params, robust_stats, x_adv, next(dropout_keys), **bn0)
            if needs_clean_student:
                second_clean, robust_stats = apply_train(
                    models.robust, robust_params, robust_stats, x, next(dropout_keys), **bn0)
                # TRADES' KL target is its third pass; same values as the first.
                clean_logits = second_clean if clean_logits is None else clean_logits

            teacher_logits = None
            natural_stats = state.natural.batch_stats if models.natural is not None else {}
            if spec.teacher == "learnable":
                if models.shared_bn:
                    teacher_logits, robust_stats = apply_train(
                        models.robust, robust_params, robust_stats, x,
                        next(dropout_keys), bn_set=1)
                else:
                    teacher_logits, natural_stats = apply_train(
                        models.natural, trainable["natural"], natural_stats, x,
                        next(dropout_keys))
            elif spec.teacher == "frozen":
                teacher_logits = teacher_ensemble_logits(models, state.teacher, x)

            total, parts = losses.outer_loss(
                spec, y, adv_logits, clean_logits, teacher_logits,
                alpha=alpha,
                natural_ce_weight=config.loss.natural_ce_weight,
                boundary_loss=config.loss.boundary,
                extra_robust_ce=config.loss.extra_robust_ce,
            )
            aux = {
                "parts": parts,
                "robust_stats": robust_stats,
                "natural_stats": natural_stats,
                "adv_logits": adv_logits,
                "teacher_logits": teacher_logits,
            }
            return total, aux

        trainable = state.trainable_params()
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        new_params = optax.apply_updates(trainable, updates)

        robust = ModelVars(new_params["robust"], aux["robust_stats"])
        natural = state.natural
        if models.natural is not None:
            natural = ModelVars(new_params["natural"], aux["natural_stats"])
        new_state = state.replace(
            step=state.step + 1, robust=robust, natural=natural, opt_state=opt_state
        )

        metrics = {"loss": loss, "lr": lr_schedule(state.step)}
        metrics.update({f"loss/{k}": v for k, v in aux["parts"].items()})
        adv_pred = jnp.argmax(aux["adv_logits"], axis=-1)
        metrics["train/adv_acc" if spec.adversarial else "train/acc"] = jnp.mean(adv_pred == y)
        if aux["teacher_logits"] is not None:
            metrics["train/natural_acc"] = jnp.mean(
                jnp.argmax(aux["teacher_logits"], axis=-1) == y)
        metrics["grad_norm"] = optax.global_norm(grads)
        # A finite loss can still come with an overflowing update; the loop
        # refuses to checkpoint a state whose parameters are not all finite.
        metrics["params_finite"] = jnp.all(jnp.stack(
            [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(new_params)]))
        return new_state, metrics

    return step_fn


def make_train_step(
    config,
    spec: MethodSpec,
    models: Models,
    tx: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
    mesh: Mesh,
):
    """``jit(step_fn)`` over ``mesh``: state replicated and donated, batch sharded."""
    step_fn = make_step_fn(config, spec, models, tx, lr_schedule)
    repl = parallel.replicated(mesh)
    data = parallel.data_sharded(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(repl, data),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )
