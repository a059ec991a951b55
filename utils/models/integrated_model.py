"""SPDNet in front of a frozen detector (RT-DETR or another family), differentiable end to end.

    pixel_values (B, 3, H, W) in 0-1 -> x255 -> SPDNet -> out3 / 255, clamp to 0-1
        -> the detector's adapter (its image processor as a torch function) -> detector

The detection loss of the detector backpropagates through the frozen detector into SPDNet, so SPDNet learns
to produce the images this detector detects best, while the detector itself never changes: clean
images sent past SPDNet (``derain=False``) get exactly the detections of the original detector.

With a mix head (SOFT_MIX) SPDNet's output is mixed with its input, x + m * (SPDNet(x) - x), m in (0, 1)
per image from a small head on the frozen detector's view of x (utils/models/detector_view.py), trained
with SPDNet by the same loss: a derainer that learns to leave alone what it would harm.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import nn

from utils.models.detector import detector_fingerprint, freeze
from utils.models.detector_adapters import DetectorAdapter, adapter_of
from utils.models.detector_view import detector_view
from utils.runtime.errors import SettingError

# RT-DETR's backbone downsamples by 32 and its encoder needs whole feature-map cells; the image size
# every script checks (IMAGE_SIZE), whatever the family (an adapter may accept more: size_multiple).
SIZE_MULTIPLE = 32


def check_image_size(image_size: int) -> None:
    """IMAGE_SIZE refused in one line unless it is a multiple of SIZE_MULTIPLE (every script that sizes
    the detector's input checks it before any work)."""
    if image_size % SIZE_MULTIPLE:
        raise SettingError(
            f"IMAGE_SIZE must be a multiple of {SIZE_MULTIPLE} (the detector's input), got {image_size}"
        )


def check_detector_input_size(pixel_values: torch.Tensor, multiple: int = SIZE_MULTIPLE,
                              title: str = "RT-DETR") -> None:
    """Raise a ValueError unless ``pixel_values`` is (B, 3, H, W) with H and W multiples of ``multiple``."""
    if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
        raise ValueError(f"pixel_values must be (B, 3, H, W), got shape {tuple(pixel_values.shape)}")
    height, width = pixel_values.shape[-2:]
    if height % multiple or width % multiple:
        raise ValueError(
            f"{title} needs height and width that are multiples of {multiple}, got {height}x{width}: "
            f"resize the images (e.g. IMAGE_SIZE=640) before the model"
        )


class IntegratedModel(nn.Module):
    """SPDNet (trainable) followed by an HF object detector (frozen by default).

    The detector is held as an attribute, not subclassed: transformers chooses the loss function
    from the model's class name.
    """

    def __init__(self, spdnet: nn.Module, detector: nn.Module, freeze_detection: bool = True,
                 channels_last: bool = False):
        super().__init__()
        self.spdnet = spdnet
        self.detector = detector
        self.mix_head: nn.Module | None = None  # SOFT_MIX's head, set by whoever builds or loads one
        self.freeze_detection = freeze_detection
        self.adapter: DetectorAdapter = adapter_of(detector)  # preprocessing, loss forward, post-processing
        # SPDNet is all 3x3 convolutions on full-resolution maps: NHWC is what oneDNN and cuDNN's
        # fastest kernels (bf16 above all) want, so keep its weights and its input in that layout.
        self.channels_last = channels_last
        if channels_last:
            spdnet.to(memory_format=torch.channels_last)
        if freeze_detection:
            freeze(detector)

    def train(self, mode: bool = True) -> "IntegratedModel":
        # A frozen detector must stay in eval mode: its 46 BatchNorm2d layers outside the backbone
        # would otherwise update their running statistics (requires_grad=False does not stop that),
        # silently changing clean-image detections; eval mode also skips the denoising queries.
        super().train(mode)
        if self.freeze_detection:
            self.detector.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the optimizer should update: SPDNet's (and the detector's only if unfrozen)."""
        return (parameter for parameter in self.parameters() if parameter.requires_grad)

    def derain(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """SPDNet's derained image. (B, 3, H, W) in 0-1 -> (B, 3, H, W) in 0-1."""
        scaled = pixel_values * 255.0
        if self.channels_last:
            scaled = scaled.contiguous(memory_format=torch.channels_last)
        out3, _, _ = self.spdnet(scaled)
        # Under bf16 autocast out3 is bf16; the division and clamp in fp32 keep the image at out3's
        # precision instead of rounding 0-1 values to bf16's 1/256 steps (a full grey level).
        derained = (out3.float() / 255.0).clamp(0.0, 1.0)
        if self.mix_head is None:
            return derained
        m = self.mix_weight(pixel_values).view(-1, 1, 1, 1)
        return pixel_values.float() + m * (derained - pixel_values.float())

    def mix_weight(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B,) m in (0, 1), SPDNet's share of the derained image (the mix head on the detector's view)."""
        with torch.autocast(pixel_values.device.type, enabled=False):
            return torch.sigmoid(self.mix_head(detector_view(self.adapter, self.detector, pixel_values)))

    def detect(self, pixel_values: torch.Tensor, labels: Sequence[dict] | None = None):
        """The detector (and its loss, given labels) in fp32, also inside a bf16 autocast region.

        PRECISION='bf16' is for SPDNet, ~95% of a step's FLOPs. The detector in bf16 saved little and
        cost much (measured; docs/performance.md, "What PRECISION=bf16 does"): its 0-1 input rounds to 1/256
        steps, its top-k query selection and Hungarian matching flip, and the loss moved by up to 18%
        on a test batch. In fp32 the loss and the gradient SPDNet learns from are the fp32 ones for
        the image SPDNet made, and clean images get bit-identical detections whatever PRECISION is.
        """
        with torch.autocast(pixel_values.device.type, enabled=False):
            return self.adapter.forward(self.detector, pixel_values.float(), labels)

    def per_image_losses(self, pixel_values: torch.Tensor, labels: Sequence[dict]) -> torch.Tensor:
        """(B,) the frozen detector's loss of each image alone, in fp32 (as ``detect``), computed in batches
        where the family allows (``DetectorAdapter.per_image_losses``)."""
        with torch.autocast(pixel_values.device.type, enabled=False):
            return self.adapter.per_image_losses(self.detector, pixel_values.float(), labels).float()

    def check_input_size(self, pixel_values: torch.Tensor) -> None:
        """A ValueError unless (B, 3, H, W) with H and W multiples of the detector family's size multiple."""
        check_detector_input_size(pixel_values, self.adapter.size_multiple, self.adapter.title)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: Sequence[dict] | None = None,
        derain: bool = True,
    ):
        """Detect objects, after deraining unless ``derain=False``.

        Args:
            pixel_values: (B, 3, H, W) images in 0-1, H and W multiples of 32 (RT-DETR).
            labels: optional HF detection targets, one dict per image with ``class_labels`` (N,) int64
                in 0..num_labels-1 and ``boxes`` (N, 4) normalised (cx, cy, w, h).
            derain: False sends ``pixel_values`` straight to the detector (through its adapter).

        Returns:
            The detector's output (``logits`` (B, Q, C), ``pred_boxes`` (B, Q, 4), and ``loss`` /
            ``loss_dict`` when labels are given) with ``derained``: the (B, 3, H, W) image the detector
            saw, so callers can show or compare it without a second SPDNet pass.
        """
        self.check_input_size(pixel_values)
        detector_input = self.derain(pixel_values) if derain else pixel_values
        outputs = self.detect(detector_input, labels)
        outputs["derained"] = detector_input
        return outputs

    def detector_fingerprint(self) -> str:
        """SHA-256 of the detector's state_dict; unchanged by training when the detector is frozen."""
        return detector_fingerprint(self.detector)
