"""Generator training: invert the frozen feature map, optionally with a GAN term.

``ae``  : minimise ``rec(G(z), x)`` with ``rec`` the element-mean L2 (MSE) or
          L1, Adam(lr, (b1, b2)), z = features(x) precomputed (detached).
``gan`` : LADDER-GAN. Per step, as in ``GSN.train``: D is updated first on
          ``BCE(D(x), 1) + BCE(D(G(z)).detach(), 0)`` with Adam(0.1 lr,
          (0.5, 0.999)); then G on ``lambda * BCE(D(G(z)), 1) + rec``. The code's
          ``--lam`` default of 0 silently disables the GAN term; here
          lambda > 0 is required and reported.

Targets are the [0, 1] images, or [-1, 1] for CIFAR-10 (``target_range``).
The last partial batch of an epoch is dropped (fixed shapes for jit).
``build`` makes the modules, optimizers and initial state of one generator
kind from the config.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from advcore.backend import compile_once
from advcore.variables import ModelVars, apply_train
from ladder_jax import generators


@struct.dataclass
class GeneratorState:
    step: jax.Array
    g: ModelVars
    g_opt: Any
    d: Any  # ModelVars for 'gan', {} for 'ae'
    d_opt: Any
    key: jax.Array


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)]))


def reconstruction_loss(pred: jax.Array, target: jax.Array, norm: str) -> jax.Array:
    """Element-mean L2 (``nn.MSELoss``) or L1 (``nn.L1Loss``)."""
    if norm == "l2":
        return jnp.mean((pred - target) ** 2)
    if norm == "l1":
        return jnp.mean(jnp.abs(pred - target))
    raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")


def bce_with_logits(logits: jax.Array, label: float) -> jax.Array:
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, label)))


def make_optimizers(lr: float, b1: float, b2: float, d_lr_scale: float):
    g_tx = optax.adam(lr, b1=b1, b2=b2)
    # GSN.train: D uses Adam(lr * 0.1, betas=(0.5, 0.999)).
    d_tx = optax.adam(lr * d_lr_scale, b1=0.5, b2=0.999)
    return g_tx, d_tx


def init_state(
    gen: nn.Module,
    disc: nn.Module | None,
    key: jax.Array,
    z_dim: int,
    image_shape: tuple[int, int, int],
    g_tx: optax.GradientTransformation,
    d_tx: optax.GradientTransformation,
) -> GeneratorState:
    def build(key):
        kg, kd, kstate = jax.random.split(key, 3)
        g_vars = ModelVars.from_variables(gen.init(kg, jnp.zeros((1, z_dim)), train=False))
        d_vars, d_opt = {}, {}
        if disc is not None:
            d_vars = ModelVars.from_variables(
                disc.init(kd, jnp.zeros((1,) + tuple(image_shape)), train=False)
            )
            d_opt = d_tx.init(d_vars.params)
        return GeneratorState(
            step=jnp.zeros((), jnp.int32), g=g_vars, g_opt=g_tx.init(g_vars.params),
            d=d_vars, d_opt=d_opt, key=jax.random.key_data(kstate),
        )

    # One compiled program: eager init would compile every initialiser op
    # separately (dozens of small XLA compilations, seconds on CPU).
    return compile_once(build, key)


def make_train_step(
    gen: nn.Module,
    disc: nn.Module | None,
    g_tx: optax.GradientTransformation,
    d_tx: optax.GradientTransformation,
    norm: str,
    gan_lambda: float,
    microbatch: int = 0,
) -> Callable:
    """``step(state, z, target) -> (state, metrics)`` (to be jitted).

    ``microbatch`` > 0 (reconstruction-only generators without BatchNorm)
    computes the batch gradient as the mean of equal microbatch gradients
    in an unrolled ``lax.scan``: the same update up to float rounding, but activations
    that fit in the CPU caches (on a 2-core CPU the MNIST generator runs ~5x
    faster per image at 16 than at 256 images). Off by default; pointless on
    accelerators.
    """

    def loss_fn(gp, g_vars, z, target):
        out, g_bs = apply_train(gen, g_vars, z, params=gp)
        return reconstruction_loss(out, target, norm), g_bs

    def microbatched_grads(state: GeneratorState, z, target):
        b = z.shape[0]
        n = b // microbatch
        # Microbatch i holds rows i, i + n, ...: the leading (data-sharded)
        # axis stays the batch axis and the scan runs over an unsharded one.
        zs = jnp.swapaxes(z.reshape((microbatch, n) + z.shape[1:]), 0, 1)
        ts = jnp.swapaxes(target.reshape((microbatch, n) + target.shape[1:]), 0, 1)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def body(acc, inp):
            (l, _), g = grad_fn(state.g.params, state.g, *inp)
            return jax.tree.map(jnp.add, acc, (l, g)), None

        zero = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.g.params))
        # Unrolled: XLA:CPU runs convolutions inside a while-loop body several
        # times slower than straight-line code (DESIGN.md, Conventions).
        (loss_sum, grad_sum), _ = jax.lax.scan(body, zero, (zs, ts), unroll=True)
        return loss_sum / n, jax.tree.map(lambda g: g / n, grad_sum)

    def ae_step(state: GeneratorState, z, target):
        b = z.shape[0]
        # Same update either way, so a batch the microbatch does not divide
        # (a tiny dataset shrank it) simply runs whole.
        if microbatch and microbatch < b and b % microbatch == 0:
            if state.g.batch_stats:
                raise ValueError("generator.microbatch needs a generator without BatchNorm "
                                 "(BN statistics would become per-microbatch); use 0")
            rec, grads = microbatched_grads(state, z, target)
            g_bs = state.g.batch_stats
        else:
            (rec, g_bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.g.params, state.g, z, target)
        updates, g_opt = g_tx.update(grads, state.g_opt, state.g.params)
        g = ModelVars(optax.apply_updates(state.g.params, updates), g_bs)
        state = state.replace(step=state.step + 1, g=g, g_opt=g_opt)
        return state, {"loss": rec, "g_loss": rec, "rec_loss": rec,
                       "params_finite": _all_finite(g.params)}

    def gan_step(state: GeneratorState, z, target):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        k_real, k_fake, k_gen = jax.random.split(key, 3)
        # G's output for D's update (G not updated yet, so it is also the
        # output the G loss sees below).
        fake, _ = apply_train(gen, state.g, z)
        fake = jax.lax.stop_gradient(fake)

        def d_loss_fn(dp):
            real_logit, bs1 = apply_train(disc, state.d, target, params=dp,
                                          dropout_key=k_real)
            d1 = ModelVars(dp, bs1)
            fake_logit, bs2 = apply_train(disc, d1, fake, dropout_key=k_fake)
            loss = bce_with_logits(real_logit, 1.0) + bce_with_logits(fake_logit, 0.0)
            return loss, (bs2, jax.nn.sigmoid(real_logit).mean(),
                          jax.nn.sigmoid(fake_logit).mean())

        (d_loss, (d_bs, d_x, d_gz)), d_grads = jax.value_and_grad(
            d_loss_fn, has_aux=True)(state.d.params)
        d_updates, d_opt = d_tx.update(d_grads, state.d_opt, state.d.params)
        d = ModelVars(optax.apply_updates(state.d.params, d_updates), d_bs)

        def g_loss_fn(gp):
            out, g_bs = apply_train(gen, state.g, z, params=gp)
            logit, d_bs2 = apply_train(disc, d, out, dropout_key=k_gen)
            adv = bce_with_logits(logit, 1.0)
            rec = reconstruction_loss(out, target, norm)
            return gan_lambda * adv + rec, (g_bs, d_bs2, rec, adv,
                                            jax.nn.sigmoid(logit).mean())

        (g_loss, (g_bs, d_bs2, rec, adv, g_dgz)), g_grads = jax.value_and_grad(
            g_loss_fn, has_aux=True)(state.g.params)
        g_updates, g_opt = g_tx.update(g_grads, state.g_opt, state.g.params)
        g = ModelVars(optax.apply_updates(state.g.params, g_updates), g_bs)
        state = state.replace(step=state.step + 1, g=g, g_opt=g_opt,
                              d=ModelVars(d.params, d_bs2), d_opt=d_opt)
        return state, {"loss": g_loss, "g_loss": g_loss, "rec_loss": rec, "g_adv_loss": adv,
                       "d_loss": d_loss, "D_x": d_x, "D_G_z": d_gz, "D_G_z_after": g_dgz,
                       "params_finite": _all_finite((g.params, d.params))}

    return ae_step if disc is None else gan_step


def build(g_config: Any, kind: str, z_dim: int, image_shape: tuple[int, int, int],
          key: jax.Array):
    """``(gen, disc, g_tx, d_tx, initial state)`` of generator ``kind`` ('ae' or 'gan')."""
    if kind not in ("ae", "gan"):
        raise ValueError(f"generator kind must be 'ae' or 'gan', got {kind!r}")
    g = g_config
    gen = generators.build_generator(g.arch, g.width_scale, g.legacy_convt_init)
    disc = generators.Discriminator(g.d_width_scale) if kind == "gan" else None
    g_tx, d_tx = make_optimizers(g.lr, g.b1, g.b2, g.d_lr_scale)
    state = init_state(gen, disc, key, z_dim, image_shape, g_tx, d_tx)
    return gen, disc, g_tx, d_tx, state
