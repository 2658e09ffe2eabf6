"""The data-parallel LBGAT train step: PGD inner loop and joint update in one jit.

A step is three small pieces, each available on its own (tests pin them to a
PyTorch reference):

* ``make_attack_fn``: the inner maximisation on the robust model, which runs
  in eval mode (or with batch statistics, ``attack.bn_mode``);
* ``make_loss_fn``: the train-mode forward passes in the official order,
  collected in a dict of logits, and the loss as a function of that dict;
* ``make_update_fn``: one SGD update of both models given x' (teacher-forced).

``make_train_step`` jits attack + update over a ``('data',)`` mesh with the
state replicated and donated and the batch sharded; the PGD loop is a
``lax.fori_loop`` inside the same XLA program.

Forward-pass order matters because it sets the BatchNorm running statistics
(docs/lbgat.md): the official LBGAT code runs M_r(x') then M_r(x) then
M_n(x), each a separate train-mode call that normalises with its own batch
statistics; TRADES' own code runs M_r(x), M_r(x'), M_r(x). The i-th pass of a
step draws the i-th of ``MAX_PASSES`` dropout keys.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from advcore import attacks
from advcore import parallel
from advcore.variables import ModelVars, apply_eval, apply_train
from lbgat_jax import losses
from lbgat_jax.methods import MethodSpec
from lbgat_jax.state import Models, TrainState

# Per-step keys: fold_in(state.key, step) split into these named streams.
KEY_STREAMS = ("attack", "attack_dropout", "dropout")
# Upper bound on train-mode passes per step; pass i uses dropout key i.
MAX_PASSES = 5


def step_keys(state: TrainState) -> dict[str, jax.Array]:
    """The step's named random streams (a pure function of the root key and step)."""
    keys = jax.random.split(jax.random.fold_in(state.key, state.step), len(KEY_STREAMS))
    return dict(zip(KEY_STREAMS, keys))


def forward_order(config, spec: MethodSpec, models: Models) -> tuple[str, ...]:
    """The train-mode forward passes of one step, in the order they run.

    ``clean`` is M_r(x), ``adv`` M_r(x'), ``natural`` the learnable M_n(x);
    ``clean_again`` is TRADES' third pass M_r(x), whose output equals the
    first's but which updates the BatchNorm statistics once more.
    """
    order = []
    trades_baseline = spec.trades_kl and not spec.boundary
    if trades_baseline:
        order.append("clean")
    order.append("adv")
    uses_clean = (spec.trades_kl or spec.alp or spec.robust_ce_clean
                  or config.loss.extra_robust_ce == "clean")
    official_pass = spec.clean_student_pass and not config.loss.skip_unused_clean_pass
    if spec.adversarial and (uses_clean or official_pass):
        order.append("clean_again" if trades_baseline else "clean")
    if spec.teacher == "learnable":
        order.append("natural")
    return tuple(order)


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
        return lambda x: apply_train(model, mv, x, dropout_key=dropout_key)[0]
    raise ValueError(f"attack.bn_mode must be 'eval' or 'batch_stats', got {bn_mode!r}")


def teacher_ensemble_logits(models: Models, teacher: dict, x: jax.Array) -> jax.Array:
    """Mean logits of the frozen teachers, eval mode, no gradient (BGAT)."""
    logits = [
        apply_eval(module, teacher[str(i)], x) for i, module in enumerate(models.teachers)
    ]
    return jax.lax.stop_gradient(jnp.mean(jnp.stack(logits), axis=0))


def _compute_dtype(config):
    return jnp.bfloat16 if config.precision == "bfloat16" else jnp.float32


def make_attack_fn(config, spec: MethodSpec, models: Models) -> Callable:
    """``attack(state, x, y, keys) -> x'``: the inner maximisation (x itself
    for natural training). ``keys`` are ``step_keys(state)``."""
    attack_loss = spec.attack_loss if config.attack.loss == "auto" else config.attack.loss
    a = config.attack
    dtype = _compute_dtype(config)

    def attack(state: TrainState, x: jax.Array, y: jax.Array, keys: dict) -> jax.Array:
        if not spec.adversarial:
            return x
        logits_fn = make_attack_logits_fn(models.robust, state.robust, a.bn_mode,
                                          keys["attack_dropout"])
        x_adv = attacks.pgd(
            logits_fn, x, y, keys["attack"], eps=a.eps, step_size=a.step_size,
            num_steps=a.num_steps, norm=a.norm, loss=attack_loss,
            random_start=a.random_start, init_std=a.init_std, unroll=a.unroll,
        )
        # The official code clips once more after the loop.
        return jnp.clip(x_adv, 0.0, 1.0).astype(dtype)

    return attack


def make_loss_fn(config, spec: MethodSpec, models: Models) -> Callable:
    """``loss_fn(trainable, state, x, x_adv, y, dropout_key) -> (total, aux)``.

    ``trainable`` is ``{"robust": θ, "natural": θ*}`` (natural only with a
    learnable M_n); ``aux`` holds ``parts`` (the named loss terms), ``logits``
    (``{"adv", "clean", "natural"}``) and the updated ``robust_stats`` /
    ``natural_stats``.
    """
    alpha = float(config.loss.alpha) if config.loss.alpha >= 0 else spec.default_alpha
    order = forward_order(config, spec, models)
    robust_bn = {"bn_set": 0} if models.shared_bn else {}

    def loss_fn(trainable, state: TrainState, x, x_adv, y, dropout_key):
        pass_keys = jax.random.split(dropout_key, MAX_PASSES)
        stats = {"robust": state.robust.batch_stats,
                 "natural": state.natural.batch_stats if models.natural is not None else {}}
        logits = {}

        def run(pass_index, which, inputs, **kwargs):
            module = models.robust if which == "robust" else models.natural
            mv = ModelVars(trainable[which], stats[which])
            out, stats[which] = apply_train(module, mv, inputs, dropout_key=pass_keys[pass_index],
                                            **kwargs)
            return out

        for i, name in enumerate(order):
            if name in ("clean", "clean_again"):
                out = run(i, "robust", x, **robust_bn)
                logits.setdefault("clean", out)
            elif name == "adv":
                logits["adv"] = run(i, "robust", x_adv, **robust_bn)
            elif models.shared_bn:  # Table 2: M_n is M_r's convolutions with BN set 1.
                logits["natural"] = run(i, "robust", x, bn_set=1)
            else:
                logits["natural"] = run(i, "natural", x)
        if spec.teacher == "frozen":
            logits["natural"] = teacher_ensemble_logits(models, state.teacher, x)

        total, parts = losses.outer_loss(
            spec, y, logits, alpha=alpha,
            natural_ce_weight=config.loss.natural_ce_weight,
            boundary_loss=config.loss.boundary,
            extra_robust_ce=config.loss.extra_robust_ce,
        )
        return total, {"parts": parts, "logits": logits, "robust_stats": stats["robust"],
                       "natural_stats": stats["natural"]}

    return loss_fn


def make_update_fn(
    config, spec: MethodSpec, models: Models, tx: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """``update(state, batch, x_adv) -> (state, metrics)``: one SGD step given x'."""
    loss_fn = make_loss_fn(config, spec, models)
    dtype = _compute_dtype(config)

    def update(state: TrainState, batch: dict, x_adv: jax.Array) -> tuple[TrainState, dict]:
        x = batch["image"].astype(dtype)
        y = batch["label"]
        trainable = state.trainable_params()
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            trainable, state, x, x_adv, y, step_keys(state)["dropout"])
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        new_params = optax.apply_updates(trainable, updates)

        natural = state.natural
        if models.natural is not None:
            natural = ModelVars(new_params["natural"], aux["natural_stats"])
        new_state = state.replace(
            step=state.step + 1, robust=ModelVars(new_params["robust"], aux["robust_stats"]),
            natural=natural, opt_state=opt_state,
        )
        return new_state, _metrics(spec, y, loss, aux, grads, new_params, lr_schedule(state.step))

    return update


def _metrics(spec, y, loss, aux, grads, new_params, lr) -> dict[str, Any]:
    metrics = {"loss": loss, "lr": lr}
    metrics.update({f"loss/{k}": v for k, v in aux["parts"].items()})
    adv_pred = jnp.argmax(aux["logits"]["adv"], axis=-1)
    metrics["train/adv_acc" if spec.adversarial else "train/acc"] = jnp.mean(adv_pred == y)
    if "natural" in aux["logits"]:
        metrics["train/natural_acc"] = jnp.mean(
            jnp.argmax(aux["logits"]["natural"], axis=-1) == y)
    metrics["grad_norm"] = optax.global_norm(grads)
    # A finite loss can still come with an overflowing update; the loop
    # refuses to checkpoint a state whose parameters are not all finite.
    metrics["params_finite"] = jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(new_params)]))
    return metrics


def make_step_fn(
    config, spec: MethodSpec, models: Models, tx: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The un-jitted step: the inner attack, then ``make_update_fn``'s update."""
    attack = make_attack_fn(config, spec, models)
    update = make_update_fn(config, spec, models, tx, lr_schedule)
    dtype = _compute_dtype(config)

    def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        x = batch["image"].astype(dtype)
        x_adv = attack(state, x, batch["label"], step_keys(state))
        return update(state, batch, x_adv)

    return step_fn


def make_train_step(
    config, spec: MethodSpec, models: Models, tx: optax.GradientTransformation,
    lr_schedule: optax.Schedule, mesh: Mesh,
):
    """``jit(step_fn)`` over ``mesh``: state replicated and donated, batch sharded."""
    repl = parallel.replicated(mesh)
    data = parallel.data_sharded(mesh)
    return jax.jit(
        make_step_fn(config, spec, models, tx, lr_schedule),
        in_shardings=(repl, data),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )
