"""Atomic, verified checkpoints on top of orbax's ``CheckpointManager``.

Each checkpoint step holds three items:

* ``state``: the train state as a pure nested dict of arrays (orbax
  ``StandardSave``). Pure dicts keep checkpoints independent of class names.
* ``config``: the run's config as JSON, for humans and for
  ``advcore.evaluate`` (which rebuilds models from it).
* ``meta``: JSON with the architecture signature (every leaf's path, shape
  and dtype), a fingerprint of the config fields that define the run, a
  SHA-256 digest of the state's bytes, and the data-iterator position.

Orbax writes each step into a temporary directory and renames it when the
write is complete, so a crash mid-save never leaves a half-written step
behind. On restore, the signature and config fingerprint are compared
*before* any array is read, and the digest after: a checkpoint from another
architecture or config, or one whose bytes changed, is refused whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization


class CheckpointMismatchError(RuntimeError):
    """The checkpoint belongs to another architecture or config."""


class CheckpointCorruptError(RuntimeError):
    """The checkpoint's files cannot be read or their content changed."""


# Config fields that may differ between a run and its resumption: they do not
# change what a step computes (how long to train, how often to log or eval).
DEFAULT_RESUMABLE_KEYS = (
    "num_epochs",
    "log_every_steps",
    "eval_every_epochs",
    "checkpoint_every_steps",
    "checkpoint_every_epochs",
    "keep_checkpoints",
    "eval_num_examples",
    "progress_bar",
    "tensorboard",
    "final_eval",
    "stop_after_steps",
)


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


def tree_digest(tree: Any) -> str:
    """SHA-256 over the paths and raw bytes of every leaf, in order."""
    h = hashlib.sha256()
    for path, leaf in _leaf_paths(tree):
        h.update(path.encode())
        arr = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        h.update(str(arr.dtype).encode())
        h.update(arr.tobytes())
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


def config_fingerprint_fields(
    config: Mapping[str, Any], resumable_keys: Iterable[str] = DEFAULT_RESUMABLE_KEYS
) -> dict[str, Any]:
    """The config entries that must match for a checkpoint to be resumed."""
    resumable = set(resumable_keys)
    return {
        k: v
        for k, v in _flatten_config(config).items()
        if k.split(".")[-1] not in resumable and k.split(".")[0] not in resumable
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


class Checkpointer:
    """Saves and restores verified train-state checkpoints in ``directory``.

    Args:
      directory: where the step directories live (created if missing).
      config: the run's config as a plain dict (``ConfigDict.to_dict()``).
      max_to_keep: how many of the most recent checkpoints to keep.
      resumable_keys: config leaf names allowed to differ on resume.
    """

    def __init__(
        self,
        directory: str,
        config: Mapping[str, Any],
        max_to_keep: int = 3,
        resumable_keys: Iterable[str] = DEFAULT_RESUMABLE_KEYS,
    ):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = os.path.abspath(directory)
        self.config = json.loads(json.dumps(dict(config), default=str))
        self.fingerprint = config_fingerprint_fields(self.config, resumable_keys)
        self._resumable_keys = tuple(resumable_keys)
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
        meta = {
            "step": int(step),
            "signature": tree_signature(pure),
            "config_fingerprint": self.fingerprint,
            "digest": tree_digest(pure),
            "data_iterator": data_iterator_state,
            "extra": dict(extra or {}),
        }
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(pure),
                config=ocp.args.JsonSave(self.config),
                meta=ocp.args.JsonSave(json.loads(json.dumps(meta, default=str))),
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

    def read_meta(self, step: int) -> dict:
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
        except Exception as err:  # orbax raises many types for unreadable files
            raise CheckpointCorruptError(
                f"cannot read the metadata of checkpoint step {step} in "
                f"{self.directory}: {type(err).__name__}: {err}"
            ) from err
        return restored["meta"]

    def restore(self, step: int, target_state: Any) -> tuple[Any, dict]:
        """Restores ``step`` into the structure (and shardings) of ``target_state``.

        ``target_state`` is a state of the same kind as the one saved (a freshly
        initialised state works); its shardings are reused for the restored
        arrays. Returns ``(state, meta)``.

        Raises:
          CheckpointMismatchError: architecture or config differ.
          CheckpointCorruptError: files unreadable or digest mismatch.
        """
        self.manager.wait_until_finished()
        meta = self.read_meta(step)
        target_pure = serialization.to_state_dict(target_state)

        expected_sig = tree_signature(target_pure)
        if meta.get("signature") != expected_sig:
            found = {p: (s, d) for p, s, d in meta.get("signature", [])}
            wanted = {p: (s, d) for p, s, d in expected_sig}
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} was saved from a "
                "different architecture: "
                + _describe_differences(wanted, found)
            )
        found_fp = meta.get("config_fingerprint", {})
        if found_fp != self.fingerprint:
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} was saved with a "
                "different config: " + _describe_differences(self.fingerprint, found_fp)
            )

        def abstract(leaf):
            sharding = getattr(leaf, "sharding", None)
            return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype, sharding=sharding)

        abstract_pure = jax.tree.map(abstract, target_pure)
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_pure)),
            )
        except Exception as err:
            raise CheckpointCorruptError(
                f"cannot read the state of checkpoint step {step} in "
                f"{self.directory}: {type(err).__name__}: {err}"
            ) from err
        pure = restored["state"]
        digest = tree_digest(pure)
        if digest != meta.get("digest"):
            raise CheckpointCorruptError(
                f"checkpoint step {step} in {self.directory} is corrupt: its "
                "content digest does not match the one recorded at save time"
            )
        return serialization.from_state_dict(target_state, pure), meta

    def restore_latest(self, target_state: Any) -> Optional[tuple[Any, dict]]:
        step = self.latest_step()
        if step is None:
            return None
        return self.restore(step, target_state)


def load_run_config(workdir: str) -> dict:
    """The config JSON of the newest checkpoint under ``<workdir>/checkpoints``."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    manager = ocp.CheckpointManager(directory)
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint found in {directory}")
    restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return restored["config"]


def load_raw_state(workdir: str, step: Optional[int] = None) -> tuple[dict, dict, int]:
    """Restores a checkpoint's state as host numpy arrays, without a target.

    Used by ``advcore.evaluate``, which only knows the saved config. Returns
    ``(state_pure_dict, config_dict, step)``; the digest is verified.
    """
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    manager = ocp.CheckpointManager(directory)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint found in {directory}")
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(),
                config=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
    except Exception as err:
        raise CheckpointCorruptError(
            f"cannot read checkpoint step {step} in {directory}: "
            f"{type(err).__name__}: {err}"
        ) from err
    state = jax.tree.map(np.asarray, restored["state"])
    if tree_digest(state) != restored["meta"].get("digest"):
        raise CheckpointCorruptError(
            f"checkpoint step {step} in {directory} is corrupt: digest mismatch"
        )
    return state, restored["config"], step
