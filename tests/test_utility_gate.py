"""The utility gate: learnt from the frozen detector's loss (gain targets, soft routing), trained by
Training_Utility_Gate.py on the tiny world, and routing in ConditionalModel like the rain gate."""

import inspect
import os

import pytest
import torch

import Training_Utility_Gate as utility_script
from utils.apps.pipelines import adapted_weights, load_adapted_spdnet
from utils.apps.utility_gate import frozen_paths, utility_loss
from utils.data.coco import build_dataset, collate_fn
from utils.models.conditional import ConditionalModel, ConfidenceRule
from utils.models.detector import load_detector
from utils.models.detector_view import detector_view
from utils.models.integrated_model import IntegratedModel
from utils.models.rain_gate import RainDetector, load_rain_detector
from utils.models.spdnet import SPDNet, load_spdnet_weights
from utils.runtime.config import command_line
from utils.runtime.errors import SettingError
from utils.training.engine import detector_targets
from utils.training.utility import gain_loss

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def adapted(tiny_world, tmp_path_factory) -> str:
    """The tiny world's starting SPDNet saved as adapted weights for its detector (pipelines' format)."""
    spdnet = load_spdnet_weights(SPDNet(n_feats=8, n_resblocks=1), tiny_world["spdnet_weights"])
    model = IntegratedModel(spdnet, load_detector(tiny_world["detector_dir"]))
    path = str(tmp_path_factory.mktemp("adapted") / "spdnet_adapted.pt")
    torch.save(adapted_weights({"DETECTOR": tiny_world["detector_dir"]}, model, 1, {}), path)
    return path


def paths_config(tiny_world, adapted, **changes) -> dict:
    return {"DETECTOR": tiny_world["detector_dir"], "ADAPTED_WEIGHTS": adapted, "OUTPUT_DIR": "unused",
            "SPDNET_N_FEATS": 8, "SPDNET_N_RESBLOCKS": 1, "UTILITY_MODE": "gain", "UTILITY_MARGIN": 0.0, **changes}


def a_batch(tiny_world, integrated, size: int = 4):
    """(size, 3, 64, 64) training images, half clean and half rainy, and their HF labels."""
    dataset = build_dataset(tiny_world["coco_dir"], tiny_world["coco_rain_dir"], "train",
                            integrated.detector.config.id2label, image_size=64, coco_ratio=0.5, rain_ratio=0.5)
    images, targets = collate_fn([dataset[i] for i in range(0, 2 * size, 2)])
    return images, detector_targets(targets, CPU), targets


def test_soft_routing_trains_the_gate_only(tiny_world, adapted):
    integrated = frozen_paths(paths_config(tiny_world, adapted), CPU)
    fingerprint = integrated.detector_fingerprint()
    torch.manual_seed(0)
    gate = RainDetector("small_cnn", 64).train()
    before = {name: p.detach().clone() for name, p in gate.named_parameters()}
    optimizer = torch.optim.AdamW(gate.parameters(), lr=1e-2)
    images, _, targets = a_batch(tiny_world, integrated)
    loss, _ = utility_loss(gate, integrated, {"UTILITY_MODE": "soft", "UTILITY_MARGIN": 0.0}, CPU)(images, targets)
    loss.backward()
    gradients = [p.grad for p in gate.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in gradients)
    assert sum(float(g.abs().sum()) for g in gradients) > 0
    optimizer.step()
    assert any(not torch.equal(before[name], p) for name, p in gate.named_parameters())
    assert all(p.grad is None and not p.requires_grad for p in integrated.detector.parameters())
    assert all(p.grad is None and not p.requires_grad for p in integrated.spdnet.parameters())
    assert integrated.detector_fingerprint() == fingerprint and not integrated.detector.training


def test_gain_targets_are_the_sign_of_the_loss_difference(tiny_world, adapted):
    integrated = frozen_paths(paths_config(tiny_world, adapted), CPU)
    images, labels, _ = a_batch(tiny_world, integrated)
    _, targets = gain_loss(RainDetector("small_cnn", 64), integrated, images, labels, margin=0.0)
    with torch.no_grad():
        for i in range(len(images)):
            image = images[i:i + 1]
            plain = integrated.detector(pixel_values=image, labels=[labels[i]]).loss
            derained = integrated.detector(pixel_values=integrated.derain(image), labels=[labels[i]]).loss
            assert targets[i] == float(plain - derained > 0), i
    _, none = gain_loss(RainDetector("small_cnn", 64), integrated, images, labels, margin=1e9)
    assert not none.any()


def script_arguments(tiny_world, adapted, output_dir, *extra) -> list[str]:
    shared = [arg for arg in tiny_world["overrides"] if not arg.startswith("--PRECISION")]
    return shared + [f"--ADAPTED_WEIGHTS={adapted}", f"--OUTPUT_DIR={output_dir}", "--ARCHITECTURE=small_cnn",
                     "--INPUT_SIZE=64", "--GATE_PERCENT_DATASET=50", "--GATE_VAL_PERCENT=100",
                     "--GATE_NUM_EPOCHS=1", "--GATE_BATCH_SIZE=4", "--LOG_EVERY_STEPS=1", *extra]


@pytest.mark.parametrize("mode", ["gain", "soft"])
def test_the_script_trains_a_gate_the_conditional_model_routes_with(tiny_world, adapted, tmp_path, mode):
    result = utility_script.main(script_arguments(tiny_world, adapted, tmp_path, f"--UTILITY_MODE={mode}"))
    assert result["epoch"] == 1 and 0 <= result["accuracy"] <= 1
    saved = torch.load(tmp_path / "utility_gate.pt", weights_only=True)
    assert saved["kind"] == "utility" and saved["mode"] == mode and "accuracy" in saved["val_metrics"]
    assert os.path.exists(tmp_path / "utility_gate_log.jsonl")

    gate = load_rain_detector(str(tmp_path / "utility_gate.pt"))
    assert gate.threshold == result["threshold"]
    integrated = load_adapted_spdnet(paths_config(tiny_world, adapted), load_detector(tiny_world["detector_dir"]))
    model = ConditionalModel(gate, integrated).eval()
    images = a_batch(tiny_world, integrated, size=6)[0]
    probability = gate.probability(images)
    for threshold in (gate.threshold, float(probability.median())):  # the saved one, then one splitting the batch
        gate.threshold = threshold
        out = model(images)
        assert torch.equal(out.derained, probability >= threshold)
        clean = (~out.derained).nonzero().squeeze(1)
        if len(clean):
            with torch.inference_mode():
                alone = integrated.detector(pixel_values=images[clean])
            assert torch.equal(out.logits[clean], alone.logits) and torch.equal(out.pred_boxes[clean], alone.pred_boxes)
    assert 0 < int(out.derained.sum()) < len(images)


def failing(arguments) -> str:
    with pytest.raises(SystemExit) as exit_info:
        command_line(lambda: utility_script.main(arguments))
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    return message


def test_a_bad_mode_is_refused_in_one_line(tiny_world, adapted, tmp_path):
    message = failing(script_arguments(tiny_world, adapted, tmp_path, "--UTILITY_MODE=hard"))
    assert "UTILITY_MODE must be one of ('gain', 'soft'), got 'hard'" in message
    assert not os.path.exists(tmp_path / "utility_gate.pt")


def test_the_detector_view_gate_trains_on_the_frozen_detectors_view_and_saves_its_head_only(
        tiny_world, adapted, tmp_path):
    """ARCHITECTURE="detector_view": the gate reads the frozen detector's encoder features (the detector is
    neither trained nor saved with it); the conditional model routes with it, clean images bit-identical."""
    result = utility_script.main(script_arguments(tiny_world, adapted, tmp_path, "--ARCHITECTURE=detector_view",
                                                  "--LIBRARY_WEATHER=0.5"))
    assert result["epoch"] == 1
    saved = torch.load(tmp_path / "utility_gate.pt", weights_only=True)
    assert saved["architecture"] == "detector_view"
    assert {key.split(".")[1] for key in saved["state_dict"]} == {"norm", "layers"}  # the head's, nothing else
    with pytest.raises(SettingError, match="reads the frozen detector's view"):
        load_rain_detector(str(tmp_path / "utility_gate.pt"))
    integrated = load_adapted_spdnet(paths_config(tiny_world, adapted), load_detector(tiny_world["detector_dir"]))
    fingerprint = integrated.detector_fingerprint()
    gate = load_rain_detector(str(tmp_path / "utility_gate.pt"), integrated.detector)
    images = a_batch(tiny_world, integrated, size=6)[0]
    with torch.no_grad():
        view = detector_view(integrated.adapter, integrated.detector, images)
        assert torch.equal(gate(images), gate.backbone(view))
    probability = gate.probability(images)
    gate.threshold = float(probability.max()) + 1e-6  # every image clean (a random tiny detector's view hardly
    out = ConditionalModel(gate, integrated).eval()(images)  # differs between images: test_soft_mix.py's does)
    assert not out.derained.any()
    with torch.inference_mode():
        alone = integrated.detector(pixel_values=images)
    assert torch.equal(out.logits, alone.logits) and integrated.detector_fingerprint() == fingerprint
    gate.threshold = float(probability.min())
    assert ConditionalModel(gate, integrated).eval()(images).derained.all()


def test_label_free_routers_see_no_targets(tiny_world, adapted):
    """The confidence rule routes from the images alone: its decision is "the mean of the detector's 5 best
    scores is higher on SPDNet's image", computed here from the raw logits; no router takes labels."""
    integrated = load_adapted_spdnet(paths_config(tiny_world, adapted), load_detector(tiny_world["detector_dir"]))
    rule = ConfidenceRule(integrated)
    for router in (rule, RainDetector("small_cnn", 64)):
        assert list(inspect.signature(router.probability).parameters) == ["images", "calibrated"]
    assert "labels" not in inspect.signature(ConditionalModel.forward).parameters
    images = a_batch(tiny_world, integrated, size=6)[0]
    with torch.no_grad():
        def top5(pixels):
            scores = torch.sigmoid(integrated.detector(pixel_values=pixels).logits).flatten(1)
            return scores.topk(5, dim=1).values.mean(1)

        expected = top5(integrated.derain(images)) > top5(images)
    assert torch.equal(rule.probability(images) >= rule.threshold, expected)
    out = ConditionalModel(rule, integrated).eval()(images)
    assert torch.equal(out.derained, expected)
