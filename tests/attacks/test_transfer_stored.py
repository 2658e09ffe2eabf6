"""Black-box transfer and the stored attack-set format."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import basic_attacks_model as tiny
from advcore import attacks
from advcore.attacks import AttackSetError

EPS = 0.11


@pytest.fixture(scope="module")
def models():
    return tiny.logits_fn_for(1), tiny.logits_fn_for(0)  # (source, target)


def test_transfer_is_weaker_than_white_box_and_scored_correctly(models):
    source, target = models
    x, y = tiny.make_data(13, 64)
    attack = attacks.make_attack("pgd10", eps=EPS, step_size=0.03)
    key = tiny.key(0)
    result = attacks.evaluate_transfer(source, target, x, y, key, attack, batch_size=32)

    # Recompute every number by hand, batch by batch with the documented keys.
    @jax.jit
    def manual(xb, yb, kb):
        x_adv, pred = attacks.transfer_attack(source, target, xb, yb, kb, attack)
        x_wb = attack(target, xb, yb, kb)
        return x_adv, pred, jnp.argmax(target(x_wb), -1)

    preds, wb_preds, src_preds = [], [], []
    for i in range(2):
        sl = slice(32 * i, 32 * (i + 1))
        x_adv, pred, wb = manual(x[sl], y[sl], jax.random.fold_in(key, i))
        np.testing.assert_array_equal(pred, tiny.predict(target, x_adv))
        assert float(jnp.max(jnp.abs(x_adv - x[sl]))) <= EPS + 1e-6
        preds.append(pred), wb_preds.append(wb), src_preds.append(tiny.predict(source, x_adv))
    pred, wb, src = (np.concatenate(p) for p in (preds, wb_preds, src_preds))
    assert result["n"] == 64
    assert result["target_transfer"] == pytest.approx((pred == y).mean())
    assert result["source_whitebox"] == pytest.approx((src == y).mean())
    assert result["target_clean"] == pytest.approx(tiny.accuracy(target, x, y))
    assert result["source_clean"] == pytest.approx(tiny.accuracy(source, x, y))
    white_box = (wb == y).mean()
    assert result["source_whitebox"] < 0.7  # the attack is strong on its own model
    assert white_box < 0.7
    assert white_box <= result["target_transfer"] <= result["target_clean"]


def test_transfer_attack_accepts_registry_names(models):
    source, target = models
    x, y = tiny.make_data(13, 8)
    x_adv, pred = jax.jit(lambda x, y, k: attacks.transfer_attack(
        source, target, x, y, k, "fgsm"))(x, y, jax.random.PRNGKey(0))
    assert x_adv.shape == x.shape and pred.shape == (8,)
    with pytest.raises(ValueError, match="unknown attack name"):
        attacks.transfer_attack(source, target, x, y, jax.random.PRNGKey(0), "nope")


# --------------------------------------------------------------------------
# Stored attack sets.
# --------------------------------------------------------------------------


def _example_set(n=6):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (n,) + tiny.SHAPE).astype(np.float32)
    return images, rng.integers(0, 4, n), rng.integers(0, 4, n), np.arange(100, 100 + n)


def _save(directory, image_format="uint8", **kw):
    images, labels, targets, indices = _example_set()
    args = dict(indices=indices, attack="jsma", attack_params={"theta": 1.0, "gamma": 1.0},
                dataset="mnist", split="test", source_model={"name": "lenet", "seed": 0},
                targets=targets, image_format=image_format)
    args.update(kw)
    attacks.save_attack_set(directory, images, labels, **args)
    return images, labels, targets, indices


@pytest.mark.parametrize("image_format", ["uint8", "float32"])
def test_save_load_round_trip(tmp_path, image_format):
    images, labels, targets, indices = _save(tmp_path / "set", image_format)
    loaded = attacks.load_attack_set(tmp_path / "set")
    assert len(loaded) == 6 and loaded.attack == "jsma"
    np.testing.assert_array_equal(loaded.labels, labels)
    np.testing.assert_array_equal(loaded.targets, targets)
    np.testing.assert_array_equal(loaded.indices, indices)
    assert loaded.labels.dtype == np.int32 and loaded.indices.dtype == np.int64
    if image_format == "uint8":
        assert loaded.images.dtype == np.uint8
        np.testing.assert_array_equal(loaded.images, np.rint(images * 255).astype(np.uint8))
        assert np.abs(loaded.float_images() - images).max() <= 0.5 / 255 + 1e-7
    else:
        np.testing.assert_array_equal(loaded.images, images)
        np.testing.assert_array_equal(loaded.float_images(), images)
    meta = loaded.meta
    assert meta["dataset"] == "mnist" and meta["split"] == "test"
    assert meta["attack"]["params"] == {"theta": 1.0, "gamma": 1.0}
    assert meta["source_model"] == {"name": "lenet", "seed": 0}
    assert meta["image_format"] == image_format and meta["num_examples"] == 6
    assert meta["created"] and meta["library_version"]
    assert set(meta["files"]) == {"images", "labels", "targets", "indices"}


def test_modified_array_is_refused(tmp_path):
    _save(tmp_path / "set")
    path = tmp_path / "set" / "labels.npy"
    labels = np.load(path)
    labels[0] = (labels[0] + 1) % 4
    np.save(path, labels)
    with pytest.raises(AttackSetError, match="labels.npy: sha256 mismatch"):
        attacks.load_attack_set(tmp_path / "set")
    # without verification the shape/dtype checks still run, and pass here
    assert attacks.load_attack_set(tmp_path / "set", verify=False).labels[0] == labels[0]


def test_missing_or_inconsistent_sets_are_refused(tmp_path):
    with pytest.raises(AttackSetError, match="meta.json is missing"):
        attacks.load_attack_set(tmp_path / "nothing")
    _save(tmp_path / "a")
    os.remove(tmp_path / "a" / "images.npy")
    with pytest.raises(AttackSetError, match="images.npy is missing"):
        attacks.load_attack_set(tmp_path / "a")
    _save(tmp_path / "b")
    meta_path = tmp_path / "b" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["num_examples"] = 7
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(AttackSetError, match="num_examples"):
        attacks.load_attack_set(tmp_path / "b")


def test_save_validation_and_overwrite(tmp_path):
    images, labels, _, indices = _example_set()
    with pytest.raises(ValueError, match="labels must have shape"):
        attacks.save_attack_set(tmp_path / "x", images, labels[:3], indices=indices, attack="fgsm",
                                dataset="mnist", split="test", source_model="lenet")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attacks.save_attack_set(tmp_path / "x", images * 2, labels, indices=indices,
                                attack="fgsm", dataset="mnist", split="test",
                                source_model="lenet")
    with pytest.raises(ValueError, match="image_format"):
        _save(tmp_path / "y", image_format="png")
    _save(tmp_path / "z")
    with pytest.raises(FileExistsError):
        _save(tmp_path / "z")
    _save(tmp_path / "z", image_format="float32", targets=None, overwrite=True)
    loaded = attacks.load_attack_set(tmp_path / "z")
    assert loaded.targets is None and loaded.images.dtype == np.float32
    assert not (tmp_path / "z" / "targets.npy").exists()
