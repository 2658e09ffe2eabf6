"""Applying a jitted function to a whole dataset in fixed-size batches.

``make_eval_fn`` builds the per-example "still correct after this attack"
program that evaluation and the AutoAttack driver run over a dataset.

Evaluation, latents, reconstructions and transfer all need the same loop:
cut host arrays into batches of one static size (so the function compiles
once), pad the last batch, convert uint8 images to floats, place the batch on
the mesh, run, bring the outputs back and drop the padding. ``map_batches``
is that loop.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from advcore import parallel
from advcore.data import to_float

LogitsApply = Callable[[dict, jax.Array], jax.Array]
Attack = Callable[..., jax.Array]


def as_float_images(x: np.ndarray) -> np.ndarray:
    """uint8 images in [0, 255] -> float32 in [0, 1]; other arrays -> float32."""
    x = np.asarray(x)
    return to_float(x) if x.dtype == np.uint8 else x.astype(np.float32)


def batch_bounds(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive batches covering ``range(n)``."""
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def pad_rows(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` padded to ``size`` rows by repeating its last row."""
    missing = size - len(a)
    return a if missing <= 0 else np.concatenate([a, np.repeat(a[-1:], missing, axis=0)])


def map_batches(
    fn: Callable[..., Any],
    arrays: Sequence[np.ndarray],
    *,
    batch_size: int,
    mesh: Optional[Mesh] = None,
    key: Optional[jax.Array] = None,
    float_images: Sequence[bool] | None = None,
    progress: bool = False,
    desc: str = "batches",
) -> Any:
    """``fn`` over ``arrays`` in batches; returns its outputs for every row, on the host.

    Args:
      fn: ``fn(*batch) -> output`` (or ``fn(*batch, key)`` when ``key`` is
        given), where ``output`` is a pytree of arrays whose leading axis is
        the batch; typically jitted (every call has the same shapes).
      arrays: host arrays with the same leading length ``n`` (images, labels...).
      batch_size: the static batch size; with ``mesh`` it is rounded up to a
        multiple of the device count. The last batch is padded by repeating
        its last row, and the padding is dropped from the outputs.
      mesh: place each batch on ``mesh``, sharded along the batch axis (every
        process holds the whole host arrays). None: default device placement.
      key: batch ``start`` gets ``fold_in(key, start)``, so a result does not
        depend on how many batches came before.
      float_images: per array, whether it holds images to convert to float32
        in [0, 1] (default: every uint8 array).
      progress: a tqdm bar.

    Returns:
      ``fn``'s output pytree with each leaf concatenated over the batches (``n`` rows).
    """
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if n == 0:
        raise ValueError("map_batches needs at least one row, got 0")
    if any(len(a) != n for a in arrays):
        raise ValueError(f"arrays must have the same length, got {[len(a) for a in arrays]}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if mesh is not None and batch_size % mesh.devices.size:
        batch_size += mesh.devices.size - batch_size % mesh.devices.size
    convert = ([a.dtype == np.uint8 for a in arrays] if float_images is None
               else list(float_images))

    bounds = batch_bounds(n, batch_size)
    if progress:
        bounds = tqdm(list(bounds), desc=desc, unit="batch", leave=False)
    outputs = []
    for start, stop in bounds:
        batch = [pad_rows(as_float_images(a[start:stop]) if c else a[start:stop], batch_size)
                 for a, c in zip(arrays, convert)]
        if mesh is not None:
            batch = parallel.shard_host_batch(tuple(batch), mesh)
        args = list(batch) + ([] if key is None else [jax.random.fold_in(key, start)])
        out = parallel.fetch_to_host(fn(*args))
        outputs.append(jax.tree.map(lambda leaf, k=stop - start: np.asarray(leaf)[:k], out))
    return jax.tree.map(lambda *leaves: np.concatenate(leaves), *outputs)


def is_shard_local(attack: Optional[Attack]) -> bool:
    """Whether ``attack`` asks to run per device shard (``attack.shard_local``)."""
    return bool(getattr(attack, "shard_local", False))


def make_eval_fn(apply_fn: LogitsApply, attack: Optional[Attack], mesh: Mesh):
    """jit(variables, images, labels, key) -> per-example correctness.

    By default the attack is one program over the global batch, partitioned
    by the compiler (its random draws do not depend on the device layout).
    A ``shard_local`` attack (AutoAttack: ``advcore.attacks.autoattack``)
    instead runs independently on each device's shard under ``jax.shard_map``
    with the key folded with the device index: its cost depends on which
    points are still robust (compaction, early exits), and a partitioned
    program would gather the global batch for that and lose the parallelism.
    Its random starts then depend on the number of devices (like upstream's
    dependence on the batch size), not its per-point rules.
    """

    def run(variables, images, labels, key):
        logits_fn = lambda x: apply_fn(variables, x)  # noqa: E731
        x = images if attack is None else attack(logits_fn, images, labels, key)
        return jnp.argmax(logits_fn(x), axis=-1) == labels

    repl = parallel.replicated(mesh)
    data = parallel.data_sharded(mesh)
    if is_shard_local(attack) and mesh.devices.size > 1:
        axis = mesh.axis_names[0]

        def run_local(variables, images, labels, key):
            return run(variables, images, labels,
                       jax.random.fold_in(key, jax.lax.axis_index(axis)))

        local = jax.shard_map(run_local, mesh=mesh, in_specs=(P(), P(axis), P(axis), P()),
                              out_specs=P(axis), check_vma=False)
        return jax.jit(local, in_shardings=(repl, data, data, repl), out_shardings=data)
    return jax.jit(run, in_shardings=(repl, data, data, repl), out_shardings=data)
