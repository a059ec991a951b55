"""The soft mix (SOFT_MIX: x + m * (SPDNet(x) - x), m from a head on the frozen detector's view) and library
weather (LIBRARY_WEATHER) in SPDNet's adaptation."""

import os

import torch

from tests.test_training import epoch_targets, run, spdnet_state, training_data
from utils.apps.pipelines import adapted_weights, load_adapted_spdnet
from utils.models.detector import load_detector
from utils.models.detector_view import ViewHead, detector_view, pooled_view, view_size
from utils.models.integrated_model import IntegratedModel
from utils.models.spdnet import SPDNet
from utils.training.objectives import Objective, adaptation_loss

SOFT = ["--SOFT_MIX=True", "--COCO_RATIO=0.5", "--LIBRARY_WEATHER=0.5"]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The demo's kept detector: trained, so its encoder tells images apart (a random tiny one's features are ~1e-12)
TRAINED_DETECTOR = os.path.join(ROOT, "demo_weights", "detector")


def mixed_model(detector_dir: str, initial: float = 0.9) -> IntegratedModel:
    torch.manual_seed(0)
    model = IntegratedModel(SPDNet(n_feats=8, n_resblocks=1), load_detector(detector_dir))
    model.mix_head = ViewHead(view_size(model.adapter, model.detector), initial=initial)
    return model


def labels(count: int) -> list[dict]:
    return [{"class_labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.2]])}
            for _ in range(count)]


def test_pooled_view_is_each_features_mean_and_maximum():
    maps = torch.arange(24.0).view(1, 2, 3, 4)
    sequence = torch.arange(6.0).view(1, 3, 2)  # (B, N, C)
    view = pooled_view([maps, sequence])
    assert view.tolist() == [[5.5, 17.5, 11.0, 23.0, 2.0, 3.0, 4.0, 5.0]]


def test_the_soft_mix_is_x_plus_m_times_spdnets_change_with_m_from_the_detectors_view():
    model = mixed_model(TRAINED_DETECTOR).eval()
    model.mix_head.layers[-1].weight.data.normal_()  # images now differ in m
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        m = torch.sigmoid(model.mix_head(detector_view(model.adapter, model.detector, images)))
        spdnet = (model.spdnet(images * 255.0)[0] / 255.0).clamp(0, 1)
        mixed = model.derain(images)
    assert ((m > 0) & (m < 1)).all() and len(set(m.tolist())) == 3
    torch.testing.assert_close(mixed, images + m.view(-1, 1, 1, 1) * (spdnet - images))
    torch.testing.assert_close(model.mix_weight(images), m)
    fresh = mixed_model(TRAINED_DETECTOR, initial=0.9)
    torch.testing.assert_close(fresh.mix_weight(images), torch.full((3,), 0.9))  # every image starts at m = 0.9


def test_the_soft_mix_trains_spdnet_and_its_head_only_the_detector_never_changes(tiny_world):
    model = mixed_model(tiny_world["detector_dir"]).train()
    fingerprint = model.detector_fingerprint()
    buffers = {name: tensor.clone() for name, tensor in model.detector.named_buffers()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in before if n.startswith(("spdnet.", "mix_head."))}
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    loss, _ = adaptation_loss(model, torch.rand(2, 3, 64, 64), labels(2), None, Objective())
    loss.backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any(n.startswith("spdnet.") for n in changed) and any(n.startswith("mix_head.") for n in changed)
    assert changed <= trainable
    assert model.detector_fingerprint() == fingerprint
    assert all(torch.equal(tensor, buffers[name]) for name, tensor in model.detector.named_buffers())


def test_the_head_travels_in_the_adapted_weights_file(tmp_path):
    model = mixed_model(TRAINED_DETECTOR).eval()
    model.mix_head.layers[-1].weight.data.normal_()
    config = {"DETECTOR": TRAINED_DETECTOR, "SPDNET_N_FEATS": 8, "SPDNET_N_RESBLOCKS": 1,
              "ADAPTED_WEIGHTS": str(tmp_path / "mixed.pt"), "OUTPUT_DIR": str(tmp_path)}
    torch.save(adapted_weights(config, model, 1, {}), tmp_path / "mixed.pt")
    loaded = load_adapted_spdnet(config, load_detector(TRAINED_DETECTOR)).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.derain(images), model.derain(images))


def test_library_weather_reaches_the_clean_training_images_only(tiny_world, tmp_path):
    from utils.data.library_weather import WEATHER_KINDS

    data = training_data(tiny_world, tmp_path, "--COCO_RATIO=1.0", "--LIBRARY_WEATHER=0.5")
    targets = epoch_targets(data, 0)
    weathered = [t for t in targets if t["weather"] is not None]
    assert weathered and len(weathered) < len([t for t in targets if not t["is_rainy"]])
    assert all(not t["is_rainy"] and t["weather"] in WEATHER_KINDS for t in weathered)
    assert [t["weather"] for t in targets] == [t["weather"] for t in epoch_targets(data, 0)]  # per image and epoch
    assert [t["weather"] for t in targets] != [t["weather"] for t in epoch_targets(data, 1)]


def test_soft_mix_with_library_weather_trains_through_the_script_and_resumes_bit_for_bit(tiny_world, tmp_path):
    settings = [*SOFT, "--NUM_EPOCHS=1", "--CHECKPOINT_EVERY_STEPS=1"]
    straight = run(tiny_world, tmp_path / "straight", *settings)
    assert not straight["stopped"] and os.path.isfile(tmp_path / "straight" / "spdnet_adapted.pt")
    assert run(tiny_world, tmp_path / "resumed", *settings, "--MAX_STEPS=2")["stopped"]
    run(tiny_world, tmp_path / "resumed", *settings, "--RESUME=True")
    for name in ("spdnet", "mix_head"):
        straight_weights, resumed_weights = (torch.load(tmp_path / run_dir / "checkpoint.pt", weights_only=True)[name]
                                             for run_dir in ("straight", "resumed"))
        for key, tensor in straight_weights.items():
            assert torch.equal(tensor, resumed_weights[key]), (name, key)
    start = torch.load(tiny_world["spdnet_weights"], weights_only=True)
    assert any(not torch.equal(start[key], value) for key, value in spdnet_state(tmp_path / "straight" /
                                                                                  "spdnet_adapted.pt").items())
    message_dir = tmp_path / "resumed"
    from tests.test_training import run_failing

    assert "was trained with SOFT_MIX=True" in run_failing(
        tiny_world, message_dir, "--COCO_RATIO=0.5", "--NUM_EPOCHS=2", "--RESUME=True")
