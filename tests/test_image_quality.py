"""PSNR and SSIM against their definitions, and the eval picture's boxes."""

import math

import pytest
import torch

from utils.training.image_quality import psnr, ssim
from utils.apps.visualize import draw_detections


def test_psnr_follows_its_definition_and_clamps_the_derained_image():
    clean = torch.full((2, 3, 16, 16), 0.5)
    noisy = clean.clone()
    noisy[0] += 0.1  # MSE 0.01 -> 20 dB
    noisy[1, :, :8] = 1.7  # clamped to 1.0: half the pixels off by 0.5 -> MSE 0.125
    values = psnr(noisy, clean)
    assert values[0].item() == pytest.approx(20.0, abs=1e-4)
    assert values[1].item() == pytest.approx(10 * math.log10(1 / 0.125), abs=1e-4)


def test_ssim_is_one_for_identical_images_and_matches_the_formula_on_flat_ones():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 24, 24, generator=generator)
    assert torch.allclose(ssim(image, image), torch.ones(2), atol=1e-5)
    # Flat images: no variance, so SSIM is the luminance term (2ab + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 0.3, 0.6, 0.01**2
    value = ssim(torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b)).item()
    assert value == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-4)
    # Structure lost: noise on a flat image scores far below 1, and symmetric in its arguments.
    noisy = (0.5 + 0.2 * torch.randn(1, 3, 24, 24, generator=generator)).clamp(0, 1)
    flat = torch.full_like(noisy, 0.5)
    assert ssim(noisy, flat).item() < 0.2
    assert ssim(noisy, flat).item() == pytest.approx(ssim(flat, noisy).item(), abs=1e-6)


def test_top_k_draws_the_best_detections_whatever_their_score_and_the_ground_truth():
    image = torch.zeros(3, 64, 64)
    detection = {  # sorted by score, as post_process returns them; all far below the threshold
        "scores": torch.tensor([0.04, 0.02, 0.01]),
        "labels": torch.tensor([0, 1, 0]),
        "boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0], [30.0, 30.0, 50.0, 50.0], [40.0, 2.0, 60.0, 12.0]]),
    }
    id2label = {0: "circle", 1: "square"}
    assert not draw_detections(image, detection, id2label).any()  # the threshold keeps none
    drawn = draw_detections(image, detection, id2label, top_k=2)
    yellow = (drawn[0] > 200) & (drawn[1] > 200) & (drawn[2] < 50)
    assert yellow[4, 4:21].all() and yellow[30, 30:51].all()  # the two best boxes' top edges
    assert not yellow[2, 41:60].any()  # the third is left out
    truth = torch.tensor([[10.0, 40.0, 26.0, 56.0]])
    with_truth = draw_detections(image, detection, id2label, top_k=1, ground_truth=truth)
    green = (with_truth[1] > 200) & (with_truth[0] < 50)
    assert green[56, 10:27].all() and not green[4, 4:21].any()
