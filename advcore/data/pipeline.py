"""Training and evaluation batch pipelines over in-memory `ArrayDataset`s.

Training uses grain (the fastest pipeline measured on 2 cores; docs/data.md#training-pipeline):
shuffle *indices* with `MapDataset.range(N).shuffle(seed)`, batch them into
global batches, repeat (grain reshuffles each epoch), then gather rows from
the numpy arrays and augment the whole batch at once. The result is a grain
`DatasetIterator`, so `get_state()/set_state()` and orbax's
`grain.checkpoint.CheckpointSave/CheckpointRestore` resume it exactly.

Multi-process rule (DESIGN.md): the *global* batch of step t is a function of
(seed, t) only. Process p of P receives its rows [p*L, (p+1)*L), L = G/P, and
augmentation parameters are drawn for all G rows from an RNG keyed by
(seed, t) before slicing, so the union over processes is independent of P.
"""

from __future__ import annotations

from typing import Callable, Iterator

import grain
import jax
import numpy as np

from advcore.data.info import AUGMENTATIONS, ArrayDataset

CROP_PADDING = 4  # LBGAT (docs/data.md#augmentation): RandomCrop(32, padding=4), zero padding.
_AUG_STREAM = 0x6A7567  # separates the augmentation RNG stream from others.


def _process_layout(
    process_index: int | None, process_count: int | None
) -> tuple[int, int]:
    if process_index is None or process_count is None:
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not isinstance(process_count, (int, np.integer)) or process_count < 1:
        raise ValueError(f"process_count must be an int >= 1, got {process_count!r}")
    if not isinstance(process_index, (int, np.integer)) or not (
        0 <= process_index < process_count
    ):
        raise ValueError(
            f"process_index must be an int in [0, {process_count - 1}], got {process_index!r}")
    return int(process_index), int(process_count)


def _check_batch(name: str, batch_size, process_count: int) -> int:
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) \
            or batch_size <= 0:
        raise ValueError(f"{name} must be an int > 0, got {batch_size!r}")
    if batch_size % process_count:
        raise ValueError(
            f"{name} must be divisible by process_count={process_count}, got {batch_size}")
    return int(batch_size)


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return images.astype(np.float32) / np.float32(255.0)


def crop_flip(
    images: np.ndarray, offsets: np.ndarray, flips: np.ndarray, pad: int = CROP_PADDING
) -> np.ndarray:
    """Vectorised random crop (zero padding `pad`) and horizontal flip.

    Args:
      images: (B, H, W, C) array.
      offsets: (B, 2) ints in [0, 2*pad], the top-left corner in the padded image.
      flips: (B,) bools, flip horizontally where True.
    Returns:
      (B, H, W, C) array of the same dtype.
    """
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = offsets[:, 0, None] + np.arange(h)
    cols = offsets[:, 1, None] + np.arange(w)
    # Folding the flip into the column gather costs nothing extra.
    cols = np.where(flips[:, None], cols[:, ::-1], cols)
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def augmentation_params(
    seed: int, step: int, global_batch_size: int, pad: int = CROP_PADDING
) -> tuple[np.ndarray, np.ndarray]:
    """Crop offsets (G, 2) and flips (G,) for global step `step`.

    A function of (seed, step) only, drawn for the whole global batch, so each
    row's augmentation is independent of the process layout.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, _AUG_STREAM, step]))
    offsets = rng.integers(0, 2 * pad + 1, size=(global_batch_size, 2))
    flips = rng.random(global_batch_size) < 0.5
    return offsets, flips


def make_batch_iterator(
    num_examples: int,
    *,
    global_batch_size: int,
    seed: int,
    make_batch: Callable[[int, np.ndarray], dict],
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    read_options: grain.ReadOptions | None = None,
) -> grain.DatasetIterator:
    """A resumable iterator of shuffled batches of any arrays (grain).

    Each epoch is a new permutation of ``range(num_examples)`` (a function of
    ``seed`` and the epoch), cut into global batches (the last partial one is
    dropped). ``make_batch(step, rows)`` turns this process's rows
    ``[p*L, (p+1)*L)`` of global step ``step``'s indices into arrays.

    The iterator is grain's, so ``get_state()`` / ``set_state()`` (and orbax's
    ``grain.checkpoint`` handlers) resume it exactly.

    Args:
      num_examples: size of the index space.
      global_batch_size: examples per step over all processes.
      seed: shuffling seed (non-negative int).
      make_batch: ``(global step, local row indices) -> dict of arrays``.
      num_epochs: number of passes, None for an endless iterator.
      process_index, process_count: default ``jax.process_index()/process_count()``.
      read_options: grain prefetch options (default: one background thread,
        two batches ahead, enough to overlap with a jitted step).
    """
    p, num_p = _process_layout(process_index, process_count)
    g = _check_batch("global_batch_size", global_batch_size, num_p)
    n = int(num_examples)
    if g > n:
        raise ValueError(
            f"global_batch_size must be <= the number of examples ({n}), got {g}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if num_epochs is not None and (
        not isinstance(num_epochs, (int, np.integer)) or num_epochs < 1
    ):
        raise ValueError(f"num_epochs must be None or an int >= 1, got {num_epochs!r}")
    local = g // num_p
    lo, hi = p * local, (p + 1) * local

    batches = (
        grain.MapDataset.range(n)
        .shuffle(seed=int(seed))
        .batch(g, drop_remainder=True)
        # shuffle -> batch -> repeat: grain draws a new permutation per epoch.
        .repeat(None if num_epochs is None else int(num_epochs))
        .map_with_index(lambda step, indices: make_batch(step, indices[lo:hi]))
    )
    if read_options is None:
        read_options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
    return iter(batches.to_iter_dataset(read_options))


def make_train_iterator(
    ds: ArrayDataset,
    *,
    global_batch_size: int,
    seed: int,
    augment: str = "crop_flip",
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    read_options: grain.ReadOptions | None = None,
) -> grain.DatasetIterator:
    """A resumable iterator of shuffled, augmented training batches.

    ``make_batch_iterator`` over ``ds``, with the dataset's augmentation drawn
    for the whole global batch from (seed, step), so each row's augmentation
    does not depend on the process layout.

    Args:
      ds: the training set.
      global_batch_size, seed, num_epochs, process_index, process_count,
        read_options: as ``make_batch_iterator``.
      augment: 'crop_flip' or 'none' (see `DatasetInfo.train_augment`).

    Yields:
      {'image': float32 (L, H, W, C) in [0, 1], 'label': int32 (L,)} with
      L = global_batch_size / process_count.
    """
    if not isinstance(ds, ArrayDataset):
        raise ValueError(f"ds must be an ArrayDataset, got {type(ds).__name__}")
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    p, num_p = _process_layout(process_index, process_count)
    g = _check_batch("global_batch_size", global_batch_size, num_p)
    local = g // num_p
    lo, hi = p * local, (p + 1) * local
    images, labels = ds.images, ds.labels

    def make_batch(step: int, rows: np.ndarray) -> dict[str, np.ndarray]:
        x = images[rows]
        if augment == "crop_flip":
            offsets, flips = augmentation_params(int(seed), step, g)
            x = crop_flip(x, offsets[lo:hi], flips[lo:hi])
        return {"image": to_float(x), "label": labels[rows]}

    return make_batch_iterator(
        len(ds), global_batch_size=g, seed=seed, make_batch=make_batch, num_epochs=num_epochs,
        process_index=p, process_count=num_p, read_options=read_options)


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Training steps per epoch (the last partial batch is dropped)."""
    if not isinstance(num_examples, (int, np.integer)) or num_examples < 0:
        raise ValueError(f"num_examples must be an int >= 0, got {num_examples!r}")
    _check_batch("global_batch_size", global_batch_size, 1)
    return int(num_examples) // int(global_batch_size)


def eval_batches(
    ds: ArrayDataset,
    batch_size: int,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Ordered evaluation batches covering every example exactly once.

    `batch_size` is global; process p receives rows [p*L, (p+1)*L) of each
    global batch. The last global batch is padded to full size with zero
    images and label 0, and `mask` is False on the padding, so jitted eval
    steps see one shape and metrics weight by `mask`.

    Yields:
      {'image': float32 (L, H, W, C), 'label': int32 (L,), 'mask': bool (L,)}.
    """
    if not isinstance(ds, ArrayDataset):
        raise ValueError(f"ds must be an ArrayDataset, got {type(ds).__name__}")
    p, num_p = _process_layout(process_index, process_count)
    g = _check_batch("batch_size", batch_size, num_p)
    local = g // num_p
    n = len(ds)

    def gen() -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, n, g):
            idx = np.arange(start + p * local, start + (p + 1) * local)
            mask = idx < n
            safe = np.where(mask, idx, 0)
            image = to_float(ds.images[safe])
            image[~mask] = 0.0
            label = np.where(mask, ds.labels[safe], 0).astype(np.int32)
            yield {"image": image, "label": label, "mask": mask}

    return gen()
