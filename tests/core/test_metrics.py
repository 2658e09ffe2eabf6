"""metrics.jsonl survives a run killed mid-write and then resumed."""

import json

import numpy as np
import pytest

from advcore import plots
from advcore.metrics import MetricWriter, read_metrics


def test_writer_round_trip_and_non_finite_values(tmp_path):
    writer = MetricWriter(str(tmp_path), enabled=True)
    writer.write(50, {"loss": np.float32(1.5), "acc": np.array(0.25), "bad": float("nan")})
    writer.write(100, {"loss": 0.75})
    records = list(read_metrics(writer.path))
    assert [r["step"] for r in records] == [50, 100]
    assert records[0]["loss"] == 1.5 and records[0]["acc"] == 0.25
    assert records[0]["bad"] == "nan"  # JSON has no NaN literal
    assert records[1]["time"] >= records[0]["time"]


def test_cut_off_line_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 50, "loss": 2.0}) + "\n"
                    + '{"step": 100, "lo\n'      # cut off, then a newline
                    + "[1, 2]\n"                 # valid JSON, but not a record
                    + json.dumps({"step": 150, "loss": 1.0}) + "\n")
    with pytest.warns(UserWarning) as caught:
        records = list(read_metrics(str(path)))
    assert [r["step"] for r in records] == [50, 150]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "metrics.jsonl:2: skipping" in messages[0] and "metrics.jsonl:3:" in messages[1]


def test_resumed_writer_starts_a_new_line_after_a_cut_off_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    # The killed run's last write stopped before its newline.
    path.write_text(json.dumps({"step": 50, "time": 0.0, "loss": 2.0}) + "\n"
                    + '{"step": 100, "time": 1.0, "lo')
    writer = MetricWriter(str(tmp_path), enabled=True)
    writer.write(100, {"loss": 1.5})
    writer.write(150, {"loss": 1.0})
    lines = path.read_text().splitlines()
    assert lines[1] == '{"step": 100, "time": 1.0, "lo'  # kept, on its own line
    with pytest.warns(UserWarning, match="skipping"):
        records = list(read_metrics(str(path)))
    # Without the added newline the resumed step-100 record would be glued to
    # the cut-off line and lost with it.
    assert [(r["step"], r["loss"]) for r in records] == [(50, 2.0), (100, 1.5), (150, 1.0)]


def test_writer_adds_no_blank_line_to_a_whole_file(tmp_path):
    writer = MetricWriter(str(tmp_path), enabled=True)
    writer.write(1, {"loss": 1.0})
    resumed = MetricWriter(str(tmp_path), enabled=True)
    resumed.write(2, {"loss": 0.5})
    assert len(open(writer.path).read().splitlines()) == 2


def test_training_curves_of_a_killed_run(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "lr": 0.1}) + "\n"
                            for s in (50, 100))
                    + '{"step": 150, "loss": 0.0\n'
                    + json.dumps({"step": 150, "loss": 0.5, "lr": 0.1}) + "\n")
    with pytest.warns(UserWarning, match="skipping"):
        curves = plots.read_curves(str(tmp_path))
    np.testing.assert_allclose(curves["step"], [50, 100, 150])
    np.testing.assert_allclose(curves["loss"], [0.02, 0.01, 0.5])
