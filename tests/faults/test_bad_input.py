"""Bad input gets one clear line: the field, the value and the valid values.

* Every field of both methods' config schemas refuses a wrong-typed value
  (and every numeric field NaN and inf) before anything is built.
* The command lines turn user errors into one line on stderr and exit 1,
  without a traceback; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import math
import os
import stat

import pytest

from advcore import config_files
from advcore.config_schema import ConfigError, flatten, free_form_paths
from faults_helpers import run_cli, train_argv
from ladder_jax import config_schema as ladder_schema
from lbgat_jax import config_schema as lbgat_schema

SCHEMAS = {
    "lbgat": (lbgat_schema, "lbgat/cifar10.py"),
    "ladder": (ladder_schema, "ladder/mnist.py"),
}


def _bad_values(value):
    bad = [None]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bad += [math.nan, math.inf]
    return bad


def _cases():
    for method, (module, name) in SCHEMAS.items():
        for path in module.SCHEMA:
            yield method, path


@pytest.mark.parametrize("method,path", list(_cases()))
def test_every_config_field_refuses_a_bad_value_in_one_line(method, path):
    module, name = SCHEMAS[method]
    config = config_files.get_config(name, lock=False)
    flat = flatten(config, free_form_paths(module.SCHEMA))
    for bad in _bad_values(flat[path]):
        node = config
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        with node.ignore_type():
            node[leaf] = bad
        with pytest.raises(ConfigError) as err:
            module.validate_config(config)
        message = str(err.value)
        assert f"config.{path}" in message and repr(bad) in message, message
        assert "\n" not in message
        with node.ignore_type():
            node[leaf] = flat[path]


def _one_line_error(proc, *needles):
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_training_cli_bad_inputs(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    proc = run_cli(train_argv(workdir, "--config.optim.lr=inf", cache_dir=cache_dir))
    _one_line_error(proc, "config.optim.lr", "inf", "[0, inf)")
    proc = run_cli(train_argv(workdir, "--config.eval.attacks=pgdx", cache_dir=cache_dir))
    _one_line_error(proc, "config.eval.attacks", "pgdx", "valid names")
    assert not (workdir / "checkpoints").exists()  # refused before anything was built
    a_file = tmp_path / "file"
    a_file.write_text("")
    proc = run_cli(train_argv(a_file, cache_dir=cache_dir))
    _one_line_error(proc, str(a_file), "not a directory")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    os.chmod(read_only, stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() != 0:  # root writes anyway
        proc = run_cli(train_argv(read_only / "run", cache_dir=cache_dir))
        _one_line_error(proc, "Permission denied")
    proc = run_cli(train_argv(workdir, "--config.eval.step_size=-0.01", "--debug",
                              cache_dir=cache_dir))
    assert proc.returncode != 0 and "Traceback" in proc.stderr  # --debug shows it


def test_evaluation_cli_bad_inputs(tmp_path, cache_dir):
    evaluate = ["-m", "advcore.evaluate", f"--compilation_cache_dir={cache_dir}"]
    import sys

    missing = tmp_path / "missing"
    proc = run_cli([sys.executable, *evaluate, f"--workdir={missing}"])
    _one_line_error(proc, "no checkpoint found", str(missing))
    assert not missing.exists()
    proc = run_cli([sys.executable, *evaluate, f"--workdir={tmp_path}", "--cpu_devices=-1"])
    _one_line_error(proc, "--cpu_devices", "-1")
    proc = run_cli([sys.executable, *evaluate])
    _one_line_error(proc, "--workdir", "--checkpoint")
    proc = run_cli([sys.executable, *evaluate, "--arch=small_cnn",
                    f"--checkpoint={tmp_path / 'no.pt'}", "--dataset=mnist", "--eps=0.3"])
    _one_line_error(proc, "no.pt")
