"""bf16 autocast against fp32 on the same batch, with briefly trained models (the demo's own stages).

Random weights make this comparison meaningless: a random RT-DETR passes almost no gradient back to
its input (~1e-10) and a random SPDNet's outputs are far outside 0-255, so both precisions compare
noise. The demo's trainers, at test size, give a detector and a derainer that behave like real ones.

What holds and is asserted: nothing non-finite on 0-255 inputs, a real gradient reaches SPDNet, and
SPDNet's bf16 output is within a grey level of its fp32 output. What does not hold with these tiny,
briefly trained models (measured, 2026-11-26): the speed issue's loss-within-a-few-percent and
gradient-cosine > 0.99 (loss 6.22 vs 6.95, +11.6%, almost all from the detector running in bf16;
cosine 0.905). So PRECISION stays "fp32" by default.
"""

import pytest
import torch

from utils.demo import train_detector, train_original_spdnet
from utils.detector import load_detector
from utils.engine import autocast, detector_targets
from utils.integrated_model import IntegratedModel
from utils.pipelines import build_spdnet

SIZE = 64


@pytest.fixture(scope="module")
def trained_pair(tiny_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    cpu = torch.device("cpu")
    world = {"num_classes": 6}  # the tiny world draws all six shapes
    detector_settings = {
        "world": world, "image_size": SIZE, "seed": 0, "steps": 60, "batch_size": 8, "learning_rate": 2e-3,
        "base_width": 8, "d_model": 32, "decoder_layers": 1, "num_queries": 10, "num_denoising": 5,
    }
    train_detector(detector_settings, tiny_world["coco_dir"], str(root / "detector"), cpu, workers=0)
    spdnet_settings = {
        "world": world, "image_size": SIZE, "seed": 0, "n_feats": 8, "n_resblocks": 1, "steps": 40,
        "batch_size": 4, "crop_size": 32, "learning_rate": 2e-3,
    }
    train_original_spdnet(spdnet_settings, tiny_world["coco_dir"], tiny_world["coco_rain_dir"], str(root / "spdnet.pt"),
                          cpu, workers=0)
    return str(root / "detector"), str(root / "spdnet.pt")


def loss_and_gradient(detector_dir, spdnet_path, precision, images, labels):
    torch.manual_seed(0)
    model = IntegratedModel(build_spdnet(spdnet_path, 8, 1), load_detector(detector_dir)).train()
    with autocast(torch.device("cpu"), precision):
        outputs = model(images, labels=labels)
    loss = outputs.loss.float()
    loss.backward()
    # out1 / out2's heads do not feed the detector: they get no gradient.
    gradient = torch.cat([p.grad.flatten() for p in model.trainable_parameters() if p.grad is not None])
    return loss.detach(), gradient, outputs.derained.detach()


def test_bf16_step_is_finite_and_derains_like_fp32(tiny_world, trained_pair):
    from torch.utils.data import DataLoader

    from utils.data import build_dataset, collate_fn

    dataset = build_dataset(tiny_world["coco_dir"], tiny_world["coco_rain_dir"], "train",
                            load_detector(trained_pair[0]).config.id2label, image_size=SIZE, coco_ratio=0.0, rain_ratio=1.0)
    images, targets = next(iter(DataLoader(dataset, batch_size=8, collate_fn=collate_fn)))
    labels = detector_targets(targets, torch.device("cpu"))

    loss32, grad32, derained32 = loss_and_gradient(*trained_pair, "fp32", images, labels)
    loss16, grad16, derained16 = loss_and_gradient(*trained_pair, "bf16", images, labels)

    assert torch.isfinite(loss16) and torch.isfinite(grad16).all() and torch.isfinite(derained16).all()
    assert grad32.norm() > 1e-4 and grad16.norm() > 1e-4  # a real signal reaches SPDNet through the frozen detector
    # Both precisions push SPDNet the same way, if not (yet) by the same amounts: see the docstring.
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.5
    # SPDNet's derained image (the detector's input) agrees to well under one 8-bit grey level on average.
    assert (derained16 - derained32).abs().mean() < 1.0 / 255
