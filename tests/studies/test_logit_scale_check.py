"""The LBGAT logit-scale diagnostic's statistics match hand-computed values."""

import numpy as np
import pytest

from experiments import lbgat_logit_scale_check as check


def test_logit_stats_norm_margin_and_accuracy_by_hand():
    logits = np.array([[3.0, 4.0, 0.0],    # label 1: margin 4 - 3 = 1, norm 5, correct
                       [2.0, 0.0, 2.0]])   # label 2: ties with class 0, margin 0
    labels = np.array([1, 2])
    stats = check.logit_stats(logits, labels)
    assert stats["logit_norm"] == pytest.approx((5.0 + np.sqrt(8.0)) / 2)
    assert stats["margin"] == pytest.approx((1.0 + 0.0) / 2)
    # np.argmax breaks the tie in row 2 toward class 0, so only row 1 is correct.
    assert stats["accuracy"] == pytest.approx(0.5)


def test_logit_stats_negative_margin_for_misclassified_input():
    stats = check.logit_stats(np.array([[0.0, 5.0]]), np.array([0]))
    assert stats["margin"] == pytest.approx(-5.0)
    assert stats["accuracy"] == 0.0


def test_markdown_marks_missing_parts():
    rows = {"natural": {"label": "Natural",
                        "natural": {"logit_norm": 22.4, "margin": 12.8, "accuracy": 0.99}},
            "lbgat": {"label": "LBGAT",
                      "natural": {"logit_norm": 3.76, "margin": 2.74, "accuracy": 0.98},
                      "robust": {"logit_norm": 4.44, "margin": 3.33, "accuracy": 0.96},
                      "robust_vs_natural_mse": 1.07}}
    md = check.to_markdown(rows, 1000)
    assert "| Natural | 22.40 | 12.80 | – | – | – |" in md
    assert "| LBGAT | 3.76 | 2.74 | 4.44 | 3.33 | 1.07 |" in md


def _row(label, margin):
    return {"label": label, "robust": {"logit_norm": 1.0, "margin": margin, "accuracy": 1.0}}


def test_merge_keeps_committed_rows_the_cache_lacks_and_prefers_measured_ones():
    committed = {"num_examples": 1000,
                 "rows": {"bgat": _row("BGAT", 13.1), "lbgat": _row("LBGAT", 3.3)}}
    measured = {"lbgat": _row("LBGAT", 9.9), "natural": _row("Natural", 12.8)}
    rows = check.merge_rows(measured, committed, 1000)
    # Study order (natural first, BGAT after LBGAT), not insertion order.
    assert list(rows) == ["natural", "lbgat", "bgat"]
    assert rows["lbgat"]["robust"]["margin"] == 9.9  # the cache's model wins
    assert rows["bgat"]["robust"]["margin"] == 13.1  # kept, though not cached


def test_merge_drops_committed_rows_measured_on_another_number_of_images():
    committed = {"num_examples": 500, "rows": {"bgat": _row("BGAT", 13.1)}}
    assert list(check.merge_rows({"lbgat": _row("LBGAT", 3.3)}, committed, 1000)) == ["lbgat"]
    assert list(check.merge_rows({"lbgat": _row("LBGAT", 3.3)}, None, 1000)) == ["lbgat"]
