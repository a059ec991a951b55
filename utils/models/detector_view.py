"""What the frozen detector makes of an image, in a form a small head can read: its encoder's feature
maps of the image (``DetectorAdapter.encoder_features``), each pooled to its per-channel mean and
maximum, one (B, D) vector per batch.

Two heads read it (docs/unseen_rain.md): the soft mix's weight m, SPDNet's share of its own output
(``IntegratedModel.derain``: x + m * (SPDNet(x) - x)), and the detector-view gate, which predicts
whether SPDNet lowers the detector's loss on the image. A gate on pixels answers from how its
training rain looks; this view is what the detector itself sees, whatever the weather.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def pooled_view(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Encoder features, maps (B, C, h, w) or sequences (B, N, C), -> (B, 2 * sum C): each one's mean and
    maximum over its positions, concatenated, in fp32."""
    pooled = []
    for feature in features:
        flat = feature.flatten(2) if feature.dim() == 4 else feature.transpose(1, 2)  # (B, C, positions)
        pooled += [flat.float().mean(-1), flat.float().amax(-1)]
    return torch.cat(pooled, dim=1)


@torch.no_grad()
def detector_view(adapter, detector: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in 0-1 -> (B, D) the pooled view of the frozen ``detector``, fp32, no graph."""
    with torch.autocast(images.device.type, enabled=False):
        return pooled_view(adapter.encoder_features(detector, images.float()))


def view_size(adapter, detector: nn.Module) -> int:
    """D, the length of ``detector_view`` (from one forward of a small blank image)."""
    parameter = next(detector.parameters())
    blank = torch.zeros(1, 3, 64, 64, device=parameter.device)
    return detector_view(adapter, detector, blank).shape[1]


class ViewHead(nn.Module):
    """(B, D) detector view -> (B,) logits: a layer-normalised two-layer perceptron (~D * hidden weights);
    each image's logit depends on that image alone, whatever else its batch holds.

    ``initial``: the sigmoid of its output at the start (the final bias; the last layer's weights start
    at zero, so every image starts there)."""

    def __init__(self, in_features: int, hidden: int = 64, initial: float = 0.5):
        super().__init__()
        self.in_features, self.hidden = in_features, hidden
        self.norm = nn.LayerNorm(in_features)
        self.layers = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.constant_(self.layers[-1].bias, math.log(initial / (1.0 - initial)))

    def forward(self, view: torch.Tensor) -> torch.Tensor:
        return self.layers(self.norm(view)).squeeze(1)

    def sizes(self) -> dict:
        """What a weights file records to build it again."""
        return {"in_features": self.in_features, "hidden": self.hidden}
