"""Attention SVMs for ordered class pairs (LADDER Eq. 2; the authors' ``svm_atten.py``).

One SVM per ordered pair (source y, target t) separates latents of class y
(label -1) from latents of class t (+1). It is fitted in its own *fit space*
z_s = (z - mu) / sigma (``LatentScale``), where it computes

    a = tanh(W_a z_s + b_a)          # the code's 1x1 conv dim->dim, with bias
    s = softmax(a)                   # over the dim features
    beta = exp(s)   (attention_exp=True, the authors' code)
    beta = s        (attention_exp=False, the paper's Eq. 2)
    h = w . (z_s * beta) + b

Loss per SGD step: ``c * mean(hinge(1 - y h)) + mean(w ** 2)``; the L2 term
is the mean over coordinates of the fc weight only. Plain SGD, no momentum,
reshuffled every epoch, PyTorch default initialisation. These are the
authors' settings; only the fit space is the library's choice
(``svm.latent_scaling``):

* ``'standardize'`` (default): mu is the per-coordinate mean of the pair's
  fitted latents and sigma, the same for every coordinate, is their mean
  distance to mu divided by ``fit_norm`` (``svm.fit_norm``, 10^4): the fit
  inputs have mean norm ``fit_norm`` on every dataset, whatever the scale of
  its latents (``fit_scale``).
* ``'none'`` and ``'pixels255'``: mu = 0, sigma = 1 (the SVM sees the latents
  as they are; ``'pixels255'`` feeds it latents of x*255 images, as the
  authors' MNIST/SVHN code does).

Why a fixed norm and not unit variance: with the code's settings one hinge
step moves w by about lr*c*|z_s| = 1e-4 * |z_s|, and PyTorch's init gives
|w0| = 1/sqrt(3) ~ 0.58 in every dimension. The fitted w is a boundary
normal only when those steps are large next to |w0|: unit-variance inputs
(|z_s| ~ sqrt(dim), 22 for MNIST's 500-d latents) move w by ~0.002 per step,
the margin is met long before w leaves its init, and d stays random (the
same failure as the library's former [0, 1] default). The authors' MNIST
inputs (latents of x*255, |z| ~ 1.1e4) make each step about twice |w0|;
``fit_norm = 1e4`` puts every dataset in that regime (docs/ladder.md,
"The input-scale problem").

The boundary normal in latent space (``boundary_normal``) is d = w / sigma:
the gradient of the linear part w . z_s + b = w . (z - mu) / sigma + b with
respect to z. With beta held fixed, beta * d is the gradient of h itself, so
Eq. 3's push z + eps * beta * d moves z itself along the SVM's boundary
normal. d points from the source y toward the target t.

All pairs are trained at once: ``train_pairs`` is one jitted ``vmap`` of the
single-pair trainer over the pair axis. Every pair draws from its own key,
so the result for a pair does not depend on which other pairs are trained
alongside it (``tests/ladder/test_ladder_svm.py`` checks this).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class SVMParams(NamedTuple):
    """Parameters of one attention SVM (or, stacked, of many)."""

    att_w: jax.Array  # (dim_out, dim_in), the 1x1 conv kernel
    att_b: jax.Array  # (dim,)
    w: jax.Array  # (dim,), the fc weight: the boundary normal d
    b: jax.Array  # (), the fc bias


LATENT_SCALINGS = ("standardize", "none", "pixels255")
# The mean norm of the standardized fit inputs: about the norm of the
# authors' MNIST SVM inputs (LeNet latents of x*255 images, ~1.1e4), where
# the code's c, lr and epochs move w far from its init.
DEFAULT_FIT_NORM = 1e4


class LatentScale(NamedTuple):
    """The map from latent space to an SVM's fit space: z_s = (z - mu) / sigma."""

    mu: jax.Array  # (dim,)
    sigma: jax.Array  # (dim,), > 0


class LatentSVM(NamedTuple):
    """A fitted SVM with its fit space: what generation and the direction check use."""

    params: SVMParams
    scale: LatentScale


def identity_scale(dim: int) -> LatentScale:
    """mu = 0, sigma = 1: the SVM sees the latents as they are."""
    return LatentScale(jnp.zeros((dim,), jnp.float32), jnp.ones((dim,), jnp.float32))


def fit_scale(z: jax.Array, fit_norm: float) -> LatentScale:
    """Centres ``z`` (n, dim) per coordinate and rescales it to mean norm ``fit_norm``.

    One sigma for all coordinates keeps the latent geometry (a per-coordinate
    std would reweight the coordinates and the normal d = w / sigma with
    them). If every row equals mu (nothing to separate), sigma = 1.
    """
    mu = jnp.mean(z, axis=0)
    spread = jnp.mean(jnp.linalg.norm(z - mu, axis=-1))
    sigma = jnp.where(spread > 0, spread / fit_norm, 1.0)
    return LatentScale(mu, jnp.full(z.shape[-1:], sigma, z.dtype))


def to_fit_space(scale: LatentScale, z: jax.Array) -> jax.Array:
    return (z - scale.mu) / scale.sigma


def boundary_normal(svm: LatentSVM) -> jax.Array:
    """d = w / sigma: the gradient of w . z_s + b with respect to the latent z."""
    return svm.params.w / svm.scale.sigma


def latent_attention(svm: LatentSVM, z: jax.Array, use_exp: bool = True) -> jax.Array:
    """beta(z_s) for latents ``z`` (..., dim)."""
    return attention(svm.params, to_fit_space(svm.scale, z), use_exp)


def latent_score(svm: LatentSVM, z: jax.Array, use_exp: bool = True) -> jax.Array:
    """The SVM score h(z_s) of latents ``z``; > 0 predicts the target class."""
    return svm_score(svm.params, to_fit_space(svm.scale, z), use_exp)


def init_svm_params(key: jax.Array, dim: int) -> SVMParams:
    """PyTorch default init: every weight and bias ~ U(+-1/sqrt(fan_in)).

    Both the 1x1 conv (fan_in = dim) and the Linear(dim -> 1) have
    fan_in = dim, so all four tensors share the bound.
    """
    bound = 1.0 / math.sqrt(dim)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    uni = functools.partial(jax.random.uniform, minval=-bound, maxval=bound)
    return SVMParams(
        att_w=uni(k1, (dim, dim)),
        att_b=uni(k2, (dim,)),
        w=uni(k3, (dim,)),
        b=uni(k4, ()),
    )


def attention(params: SVMParams, z: jax.Array, use_exp: bool = True) -> jax.Array:
    """The attention weights beta for fit-space inputs ``z`` of shape (..., dim)."""
    a = jnp.tanh(z @ params.att_w.T + params.att_b)
    s = jax.nn.softmax(a, axis=-1)
    # The authors' code applies an extra exp, so beta ~ 1 + O(1/dim); the
    # paper's beta sums to 1. The code's form is the default.
    return jnp.exp(s) if use_exp else s


def svm_score(params: SVMParams, z: jax.Array, use_exp: bool = True) -> jax.Array:
    """The SVM score h(z) = w . (z * beta(z)) + b of fit-space inputs, shape (...,)."""
    beta = attention(params, z, use_exp)
    return (z * beta) @ params.w + params.b


def svm_loss(
    params: SVMParams,
    z: jax.Array,
    y: jax.Array,
    mask: jax.Array,
    c: float,
    use_exp: bool = True,
) -> jax.Array:
    """``c * mean_b hinge + mean_j w_j**2`` over the unmasked rows of a batch.

    ``y`` is +-1; ``mask`` (0/1) marks real rows, so a smaller last batch of an
    epoch (PyTorch's DataLoader keeps it) averages over its real rows only.
    """
    h = svm_score(params, z, use_exp)
    hinge = jnp.maximum(0.0, 1.0 - y * h)
    mean_hinge = jnp.sum(hinge * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return c * mean_hinge + jnp.mean(params.w**2)


def batch_schedule(key: jax.Array, n: int, epochs: int, batch_size: int
                   ) -> tuple[jax.Array, jax.Array]:
    """Row indices and validity masks (epochs, steps, batch) of a shuffled SGD run.

    Every epoch draws a fresh permutation; the last, smaller batch of an epoch
    is kept (PyTorch's loop over ``range(0, N, batch_size)``) and padded with
    masked rows.
    """
    steps = -(-n // batch_size)
    pad = steps * batch_size - n

    def one_epoch(k):
        perm = jax.random.permutation(k, n)
        idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)])
        valid = jnp.concatenate([jnp.ones((n,)), jnp.zeros((pad,))])
        return idx.reshape(steps, batch_size), valid.reshape(steps, batch_size)

    return jax.vmap(one_epoch)(jax.random.split(key, epochs))


def fit_svm(
    params: SVMParams,
    z: jax.Array,
    y: jax.Array,
    batch_idx: jax.Array,
    batch_mask: jax.Array,
    *,
    c: float,
    lr: float,
    use_exp: bool,
) -> SVMParams:
    """Plain SGD over a precomputed batch schedule (no randomness inside).

    Keeping the random draws out of this program matters on CPU: XLA spends
    most of its compile time on threefry code, which here runs once.
    """
    grad_fn = jax.grad(svm_loss)

    def step_body(params, batch):
        bidx, bmask = batch
        g = grad_fn(params, z[bidx], y[bidx], bmask, c, use_exp)
        return jax.tree.map(lambda p, gp: p - lr * gp, params, g), None

    def epoch_body(params, epoch):
        params, _ = jax.lax.scan(step_body, params, epoch)
        return params, None

    params, _ = jax.lax.scan(epoch_body, params, (batch_idx, batch_mask))
    return params


def train_svm(
    key: jax.Array,
    z: jax.Array,
    y: jax.Array,
    *,
    c: float,
    lr: float,
    epochs: int,
    batch_size: int,
    use_exp: bool,
) -> SVMParams:
    """Trains one attention SVM with plain SGD (pure; jit/vmap-able).

    Args:
      key: initialisation and shuffling key.
      z: (n, dim) training latents.
      y: (n,) labels in {-1, +1}.
      c, lr, epochs, batch_size: the code's are 0.01, 0.01, 10, 1.
      use_exp: the code's extra exp on the attention.
    """
    n, dim = z.shape
    k_init, k_shuffle = jax.random.split(key)
    params = init_svm_params(k_init, dim)
    idx, mask = batch_schedule(k_shuffle, n, epochs, batch_size)
    return fit_svm(params, z, y, idx, mask, c=c, lr=lr, use_exp=use_exp)


def split_sizes(n_per_class: int, test_size: float) -> tuple[int, int]:
    """(train, held-out) rows per class of a stratified split of 2 equal classes.

    sklearn's ``train_test_split(test_size=0.33, stratify=y)`` on 200 + 200
    samples holds out ceil(0.33 * 400) = 132 rows, 66 per class, leaving the
    268 fitted samples of the code.
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"svm.test_size must be in (0, 1), got {test_size}")
    n_test_total = math.ceil(test_size * 2 * n_per_class)
    n_test = n_test_total // 2
    n_train = n_per_class - n_test
    if n_train < 1 or n_test < 1:
        raise ValueError(
            f"svm.samples_per_class={n_per_class} is too small for svm.test_size="
            f"{test_size}: need at least one train and one held-out row per class"
        )
    return n_train, n_test


class PairResult(NamedTuple):
    params: SVMParams  # in the pair's fit space
    scale: LatentScale  # latent -> fit space
    train_acc: jax.Array
    heldout_acc: jax.Array
    # cos(w, w at init), in the fit space. Near 1 means the hinge barely moved
    # the normal, so d is mostly its random init (the code's settings on
    # latents of [0, 1] images do this; ``ladder_jax.direction_check``).
    init_cos: jax.Array

    @property
    def svm(self) -> LatentSVM:
        return LatentSVM(self.params, self.scale)


class PairPlan(NamedTuple):
    """Every random draw of one pair's training: split, init and batch order."""

    perm_src: jax.Array  # (n,) stratified split order of the source rows
    perm_tgt: jax.Array  # (n,) ... of the target rows
    params0: SVMParams
    batch_idx: jax.Array  # (epochs, steps, batch)
    batch_mask: jax.Array


def plan_pair(key: jax.Array, n: int, dim: int, *, test_size: float, epochs: int,
              batch_size: int) -> PairPlan:
    """The random part of ``train_pair``, derived from the pair's key only."""
    n_train, _ = split_sizes(n, test_size)
    k_split_s, k_split_t, k_train = jax.random.split(key, 3)
    k_init, k_shuffle = jax.random.split(k_train)
    idx, mask = batch_schedule(k_shuffle, 2 * n_train, epochs, batch_size)
    return PairPlan(jax.random.permutation(k_split_s, n), jax.random.permutation(k_split_t, n),
                    init_svm_params(k_init, dim), idx, mask)


def fit_pair(plan: PairPlan, z_src: jax.Array, z_tgt: jax.Array, *, test_size: float,
             c: float, lr: float, use_exp: bool, fit_norm: float | None = None) -> PairResult:
    """The deterministic part of ``train_pair``: split, fit space, SGD, accuracies.

    ``fit_norm`` None fits on the latents as given (``identity_scale``);
    a number standardizes them from the pair's fitted rows (``fit_scale``;
    the held-out rows never enter mu or sigma).
    """
    n = z_src.shape[0]
    n_train, n_test = split_sizes(n, test_size)
    perm_s, perm_t = plan.perm_src, plan.perm_tgt
    z_tr = jnp.concatenate([z_src[perm_s[:n_train]], z_tgt[perm_t[:n_train]]])
    z_te = jnp.concatenate([z_src[perm_s[n_train:]], z_tgt[perm_t[n_train:]]])
    y_tr = jnp.concatenate([-jnp.ones((n_train,)), jnp.ones((n_train,))])
    y_te = jnp.concatenate([-jnp.ones((n_test,)), jnp.ones((n_test,))])
    scale = identity_scale(z_tr.shape[-1]) if fit_norm is None else fit_scale(z_tr, fit_norm)
    zs_tr, zs_te = to_fit_space(scale, z_tr), to_fit_space(scale, z_te)
    params = fit_svm(plan.params0, zs_tr, y_tr, plan.batch_idx, plan.batch_mask,
                     c=c, lr=lr, use_exp=use_exp)

    def accuracy(zz, yy):
        # h > 0 predicts the target (+1).
        pred = jnp.where(svm_score(params, zz, use_exp) > 0, 1.0, -1.0)
        return jnp.mean(pred == yy)

    w0 = plan.params0.w
    init_cos = jnp.dot(params.w, w0) / jnp.maximum(
        jnp.linalg.norm(params.w) * jnp.linalg.norm(w0), 1e-12)
    return PairResult(params, scale, accuracy(zs_tr, y_tr), accuracy(zs_te, y_te), init_cos)


def train_pair(
    key: jax.Array,
    z_src: jax.Array,
    z_tgt: jax.Array,
    *,
    test_size: float,
    c: float,
    lr: float,
    epochs: int,
    batch_size: int,
    use_exp: bool,
    fit_norm: float | None = None,
) -> PairResult:
    """Stratified split, SVM training and accuracy for one ordered pair.

    ``z_src`` (source, label -1) and ``z_tgt`` (target, label +1) hold the
    same number n of latents each. sklearn's stratified split is replaced
    by a keyed permutation of each class (same sizes). ``fit_norm``: see
    ``fit_pair``.
    """
    plan = plan_pair(key, z_src.shape[0], z_src.shape[1], test_size=test_size,
                     epochs=epochs, batch_size=batch_size)
    return fit_pair(plan, z_src, z_tgt, test_size=test_size, c=c, lr=lr, use_exp=use_exp,
                    fit_norm=fit_norm)


@functools.partial(jax.jit, static_argnames=("n", "dim", "test_size", "epochs", "batch_size"))
def _plan_pairs(keys, *, n, dim, test_size, epochs, batch_size) -> PairPlan:
    return jax.vmap(lambda k: plan_pair(k, n, dim, test_size=test_size, epochs=epochs,
                                        batch_size=batch_size))(keys)


@functools.partial(jax.jit, static_argnames=("test_size", "c", "lr", "use_exp", "fit_norm"))
def _fit_pairs(plans: PairPlan, class_latents, pairs, *, test_size, c, lr, use_exp, fit_norm
               ) -> PairResult:
    def one(plan, pair):
        return fit_pair(plan, class_latents[pair[0]], class_latents[pair[1]],
                        test_size=test_size, c=c, lr=lr, use_exp=use_exp, fit_norm=fit_norm)

    return jax.vmap(one)(plans, pairs)


def plan_pairs(keys: jax.Array, n: int, dim: int, *, test_size: float, epochs: int,
               batch_size: int) -> PairPlan:
    """``plan_pair`` of every key, one jitted program (leading pair axis).

    On CPU it is compiled without XLA backend optimisation: threefry code
    dominates the compile time there and runs once.
    """
    plan_kw = dict(n=int(n), dim=int(dim), test_size=test_size, epochs=epochs,
                   batch_size=batch_size)
    if jax.default_backend() == "cpu":
        return _plan_pairs.lower(keys, **plan_kw).compile(
            compiler_options={"xla_backend_optimization_level": 0})(keys)
    return _plan_pairs(keys, **plan_kw)


def train_pairs(
    keys: jax.Array,
    class_latents: jax.Array,
    pairs: jax.Array,
    *,
    test_size: float,
    c: float,
    lr: float,
    epochs: int,
    batch_size: int,
    use_exp: bool,
    fit_norm: float | None = None,
) -> PairResult:
    """Trains the SVMs of many ordered pairs at once: ``vmap`` of ``train_pair``.

    Two jitted programs, both vmapped over the pair axis: the random plans
    (``plan_pairs``) and the SGD fits.

    Args:
      keys: (P,) one key per pair.
      class_latents: (K, n, dim) the first n latents of every class.
      pairs: (P, 2) int rows (source, target).
      fit_norm: None = fit on the latents as given; a number = standardize
        each pair's fitted latents to that mean norm (``fit_scale``).
    Returns:
      A ``PairResult`` whose leaves have a leading pair axis P.
    """
    _, n, dim = class_latents.shape
    plans = plan_pairs(keys, n, dim, test_size=test_size, epochs=epochs,
                       batch_size=batch_size)
    return _fit_pairs(plans, class_latents, pairs, test_size=test_size, c=c, lr=lr,
                      use_exp=use_exp, fit_norm=None if fit_norm is None else float(fit_norm))


def ordered_pairs(num_classes: int) -> np.ndarray:
    """All ordered pairs (y, t), y != t, in lexicographic order: (P, 2) int32."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return np.asarray(
        [(y, t) for y in range(num_classes) for t in range(num_classes) if y != t],
        dtype=np.int32,
    )


def pair_index_table(pairs: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) table mapping (source, target) to the row of ``pairs`` (-1 if absent)."""
    table = -np.ones((num_classes, num_classes), dtype=np.int32)
    for i, (y, t) in enumerate(np.asarray(pairs)):
        table[int(y), int(t)] = i
    return table


def apply_legacy_unordered_cache(params: SVMParams, pairs: np.ndarray) -> SVMParams:
    """Reproduces the authors' unordered-pair cache bug (docs/ladder.md, legacy flags).

    The code saves the attention SVM weights under the *unordered* pair
    ``{min, max}`` while the direction (w) is cached per ordered pair, so the
    later-trained of (a, b) and (b, a) overwrites the attention used by both.
    Here pairs are trained in lexicographic order, so (max, min) is the later
    one: both ordered pairs get the attention (att_w, att_b) of (max, min),
    while each keeps its own normal w, bias b and fit space (mu, sigma; the
    authors' fits had none).
    """
    pairs = np.asarray(pairs)
    num_classes = int(pairs.max()) + 1
    table = pair_index_table(pairs, num_classes)
    src = np.arange(len(pairs))
    for i, (y, t) in enumerate(pairs):
        j = table[max(y, t), min(y, t)]
        if j >= 0:
            src[i] = j
    return params._replace(
        att_w=np.asarray(params.att_w)[src], att_b=np.asarray(params.att_b)[src]
    )


def pair_keys(key: jax.Array, pairs: np.ndarray, num_classes: int) -> jax.Array:
    """One key per ordered pair, derived from the pair itself.

    Folding in ``y * K + t`` makes each pair's key independent of which pairs
    are trained together (or in which chunk).
    """
    ids = np.asarray(pairs[:, 0]) * num_classes + np.asarray(pairs[:, 1])
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(ids))
