"""2 processes x 2 CPU devices == 1 process x 4 devices == 1 device.

Two worker processes (``worker.py``) join a ``jax.distributed`` cluster on
127.0.0.1 and run ``multihost_scenario.run_scenario`` over the 4-device global
mesh, while this process runs the same scenario on 4 and on 1 of its own
simulated devices (tests/conftest.py). The LBGAT step's loss and parameters,
the replayed step after a collective checkpoint restore, the PGD evaluation's
accuracies and the per-example logits on PGD examples must agree to 1e-5.

Deselect with ``-m "not multiprocess"`` (it runs by default, and in CI).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from advcore import parallel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import multihost_scenario as scenario  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WORKER_TIMEOUT_S = 300
TOL = dict(rtol=1e-5, atol=1e-5)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_workers(tmp_path, num_processes=2, local_devices=2):
    address = f"127.0.0.1:{free_port()}"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["JAX_PLATFORMS"] = "cpu"
    # The pytest process's XLA_FLAGS may force a device count; workers set theirs.
    env.pop("XLA_FLAGS", None)
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                "ADVCORE_AUTO_DISTRIBUTED"):
        env.pop(var, None)
    procs = []
    for i in range(num_processes):
        log = open(tmp_path / f"worker{i}.log", "w")
        procs.append((subprocess.Popen(
            [sys.executable, os.path.join(HERE, "worker.py"),
             f"--coordinator_address={address}", f"--num_processes={num_processes}",
             f"--process_id={i}", f"--local_devices={local_devices}",
             f"--workdir={tmp_path / 'multi'}", f"--out={tmp_path / f'out{i}.npz'}"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    return procs


def wait_workers(procs, tmp_path):
    failed = []
    try:
        for i, (proc, log) in enumerate(procs):
            try:
                rc = proc.wait(timeout=WORKER_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                rc = "timeout"
            log.close()
            if rc != 0:
                failed.append((i, rc))
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if failed:
        logs = "\n".join(
            f"--- worker {i} (exit {rc}) ---\n"
            + (tmp_path / f"worker{i}.log").read_text()[-4000:] for i, rc in failed)
        pytest.fail(f"multi-process workers failed:\n{logs}")
    return [scenario.load_result(str(tmp_path / f"out{i}.npz")) for i in range(len(procs))]


def assert_same(a: dict, b: dict, what: str):
    params = sorted(k for k in a if k.startswith("params"))
    assert params and params == sorted(k for k in b if k.startswith("params")), what
    for name in ["loss1", "loss2", "adv_logits", *params]:
        np.testing.assert_allclose(a[name], b[name], err_msg=f"{what}: {name}", **TOL)
    for name in ("eval/clean", "eval/pgd2", "eval/worst_case", "eval/n"):
        assert float(a[name]) == float(b[name]), (what, name, a[name], b[name])


@pytest.mark.multiprocess
def test_two_processes_match_one_process_and_one_device(tmp_path):
    if len(jax.devices()) < 4:
        pytest.skip("needs the 4 simulated CPU devices of tests/conftest.py")
    procs = launch_workers(tmp_path)
    try:
        # The references run here while the workers compile.
        four = scenario.run_scenario(str(tmp_path / "four"), parallel.make_mesh(jax.devices()[:4]))
        one = scenario.run_scenario(str(tmp_path / "one"), parallel.make_mesh(jax.devices()[:1]))
    finally:
        multi = wait_workers(procs, tmp_path)

    for r in (four, one, *multi):
        # The checkpoint of step 1 restores bit-exactly and replays step 2 exactly.
        assert bool(r["restore_exact"]) and int(r["restored_step"]) == 1
        assert bool(r["replay_exact"]) and float(r["replay_loss2"]) == float(r["loss2"])
    assert [int(r["process_index"]) for r in multi] == [0, 1]
    assert all(int(r["global_devices"]) == 4 for r in multi)
    # Each process fed only its half of the global batch.
    assert [int(r["local_rows"]) for r in multi] == [scenario.GLOBAL_BATCH // 2] * 2
    assert int(four["local_rows"]) == scenario.GLOBAL_BATCH

    # Both processes hold the same global result.
    assert_same(multi[0], multi[1], "process 0 vs process 1")
    assert_same(multi[0], four, "2 processes x 2 devices vs 1 process x 4 devices")
    assert_same(multi[0], one, "2 processes x 2 devices vs 1 device")
    # The numbers are not trivially equal: two steps changed the loss.
    assert float(four["loss1"]) != float(four["loss2"])

    # Metrics were written once (process 0): one line per logged step.
    lines = scenario.metric_lines(str(tmp_path / "multi"))
    assert [line["step"] for line in lines] == [1, 2], lines
    np.testing.assert_allclose([line["loss"] for line in lines],
                               [four["loss1"], four["loss2"]], **TOL)
    # One collective checkpoint directory, step 1 committed.
    ckpt_dir = tmp_path / "multi" / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir() if not p.name.startswith(".")) == ["1"]
