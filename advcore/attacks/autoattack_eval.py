"""Host-level AutoAttack evaluation: stage by stage, logged, resumable.

:func:`run_autoattack` evaluates a classifier the way the reference's
``run_standard_evaluation`` does, on a whole dataset:

1. clean predictions mark the robust points (batches in data order);
2. for each stage of the version (``advcore.attacks.autoattack``, same
   settings and stage functions as the jitted :func:`autoattack`), the points
   still robust are gathered and packed into batches of ``batch_size``; each
   batch is attacked (every device attacks its own shard, with the batch key
   folded with the device index, exactly as ``advcore.evaluation`` runs
   ``shard_local`` attacks) and a point is broken when the model
   misclassifies the stage's output;
3. after each stage the robust accuracy and the elapsed time are reported
   with the reference's log lines (``"robust accuracy after APGD-CE: 48.44%
   (total time 12.3 s)"``) through ``log`` (``print`` by default; pass e.g.
   ``logging.getLogger(...).info``).

Resuming: with ``state_path``, a JSON state is written atomically (a
temporary file in the same directory, then ``os.replace``) after the clean
pass, after every stage and, with ``save_every_batch=True``, after every
batch. It holds the per-point robust flags, the finished stages, the
per-stage accuracies and times, and where an unfinished stage stood (the
flags it started from and the batches done). If ``state_path`` exists, the
run continues from it without redoing finished stages or batches; with the
same key, batch size and device count the result is bit-identical to an
uninterrupted run (each batch's key depends only on the key, the stage and
the batch index). A state file from another setting -- a different number
of points, eps, norm, version, key, attack list / attack settings, data or
model weights -- is refused with one ``ValueError`` naming every field that
differs. A different batch size or device count only restarts the
unfinished stage from its first batch.

Returns ``{"clean": acc, "<stage>": robust acc after it, ..., "robust": acc,
"seconds": {"clean": s, "<stage>": s, "total": s}, "n": N,
"robust_flags": (N,) bool}`` with accuracies in %. Stages after the point
where nothing is robust any more are skipped as in the reference (logged;
their accuracy is 0 and their time 0). Deterministic for a fixed key and
device count. Deterministic (key-free) models only: ``apply_fn(variables,
x) -> logits`` in eval mode, as ``advcore.evaluation`` uses.

Example::

    from advcore.attacks.autoattack_eval import run_autoattack
    result = run_autoattack(apply_fn, variables, test.images, test.labels, eps=8 / 255,
                            norm="linf", version="standard", batch_size=500,
                            key=jax.random.PRNGKey(0), state_path="runs/x/aa_state.json")
    print(result["robust"], result["seconds"])
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from typing import Any, Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from advcore import batching, parallel
from advcore.attacks import _validation as val
from advcore.attacks.autoattack import AutoAttackConfig, check_config, make_stage

__all__ = ["STATE_FORMAT", "run_autoattack"]

LogitsApply = Callable[[Any, jax.Array], jax.Array]

STATE_FORMAT = 1
# Fields whose change makes a saved state meaningless for this run.
_FINGERPRINT_FIELDS = ("n", "eps", "norm", "version", "key", "attacks", "data", "model")


# --------------------------------------------------------------------------
# Fingerprints and the state file.
# --------------------------------------------------------------------------


def _digest_arrays(arrays: Sequence[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _key_data(key: jax.Array) -> list[int]:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return [int(v) for v in np.asarray(key).reshape(-1)]


def _fingerprint(images, labels, variables, key, *, eps, config: AutoAttackConfig) -> dict:
    leaves = jax.tree.leaves(parallel.fetch_to_host(variables))
    return {"n": int(len(labels)), "eps": float(eps), "norm": config.norm,
            "version": config.version, "key": _key_data(key), "attacks": config.as_dict(),
            "data": _digest_arrays([np.asarray(images), np.asarray(labels)]),
            "model": _digest_arrays([np.asarray(leaf) for leaf in leaves])}


def _flags_to_text(flags: np.ndarray) -> str:
    return "".join("1" if f else "0" for f in flags)


def _flags_from_text(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), np.uint8) == ord("1")


def _write_state(path: str, state: dict) -> None:
    """Atomic: a complete file appears under ``path`` or nothing changes."""
    if not parallel.is_main_process():
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".aa_state_", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read_state(path: str, fingerprint: dict) -> dict:
    with open(path) as f:
        try:
            state = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"state_path {path!r} is not a valid AutoAttack state file: {e}")
    if state.get("format") != STATE_FORMAT or "fingerprint" not in state:
        raise ValueError(f"state_path {path!r} is not an AutoAttack state file of format "
                         f"{STATE_FORMAT}")
    saved = state["fingerprint"]
    differ = [k for k in _FINGERPRINT_FIELDS if saved.get(k) != fingerprint[k]]
    if differ:
        details = "; ".join(f"{k}: saved {_short(saved.get(k))}, now {_short(fingerprint[k])}"
                            for k in differ)
        raise ValueError(
            f"state_path {path!r} was written for another evaluation setting ({details}); "
            "use another state_path or delete the file to start over")
    return state


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


# --------------------------------------------------------------------------
# The driver.
# --------------------------------------------------------------------------


def _eval_fn(apply_fn: LogitsApply, stage: Optional[str], config: AutoAttackConfig, eps: float,
             unroll: int, mesh: Mesh):
    """``advcore.batching.make_eval_fn``'s jitted eval function for the clean pass
    (``stage=None``) or one stage (built once per stage of a run; JAX's
    persistent compilation cache serves a later run in another process)."""
    attack = None if stage is None else _stage_attack(stage, config, eps, unroll)
    return batching.make_eval_fn(apply_fn, attack, mesh)


def _stage_attack(name: str, config: AutoAttackConfig, eps: float, unroll: int):
    """The stage as an ``advcore.evaluation`` attack ``(logits_fn, x, y, key) ->
    x_adv``, run per device shard (``shard_local``) like the registry's
    AutoAttack. Every row it is given is attacked (padding rows too)."""

    def attack(logits_fn, x, y, key):
        stage = make_stage(name, logits_fn, config, eps=eps, unroll=unroll)
        return stage(x, y, key, None)[0]

    attack.shard_local = True
    attack.__name__ = name
    return attack


def _run_batches(fn, variables, images, labels, rows: np.ndarray, batch_size: int,
                 mesh: Mesh, key_of_batch: Callable[[int], jax.Array], first_batch: int,
                 on_batch: Callable[[int, np.ndarray, np.ndarray], None]) -> None:
    """Runs ``fn`` (an ``advcore.batching.make_eval_fn`` function) over ``rows`` in
    batches of ``batch_size`` (the last padded with its last row) and hands
    each batch's rows and "still correct" flags to ``on_batch``."""
    n_batches = math.ceil(len(rows) / batch_size)
    for b in range(first_batch, n_batches):
        idx = rows[b * batch_size:(b + 1) * batch_size]
        take = batching.pad_rows(idx, batch_size)
        x = batching.as_float_images(images[take])
        y = np.asarray(labels[take]).astype(np.int32)
        xs, ys = parallel.shard_host_batch((x, y), mesh)
        ok = parallel.fetch_to_host(fn(variables, xs, ys, key_of_batch(b)))[:len(idx)]
        on_batch(b, idx, np.asarray(ok, bool))


def run_autoattack(
    apply_fn: LogitsApply, variables: Any, images: np.ndarray, labels: np.ndarray, *,
    eps: float, norm: str = "linf", version: str = "standard", batch_size: int = 500,
    key: Optional[jax.Array] = None, mesh: Optional[Mesh] = None,
    state_path: Optional[str] = None, log: Optional[Callable[[str], None]] = print,
    attacks_to_run: Optional[Sequence[str]] = None, save_every_batch: bool = False,
    num_iters: int = 100, n_queries: int = 5000, n_target_classes: Optional[int] = None,
    restarts: Optional[int] = None, use_largereps: Optional[bool] = None, unroll: int = 1,
) -> Dict[str, Any]:
    """AutoAttack over a dataset, stage by stage (module docstring).

    Args:
      apply_fn: ``(variables, x) -> logits`` in eval mode (deterministic).
      variables: the model's variables.
      images: uint8 NHWC (divided by 255) or float in [0, 1]; labels: int (N,).
      eps, norm, version: the threat model and AutoAttack version (every
        norm x version the reference defines; ``autoattack`` module docstring).
      batch_size: points per attacked batch (rounded up to a multiple of the
        device count); each stage packs the still-robust points densely.
      key: PRNG key (default ``PRNGKey(0)``); part of the state fingerprint.
      mesh: a ``('data',)`` mesh (default: all devices).
      state_path: JSON state file to save to and resume from (None: none).
      log: called with each log line (None: silent).
      attacks_to_run: optional subset / order of the version's attacks.
      save_every_batch: also save the state after every batch.
      num_iters, n_queries, n_target_classes, restarts, use_largereps, unroll:
        as :func:`advcore.attacks.autoattack.autoattack`.

    Returns:
      ``{"clean", <stage>..., "robust"}`` accuracies in %, ``"seconds"``,
      ``"n"`` and ``"robust_flags"`` (bool array, data order).
    """
    config = check_config(norm=norm, version=version, attacks_to_run=attacks_to_run,
                          num_iters=num_iters, n_queries=n_queries,
                          n_target_classes=n_target_classes, restarts=restarts,
                          use_largereps=use_largereps)
    val.check_number("eps", eps, min_value=0.0)
    val.check_int("batch_size", batch_size, min_value=1)
    val.check_int("unroll", unroll, min_value=1)
    n = len(labels)
    if n == 0:
        raise ValueError("images must hold at least one example, got 0")
    if len(images) != n:
        raise ValueError(f"images and labels must have the same length, got {len(images)} "
                         f"and {n}")
    say = log if log is not None else (lambda _msg: None)
    mesh = parallel.make_mesh() if mesh is None else mesh
    key = jax.random.PRNGKey(0) if key is None else key
    num_devices = mesh.devices.size
    if batch_size % num_devices:
        batch_size += num_devices - batch_size % num_devices
    k_clean, k_stages = jax.random.split(key)

    fingerprint = _fingerprint(images, labels, variables, key, eps=eps, config=config)
    if state_path is not None and os.path.exists(state_path):
        state = _read_state(state_path, fingerprint)
        restored = True
    else:
        state = {"format": STATE_FORMAT, "fingerprint": fingerprint, "robust_flags": None,
                 "finished": [], "accuracy": {}, "seconds": {}, "current": None}
        restored = False

    def save():
        if state_path is not None:
            _write_state(state_path, state)

    remaining = [a for a in config.attacks if a not in state["finished"]]
    say(f"using {config.version} version including {', '.join(remaining) or 'no attack'}.")
    if state["finished"]:
        say(f"{', '.join(state['finished'])} was/were already run.")

    if state["robust_flags"] is None:
        start = time.perf_counter()
        flags = np.zeros(n, bool)
        clean_fn = _eval_fn(apply_fn, None, config, float(eps), unroll, mesh)

        def record_clean(_b, idx, ok):
            flags[idx] = ok

        _run_batches(clean_fn, variables, images, labels, np.arange(n), batch_size, mesh,
                     lambda b: jax.random.fold_in(k_clean, b), 0, record_clean)
        state["robust_flags"] = _flags_to_text(flags)
        state["accuracy"]["clean"] = 100.0 * float(flags.mean())
        state["seconds"]["clean"] = time.perf_counter() - start
        save()
        say(f"initial accuracy: {flags.mean():.2%}")
    else:
        flags = _flags_from_text(state["robust_flags"]).copy()
        say(f"initial clean accuracy: {state['accuracy']['clean'] / 100:.2%}")
        if restored:
            say(f"robust accuracy at the time of restoring the state: {flags.mean():.2%}")

    loop_start = time.perf_counter()
    for i, name in enumerate(config.attacks):
        if name in state["finished"]:
            continue
        if not flags.any():
            say("no robust datapoints left, skipping remaining attacks")
            for skipped in config.attacks[i:]:
                state["accuracy"][skipped] = 0.0
                state["seconds"][skipped] = 0.0
                state["finished"].append(skipped)
            state["current"] = None
            save()
            break
        current = state["current"]
        resumable = (current is not None and current["stage"] == name
                     and current["batch_size"] == batch_size
                     and current["devices"] == num_devices)
        if resumable:
            start_flags = _flags_from_text(current["start_flags"])
            first_batch = current["batches_done"]
            stage_seconds = current["seconds"]
        else:
            start_flags, first_batch, stage_seconds = flags.copy(), 0, 0.0
        rows = np.flatnonzero(start_flags)
        n_batches = math.ceil(len(rows) / batch_size)
        say(f"running {name}")
        stage_fn = _eval_fn(apply_fn, name, config, float(eps), unroll, mesh)
        k_stage = jax.random.fold_in(k_stages, i)
        stage_start = time.perf_counter()

        def record(b, idx, ok, name=name, start_flags=start_flags):
            flags[idx[~ok]] = False
            if save_every_batch:
                state["robust_flags"] = _flags_to_text(flags)
                state["current"] = {
                    "stage": name, "start_flags": _flags_to_text(start_flags),
                    "batches_done": b + 1, "batch_size": batch_size, "devices": num_devices,
                    "seconds": stage_seconds + time.perf_counter() - stage_start}
                save()
            say(f"{name} - {b + 1}/{n_batches} - {int(np.sum(~ok))} out of {len(idx)} "
                "successfully perturbed")

        _run_batches(stage_fn, variables, images, labels, rows, batch_size, mesh,
                     lambda b: jax.random.fold_in(k_stage, b), first_batch, record)
        state["robust_flags"] = _flags_to_text(flags)
        state["accuracy"][name] = 100.0 * float(flags.mean())
        state["seconds"][name] = stage_seconds + time.perf_counter() - stage_start
        state["finished"].append(name)
        state["current"] = None
        save()
        say(f"robust accuracy after {name.upper()}: {flags.mean():.2%} "
            f"(total time {time.perf_counter() - loop_start:.1f} s)")

    say(f"robust accuracy: {flags.mean():.2%}")
    seconds = {k: float(v) for k, v in state["seconds"].items()}
    seconds["total"] = float(sum(seconds.values()))
    result: Dict[str, Any] = {"clean": state["accuracy"]["clean"]}
    for name in config.attacks:
        result[name] = state["accuracy"][name]
    result.update(robust=100.0 * float(flags.mean()), seconds=seconds, n=n,
                  robust_flags=flags.copy())
    return result
