"""One adapter per detector family: everything that differs between the HF object detectors SPDNet
can train in front of, chosen from the checkpoint's ``config.model_type`` (docs/detectors.md).

    SPDNet's image (B, 3, H, W) in 0-1 -> adapter.inputs: the family's image processor as a torch
    function (rescale, mean/std, pixel mask; differentiable) -> detector -> adapter.post_process:
    detections as the family's own ``post_process_object_detection`` makes them

An adapter owns: the preprocessing (read from the checkpoint's ``preprocessor_config.json``, else the
family processor's defaults), the forward with its loss, the encoder features the feature loss
matches, the post-processing and the label mapping by name. The images reach it already resized
(utils/data/coco.py: a plain resize to IMAGE_SIZE, what RTDetrImageProcessor does); every image of a
batch has the same size, so a pixel mask is all ones. Adding a family = one small subclass here,
registered in ``ADAPTERS``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn
from transformers import ConditionalDetrImageProcessor, DetrImageProcessor, RTDetrImageProcessor

from utils.runtime.coco_categories import coco_label_maps, placeholder_labels
from utils.runtime.errors import UserError

PREPROCESSOR_FILE = "preprocessor_config.json"
# COCO scores at most 100 detections per image (COCOeval's maxDets); also Conditional DETR's top_k.
MAX_DETECTIONS = 100
# What a preprocessor_config.json may set that the adapters read; the rest (size, resample) is the data's.
PROCESSOR_KEYS = ("do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std", "do_pad")


class UnsupportedDetectorError(UserError, ValueError):
    """A detector family (model_type) no adapter exists for, or a feature it does not have."""


@dataclass(frozen=True)
class Preprocessing:
    """The family processor's pixel arithmetic on images already in 0-1 (its own input is 0-255):
    ``pixels = images * scale``, then ``(pixels - mean) / std`` when it normalises."""

    scale: float = 1.0  # 255 * rescale_factor (1: the 0-1 image itself), 255 without do_rescale
    mean: tuple[float, ...] | None = None  # None: no normalisation
    std: tuple[float, ...] | None = None
    pixel_mask: bool = False  # the processor pads, so the model takes a pixel mask

    @classmethod
    def from_settings(cls, settings: Mapping) -> "Preprocessing":
        scale = 255.0 * float(settings["rescale_factor"]) if settings["do_rescale"] else 255.0
        normalise = bool(settings["do_normalize"])
        return cls(
            scale=1.0 if math.isclose(scale, 1.0, rel_tol=1e-6) else scale,
            mean=tuple(float(m) for m in settings["image_mean"]) if normalise else None,
            std=tuple(float(s) for s in settings["image_std"]) if normalise else None,
            pixel_mask=bool(settings["do_pad"]),
        )

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in 0-1 -> {"pixel_values": (B, 3, H, W)[, "pixel_mask": (B, H, W) int64 ones]};
        the very same tensor when the processor only rescales by 1/255 (RT-DETR)."""
        pixels = images if self.scale == 1.0 else images * self.scale
        if self.mean is not None:
            mean = pixels.new_tensor(self.mean).view(1, -1, 1, 1)
            pixels = (pixels - mean) / pixels.new_tensor(self.std).view(1, -1, 1, 1)
        inputs = {"pixel_values": pixels}
        if self.pixel_mask:
            inputs["pixel_mask"] = torch.ones(images.shape[:1] + images.shape[2:], dtype=torch.long,
                                              device=images.device)
        return inputs


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) centre x, centre y, width, height -> (..., 4) x0, y0, x1, y1."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def absolute_boxes(pred_boxes: torch.Tensor, original_sizes) -> torch.Tensor:
    """(B, Q, 4) normalised cx,cy,w,h and (B, 2) (height, width) -> (B, Q, 4) x0,y0,x1,y1 in pixels."""
    sizes = torch.as_tensor(original_sizes, dtype=torch.float32, device=pred_boxes.device).reshape(-1, 2)
    if len(sizes) != len(pred_boxes):
        raise ValueError(f"got {len(sizes)} original sizes for a batch of {len(pred_boxes)} images")
    height, width = sizes.unbind(1)
    return cxcywh_to_xyxy(pred_boxes.float()) * torch.stack((width, height, width, height), dim=1)[:, None, :]


def sigmoid_top_k(logits: torch.Tensor, pred_boxes: torch.Tensor, original_sizes,
                  max_detections: int = MAX_DETECTIONS) -> list[dict[str, torch.Tensor]]:
    """RT-DETR's, D-FINE's and Conditional DETR's post-processing: sigmoid scores, top-k over queries x classes.

    logits (B, Q, C), pred_boxes (B, Q, 4) normalised cx,cy,w,h, original_sizes (B, 2) (h, w) ->
    per image ``scores`` (K,), ``labels`` (K,), ``boxes`` (K, 4) x0,y0,x1,y1 in original pixels,
    sorted by score, K = min(max_detections, Q*C).
    """
    boxes = absolute_boxes(pred_boxes, original_sizes)
    num_classes = logits.shape[-1]
    k = min(max_detections, logits.shape[1] * num_classes)
    scores, flat_index = torch.topk(logits.float().sigmoid().flatten(1), k, dim=-1)
    labels = flat_index % num_classes
    boxes = boxes.gather(1, (flat_index // num_classes).unsqueeze(-1).expand(-1, -1, 4))
    return [{"scores": s, "labels": label, "boxes": b} for s, label, b in zip(scores, labels, boxes)]


def softmax_no_object(logits: torch.Tensor, pred_boxes: torch.Tensor, original_sizes,
                      max_detections: int = MAX_DETECTIONS) -> list[dict[str, torch.Tensor]]:
    """DETR's post-processing: softmax over the classes and the last, no-object class; each query's
    best real class. logits (B, Q, C+1) -> as ``sigmoid_top_k``, K = min(max_detections, Q) queries."""
    scores, labels = logits.float().softmax(-1)[..., :-1].max(-1)
    boxes = absolute_boxes(pred_boxes, original_sizes)
    scores, index = torch.topk(scores, min(max_detections, scores.shape[1]), dim=-1)
    labels = labels.gather(1, index)
    boxes = boxes.gather(1, index.unsqueeze(-1).expand(-1, -1, 4))
    return [{"scores": s, "labels": label, "boxes": b} for s, label, b in zip(scores, labels, boxes)]


def processor_defaults(processor_class: type) -> dict:
    """The pixel settings a family's image processor class uses when its checkpoint has no file."""
    defaults = {key: getattr(processor_class, key, None) for key in PROCESSOR_KEYS}
    defaults["rescale_factor"] = defaults["rescale_factor"] or 1 / 255
    return defaults


class DetectorAdapter:
    """A detector family (subclasses set the class attributes and override what differs)."""

    family = ""  # config.model_type
    title = ""  # how logs and tables name it
    processor_class: type = RTDetrImageProcessor  # the family's image processor (its defaults)
    size_multiple = 32  # input height and width must be multiples of this
    has_features = False  # whether encoder_features / output_features exist (the feature loss)
    post_process_function = staticmethod(sigmoid_top_k)

    def __init__(self, config, processor: Mapping | None = None):
        self.config = config
        known = {key: value for key, value in (processor or {}).items() if key in PROCESSOR_KEYS}
        self.preprocessing = Preprocessing.from_settings({**processor_defaults(self.processor_class), **known})

    def inputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in 0-1 -> the model's keyword inputs (differentiable)."""
        return self.preprocessing(images)

    def forward(self, detector: nn.Module, images: torch.Tensor, labels: Sequence[dict] | None = None):
        """The detector's output (with ``loss`` given HF labels) for (B, 3, H, W) images in 0-1."""
        return detector(**self.inputs(images), labels=labels)

    def per_image_losses(self, detector: nn.Module, images: torch.Tensor, labels: Sequence[dict]) -> torch.Tensor:
        """(B,) the loss each image gets alone (a batch of one: HF normalises the loss over the batch's
        boxes, so a batch's loss is no sum of its images'). Here one forward per image; a family whose
        loss can be taken from a slice of a batched forward's output does that instead."""
        return torch.stack([self.forward(detector, images[i:i + 1], [labels[i]]).loss for i in range(len(images))])

    def encoder_features(self, detector: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
        """The encoder features the feature loss matches, for (B, 3, H, W) images in 0-1."""
        raise self.no_features()

    def output_features(self, outputs) -> list[torch.Tensor]:
        """The same features, read from a forward's output."""
        raise self.no_features()

    def require_features(self) -> None:
        """Refuse the feature loss, in one line naming the family, where it has no encoder features."""
        if not self.has_features:
            raise self.no_features()

    def no_features(self) -> UnsupportedDetectorError:
        return UnsupportedDetectorError(f"FEATURE_LOSS_WEIGHT: the feature loss has no encoder features for "
                                        f"{self.title} (model_type {self.family!r}): set FEATURE_LOSS_WEIGHT=0")

    def post_process(self, logits: torch.Tensor, pred_boxes: torch.Tensor, original_sizes,
                     max_detections: int = MAX_DETECTIONS) -> list[dict[str, torch.Tensor]]:
        """Detections as the family's ``post_process_object_detection`` makes them (threshold 0),
        the best ``max_detections`` by score; shapes as ``sigmoid_top_k``."""
        return self.post_process_function(logits, pred_boxes, original_sizes, max_detections)

    def label_maps(self, categories: Iterable[Mapping] | None = None) -> tuple[dict[int, int], dict[int, int]]:
        """(category id -> label, label -> category id), matched by name (coco_label_maps)."""
        return coco_label_maps(self.config.id2label, categories)

    def placeholder_labels(self) -> frozenset[int]:
        """Label indices that are no class ("N/A" in DETR's COCO heads): their detections are not scored."""
        return placeholder_labels(self.config.id2label)


class RTDetrAdapter(DetectorAdapter):
    """RT-DETR: plain 0-1 input (no normalisation, no mask), hybrid-encoder maps at strides 8, 16, 32."""

    family, title = "rt_detr", "RT-DETR"
    has_features = True

    def per_image_losses(self, detector: nn.Module, images: torch.Tensor, labels: Sequence[dict]) -> torch.Tensor:
        """As the base class, from one forward of the whole batch (the backbone, encoder and decoder run
        once): the family's loss function on each image's slice of the output, as a batch of one calls
        it. In training mode (denoising queries mix the batch) one forward per image instead."""
        if detector.training:
            return super().per_image_losses(detector, images, labels)
        out = detector(**self.inputs(images))

        def one(name: str, i: int):
            value = getattr(out, name, None)
            return None if value is None else value[i:i + 1]

        return torch.stack([detector.loss_function(
            one("logits", i), [labels[i]], images.device, one("pred_boxes", i), detector.config,
            one("intermediate_logits", i), one("intermediate_reference_points", i),
            enc_topk_logits=one("enc_topk_logits", i), enc_topk_bboxes=one("enc_topk_bboxes", i),
            denoising_meta_values=None, predicted_corners=one("intermediate_predicted_corners", i),
            initial_reference_points=one("initial_reference_points", i))[0] for i in range(len(images))])

    def encoder_features(self, detector: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
        """Three (B, d_model, H/s, W/s) maps, s = 8, 16, 32: ``encoder_last_hidden_state`` without the decoder."""
        model, pixels = detector.model, self.inputs(images)["pixel_values"]
        mask = torch.ones(pixels.shape[:1] + pixels.shape[2:], device=pixels.device)
        projected = [model.encoder_input_proj[level](source)
                     for level, (source, _) in enumerate(model.backbone(pixels, mask))]
        return list(model.encoder(projected).last_hidden_state)

    def output_features(self, outputs) -> list[torch.Tensor]:
        return list(outputs.encoder_last_hidden_state)


class RTDetrV2Adapter(RTDetrAdapter):
    family, title = "rt_detr_v2", "RT-DETRv2"


class DFineAdapter(RTDetrAdapter):
    family, title = "d_fine", "D-FINE"


class ConditionalDetrAdapter(DetectorAdapter):
    """Conditional DETR: ImageNet mean/std, a pixel mask, sigmoid top-k (its processor's top_k is 100);
    features: the encoder's (B, H/32 * W/32, d_model) output sequence."""

    family, title = "conditional_detr", "Conditional DETR"
    processor_class = ConditionalDetrImageProcessor
    size_multiple = 1  # any size: the backbone's maps follow the pixel mask
    has_features = True

    def encoder_features(self, detector: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
        return self.output_features(detector.model(**self.inputs(images)))

    def output_features(self, outputs) -> list[torch.Tensor]:
        return [outputs.encoder_last_hidden_state]


class DetrAdapter(ConditionalDetrAdapter):
    """DETR: as Conditional DETR, but softmax scores with a no-object class (logits (B, Q, C+1))."""

    family, title = "detr", "DETR"
    processor_class = DetrImageProcessor
    post_process_function = staticmethod(softmax_no_object)


ADAPTERS = {adapter.family: adapter
            for adapter in (RTDetrAdapter, RTDetrV2Adapter, DFineAdapter, ConditionalDetrAdapter, DetrAdapter)}


def adapter_class(config) -> type[DetectorAdapter]:
    """The adapter of ``config.model_type``; an UnsupportedDetectorError naming it otherwise."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise UnsupportedDetectorError(
            f"DETECTOR: model_type {model_type!r} is not supported (supported: {', '.join(ADAPTERS)}; "
            "docs/detectors.md)")
    return ADAPTERS[model_type]


def read_processor_config(source: str) -> dict | None:
    """The ``preprocessor_config.json`` of a save_pretrained directory or hub id (None when it has none)."""
    if os.path.isdir(source):
        path = os.path.join(source, PREPROCESSOR_FILE)
    else:
        from transformers.utils import cached_file

        path = cached_file(source, PREPROCESSOR_FILE, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    if not path or not os.path.isfile(path):
        return None
    with open(path) as file:
        return json.load(file)


# The attribute load_detector sets on a detector: its adapter, built from the checkpoint's processor file.
ADAPTER_ATTRIBUTE = "detection_adapter"


def adapter_of(detector: nn.Module) -> DetectorAdapter:
    """The adapter load_detector attached to ``detector``, else one with the family's processor defaults."""
    adapter = getattr(detector, ADAPTER_ATTRIBUTE, None)
    return adapter if adapter is not None else adapter_class(detector.config)(detector.config)
