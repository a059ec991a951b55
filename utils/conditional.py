"""The conditional model: a rain gate routes each image to SPDNet + RT-DETR or straight to RT-DETR.

    image -> rain detector -> P(rain) >= threshold ? adapted SPDNet -> RT-DETR : RT-DETR

A batch is split by the gate, each part runs its path, and the outputs are merged back in the input
order. Images gated clean never touch SPDNet, so they get exactly the frozen detector's detections.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from utils.integrated_model import IntegratedModel
from utils.rain_detector import RainDetector


@dataclass
class ConditionalOutput:
    logits: torch.Tensor  # (B, Q, C)
    pred_boxes: torch.Tensor  # (B, Q, 4) normalised cx, cy, w, h
    rain_probability: torch.Tensor  # (B,)
    derained: torch.Tensor  # (B,) bool: which images went through SPDNet
    seconds: dict = field(default_factory=dict)  # gate / rainy path / clean path wall time of this batch


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ConditionalModel(nn.Module):
    """Rain-gated detection. ``route``: "gate" (the detector decides), "always" or "never" derain."""

    def __init__(self, rain_detector: RainDetector, integrated: IntegratedModel):
        super().__init__()
        self.rain_detector = rain_detector
        self.integrated = integrated

    @torch.inference_mode()
    def forward(self, images: torch.Tensor, route: str = "gate") -> ConditionalOutput:
        """images (B, 3, H, W) in 0-1, H and W multiples of 32."""
        if route not in ("gate", "always", "never"):
            raise ValueError(f"route must be 'gate', 'always' or 'never', got {route!r}")
        device = images.device
        seconds = {"gate": 0.0, "rainy_path": 0.0, "clean_path": 0.0}
        _synchronise(device)
        start = time.perf_counter()
        probability = self.rain_detector.probability(images)
        if route == "gate":
            rainy = probability >= self.rain_detector.threshold
        else:
            rainy = torch.full_like(probability, route == "always", dtype=torch.bool)
        _synchronise(device)
        seconds["gate"] = time.perf_counter() - start

        logits = pred_boxes = None
        for derain, mask in ((True, rainy), (False, ~rainy)):
            index = mask.nonzero().squeeze(1)
            if len(index) == 0:
                continue
            start = time.perf_counter()
            outputs = self.integrated(images[index], derain=derain)
            _synchronise(device)
            seconds["rainy_path" if derain else "clean_path"] = time.perf_counter() - start
            if logits is None:
                logits = outputs.logits.new_empty((len(images), *outputs.logits.shape[1:]))
                pred_boxes = outputs.pred_boxes.new_empty((len(images), *outputs.pred_boxes.shape[1:]))
            logits[index] = outputs.logits.to(logits.dtype)
            pred_boxes[index] = outputs.pred_boxes.to(pred_boxes.dtype)
        return ConditionalOutput(logits, pred_boxes, probability, rainy, seconds)
