"""advcore.plots: every figure is a real PNG of the expected size; t-SNE separates clusters."""

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from advcore import plots


def _png_size(path):
    assert os.path.getsize(path) > 1000, "PNG is (nearly) empty"
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        return im.size  # (width, height)


def _close(size, expected):
    """Matplotlib may round a figure dimension down by one pixel."""
    return all(abs(a - b) <= 1 for a, b in zip(size, expected))


def _write_metrics(workdir, n=12, adv_key="train/adv_acc", with_eval=True):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for i in range(1, n + 1):
            f.write(json.dumps({"step": 10 * i, "time": 0.0, "loss": 2.0 / i,
                                adv_key: min(1.0, 0.08 * i), "lr": 0.1 if i < 8 else 0.01})
                    + "\n")
        if with_eval:
            f.write(json.dumps({"step": 10 * n, "eval/x (robust)/clean": 97.0}) + "\n")


def test_training_curves_png(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _write_metrics(a)
    _write_metrics(b, adv_key="train/acc", with_eval=False)
    c = plots.read_curves(a)
    assert len(c["step"]) == 12 and c["lr"][-1] == pytest.approx(0.01)  # eval line skipped
    out = plots.plot_training_curves({"TRADES": a, "natural": b,
                                      "missing": str(tmp_path / "none")},
                                     str(tmp_path / "fig" / "curves.png"), dpi=100)
    # A fourth panel for the evaluated accuracies: figsize (20, 4.2) at 100 dpi.
    assert _close(_png_size(out), (2000, 420))
    assert plots.read_eval_curves(a) == {"x (robust)/clean": pytest.approx(([120.0], [97.0]))}
    out = plots.plot_training_curves({"natural": b}, str(tmp_path / "fig" / "plain.png"),
                                     dpi=100)
    assert _close(_png_size(out), (1500, 420))  # no evaluation logged: three panels


def test_tradeoff_png(tmp_path):
    out = plots.plot_tradeoff({"TRADES (α=6)": (84.9, 56.6), "LBGAT+TRADES (α=0)": (88.2, 57.6),
                               "vanilla AT": (86.8, 52.9)}, str(tmp_path / "t.png"),
                              highlight=["LBGAT+TRADES (α=0)"], dpi=100)
    assert _close(_png_size(out), (640, 500))
    with pytest.raises(ValueError, match="points"):
        plots.plot_tradeoff({}, str(tmp_path / "x.png"))
    # Models not evaluated yet (None / NaN) are left out, not plotted at NaN.
    out = plots.plot_tradeoff({"a": (90.0, 40.0), "b": (None, 30.0), "c": (80.0, float("nan"))},
                              str(tmp_path / "partial.png"), dpi=100)
    assert _close(_png_size(out), (640, 500))
    with pytest.raises(ValueError, match="finite"):
        plots.plot_tradeoff({"b": (float("nan"), 30.0)}, str(tmp_path / "y.png"))
    # A note goes under the axes: same size, and the bottom strip gets ink.
    pts = {"a": (90.0, 40.0), "c": (80.0, 50.0)}
    plain = plots.plot_tradeoff(pts, str(tmp_path / "plain.png"), dpi=100)
    noted = plots.plot_tradeoff(pts, str(tmp_path / "noted.png"), dpi=100,
                                note="Not shown: BGAT (9.7 / 9.7)")
    assert _close(_png_size(noted), (640, 500))

    def bottom_strip_darkest(path):
        return np.asarray(Image.open(path).convert("L"))[-12:, :300].min()

    assert bottom_strip_darkest(plain) > 250 and bottom_strip_darkest(noted) < 200


def _label_box(anchor, width, height, choice):
    dx, dy, ha = choice
    x0 = anchor[0] + dx - {"left": 0.0, "center": width / 2, "right": width}[ha]
    return (x0, anchor[1] + dy, x0 + width, anchor[1] + dy + height)


def test_place_labels_separates_nearby_points_and_stays_inside():
    bounds = (0.0, 0.0, 400.0, 300.0)
    # Two models 3 points apart (TRADES α=6 next to vanilla AT), a third at the
    # right edge whose label cannot go right.
    anchors = [(100.0, 150.0), (103.0, 151.0), (395.0, 100.0)]
    widths = [60.0, 50.0, 40.0]
    choices = plots.place_labels(anchors, widths, height=10.0, bounds=bounds)
    boxes = [_label_box(a, w, 10.0, c) for a, w, c in zip(anchors, widths, choices)]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert plots._boxes_overlap(boxes[i], boxes[j]) == 0.0, (boxes[i], boxes[j])
        assert bounds[0] <= boxes[i][0] and boxes[i][2] <= bounds[2]
    assert plots.place_labels([(100.0, 150.0)], [60.0], 10.0, bounds) == [(5, 4, "left")]
    assert choices[2][2] == "right"      # right edge: the label goes left of its point
    # Labels also keep off other models' markers.
    choices = plots.place_labels([(100.0, 150.0), (120.0, 158.0)], [60.0, 10.0], 10.0, bounds)
    first = _label_box((100.0, 150.0), 60.0, 10.0, choices[0])
    assert plots._boxes_overlap(first, (115.0, 153.0, 125.0, 163.0)) == 0.0
    with pytest.raises(ValueError, match="widths"):
        plots.place_labels([(0.0, 0.0)], [1.0, 2.0], 10.0, bounds)


def test_place_labels_keeps_a_label_from_sitting_between_its_point_and_another():
    # A's label cannot go up-right (C's marker is there). Just below-right it
    # would be 5 points from A by its edge, but its centre would be nearer B
    # (below-right of A) than A, so it would read as B's label: the MNIST
    # cpu60k scatter once labelled TRADES (α=1) "Vanilla AT" that way.
    bounds = (0.0, 0.0, 400.0, 300.0)
    a, b, c = (100.0, 150.0), (134.0, 127.0), (130.0, 159.0)
    choices = plots.place_labels([a, b, c], [50.0, 50.0, 10.0], height=10.0, bounds=bounds)
    box = _label_box(a, 50.0, 10.0, choices[0])
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    assert choices[0] != (5, -11, "left")
    assert math.dist(centre, a) < math.dist(centre, b)
    assert math.dist(centre, a) < math.dist(centre, c)


def _label_defects(anchors, widths, height, choices, radius=7.0):
    """Overlaps (label-label, label-marker), leaders through a label or a
    marker, and crossed leaders, counted over ordered pairs."""
    boxes = [_label_box(a, w, height, c) for a, w, c in zip(anchors, widths, choices)]
    markers = [(x - radius, y - radius, x + radius, y + radius) for x, y in anchors]
    leaders = [None if (c[0], c[1]) in plots._NEAR_OFFSETS else plots._leader(b, a)
               for a, b, c in zip(anchors, boxes, choices)]
    found = []
    for i in range(len(anchors)):
        for j in range(len(anchors)):
            if i == j:
                continue
            if plots._boxes_overlap(boxes[i], boxes[j]) or plots._boxes_overlap(boxes[i], markers[j]):
                found.append(("overlap", i, j))
            if leaders[i] is not None:
                if (plots._segment_hits_box(*leaders[i], boxes[j])
                        or plots._segment_hits_box(*leaders[i], markers[j])):
                    found.append(("leader through", i, j))
                if leaders[j] is not None and plots._segments_cross(*leaders[i], *leaders[j]):
                    found.append(("crossed leaders", i, j))
    return found, leaders


def test_place_labels_refinement_fixes_what_the_greedy_pass_cannot_see():
    # The greedy pass places label 1 before it knows where label 3 goes; a
    # later pass moves it out of the way.
    anchors = [(125.0, 95.0), (103.0, 111.0), (113.0, 80.0), (107.0, 113.0)]
    widths = [48.0, 36.0, 43.0, 43.0]
    bounds = (0.0, 0.0, 300.0, 200.0)
    greedy = plots.place_labels(anchors, widths, 8.0, bounds, rounds=0)
    refined = plots.place_labels(anchors, widths, 8.0, bounds)
    assert _label_defects(anchors, widths, 8.0, greedy)[0]
    assert _label_defects(anchors, widths, 8.0, refined)[0] == []
    assert refined[1] != greedy[1]
    with pytest.raises(ValueError, match="widths"):
        plots.place_labels(anchors, widths[:2], 8.0, bounds)


def test_place_labels_untangles_leader_lines_in_a_dense_cluster():
    # The MNIST cpu60k AA scatter, in display points: eleven models, five of
    # them within 30 points of each other. The greedy placement drew the
    # w/ CE leader through the TRADES (α=1) label and across its leader, and
    # put the KL label over TRADES (α=1)'s marker.
    anchors = [(337.4, 287.1), (285.2, 186.3), (371.2, 283.8), (288.3, 177.9),
               (395.8, 266.8), (322.1, 271.1), (97.9, 75.6), (205.4, 128.9),
               (411.1, 299.5), (377.4, 250.2), (352.8, 251.6)]
    widths = [57.8, 90.3, 38.9, 25.7, 57.8, 14.8, 47.3, 90.3, 21.2, 76.6, 70.2]
    height, bounds, radius = 9.6, (50.9, 42.0, 450.0, 333.1), 7.0
    choices = plots.place_labels(anchors, widths, height, bounds, marker_radius=radius)
    defects, leaders = _label_defects(anchors, widths, height, choices, radius)
    assert defects == []
    assert sum(leader is not None for leader in leaders) >= 2  # the cluster needs some
    for anchor, width, choice in zip(anchors, widths, choices):
        box = _label_box(anchor, width, height, choice)
        assert bounds[0] <= box[0] and box[2] <= bounds[2]


def test_leader_geometry_helpers():
    assert plots._segments_cross((0, 0), (2, 2), (0, 2), (2, 0))
    assert not plots._segments_cross((0, 0), (1, 1), (2, 2), (3, 0))    # apart
    assert not plots._segments_cross((0, 0), (1, 1), (1, 1), (2, 0))    # ends touch
    box = (1.0, 1.0, 2.0, 2.0)
    assert plots._segment_hits_box((0, 0), (3, 3), box)               # through
    assert plots._segment_hits_box((0, 1.5), (1.5, 1.5), box)         # ends inside
    assert not plots._segment_hits_box((0, 0), (3, 0.5), box)         # below
    assert not plots._segment_hits_box((0, 1.5), (0.9, 1.5), box)     # stops short
    assert not plots._segment_hits_box((1.5, 0), (1.5, 0.9), box)     # vertical, short
    assert plots._segment_hits_box((1.5, 0), (1.5, 3), box)           # vertical, through


def test_image_grid_png(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 28, 28, 1), dtype=np.uint8)
    out = plots.image_grid(imgs, str(tmp_path / "g.png"), nrow=2,
                           titles=[f"ε={e}" for e in range(7)], cell_inches=1.0, dpi=100)
    assert _close(_png_size(out), (400, 200))  # 2 rows x ceil(7/2) = 4 columns of 1 inch
    rgb = rng.random((3, 8, 8, 3)).astype(np.float32)
    out = plots.image_grid(rgb, str(tmp_path / "c.png"), nrow=1, dpi=100)
    assert _close(_png_size(out), (360, 120))
    with pytest.raises(ValueError, match="titles"):
        plots.image_grid(imgs, str(tmp_path / "bad.png"), nrow=2, titles=["a"])


def _knn_purity(emb, labels, k=5):
    d = ((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1)[:, :k]
    return float(np.mean(labels[nn] == labels[:, None]))


def test_tsne_separates_two_clusters(tmp_path):
    rng = np.random.default_rng(1)
    n = 60
    # Two clusters in 10-D logit space, far apart relative to their spread.
    a = rng.normal(0.0, 1.0, (n, 10)) + 8.0 * np.eye(10)[0]
    b = rng.normal(0.0, 1.0, (n, 10)) + 8.0 * np.eye(10)[1]
    logits = np.concatenate([a, b]).astype(np.float32)
    labels = np.array([0] * n + [1] * n)
    shuffled = rng.permutation(labels)  # a control that must *not* look separated
    out, emb = plots.plot_logit_tsne({"TRADES": (logits, labels), "LBGAT": (logits, shuffled)},
                                     str(tmp_path / "tsne.png"), dpi=100,
                                     return_embeddings=True)
    assert _close(_png_size(out), (960, 460))
    e = emb["TRADES"]
    assert e.shape == (2 * n, 2)
    # Linear separability along the line joining the two centroids.
    ca, cb = e[labels == 0].mean(0), e[labels == 1].mean(0)
    proj = (e - (ca + cb) / 2) @ (cb - ca)
    assert np.all(proj[labels == 0] < 0) and np.all(proj[labels == 1] > 0)
    assert _knn_purity(e, labels) == 1.0
    assert _knn_purity(emb["LBGAT"], shuffled) < 0.8
