"""The conditional model: a rain gate routes each image to SPDNet + RT-DETR or straight to RT-DETR.

    image -> rain detector -> P(rain) >= threshold ? adapted SPDNet -> RT-DETR : RT-DETR

A batch is split by the gate, each part runs its path, and the outputs are merged back in the input
order. Images gated clean never touch SPDNet, so they get exactly the frozen detector's detections.

Routing "soft" changes only what the gated-rainy images show the detector: g * SPDNet(x) + (1 - g) * x
with g the gate's calibrated P(rain) (sigmoid(logit / T), T fitted on validation data), so an image
the gate is unsure about keeps part of its original. The decision, and the clean path, are those of
"hard" routing, bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from utils.models.integrated_model import IntegratedModel
from utils.models.rain_gate import RainDetector
from utils.runtime.errors import SettingError


@dataclass
class ConditionalOutput:
    logits: torch.Tensor  # (B, Q, C)
    pred_boxes: torch.Tensor  # (B, Q, 4) normalised cx, cy, w, h
    rain_probability: torch.Tensor  # (B,)
    derained: torch.Tensor  # (B,) bool: which images went through SPDNet
    blend: torch.Tensor  # (B,) the weight of SPDNet's image in the detector's input (0: the image itself)
    seconds: dict = field(default_factory=dict)  # gate / rainy path / clean path wall time of this batch


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


ROUTINGS = ("hard", "soft")


class ConditionalModel(nn.Module):
    """Rain-gated detection. ``route``: "gate" (the detector decides), "always" or "never" derain;
    ``routing`` (module docstring): "hard" or "soft", how a gated-rainy image is derained."""

    def __init__(self, rain_detector: RainDetector, integrated: IntegratedModel, routing: str = "hard"):
        super().__init__()
        check_routing(routing)
        self.rain_detector = rain_detector
        self.integrated = integrated
        self.routing = routing

    @torch.inference_mode()
    def forward(self, images: torch.Tensor, route: str = "gate", routing: str | None = None) -> ConditionalOutput:
        """images (B, 3, H, W) in 0-1, H and W multiples of 32; ``routing`` None: the model's own."""
        if route not in ("gate", "always", "never"):
            raise ValueError(f"route must be 'gate', 'always' or 'never', got {route!r}")
        routing = self.routing if routing is None else check_routing(routing)
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

        blend = rainy.float()
        logits = pred_boxes = None
        for derain, mask in ((True, rainy), (False, ~rainy)):
            index = mask.nonzero().squeeze(1)
            if len(index) == 0:
                continue
            start = time.perf_counter()
            if derain and routing == "soft" and route == "gate":
                blend[index] = self.rain_detector.probability(images[index], calibrated=True)
                outputs = self.soft_derain_and_detect(images[index], blend[index])
            else:
                outputs = self.integrated(images[index], derain=derain)
            _synchronise(device)
            seconds["rainy_path" if derain else "clean_path"] = time.perf_counter() - start
            if logits is None:
                logits = outputs.logits.new_empty((len(images), *outputs.logits.shape[1:]))
                pred_boxes = outputs.pred_boxes.new_empty((len(images), *outputs.pred_boxes.shape[1:]))
            logits[index] = outputs.logits.to(logits.dtype)
            pred_boxes[index] = outputs.pred_boxes.to(pred_boxes.dtype)
        return ConditionalOutput(logits, pred_boxes, probability, rainy, blend, seconds)

    def soft_derain_and_detect(self, images: torch.Tensor, weight: torch.Tensor):
        """The detector's output for g * SPDNet(x) + (1 - g) * x, g = ``weight`` (B,)."""
        self.integrated.check_input_size(images)
        g = weight.view(-1, 1, 1, 1).to(images.dtype)
        return self.integrated.detect(g * self.integrated.derain(images) + (1.0 - g) * images)


CONFIDENCE_RULE = "confidence_rule"  # GATE_WEIGHTS that routes by the label-free rule below, not a trained gate


class ConfidenceRule(nn.Module):
    """A label-free router, the baseline a trained gate must beat: derain where the frozen detector is
    surer of SPDNet's image, by the mean of its ``k`` best detection scores, than of the image itself.
    It sees the images only (no targets, nothing trained); its "probability" is that decision, 0 or 1."""

    architecture, threshold, temperature = CONFIDENCE_RULE, 0.5, 1.0

    def __init__(self, integrated: IntegratedModel, k: int = 5):
        super().__init__()
        self._integrated, self.k = (integrated,), k  # the model it reads, not a submodule of its own

    def confidence(self, images: torch.Tensor) -> torch.Tensor:
        """(B,) the mean of the detector's ``k`` best scores on ``images``."""
        integrated = self._integrated[0]
        outputs = integrated.detect(images)
        sizes = torch.tensor([images.shape[-2:]] * len(images), device=images.device)
        detections = integrated.adapter.post_process(outputs.logits, outputs.pred_boxes, sizes, self.k)
        return torch.stack([detection["scores"].float().mean() for detection in detections])

    @torch.no_grad()
    def probability(self, images: torch.Tensor, calibrated: bool = False) -> torch.Tensor:
        derained = self._integrated[0].derain(images)
        return (self.confidence(derained) > self.confidence(images)).float()


def check_routing(routing: str) -> str:
    if routing not in ROUTINGS:
        raise SettingError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    return routing
