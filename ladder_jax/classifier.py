"""The vanilla classifier f and its fine-tuned copies: state, train steps, accuracy.

* ``ClassifierState`` is what every evaluable LADDER checkpoint holds; its
  pure-dict form has ``robust: {params, batch_stats}`` (DESIGN.md,
  "Checkpoints"), so ``python -m advcore.evaluate`` can load any of them.
* ``make_clean_step``: vanilla training, CE (or BCE for the binary head).
* ``make_pair_step``: fine-tuning on (x, x_hat, y) pairs with Eq. 6,
  TRADES+LADDER (``kl_pairs``) or TRADES-PGD + LADDER (``pgd_kl_plus_ladder``).
  As in ``*_defence.py``, the model runs twice in train mode per step, on
  x_hat first and then on x, so BatchNorm's running statistics see two
  batches per step.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from advcore.models import build_model, init_variables
from ladder_jax import losses
from ladder_jax.generate import Classifier
from ladder_jax.train_utils import ModelVars, apply_model, run_init


@struct.dataclass
class ClassifierState:
    step: jax.Array
    robust: ModelVars
    opt_state: Any
    key: jax.Array


def num_logits(head: str, num_classes: int) -> int:
    return 1 if head == "binary" else num_classes


def build_classifier(config, num_classes: int) -> Classifier:
    """The Flax module named by ``config.model`` wrapped with its prediction rule."""
    kwargs = dict(config.model.kwargs)
    module = build_model(config.model.name, num_logits(config.model.head, num_classes),
                         **kwargs)
    return Classifier(module, config.model.head, bool(config.model.legacy_celeba_threshold))


def init_classifier_vars(clf: Classifier, key: jax.Array, image_shape) -> ModelVars:
    variables = init_variables(clf.module, key, (1,) + tuple(image_shape))
    return ModelVars.from_variables(variables)


def create_state(mv: ModelVars, tx: optax.GradientTransformation, key: jax.Array
                 ) -> ClassifierState:
    def build(mv, key):
        return ClassifierState(step=jnp.zeros((), jnp.int32), robust=mv,
                               opt_state=tx.init(mv.params), key=jax.random.key_data(key))

    # Copies mv's buffers (the caller's arrays survive the train step's
    # donation) and compiles the optimizer init as one program.
    return run_init(build, mv, key)


def _step_keys(state: ClassifierState, n: int):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    return jax.random.split(key, n)


def _apply_update(state: ClassifierState, tx, grads, batch_stats) -> ClassifierState:
    updates, opt_state = tx.update(grads, state.opt_state, state.robust.params)
    params = optax.apply_updates(state.robust.params, updates)
    return state.replace(step=state.step + 1, robust=ModelVars(params, batch_stats),
                         opt_state=opt_state)


def make_clean_step(clf: Classifier, tx: optax.GradientTransformation) -> Callable:
    """``step(state, {'image', 'label'}) -> (state, metrics)``: CE / BCE on clean data."""

    def step(state: ClassifierState, batch):
        (k_drop,) = _step_keys(state, 1)

        def loss_fn(params):
            logits, bs = apply_model(clf.module, state.robust, batch["image"], train=True,
                                     dropout_key=k_drop, params=params)
            class_logits = losses.as_class_logits(logits, clf.head)
            return losses.cross_entropy(class_logits, batch["label"]), (bs, logits)

        (loss, (bs, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.robust.params)
        acc = jnp.mean(clf.predict_logits(logits) == batch["label"])
        return _apply_update(state, tx, grads, bs), {"loss": loss, "accuracy": acc}

    return step


def make_pair_step(
    clf: Classifier,
    tx: optax.GradientTransformation,
    *,
    mode: str,
    alpha: float = 0.5,
    beta: float = 1.0,
    trades_attack: Optional[Callable] = None,
) -> Callable:
    """``step(state, {'image', 'image_adv', 'label'}) -> (state, metrics)``.

    Args:
      mode: 'eq6' (LADDER and the "X Adv." rows), 'kl_pairs' (TRADES+LADDER,
        SPEC 3.8) or 'pgd_kl_plus_ladder' (the alternative reading).
      trades_attack: for 'pgd_kl_plus_ladder', ``attack(logits_fn, x, y, key)``
        run on the eval-mode model (TRADES' attack uses ``model.eval()``).
    """
    if mode not in ("eq6", "kl_pairs", "pgd_kl_plus_ladder"):
        raise ValueError(f"mode must be 'eq6', 'kl_pairs' or 'pgd_kl_plus_ladder', got {mode!r}")
    if mode == "pgd_kl_plus_ladder" and trades_attack is None:
        raise ValueError("mode='pgd_kl_plus_ladder' needs trades_attack")

    def step(state: ClassifierState, batch):
        k_adv, k_clean, k_pgd, k_attack = _step_keys(state, 4)
        x, x_hat, y = batch["image"], batch["image_adv"], batch["label"]
        x_pgd = None
        if mode == "pgd_kl_plus_ladder":
            def logits_fn(xx):
                return losses.as_class_logits(clf.logits(state.robust, xx), clf.head)

            x_pgd = jax.lax.stop_gradient(trades_attack(logits_fn, x, y, k_attack))

        def loss_fn(params):
            # Same order as the code: f(x_hat) first, then f(x).
            gen_logits, bs = apply_model(clf.module, state.robust, x_hat, train=True,
                                         dropout_key=k_adv, params=params)
            mv = ModelVars(state.robust.params, bs)
            clean_logits, bs = apply_model(clf.module, mv, x, train=True,
                                           dropout_key=k_clean, params=params)
            gl = losses.as_class_logits(gen_logits, clf.head)
            cl = losses.as_class_logits(clean_logits, clf.head)
            if mode == "eq6":
                loss = losses.eq6_loss(cl, gl, y, alpha)
            elif mode == "kl_pairs":
                loss = losses.trades_ladder_loss(cl, gl, y, beta)
            else:
                mv = ModelVars(state.robust.params, bs)
                pgd_logits, bs = apply_model(clf.module, mv, x_pgd, train=True,
                                             dropout_key=k_pgd, params=params)
                pl = losses.as_class_logits(pgd_logits, clf.head)
                loss = losses.trades_pgd_plus_ladder_loss(cl, pl, gl, y, beta, alpha)
            return loss, (bs, clean_logits, gen_logits)

        (loss, (bs, cl, gl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.robust.params)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(clf.predict_logits(cl) == y),
            "accuracy_adv": jnp.mean(clf.predict_logits(gl) == y),
        }
        return _apply_update(state, tx, grads, bs), metrics

    return step


def apply_fn_for(clf: Classifier) -> Callable:
    """``(variables, x) -> decision logits`` for ``advcore.evaluate``."""

    def apply_fn(variables, x):
        logits = clf.module.apply(variables, x, train=False)
        return losses.decision_logits(logits, clf.head, clf.legacy_threshold)

    return apply_fn


@functools.lru_cache(maxsize=None)
def _correct_fn(clf: Classifier) -> Callable:
    # One compiled program per classifier for the whole run (a fresh closure
    # per call would recompile every evaluation).
    def run(mv, x, y):
        return clf.predict_logits(clf.logits(mv, x)) == y

    return jax.jit(run)


def accuracy(clf: Classifier, mv: ModelVars, images: np.ndarray, labels: np.ndarray,
             batch_size: int) -> float:
    """Accuracy in % of uint8 or [0, 1] float images (padded last batch)."""
    if len(labels) == 0:
        return float("nan")
    fn = _correct_fn(clf)
    bs = min(batch_size, len(labels))
    correct = 0
    for start in range(0, len(labels), bs):
        x = np.asarray(images[start:start + bs])
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        y = np.asarray(labels[start:start + bs], np.int32)
        n = len(y)
        if n < bs:
            x = np.concatenate([x, np.zeros((bs - n,) + x.shape[1:], x.dtype)])
            y = np.concatenate([y, np.zeros((bs - n,), y.dtype)])
        correct += int(np.sum(np.asarray(fn(mv, x, y))[:n]))
    return 100.0 * correct / len(labels)
