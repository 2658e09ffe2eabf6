"""Atomic, verified checkpoints on top of orbax's ``CheckpointManager``.

Each checkpoint step holds three items:

* ``state``: the train state as a pure nested dict of arrays (orbax
  ``StandardSave``). Pure dicts keep checkpoints independent of class names.
* ``config``: the run's config as JSON.
* ``meta``: JSON with the step, the architecture signature (every leaf's path,
  shape and dtype), the fingerprint of the config fields that define the run,
  the data iterator's position, the run spec (``advcore.run_spec``: how to
  rebuild and evaluate the models) and a SHA-256 digest.

The digest covers **everything**: the state's bytes, the config and the rest
of the metadata. A checkpoint whose arrays, config, iterator position or run
spec changed after saving fails verification as a whole. A second digest
(``header_digest``) covers the config and metadata alone, so that damage
there is recognised as damage (not as "another architecture") before any
array is read.

Orbax writes each step into a temporary directory and renames it when the
write is complete, so a crash mid-save never leaves a half-written step that
looks finished. On restore the signature and the config fingerprint are
compared before any array is read, and the digest after.

``restore_latest`` (training) sets a checkpoint that fails verification aside
(moved, never deleted, to ``<directory>.corrupt/``) with a one-line warning
and continues from the newest intact one, so re-running the same command
recovers by itself. ``load_raw_state`` (evaluation) refuses a damaged newest
checkpoint with one line naming what failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any, Iterable, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

log = logging.getLogger("advcore")


class CheckpointMismatchError(RuntimeError):
    """The checkpoint belongs to another architecture or config."""


class CheckpointCorruptError(RuntimeError):
    """The checkpoint's files cannot be read or their content changed."""


def _leaf_paths(tree: Any) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in flat]


def tree_signature(tree: Any) -> list[list[str]]:
    """``[[path, shape, dtype], ...]`` for every leaf of ``tree``."""
    return [
        [path, str(tuple(np.shape(leaf))), str(np.asarray(leaf).dtype)
         if not hasattr(leaf, "dtype") else str(leaf.dtype)]
        for path, leaf in _leaf_paths(tree)
    ]


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def content_digest(state: Any, config: Any, meta: Mapping[str, Any]) -> str:
    """SHA-256 over the state's leaf paths and bytes, the config and the metadata.

    ``meta``'s own ``digest`` entry is left out. Arrays are fetched to the host
    (``process_allgather`` is not needed: checkpointed states are replicated).
    """
    h = hashlib.sha256()
    for path, leaf in _leaf_paths(state):
        h.update(path.encode())
        arr = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        h.update(str(arr.dtype).encode())
        h.update(arr.tobytes())
    h.update(header_digest(config, meta).encode())
    return h.hexdigest()


def header_digest(config: Any, meta: Mapping[str, Any]) -> str:
    """SHA-256 of the config and the metadata (its digests left out)."""
    h = hashlib.sha256(b"config\0" + _canonical_json(config))
    h.update(b"\0meta\0" + _canonical_json(
        {k: v for k, v in meta.items() if k not in ("digest", "header_digest")}))
    return h.hexdigest()


def _flatten_config(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten_config(v, key + "."))
        else:
            out[key] = v
    return out


def config_fingerprint_fields(config: Mapping[str, Any], resumable: Iterable[str] = ()
                              ) -> dict[str, Any]:
    """The config entries that must match for a checkpoint to be resumed.

    ``resumable`` lists dotted paths (or section prefixes such as ``"eval"``)
    that may change between a run and its resumption.
    """
    prefixes = tuple(resumable)
    return {
        k: v for k, v in _flatten_config(config).items()
        if not any(k == p or k.startswith(p + ".") for p in prefixes)
    }


def _describe_differences(expected: Mapping, found: Mapping, limit: int = 6) -> str:
    keys = sorted(set(expected) | set(found))
    diffs = [
        f"{k}: checkpoint has {found.get(k, '<missing>')!r}, run has "
        f"{expected.get(k, '<missing>')!r}"
        for k in keys
        if expected.get(k, "<missing>") != found.get(k, "<missing>")
    ]
    more = f" (+{len(diffs) - limit} more)" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more


def _short(err: BaseException, limit: int = 160) -> str:
    """``Type: first line`` of an exception (orbax / TensorStore errors are walls of specs)."""
    first = (str(err).strip().splitlines() or [""])[0]
    if len(first) > limit:
        first = first[:limit] + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _json_plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


class Checkpointer:
    """Saves and restores verified train-state checkpoints in ``directory``.

    Args:
      directory: where the step directories live (created if missing).
      config: the run's config as a plain dict (``ConfigDict.to_dict()``).
      resumable: dotted config paths (or section prefixes) allowed to differ
        on resume; each method's schema declares them.
      max_to_keep: how many of the most recent checkpoints to keep.
      run_spec: the run's ``advcore.run_spec`` (stored with every step).
    """

    def __init__(
        self,
        directory: str,
        config: Mapping[str, Any],
        *,
        resumable: Iterable[str] = (),
        max_to_keep: int = 3,
        run_spec: Optional[Mapping[str, Any]] = None,
    ):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = os.path.abspath(directory)
        self.config = _json_plain(dict(config))
        self.fingerprint = config_fingerprint_fields(self.config, resumable)
        self.run_spec = None if run_spec is None else _json_plain(dict(run_spec))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    # -- saving -------------------------------------------------------------
    def save(
        self,
        step: int,
        state: Any,
        data_iterator_state: Optional[Mapping[str, Any]] = None,
        extra: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Saves ``state`` at ``step`` (asynchronously; see ``wait``)."""
        pure = serialization.to_state_dict(state)
        meta = _json_plain({
            "step": int(step),
            "signature": tree_signature(pure),
            "config_fingerprint": self.fingerprint,
            "data_iterator": data_iterator_state,
            "run_spec": self.run_spec,
            "extra": dict(extra or {}),
        })
        meta["header_digest"] = header_digest(self.config, meta)
        meta["digest"] = content_digest(pure, self.config, meta)
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(pure),
                config=ocp.args.JsonSave(self.config),
                meta=ocp.args.JsonSave(meta),
            ),
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # -- restoring ----------------------------------------------------------
    def latest_step(self) -> Optional[int]:
        self.manager.wait_until_finished()
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def _read_json(self, step: int, item: str) -> Any:
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))
        except Exception as err:  # orbax raises many types for unreadable files
            raise CheckpointCorruptError(
                f"checkpoint step {step} in {self.directory}: cannot read its {item} "
                f"({_short(err)})") from err
        return restored[item]

    def read_meta(self, step: int) -> dict:
        return self._read_json(step, "meta")

    def restore(self, step: int, target_state: Any) -> tuple[Any, dict]:
        """Restores ``step`` into the structure (and shardings) of ``target_state``.

        ``target_state`` is a state of the same kind as the one saved (a freshly
        initialised state works); its shardings are reused for the restored
        arrays. Returns ``(state, meta)``.

        Raises:
          CheckpointMismatchError: architecture or config differ.
          CheckpointCorruptError: files unreadable or content changed.
        """
        self.manager.wait_until_finished()
        meta = self.read_meta(step)
        config = self._read_json(step, "config")
        if not isinstance(meta, dict) or meta.get("header_digest") != header_digest(config, meta):
            raise CheckpointCorruptError(
                f"checkpoint step {step} in {self.directory} is corrupt: its config or "
                "metadata does not match the digest recorded at save time")
        target_pure = serialization.to_state_dict(target_state)

        expected_sig = tree_signature(target_pure)
        if meta.get("signature") != expected_sig:
            found = {p: (s, d) for p, s, d in meta.get("signature") or []}
            wanted = {p: (s, d) for p, s, d in expected_sig}
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} was saved from a "
                "different architecture: " + _describe_differences(wanted, found))
        found_fp = meta.get("config_fingerprint", {})
        if found_fp != self.fingerprint:
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} was saved with a "
                "different config: " + _describe_differences(self.fingerprint, found_fp))

        def abstract(leaf):
            sharding = getattr(leaf, "sharding", None)
            return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype, sharding=sharding)

        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(jax.tree.map(abstract, target_pure))))
        except Exception as err:
            raise CheckpointCorruptError(
                f"checkpoint step {step} in {self.directory}: cannot read its state "
                f"({_short(err)})") from err
        pure = restored["state"]
        if content_digest(pure, config, meta) != meta.get("digest"):
            raise CheckpointCorruptError(
                f"checkpoint step {step} in {self.directory} is corrupt: its content "
                "(arrays, config or metadata) does not match the digest recorded at save time")
        return serialization.from_state_dict(target_state, pure), meta

    def restore_latest(self, target_state: Any) -> Optional[tuple[Any, dict]]:
        """The newest intact checkpoint, or None; damaged ones are set aside.

        A checkpoint of another architecture or config is not damage: that
        ``CheckpointMismatchError`` propagates (the run's config changed).
        """
        for step in sorted(self.all_steps(), reverse=True):
            try:
                return self.restore(step, target_state)
            except CheckpointCorruptError as err:
                self.set_aside(step, str(err))
        return None

    def set_aside(self, step: int, reason: str) -> str:
        """Moves step ``step`` to ``<directory>.corrupt/`` (kept for inspection)."""
        self.manager.wait_until_finished()
        source = os.path.join(self.directory, str(step))
        target_dir = self.directory.rstrip(os.sep) + ".corrupt"
        os.makedirs(target_dir, exist_ok=True)
        target = os.path.join(target_dir, f"{step}.{int(time.time())}")
        shutil.move(source, target)
        self.manager.reload()
        log.warning("%s; moved it to %s and going on with the newest intact checkpoint",
                    reason, target)
        return target


def _existing_checkpoint_dir(workdir: str) -> str:
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoint found: {directory} does not exist")
    return directory


def _reader(directory: str) -> ocp.CheckpointManager:
    # create=False: reading a run never creates folders in it.
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))


def load_raw_state(workdir: str, step: Optional[int] = None) -> tuple[dict, dict, dict]:
    """Restores a checkpoint as host numpy arrays, without a target.

    Used by ``advcore.evaluate`` and the method packages, which only know the
    saved config and run spec. Returns ``(state_pure_dict, config_dict, meta)``;
    the whole content is verified, and a damaged checkpoint raises
    ``CheckpointCorruptError`` (it is never half-loaded).
    """
    directory = _existing_checkpoint_dir(workdir)
    manager = _reader(directory)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint found in {directory}")
    try:
        restored = manager.restore(
            step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(), config=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore()))
    except Exception as err:
        raise CheckpointCorruptError(
            f"checkpoint step {step} in {directory}: cannot be read ({_short(err)})") from err
    finally:
        manager.close()
    state = jax.tree.map(np.asarray, restored["state"])
    meta = restored["meta"]
    if content_digest(state, restored["config"], meta) != meta.get("digest"):
        raise CheckpointCorruptError(
            f"checkpoint step {step} in {directory} is corrupt: its content (arrays, config "
            "or metadata) does not match the digest recorded at save time")
    return state, restored["config"], meta


def load_run_config(workdir: str) -> dict:
    """The config of the newest checkpoint under ``<workdir>/checkpoints`` (verified)."""
    _, config, _ = load_raw_state(workdir)
    return config
