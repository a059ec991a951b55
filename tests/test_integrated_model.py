"""SPDNet -> frozen RT-DETR: gradients reach SPDNet, the detector provably never changes."""

import pytest
import torch

from utils.models.detector import (
    detector_fingerprint, load_detector, model_state_lines, rtdetr_r18vd_config, small_rtdetr_config,
)
from utils.models.integrated_model import IntegratedModel
from utils.models.spdnet import SPDNet

SHAPES = {0: "circle", 1: "square", 2: "triangle"}


def tiny_integrated_model(seed: int = 0) -> IntegratedModel:
    torch.manual_seed(seed)
    spdnet = SPDNet(n_feats=8, n_resblocks=1)
    detector = load_detector(small_rtdetr_config(SHAPES, base_width=8, d_model=32, decoder_layers=1, num_queries=10))
    return IntegratedModel(spdnet, detector)


def batch(seed: int = 1, size: int = 64):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, size, size, generator=generator)
    labels = [
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.25], [0.7, 0.6, 0.3, 0.2]])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]
    return images, labels


def batch_norm_stats(model: IntegratedModel) -> list[torch.Tensor]:
    return [
        tensor.clone()
        for module in model.detector.modules()
        if isinstance(module, torch.nn.BatchNorm2d)
        for tensor in (module.running_mean, module.running_var, module.num_batches_tracked)
    ]


def test_training_changes_spdnet_and_never_the_detector():
    model = tiny_integrated_model()
    fingerprint = model.detector_fingerprint()
    stats_before = batch_norm_stats(model)
    spdnet_before = {name: p.clone() for name, p in model.spdnet.named_parameters()}
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == {
        id(p) for p in model.spdnet.parameters()
    }

    model.train()
    assert model.spdnet.training and not model.detector.training
    images, labels = batch()
    for _ in range(3):
        optimizer.zero_grad()
        model(images, labels=labels).loss.backward()
        optimizer.step()

    assert model.detector_fingerprint() == fingerprint
    for before, after in zip(stats_before, batch_norm_stats(model), strict=True):
        assert torch.equal(before, after)
    assert all(p.grad is None for p in model.detector.parameters())
    changed = [name for name, p in model.spdnet.named_parameters() if not torch.equal(p, spdnet_before[name])]
    assert "conv_init1.conv.weight" in changed and len(changed) > len(spdnet_before) // 2


def test_gradients_reach_spdnets_first_convolution():
    model = tiny_integrated_model().train()
    images, labels = batch()
    outputs = model(images, labels=labels)
    assert torch.isfinite(outputs.loss)
    outputs.loss.backward()
    gradient = model.spdnet.conv_init1.conv.weight.grad
    assert gradient is not None
    assert torch.isfinite(gradient).all()
    assert gradient.abs().sum() > 0


def test_derain_false_is_bitwise_the_detector_alone():
    model = tiny_integrated_model().eval()
    images, labels = batch()
    with torch.no_grad():
        through_wrapper = model(images, labels=labels, derain=False)
        direct = model.detector(pixel_values=images, labels=labels)
    assert torch.equal(through_wrapper.logits, direct.logits)
    assert torch.equal(through_wrapper.pred_boxes, direct.pred_boxes)
    assert torch.equal(through_wrapper.loss, direct.loss)
    assert through_wrapper.derained is images


def test_derained_image_is_the_one_the_detector_saw():
    model = tiny_integrated_model().eval()
    images, _ = batch()
    with torch.no_grad():
        outputs = model(images)
        derained = model.derain(images)
        direct = model.detector(pixel_values=derained)
    assert outputs.derained.shape == images.shape
    assert 0.0 <= outputs.derained.min() and outputs.derained.max() <= 1.0
    assert torch.equal(outputs.derained, derained)
    assert torch.equal(outputs.logits, direct.logits)


def test_sizes_that_are_not_multiples_of_32_are_refused():
    model = tiny_integrated_model().eval()
    with pytest.raises(ValueError, match="multiples of 32, got 64x70"):
        model(torch.rand(1, 3, 64, 70))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(3, 64, 64))


def test_fingerprint_catches_a_changed_detector():
    model = tiny_integrated_model()
    fingerprint = model.detector_fingerprint()
    with torch.no_grad():
        model.detector.model.backbone.parameters().__next__().mul_(1.001)
    assert model.detector_fingerprint() != fingerprint
    assert detector_fingerprint(model.detector) == model.detector_fingerprint()


def test_model_state_block_for_the_default_models():
    spdnet = SPDNet()
    detector = load_detector(rtdetr_r18vd_config())
    assert model_state_lines(spdnet, detector) == [
        "SPDNet: 3,318,741 trainable parameters (100%)",
        "RT-DETR: 0 trainable parameters (0% - FROZEN)",
        "Total parameters: 23,493,349",
        "Trainable parameters: 3,318,741 (14.1%)",
    ]


def test_channels_last_gives_the_same_output():
    reference = tiny_integrated_model().eval()
    nhwc = tiny_integrated_model().eval()
    nhwc = IntegratedModel(nhwc.spdnet, nhwc.detector, channels_last=True)
    assert nhwc.spdnet.conv_init1.conv.weight.is_contiguous(memory_format=torch.channels_last)
    images, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(nhwc.derain(images), reference.derain(images), rtol=1e-4, atol=1e-5)
