"""Cross-checking the JAX AutoAttack against the PyTorch reference implementation.

The reference is ``fra31/auto-attack``, imported as ``pyautoattack`` (its PyPI
packaging) or ``autoattack`` (the GitHub package). Neither it nor ``torch``
is a dependency of the library (this module is test and benchmark tooling,
not part of the installed package): everything here imports them lazily, and
:func:`reference_missing` says why a comparison cannot run.

One module serves both the CI test (``tests/attacks/test_aa_reference.py``,
a tiny CNN) and its long form (``bench/crosscheck_autoattack_torch.py``,
the MNIST SmallCNN with full budgets):

* :func:`build_torch_model` rebuilds a Flax classifier in PyTorch from a list
  of layers holding the same weights (:func:`flax_layers` reads them);
* ``reference_*`` run one reference component (an APGD run from a given
  start, APGD / FAB / Square ``perturb``, the whole ``run_standard_evaluation``)
  on NHWC NumPy inputs and return NumPy results;
* ``jax_*`` run the JAX counterpart with the same arguments;
* :func:`flag_agreement` summarises two per-point "still robust" vectors.

"From the same start" means: APGD runs get the same ``x_init`` (and, for the
L1 large-reps schedule, the same Gaussian draw, which the reference takes
from ``torch.randn_like``); FAB-T with one restart draws nothing random.
Square and random starts cannot share the reference's random stream, so
those comparisons are statistical.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import re
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple
from unittest import mock

import numpy as np

__all__ = ["build_torch_model", "flag_agreement", "flax_layers", "import_reference",
           "jax_apgd_run", "reference_apgd_run", "reference_autoattack", "reference_fab",
           "reference_l1_projection",
           "reference_missing", "reference_perturb", "reference_square",
           "reference_square_replay", "square_draws", "torch_norm"]

_TORCH_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def torch_norm(norm: str) -> str:
    """``"linf"`` -> ``"Linf"`` etc. (the reference's spelling)."""
    return _TORCH_NORMS[norm.lower()]


def import_reference():
    """The reference package (``pyautoattack``, else ``autoattack``)."""
    try:
        return importlib.import_module("pyautoattack")
    except ImportError:
        return importlib.import_module("autoattack")


def reference_missing() -> Optional[str]:
    """Why the reference cannot be run here (None when it can)."""
    try:
        importlib.import_module("torch")
    except ImportError:
        return "torch is not installed (pip install torch); the AutoAttack cross-check needs it"
    try:
        import_reference()
    except ImportError:
        return ("the reference AutoAttack is not installed (pip install pyautoattack, the "
                "PyPI packaging of fra31/auto-attack)")
    return None


# --------------------------------------------------------------------------
# The same network in PyTorch.
# --------------------------------------------------------------------------


def flax_layers(params: Dict[str, Any], spec: Sequence[Tuple]) -> list:
    """Layer list for :func:`build_torch_model` from Flax ``params``.

    ``spec`` names the layers in order: ``("conv", name, stride)``,
    ``("dense", name)``, ``("relu",)``, ``("maxpool", k)``, ``("flatten",
    "nhwc" | "nchw")`` (the order in which the Flax model flattens its
    feature maps); weights are read from ``params[name]``.
    """
    out = []
    for item in spec:
        if item[0] == "conv":
            p = params[item[1]]
            out.append(("conv", np.asarray(p["kernel"]), np.asarray(p["bias"]), item[2]))
        elif item[0] == "dense":
            p = params[item[1]]
            out.append(("dense", np.asarray(p["kernel"]), np.asarray(p["bias"])))
        else:
            out.append(tuple(item))
    return out


def build_torch_model(layers: Sequence[Tuple]):
    """A PyTorch module computing the same function as the Flax model.

    ``layers``: ``("conv", kernel HWIO, bias, stride)`` (unpadded),
    ``("dense", kernel (in, out), bias)``, ``("relu",)``, ``("maxpool", k)``,
    ``("flatten", "nhwc" | "nchw")``. Inputs are NCHW, as the reference
    expects; kernels are transposed to OIHW / (out, in).
    """
    import torch
    from torch.nn import functional as F

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ops = []
            self.weights = torch.nn.ParameterList()
            for layer in layers:
                kind = layer[0]
                if kind == "conv":
                    w = torch.from_numpy(np.ascontiguousarray(layer[1].transpose(3, 2, 0, 1)))
                    self.weights.append(torch.nn.Parameter(w, requires_grad=False))
                    self.weights.append(torch.nn.Parameter(torch.from_numpy(np.array(layer[2])),
                                                           requires_grad=False))
                    self.ops.append(("conv", len(self.weights) - 2, int(layer[3])))
                elif kind == "dense":
                    w = torch.from_numpy(np.ascontiguousarray(layer[1].T))
                    self.weights.append(torch.nn.Parameter(w, requires_grad=False))
                    self.weights.append(torch.nn.Parameter(torch.from_numpy(np.array(layer[2])),
                                                           requires_grad=False))
                    self.ops.append(("dense", len(self.weights) - 2))
                elif kind in ("relu", "maxpool", "flatten"):
                    self.ops.append(layer)
                else:
                    raise ValueError(f"layer kind must be conv, dense, relu, maxpool or "
                                     f"flatten, got {kind!r}")

        def forward(self, x):
            for op in self.ops:
                if op[0] == "conv":
                    x = F.conv2d(x, self.weights[op[1]], self.weights[op[1] + 1], stride=op[2])
                elif op[0] == "dense":
                    x = F.linear(x, self.weights[op[1]], self.weights[op[1] + 1])
                elif op[0] == "relu":
                    x = torch.relu(x)
                elif op[0] == "maxpool":
                    x = F.max_pool2d(x, op[1])
                elif op[1] == "nhwc":
                    x = x.permute(0, 2, 3, 1).flatten(1)
                else:
                    x = x.flatten(1)
            return x

    return Twin().eval()


def _nchw(x: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def _nhwc(t) -> np.ndarray:
    return t.detach().cpu().numpy().transpose(0, 2, 3, 1)


def _labels(y: np.ndarray):
    import torch

    return torch.from_numpy(np.asarray(y).astype(np.int64))


# --------------------------------------------------------------------------
# Reference components.
# --------------------------------------------------------------------------


def _reference_module(name: str):
    ref = import_reference()
    return importlib.import_module(f"{ref.__name__}.{name}")


def largereps_iters(num_iters: int) -> Tuple[int, ...]:
    """The reference's large-reps iteration split, computed as its ``perturb``
    does (kept here so the reference run needs no JAX)."""
    import math

    iters = [math.ceil(c) for c in (0.3 * num_iters, 0.3 * num_iters, 0.4 * num_iters)]
    iters[-1] = num_iters - sum(iters[:-1])
    return tuple(iters)


def start_in_ball(x: np.ndarray, norm: str, eps: float, seed: int = 0) -> np.ndarray:
    """A random start at distance ``eps`` from ``x`` in the attack's norm (L-inf:
    a uniform draw rescaled to max-norm ``eps``; L2 / L1: a Gaussian draw
    rescaled to that norm), clipped to [0, 1]: the ``x_init`` both sides of an
    APGD comparison start from."""
    rng = np.random.default_rng(seed)
    n = len(x)
    if norm == "linf":
        u = rng.uniform(-1, 1, x.shape)
        u /= np.abs(u).reshape(n, -1).max(1).reshape(-1, 1, 1, 1)
    else:
        u = rng.normal(size=x.shape)
        u /= np.linalg.norm(u.reshape(n, -1), ord=2 if norm == "l2" else 1,
                            axis=1).reshape(-1, 1, 1, 1)
    return np.clip(x + eps * u, 0, 1).astype(np.float32)


def reference_apgd_run(model, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str,
                       loss: str, num_iters: int = 100, x_init: Optional[np.ndarray] = None,
                       target_rank: Optional[int] = None, use_largereps: bool = False,
                       noise: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """One reference APGD run: ``attack_single_run`` from ``x_init`` or, with
    ``use_largereps`` (L1), ``decr_eps_pgd`` whose Gaussian start is
    ``noise``. ``loss`` in ``ce``, ``dlr``, ``dlr-targeted`` (target: the class
    of clean-logit rank ``target_rank``, 2 = runner-up). Returns ``acc``
    (never misclassified), ``loss_best``, ``x_best``, ``x_best_adv`` (NHWC)."""
    import torch

    apgd_mod = _reference_module("autopgd_base")
    xt, yt = _nchw(x), _labels(y)
    kw = dict(n_iter=num_iters, eps=eps, norm=torch_norm(norm), device="cpu")
    if loss == "dlr-targeted":
        attack = apgd_mod.APGDAttack_targeted(model, **kw)
        with torch.no_grad():
            attack.y_target = model(xt).sort(dim=1)[1][:, -(target_rank or 2)]
    else:
        attack = apgd_mod.APGDAttack(model, loss=loss, **kw)
    attack.init_hyperparam(xt)
    if use_largereps:
        epss = [3.0 * eps, 2.0 * eps, 1.0 * eps]
        noise_t = _nchw(noise)
        # decr_eps_pgd starts from x + torch.randn_like(x): hand it our draw.
        with mock.patch.object(torch, "randn_like", lambda t: noise_t.clone()):
            x_best, acc, loss_best, x_best_adv = attack.decr_eps_pgd(
                xt, yt, epss, list(largereps_iters(num_iters)))
    else:
        x_best, acc, loss_best, x_best_adv = attack.attack_single_run(
            xt, yt, x_init=_nchw(x_init))
    return {"acc": acc.numpy().astype(bool), "loss_best": loss_best.detach().numpy(),
            "x_best": _nhwc(x_best), "x_best_adv": _nhwc(x_best_adv)}


def reference_l1_projection(x: np.ndarray, delta: np.ndarray, eps: float) -> np.ndarray:
    """The reference's ``L1_projection`` correction on NHWC arrays."""
    proj = _reference_module("autopgd_base").L1_projection
    return _nhwc(proj(_nchw(x), _nchw(delta), eps))


def _robust(model, x_adv, yt) -> np.ndarray:
    import torch

    with torch.no_grad():
        return (model(x_adv).argmax(1) == yt).numpy()


def reference_perturb(model, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str,
                      attack: str, seed: int = 0, num_iters: int = 100, restarts: int = 1,
                      n_target_classes: int = 9, use_largereps: bool = False,
                      n_queries: int = 5000) -> Tuple[np.ndarray, np.ndarray]:
    """One reference attack's ``perturb`` on every point (AutoAttack's
    settings unless overridden): ``attack`` in ``apgd-ce``, ``apgd-dlr``,
    ``apgd-t``, ``fab``, ``fab-t``, ``square``. Returns ``(x_adv NHWC,
    robust)`` with ``robust`` = the model still classifies ``x_adv`` as ``y``."""
    xt, yt = _nchw(x), _labels(y)
    tn = torch_norm(norm)
    if attack in ("apgd-ce", "apgd-dlr"):
        mod = _reference_module("autopgd_base")
        adversary = mod.APGDAttack(model, n_iter=num_iters, norm=tn, n_restarts=restarts,
                                   eps=eps, seed=seed, loss=attack[5:], device="cpu",
                                   use_largereps=use_largereps)
    elif attack == "apgd-t":
        mod = _reference_module("autopgd_base")
        adversary = mod.APGDAttack_targeted(model, n_iter=num_iters, norm=tn, n_restarts=1,
                                            eps=eps, seed=seed, device="cpu",
                                            n_target_classes=n_target_classes,
                                            use_largereps=use_largereps)
    elif attack in ("fab", "fab-t"):
        mod = _reference_module("fab_pt")
        adversary = mod.FABAttack_PT(model, norm=tn, n_restarts=restarts, n_iter=num_iters,
                                     eps=eps, seed=seed, targeted=attack == "fab-t",
                                     device="cpu", n_target_classes=n_target_classes)
    elif attack == "square":
        mod = _reference_module("square")
        adversary = mod.SquareAttack(model, norm=tn, n_queries=n_queries, eps=eps, p_init=0.8,
                                     n_restarts=1, seed=seed, device="cpu",
                                     resc_schedule=False)
    else:
        raise ValueError(f"attack must be one of apgd-ce, apgd-dlr, apgd-t, fab, fab-t, "
                         f"square, got {attack!r}")
    x_adv = adversary.perturb(xt, yt)
    return _nhwc(x_adv), _robust(model, x_adv, yt)


def reference_fab(model, x, y, *, eps, norm, targeted=True, **kw):
    """:func:`reference_perturb` for FAB-T (``targeted``) or FAB."""
    return reference_perturb(model, x, y, eps=eps, norm=norm,
                             attack="fab-t" if targeted else "fab", **kw)


def reference_square(model, x, y, *, eps, norm, **kw):
    """:func:`reference_perturb` for Square."""
    return reference_perturb(model, x, y, eps=eps, norm=norm, attack="square", **kw)


def _square_linf_draws(key, x_shape: Tuple[int, ...], n_queries: int,
                       p_init: float) -> Dict[str, Any]:
    import jax
    import jax.numpy as jnp

    square = importlib.import_module("advcore.attacks.square")
    batch, height, width, channels = x_shape
    k_init, k_loop = jax.random.split(key)
    stripes = np.asarray(square.linf_init_draws(k_init, batch, width, channels))
    sides = square._side_table(n_queries, p_init, height, width, False)
    draw = jax.jit(jax.vmap(lambda i, s: square.linf_query_draws(
        k_loop, i, s, height, width, channels)))
    vh, vw, signs = (np.asarray(a) for a in draw(jnp.arange(n_queries), jnp.asarray(sides)))
    return {"stripes": stripes, "offsets": np.stack([vh, vw], axis=1), "signs": signs}


def square_draws(key, x_shape: Tuple[int, ...], *, norm: str, n_queries: int,
                 p_init: float = 0.8) -> Dict[str, Any]:
    """The random draws the JAX Square L2 / L1 run makes with ``key``
    (``advcore.attacks.square_lp``), as NumPy arrays in the order the
    reference consumes them: per init tile (the reference's loop order,
    ``None`` for tiles it draws for but never uses) a transposition flag and
    per-(image, channel) signs; per query four window offsets, a flag and
    signs."""
    import jax
    import jax.numpy as jnp

    if norm == "linf":
        return _square_linf_draws(key, x_shape, n_queries, p_init)
    square_lp = importlib.import_module("advcore.attacks.square_lp")
    batch, height, width, channels = x_shape
    k_init, k_loop = jax.random.split(key)
    tile, corners = square_lp.init_tiles(height, width)
    start = (height - 5 * tile) // 2
    tiles = []
    for i in range(height // tile):
        for j in range(width // tile):
            corner = (start + i * tile, start + j * tile)
            if corner in corners:
                flip, signs = square_lp.init_draws(k_init, corners.index(corner), batch, channels)
                tiles.append((bool(flip), np.asarray(signs)))
            else:
                tiles.append(None)
    sides = square_lp.lp_side_table(n_queries, p_init, height, width, channels, False)
    draw = jax.jit(jax.vmap(lambda i, s: square_lp.query_draws(
        k_loop, i, s, height, width, batch, channels)))
    vh, vw, vh2, vw2, flips, signs = (np.asarray(a) for a in draw(
        jnp.arange(n_queries), jnp.asarray(sides)))
    return {"tiles": tiles, "offsets": np.stack([vh, vw, vh2, vw2], axis=1),
            "flips": flips, "signs": signs}


def reference_square_replay(model, x: np.ndarray, y: np.ndarray, draws: Dict[str, Any], *,
                            eps: float, norm: str, n_queries: int) -> np.ndarray:
    """The reference's Square ``attack_single_run`` fed with the JAX run's
    random draws (:func:`square_draws`) instead of its own; returns its
    ``x_best`` (NHWC). L-inf draws are shared by the batch, so the replay is
    exact throughout; for L2 / L1 it is valid only while no point is broken
    (the reference then draws signs for a smaller batch, which this refuses)."""
    import torch

    mod = _reference_module("square")
    attack = mod.SquareAttack(model, norm=torch_norm(norm), n_queries=n_queries, eps=eps,
                              p_init=0.8, n_restarts=1, seed=0, device="cpu",
                              resc_schedule=False)
    xt, yt = _nchw(x), _labels(y)
    attack.init_hyperparam(xt)
    if norm == "linf":
        offsets = list(draws["offsets"].reshape(-1))[::-1]
        # init stripes (B, 1, W, C) -> (B, C, 1, W); per query a sign per channel.
        signs = [s.reshape(-1, 1, 1) for s in draws["signs"]][::-1]
        signs.append(draws["stripes"].transpose(0, 3, 1, 2))
        attack.random_int = lambda low=0, high=1, shape=(1,): torch.tensor([int(offsets.pop())])
        attack.random_choice = lambda shape: torch.from_numpy(np.array(signs.pop(), np.float32))
        with torch.no_grad():
            _, x_best = attack.attack_single_run(xt, yt)
        return _nhwc(x_best)
    flips, signs, offsets = [], [], list(draws["offsets"].reshape(-1))
    for tile in draws["tiles"]:
        flips.append(tile[0] if tile else False)
        signs.append(tile[1] if tile else np.ones((len(x), 1, 1, x.shape[-1]), np.float32))
    flips += [bool(f) for f in draws["flips"]]
    signs += list(draws["signs"])
    flips.reverse(), signs.reverse(), offsets.reverse()

    def random_int(low=0, high=1, shape=(1,)):
        return torch.tensor([int(offsets.pop())])

    def random_choice(shape):
        nhwc = signs.pop()
        if tuple(shape) != (nhwc.shape[0], nhwc.shape[3], 1, 1):
            raise RuntimeError(f"the reference asked for signs of shape {tuple(shape)}: a point "
                               "was broken, so the replay no longer matches its batch")
        return torch.from_numpy(np.array(nhwc.transpose(0, 3, 1, 2), np.float32))

    real_rand = torch.rand

    def rand(*shape, **kw):  # only eta's transposition coin is left unpatched
        if tuple(shape[0] if len(shape) == 1 else shape) != (1,):
            return real_rand(*shape, **kw)
        return torch.tensor([1.0 if flips.pop() else 0.0])

    attack.random_int, attack.random_choice = random_int, random_choice
    with mock.patch.object(torch, "rand", rand), torch.no_grad():
        _, x_best = attack.attack_single_run(xt, yt)
    return _nhwc(x_best)


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


_STAGE_LINE = re.compile(r"robust accuracy after (\S+): ([0-9.]+)% \(total time ([0-9.]+) s\)")


def reference_autoattack(model, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str,
                         version: str = "standard", seed: int = 0, batch_size: int = 500,
                         threads: Optional[int] = None) -> Dict[str, Any]:
    """The reference's ``run_standard_evaluation``.

    Returns ``{"robust_flags": (N,) bool, "clean": %, <stage>: robust % after
    it (from the reference's log lines), "robust": %, "seconds": wall time,
    "log": the reference's log lines}``.
    """
    import torch

    ref = import_reference()
    if threads:
        torch.set_num_threads(threads)
    adversary = ref.AutoAttack(model, norm=torch_norm(norm), eps=eps, version=version,
                               seed=seed, device="cpu")
    logger = logging.getLogger("auto-attack")
    capture, level = _LogCapture(), logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    xt, yt = _nchw(x), _labels(y)
    try:
        start = time.perf_counter()
        out = adversary.run_standard_evaluation(xt, yt, batch_size=batch_size)
        seconds = time.perf_counter() - start
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
    x_adv = out[0] if isinstance(out, tuple) else out
    flags = _robust(model, x_adv, yt)
    result: Dict[str, Any] = {"robust_flags": flags, "log": capture.lines, "seconds": seconds}
    with torch.no_grad():
        result["clean"] = 100.0 * float((model(xt).argmax(1) == yt).float().mean())
    for line in capture.lines:
        match = _STAGE_LINE.search(line)
        if match:
            result[match.group(1).lower()] = float(match.group(2))
    result["robust"] = 100.0 * float(flags.mean())
    return result


# --------------------------------------------------------------------------
# The JAX side, with the same arguments.
# --------------------------------------------------------------------------


def jax_apgd_run(logits_fn_of: Callable, params, x: np.ndarray, y: np.ndarray, *,
                 eps: float, norm: str, loss: str, num_iters: int = 100,
                 x_init: Optional[np.ndarray] = None, target_rank: Optional[int] = None,
                 use_largereps: bool = False, noise: Optional[np.ndarray] = None,
                 compiler_options: Optional[dict] = None) -> Dict[str, np.ndarray]:
    """:func:`reference_apgd_run` in JAX (``advcore.attacks.apgd``'s single run
    or large-reps run). ``logits_fn_of(params)`` is the model; params and data
    are jit arguments so XLA does not constant-fold the network."""
    import jax
    import jax.numpy as jnp

    # The package exports a function named ``apgd``; import the module itself.
    apgd_lib = importlib.import_module("advcore.attacks.apgd")

    ours = {"ce": "ce", "dlr": "dlr", "dlr-targeted": "dlr_targeted"}[loss]

    def run(p, x, y, start):
        f = logits_fn_of(p)
        t = y
        if loss == "dlr-targeted":
            t = jnp.argsort(f(x), axis=-1)[:, -(target_rank or 2)]
        loss_grad = apgd_lib._make_loss_grad(f, ours, False, 1)
        if use_largereps:
            return apgd_lib._decreasing_eps_run(loss_grad, x, y, t, jax.random.key(0), eps=eps,
                                                num_iters=num_iters, unroll=1, noise=start)
        return apgd_lib._single_run(loss_grad, x, y, t, jax.random.key(0), eps=eps, norm=norm,
                                    num_iters=num_iters, rho=0.75, unroll=1, x_init=start)

    start = noise if use_largereps else x_init
    out = jax.jit(run, compiler_options=compiler_options)(
        params, jnp.asarray(x), jnp.asarray(y), jnp.asarray(start))
    x_best, acc, loss_best, x_best_adv = (np.asarray(a) for a in out)
    return {"acc": acc.astype(bool), "loss_best": loss_best, "x_best": x_best,
            "x_best_adv": x_best_adv}


def flag_agreement(ours: np.ndarray, reference: np.ndarray) -> Dict[str, Any]:
    """Agreement of two per-point "still robust" vectors."""
    ours, reference = np.asarray(ours, bool), np.asarray(reference, bool)
    return {"n": int(ours.size), "agree": int(np.sum(ours == reference)),
            "robust_ours": int(ours.sum()), "robust_reference": int(reference.sum()),
            "broken_only_by_ours": int(np.sum(~ours & reference)),
            "broken_only_by_reference": int(np.sum(ours & ~reference))}


@contextlib.contextmanager
def torch_threads(n: Optional[int]):
    """Temporarily sets torch's intra-op thread count (None: unchanged)."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
