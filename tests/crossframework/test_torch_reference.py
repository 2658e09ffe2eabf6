"""Checks of the PyTorch reference itself: its BatchNorm and its weight mapping."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import import_torch_reference

tr = import_torch_reference()  # skips this module when PyTorch is absent
import torch  # noqa: E402  (only after the skip)


def test_reference_batch_norm_is_pytorch_batch_norm():
    """Same outputs, input/affine gradients and running statistics as
    ``torch.nn.BatchNorm2d`` (float64, so only the semantics are compared)."""
    generator = torch.Generator().manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(4, 6, 5, 5, generator=generator, dtype=torch.float64)
    ours, theirs = tr.BatchNorm2d(6).double(), torch.nn.BatchNorm2d(6).double()
    with torch.no_grad():
        for bn in (ours, theirs):
            bn.weight.copy_(torch.linspace(0.5, 1.5, 6))
            bn.bias.copy_(torch.linspace(-1.0, 1.0, 6))
    outputs = []
    for bn in (ours, theirs):
        inputs = x.clone().requires_grad_(True)
        out = bn.train()(inputs)
        (out * torch.linspace(-2.0, 2.0, out.numel(), dtype=torch.float64)
         .reshape(out.shape)).sum().backward()
        outputs.append((out.detach(), inputs.grad, bn.weight.grad, bn.bias.grad,
                        bn.running_mean.clone(), bn.running_var.clone(),
                        bn.eval()(x).detach()))
    for a, b in zip(*outputs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-12)


def test_weight_mapping_round_trips(pair):
    model = pair.torch_robust()
    params, stats = tr.flax_tree(model, "params"), tr.flax_tree(model, "batch_stats")
    for kind, ours, theirs in (("params", params, pair.robust_vars["params"]),
                               ("batch_stats", stats, pair.robust_vars["batch_stats"])):
        flat_ours, flat_theirs = _flatten(ours), _flatten(theirs)
        assert sorted(flat_ours) == sorted(flat_theirs), kind
        for path, value in flat_theirs.items():
            np.testing.assert_array_equal(flat_ours[path], np.asarray(value, np.float64),
                                          err_msg=f"{kind}/{path}")
    # Conv kernels are HWIO in Flax and OIHW in torch.
    assert tuple(model.block2.layer_0.conv1.weight.shape) == (32, 16, 3, 3)


def test_weight_mapping_refuses_an_unmapped_leaf(pair):
    variables = {"params": {**pair.robust_vars["params"], "extra": {"kernel": np.zeros(3)}},
                 "batch_stats": pair.robust_vars["batch_stats"]}
    with pytest.raises(ValueError, match="unmapped Flax leaves.*extra"):
        tr.load_flax_variables(tr.WideResNet(10, 1, 10), variables)


def _flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        if hasattr(value, "items"):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
