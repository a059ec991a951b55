"""bf16 against fp32 for the gradient SPDNet learns from: the pieces tests/test_precision.py and
benchmarks/bench_precision.py share.

Random weights make such comparisons meaningless (a random RT-DETR passes almost no gradient back to
its input, a random SPDNet's outputs are far outside 0-255), so ``train_tiny_pair`` first trains a
small detector and a small SPDNet with the demo's own trainers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from utils.data.coco import build_dataset, collate_fn, non_empty
from utils.apps.demo import train_detector, train_original_spdnet
from utils.models.detector import load_detector
from utils.training.engine import detector_targets
from utils.runtime.device import autocast
from utils.runtime.errors import DataError
from utils.models.integrated_model import IntegratedModel
from utils.apps.pipelines import build_training_model

CPU = torch.device("cpu")
SPDNET_SIZE = (8, 1)  # n_feats, n_resblocks of the tiny SPDNet


def train_tiny_pair(coco_dir: str, coco_rain_dir: str, root: str, image_size: int, num_classes: int,
                    detector_steps: int = 60, spdnet_steps: int = 40) -> tuple[str, str]:
    """A small RT-DETR trained on the clean images, a small SPDNet trained with pixel MSE; their paths."""
    world = {"num_classes": num_classes, "image_size": image_size}
    detector_dir, spdnet_path = os.path.join(root, "detector"), os.path.join(root, "spdnet.pt")
    train_detector({
        "world": world, "seed": 0, "family": "rt_detr", "steps": detector_steps, "batch_size": 8,
        "learning_rate": 2e-3, "base_width": 8, "d_model": 32, "decoder_layers": 1, "num_queries": 10,
        "num_denoising": 5,
    }, coco_dir, detector_dir, CPU, workers=0)
    train_original_spdnet({
        "world": world, "seed": 0, "n_feats": SPDNET_SIZE[0], "n_resblocks": SPDNET_SIZE[1],
        "steps": spdnet_steps, "batch_size": 4, "crop_size": 32, "learning_rate": 2e-3,
    }, coco_dir, coco_rain_dir, spdnet_path, CPU, workers=0)
    return detector_dir, spdnet_path


def rainy_batches(coco_dir: str, coco_rain_dir: str, detector_dir: str, image_size: int, batch_size: int,
                  count: int) -> list[tuple[torch.Tensor, list[dict]]]:
    """The first ``count`` full batches of rainy training images, with HF labels, in file order."""
    id2label = load_detector(detector_dir).config.id2label
    dataset = build_dataset(coco_dir, coco_rain_dir, "train", id2label, image_size=image_size, coco_ratio=0.0,
                            rain_ratio=1.0)
    batches = [(images, detector_targets(targets, CPU))
               for images, targets in non_empty(DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn))
               if len(images) == batch_size]
    if len(batches) < count:
        raise DataError(f"{coco_rain_dir}: only {len(batches)} full rainy batches of {batch_size}, {count} asked")
    return batches[:count]


def build_model(detector_dir: str, spdnet_path: str) -> IntegratedModel:
    """The training model (utils/apps/pipelines.py) of the tiny pair, in train mode on the CPU."""
    settings = {"SPDNET_WEIGHTS": spdnet_path, "SPDNET_N_FEATS": SPDNET_SIZE[0], "SPDNET_N_RESBLOCKS": SPDNET_SIZE[1],
                "GRADIENT_CHECKPOINTING": False, "CHANNELS_LAST": False, "DETECTOR": detector_dir}
    return build_training_model(settings, CPU).train()


@dataclass
class Step:
    loss: torch.Tensor  # () float32
    gradient: torch.Tensor  # SPDNet's gradient, flattened, float64
    derained: torch.Tensor  # (B, 3, H, W) the detector's input
    upstream: torch.Tensor  # (B, 3, H, W) dLoss/d(derained): what the detector hands back to SPDNet


def loss_and_gradient(model: IntegratedModel, precision: str, images: torch.Tensor, labels: Sequence[dict]) -> Step:
    """One step's loss, SPDNet's gradient, the derained image and the detector's gradient at it, as
    training computes them."""
    model.zero_grad(set_to_none=True)
    with autocast(CPU, precision):
        outputs = model(images, labels=labels)
    outputs.derained.retain_grad()
    outputs.loss.backward()
    return Step(outputs.loss.detach(), spdnet_gradient(model), outputs.derained.detach(), outputs.derained.grad)


def fp32_detector_at(model: IntegratedModel, image: torch.Tensor,
                     labels: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """The detector's loss at ``image`` and its gradient dLoss/d(image), computed outside any autocast."""
    image = image.detach().clone().requires_grad_(True)
    loss = model.detect(image, labels).loss
    loss.backward()
    return loss.detach(), image.grad


def spdnet_gradient(model: IntegratedModel) -> torch.Tensor:
    """SPDNet's gradient, flattened, float64. out1 / out2's heads do not feed the detector: no gradient."""
    return torch.cat([p.grad.flatten() for p in model.spdnet.parameters() if p.grad is not None]).double()


class NoisyOutput(nn.Module):
    """SPDNet with Gaussian noise of ``grey_levels`` (0-255 scale) added to its final output."""

    def __init__(self, spdnet: nn.Module, grey_levels: float, seed: int):
        super().__init__()
        self.spdnet, self.grey_levels, self.seed = spdnet, grey_levels, seed

    def forward(self, x: torch.Tensor):
        out3, out2, out1 = self.spdnet(x)
        noise = torch.randn(out3.shape, generator=torch.Generator().manual_seed(self.seed))
        return out3 + self.grey_levels * noise.to(out3), out2, out1


def detect_in_bf16(model: IntegratedModel) -> None:
    """Make ``model`` run its detector under the caller's autocast too, the loss still in fp32.

    What PRECISION='bf16' is measured against, not what it does (see ``IntegratedModel.detect``).
    """
    detector = model.detector

    def detect(pixel_values, labels=None):
        outputs = detector(pixel_values=pixel_values)
        if labels is not None:
            with torch.autocast(pixel_values.device.type, enabled=False):
                def fp32(tensor):
                    return None if tensor is None else tensor.float()

                outputs["loss"] = detector.loss_function(
                    fp32(outputs.logits), labels, pixel_values.device, fp32(outputs.pred_boxes), detector.config,
                    fp32(outputs.intermediate_logits), fp32(outputs.intermediate_reference_points),
                    enc_topk_logits=fp32(outputs.enc_topk_logits), enc_topk_bboxes=fp32(outputs.enc_topk_bboxes),
                    denoising_meta_values=None,  # eval mode: no denoising queries
                )[0]
        return outputs

    model.detect = detect


def spdnet_gradient_for_upstream(model: IntegratedModel, precision: str, images: torch.Tensor,
                                 upstream: torch.Tensor) -> torch.Tensor:
    """SPDNet's gradient when ``upstream`` (dLoss/dImage, (B, 3, H, W)) is fed back into its output.

    Isolates SPDNet's own arithmetic: the same upstream gradient for both precisions.
    """
    model.zero_grad(set_to_none=True)
    with autocast(CPU, precision):
        derained = model.derain(images)
    derained.backward(upstream)
    return spdnet_gradient(model)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def batch_spread(gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    """Root-mean-square distance of per-batch gradients from their mean: SGD's own noise."""
    stacked = torch.stack(list(gradients))
    return (stacked - stacked.mean(dim=0)).norm(dim=1).pow(2).mean().sqrt()
