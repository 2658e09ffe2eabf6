"""The host-level AutoAttack driver: stage logs, determinism, resuming, refusals."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aa_tiny_model as tiny
from advcore import parallel
from advcore.attacks.autoattack import autoattack
from advcore.attacks.autoattack_eval import run_autoattack

EPS = tiny.EPS
# Small budgets: the driver's bookkeeping does not depend on them.
BUDGET = dict(num_iters=5, n_queries=40, n_target_classes=3)
STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")


apply_fn = tiny.apply


@pytest.fixture(scope="module")
def data():
    x, y = tiny.make_data(21, 60)
    y = y.copy()
    y[::10] = (y[::10] + 1) % tiny.NUM_CLASSES  # some clean-misclassified points
    return x, y


def _run(params, data, **kw):
    x, y = data
    lines = []
    kw = {"eps": EPS, "batch_size": 16, "key": jax.random.PRNGKey(3), "log": lines.append,
          **BUDGET, **kw}
    return run_autoattack(apply_fn, params, x, y, **kw), lines


@pytest.fixture(scope="module")
def full_run(params, data):
    return _run(params, data)


def test_result_and_reference_log_lines(full_run, params, data):
    result, lines = full_run
    x, y = data
    assert set(result) == {"clean", *STAGES, "robust", "seconds", "n", "robust_flags"}
    assert result["n"] == len(y)
    clean_ok = np.asarray(jnp.argmax(apply_fn(params, x), -1)) == y
    assert result["clean"] == pytest.approx(100 * clean_ok.mean())
    flags = result["robust_flags"]
    assert flags.dtype == bool and flags.shape == (len(y),)
    assert not np.any(flags & ~clean_ok)  # robust points are clean-correct
    accs = [result["clean"]] + [result[s] for s in STAGES]
    assert all(a >= b for a, b in zip(accs, accs[1:]))
    assert result["robust"] == pytest.approx(100 * flags.mean()) == result["square"]
    assert result["robust"] < result["clean"] - 20  # the budget bites
    assert set(result["seconds"]) == {"clean", *STAGES, "total"}
    # The reference's lines: one per stage with its robust accuracy and the
    # cumulative time, plus per-batch counts.
    assert lines[0] == "using standard version including apgd-ce, apgd-t, fab-t, square."
    assert lines[1] == f"initial accuracy: {clean_ok.mean():.2%}"
    after = [m for m in (re.fullmatch(r"robust accuracy after (\S+): ([0-9.]+)% "
                                      r"\(total time ([0-9.]+) s\)", ln) for ln in lines) if m]
    assert [m.group(1) for m in after] == [s.upper() for s in STAGES]
    for m, stage in zip(after, STAGES):
        assert float(m.group(2)) == pytest.approx(result[stage], abs=0.005)
    times = [float(m.group(3)) for m in after]
    assert times == sorted(times)
    n_apgd = int(round(result["clean"] / 100 * len(y)))
    assert f"apgd-ce - 1/{-(-n_apgd // 16)} - " in "\n".join(lines)
    assert lines[-1] == f"robust accuracy: {flags.mean():.2%}"


def test_deterministic_for_a_key(full_run, params, data):
    again, _ = _run(params, data)
    np.testing.assert_array_equal(again["robust_flags"], full_run[0]["robust_flags"])
    other, _ = _run(params, data, key=jax.random.PRNGKey(4))
    assert other["clean"] == full_run[0]["clean"]


def test_deterministic_stage_matches_the_jitted_cascade(params, data):
    """FAB-T with one restart draws nothing random, so packing the robust
    points into batches must not change which points it breaks."""
    x, y = data
    result, _ = _run(params, data, attacks_to_run=("fab-t",))
    _, details = jax.jit(lambda p, x, y: autoattack(
        lambda z: apply_fn(p, z), x, y, jax.random.key(0), eps=EPS, attacks_to_run=("fab-t",),
        return_details=True, **BUDGET))(params, jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_array_equal(result["robust_flags"], np.asarray(details["robust"]))


class _Stop(Exception):
    pass


def _stop_after(pattern):
    lines = []

    def log(line):
        lines.append(line)
        if re.search(pattern, line):
            raise _Stop(line)

    return log, lines


@pytest.mark.parametrize("stop_at,every_batch", [
    (r"robust accuracy after APGD-T", False),  # between stages
    (r"fab-t - 2/", True),                      # inside a stage, after its 2nd batch
])
def test_interrupted_run_resumes_bit_identically(stop_at, every_batch, params, data, tmp_path):
    uninterrupted, _ = _run(params, data, batch_size=4)
    path = str(tmp_path / "state.json")
    log, _ = _stop_after(stop_at)
    with pytest.raises(_Stop):
        _run(params, data, state_path=path, log=log, save_every_batch=every_batch, batch_size=4)
    state = json.load(open(path))
    assert state["finished"] == ["apgd-ce", "apgd-t"]
    if every_batch:
        assert state["current"]["stage"] == "fab-t" and state["current"]["batches_done"] == 2
    assert [f for f in os.listdir(tmp_path) if f != "state.json"] == []  # no temp files left
    resumed, lines = _run(params, data, state_path=path, batch_size=4)
    assert "apgd-ce, apgd-t was/were already run." in lines
    assert not any(ln.startswith("apgd-ce - ") for ln in lines)  # finished stages not redone
    if every_batch:  # the stage goes on after its 2nd batch
        assert not any(ln.startswith(("fab-t - 1/", "fab-t - 2/")) for ln in lines)
    np.testing.assert_array_equal(resumed["robust_flags"], uninterrupted["robust_flags"])
    for name in ("clean",) + STAGES:
        assert resumed[name] == uninterrupted[name]
    # A finished state resumes to the same numbers without attacking again.
    again, lines = _run(params, data, state_path=path, batch_size=4)
    assert not any(" successfully perturbed" in ln for ln in lines)
    np.testing.assert_array_equal(again["robust_flags"], uninterrupted["robust_flags"])


def test_state_from_another_setting_is_refused(params, data, tmp_path):
    path = str(tmp_path / "state.json")
    _run(params, data, state_path=path, attacks_to_run=("apgd-ce",))
    x, y = data
    with pytest.raises(ValueError, match=r"another evaluation setting \(eps: saved 0.03, now 0.05"):
        _run(params, data, state_path=path, attacks_to_run=("apgd-ce",), eps=0.05)
    with pytest.raises(ValueError, match=r"\(n: saved 60, now 59; data: saved"):
        run_autoattack(apply_fn, params, x[:59], y[:59], eps=EPS, state_path=path, log=None,
                       attacks_to_run=("apgd-ce",), key=jax.random.PRNGKey(3), **BUDGET)
    with pytest.raises(ValueError, match=r"key: saved \["):
        _run(params, data, state_path=path, attacks_to_run=("apgd-ce",),
             key=jax.random.PRNGKey(9))
    with pytest.raises(ValueError, match=r"\(attacks: saved"):
        _run(params, data, state_path=path)  # the full standard list
    with pytest.raises(ValueError, match=r"\(norm: saved \"linf\", now \"l2\"; attacks"):
        _run(params, data, state_path=path, attacks_to_run=("apgd-ce",), norm="l2")
    other = jax.tree.map(lambda a: a * 1.01, params)
    with pytest.raises(ValueError, match=r"\(model: saved"):
        run_autoattack(apply_fn, other, x, y, eps=EPS, state_path=path, log=None,
                       attacks_to_run=("apgd-ce",), batch_size=16, key=jax.random.PRNGKey(3),
                       **BUDGET)
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="not a valid AutoAttack state file"):
        _run(params, data, state_path=path, attacks_to_run=("apgd-ce",))


def test_bad_arguments_and_skipping(params, data):
    x, y = data
    with pytest.raises(ValueError, match="norm 'l3' is not defined"):
        run_autoattack(apply_fn, params, x, y, eps=EPS, norm="l3")
    with pytest.raises(ValueError, match="version 'fast' is not defined"):
        run_autoattack(apply_fn, params, x, y, eps=EPS, version="fast")
    with pytest.raises(ValueError, match="batch_size"):
        run_autoattack(apply_fn, params, x, y, eps=EPS, batch_size=0)
    with pytest.raises(ValueError, match="same length"):
        run_autoattack(apply_fn, params, x[:5], y, eps=EPS)
    # A huge budget breaks everything at once: later stages are skipped, as
    # in the reference, and reported at 0 %.
    result, lines = _run(params, data, eps=0.5, attacks_to_run=("apgd-ce", "square"))
    assert result["apgd-ce"] == result["square"] == result["robust"] == 0.0
    assert "no robust datapoints left, skipping remaining attacks" in lines
    assert result["seconds"]["square"] == 0.0


def test_runs_per_device_shard(params, data):
    """With one device the per-shard keys differ from 4 devices' (as
    ``advcore.evaluate`` documents); accuracies stay in the same range."""
    one = parallel.make_mesh(jax.devices()[:1])
    result, _ = _run(params, data, mesh=one)
    assert result["clean"] == pytest.approx(90.0)
    assert result["robust"] < 70.0
