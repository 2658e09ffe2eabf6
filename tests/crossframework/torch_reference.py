"""A PyTorch oracle of the official LBGAT / TRADES training step and of TRADES' PGD-20.

This module is test-only (it imports ``torch``). It restates, in PyTorch and
independently of the JAX library, what the authors' PyTorch code computes:

* ``WideResNet`` (pre-activation, TRADES/LBGAT ``wideresnet.py``) and
  ``ResNetCifar`` (LBGAT's ``ResNet18_cifar`` with strides 1, 1, 2, 2 and
  average pooling 8, at a configurable width). Their module names are the
  Flax module names of ``advcore.models``, so one generic rule maps every
  parameter and BatchNorm statistic between the two frameworks
  (``load_flax_variables`` / ``flax_tree``).
* ``train_attack``: the inner maximisation of the training step: the robust
  model in eval mode, an unclipped start ``x + 0.001·N(0, I)`` (supplied by the
  caller so that both frameworks start from the same point), sign steps on the
  gradient of the batch-summed TRADES KL (``loss='kl'``) or of the batch-mean
  cross-entropy (``loss='ce'``, the "noisy BIM" of the CE methods), then
  ``min(max(x', x - eps), x + eps)`` and a clip to [0, 1], and one more clip
  at the end.
* ``outer_loss`` / ``sgd_step``: the outer objective of each method with the
  forward passes in the order the official code runs them (the order sets the
  BatchNorm running statistics), and one ``torch.optim.SGD`` step over both
  networks (momentum, coupled weight decay).
* ``pgd_whitebox``: TRADES' ``pgd_attack_cifar10.py`` white-box PGD: eval mode,
  uniform start not clipped before the first gradient, mean cross-entropy,
  ``x + clamp(x' - x, -eps, eps)`` then a clip to [0, 1], last iterate scored.

Every ReLU of the two models goes through ``relu``, which can record how close
its inputs come to 0 (``track_relu_margin``): a ReLU input within rounding of
0 can be gated differently by two fp32 implementations, which changes one
gradient term by O(1); the cross-framework tests check that no such input
occurs in the passes they compare.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------
# ReLU inputs near 0.
# --------------------------------------------------------------------------

_relu_margins: Optional[list] = None


def relu(x: torch.Tensor) -> torch.Tensor:
    if _relu_margins is not None:
        _relu_margins.append(float(x.detach().abs().min()))
    return F.relu(x)


@contextlib.contextmanager
def track_relu_margin() -> Iterator[list]:
    """Collects ``min |ReLU input|`` of every ReLU call inside the block."""
    global _relu_margins
    previous, _relu_margins = _relu_margins, []
    try:
        yield _relu_margins
    finally:
        _relu_margins = previous


@contextlib.contextmanager
def reference_settings() -> Iterator[None]:
    """float32 defaults, deterministic kernels and one thread inside the block
    (the previous settings are restored afterwards)."""
    saved = (torch.get_default_dtype(), torch.are_deterministic_algorithms_enabled(),
             torch.get_num_threads())
    torch.set_default_dtype(torch.float32)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_default_dtype(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        torch.set_num_threads(saved[2])


# --------------------------------------------------------------------------
# Models (NCHW inside; every entry point takes NHWC like the JAX models).
# --------------------------------------------------------------------------


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with the same semantics, computed with a two-pass variance.

    Semantics (unchanged): train mode normalises with the batch mean and the
    biased batch variance and moves the running statistics by momentum 0.1
    towards the batch mean and the *unbiased* variance; eval mode uses the
    running statistics. Only the arithmetic differs: PyTorch's CPU kernel
    loses about 10x more precision than ``E[(x - mean)^2]`` in float32
    (max error against float64 5.8e-6 vs 4.5e-7 on a unit-scale batch), and
    that error, amplified through a ResNet, gates ReLU inputs of order 1e-4
    differently from any other fp32 implementation.
    ``test_reference_batch_norm_is_pytorch_batch_norm`` checks the equivalence.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            mean, var = self.running_mean, self.running_var
        else:
            mean = x.mean(dim=(0, 2, 3))
            var = (x - mean[None, :, None, None]).square().mean(dim=(0, 2, 3))
            n = x.numel() // x.shape[1]
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(
                    self.momentum * var * (n / (n - 1)))
                self.num_batches_tracked.add_(1)
        scale = torch.rsqrt(var + self.eps) * self.weight
        return (x - mean[None, :, None, None]) * scale[None, :, None, None] \
            + self.bias[None, :, None, None]


def _conv(cin: int, cout: int, kernel: int, stride: int, padding: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)


class _NHWCInput(nn.Module):
    """Accepts NHWC images in [0, 1], as the JAX models do, and runs NCHW."""

    def forward(self, x_nhwc: torch.Tensor) -> torch.Tensor:
        return self.forward_nchw(x_nhwc.permute(0, 3, 1, 2))


class _WRNBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.equal_in_out = cin == cout
        self.bn1 = BatchNorm2d(cin)
        self.conv1 = _conv(cin, cout, 3, stride, 1)
        self.bn2 = BatchNorm2d(cout)
        self.conv2 = _conv(cout, cout, 3, 1, 1)
        if not self.equal_in_out:
            self.convShortcut = _conv(cin, cout, 1, stride, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = relu(self.bn1(x))
        out = self.conv2(relu(self.bn2(self.conv1(pre))))
        # With a width change the projection sees the pre-activated input.
        shortcut = x if self.equal_in_out else self.convShortcut(pre)
        return shortcut + out


class _WRNGroup(nn.Module):
    def __init__(self, num_layers: int, cin: int, cout: int, stride: int):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"layer_{i}", _WRNBlock(cin if i == 0 else cout, cout,
                                                    stride if i == 0 else 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.children():
            x = block(x)
        return x


class WideResNet(_NHWCInput):
    """Pre-activation WRN-depth-k for 32x32 inputs (no dropout, no unused sub-block)."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int):
        super().__init__()
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = _conv(3, widths[0], 3, 1, 1)
        self.block1 = _WRNGroup(n, widths[0], widths[1], 1)
        self.block2 = _WRNGroup(n, widths[1], widths[2], 2)
        self.block3 = _WRNGroup(n, widths[2], widths[3], 2)
        self.bn1 = BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def forward_nchw(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.avg_pool2d(relu(self.bn1(out)), 8)
        return self.fc(out.flatten(1))


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv(cin, cout, 3, stride, 1)
        self.bn1 = BatchNorm2d(cout)
        self.conv2 = _conv(cout, cout, 3, 1, 1)
        self.bn2 = BatchNorm2d(cout)
        self.projected = stride != 1 or cin != cout
        if self.projected:
            self.shortcut_conv = _conv(cin, cout, 1, stride, 0)
            self.shortcut_bn = BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(relu(self.bn1(self.conv1(x)))))
        shortcut = self.shortcut_bn(self.shortcut_conv(x)) if self.projected else x
        return relu(out + shortcut)


class _ResLayer(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, num_blocks: int = 2):
        super().__init__()
        for i in range(num_blocks):
            self.add_module(f"block_{i}", _ResBlock(cin if i == 0 else cout, cout,
                                                    stride if i == 0 else 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.children():
            x = block(x)
        return x


class ResNetCifar(_NHWCInput):
    """Post-activation ResNet18 (LBGAT's teacher layout by default) at width ``base_width``."""

    def __init__(self, num_classes: int, base_width: int = 64,
                 strides: tuple[int, ...] = (1, 1, 2, 2), pool_size: int = 8):
        super().__init__()
        w = base_width
        self.pool_size = pool_size
        self.conv1 = _conv(3, w, 3, 1, 1)
        self.bn1 = BatchNorm2d(w)
        widths = (w, 2 * w, 4 * w, 8 * w)
        cin = w
        for i, (cout, stride) in enumerate(zip(widths, strides)):
            self.add_module(f"layer{i + 1}", _ResLayer(cin, cout, stride))
            cin = cout
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward_nchw(self, x: torch.Tensor) -> torch.Tensor:
        out = relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, self.pool_size)
        return self.linear(out.flatten(1))


# --------------------------------------------------------------------------
# Weights: Flax trees <-> torch modules.
# --------------------------------------------------------------------------

# (torch attribute, Flax collection, Flax leaf name) per module type. Conv
# kernels are HWIO in Flax and OIHW in torch; Linear kernels (in, out) vs (out, in).
_LEAVES = {
    nn.Conv2d: (("weight", "params", "kernel"),),
    nn.Linear: (("weight", "params", "kernel"), ("bias", "params", "bias")),
    nn.BatchNorm2d: (("weight", "params", "scale"), ("bias", "params", "bias"),
                     ("running_mean", "batch_stats", "mean"),
                     ("running_var", "batch_stats", "var")),
}


def _to_torch_layout(module: nn.Module, attr: str, value: np.ndarray) -> np.ndarray:
    if attr == "weight" and isinstance(module, nn.Conv2d):
        return value.transpose(3, 2, 0, 1)
    if attr == "weight" and isinstance(module, nn.Linear):
        return value.T
    return value


def _to_flax_layout(module: nn.Module, attr: str, value: np.ndarray) -> np.ndarray:
    if attr == "weight" and isinstance(module, nn.Conv2d):
        return value.transpose(2, 3, 1, 0)
    if attr == "weight" and isinstance(module, nn.Linear):
        return value.T
    return value


def _leaf_sites(model: nn.Module):
    """``(module, torch attr, collection, flax path)`` for every mapped tensor."""
    for name, module in model.named_modules():
        kinds = [leaves for cls, leaves in _LEAVES.items() if isinstance(module, cls)]
        for attr, collection, leaf in (kinds[0] if kinds else ()):
            if getattr(module, attr, None) is None:
                continue
            yield module, attr, collection, tuple(name.split(".")) + (leaf,)


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _flax_leaf_paths(tree: dict, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths = set()
    for key, value in tree.items():
        if isinstance(value, dict) or hasattr(value, "items"):
            paths |= _flax_leaf_paths(dict(value), prefix + (key,))
        else:
            paths.add(prefix + (key,))
    return paths


def load_flax_variables(model: nn.Module, variables: dict) -> None:
    """Copies Flax ``{'params', 'batch_stats'}`` into ``model`` (in place).

    Raises ``ValueError`` when a Flax leaf has no torch counterpart or the
    reverse, so a renamed layer cannot silently keep its torch init.
    """
    used = set()
    with torch.no_grad():
        for module, attr, collection, path in _leaf_sites(model):
            value = np.asarray(_get(variables[collection], path), np.float32)
            target = getattr(module, attr)
            value = _to_torch_layout(module, attr, value)
            if tuple(target.shape) != value.shape:
                raise ValueError(f"{'/'.join(path)}: torch shape {tuple(target.shape)}, "
                                 f"Flax shape (torch layout) {value.shape}")
            target.copy_(torch.from_numpy(np.array(value, np.float32)))
            used.add((collection,) + path)
    expected = {(c,) + p for c in variables for p in _flax_leaf_paths(dict(variables[c]))}
    if used != expected:
        raise ValueError(f"unmapped Flax leaves {sorted(expected - used)}, "
                         f"torch-only leaves {sorted(used - expected)}")


def flax_tree(model: nn.Module, what: str) -> dict:
    """The model's ``params``, ``grads`` (of the params) or ``batch_stats`` as a
    Flax-layout tree of float64 NumPy arrays."""
    if what not in ("params", "grads", "batch_stats"):
        raise ValueError(f"what must be 'params', 'grads' or 'batch_stats', got {what!r}")
    collection = "batch_stats" if what == "batch_stats" else "params"
    tree: dict = {}
    for module, attr, coll, path in _leaf_sites(model):
        if coll != collection:
            continue
        tensor = getattr(module, attr)
        if what == "grads":
            tensor = tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)
        value = tensor.detach().cpu().numpy().astype(np.float64)
        _set(tree, path, _to_flax_layout(module, attr, value))
    return tree


# --------------------------------------------------------------------------
# Losses with the official reductions.
# --------------------------------------------------------------------------


def batch_kl(adv_logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """``KLDivLoss(sum)(log_softmax(adv), softmax(reference)) / B``."""
    total = F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(reference_logits, dim=1),
                     reduction="sum")
    return total / adv_logits.shape[0]


# --------------------------------------------------------------------------
# Inner maximisation (training) and PGD evaluation.
# --------------------------------------------------------------------------


def _input_grad(model: nn.Module, x_adv: torch.Tensor, loss_of_logits) -> torch.Tensor:
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_of_logits(model(x_adv))
    return torch.autograd.grad(loss, [x_adv])[0]


def _in_precision(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    return model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)


def train_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor, *,
                 loss: str, eps: float, step_size: float, num_steps: int,
                 grad_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The training step's inner maximisation (LBGAT ``lbgat_loss`` / TRADES ``trades_loss``).

    ``start`` is ``x + 0.001·N(0, I)`` (not clipped). ``grad_dtype=float64``
    computes only the gradient (the model and loss) in float64 while the
    iterate and its update stay float32: the difference from a float32 run
    is then exactly the sign flips of near-zero gradient components.
    """
    if loss not in ("kl", "ce"):
        raise ValueError(f"loss must be 'kl' or 'ce', got {loss!r}")
    was_training = model.training
    model.eval()
    net = _in_precision(model, grad_dtype)
    x_hi = x.to(grad_dtype)
    with torch.no_grad():
        clean_probs = F.softmax(net(x_hi), dim=1)

    def objective(logits):
        if loss == "kl":
            return F.kl_div(F.log_softmax(logits, dim=1), clean_probs, reduction="sum")
        return F.cross_entropy(logits, y)

    x_adv = start.clone()
    for _ in range(num_steps):
        grad = _input_grad(net, x_adv.to(grad_dtype), objective)
        x_adv = x_adv.detach() + step_size * torch.sign(grad).to(torch.float32)
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train(was_training)
    return torch.clamp(x_adv, 0.0, 1.0).detach()


def pgd_whitebox(model: nn.Module, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor, *,
                 eps: float = 0.031, step_size: float = 0.003, num_steps: int = 20,
                 grad_dtype: torch.dtype = torch.float32,
                 projection: str = "delta") -> tuple[torch.Tensor, torch.Tensor]:
    """TRADES' white-box PGD evaluation; returns ``(x_pgd, still_correct)``.

    ``start`` is ``x + U(-eps, eps)`` (not clipped). ``grad_dtype`` as in
    ``train_attack``. ``projection``: ``"delta"`` is TRADES' evaluation,
    ``x + clamp(x' - x, -eps, eps)``; ``"minmax"`` is the training attack's
    ``min(max(x', x - eps), x + eps)``, equal in exact arithmetic but rounded
    differently (for diagnosing one-ulp differences).
    """
    if projection not in ("delta", "minmax"):
        raise ValueError(f"projection must be 'delta' or 'minmax', got {projection!r}")
    model.eval()
    net = _in_precision(model, grad_dtype)
    x_pgd = start.clone()
    for _ in range(num_steps):
        grad = _input_grad(net, x_pgd.to(grad_dtype), lambda z: F.cross_entropy(z, y))
        x_pgd = x_pgd.detach() + step_size * torch.sign(grad).to(torch.float32)
        if projection == "delta":
            x_pgd = x + torch.clamp(x_pgd - x, -eps, eps)
        else:
            x_pgd = torch.min(torch.max(x_pgd, x - eps), x + eps)
        x_pgd = torch.clamp(x_pgd, 0.0, 1.0)
    with torch.no_grad():
        correct = model(x_pgd).argmax(dim=1) == y
    return x_pgd.detach(), correct


# --------------------------------------------------------------------------
# The outer step.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OfficialMethod:
    """How the official code (or, where there is none, the plain reading) trains.

    Attributes:
      attack_loss: ``'kl'`` (TRADES' label-free KL) or ``'ce'`` (noisy BIM).
      teacher: ``'none'``, ``'learnable'`` (trained jointly, train mode) or
        ``'frozen'`` (eval mode, no gradient).
      clean_student_pass: runs M_r(x) in train mode after M_r(x') even when
        no loss term reads it (LBGAT's ``lbgat_loss`` always does).
      trades_order: TRADES' own order M_r(x), M_r(x'), M_r(x).
      regulariser: ``'none'``, ``'trades_kl'`` (α·KL(M_r(x) ‖ M_r(x'))) or
        ``'alp'`` (α·MSE(M_r(x'), M_r(x))).
      robust_ce: ``'none'``, ``'adv'`` or ``'clean'``: CE of M_r on x' or x.
    """

    attack_loss: str
    teacher: str = "none"
    clean_student_pass: bool = False
    trades_order: bool = False
    regulariser: str = "none"
    robust_ce: str = "none"


OFFICIAL_METHODS = {
    # TRADES' trades_loss: CE(M(x)) + α·KL(M(x) ‖ M(x')), passes x, x', x.
    "trades": OfficialMethod("kl", trades_order=True, regulariser="trades_kl",
                             robust_ce="clean"),
    # LBGAT's lbgat_loss: passes x' (M_r), x (M_r), x (M_n), all train mode.
    "lbgat_trades": OfficialMethod("kl", teacher="learnable", clean_student_pass=True,
                                   regulariser="trades_kl"),
    # Eq. 3 with the CE attack; the loss is lbgat_loss's, so its passes too.
    "lbgat": OfficialMethod("ce", teacher="learnable", clean_student_pass=True),
    "lbgat_alp": OfficialMethod("ce", teacher="learnable", clean_student_pass=True,
                                regulariser="alp"),
    # No official code for these: only the passes their losses read.
    "vanilla_at": OfficialMethod("ce", robust_ce="adv"),
    "alp": OfficialMethod("ce", regulariser="alp", robust_ce="adv"),
    "bgat": OfficialMethod("ce", teacher="frozen"),
}


def outer_loss(method: OfficialMethod, robust: nn.Module, natural: Optional[nn.Module],
               x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, *,
               alpha: float, beta: float = 1.0) -> tuple[torch.Tensor, dict, dict]:
    """``(total, parts, logits)`` with the forward passes in the official order.

    ``parts`` uses the names ``boundary_mse``, ``natural_ce``, ``trades_kl``,
    ``alp_mse``, ``robust_ce_adv``, ``robust_ce_clean`` (weights included);
    ``logits`` has ``adv``, ``clean`` (None if not run) and ``natural``.
    """
    robust.train()
    clean = None
    if method.trades_order:
        clean = robust(x)
        adv = robust(x_adv)
        kl_target = robust(x)  # TRADES' third pass: same values, one more BN update
    else:
        adv = robust(x_adv)
        if method.clean_student_pass or method.regulariser != "none" \
                or method.robust_ce == "clean":
            clean = robust(x)
        kl_target = clean

    teacher_logits = None
    if method.teacher == "learnable":
        natural.train()
        teacher_logits = natural(x)
    elif method.teacher == "frozen":
        natural.eval()
        with torch.no_grad():
            teacher_logits = natural(x)

    parts = {}
    if method.teacher != "none":
        parts["boundary_mse"] = F.mse_loss(adv, teacher_logits)
    if method.teacher == "learnable":
        parts["natural_ce"] = beta * F.cross_entropy(teacher_logits, y)
    if method.regulariser == "trades_kl":
        parts["trades_kl"] = alpha * batch_kl(adv, kl_target)
    elif method.regulariser == "alp":
        parts["alp_mse"] = alpha * F.mse_loss(adv, clean)
    if method.robust_ce == "adv":
        parts["robust_ce_adv"] = F.cross_entropy(adv, y)
    elif method.robust_ce == "clean":
        parts["robust_ce_clean"] = F.cross_entropy(clean, y)
    total = sum(parts.values())
    return total, parts, {"adv": adv, "clean": clean, "natural": teacher_logits}


def sgd_step(method: OfficialMethod, robust: nn.Module, natural: Optional[nn.Module],
             x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, *, alpha: float,
             lr: float, momentum: float = 0.9, weight_decay: float = 2e-4,
             beta: float = 1.0) -> dict:
    """One official outer step on a given x' (the models are updated in place).

    One ``torch.optim.SGD`` holds both networks (two parameter groups, as in
    ``train_lbgat_cifar100.py``). Returns the loss, its parts, the logits and
    both models' gradients (Flax layout) taken before the update.
    """
    groups = [{"params": list(robust.parameters())}]
    if method.teacher == "learnable":
        groups.append({"params": list(natural.parameters())})
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    optimizer.zero_grad()
    total, parts, logits = outer_loss(method, robust, natural, x, x_adv, y, alpha=alpha,
                                      beta=beta)
    total.backward()
    grads = {"robust": flax_tree(robust, "grads")}
    if method.teacher == "learnable":
        grads["natural"] = flax_tree(natural, "grads")
    optimizer.step()
    momentum = {"robust": _momentum_tree(optimizer, robust)}
    if method.teacher == "learnable":
        momentum["natural"] = _momentum_tree(optimizer, natural)
    detach = lambda t: None if t is None else t.detach().numpy().astype(np.float64)  # noqa: E731
    return {
        "total": float(total.detach()),
        "parts": {k: float(v.detach()) for k, v in parts.items()},
        "logits": {k: detach(v) for k, v in logits.items()},
        "grads": grads,
        "momentum": momentum,
    }


def _momentum_tree(optimizer: torch.optim.SGD, model: nn.Module) -> dict:
    """SGD's momentum buffers of ``model``'s parameters, Flax layout."""
    tree: dict = {}
    for module, attr, collection, path in _leaf_sites(model):
        if collection == "params":
            buffer = optimizer.state[getattr(module, attr)]["momentum_buffer"]
            value = buffer.detach().numpy().astype(np.float64)
            _set(tree, path, _to_flax_layout(module, attr, value))
    return tree
