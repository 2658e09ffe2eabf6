"""Reads ``torch.save`` files into numpy arrays without running pickled code.

A ``.pt``/``.pth`` file is a pickle, and unpickling calls whatever callables the
file names, so ``pickle.load`` (or an unrestricted ``torch.load``) on a
downloaded checkpoint is arbitrary code execution. This reader unpickles with
``_RestrictedUnpickler``, whose ``find_class`` resolves only the globals that a
saved ``state_dict`` (and the usual metadata beside it) needs, each to a
stand-in defined here; any other global (``os.system``, ``builtins.eval``, a
model class from ``torch.save(model)``) raises ``ForbiddenGlobalError`` naming
it, before anything is called. Torch is never imported.

Two on-disk formats:

* zip (``torch.save`` since PyTorch 1.6): ``<root>/data.pkl`` is the pickle;
  every tensor storage is the raw entry ``<root>/data/<key>``, in the byte
  order named by ``<root>/byteorder`` (little-endian when absent).
* legacy (PyTorch < 1.6, or ``_use_new_zipfile_serialization=False``): five
  pickles in a row (magic number, protocol version 1001, system info, the
  object, the list of storage keys), then for each key an int64 element count
  and the storage's little-endian bytes.

Tensors arrive as ``torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)`` (or ``_v3`` with an explicit dtype on an untyped storage); the
array is the strided view ``storage[offset + sum(i_k * stride_k)]``, bounds-
checked against the storage, and copied into a fresh C-contiguous array, so
views, slices and tensors sharing one storage all come out right.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import sys
import zipfile
from typing import Any, Callable, Mapping, Optional

import ml_dtypes
import numpy as np
from numpy._core import multiarray as _multiarray  # numpy >= 2

from advcore.external.errors import ExternalCheckpointError, ForbiddenGlobalError

# The int ``torch.save`` pickles first in a legacy file, and its protocol-2
# encoding (PROTO 2, LONG1 of 10 bytes), which identifies such files.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
LEGACY_HEADER = b"\x80\x02\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")
ZIP_HEADER = b"PK\x03\x04"

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}

# ``torch.<name>`` dtype objects, as ``_rebuild_tensor_v3`` receives them.
_TORCH_DTYPES: dict[str, np.dtype] = {
    **{name: np.dtype(np.float32) for name in ("float32", "float")},
    **{name: np.dtype(np.float64) for name in ("float64", "double")},
    **{name: np.dtype(np.float16) for name in ("float16", "half")},
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    **{name: np.dtype(np.int64) for name in ("int64", "long")},
    **{name: np.dtype(np.int32) for name in ("int32", "int")},
    **{name: np.dtype(np.int16) for name in ("int16", "short")},
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16),
    "uint32": np.dtype(np.uint32),
    "uint64": np.dtype(np.uint64),
    "bool": np.dtype(np.bool_),
}


class _Inert:
    """Base of the stand-ins: a pickle cannot BUILD (set state on) them.

    ``pickle``'s BUILD calls ``__setstate__`` when there is one, so this one
    refusing covers both dict and slot state.
    """

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise ExternalCheckpointError(
            f"the pickle tries to set state on {self!r}; a state_dict never does that"
        )


class _StorageType(_Inert):
    """Stand-in for ``torch.FloatStorage`` etc.; ``dtype`` None = untyped bytes."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: Optional[np.dtype]):
        self.name, self.dtype = name, dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _TorchDtype(_Inert):
    """Stand-in for a ``torch.<dtype>`` object."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _StorageRef(_Inert):
    """A storage named by the pickle's persistent id; its bytes are read later."""

    __slots__ = ("key", "storage_type", "numel")

    def __init__(self, key: str, storage_type: _StorageType, numel: int):
        self.key, self.storage_type, self.numel = key, storage_type, numel

    @property
    def nbytes(self) -> int:
        dtype = self.storage_type.dtype
        return self.numel * (1 if dtype is None else dtype.itemsize)

    def __repr__(self) -> str:
        return f"storage {self.key!r} ({self.storage_type!r}, {self.numel} elements)"


class _TensorRef(_Inert):
    """A tensor as ``_rebuild_tensor_v2/v3`` describes it; becomes an array in ``_resolve``."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype")

    def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple,
                 dtype: np.dtype):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"tensor of {self.storage!r}"


def _require_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise ExternalCheckpointError(f"tensor {what} must be a tuple of ints >= 0, got {value!r}")
    return tuple(value)


def _tensor_ref(storage: Any, offset: Any, size: Any, stride: Any,
                dtype: Optional[np.dtype]) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise ExternalCheckpointError(f"a tensor must be rebuilt from a storage, got {storage!r}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ExternalCheckpointError(f"tensor storage offset must be an int >= 0, got {offset!r}")
    size, stride = _require_int_tuple(size, "size"), _require_int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise ExternalCheckpointError(f"tensor size {size} and stride {stride} differ in length")
    dtype = storage.storage_type.dtype if dtype is None else dtype
    if dtype is None:
        raise ExternalCheckpointError(f"{storage!r} is untyped and the tensor names no dtype")
    return _TensorRef(storage, offset, size, stride, dtype)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata  # Autograd bookkeeping, not data.
    return _tensor_ref(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    del requires_grad, backward_hooks, metadata
    if not isinstance(dtype, _TorchDtype):
        raise ExternalCheckpointError(f"tensor dtype must be a torch dtype, got {dtype!r}")
    return _tensor_ref(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    # An nn.Parameter is its data tensor (state_dict(keep_vars=True) saves these).
    del requires_grad, backward_hooks, state
    if not isinstance(data, _TensorRef):
        raise ExternalCheckpointError(f"a Parameter must wrap a tensor, got {data!r}")
    return data


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles spell ``bytes`` objects as _codecs.encode(str, 'latin1');
    # other codecs are not needed and are refused.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ForbiddenGlobalError(
            f"refusing _codecs.encode({type(text).__name__}, {encoding!r}): only the latin1 "
            "encoding of protocol-2 bytes is allowed"
        )
    return text.encode("latin1")


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise ForbiddenGlobalError(f"refusing a numpy scalar of dtype {dtype!r}")
    return _multiarray.scalar(dtype, data)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch", "Size"): tuple,
        ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage", None),
        ("torch", "UntypedStorage"): _StorageType("UntypedStorage", None),
        # Numbers that training scripts store beside the weights (``best_acc``).
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for name, dtype in _STORAGE_DTYPES.items():
        allowed[("torch", name)] = _StorageType(name, dtype)
    for name, dtype in _TORCH_DTYPES.items():
        allowed[("torch", name)] = _TorchDtype(name, dtype)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "scalar")] = _numpy_scalar
    return allowed


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only ``_ALLOWED`` globals; storages go through ``load_storage``."""

    def __init__(self, file: Any, path: str,
                 load_storage: Optional[Callable[[tuple], _StorageRef]] = None):
        # latin1: Python-2 era checkpoints pickle str as bytes (harmless for py3 ones).
        super().__init__(file, encoding="latin1")
        self._path = path
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ForbiddenGlobalError(
                f"{self._path}: refusing to unpickle the global {module}.{name}: a "
                "state_dict only needs tensors, storages and OrderedDict. A file from "
                "torch.save(model) pickles the model class instead; re-save "
                "model.state_dict() (or export safetensors) where you trust the file"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._load_storage is None:
            raise ExternalCheckpointError(
                f"{self._path}: unexpected persistent id {pid!r} in a header pickle")
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            kind = pid[0] if isinstance(pid, tuple) and pid else pid
            raise ExternalCheckpointError(
                f"{self._path}: unsupported persistent id {kind!r}: only tensor storages are "
                "read (a 'module' id means torch.save(model); save model.state_dict())"
            )
        return self._load_storage(pid)


def _unpickle(data: Any, path: str, load_storage=None) -> Any:
    file = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        return _RestrictedUnpickler(file, path, load_storage).load()
    except ExternalCheckpointError:
        raise
    except Exception as err:  # EOFError, UnpicklingError, TypeError from a bad REDUCE...
        raise ExternalCheckpointError(
            f"{path}: cannot unpickle (truncated or corrupt file?): {type(err).__name__}: {err}"
        ) from err


def _storage_ref(pid: tuple, path: str, numel_index: int) -> _StorageRef:
    _, storage_type, key, _location, numel = pid[:numel_index + 1]
    if not isinstance(storage_type, _StorageType):
        raise ExternalCheckpointError(f"{path}: storage type must be a torch storage class, "
                                      f"got {storage_type!r}")
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise ExternalCheckpointError(f"{path}: malformed storage id {pid!r}")
    return _StorageRef(key, storage_type, numel)


# --------------------------------------------------------------------------
# From stand-ins to numpy arrays.


def _flat_storage(buf: bytes, dtype: np.dtype, big_endian: bool, what: str) -> np.ndarray:
    if len(buf) % dtype.itemsize:
        raise ExternalCheckpointError(
            f"{what}: {len(buf)} bytes is not a whole number of {dtype.name} elements")
    flat = np.frombuffer(buf, dtype=dtype)
    if dtype.itemsize > 1 and big_endian != (sys.byteorder == "big"):
        # Swap through an unsigned view: works for bfloat16, which has no '>' form.
        flat = flat.view(f"u{dtype.itemsize}").byteswap().view(dtype)
    return flat


def _strided_copy(flat: np.ndarray, ref: _TensorRef, what: str) -> np.ndarray:
    count = int(np.prod(ref.size, dtype=np.int64)) if ref.size else 1
    if count == 0:
        return np.zeros(ref.size, ref.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if last >= flat.size:
        raise ExternalCheckpointError(
            f"{what}: size {ref.size}, stride {ref.stride} and offset {ref.offset} reach "
            f"element {last}, beyond its storage of {flat.size} elements")
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset:], shape=ref.size,
        strides=tuple(s * flat.itemsize for s in ref.stride), writeable=False,
    )
    return np.array(view, order="C")


def _resolve(obj: Any, read: Callable[[_StorageRef, str], bytes], big_endian: bool,
             name: str) -> Any:
    """``obj`` with every ``_TensorRef`` replaced by its array (containers rebuilt)."""
    if isinstance(obj, _TensorRef):
        buf = read(obj.storage, name)
        if len(buf) != obj.storage.nbytes:
            raise ExternalCheckpointError(
                f"tensor {name!r}: {obj.storage!r} should hold {obj.storage.nbytes} bytes, "
                f"the file has {len(buf)}")
        flat = _flat_storage(buf, obj.dtype, big_endian, f"tensor {name!r}")
        return _strided_copy(flat, obj, f"tensor {name!r}")
    if isinstance(obj, _Inert):
        raise ExternalCheckpointError(f"{name!r}: a bare {obj!r} is not a tensor")
    join = (lambda k: f"{name}.{k}") if name else str
    if isinstance(obj, Mapping):
        items = [(k, _resolve(v, read, big_endian, join(k))) for k, v in obj.items()]
        return collections.OrderedDict(items) if isinstance(obj, collections.OrderedDict) \
            else dict(items)
    if isinstance(obj, (list, tuple)):
        out = [_resolve(v, read, big_endian, join(i)) for i, v in enumerate(obj)]
        return out if isinstance(obj, list) else tuple(out)
    return obj


# --------------------------------------------------------------------------
# The two file formats.


def load_torch_zip(path: str) -> Any:
    """Reads a zip-format ``torch.save`` file; tensors become numpy arrays."""
    try:
        with zipfile.ZipFile(path) as archive:
            return _load_zip_archive(archive, path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, struct.error) as err:
        raise ExternalCheckpointError(
            f"{path}: not a readable zip archive (truncated or corrupt?): {err}") from err


def _load_zip_archive(archive: zipfile.ZipFile, path: str) -> Any:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
    if len(pickles) != 1:
        raise ExternalCheckpointError(
            f"{path}: a torch.save zip has one <root>/data.pkl, found {pickles or 'none'}")
    root = pickles[0][: -len("data.pkl")]
    if root + "constants.pkl" in names or any(n.startswith(root + "code/") for n in names):
        raise ExternalCheckpointError(
            f"{path} is a TorchScript archive (torch.jit.save), not a torch.save state_dict")
    byteorder = "little"
    if root + "byteorder" in names:
        byteorder = archive.read(root + "byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise ExternalCheckpointError(
                f"{path}: byteorder must be 'little' or 'big', got {byteorder!r}")
    refs: dict[str, _StorageRef] = {}

    def load_storage(pid: tuple) -> _StorageRef:
        if len(pid) != 5:
            raise ExternalCheckpointError(f"{path}: malformed storage id {pid!r}")
        ref = _storage_ref(pid, path, 4)
        return refs.setdefault(ref.key, ref)

    obj = _unpickle(archive.read(pickles[0]), path, load_storage)
    cache: dict[str, bytes] = {}

    def read(ref: _StorageRef, name: str) -> bytes:
        if ref.key not in cache:
            entry = f"{root}data/{ref.key}"
            if entry not in names:
                raise ExternalCheckpointError(
                    f"tensor {name!r}: storage entry {entry!r} is missing from {path}")
            cache[ref.key] = archive.read(entry)
        return cache[ref.key]

    return _resolve(obj, read, byteorder == "big", "")


def load_torch_legacy(path: str) -> Any:
    """Reads a legacy (pre-zip) ``torch.save`` file; tensors become numpy arrays."""
    with open(path, "rb") as f:
        if _unpickle(f, path) != LEGACY_MAGIC:
            raise ExternalCheckpointError(f"{path}: not a legacy torch.save file (bad magic)")
        version = _unpickle(f, path)
        if version != LEGACY_PROTOCOL_VERSION:
            raise ExternalCheckpointError(
                f"{path}: legacy protocol version must be {LEGACY_PROTOCOL_VERSION}, "
                f"got {version!r}")
        sys_info = _unpickle(f, path)
        if not isinstance(sys_info, Mapping) or not sys_info.get("little_endian", False):
            # Never seen in practice; refusing beats guessing the byte order.
            raise ExternalCheckpointError(
                f"{path}: only files saved on little-endian machines are supported, system "
                f"info {sys_info!r}")
        refs: dict[str, _StorageRef] = {}

        def load_storage(pid: tuple) -> _StorageRef:
            if len(pid) != 6:
                raise ExternalCheckpointError(f"{path}: malformed storage id {pid!r}")
            if pid[5] is not None:
                raise ExternalCheckpointError(
                    f"{path}: storage views (PyTorch < 0.4 files) are not supported")
            ref = _storage_ref(pid, path, 4)
            return refs.setdefault(ref.key, ref)

        obj = _unpickle(f, path, load_storage)
        keys = _unpickle(f, path)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ExternalCheckpointError(f"{path}: malformed storage key list")
        data: dict[str, bytes] = {}
        for key in keys:
            if key not in refs:
                raise ExternalCheckpointError(f"{path}: storage {key!r} is never referenced")
            head = f.read(8)
            if len(head) != 8:
                raise ExternalCheckpointError(f"{path} is truncated: storage {key!r} is missing")
            (numel,) = struct.unpack("<q", head)
            if numel != refs[key].numel:
                raise ExternalCheckpointError(
                    f"{path}: storage {key!r} has {numel} elements on disk, "
                    f"{refs[key].numel} in its id")
            data[key] = f.read(refs[key].nbytes)
            if len(data[key]) != refs[key].nbytes:
                raise ExternalCheckpointError(
                    f"{path} is truncated: storage {key!r} has {len(data[key])} of "
                    f"{refs[key].nbytes} bytes")

    def read(ref: _StorageRef, name: str) -> bytes:
        if ref.key not in data:
            raise ExternalCheckpointError(
                f"tensor {name!r}: storage {ref.key!r} is not stored in {path}")
        return data[ref.key]

    return _resolve(obj, read, False, "")


def sniff_torch_format(header: bytes) -> Optional[str]:
    """'torch_zip', 'torch_legacy' or None from a file's first 16 bytes."""
    if header.startswith(ZIP_HEADER):
        return "torch_zip"
    if header.startswith(LEGACY_HEADER):
        return "torch_legacy"
    return None


def read_torch_file(path: str, file_format: Optional[str] = None) -> tuple[Any, str]:
    """Reads a ``torch.save`` file of either format: ``(object, format)``.

    The object is what ``torch.load`` would return, with tensors (and
    Parameters) as numpy arrays; ``format`` is 'torch_zip' or 'torch_legacy'.
    """
    if file_format is None:
        with open(path, "rb") as f:
            file_format = sniff_torch_format(f.read(16))
        if file_format is None:
            raise ExternalCheckpointError(
                f"{path} is neither a zip nor a legacy torch.save file")
    if file_format == "torch_zip":
        return load_torch_zip(path), file_format
    if file_format == "torch_legacy":
        return load_torch_legacy(path), file_format
    raise ValueError(f"file_format must be 'torch_zip' or 'torch_legacy', got {file_format!r}")


__all__ = ["LEGACY_HEADER", "ZIP_HEADER", "load_torch_legacy", "load_torch_zip",
           "read_torch_file", "sniff_torch_format"]
