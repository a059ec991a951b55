"""Pictures of results: detections drawn on images, side-by-side grids, metric bar charts."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torchvision.utils import draw_bounding_boxes

from utils.apps.plots import save_figure

# Infer.py's pictures: detections drawn when their score reaches this (mAP itself uses every score).
DRAW_SCORE_THRESHOLD = 0.5
GROUND_TRUTH_COLOUR, DETECTION_COLOUR = "lime", "yellow"


def draw_detections(
    image: torch.Tensor, detection: Mapping[str, torch.Tensor], id2label: Mapping[int, str],
    threshold: float = DRAW_SCORE_THRESHOLD, top_k: int | None = None, ground_truth: torch.Tensor | None = None,
) -> torch.Tensor:
    """(3, H, W) image in 0-1 plus a post-processed detection in its pixel coordinates -> (3, H, W) uint8.

    Draws the detections scoring at least ``threshold``, or, with ``top_k``, the ``top_k`` best
    whatever their score (``post_process`` sorts them), in yellow with their label and score;
    ``ground_truth`` boxes ((N, 4) x0, y0, x1, y1 pixels) in green underneath, without labels.
    """
    canvas = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    height, width = canvas.shape[-2:]

    def clamped(boxes: torch.Tensor) -> torch.Tensor:
        boxes = boxes.detach().float().cpu().clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width - 1)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height - 1)
        return boxes

    if ground_truth is not None and len(ground_truth):
        canvas = draw_bounding_boxes(canvas, clamped(ground_truth), colors=GROUND_TRUTH_COLOUR, width=1)
    keep = torch.arange(len(detection["scores"])) < top_k if top_k is not None else detection["scores"] >= threshold
    keep = keep.to(detection["scores"].device)
    labels = [
        f"{id2label.get(int(label), str(int(label)))} {float(score):.2f}"
        for label, score in zip(detection["labels"][keep], detection["scores"][keep])
    ]
    if not labels:
        return canvas
    return draw_bounding_boxes(canvas, clamped(detection["boxes"][keep]), labels=labels, colors=DETECTION_COLOUR,
                               width=1)


def save_grid(rows: Sequence[Sequence[torch.Tensor]], column_titles: Sequence[str], path: str,
              caption: str | None = None) -> str:
    """A PNG of uint8 (3, H, W) images, one row per example, one titled column per pipeline, with an
    optional caption underneath."""
    import matplotlib  # here, not at the top: Agg is chosen before pyplot is imported, and only when a picture is drawn

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
    if caption:
        figure.text(0.5, 0.002, caption, ha="center", va="bottom", fontsize=9)
    figure.tight_layout(rect=(0, 0.02 if caption else 0, 1, 1))
    save_figure(figure, path, dpi=100)
    plt.close(figure)
    return path


def save_metric_bars(results: Mapping[str, Mapping[str, Mapping[str, float]]], metrics: Sequence[str],
                     path: str) -> str:
    """Grouped bars: for each split (e.g. 'rainy', 'clean') and metric, one bar per pipeline."""
    import matplotlib  # here, not at the top: Agg is chosen before pyplot is imported, and only when a picture is drawn

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
    save_figure(figure, path, dpi=110)
    plt.close(figure)
    return path
