"""The demo's real path at smoke size: configs/demo.py builds the world, then every script runs on it."""

import json
import os

import pytest
import torch

import Eval_conditional
import Eval_SPDNet_Adaptation
import Make_Demo
import Training_SPDNet_Adaptation
from utils.demo import deraining_loss, random_crops
from utils.detector import load_detector
from utils.pipelines import build_spdnet

DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py")


def smoke_config(tmp_path, **changes) -> str:
    """A config file, read after configs/demo.py, that shrinks every stage to a few steps."""
    root = str(tmp_path / "demo")
    settings = {
        "DEMO_DIR": root, "DEMO_NUM_TRAIN": 24, "DEMO_NUM_VAL": 6, "DEMO_IMAGE_SIZE": 64,
        "DEMO_DETECTOR_STEPS": 2, "DEMO_DETECTOR_BATCH_SIZE": 4, "DEMO_DETECTOR_WIDTH": 8, "DEMO_DETECTOR_D_MODEL": 32,
        "DEMO_DETECTOR_DECODER_LAYERS": 1, "DEMO_DETECTOR_QUERIES": 10, "DEMO_DETECTOR_DENOISING": 4,
        "DEMO_SPDNET_STEPS": 2, "DEMO_SPDNET_BATCH_SIZE": 2, "DEMO_SPDNET_CROP": 32, "DEMO_GATE_EPOCHS": 1,
        "DEMO_WORKERS": 0, "DEMO_DEVICE": "cpu",
        "OUTPUT_DIR": root, "COCO_DIR": root + "/data/coco", "COCO_RAIN_DIR": root + "/data/coco_rain",
        "DETECTOR": root + "/detector", "SPDNET_WEIGHTS": root + "/spdnet_original.pt",
        "RAIN_DETECTOR_WEIGHTS": root + "/rain_detector.pt", "IMAGE_SIZE": 64, "PERCENT_DATASET": 50,
        "NUM_EPOCHS": 1, "DATALOADER_WORKERS": 0, "DEVICE": "cpu",
    }
    settings.update(changes)
    path = tmp_path / "smoke.py"
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in settings.items()))
    return str(path)


def test_demo_config_builds_the_world_and_every_script_runs_on_it(tmp_path):
    smoke = smoke_config(tmp_path)
    root = str(tmp_path / "demo")
    summary = Training_SPDNet_Adaptation.main([DEMO_CONFIG, smoke])
    for name in ("data/coco/annotations/instances_train2017.json", "data/coco_rain/val2017", "detector/config.json",
                 "detector/demo_settings.json", "spdnet_original.pt", "rain_detector.pt", "spdnet_adapted.pt"):
        assert os.path.exists(os.path.join(root, name)), name
    # The stand-in "pretrained" detector loads through the path PekingU checkpoints take, with the
    # world's labels, and stays frozen through the adaptation.
    detector = load_detector(os.path.join(root, "detector"))
    assert detector.config.id2label == {0: "circle", 1: "square", 2: "triangle"}
    assert summary["state"]["epoch"] == 1 and not summary["stopped"]  # fit() checks the detector's SHA-256 itself
    # The original SPDNet's file records its reduced size, which wins over SPDNET_N_FEATS.
    assert build_spdnet(os.path.join(root, "spdnet_original.pt"), 32, 3).n_feats == 8

    results = Eval_SPDNet_Adaptation.main([DEMO_CONFIG, smoke])
    assert set(results["rainy"]) == {"vanilla", "original", "adapted"}
    assert os.path.isfile(os.path.join(root, "eval_results.json"))
    conditional = Eval_conditional.main([DEMO_CONFIG, smoke])
    assert set(conditional) >= {"clean", "rainy", "mixed"}
    clean = conditional["clean"]["clean_guarantee"]
    assert clean["identical_to_detector"] == clean["images_gated_clean"]


def test_each_stage_is_reused_and_rebuilt_only_when_its_settings_change(tmp_path, capsys):
    smoke = smoke_config(tmp_path)
    root = tmp_path / "demo"
    Make_Demo.main([smoke])
    stamps = {name: os.stat(root / name).st_mtime_ns for name in ("detector/model.safetensors", "spdnet_original.pt", "rain_detector.pt")}
    capsys.readouterr()
    Make_Demo.main([smoke])
    out = capsys.readouterr().out
    lines = out.splitlines()
    for stage in ("synthetic world in", "demo detector: reused", "demo original SPDNet: reused", "demo rain gate: reused"):
        assert any(line.startswith(stage) and "reused" in line for line in lines), stage
    assert stamps == {name: os.stat(root / name).st_mtime_ns for name in stamps}
    # More deraining steps: only the original SPDNet is trained again.
    Make_Demo.main([smoke, "--DEMO_SPDNET_STEPS=3"])
    assert os.stat(root / "detector/model.safetensors").st_mtime_ns == stamps["detector/model.safetensors"]
    assert os.stat(root / "rain_detector.pt").st_mtime_ns == stamps["rain_detector.pt"]
    assert os.stat(root / "spdnet_original.pt").st_mtime_ns != stamps["spdnet_original.pt"]
    with open(root / "spdnet_original.pt.json") as file:
        assert json.load(file)["settings"]["steps"] == 3


def test_deraining_crops_pair_up_and_the_loss_is_zero_for_a_perfect_derainer():
    generator = torch.Generator().manual_seed(0)
    rainy = torch.rand(3, 3, 40, 48, generator=generator)
    clean = rainy * 0.5
    rainy_crop, clean_crop = random_crops(rainy, clean, 16, torch.Generator().manual_seed(1))
    assert rainy_crop.shape == clean_crop.shape == (3, 3, 16, 16)
    assert torch.equal(clean_crop, rainy_crop * 0.5)  # the same window of each pair
    assert deraining_loss([clean_crop * 255.0] * 3, clean_crop).item() == pytest.approx(0.0, abs=1e-12)
    assert deraining_loss([rainy_crop * 255.0] * 3, clean_crop).item() == pytest.approx(
        torch.nn.functional.mse_loss(rainy_crop, clean_crop).item())
