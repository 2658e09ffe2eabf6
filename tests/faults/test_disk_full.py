"""A full disk gives one line saying so and keeps the previous checkpoint.

Needs a small tmpfs: mounted here when the platform allows it (root with
``mount``), skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from faults_helpers import final_state, run_cli, train_argv


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to create a small tmpfs")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=250k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(small_disk, tmp_path,
                                                                 cache_dir):
    workdir = small_disk / "run"
    # About 95 kB per checkpoint: the disk fills up while saving step 2 or 3.
    proc = run_cli(train_argv(workdir, cache_dir=cache_dir))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "no space left on device" in errors[0]
    assert "the previous checkpoint is kept" in errors[0]
    _, step = final_state(workdir)  # the newest complete checkpoint, verified in full
    assert step >= 1
    # With room again, the same command resumes from it and finishes.
    roomy = tmp_path / "roomy"
    shutil.copytree(workdir, roomy)
    proc = run_cli(train_argv(roomy, cache_dir=cache_dir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"resumed from step {step}" in proc.stderr
