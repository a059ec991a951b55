"""What the utility gate learns from: the frozen detector's loss with and without SPDNet.

    gain: target = 1 when L(x) - L(SPDNet(x)) > margin (SPDNet lowers this image's detection loss)
    soft: the detection loss of g * SPDNet(x) + (1 - g) * x, g = sigmoid(gate logit)

HF RT-DETR normalises its loss over the batch (boxes counted across images), so a per-image loss is
the loss of a batch of one: ``per_image_losses`` takes it from one batched forward where the family
allows (``IntegratedModel.per_image_losses``). Everything here takes
the model as an argument (``IntegratedModel``: ``derain`` and ``detect``) and holds no state.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def per_image_losses(integrated, images: torch.Tensor, labels: Sequence[dict]) -> torch.Tensor:
    """images (B, 3, H, W) in 0-1, ``labels`` B HF target dicts -> (B,) the frozen detector's loss of
    each image alone (as a batch of one), fp32."""
    return integrated.per_image_losses(images, labels)


@torch.no_grad()
def path_losses(integrated, images: torch.Tensor, labels: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, 3, H, W) -> ((B,) loss of each image as it is, (B,) loss of SPDNet's image)."""
    return per_image_losses(integrated, images, labels), per_image_losses(integrated, integrated.derain(images), labels)


def utility_targets(plain: torch.Tensor, derained: torch.Tensor, margin: float) -> torch.Tensor:
    """(B,) losses without and with SPDNet -> (B,) float 1.0 where SPDNet lowers the loss by more
    than ``margin`` (the oracle's choice of path), else 0.0."""
    return (plain - derained > margin).float()


def gain_loss(gate, integrated, images: torch.Tensor, labels: Sequence[dict], margin: float):
    """Binary cross-entropy of the gate's logits (B,) against ``utility_targets`` of ``images``;
    returns (loss, (B,) targets)."""
    targets = utility_targets(*path_losses(integrated, images, labels), margin)
    return F.binary_cross_entropy_with_logits(gate(images).float(), targets), targets


def soft_routing_loss(gate, integrated, images: torch.Tensor, labels: Sequence[dict]):
    """The frozen detector's loss of g * SPDNet(x) + (1 - g) * x, g (B,) = sigmoid(gate(x)); SPDNet's
    image is computed without a graph, so the gradient reaches the gate only. Returns (loss, g)."""
    with torch.no_grad():
        derained = integrated.derain(images)
    g = torch.sigmoid(gate(images).float())
    blend = g.view(-1, 1, 1, 1) * derained + (1.0 - g.view(-1, 1, 1, 1)) * images
    return integrated.detect(blend, labels).loss, g.detach()
