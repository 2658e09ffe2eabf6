"""The library installs and works outside its checkout.

Builds the wheel, installs it with its declared dependencies into a fresh
virtual environment, and from a directory outside the checkout: imports the
attacks, runs ``pgd`` and ``aa_standard`` on a tiny model of its own, and runs
one smoke training run through the ``lbgat-train`` console script (its config
named ``lbgat/mnist.py:smoke``, found in the installed data files).

Dependencies come from the package index pip is configured with; after
``scripts/setup.sh`` they are in pip's cache, so nothing large is downloaded
twice. Marked ``install``: deselect with ``-m 'not install'``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.install

USER_SCRIPT = textwrap.dedent("""
    import os, sys
    import jax, jax.numpy as jnp
    import advcore
    from advcore.attacks import make_attack, pgd
    assert os.path.dirname(advcore.__file__).startswith(sys.prefix), advcore.__file__
    assert not os.path.exists(os.path.join(os.getcwd(), "advcore"))

    # A tiny model of the user's own: a linear classifier on 4x4x1 images.
    w = jax.random.normal(jax.random.PRNGKey(0), (16, 10))
    logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
    x = jax.random.uniform(jax.random.PRNGKey(1), (8, 4, 4, 1))
    y = jnp.argmax(logits_fn(x), axis=-1)
    x_pgd = jax.jit(lambda x, y, k: pgd(logits_fn, x, y, k, eps=0.1, step_size=0.02,
                                        num_steps=10))(x, y, jax.random.PRNGKey(2))
    assert float(jnp.max(jnp.abs(x_pgd - x))) <= 0.1 + 1e-6
    aa = make_attack("aa_standard", eps=0.1, num_steps=5, n_queries=20)
    x_aa = jax.jit(lambda x, y, k: aa(logits_fn, x, y, k))(x, y, jax.random.PRNGKey(3))
    assert float(jnp.max(jnp.abs(x_aa - x))) <= 0.1 + 1e-6
    robust = float(jnp.mean(jnp.argmax(logits_fn(x_aa), -1) == y))
    print("attacks ok", robust)
""")


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("install")
    # Built from a copy of the sources: setuptools writes build/ next to them.
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "runs", "__pycache__", "experiments"))
    dist = root / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
                    str(source)], check=True, cwd=root)
    wheel = next(dist.glob("boundary_guided_at-*.whl"))
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", str(wheel)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return env_dir


def _run(cmd, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_attacks_run_from_outside_the_checkout(venv, tmp_path):
    proc = _run([str(venv / "bin" / "python"), "-c", USER_SCRIPT], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "attacks ok" in proc.stdout


def test_smoke_training_through_the_console_script(venv, tmp_path):
    workdir = tmp_path / "run"
    proc = _run([str(venv / "bin" / "lbgat-train"), "--config=lbgat/mnist.py:smoke",
                 f"--workdir={workdir}", "--config.final_eval=False"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (workdir / "checkpoints").is_dir() and (workdir / "metrics.jsonl").is_file()
    # LADDER's configs resolve from the installed data files too: a stage run
    # alone on an empty workdir refuses its missing input in one line.
    proc = _run([str(venv / "bin" / "ladder-run"), "--config=ladder/mnist.py:smoke",
                 "--stage=svm", f"--workdir={tmp_path / 'ladder'}"], cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "needs" in proc.stderr and "latents" in proc.stderr
    # A bad config name is one line, not a traceback.
    proc = _run([str(venv / "bin" / "lbgat-train"), "--config=lbgat/mnits.py",
                 f"--workdir={workdir}"], cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "valid names:" in proc.stderr and "lbgat/mnist.py" in proc.stderr


@pytest.mark.parametrize("script,own_flag", [
    ("lbgat-train", "--config"), ("ladder-run", "--stage"),
    ("advcore-evaluate", "--attacks"), ("advcore-collect", "--workdir")])
def test_console_script_help_lists_its_flags(venv, tmp_path, script, own_flag):
    # absl's --help lists the main module's flags; a console script's main
    # module is pip's wrapper, so the library adopts them (advcore.cli.run).
    proc = _run([str(venv / "bin" / script), "--help"], cwd=tmp_path)
    assert own_flag + ":" in proc.stdout, proc.stdout[-2000:]
    assert "--[no]debug:" in proc.stdout and "--cpu_devices:" in proc.stdout
