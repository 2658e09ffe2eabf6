"""Figures for the reproduction report: training curves, trade-off scatter, logit t-SNE, grids.

Matplotlib with the non-interactive Agg backend (no display is ever needed);
every function writes one PNG and returns its path.

* ``plot_training_curves``: loss, adversarial train accuracy and LR against
  the step, read from each run's ``metrics.jsonl``.
* ``plot_tradeoff``: clean vs robust accuracy, one labelled point per model
  (LBGAT Fig. 1); ``place_labels`` keeps the labels of nearby models apart.
* ``plot_logit_tsne``: 2-D t-SNE of the logits of several models, coloured by
  class (LBGAT Figs. 3-4: TRADES vs LBGAT).
* ``image_grid``: a grid of images with optional titles (LADDER ε grids and
  reconstructions). LADDER's own figure layouts (``ladder_jax.plots``) are
  richer; this is the dataset-agnostic grid the report uses for any images.

``advcore`` must not import the method packages, so nothing here depends on
``ladder_jax``.
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from advcore.metrics import read_metrics  # noqa: E402

# The adversarial train accuracy is logged under different keys by
# different methods (natural training logs only 'train/acc').
_ADV_ACC_KEYS = ("train/adv_acc", "train/acc")
_LOSS_KEYS = ("loss",)
_LR_KEYS = ("lr", "train/lr", "learning_rate")


def _ensure_dir(path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)


def _first_key(record: Mapping, keys: Sequence[str]) -> Optional[str]:
    for k in keys:
        if k in record and isinstance(record[k], (int, float)):
            return k
    return None


def read_curves(workdir: str) -> dict[str, np.ndarray]:
    """``{'step', 'loss', 'adv_acc', 'lr'}`` arrays from ``<workdir>/metrics.jsonl``.

    Only training log lines count (eval lines, which carry ``eval/...`` keys
    and no loss, are skipped). Missing series are empty arrays.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    out: dict[str, list] = {"step": [], "loss": [], "adv_acc": [], "lr": []}
    if not os.path.exists(path):
        return {k: np.asarray(v, float) for k, v in out.items()}
    rows = {}
    for rec in read_metrics(path):
        if _first_key(rec, _LOSS_KEYS) is None:
            continue
        # A resumed run may re-log a step; the last line wins.
        rows[int(rec["step"])] = rec
    for step in sorted(rows):
        rec = rows[step]
        out["step"].append(step)
        out["loss"].append(float(rec["loss"]))
        k = _first_key(rec, _ADV_ACC_KEYS)
        out["adv_acc"].append(float(rec[k]) if k else np.nan)
        k = _first_key(rec, _LR_KEYS)
        out["lr"].append(float(rec[k]) if k else np.nan)
    return {k: np.asarray(v, float) for k, v in out.items()}


def read_eval_curves(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{'<model>/<metric>': (steps, values)}`` of the ``eval/...`` records.

    A run with ``eval_every_epochs`` set logs, at the end of those epochs, the
    clean and robust accuracy (%) of each of its models as
    ``eval/<model>/<metric>``; the final evaluation logs the same keys.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    series: dict[str, dict[int, float]] = {}
    if not os.path.exists(path):
        return {}
    for rec in read_metrics(path):
        for key, value in rec.items():
            if key.startswith("eval/") and isinstance(value, (int, float)) \
                    and not key.endswith(("/n", "/worst_case")):
                series.setdefault(key[len("eval/"):], {})[int(rec["step"])] = float(value)
    return {k: (np.asarray(sorted(v), float), np.asarray([v[s] for s in sorted(v)], float))
            for k, v in series.items()}


def plot_training_curves(workdirs: Mapping[str, str], path: str,
                         title: str = "", dpi: int = 100) -> str:
    """Loss, adversarial train accuracy and LR vs step, one line per run, plus
    the evaluated clean and robust accuracies when the runs logged any.

    Args:
      workdirs: ``{label: workdir}``; runs without ``metrics.jsonl`` are skipped.
      path: output PNG.
    """
    if not workdirs:
        raise ValueError("workdirs must name at least one run, got none")
    _ensure_dir(path)
    evals = {label: read_eval_curves(wd) for label, wd in workdirs.items()}
    has_eval = any(evals.values())
    fig, axes = plt.subplots(1, 4 if has_eval else 3, figsize=(20 if has_eval else 15, 4.2))
    panels = (("loss", "training loss"), ("adv_acc", "train accuracy on x' (x for natural)"),
              ("lr", "learning rate"))
    for label, wd in workdirs.items():
        c = read_curves(wd)
        if not len(c["step"]):
            continue
        for ax, (key, _) in zip(axes, panels):
            y = c[key]
            if key == "adv_acc" and np.nanmax(np.append(y, 0)) <= 1.0:
                y = 100.0 * y  # logged as a fraction
            if np.all(np.isnan(y)):
                continue
            ax.plot(c["step"], y, label=label, lw=1.2)
    if has_eval:
        ax = axes[3]
        for label, series in evals.items():
            for name, (steps, values) in sorted(series.items()):
                style = "-" if name.endswith("/clean") else "--"
                ax.plot(steps, values, style, marker="o", ms=3, lw=1.0,
                        label=f"{label}: {name}")
        ax.set_xlabel("step")
        ax.set_title("evaluated accuracy (%): clean solid, attacks dashed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, frameon=False)
    for ax, (key, name) in zip(axes, panels):
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if key == "loss":
            ax.set_yscale("log")
        if key == "adv_acc":
            ax.set_ylabel("%")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6),
                   fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1 if handles else 0, 1, 1))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


# Candidate label positions around a point, tried in this order: offset in
# points from the point, and which part of the text sits at that offset
# (``ha``). Each ring holds the four diagonal positions, then left, right,
# above and below. Ring 0 sits next to the point; the outer rings, used only
# when the inner ones are taken, get a leader line back to their point
# (``_NEAR_OFFSETS``).
def _ring(ring: int):
    step = 12 * ring
    for dy, sign in ((4 + step, 1), (-11 - step, 1), (4 + step, -1), (-11 - step, -1)):
        yield sign * (5 + step), dy, "left" if sign > 0 else "right"
    yield -(9 + step), -4, "right"
    yield 9 + step, -4, "left"
    yield 0, 8 + step, "center"
    yield 0, -17 - step, "center"


_LABEL_CANDIDATES = tuple(c for ring in range(4) for c in _ring(ring))
_NEAR_OFFSETS = {(dx, dy) for dx, dy, _ in _ring(0)}


def _boxes_overlap(a, b) -> float:
    """Overlap area of two (x0, y0, x1, y1) boxes; 0 when they are disjoint."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def _box_distance(box, point) -> float:
    """Euclidean distance from a point to the nearest part of a box."""
    dx = max(box[0] - point[0], 0.0, point[0] - box[2])
    dy = max(box[1] - point[1], 0.0, point[1] - box[3])
    return math.hypot(dx, dy)


def _segments_cross(p1, p2, q1, q2) -> bool:
    """Whether segments p1-p2 and q1-q2 properly cross (touching ends do not)."""
    def orient(a, b, c):
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    d1, d2 = orient(q1, q2, p1), orient(q1, q2, p2)
    d3, d4 = orient(p1, p2, q1), orient(p1, p2, q2)
    return d1 * d2 < 0 and d3 * d4 < 0


def _segment_hits_box(p, q, box) -> bool:
    """Whether segment p-q passes through the inside of a box (Liang-Barsky)."""
    t0, t1 = 0.0, 1.0
    dx, dy = q[0] - p[0], q[1] - p[1]
    for step, room in ((-dx, p[0] - box[0]), (dx, box[2] - p[0]),
                       (-dy, p[1] - box[1]), (dy, box[3] - p[1])):
        if step == 0:
            if room <= 0:
                return False
            continue
        t = room / step
        if step < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 >= t1:
            return False
    return True


def _leader(box, anchor):
    """The leader line a displaced label gets: its box centre to its point
    (matplotlib draws it from the text's centre, clipped at the text)."""
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), anchor


def place_labels(anchors: Sequence[tuple[float, float]], widths: Sequence[float],
                 height: float, bounds: tuple[float, float, float, float],
                 marker_radius: float = 7.0, rounds: int = 5) -> list[tuple[float, float, str]]:
    """Deterministic label placement for a scatter plot.

    Scatter labels that all sit up-right of their point overprint each
    other as soon as two models land close together (e.g. TRADES α=6 next to
    vanilla AT). Each label takes the candidate position of least cost: its
    box's overlap with other labels and markers, plus a penalty for leaving
    the axes, for sitting nearer another model's point than its own, and for
    a leader line that crosses another leader or runs through another label
    (crossed leaders in a dense cluster pair labels with the wrong points)
    or another model's marker.
    A greedy first pass places the labels in order; then up to ``rounds``
    passes re-place each label against all the others, stopping early when a
    pass moves none (a label placed early cannot see the labels after it).

    Args:
      anchors: the points, in display points (1/72 inch).
      widths: each label's width in points; ``height`` is the text height.
      bounds: the axes box ``(x0, y0, x1, y1)`` in points.
      marker_radius: half the side of the box each marker keeps free.
      rounds: the most refinement passes after the greedy one.

    Returns:
      ``(dx, dy, ha)`` per label: offset in points and horizontal alignment,
      ready for ``Axes.annotate(xytext=(dx, dy), ha=ha)``.
    """
    if len(anchors) != len(widths):
        raise ValueError(f"anchors and widths must have the same length, got "
                         f"{len(anchors)} and {len(widths)}")
    markers = [(x - marker_radius, y - marker_radius, x + marker_radius, y + marker_radius)
               for x, y in anchors]

    def candidates(index):
        (x, y), width = anchors[index], widths[index]
        for dx, dy, ha in _LABEL_CANDIDATES:
            x0 = x + dx - {"left": 0.0, "center": width / 2, "right": width}[ha]
            box = (x0, y + dy, x0 + width, y + dy + height)
            leader = None if (dx, dy) in _NEAR_OFFSETS else _leader(box, (x, y))
            yield (dx, dy, ha), box, leader

    def cost(index, box, leader, others):
        """``others``: (box, leader) of the labels placed so far, self excluded."""
        (x, y), width = anchors[index], widths[index]
        outside = (max(bounds[0] - box[0], 0) + max(box[2] - bounds[2], 0)
                   + max(bounds[1] - box[1], 0) + max(box[3] - bounds[3], 0))
        # A label next to its point (no leader line) but nearer another
        # model's point, by its nearest edge or by its centre (a label
        # between two points is read as either's), reads as that model's
        # label; a displaced label has a leader line to say whose it is.
        misleading = 0
        if leader is None:
            own = _box_distance(box, (x, y))
            centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
            own_centre = math.dist(centre, (x, y))
            misleading = sum(1 for other in anchors if other != (x, y)
                             and (_box_distance(box, other) < own
                                  or math.dist(centre, other) < own_centre))
        tangles = 0
        if leader is not None:  # a leader through another model's marker
            tangles += sum(_segment_hits_box(*leader, m)
                           for i, m in enumerate(markers) if i != index)
        for other_box, other_leader in others:
            if leader is not None:
                tangles += _segment_hits_box(*leader, other_box)
                if other_leader is not None:
                    tangles += _segments_cross(*leader, *other_leader)
            if other_leader is not None:
                tangles += _segment_hits_box(*other_leader, box)
        overlap = sum(_boxes_overlap(box, other_box) for other_box, _ in others)
        overlap += sum(_boxes_overlap(box, m) for i, m in enumerate(markers) if i != index)
        # Leaving the axes is worse than any overlap.
        return overlap + (misleading + tangles) * width * height + outside * 1e6

    def best_choice(index, others):
        best, best_cost = None, None
        for choice, box, leader in candidates(index):
            c = cost(index, box, leader, others)
            if best_cost is None or c < best_cost:
                best, best_cost = (choice, box, leader), c
            if c == 0:
                break
        return best

    placed: list[tuple] = []  # (choice, box, leader) per label
    for index in range(len(anchors)):
        placed.append(best_choice(index, [(b, l) for _, b, l in placed]))
    for _ in range(rounds):
        moved = False
        for index in range(len(anchors)):
            others = [(b, l) for i, (_, b, l) in enumerate(placed) if i != index]
            here = cost(index, placed[index][1], placed[index][2], others)
            choice = best_choice(index, others)
            # Move only for a strictly lower cost of the label's own, so that
            # ties do not shuffle labels; the pass count bounds the loop.
            if choice[0] != placed[index][0] and cost(index, choice[1], choice[2], others) < here:
                placed[index] = choice
                moved = True
        if not moved:
            break
    return [choice for choice, _, _ in placed]


def plot_tradeoff(points: Mapping[str, tuple[float, float]], path: str,
                  xlabel: str = "clean accuracy (%)", ylabel: str = "robust accuracy (%)",
                  title: str = "", highlight: Sequence[str] = (), dpi: int = 100,
                  note: str = "") -> str:
    """Robustness-accuracy scatter (LBGAT Fig. 1): one labelled point per model.

    Args:
      points: ``{label: (clean, robust)}`` in %.
      highlight: labels drawn as red stars (e.g. the LBGAT rows).
      note: a line printed under the axes, e.g. which models were left out.
    """
    # A model not evaluated yet has no numbers (None / NaN): leave it out.
    points = {label: (float(c), float(r)) for label, (c, r) in points.items()
              if c is not None and r is not None and np.isfinite(c) and np.isfinite(r)}
    if not points:
        raise ValueError("points must hold at least one finite (clean, robust) pair, got none")
    _ensure_dir(path)
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    for label, (clean, robust) in points.items():
        star = label in highlight
        ax.scatter([clean], [robust], marker="*" if star else "o",
                   s=160 if star else 50, c="tab:red" if star else "tab:blue",
                   edgecolors="k", linewidths=0.5, zorder=3)
    xs = np.array([p[0] for p in points.values()], float)
    ys = np.array([p[1] for p in points.values()], float)
    pad_x = max(1.0, 0.15 * (xs.max() - xs.min()))
    pad_y = max(1.0, 0.15 * (ys.max() - ys.min()))
    # Room on the right for labels, but not far past 100 %: an axis running
    # to 103 % reads as if such accuracies were possible; labels near the
    # right edge go to the left of their point instead.
    right = min(xs.max() + 2.5 * pad_x, max(100.0, xs.max()) + 0.5 * pad_x)
    ax.set_xlim(xs.min() - pad_x, max(right, xs.max() + 0.5 * pad_x))
    ax.set_ylim(ys.min() - pad_y, ys.max() + pad_y)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, ha="left", va="bottom", color="0.3")
        # Keep the x label clear of the note's line.
        fig.tight_layout(rect=(0.0, 0.03, 1.0, 1.0))
    else:
        fig.tight_layout()
    # Labels are placed after the layout is fixed, in display points.
    fontsize = 8
    to_points = 72.0 / fig.dpi
    anchors = [tuple(ax.transData.transform(p) * to_points) for p in points.values()]
    bbox = ax.get_window_extent()
    bounds = (bbox.x0 * to_points, bbox.y0 * to_points, bbox.x1 * to_points, bbox.y1 * to_points)
    renderer = fig.canvas.get_renderer()
    # Measured text boxes, drawn with va="bottom" so that a label's box runs
    # from its offset up by its height, as place_labels assumes.
    widths, height = [], 0.0
    for label in points:
        probe = ax.text(0, 0, label, fontsize=fontsize, va="bottom")
        extent = probe.get_window_extent(renderer)
        widths.append(extent.width * to_points)
        height = max(height, extent.height * to_points)
        probe.remove()
    offsets = place_labels(anchors, widths, height=height, bounds=bounds)
    for (label, xy), (dx, dy, ha) in zip(points.items(), offsets):
        leader = None if (dx, dy) in _NEAR_OFFSETS else dict(arrowstyle="-", lw=0.5,
                                                                 color="0.4", shrinkB=4)
        ax.annotate(label, xy, textcoords="offset points", xytext=(dx, dy), ha=ha, va="bottom",
                    fontsize=fontsize, arrowprops=leader)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def tsne_embed(logits: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE of ``(N, K)`` logits (sklearn, PCA init, fixed seed)."""
    from sklearn.manifold import TSNE

    logits = np.asarray(logits, np.float32)
    if logits.ndim != 2 or len(logits) < 4:
        raise ValueError(f"logits must be (N >= 4, K), got shape {logits.shape}")
    perplexity = float(min(perplexity, (len(logits) - 1) / 3.0))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                learning_rate="auto")
    return tsne.fit_transform(logits)


def plot_logit_tsne(logits_by_model: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str,
                    title: str = "", seed: int = 0, dpi: int = 100,
                    return_embeddings: bool = False):
    """t-SNE of each model's logits, one panel per model, coloured by label.

    Args:
      logits_by_model: ``{label: (logits (N, K), labels (N,))}``, e.g. TRADES
        and LBGAT logits on the same test images (LBGAT Figs. 3-4).
      return_embeddings: also return ``{label: (N, 2) embedding}``.
    """
    if not logits_by_model:
        raise ValueError("logits_by_model must hold at least one model, got none")
    _ensure_dir(path)
    n = len(logits_by_model)
    fig, axes = plt.subplots(1, n, figsize=(4.8 * n, 4.6), squeeze=False)
    cmap = plt.get_cmap("tab10")
    embeddings = {}
    for ax, (label, (logits, labels)) in zip(axes[0], logits_by_model.items()):
        emb = tsne_embed(logits, seed=seed)
        embeddings[label] = emb
        labels = np.asarray(labels).astype(int)
        for cls in np.unique(labels):
            m = labels == cls
            ax.scatter(emb[m, 0], emb[m, 1], s=4, color=cmap(cls % 10), label=str(cls))
        ax.set_title(label)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, lbls = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, lbls, loc="center right", markerscale=3, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.94, 1))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return (path, embeddings) if return_embeddings else path


def _to_display(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    img = np.clip(img, 0.0, 1.0)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    return img


def image_grid(images: np.ndarray, path: str, nrow: int,
               titles: Optional[Sequence[str]] = None, suptitle: str = "",
               cell_inches: float = 1.2, dpi: int = 100) -> str:
    """Images in a grid of ``nrow`` rows (row-major), each with an optional title.

    Args:
      images: ``(N, H, W, C)`` (C = 1 or 3) or ``(N, H, W)``, uint8 or float in [0, 1].
      nrow: number of rows; the column count is ``ceil(N / nrow)``.
      titles: ``N`` strings (or None).
    """
    images = np.asarray(images)
    if images.ndim not in (3, 4) or len(images) == 0:
        raise ValueError(f"images must be (N, H, W[, C]) with N >= 1, got shape {images.shape}")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"titles must have one entry per image ({len(images)}), "
                         f"got {len(titles)}")
    _ensure_dir(path)
    n = len(images)
    nrow = min(nrow, n)
    ncol = math.ceil(n / nrow)
    fig, axes = plt.subplots(nrow, ncol, figsize=(cell_inches * ncol, cell_inches * nrow
                                                  + (0.3 if suptitle else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        img = _to_display(images[i])
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
