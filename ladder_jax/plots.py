"""Image grids: generator reconstructions (paper Fig. 4) and ε sweeps (Figs. 7, 10).

Matplotlib with the non-interactive Agg backend; inputs are numpy images in
[0, 1] (float) or uint8, NHWC.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from advcore.batching import as_float_images  # noqa: E402


def _as_display(img: np.ndarray) -> np.ndarray:
    img = np.clip(as_float_images(img), 0.0, 1.0)
    return img[..., 0] if img.shape[-1] == 1 else img


def _mosaic(images: np.ndarray, ncols: int) -> np.ndarray:
    """Tiles (N, H, W, C) images into one (rows*H, ncols*W, C) array, 1-px gaps."""
    images = as_float_images(images)
    n, h, w, c = images.shape
    rows = math.ceil(n / ncols)
    out = np.ones((rows * (h + 1) - 1, ncols * (w + 1) - 1, c), np.float32)
    for i in range(n):
        r, q = divmod(i, ncols)
        out[r * (h + 1): r * (h + 1) + h, q * (w + 1): q * (w + 1) + w] = images[i]
    return out


def reconstruction_grid(
    path: str,
    train_images: np.ndarray,
    train_recon: np.ndarray,
    test_images: np.ndarray,
    test_recon: np.ndarray,
    title: str = "",
) -> None:
    """Fig. 4: (a) train originals, (b) their reconstructions, (c)/(d) test."""
    panels = [
        ("(a) train", train_images), ("(b) generated train", train_recon),
        ("(c) test", test_images), ("(d) generated test", test_recon),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(14, 4))
    for ax, (name, imgs) in zip(axes, panels):
        imgs = np.clip(np.asarray(imgs, np.float32), 0.0, 1.0)
        ncols = max(1, int(math.ceil(math.sqrt(len(imgs)))))
        ax.imshow(_as_display(_mosaic(imgs, ncols)), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def eps_sweep_grid(
    path: str,
    originals: np.ndarray,
    generated: np.ndarray,
    eps_values: Sequence[float],
    target_examples: np.ndarray,
    sources: Sequence[int],
    targets: Sequence[int],
    predictions: Optional[np.ndarray] = None,
    title: str = "",
) -> None:
    """Figs. 7/10: original | x_hat at each ε | an example of the target class.

    Args:
      originals: (N, H, W, C) clean inputs.
      generated: (N, E, H, W, C) generated images for the E ε values.
      target_examples: (N, H, W, C) one training image of each row's target.
      predictions: optional (N, E) vanilla predictions, printed under each x_hat.
    """
    n, e = generated.shape[:2]
    fig, axes = plt.subplots(n, e + 2, figsize=(1.2 * (e + 2), 1.35 * n + 0.6),
                             squeeze=False)
    for i in range(n):
        row = [originals[i]] + [generated[i, j] for j in range(e)] + [target_examples[i]]
        for j, img in enumerate(row):
            ax = axes[i, j]
            ax.imshow(_as_display(img), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                if j == 0:
                    ax.set_title("original", fontsize=7)
                elif j == e + 1:
                    ax.set_title("target", fontsize=7)
                else:
                    ax.set_title(f"ε={eps_values[j - 1]:g}", fontsize=7)
            if j == 0:
                ax.set_xlabel(f"y={int(sources[i])}", fontsize=7)
            elif j == e + 1:
                ax.set_xlabel(f"t={int(targets[i])}", fontsize=7)
            elif predictions is not None:
                ax.set_xlabel(f"f={int(predictions[i, j - 1])}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
