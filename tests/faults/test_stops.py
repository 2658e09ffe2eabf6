"""Kills, interrupts, preemption and NaN on real training processes (README "Reliability").

Each case interrupts a real ``lbgat_jax.main`` process and checks, against an
uninterrupted run of the same command, that re-running the command ends in
bit-identical parameters, optimizer state and step.
"""

from __future__ import annotations

import os
import random
import signal
import time

import jax
import numpy as np
import pytest

from advcore.train_loop import EXIT_INTERRUPTED, EXIT_NON_FINITE, EXIT_PREEMPTED
from faults_helpers import (SIGNALS, STEPS, assert_same_state, final_state, logged_steps,
                            run_cli, start, train_argv, wait_until)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_signal_saves_the_current_step_and_the_rerun_continues_exactly(
        name, tmp_path, cache_dir, reference):
    workdir = tmp_path / "run"
    proc = start(train_argv(workdir, cache_dir=cache_dir))
    wait_until(lambda: logged_steps(workdir) >= 3, proc)
    proc.send_signal(SIGNALS[name])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (EXIT_PREEMPTED if name == "SIGTERM" else EXIT_INTERRUPTED), err
    lines = [line for line in err.splitlines() if line.startswith("stopped:")]
    assert len(lines) == 1 and f"{name} received" in lines[0] and "Traceback" not in err
    _, saved_step = final_state(workdir)
    # The current step was saved: the one the message names, at least step 3.
    assert saved_step >= 3 and f"saved at step {saved_step}" in lines[0]
    proc = run_cli(train_argv(workdir, cache_dir=cache_dir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    state, step = final_state(workdir)
    assert step == STEPS
    assert_same_state(state, reference)


def test_kill_9_at_random_points_including_mid_save(tmp_path, cache_dir, reference):
    workdir = tmp_path / "run"
    checkpoints = workdir / "checkpoints"
    rng = random.Random(0)
    kills, saw_mid_save = 0, False

    def saving():
        return checkpoints.is_dir() and any("tmp" in p.name for p in checkpoints.iterdir())

    for attempt in range(12):
        proc = start(train_argv(workdir, cache_dir=cache_dir))
        target = logged_steps(workdir) + rng.randint(1, 3)
        while proc.poll() is None:
            if attempt < 3 and saving():  # the first kills land inside a save
                saw_mid_save = True
                break
            if attempt >= 3 and logged_steps(workdir) >= target:
                break
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=120)
        if proc.returncode == 0:
            break
    assert kills >= 3 and saw_mid_save
    proc = run_cli(train_argv(workdir, cache_dir=cache_dir))  # finishes, or stays finished
    assert proc.returncode == 0, proc.stderr[-2000:]
    state, step = final_state(workdir)
    assert step == STEPS
    assert_same_state(state, reference)
    # Each step is logged once, whatever the kills (records after the resumed
    # checkpoint are dropped before they are logged again).
    steps = [int(line.split(",")[0].split(":")[1]) for line in
             open(workdir / "metrics.jsonl") if line.startswith('{"step": ')]
    assert steps == list(range(1, STEPS + 1))


def test_nan_stops_with_exit_code_3_and_keeps_a_finite_checkpoint(tmp_path, cache_dir):
    workdir = tmp_path / "nan"
    proc = run_cli(train_argv(workdir, "--config.optim.lr=1e6",
                              "--config.checkpoint_every_steps=2", cache_dir=cache_dir))
    assert proc.returncode == EXIT_NON_FINITE, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("stopped:")]
    assert len(lines) == 1 and "newest finite checkpoint was kept" in lines[0]
    assert "Traceback" not in proc.stderr
    state, step = final_state(workdir)  # verified in full
    assert step >= 2 and all(np.all(np.isfinite(np.asarray(x)))
                             for x in jax.tree.leaves(state["robust"]))
    leftovers = [p for p in os.listdir(workdir / "checkpoints") if "tmp" in p]
    assert not leftovers, leftovers  # the in-flight save finished
