"""A resumed study run reports the whole training time, not only its last part."""

import json

import pytest

from experiments import lbgat_study


def _write_records(path, times, extra_lines=()):
    with open(path, "w") as f:
        for step, t in enumerate(times):
            f.write(json.dumps({"step": 50 * (step + 1), "time": t, "loss": 1.0}) + "\n")
        for line in extra_lines:
            f.write(line + "\n")


def test_logged_train_seconds_skips_the_gap_of_a_kill(tmp_path):
    path = tmp_path / "metrics.jsonl"
    # 10 s between records, a 980 s kill-and-resume gap, a line cut off by a kill.
    _write_records(path, [0.0, 10.0, 20.0, 1000.0, 1010.0], ['{"step": 300, "ti'])
    # The gap counts as one ordinary (median) interval: 4 intervals of 10 s.
    with pytest.warns(UserWarning, match="cut off"):
        assert lbgat_study.logged_train_seconds(str(path)) == pytest.approx(40.0)


def test_logged_train_seconds_is_none_without_two_records(tmp_path):
    assert lbgat_study.logged_train_seconds(str(tmp_path / "missing.jsonl")) is None
    path = tmp_path / "metrics.jsonl"
    _write_records(path, [5.0])
    assert lbgat_study.logged_train_seconds(str(path)) is None


def test_train_one_adds_the_time_before_a_kill(tmp_path, monkeypatch):
    from lbgat_jax import train

    run = lbgat_study.RUN_BY_KEY["natural"]
    workdir = lbgat_study.run_workdir(str(tmp_path), "mnist", "smoke", "natural")
    (tmp_path / "mnist" / "smoke" / "natural").mkdir(parents=True)
    # A killed run: logged records and no study_train.json.
    _write_records(f"{workdir}/metrics.jsonl", [0.0, 100.0, 200.0])
    monkeypatch.setattr(lbgat_study, "_steps_per_epoch", lambda config: 1)
    monkeypatch.setattr(train, "train_and_evaluate",
                        lambda config, workdir: {"step": 10 ** 6, "eval": {}})
    info = lbgat_study.train_one(run, "mnist", "smoke", str(tmp_path), cpu=True)
    assert info["finished"]
    # 200 s before the kill plus the (instant) resumed part.
    assert 200.0 <= info["train_seconds"] < 200.0 + 60.0
    stored = json.load(open(f"{workdir}/study_train.json"))
    assert stored["train_seconds"] == info["train_seconds"]
