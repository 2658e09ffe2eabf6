"""Reads ``.safetensors`` files with numpy alone (no ``safetensors`` package).

The format holds no code: an 8-byte little-endian unsigned header length N,
N bytes of JSON mapping each tensor name to ``{"dtype", "shape",
"data_offsets": [begin, end]}`` (plus an optional ``"__metadata__"`` dict of
strings), then the byte buffer, in which each tensor is a C-contiguous
little-endian block at ``[begin, end)``.

Every field is validated before a byte of tensor data is read: known dtype,
shape of ints >= 0, ``end - begin == prod(shape) * itemsize``, and the blocks
tiling the buffer exactly (no overlap, no hole, nothing past its end), which is
what the reference implementation requires too. A truncated file therefore
fails with a message naming the first tensor that does not fit.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from typing import Any

import ml_dtypes
import numpy as np

from advcore.external.errors import ExternalCheckpointError

# Far above any real header (names + shapes), far below a memory problem.
MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}


def sniff_safetensors(header: bytes) -> bool:
    """Whether a file's first 9+ bytes look like safetensors (length, then '{')."""
    return len(header) >= 9 and header[8:9] == b"{"


def _entry(path: str, name: str, info: Any, buffer_len: int) -> tuple[np.dtype, tuple, int, int]:
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise ExternalCheckpointError(
            f"{where}: header entry must have exactly dtype, shape, data_offsets, got {info!r}")
    if info["dtype"] not in DTYPES:
        raise ExternalCheckpointError(
            f"{where}: dtype must be one of {sorted(DTYPES)}, got {info['dtype']!r}")
    dtype = DTYPES[info["dtype"]]
    shape, offsets = info["shape"], info["data_offsets"]
    is_count = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # noqa: E731
    if not isinstance(shape, list) or not all(is_count(d) for d in shape):
        raise ExternalCheckpointError(f"{where}: shape must be a list of ints >= 0, got {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(is_count(o) for o in offsets) or offsets[0] > offsets[1]):
        raise ExternalCheckpointError(
            f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
    begin, end = offsets
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if end - begin != nbytes:
        raise ExternalCheckpointError(
            f"{where}: shape {tuple(shape)} of {info['dtype']} needs {nbytes} bytes, "
            f"data_offsets span {end - begin}")
    if end > buffer_len:
        raise ExternalCheckpointError(
            f"{where}: data ends at byte {end} of a {buffer_len}-byte buffer (truncated file?)")
    return dtype, tuple(shape), begin, end


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reads every tensor of ``path``: ``({name: array}, metadata)``.

    Arrays are native-byte-order copies (writable, independent of the file).

    Raises:
      ExternalCheckpointError: malformed header, bad offsets or sizes, truncated file.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ExternalCheckpointError(f"{path}: {size} bytes is too short for safetensors")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise ExternalCheckpointError(
                f"{path}: header length {header_len} does not fit the {size}-byte file "
                f"(limit {MAX_HEADER_BYTES}; truncated or not safetensors?)")
        try:
            header = json.loads(f.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ExternalCheckpointError(f"{path}: header is not UTF-8 JSON: {err}") from err
        if not isinstance(header, dict):
            raise ExternalCheckpointError(f"{path}: header must be a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise ExternalCheckpointError(f"{path}: __metadata__ must map strings to strings")
        buffer_start = 8 + header_len
        buffer_len = size - buffer_start
        entries = {name: _entry(path, name, info, buffer_len) for name, info in header.items()}
        cursor = 0
        for name, (_, _, begin, end) in sorted(entries.items(), key=lambda e: e[1][2:]):
            if begin != cursor:
                problem = "overlaps the previous tensor" if begin < cursor else "leaves a hole"
                raise ExternalCheckpointError(
                    f"{path}: tensor {name!r} starts at byte {begin}, which {problem} "
                    f"(expected {cursor})")
            cursor = end
        if cursor != buffer_len:
            raise ExternalCheckpointError(
                f"{path}: tensors cover {cursor} bytes of a {buffer_len}-byte buffer")
        tensors = {}
        for name, (dtype, shape, begin, end) in entries.items():
            f.seek(buffer_start + begin)
            flat = np.frombuffer(f.read(end - begin), dtype=dtype)
            if sys.byteorder == "big" and dtype.itemsize > 1:
                # The file is little-endian; a uint view swaps bfloat16 and fp8 too.
                flat = flat.view(f"u{dtype.itemsize}").byteswap().view(dtype)
            tensors[name] = np.array(flat.reshape(shape), dtype=dtype)
    return tensors, metadata


__all__ = ["DTYPES", "MAX_HEADER_BYTES", "read_safetensors", "sniff_safetensors"]
