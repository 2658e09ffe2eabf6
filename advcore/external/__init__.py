"""Evaluate models that were not trained here: PyTorch, safetensors and orbax checkpoints.

```python
from advcore.external import load_external_model

model = load_external_model("wrn", "model_cifar_wrn.pt", num_classes=10,
                            kwargs={"depth": 34, "widen_factor": 10})
logits = model.apply_fn(model.variables, images)   # NHWC float in [0, 1]
json.dump(model.spec, f)                           # arch, kwargs, normalisation, file sha256
```

* ``torch_pickle``: ``torch.save`` files (zip and legacy) read with a
  restricted unpickler; no pickled code runs and torch is not needed.
* ``safetensors``: the safetensors format parsed with numpy.
* ``layouts``: PyTorch ``state_dict`` names/shapes -> Flax variable trees, for
  the TRADES/LBGAT WideResNets, both ResNet18s, PreActResNet-18 and SmallCNN.
* ``loader``: ``load_external_model``, the one entry point.
"""

from advcore.external.errors import ExternalCheckpointError, ForbiddenGlobalError
from advcore.external.layouts import SUPPORTED_ARCHS
from advcore.external.loader import (
    FORMATS,
    ExternalModel,
    check_normalization,
    detect_format,
    load_external_model,
    parse_normalization,
)
from advcore.external.safetensors import read_safetensors
from advcore.external.torch_pickle import read_torch_file

__all__ = [
    "FORMATS",
    "SUPPORTED_ARCHS",
    "ExternalCheckpointError",
    "ExternalModel",
    "ForbiddenGlobalError",
    "check_normalization",
    "detect_format",
    "load_external_model",
    "parse_normalization",
    "read_safetensors",
    "read_torch_file",
]
