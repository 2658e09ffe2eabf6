"""Helpers of the fault-injection suite: real training subprocesses on a tiny run.

Every run here is ``lbgat_jax.main`` on ``lbgat/mnist.py:smoke`` (a 64-image
subset, a tiny SmallCNN pair) for ``STEPS`` steps with a checkpoint every
step, in a fresh Python process on one CPU device, sharing one persistent
compilation cache so that only the first process compiles.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from advcore import checkpoint as ckpt_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS = 4  # 4 steps per epoch on the smoke subset (64 images, batch 16)
STEPS = 4 * EPOCHS


def train_argv(workdir, *extra: str, cache_dir: str) -> list[str]:
    return [sys.executable, "-m", "lbgat_jax.main", "--config=lbgat/mnist.py:smoke,trades",
            f"--workdir={workdir}", f"--config.num_epochs={EPOCHS}",
            "--config.checkpoint_every_steps=1", "--config.log_every_steps=1",
            "--config.final_eval=False", f"--compilation_cache_dir={cache_dir}", *extra]


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(argv, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=timeout)


def start(argv) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def logged_steps(workdir) -> int:
    """The newest step in ``metrics.jsonl`` (0 if none)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    steps = [0]
    with open(path) as f:
        for line in f:
            if line.startswith('{"step": '):
                try:
                    steps.append(int(line.split(",")[0].split(":")[1]))
                except ValueError:
                    pass
    return max(steps)


def wait_until(predicate, proc, timeout=240, poll=0.05) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early (rc {proc.returncode}): "
                                 f"{proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the training process")
        time.sleep(poll)


def final_state(workdir):
    state, _, meta = ckpt_lib.load_raw_state(str(workdir))
    return state, meta["step"]


def assert_same_state(a, b) -> None:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="session")
def reference(tmp_path_factory, cache_dir):
    """An uninterrupted run: the state every interrupted run must end in."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    proc = run_cli(train_argv(workdir, cache_dir=cache_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    state, step = final_state(workdir)
    assert step == STEPS
    return state


SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}
