"""The adaptation objectives on tiny models: every term finite, gradients into SPDNet only, the detector
bitwise frozen; and each objective trains end to end through the training script."""

import math
import os
import shutil

import pytest
import torch

from utils.training.objectives import Objective, adaptation_loss, encoder_features, feature_loss
from tests.test_integrated_model import batch, batch_norm_stats, tiny_integrated_model
from tests.test_training import log_records, run, run_failing, script_arguments, training_script

OBJECTIVES = {
    "detection": Objective(1.0, 0.0, 0.0),
    "feature": Objective(0.0, 1.0, 0.0),
    "pixel": Objective(0.0, 0.0, 1.0),
    "detection + feature": Objective(1.0, 1.0, 0.0),
    "detection + feature + pixel": Objective(1.0, 1.0, 1.0),
}


def clean_batch(images: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    return (images + 0.1 * torch.randn(images.shape, generator=generator)).clamp(0, 1)


def test_encoder_features_are_the_detectors_own_encoder_output():
    model = tiny_integrated_model().eval()
    images, _ = batch()
    with torch.no_grad():
        expected = model.detector(pixel_values=images).encoder_last_hidden_state
        features = encoder_features(model.detector, images)
    assert len(features) == 3 and [f.shape[-1] for f in features] == [8, 4, 2]  # strides 8, 16, 32 of 64 px
    for got, want in zip(features, expected, strict=True):
        assert torch.equal(got, want)


def test_feature_loss_is_zero_for_the_clean_features_and_relative_to_their_scale():
    generator = torch.Generator().manual_seed(0)
    clean = [torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 4, 4, generator=generator)]
    noisy = [c + 0.1 * torch.randn(c.shape, generator=generator) for c in clean]
    assert feature_loss(clean, clean) == 0
    loss = feature_loss(noisy, clean)
    assert torch.allclose(feature_loss([10 * n for n in noisy], [10 * c for c in clean]), loss)
    assert 0.005 < loss < 0.02  # ~0.1² relative error on unit-variance features


@pytest.mark.parametrize("name", OBJECTIVES)
def test_each_objective_is_finite_trains_spdnet_only_and_leaves_the_detector_bitwise_unchanged(name):
    objective = OBJECTIVES[name]
    model = tiny_integrated_model().train()
    fingerprint, stats_before = model.detector_fingerprint(), batch_norm_stats(model)
    images, labels = batch()
    clean = clean_batch(images)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.spdnet.state_dict().items()}
    loss, terms = adaptation_loss(model, images, labels, clean, objective)
    expected_terms = {t for t, w in zip(("detection", "feature", "pixel"),
                                        (objective.detection, objective.feature, objective.pixel)) if w}
    assert set(terms) == expected_terms
    assert torch.isfinite(loss) and all(torch.isfinite(v) and v > 0 for v in terms.values())
    weighted = sum(getattr(objective, term) * value for term, value in terms.items())
    assert torch.allclose(loss.detach(), weighted)
    loss.backward()
    assert all(p.grad is None for p in model.detector.parameters())
    # SPDNet's official layout has parameters its forward never uses (unused norms and branches): every
    # objective must reach exactly the parameters the integrated model's own loss reaches.
    reference = tiny_integrated_model().train()
    reference(images, labels=labels).loss.backward()
    used = {n for n, p in reference.spdnet.named_parameters() if p.grad is not None}
    assert {n for n, p in model.spdnet.named_parameters() if p.grad is not None} == used
    assert all(torch.isfinite(p.grad).all() for n, p in model.spdnet.named_parameters() if n in used)
    assert model.spdnet.conv_init1.conv.weight.grad.abs().sum() > 0
    optimizer.step()
    assert model.detector_fingerprint() == fingerprint
    for b, a in zip(stats_before, batch_norm_stats(model), strict=True):
        assert torch.equal(b, a)
    assert any(not torch.equal(before[k], v) for k, v in model.spdnet.state_dict().items())


def test_detection_alone_is_the_detection_loss_of_the_integrated_model():
    model = tiny_integrated_model().train()
    images, labels = batch()
    loss, _ = adaptation_loss(model, images, labels, None, Objective())
    assert torch.equal(loss, model(images, labels=labels).loss.float())


def test_a_non_finite_derained_batch_gives_nan_and_never_reaches_the_detector():
    model = tiny_integrated_model().train()
    images, labels = batch()
    torch.nn.init.constant_(model.spdnet.conv_init1.conv.weight, math.inf)
    loss, _ = adaptation_loss(model, images, labels, clean_batch(images), OBJECTIVES["detection + feature + pixel"])
    assert torch.isnan(loss)


def test_objective_settings_are_checked():
    with pytest.raises(ValueError, match="FEATURE_LOSS_WEIGHT must be a finite number >= 0, got -1"):
        Objective.from_weights(1.0, -1, 0.0)
    with pytest.raises(ValueError, match="all 0: nothing to train"):
        Objective.from_weights(0.0, 0.0, 0)
    assert not Objective().needs_clean_pair and Objective(1.0, 0.0, 0.5).needs_clean_pair


@pytest.mark.parametrize("weights", [(0.0, 1.0, 0.0), (1.0, 1.0, 1.0)], ids=["feature", "all three"])
def test_objectives_train_end_to_end_with_clean_images_in_the_mix(tiny_world, tmp_path, weights):
    detection, feature, pixel = weights
    result = run(tiny_world, tmp_path, "--NUM_EPOCHS=1", "--COCO_RATIO=0.5", f"--DETECTION_LOSS_WEIGHT={detection}",
                 f"--FEATURE_LOSS_WEIGHT={feature}", f"--PIXEL_LOSS_WEIGHT={pixel}")
    assert not result["stopped"] and result["state"]["step"] == 6  # 16 rainy + 8 clean images, 2 x 2 per step
    train_records = [r for r in log_records(tmp_path / "training_log.jsonl") if r["type"] == "train"]
    logged_terms = {key for key in train_records[0] if key.startswith("loss_")}
    assert logged_terms == {f"loss_{t}" for t, w in zip(("detection", "feature", "pixel"), weights) if w}
    assert all(r[key] > 0 for r in train_records for key in logged_terms)


def test_the_default_objective_is_detection_and_feature_with_clean_images(tiny_world, tmp_path):
    result = training_script.main(script_arguments(tiny_world, tmp_path, objective=[]) + ["--NUM_EPOCHS=1"])
    assert not result["stopped"] and result["state"]["step"] == 6  # 16 rainy + 8 clean images, 2 x 2 per step
    config = torch.load(tmp_path / "spdnet_adapted.pt", weights_only=True)["config"]
    assert (config["DETECTION_LOSS_WEIGHT"], config["FEATURE_LOSS_WEIGHT"], config["PIXEL_LOSS_WEIGHT"],
            config["COCO_RATIO"]) == (1.0, 10.0, 0.0, 0.5)
    train_records = [r for r in log_records(tmp_path / "training_log.jsonl") if r["type"] == "train"]
    assert all({"loss_detection", "loss_feature"} <= set(r) and "loss_pixel" not in r for r in train_records)


def test_a_missing_clean_original_is_an_error_at_start_up(tiny_world, tmp_path):
    coco = tmp_path / "coco"
    shutil.copytree(tiny_world["coco_dir"], coco)
    missing = sorted(os.listdir(coco / "train2017"))[0]
    os.remove(coco / "train2017" / missing)
    message = run_failing(tiny_world, tmp_path / "out", f"--COCO_DIR={coco}", "--PIXEL_LOSS_WEIGHT=1.0")
    assert "missing" in message and missing in message
