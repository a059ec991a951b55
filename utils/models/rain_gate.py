"""The rain gate: a small image classifier that returns P(rain) for each image.

It looks at a downscaled copy of the image (rain streaks and haze survive downscaling well enough to
be seen at 224 px), so it costs a few milliseconds next to SPDNet's full-resolution pass. Its decision
threshold is chosen on validation data by Training_Rain_Detector.py and saved with the weights, with a
calibration temperature T fitted on the same data: ``probability(images, calibrated=True)`` is
sigmoid(logit / T), the P(rain) soft routing blends with. T changes no decision: the threshold stays on
the uncalibrated probability.

ARCHITECTURE "detector_view" sees no pixels: it reads the frozen detector's encoder features of the
image at the detector's own input size (utils/models/detector_view.py), so it needs that detector
(``detector``); its file holds only its head. Training_Utility_Gate.py trains it on "does SPDNet lower
this image's detector loss".

Its training data (utils/data/gate_data.py), metrics (utils/training/gate_metrics.py) and trainer
(utils/apps/gate_training.py) live in the layers above.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from utils.models.detector_adapters import adapter_of
from utils.models.detector_view import ViewHead, detector_view, view_size
from utils.runtime.checkpoint import load_weights_file
from utils.runtime.errors import DataError, SettingError

VIEW = "detector_view"  # the architecture that reads the frozen detector instead of the pixels
ARCHITECTURES = ("small_cnn", "mobilenet_v3_small", "resnet18", VIEW)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def small_cnn() -> nn.Module:
    """Five stride-2 conv blocks and a global pool: ~100k parameters, enough to see streaks and haze."""
    layers, channels = [], 3
    for width in (16, 32, 64, 96, 128):
        layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 1))


def build_backbone(architecture: str, imagenet_weights: str | None = None) -> nn.Module:
    """A one-logit classifier; torchvision models may start from ImageNet weights in a local file."""
    if architecture == "small_cnn":
        if imagenet_weights:
            raise SettingError("small_cnn has no ImageNet weights; use mobilenet_v3_small or resnet18")
        return small_cnn()
    if architecture not in ARCHITECTURES:
        raise SettingError(f"rain detector architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    model = getattr(torchvision.models, architecture)(weights=None)
    if imagenet_weights:
        state_dict = load_weights_file(imagenet_weights, "IMAGENET_WEIGHTS")
        try:
            model.load_state_dict(state_dict)
        except (RuntimeError, TypeError) as error:
            detail = str(error).strip().splitlines()[0]
            raise DataError(f"IMAGENET_WEIGHTS: {imagenet_weights!r} is not a torchvision {architecture} state dict "
                            f"({detail})") from None
    if architecture == "resnet18":
        model.fc = nn.Linear(model.fc.in_features, 1)
    else:
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, 1)
    return model


class RainDetector(nn.Module):
    """images (B, 3, H, W) in 0-1, any size -> rain logits (B,). ``probability`` gives P(rain)."""

    def __init__(self, architecture: str = "small_cnn", input_size: int = 224, threshold: float = 0.5,
                 imagenet_weights: str | None = None, temperature: float = 1.0, detector: nn.Module | None = None):
        super().__init__()
        self.architecture = architecture
        self.input_size = input_size
        self.threshold = threshold
        self.temperature = temperature
        # the frozen detector a detector-view gate reads: held outside the module tree (not saved, not trained)
        self._view = None
        if architecture == VIEW:
            if detector is None:
                raise SettingError("ARCHITECTURE='detector_view' reads the frozen detector's view of each image: "
                                   "train it with Training_Utility_Gate.py, which loads DETECTOR")
            if imagenet_weights:
                raise SettingError("detector_view has no ImageNet weights: set IMAGENET_WEIGHTS=None")
            self._view = (adapter_of(detector), detector)
            self.backbone = ViewHead(view_size(*self._view))
        else:
            self.backbone = build_backbone(architecture, imagenet_weights)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self._view is not None:
            return self.backbone(detector_view(*self._view, images))
        small = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return self.backbone((small - self.mean) / self.std).squeeze(1)

    @torch.no_grad()
    def probability(self, images: torch.Tensor, calibrated: bool = False) -> torch.Tensor:
        """(B,) P(rain) in 0-1; ``calibrated``: sigmoid(logit / temperature), fitted on validation data."""
        logits = self(images).float()
        return torch.sigmoid(logits / self.temperature if calibrated else logits)

    @torch.no_grad()
    def is_rainy(self, images: torch.Tensor) -> torch.Tensor:
        """(B,) bool: P(rain) at or above the saved threshold."""
        return self.probability(images) >= self.threshold

    def checkpoint(self, **metadata) -> dict:
        return {
            "state_dict": self.state_dict(), "architecture": self.architecture, "input_size": self.input_size,
            "threshold": float(self.threshold), "temperature": float(self.temperature), **metadata,
        }


def load_rain_detector(path: str, detector: nn.Module | None = None) -> RainDetector:
    """A RainDetector saved by Training_Rain_Detector.py (or Training_Utility_Gate.py), in eval mode, with
    its chosen threshold and calibration temperature (1, no calibration, for files saved before
    calibration existed). ``detector``: the frozen detector a detector-view gate reads."""
    checkpoint = load_weights_file(path, "GATE_WEIGHTS")
    missing = [key for key in ("state_dict", "architecture", "input_size", "threshold") if key not in checkpoint]
    if missing:
        raise DataError(f"GATE_WEIGHTS: {path} is not a rain detector checkpoint: "
                        f"missing {', '.join(missing)}")
    model = RainDetector(checkpoint["architecture"], checkpoint["input_size"], checkpoint["threshold"],
                         temperature=checkpoint.get("temperature", 1.0), detector=detector)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
