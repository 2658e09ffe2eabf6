"""Training iterator and eval batches: multi-process invariance, resume, augmentation."""

from __future__ import annotations

import grain
import numpy as np
import pytest

from advcore import data
from advcore.data import pipeline


def _ids_dataset(n: int, hw: int = 6, c: int = 1) -> data.ArrayDataset:
    """Image i is constant i (so rows are identifiable); label = i % 7."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None],
                             (n, hw, hw, c)).copy()
    return data.ArrayDataset(images, (np.arange(n) % 7).astype(np.int32))


def _random_dataset(n: int = 40, hw: int = 8, c: int = 3) -> data.ArrayDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, size=(n, hw, hw, c), dtype=np.uint8)
    return data.ArrayDataset(images, rng.integers(0, 10, size=n).astype(np.int32))


def _take(it, k):
    return [next(it) for _ in range(k)]


@pytest.mark.parametrize("augment", ["none", "crop_flip"])
def test_global_batch_invariant_to_process_count(augment):
    ds = _random_dataset()
    kw = dict(global_batch_size=8, seed=3, augment=augment)
    single = _take(data.make_train_iterator(ds, process_index=0, process_count=1, **kw), 12)
    for count in (2, 4):
        parts = [_take(data.make_train_iterator(ds, process_index=p, process_count=count, **kw), 12)
                 for p in range(count)]
        for step in range(12):  # 12 steps cross two epoch boundaries (5 steps/epoch)
            for key in ("image", "label"):
                assert parts[0][step][key].shape[0] == 8 // count
                joined = np.concatenate([parts[p][step][key] for p in range(count)])
                np.testing.assert_array_equal(joined, single[step][key])


def test_batch_format_and_none_is_identity():
    ds = _ids_dataset(30)
    b = next(data.make_train_iterator(ds, global_batch_size=10, seed=0, augment="none",
                                      process_index=0, process_count=1))
    assert b["image"].dtype == np.float32 and b["image"].shape == (10, 6, 6, 1)
    assert b["label"].dtype == np.int32 and b["label"].shape == (10,)
    ids = b["image"][:, 0, 0, 0] * 255
    np.testing.assert_allclose(b["image"], ds.images[np.rint(ids).astype(int)] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(b["label"], np.rint(ids).astype(int) % 7)


def test_crop_flip_changes_images_and_matches_reference():
    ds = _random_dataset(n=64)
    it_none = data.make_train_iterator(ds, global_batch_size=64, seed=5, augment="none",
                                       process_index=0, process_count=1)
    it_aug = data.make_train_iterator(ds, global_batch_size=64, seed=5, augment="crop_flip",
                                      process_index=0, process_count=1)
    plain, aug = next(it_none), next(it_aug)
    np.testing.assert_array_equal(plain["label"], aug["label"])  # same shuffle
    assert aug["image"].shape == plain["image"].shape
    assert 0.0 <= aug["image"].min() and aug["image"].max() <= 1.0
    changed = np.any(aug["image"] != plain["image"], axis=(1, 2, 3))
    assert changed.mean() > 0.8
    # Zero padding shows up as exact zeros (the random images have none).
    assert (aug["image"] == 0).any()
    # Per-row reference: pad 4 with zeros, crop at the offset, then flip.
    offsets, flips = pipeline.augmentation_params(5, 0, 64)
    x = plain["image"]
    for i in range(64):
        padded = np.pad(x[i], ((4, 4), (4, 4), (0, 0)))
        ref = padded[offsets[i, 0]:offsets[i, 0] + 8, offsets[i, 1]:offsets[i, 1] + 8]
        if flips[i]:
            ref = ref[:, ::-1]
        np.testing.assert_array_equal(aug["image"][i], ref)
    assert 0 < flips.sum() < 64 and len(np.unique(offsets)) > 1


def test_epochs_reshuffle_and_drop_remainder():
    ds = _ids_dataset(22)
    it = data.make_train_iterator(ds, global_batch_size=5, seed=1, augment="none", num_epochs=2,
                                  process_index=0, process_count=1)
    batches = list(it)
    assert len(batches) == 2 * data.steps_per_epoch(22, 5) == 8
    ids = [np.rint(b["image"][:, 0, 0, 0] * 255).astype(int) for b in batches]
    epoch1, epoch2 = np.concatenate(ids[:4]), np.concatenate(ids[4:])
    assert len(set(epoch1)) == 20 and len(set(epoch2)) == 20  # no repeats within an epoch
    assert not np.array_equal(epoch1, epoch2)
    # Different seeds give different orders.
    other = next(data.make_train_iterator(ds, global_batch_size=5, seed=2, augment="none",
                                          process_index=0, process_count=1))
    assert not np.array_equal(other["image"], batches[0]["image"])


def test_exact_resume_with_get_set_state():
    ds = _random_dataset()
    kw = dict(global_batch_size=8, seed=11, augment="crop_flip", process_index=1, process_count=2)
    it = data.make_train_iterator(ds, **kw)
    assert isinstance(it, grain.DatasetIterator)
    _take(it, 7)
    state = it.get_state()
    expected = _take(it, 6)
    fresh = data.make_train_iterator(ds, **kw)
    fresh.set_state(state)
    for a, b in zip(_take(fresh, 6), expected):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


@pytest.mark.parametrize("kwargs, field", [
    (dict(global_batch_size=0), "global_batch_size"),
    (dict(global_batch_size=7, process_count=2), "global_batch_size"),
    (dict(global_batch_size=41), "global_batch_size"),
    (dict(process_index=2, process_count=2), "process_index"),
    (dict(augment="mixup"), "augment"),
    (dict(seed=-1), "seed"),
    (dict(num_epochs=0), "num_epochs"),
])
def test_train_iterator_validation(kwargs, field):
    args = dict(global_batch_size=8, seed=0, process_index=0, process_count=1) | kwargs
    with pytest.raises(ValueError, match=field):
        data.make_train_iterator(_random_dataset(), **args)


def test_default_process_layout_from_jax():
    it = data.make_train_iterator(_random_dataset(), global_batch_size=8, seed=0)
    assert next(it)["label"].shape == (8,)  # single process in tests


def test_eval_batches_pad_and_split():
    ds = _ids_dataset(10)
    single = list(data.eval_batches(ds, 4, process_index=0, process_count=1))
    assert len(single) == 3
    assert [b["mask"].sum() for b in single] == [4, 4, 2]
    last = single[-1]
    assert last["image"].shape == (4, 6, 6, 1) and not last["mask"][2:].any()
    assert (last["image"][2:] == 0).all() and (last["label"][2:] == 0).all()
    ids = np.concatenate([b["image"][b["mask"], 0, 0, 0] for b in single]) * 255
    np.testing.assert_allclose(ids, np.arange(10), atol=1e-4)  # in order, each once
    parts = [list(data.eval_batches(ds, 4, process_index=p, process_count=2)) for p in range(2)]
    for step in range(3):
        for key in ("image", "label", "mask"):
            joined = np.concatenate([parts[0][step][key], parts[1][step][key]])
            np.testing.assert_array_equal(joined, single[step][key])
    with pytest.raises(ValueError, match="batch_size"):
        list(data.eval_batches(ds, 3, process_index=0, process_count=2))


def test_steps_per_epoch():
    assert data.steps_per_epoch(60000, 128) == 468
    assert data.steps_per_epoch(10, 20) == 0
    with pytest.raises(ValueError, match="global_batch_size"):
        data.steps_per_epoch(10, 0)


def test_array_dataset_validation():
    with pytest.raises(ValueError, match="uint8"):
        data.ArrayDataset(np.zeros((2, 2, 2, 1), np.float32), np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="same length"):
        data.ArrayDataset(np.zeros((2, 2, 2, 1), np.uint8), np.zeros(3, np.int32))


def test_orbax_checkpoint_roundtrip(tmp_path):
    """The iterator is saved/restored by orbax through grain's checkpoint handler."""
    ocp = pytest.importorskip("orbax.checkpoint")
    ds = _random_dataset()
    kw = dict(global_batch_size=8, seed=4, augment="crop_flip", process_index=0, process_count=1)
    it = data.make_train_iterator(ds, **kw)
    _take(it, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        expected = _take(it, 4)
        fresh = data.make_train_iterator(ds, **kw)
        restore = grain.checkpoint.CheckpointRestore(fresh)
        mngr.restore(3, args=ocp.args.Composite(data_iter=restore))
    for a, b in zip(_take(fresh, 4), expected):
        np.testing.assert_array_equal(a["image"], b["image"])
