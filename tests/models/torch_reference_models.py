"""Small PyTorch reference modules with the released checkpoints' tensor names.

Written for the tests from the architectures' descriptions (TRADES/LBGAT
WideResNet with its unused ``sub_block1``, the kuangliu and LBGAT ResNet18s,
PreActResNet-18 in both RobustBench forms, TRADES' SmallCNN): the module and
parameter names are what the official ``state_dict`` files contain, the widths
are parameters so the tests stay small. Imports torch: use only after
``pytest.importorskip("torch")``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


def _conv(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)


class WRNBasicBlock(nn.Module):
    """Pre-activation block; the 1x1 shortcut (when widths differ) sees ReLU(BN1(x))."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv(cin, cout, 3, stride, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv(cout, cout, 3, 1, 1)
        self.convShortcut = _conv(cin, cout, 1, stride) if cin != cout else None

    def forward(self, x):
        a = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return out + (x if self.convShortcut is None else self.convShortcut(a))


class WRNGroup(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[
            WRNBasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
            for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    """TRADES/LBGAT WRN-depth-k: ``sub_block1`` is built (and saved) but never run."""

    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = _conv(3, widths[0], 3, 1, 1)
        self.block1 = WRNGroup(n, widths[0], widths[1], 1)
        self.sub_block1 = WRNGroup(n, widths[0], widths[1], 1)
        self.block2 = WRNGroup(n, widths[1], widths[2], 2)
        self.block3 = WRNGroup(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.avg_pool2d(F.relu(self.bn1(out)), 8)
        return self.fc(out.flatten(1))


class ResBasicBlock(nn.Module):
    """Post-activation block; projection shortcut = conv1x1 + BN."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv(cin, cout, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """kuangliu ResNet18 (strides 1,2,2,2, pool 4) or LBGAT's (strides 1,1,2,2, pool 8)."""

    def __init__(self, num_classes: int = 10, width: int = 64, strides=(1, 2, 2, 2),
                 pool: int = 4):
        super().__init__()
        self.pool = pool
        self.conv1 = _conv(3, width, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(width)
        cin = width
        for i, stride in enumerate(strides):
            cout = width * 2 ** i
            setattr(self, f"layer{i + 1}", nn.Sequential(
                ResBasicBlock(cin, cout, stride), ResBasicBlock(cout, cout, 1)))
            cin = cout
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.avg_pool2d(out, self.pool).flatten(1))


class PreActBlock(nn.Module):
    """Pre-activation block; the 1x1 shortcut reads ReLU(BN1(x)) or x."""

    def __init__(self, cin: int, cout: int, stride: int, preact_shortcut: bool):
        super().__init__()
        self.preact_shortcut = preact_shortcut
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv(cin, cout, 3, stride, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv(cout, cout, 3, 1, 1)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_conv(cin, cout, 1, stride))

    def forward(self, x):
        a = F.relu(self.bn1(x))
        if hasattr(self, "shortcut"):
            shortcut = self.shortcut(a if self.preact_shortcut else x)
        else:
            shortcut = x
        return self.conv2(F.relu(self.bn2(self.conv1(a)))) + shortcut


class PreActResNet18(nn.Module):
    """RobustBench PreActResNet([2,2,2,2]) with ``bn_before_fc`` = ``final_bn``."""

    def __init__(self, num_classes: int = 10, width: int = 64, final_bn: bool = True,
                 preact_shortcut: bool = True):
        super().__init__()
        self.conv1 = _conv(3, width, 3, 1, 1)
        cin = width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2 ** i
            setattr(self, f"layer{i + 1}", nn.Sequential(
                PreActBlock(cin, cout, stride, preact_shortcut),
                PreActBlock(cout, cout, 1, preact_shortcut)))
            cin = cout
        self.final_bn = final_bn
        if final_bn:
            self.bn = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        if self.final_bn:
            out = F.relu(self.bn(out))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


class SmallCNN(nn.Module):
    """TRADES MNIST SmallCNN: ``feature_extractor`` / ``classifier`` Sequentials."""

    def __init__(self, num_classes: int = 10, channels=(32, 32, 64, 64), hidden: int = 200):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.flat = c4 * 4 * 4
        self.feature_extractor = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(1, c1, 3)), ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(c1, c2, 3)), ("relu2", nn.ReLU()),
            ("maxpool1", nn.MaxPool2d(2, 2)),
            ("conv3", nn.Conv2d(c2, c3, 3)), ("relu3", nn.ReLU()),
            ("conv4", nn.Conv2d(c3, c4, 3)), ("relu4", nn.ReLU()),
            ("maxpool2", nn.MaxPool2d(2, 2)),
        ]))
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(self.flat, hidden)), ("relu1", nn.ReLU()),
            ("drop", nn.Dropout(0.5)),
            ("fc2", nn.Linear(hidden, hidden)), ("relu2", nn.ReLU()),
            ("fc3", nn.Linear(hidden, num_classes)),
        ]))

    def forward(self, x):
        return self.classifier(self.feature_extractor(x).reshape(-1, self.flat))


def with_normalization(cls: type, mean, std, **kwargs) -> nn.Module:
    """``cls(**kwargs)`` normalising its input with ``mu``/``sigma`` buffers.

    A subclass, as RobustBench's wrappers (``Wong2020FastNet`` etc.) are, so
    the buffers sit beside the model's own tensors in its state_dict.
    """

    class Normalized(cls):
        def __init__(self):
            super().__init__(**kwargs)
            self.register_buffer("mu", torch.tensor(mean).view(1, -1, 1, 1))
            self.register_buffer("sigma", torch.tensor(std).view(1, -1, 1, 1))

        def forward(self, x):
            return super().forward((x - self.mu) / self.sigma)

    return Normalized()


@torch.no_grad()
def randomize(model: nn.Module, calibration: torch.Tensor, seed: int) -> nn.Module:
    """Random weights and BatchNorm statistics that keep activations of order 1.

    The running statistics are first set to those of a calibration batch (so
    eval-mode activations neither vanish nor explode through the depth), then
    perturbed per channel, together with random BN affine parameters.
    """
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.copy_(torch.empty_like(p).uniform_(-1, 1, generator=gen) * p.abs().max().clamp(min=0.1))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = None  # cumulative average: one batch sets the statistics
        bn.reset_running_stats()
        bn.weight.uniform_(0.5, 1.5, generator=gen)
        bn.bias.normal_(0, 0.2, generator=gen)
    model.train()
    model(calibration)
    for bn in bns:
        bn.running_mean.add_(torch.randn(bn.running_mean.shape, generator=gen) * 0.1)
        bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.7, 1.3, generator=gen))
        bn.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (), generator=gen)))
    return model.eval()
