"""Pictures of results: detections drawn on images, side-by-side grids, metric bar charts."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

# Detections drawn in pictures; scores are not thresholded for mAP, only for the eye.
DRAW_SCORE_THRESHOLD = 0.5


def draw_detections(
    image: torch.Tensor, detection: Mapping[str, torch.Tensor], id2label: Mapping[int, str],
    threshold: float = DRAW_SCORE_THRESHOLD,
) -> torch.Tensor:
    """(3, H, W) image in 0-1 plus a post-processed detection in its pixel coordinates -> (3, H, W) uint8."""
    from torchvision.utils import draw_bounding_boxes

    keep = detection["scores"] >= threshold
    boxes = detection["boxes"][keep].detach().float().cpu()
    labels = [
        f"{id2label.get(int(label), str(int(label)))} {float(score):.2f}"
        for label, score in zip(detection["labels"][keep], detection["scores"][keep])
    ]
    canvas = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    if len(boxes) == 0:
        return canvas
    height, width = canvas.shape[-2:]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height - 1)
    return draw_bounding_boxes(canvas, boxes, labels=labels, colors="yellow", width=2)


def save_grid(rows: Sequence[Sequence[torch.Tensor]], column_titles: Sequence[str], path: str) -> str:
    """A PNG of uint8 (3, H, W) images, one row per example, one titled column per pipeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), len(column_titles)
    figure, axes = plt.subplots(n_rows, n_cols, figsize=(3.2 * n_cols, 3.2 * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            axes[r][c].imshow(image.permute(1, 2, 0).numpy())
            axes[r][c].axis("off")
            if r == 0:
                axes[r][c].set_title(column_titles[c], fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def save_metric_bars(results: Mapping[str, Mapping[str, Mapping[str, float]]], metrics: Sequence[str], path: str) -> str:
    """Grouped bars: for each split (e.g. 'rainy', 'clean') and metric, one bar per pipeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(results)
    figure, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 4), squeeze=False)
    for axis, split in zip(axes[0], splits):
        pipelines = list(results[split])
        width = 0.8 / len(pipelines)
        for index, pipeline in enumerate(pipelines):
            values = [results[split][pipeline][metric] for metric in metrics]
            positions = [m + (index - (len(pipelines) - 1) / 2) * width for m in range(len(metrics))]
            bars = axis.bar(positions, values, width, label=pipeline)
            axis.bar_label(bars, fmt="%.3f", fontsize=7)
        axis.set_xticks(range(len(metrics)), metrics)
        axis.set(ylabel="COCO metric", title=f"{split} validation")
        axis.legend(fontsize=8)
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
