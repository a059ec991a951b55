"""What SPDNet's adaptation minimises: a weighted sum of a detection, a feature and a pixel loss.

    loss = DETECTION_LOSS_WEIGHT * RT-DETR's detection loss of SPDNet's output
         + FEATURE_LOSS_WEIGHT   * relative MSE of the frozen detector's encoder features of SPDNet's
                                   output against those of the paired clean image
         + PIXEL_LOSS_WEIGHT     * L1 between SPDNet's output and the paired clean image

The detection loss asks for the image this detector detects best, whatever it looks like; the feature
loss asks SPDNet to give the detector what it would have seen without rain; the pixel loss asks for
the clean picture itself. Feature and pixel losses need the clean original of every training image
(COCO_DIR, same file name as the rainy copy); a clean training image (COCO_RATIO > 0) is its own
pair, so both losses then teach SPDNet to leave clean images alone.

Which features: the detector family's adapter says (utils/models/detector_adapters.py). For RT-DETR,
RT-DETRv2 and D-FINE, the hybrid encoder's three output maps (strides 8, 16, 32;
``encoder_last_hidden_state`` in transformers); for DETR and Conditional DETR, the encoder's output
sequence. They are the memory every decoder query selects from and attends to, so matching
them matches everything the detection head reads, while the backbone stages before them still carry
appearance (texture, colour) that the encoder has learnt to discard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from utils.models.detector_adapters import adapter_of
from utils.runtime.errors import SettingError

LOSS_TERMS = ("detection", "feature", "pixel")


@dataclass(frozen=True)
class Objective:
    """The weights of the three loss terms (0 switches a term off: it is not even computed)."""

    detection: float = 1.0
    feature: float = 0.0
    pixel: float = 0.0

    @classmethod
    def from_weights(cls, detection: float, feature: float, pixel: float) -> "Objective":
        """DETECTION_LOSS_WEIGHT, FEATURE_LOSS_WEIGHT and PIXEL_LOSS_WEIGHT checked: a SettingError
        naming the setting for a negative or non-finite weight, or when all three are 0."""
        weights = {"detection": detection, "feature": feature, "pixel": pixel}
        for term, value in weights.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise SettingError(f"{term.upper()}_LOSS_WEIGHT must be a finite number >= 0, got {value!r}")
        if not any(weights.values()):
            raise SettingError("DETECTION_LOSS_WEIGHT, FEATURE_LOSS_WEIGHT and PIXEL_LOSS_WEIGHT are all 0: "
                               "nothing to train")
        return cls(**{term: float(value) for term, value in weights.items()})

    @property
    def needs_clean_pair(self) -> bool:
        """Whether training must read each image's clean original (feature or pixel loss on)."""
        return self.feature > 0 or self.pixel > 0

    def describe(self) -> str:
        return " + ".join(f"{getattr(self, term):g} x {term}" for term in LOSS_TERMS if getattr(self, term))


def encoder_features(detector: nn.Module, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """The frozen detector's encoder features for (B, 3, H, W) images in 0-1, as its family's adapter
    reads them; RT-DETR: three (B, d_model, H/s, W/s) maps, s = 8, 16, 32 -- what
    ``detector(pixel_values).encoder_last_hidden_state`` holds, without running the decoder (a test
    checks they agree). A family without such features is refused in one line."""
    return adapter_of(detector).encoder_features(detector, pixel_values)


def feature_loss(features: Sequence[torch.Tensor], clean_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over the maps of MSE(features, clean) / mean(clean²): a relative error, so the weight does
    not depend on the detector's feature scale (0 when SPDNet's output gives the clean image's features)."""
    terms = [
        F.mse_loss(feature.float(), clean.float()) / clean.float().pow(2).mean().clamp_min(1e-12)
        for feature, clean in zip(features, clean_features, strict=True)
    ]
    return torch.stack(terms).mean()


def adaptation_loss(
    model: nn.Module, images: torch.Tensor, labels: list[dict], clean: torch.Tensor | None, objective: Objective
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted loss of SPDNet's derained ``images`` and its terms; NaN when the derained batch is not finite.

    Args:
        model: an IntegratedModel (SPDNet trainable, detector frozen in eval mode).
        images: (B, 3, H, W) rainy (or clean) images in 0-1, H and W multiples of 32.
        labels: the HF detection targets of the images.
        clean: (B, 3, H, W) their clean originals in 0-1 (None unless ``objective.needs_clean_pair``).

    Returns:
        (loss, {term: unweighted value}) -- the terms detached, for logging.

    A non-finite derained batch never reaches the detector, whose box matcher raises on NaN boxes:
    the detector sees zeros in its place and the loss is NaN, so that NonFiniteGuard drops the
    micro-batch like any other non-finite loss. ``torch.where`` keeps it free of host syncs, and a
    finite batch goes through unchanged (same values, same gradient). The clean branch runs without
    gradients and without the decoder, and the detector takes one backward pass at most.
    """
    model.check_input_size(images)
    if objective.needs_clean_pair and clean is None:
        raise ValueError("the feature and pixel losses need each image's clean original (clean=None given)")
    derained = model.derain(images)
    finite = torch.isfinite(derained).all()
    detector_input = torch.where(finite, derained, torch.zeros_like(derained))
    terms: dict[str, torch.Tensor] = {}
    if objective.detection:
        outputs = model.detect(detector_input, labels)
        terms["detection"] = outputs.loss.float()
        features = model.adapter.output_features(outputs) if objective.feature else None
    elif objective.feature:
        with torch.autocast(images.device.type, enabled=False):
            features = model.adapter.encoder_features(model.detector, detector_input.float())
    if objective.feature:
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            clean_features = model.adapter.encoder_features(model.detector, clean.float())
        terms["feature"] = feature_loss(features, clean_features)
    if objective.pixel:
        terms["pixel"] = F.l1_loss(derained.float(), clean.float())
    # 1.0 * x == x: detection alone is unchanged
    loss = sum(getattr(objective, term) * value for term, value in terms.items())
    loss = torch.where(finite, loss, torch.full_like(loss, math.nan))
    return loss, {term: value.detach() for term, value in terms.items()}
