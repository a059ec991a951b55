"""The rain gate for rain it has never seen: held-out families, diverse training, calibration, soft routing."""

import numpy as np
import pytest
import torch

import Training_Rain_Detector
from utils.models.conditional import ConditionalModel
from utils.data.coco import build_dataset
from utils.data.gate_data import GateTrainingSet, camera_augment
from utils.models.rain_gate import RainDetector, load_rain_detector
from utils.training.gate_metrics import fit_temperature


def test_gate_trains_without_the_held_out_family_and_scores_it_apart(two_family_world, tmp_path, capsys):
    result = Training_Rain_Detector.main([
        f"--COCO_DIR={two_family_world['coco_dir']}", f"--COCO_RAIN_DIR={two_family_world['coco_rain_dir']}",
        f"--OUTPUT_DIR={tmp_path}", "--GATE_IMAGE_SIZE=64", "--DEVICE=cpu", "--DATALOADER_WORKERS=0",
        "--GATE_PERCENT_DATASET=100", "--GATE_VAL_PERCENT=100", "--ARCHITECTURE=small_cnn", "--INPUT_SIZE=64",
        "--GATE_NUM_EPOCHS=2", "--GATE_BATCH_SIZE=8", "--HOLDOUT_FAMILY=drops", "--EPOCH_VARIANTS=True",
        "--RANDOM_RAIN=0.5", "--AUGMENT_BLUR=0.5", "--AUGMENT_JPEG=0.5", "--AUGMENT_JITTER=0.2", "--AUGMENT_NOISE=0.03",
    ])
    printed = capsys.readouterr().out
    assert "held-out drops rain (with the clean val images)" in printed
    held_out = result["held_out"]
    # The val split is half clean, half rainy: 3 + 3 images, the rainy ones drawn with drops only.
    assert sum(held_out["confusion"].values()) == 6
    assert held_out["confusion"]["rainy_as_rainy"] + held_out["confusion"]["rainy_as_clean"] == 3
    saved = torch.load(tmp_path / "rain_detector.pt", weights_only=True)
    assert saved["holdout_family"] == "drops" and saved["held_out_metrics"] == held_out
    gate = load_rain_detector(str(tmp_path / "rain_detector.pt"))
    assert gate.temperature == pytest.approx(result["temperature"]) and gate.temperature > 0
    with pytest.raises(ValueError, match="HOLDOUT_FAMILY must be one of"):
        Training_Rain_Detector.main([f"--COCO_DIR={two_family_world['coco_dir']}", "--HOLDOUT_FAMILY=snow"])


def test_gate_training_set_is_deterministic_and_leaves_labels_alone(two_family_world):
    base = build_dataset(two_family_world["coco_dir"], two_family_world["coco_rain_dir"], "train", None, image_size=64,
                         train=True, coco_ratio=0.5, rain_ratio=0.5, seed=3, return_clean_pair=True)
    plain = GateTrainingSet(base, ["streaks"])
    rerendered = GateTrainingSet(base, ["streaks"], random_rain=1.0)
    augmented = GateTrainingSet(base, ["streaks"], blur=1.0, jpeg=1.0, jitter=0.3, noise=0.05)
    for index in range(len(base)):
        image, target = base[index]
        same, _ = plain[index]
        assert torch.equal(same, image)  # nothing asked, nothing changed
        again, again_target = rerendered[index]
        assert torch.equal(again, rerendered[index][0]) and again_target["is_rainy"] == target["is_rainy"]
        assert "clean_image" not in again_target
        # Random rain replaces every rainy image by fresh rain on its clean copy; clean ones stay clean.
        assert torch.equal(again, image) != target["is_rainy"]
        assert not torch.equal(augmented[index][0], image)
    first_epoch = [rerendered[index] for index in range(len(base))]
    base.set_epoch(1)  # another epoch draws other rain for every rainy image
    for index, (image, target) in enumerate(first_epoch):
        if target["is_rainy"]:
            assert not torch.equal(rerendered[index][0], image)
    with pytest.raises(ValueError, match="return_clean_pair=True"):
        GateTrainingSet(build_dataset(two_family_world["coco_dir"], two_family_world["coco_rain_dir"], "val", None,
                                      image_size=64), ["streaks"], random_rain=0.5)


def test_camera_augmentations_do_what_they_say():
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(camera_augment(image, np.random.default_rng(0), 0.0, 0.0, 0.0, 0.0), image)
    blurred = camera_augment(image, np.random.default_rng(0), 1.0, 0.0, 0.0, 0.0)
    assert blurred.diff(dim=-1).abs().mean() < 0.8 * image.diff(dim=-1).abs().mean()
    compressed = camera_augment(image, np.random.default_rng(0), 0.0, 1.0, 0.0, 0.0)
    assert compressed.shape == image.shape and 0.01 < (compressed - image).abs().mean() < 0.3
    jittered = [camera_augment(image, np.random.default_rng(seed), 0.0, 0.0, 0.3, 0.0) for seed in range(4)]
    assert len({round(float(j.mean()), 4) for j in jittered}) == 4


def test_temperature_scaling_recovers_a_known_temperature():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, generator=generator) * 6
    labels = torch.rand(20000, generator=generator) < torch.sigmoid(logits / 3.0)
    assert fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.1)


def test_checkpoints_keep_their_temperature_and_old_ones_load_uncalibrated(tmp_path):
    gate = RainDetector("small_cnn", 32, threshold=0.4, temperature=2.5)
    torch.save(gate.checkpoint(), tmp_path / "new.pt")
    assert load_rain_detector(str(tmp_path / "new.pt")).temperature == 2.5
    old = {key: value for key, value in gate.checkpoint().items() if key != "temperature"}
    torch.save(old, tmp_path / "old.pt")
    loaded = load_rain_detector(str(tmp_path / "old.pt"))
    images = torch.rand(2, 3, 32, 32)
    assert loaded.temperature == 1.0 and torch.equal(loaded.probability(images, calibrated=True),
                                                     loaded.probability(images))


class BrightnessGate(RainDetector):
    """Logit 20 * (mean brightness - 0.5): bright images are "rainy", with a temperature of 4."""

    def __init__(self):
        super().__init__("small_cnn", 32, threshold=0.5, temperature=4.0)

    def forward(self, images):
        return (images.mean(dim=(1, 2, 3)) - 0.5) * 20.0


def test_soft_routing_blends_gated_rainy_images_and_leaves_clean_ones_bitwise(tiny_world, monkeypatch):
    from utils.models.detector import load_detector
    from utils.models.integrated_model import IntegratedModel
    from utils.models.spdnet import SPDNet

    torch.manual_seed(0)
    integrated = IntegratedModel(SPDNet(n_feats=8, n_resblocks=1), load_detector(tiny_world["detector_dir"])).eval()
    model = ConditionalModel(BrightnessGate(), integrated, routing="soft")
    images = torch.rand(5, 3, 64, 64) * 0.4 + 0.1
    images[[1, 3]] += 0.35  # mean ~0.65: gated rainy, with a calibrated P(rain) of sigmoid(3 / 4) ~ 0.68
    with torch.inference_mode():
        direct = integrated.detector(pixel_values=images[[0, 2, 4]])
        g = torch.sigmoid((images[[1, 3]].mean(dim=(1, 2, 3)) - 0.5) * 20.0 / 4.0).view(-1, 1, 1, 1)
        derained = integrated.derain(images[[1, 3]])
    seen = []  # what the detector is shown, call by call
    detect = integrated.detect
    monkeypatch.setattr(integrated, "detect",
                        lambda pixel_values, labels=None: seen.append(pixel_values) or detect(pixel_values, labels))
    output = model(images)
    assert output.derained.tolist() == [False, True, False, True, False]
    assert torch.equal(output.logits[[0, 2, 4]], direct.logits)  # the clean path, bit for bit
    assert torch.equal(output.pred_boxes[[0, 2, 4]], direct.pred_boxes)
    assert torch.equal(seen[1], images[[0, 2, 4]])
    assert torch.allclose(seen[0], g * derained + (1 - g) * images[[1, 3]], atol=1e-6)  # the blend
    assert (seen[0] - derained).abs().max() > 0.05
    assert torch.allclose(output.blend[[1, 3]], g.flatten()) and (0.6 < g).all() and (g < 0.75).all()
    assert (output.blend[[0, 2, 4]] == 0).all()
    seen.clear()
    hard = model(images, routing="hard")
    assert torch.equal(hard.derained, output.derained) and torch.equal(hard.logits[[0, 2, 4]], direct.logits)
    assert torch.equal(seen[0], derained) and (hard.blend == hard.derained.float()).all()
    with pytest.raises(ValueError, match="routing must be one of"):
        model(images, routing="fuzzy")


def gate_sample_before_random_rain_was_shared(dataset, index, families, random_rain, camera):
    """GateTrainingSet.__getitem__ as it was before on-the-fly rain moved to utils/data/random_rain.py:
    the reference its outputs must still match byte for byte."""
    from utils.data.gate_data import to_uint8
    from utils.data.rain import PRESETS, family_presets, render_rain

    presets = [name for family in families for name in family_presets(family)]
    image, target = dataset[index]
    clean = target.pop("clean_image", None)
    rng = np.random.default_rng([dataset.seed, dataset.epoch, target["image_id"], int(target["is_rainy"])])
    if target["is_rainy"] and rng.random() < random_rain:
        preset = PRESETS[presets[rng.integers(len(presets))]].randomised(rng)
        image = torch.from_numpy(render_rain(to_uint8(clean), preset, rng)).permute(2, 0, 1).float() / 255.0
    return camera_augment(image, rng, **camera), target


@pytest.mark.parametrize("random_rain", [0.0, 0.5])
def test_gate_training_set_gives_the_same_bytes_as_before(two_family_world, random_rain):
    base = build_dataset(two_family_world["coco_dir"], two_family_world["coco_rain_dir"], "train", None, image_size=64,
                         train=True, coco_ratio=0.5, rain_ratio=0.5, seed=5, return_clean_pair=random_rain > 0)
    camera = {"blur": 0.5, "jpeg": 0.5, "jitter": 0.2, "noise": 0.03}
    families = ["streaks", "drops"]
    diverse = GateTrainingSet(base, families, random_rain, **camera)
    fresh = set()
    for epoch in (0, 1):
        diverse.set_epoch(epoch)
        for index in range(len(base)):
            image, target = diverse[index]
            expected, expected_target = gate_sample_before_random_rain_was_shared(base, index, families, random_rain,
                                                                                  camera)
            assert torch.equal(image, expected), (epoch, index)
            assert target["image_id"] == expected_target["image_id"] and target["is_rainy"] == expected_target[
                "is_rainy"]
            assert torch.equal(target["boxes"], expected_target["boxes"])
            fresh.add(target["rain_family"])
    assert fresh == ({None, "streaks", "drops"} if random_rain else {None})  # both families drawn on the fly
