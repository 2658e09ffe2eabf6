"""The vanilla classifier f and its fine-tuned copies: model, prediction rule, state, steps.

* ``model_spec`` / ``make_run_spec``: the resolved model (``advcore.run_spec``)
  every LADDER checkpoint stores, so ``advcore.evaluation.load_evaluable``
  rebuilds any of them; the saved state keeps the network under ``model``.
* ``Classifier``: the Flax module with its head and prediction rule, and the
  compiled evaluation programs of the run (built once per classifier).
* ``make_clean_step``: vanilla training, CE (BCE for the binary head).
* ``make_pair_step``: fine-tuning on (x, x_hat, y) pairs with Eq. 6,
  TRADES+LADDER (``kl_pairs``) or TRADES-PGD + LADDER (``pgd_kl_plus_ladder``).
  As in ``*_defence.py``, the model runs twice in train mode per step, on
  x_hat first and then on x, so BatchNorm's running statistics see two
  batches per step.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from advcore import losses as core_losses
from advcore import parallel, run_spec
from advcore.backend import compile_once
from advcore.batching import map_batches
from advcore.models import init_variables
from advcore.variables import ModelVars, apply_eval, apply_train
from ladder_jax import losses

# The network's entry in every LADDER checkpoint's state.
STATE_KEY = "model"
# The CelebA code predicts "smiling" at logit >= 0.5 (model.legacy_celeba_threshold).
LEGACY_CELEBA_THRESHOLD = 0.5
# LADDER's black-box attacks that are L-inf attacks at ε = 0.3: the threat
# model a LADDER checkpoint records for ``advcore.evaluate``.
LINF_ATTACK_KEYS = ("fgsm", "pgd", "aa")


@struct.dataclass
class ClassifierState:
    step: jax.Array
    model: ModelVars
    opt_state: Any
    key: jax.Array  # raw key data (checkpointable)


def num_logits(head: str, num_classes: int) -> int:
    return 1 if head == "binary" else num_classes


def model_spec(config, num_classes: int, name: Optional[str] = None,
               kwargs: Optional[Mapping[str, Any]] = None) -> dict:
    """The resolved model of ``config.model`` (architecture, head, threshold).

    ``name`` / ``kwargs`` replace the architecture (the substitute of another
    architecture keeps the head and the prediction rule).
    """
    head = config.model.head
    threshold = LEGACY_CELEBA_THRESHOLD if config.model.legacy_celeba_threshold else 0.0
    return run_spec.model_spec(name or config.model.name, num_logits(head, num_classes),
                               kwargs=dict(config.model.kwargs if name is None else kwargs or {}),
                               state_key=STATE_KEY, head=head, binary_threshold=threshold)


def make_run_spec(config, spec: Mapping[str, Any], row: str) -> dict:
    """The run spec of ``models/<row>``: its model and LADDER's L-inf threat model."""
    keys = [k for k in config.evaluate.attacks if k in LINF_ATTACK_KEYS] or ["fgsm", "pgd"]
    pgd = dict(config.attacks.pgd.overrides)
    eps = float(pgd.get("eps", 0.3))
    # LADDER's PGD step (0.05 at eps 0.3), not the pgd10 preset's own rule;
    # FGSM and AutoAttack have no step size, so it is PGD's alone.
    step = pgd.get("step_size")
    return run_spec.run_spec(
        method=f"ladder/{row}",
        dataset={"name": config.dataset.name, "source": config.dataset.source,
                 "data_dir": config.dataset.data_dir, "test_split": "test"},
        models={STATE_KEY: dict(spec)}, default_model=STATE_KEY,
        threat_model={"norm": "linf", "eps": eps,
                      "attacks": [config.attacks[k].name for k in keys],
                      "step_size": None if step is None else float(step)})


class Classifier:
    """A LADDER classifier: images -> logits, latents (``features``/``classify``), prediction.

    A binary head's single logit predicts class 1 when it exceeds ``threshold``
    (``advcore.run_spec.decision_logits``). The compiled evaluation programs
    are attributes of the object, so every unit of a run shares them.
    """

    def __init__(self, module: Any, head: str = "softmax", threshold: float = 0.0):
        if head not in run_spec.HEADS:
            raise ValueError(f"head must be one of {run_spec.HEADS}, got {head!r}")
        self.module, self.head, self.threshold = module, head, float(threshold)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "Classifier":
        return cls(run_spec.build(spec), spec["head"], spec["binary_threshold"])

    def logits(self, mv: ModelVars, x: jax.Array) -> jax.Array:
        return apply_eval(self.module, mv, x)

    def features(self, mv: ModelVars, x: jax.Array) -> jax.Array:
        return apply_eval(self.module, mv, x, method="features")

    def classify(self, mv: ModelVars, z: jax.Array) -> jax.Array:
        return apply_eval(self.module, mv, z, method="classify")

    def decision_logits(self, logits: jax.Array) -> jax.Array:
        """Logits whose argmax is the prediction (what accuracy and attacks use)."""
        return run_spec.decision_logits(logits, self.head, self.threshold)

    def predict_logits(self, logits: jax.Array) -> jax.Array:
        """Predicted labels, int32 (B,)."""
        return jnp.argmax(self.decision_logits(logits), axis=-1).astype(jnp.int32)

    @functools.cached_property
    def correct(self) -> Callable:
        """jit(mv, x, y) -> per-example correctness."""
        return jax.jit(lambda mv, x, y: self.predict_logits(self.logits(mv, x)) == y)

    @functools.cached_property
    def latent_pred(self) -> Callable:
        """jit(mv, z) -> the predicted label of latents z (the head after ``features``)."""
        return jax.jit(lambda mv, z: self.predict_logits(self.classify(mv, z)))

    @functools.cached_property
    def features_and_pred(self) -> Callable:
        """jit(mv, x, scale) -> (z = features(scale * x), predicted label)."""

        def run(mv, x, scale):
            z = self.features(mv, x * scale)
            return z, self.predict_logits(self.classify(mv, z))

        return jax.jit(run)

    def accuracy(self, mv: ModelVars, images: np.ndarray, labels: np.ndarray, batch_size: int,
                 mesh=None) -> float:
        """Accuracy in % of uint8 or [0, 1] float images, data-parallel over ``mesh``."""
        if len(labels) == 0:
            return float("nan")
        mesh = parallel.make_mesh() if mesh is None else mesh
        mv = on_mesh(mv, mesh)
        correct = map_batches(lambda x, y: self.correct(mv, x, y),
                              (images, np.asarray(labels, np.int32)),
                              batch_size=min(batch_size, len(labels)), mesh=mesh)
        return 100.0 * float(np.mean(correct))


def on_mesh(tree: Any, mesh) -> Any:
    """``tree`` replicated on ``mesh`` (as is when it already is): one program shape."""
    target = parallel.replicated(mesh)
    leaves = jax.tree.leaves(tree)
    if leaves and all(isinstance(a, jax.Array) and a.sharding == target for a in leaves):
        return tree
    return parallel.replicate(jax.device_get(tree), mesh)


def init_classifier_vars(clf: Classifier, key: jax.Array, image_shape) -> ModelVars:
    return ModelVars.from_variables(init_variables(clf.module, key, (1,) + tuple(image_shape)))


def create_state(mv: ModelVars, tx: optax.GradientTransformation, key: jax.Array
                 ) -> ClassifierState:
    def build(mv, key):
        return ClassifierState(step=jnp.zeros((), jnp.int32), model=mv,
                               opt_state=tx.init(mv.params), key=jax.random.key_data(key))

    # Copies mv's buffers (the caller's arrays survive the train step's
    # donation) and compiles the optimizer init as one program.
    return compile_once(build, mv, key)


def _step_keys(state: ClassifierState, n: int):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    return jax.random.split(key, n)


def _apply_update(state: ClassifierState, tx, grads, batch_stats):
    updates, opt_state = tx.update(grads, state.opt_state, state.model.params)
    params = optax.apply_updates(state.model.params, updates)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
    return state.replace(step=state.step + 1, model=ModelVars(params, batch_stats),
                         opt_state=opt_state), finite


def make_clean_step(clf: Classifier, tx: optax.GradientTransformation) -> Callable:
    """``step(state, {'image', 'label'}) -> (state, metrics)``: CE / BCE on clean data."""

    def step(state: ClassifierState, batch):
        (k_drop,) = _step_keys(state, 1)

        def loss_fn(params):
            logits, bs = apply_train(clf.module, state.model, batch["image"], params=params,
                                     dropout_key=k_drop)
            class_logits = losses.as_class_logits(logits, clf.head)
            return core_losses.cross_entropy(class_logits, batch["label"]), (bs, logits)

        (loss, (bs, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.model.params)
        acc = jnp.mean(clf.predict_logits(logits) == batch["label"])
        state, finite = _apply_update(state, tx, grads, bs)
        return state, {"loss": loss, "train/accuracy": acc, "params_finite": finite}

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
      mode: 'eq6' (LADDER and the "X Adv." rows), 'kl_pairs' (TRADES+LADDER)
        or 'pgd_kl_plus_ladder' (the alternative reading).
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
                return losses.as_class_logits(clf.logits(state.model, xx), clf.head)

            x_pgd = jax.lax.stop_gradient(trades_attack(logits_fn, x, y, k_attack))

        def loss_fn(params):
            # Same order as the code: f(x_hat) first, then f(x).
            gen_logits, bs = apply_train(clf.module, state.model, x_hat, params=params,
                                         dropout_key=k_adv)
            clean_logits, bs = apply_train(clf.module, ModelVars(state.model.params, bs), x,
                                           params=params, dropout_key=k_clean)
            gl = losses.as_class_logits(gen_logits, clf.head)
            cl = losses.as_class_logits(clean_logits, clf.head)
            if mode == "eq6":
                loss = losses.eq6_loss(cl, gl, y, alpha)
            elif mode == "kl_pairs":
                loss = losses.trades_ladder_loss(cl, gl, y, beta)
            else:
                pgd_logits, bs = apply_train(clf.module, ModelVars(state.model.params, bs),
                                             x_pgd, params=params, dropout_key=k_pgd)
                pl = losses.as_class_logits(pgd_logits, clf.head)
                loss = losses.trades_pgd_plus_ladder_loss(cl, pl, gl, y, beta, alpha)
            return loss, (bs, clean_logits, gen_logits)

        (loss, (bs, cl, gl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.model.params)
        metrics = {
            "loss": loss,
            "train/accuracy": jnp.mean(clf.predict_logits(cl) == y),
            "train/accuracy_adv": jnp.mean(clf.predict_logits(gl) == y),
        }
        state, finite = _apply_update(state, tx, grads, bs)
        metrics["params_finite"] = finite
        return state, metrics

    return step
