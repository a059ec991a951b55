"""Pictures people would rather look at than logs: training curves."""

from __future__ import annotations

import json
import os

from utils.runtime.checkpoint import write_atomically


def read_jsonl(path: str) -> list[dict]:
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]


def save_figure(figure, path: str, dpi: int) -> str:
    """A matplotlib figure written atomically (a full disk: one line naming ``path``), in the format its
    extension names."""
    kind = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    return write_atomically(path, lambda file: figure.savefig(file, format=kind, dpi=dpi))


def plot_training_curves(log_path: str, png_path: str) -> str:
    """Loss per logged step and rainy-val mAP per epoch from ``training_log.jsonl``, as one PNG."""
    import matplotlib  # here, not at the top: Agg is chosen before pyplot is imported, and only when a picture is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_jsonl(log_path)
    train = [r for r in records if r.get("type") == "train"]
    epochs = [r for r in records if r.get("type") == "epoch" and r.get("val_AP") is not None]
    figure, (loss_axis, map_axis) = plt.subplots(1, 2, figsize=(11, 4))
    loss_axis.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", lw=1)
    loss_axis.set(xlabel="optimizer step", ylabel="detection loss", title="training loss (frozen RT-DETR)")
    loss_axis.grid(alpha=0.3)
    map_axis.plot([r["epoch"] for r in epochs], [r["val_AP"] for r in epochs], "o-", color="tab:green", label="AP")
    map_axis.plot([r["epoch"] for r in epochs], [r["val_AP50"] for r in epochs], "s--", color="tab:olive", label="AP50")
    map_axis.set(xlabel="epoch (0 = before adaptation)", ylabel="COCO mAP", title="rainy validation")
    map_axis.grid(alpha=0.3)
    map_axis.legend()
    figure.tight_layout()
    save_figure(figure, png_path, dpi=110)
    plt.close(figure)
    return png_path
