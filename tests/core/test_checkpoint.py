"""Checkpoints: round trip, pruning, refusal of mismatched or corrupt ones."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from advcore import checkpoint as ckpt


@struct.dataclass
class State:
    step: jax.Array
    params: dict
    opt_state: optax.OptState


def make_state(shape=(3, 2), seed=0):
    params = {"w": jax.random.normal(jax.random.PRNGKey(seed), shape), "b": jnp.zeros(2)}
    tx = optax.sgd(0.1, momentum=0.9)
    return State(jnp.array(7), params, tx.init(params))


def test_round_trip_and_pruning(tmp_path):
    c = ckpt.Checkpointer(str(tmp_path), {"lr": 0.1, "num_epochs": 3}, max_to_keep=2)
    state = make_state()
    for step in (1, 2, 3):
        c.save(step, state.replace(step=jnp.array(step)), {"position": step})
    c.wait()
    assert c.all_steps() == [2, 3]
    restored, meta = c.restore_latest(make_state(seed=1))
    assert int(restored.step) == 3 and meta["data_iterator"] == {"position": 3}
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state.replace(step=jnp.array(3)))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c.close()


def test_resumable_keys_may_differ_but_others_may_not(tmp_path):
    resumable = ("num_epochs",)
    c = ckpt.Checkpointer(str(tmp_path), {"lr": 0.1, "num_epochs": 3}, resumable=resumable)
    c.save(1, make_state())
    c.close()
    longer = ckpt.Checkpointer(str(tmp_path), {"lr": 0.1, "num_epochs": 30}, resumable=resumable)
    longer.restore_latest(make_state())  # more epochs: fine
    other = ckpt.Checkpointer(str(tmp_path), {"lr": 0.2, "num_epochs": 3}, resumable=resumable)
    with pytest.raises(ckpt.CheckpointMismatchError, match="lr: checkpoint has 0.1, run has 0.2"):
        other.restore_latest(make_state())


def test_other_architecture_is_refused_before_loading(tmp_path):
    c = ckpt.Checkpointer(str(tmp_path), {"a": 1})
    c.save(1, make_state())
    c.wait()
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"\['params'\]\['w'\]"):
        c.restore_latest(make_state(shape=(4, 2)))


def test_corrupt_checkpoint_is_refused(tmp_path):
    c = ckpt.Checkpointer(str(tmp_path), {"a": 1})
    c.save(1, make_state())
    c.wait()
    # Flip bytes in every data file of the state item.
    files = [f for f in glob.glob(str(tmp_path / "1" / "state" / "**" / "*"), recursive=True)
             if os.path.isfile(f) and "/d/" in f]
    assert files
    for f in files:
        raw = bytearray(open(f, "rb").read())
        for i in range(len(raw) // 2, len(raw)):
            raw[i] ^= 0xFF
        open(f, "wb").write(bytes(raw))
    with pytest.raises(ckpt.CheckpointCorruptError):
        c.restore(1, make_state())


def test_load_raw_state_verifies_digest(tmp_path):
    c = ckpt.Checkpointer(str(tmp_path / "checkpoints"), {"model": {"robust": {"name": "x"}}})
    state = make_state()
    c.save(5, state)
    c.close()
    raw, config, meta = ckpt.load_raw_state(str(tmp_path))
    assert meta["step"] == 5 and config["model"]["robust"]["name"] == "x"
    np.testing.assert_array_equal(raw["params"]["w"], np.asarray(state.params["w"]))
