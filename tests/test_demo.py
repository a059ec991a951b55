"""The demo's real path at smoke size: Make_Demo.py builds the world, then every script runs on it
with configs/demo.py."""

import json
import os

import pytest
import torch

import Eval_conditional
import Eval_SPDNet_Adaptation
import Make_Demo
import Training_Rain_Detector
import Training_SPDNet_Adaptation
import Training_Utility_Gate
from utils.apps.demo import deraining_loss, gate_settings, random_crops, world_paths
from utils.models.detector import load_detector
from utils.apps.pipelines import build_spdnet

DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py")
DEMO_RAIN_GATE = os.path.join(os.path.dirname(DEMO_CONFIG), "demo_rain_gate.py")  # the demo's rain gate's recipe


def smoke_config(tmp_path, **changes) -> str:
    """A config file, read after configs/demo.py, that shrinks every stage to a few steps."""
    root, weights = str(tmp_path / "demo"), str(tmp_path / "weights")
    settings = {
        "DEMO_DIR": root, "DEMO_WEIGHTS_DIR": weights, "DEMO_PRETRAIN_DIR": str(tmp_path / "pretrain"),
        "DEMO_NUM_TRAIN": 24, "DEMO_PRETRAIN_NUM_TRAIN": 24, "DEMO_NUM_VAL": 6, "DEMO_IMAGE_SIZE": 64,
        "DEMO_DETECTOR_STEPS": 2, "DEMO_DETECTOR_BATCH_SIZE": 4, "DEMO_DETECTOR_WIDTH": 8, "DEMO_DETECTOR_D_MODEL": 32,
        "DEMO_DETECTOR_DECODER_LAYERS": 1, "DEMO_DETECTOR_QUERIES": 10, "DEMO_DETECTOR_DENOISING": 4,
        "DEMO_SPDNET_STEPS": 2, "DEMO_SPDNET_BATCH_SIZE": 2, "DEMO_SPDNET_CROP": 32, "DEMO_GATE_EPOCHS": 1,
        "DEMO_WORKERS": 0, "DEMO_DEVICE": "cpu",
        "OUTPUT_DIR": root, "COCO_DIR": root + "/data/coco", "COCO_RAIN_DIR": root + "/data/coco_rain",
        "DETECTOR": weights + "/detector", "SPDNET_WEIGHTS": weights + "/spdnet_original.pt",
        "GATE_WEIGHTS": root + "/utility_gate.pt", "IMAGE_SIZE": 64, "PERCENT_DATASET": 50,
        "NUM_EPOCHS": 1, "DATALOADER_WORKERS": 0, "DEVICE": "cpu", "GATE_IMAGE_SIZE": 64, "INPUT_SIZE": 64,
        "GATE_NUM_EPOCHS": 1,
    }
    settings.update(changes)
    path = tmp_path / "smoke.py"
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in settings.items()))
    return str(path)


def test_demo_config_builds_the_world_and_every_script_runs_on_it(tmp_path):
    smoke = smoke_config(tmp_path)
    root, weights = str(tmp_path / "demo"), str(tmp_path / "weights")
    Make_Demo.main([smoke, "--DEMO_PRETRAIN=True"])  # the repository keeps these; the test makes tiny ones
    Make_Demo.main([DEMO_CONFIG, smoke, "--DEMO_SEED=1"])  # world 1 here
    summary = Training_SPDNet_Adaptation.main([DEMO_CONFIG, smoke])
    for name in ("data/coco/annotations/instances_train2017.json", "data/coco_rain/val2017", "demo_quality.json",
                 "demo_gate/rain_detector.pt", "spdnet_adapted.pt"):
        assert os.path.exists(os.path.join(root, name)), name
    # The stand-in "pretrained" detector loads through the path PekingU checkpoints take, with the
    # world's labels, in fp32 although it is kept in fp16, and stays frozen through the adaptation.
    detector = load_detector(os.path.join(weights, "detector"))
    assert detector.config.id2label == {0: "circle", 1: "square", 2: "triangle"}
    assert {p.dtype for p in detector.parameters()} == {torch.float32}
    assert summary["state"]["epoch"] == 1 and not summary["stopped"]  # fit() checks the detector's SHA-256 itself
    # The original SPDNet's file records its reduced size, which wins over SPDNET_N_FEATS.
    assert build_spdnet(os.path.join(weights, "spdnet_original.pt"), 32, 3).n_feats == 16
    with open(os.path.join(root, "demo_quality.json")) as file:
        quality = json.load(file)
    assert set(quality["spdnet_rainy_val"]) == {"rainy_psnr_db", "derained_psnr_db", "rainy_ssim", "derained_ssim"}
    assert set(quality["detector_clean_val"]) == {"AP", "AP50", "AP75"}

    with open(os.path.join(root, "demo_gate", "rain_detector.pt.json")) as file:
        assert json.load(file)["settings"]["seed"] == 1
    # The default gate, the detector-view gate, with configs/demo.py's recipe (a head on the detector's view)
    gate = Training_Utility_Gate.main([DEMO_CONFIG, smoke])
    saved = torch.load(os.path.join(root, "utility_gate.pt"), weights_only=True)
    assert saved["architecture"] == "detector_view" and "accuracy" in gate
    results = Eval_SPDNet_Adaptation.main([DEMO_CONFIG, smoke])
    assert set(results["rainy"]) == {"vanilla", "original", "adapted"}
    for name in ("eval_results.json", "eval_examples.png"):
        assert os.path.isfile(os.path.join(root, name)), name
    for gate in ([], [f"--GATE_WEIGHTS={root}/demo_gate/rain_detector.pt"]):  # the default gate, then the rain gate
        conditional = Eval_conditional.main([DEMO_CONFIG, smoke, *gate])
        assert set(conditional) >= {"clean", "rainy", "mixed"}
        clean = conditional["clean"]["clean_guarantee"]
        assert clean["identical_to_detector"] == clean["images_gated_clean"]
    # The gate script on the demo: the demo's gate recipe, into OUTPUT_DIR (DEMO_DIR); with the demo's seed
    # it makes the demo's gate again, bit for bit, and leaves the demo's own file (in demo_gate/) alone.
    demo_gate = os.path.join(root, "demo_gate", "rain_detector.pt")
    stamp = os.stat(demo_gate).st_mtime_ns
    Training_Rain_Detector.main([DEMO_CONFIG, DEMO_RAIN_GATE, smoke, "--SEED=1"])
    assert os.stat(demo_gate).st_mtime_ns == stamp
    ours, demos = (torch.load(path, weights_only=True) for path in (os.path.join(root, "rain_detector.pt"), demo_gate))
    assert ours["state_dict"].keys() == demos["state_dict"].keys()
    assert all(torch.equal(ours["state_dict"][key], demos["state_dict"][key]) for key in demos["state_dict"])
    assert (ours["threshold"], ours["temperature"]) == (demos["threshold"], demos["temperature"])


def test_a_second_detector_family_is_kept_beside_the_first_and_the_scripts_run_on_it(tmp_path, capsys):
    smoke = smoke_config(tmp_path)
    weights = tmp_path / "weights"
    Make_Demo.main([smoke, "--DEMO_PRETRAIN=True"])
    kept = os.stat(weights / "detector" / "model.safetensors").st_mtime_ns
    # (RT-DETRv2 of transformers 5.24 cannot save a one-layer decoder: it ties bbox_embed.0 to later layers)
    family = ["--DEMO_DETECTOR_FAMILY=rt_detr_v2", "--DEMO_DETECTOR_DECODER_LAYERS=2"]
    v2 = [f"--DETECTOR={weights / 'detector_rt_detr_v2'}"]  # the scripts' (configs/demo_rtdetr_v2.py's)
    with pytest.raises(FileNotFoundError, match="--DEMO_PRETRAIN=True --DEMO_DETECTOR_FAMILY=rt_detr_v2`"):
        Make_Demo.main([smoke, *family])
    Make_Demo.main([smoke, "--DEMO_PRETRAIN=True", *family])
    assert os.stat(weights / "detector" / "model.safetensors").st_mtime_ns == kept  # RT-DETR's left alone
    assert type(load_detector(str(weights / "detector_rt_detr_v2"))).__name__ == "RTDetrV2ForObjectDetection"
    with open(weights / "detector_rt_detr_v2" / "demo_settings.json") as file:
        record = json.load(file)
    assert record["settings"]["family"] == "rt_detr_v2"
    assert record["command"] == "python Make_Demo.py --DEMO_PRETRAIN=True --DEMO_DETECTOR_FAMILY=rt_detr_v2"
    Make_Demo.main([DEMO_CONFIG, smoke, *family])
    summary = Training_SPDNet_Adaptation.main([DEMO_CONFIG, smoke, *v2])
    assert summary["state"]["epoch"] == 1 and not summary["stopped"]
    with open(tmp_path / "demo" / "demo_quality.json") as file:
        assert json.load(file)["settings"]["detector"]["family"] == "rt_detr_v2"
    assert set(Eval_SPDNet_Adaptation.main([DEMO_CONFIG, smoke, *v2])["rainy"]) == {"vanilla", "original", "adapted"}
    with pytest.raises(ValueError, match="DEMO_DETECTOR_FAMILY: 'd_fine' has no small demo configuration"):
        Make_Demo.main([smoke, "--DEMO_PRETRAIN=True", "--DEMO_DETECTOR_FAMILY=d_fine"])


def test_the_gate_script_takes_the_demo_gates_recipe_from_configs_demo():
    """configs/demo.py with configs/demo_rain_gate.py gives Training_Rain_Detector.py every setting of the
    demo's own gate (none of the SPDNet scripts' IMAGE_SIZE, PERCENT_DATASET, NUM_EPOCHS, ...), but the run's
    seed, threads and log lines; and the demo's gate settings are every setting of that script."""
    from utils.runtime.config import load_config, script_defaults

    config = load_config(vars(Training_Rain_Detector), [DEMO_CONFIG, DEMO_RAIN_GATE], quiet=True)
    demo = load_config(vars(Make_Demo), [DEMO_CONFIG], quiet=True)
    demos = gate_settings(demo, world_paths(demo["DEMO_DIR"]))
    own = set(script_defaults(vars(Training_Rain_Detector)))
    assert own <= set(demos)
    # OUTPUT_DIR: the demo's own gate is kept in DEMO_DIR/demo_gate/, where this script does not write
    assert {key for key in own if config[key] != demos[key]} == {"SEED", "CPU_THREADS", "LOG_EVERY_STEPS",
                                                                 "OUTPUT_DIR"}
    assert demos["OUTPUT_DIR"] == os.path.join(config["OUTPUT_DIR"], "demo_gate")
    assert (config["SEED"], demos["SEED"], demos["GATE_IMAGE_SIZE"], demos["GATE_NUM_EPOCHS"]) == (42, 0, 128, 2)


def test_a_demo_world_without_the_kept_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="DEMO_PRETRAIN=True"):
        Make_Demo.main([smoke_config(tmp_path)])


def test_each_stage_is_reused_and_rebuilt_only_when_its_settings_change(tmp_path, capsys):
    smoke = smoke_config(tmp_path)
    root, weights = tmp_path / "demo", tmp_path / "weights"
    Make_Demo.main([smoke, "--DEMO_PRETRAIN=True"])
    Make_Demo.main([smoke])
    files = {"detector": weights / "detector/model.safetensors", "spdnet": weights / "spdnet_original.pt",
             "gate": root / "demo_gate" / "rain_detector.pt", "quality": root / "demo_quality.json"}
    stamps = {name: os.stat(path).st_mtime_ns for name, path in files.items()}
    capsys.readouterr()
    Make_Demo.main([smoke, "--DEMO_PRETRAIN=True"])
    Make_Demo.main([smoke])
    lines = capsys.readouterr().out.splitlines()
    for stage in ("synthetic world in", "demo detector: ", "demo original SPDNet: ", "demo rain gate: reused"):
        assert any(line.startswith(stage) and ("reused" in line or "already made" in line) for line in lines), stage
    assert stamps == {name: os.stat(path).st_mtime_ns for name, path in files.items()}
    # More deraining steps: only the original SPDNet is trained again, and measured again on the world.
    Make_Demo.main([smoke, "--DEMO_PRETRAIN=True", "--DEMO_SPDNET_STEPS=3"])
    Make_Demo.main([smoke, "--DEMO_SPDNET_STEPS=3"])
    changed = {name for name, path in files.items() if os.stat(path).st_mtime_ns != stamps[name]}
    assert changed == {"spdnet", "quality"}
    with open(weights / "spdnet_original.pt.json") as file:
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


KEPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo_weights")


@pytest.mark.parametrize("family", ["rt_detr", "rt_detr_v2"])
def test_the_kept_stand_ins_reproduce_their_recorded_quality_on_the_world_they_name(tmp_path, family):
    """demo_weights/ holds what Make_Demo.py --DEMO_PRETRAIN=True made (a detector per family); its
    records say on which world. Validation scenes and rain depend on (seed, image id) only, so the
    pretraining world's validation split is rebuilt here with a single training scene."""
    from utils.apps.demo import deraining_quality, read_manifest, score_detector, weights_paths
    from utils.data.synthetic import build_synthetic_world

    paths = weights_paths(KEPT, family)
    detector_record, spdnet_record = read_manifest(paths["detector_manifest"]), read_manifest(paths["spdnet_manifest"])
    world = spdnet_record["settings"]["world"]
    assert detector_record["settings"]["world"] == {k: v for k, v in world.items() if k != "rain_presets"}
    data = build_synthetic_world(str(tmp_path / "world"), 1, world["num_val"], image_size=world["image_size"],
                                 seed=world["seed"], rain_presets=tuple(world["rain_presets"]),
                                 max_objects=world["max_objects"], num_classes=world["num_classes"],
                                 show_progress=False)
    cpu = torch.device("cpu")
    quality = deraining_quality(build_spdnet(paths["spdnet"], 32, 3), data["coco_dir"], data["coco_rain_dir"],
                                world["image_size"], cpu)
    # Rounding differs between CPUs' kernels; a hundredth of a dB and of SSIM is far below any effect.
    for name, recorded in spdnet_record["pretraining_world_rainy_val"].items():
        assert quality[name] == pytest.approx(recorded, abs=0.01), name
    metrics = score_detector(paths["detector"], data["coco_dir"], world["image_size"], cpu, 0)
    for name, recorded in detector_record["pretraining_world_clean_val"].items():
        assert metrics[name] == pytest.approx(recorded, abs=0.005), name
