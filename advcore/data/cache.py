"""Cache directory, checksums and atomic .npz writes shared by the local sources."""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import tempfile
import zipfile
from typing import Mapping

import numpy as np

from advcore.data.info import DataIntegrityError
from advcore.files import sha256_file  # noqa: F401 (re-exported for the local sources)

log = logging.getLogger(__name__)

CACHE_ENV = "ADVCORE_CACHE_DIR"


def cache_dir() -> pathlib.Path:
    """`$ADVCORE_CACHE_DIR`, default `~/.cache/advcore` (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "advcore"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify_sha256(data: bytes, expected: str, what: str) -> None:
    """Raises `DataIntegrityError` unless sha256(data) == expected."""
    got = sha256_bytes(data)
    if got != expected:
        raise DataIntegrityError(
            f"{what} has sha256 {got}, expected the pinned {expected}; "
            f"refusing to use it (delete it and fetch it again)")


def save_npz_atomic(path: pathlib.Path, arrays: Mapping[str, np.ndarray]) -> bool:
    """Writes `arrays` to `path` atomically (tmp file + rename).

    Concurrent writers (parallel test runs, several processes of one job) each
    write their own temp file and the last rename wins, so readers never see a
    half-written file. Returns False (and logs) if the directory is not
    writable: a cache is an optimisation, never a reason to fail.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as e:
        log.warning("not caching %s: %s", path, e)
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            # Uncompressed: loads at disk speed, and uint8 images are small.
            np.savez(f, **arrays)
        os.replace(tmp, path)
        return True
    except OSError as e:
        log.warning("not caching %s: %s", path, e)
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def arrays_digest(arrays: Mapping[str, np.ndarray], keys: tuple[str, ...]) -> str:
    """SHA-256 over each array's name, dtype, shape and bytes, in ``keys`` order."""
    h = hashlib.sha256()
    for k in keys:
        v = np.ascontiguousarray(arrays[k])
        h.update(k.encode())
        h.update(str(v.dtype).encode())
        h.update(str(v.shape).encode())
        h.update(v.tobytes())
    return h.hexdigest()


def load_npz(path: pathlib.Path, keys: tuple[str, ...],
             expected_digest: str | None = None) -> dict[str, np.ndarray] | None:
    """Loads `keys` from a cache file, or None if missing, corrupt or (with
    ``expected_digest``) not the pinned content; the caller then rebuilds it."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in keys}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        log.warning("ignoring unreadable cache file %s: %s", path, e)
        return None
    if expected_digest is not None and arrays_digest(arrays, keys) != expected_digest:
        log.warning("ignoring cache file %s: its arrays do not match the pinned digest "
                    "(modified or from another version); rebuilding it", path)
        return None
    return arrays


def verify_arrays(arrays: Mapping[str, np.ndarray], keys: tuple[str, ...], expected: str,
                  what: str) -> None:
    """Raises `DataIntegrityError` unless the decoded arrays have the pinned digest."""
    got = arrays_digest(arrays, keys)
    if got != expected:
        raise DataIntegrityError(f"{what} decoded to arrays with digest {got}, expected the "
                                 f"pinned {expected}; refusing to use them")
