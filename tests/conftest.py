"""Shared fixtures: a tiny synthetic world, a tiny frozen detector and tiny SPDNet weights on disk."""

import pytest
import torch

from utils.models.detector import load_detector, small_rtdetr_config
from utils.models.spdnet import SPDNet
from utils.data.synthetic import SHAPES, build_synthetic_world


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """Paths and overrides for running the scripts end to end in seconds on a CPU."""
    root = tmp_path_factory.mktemp("world")
    paths = build_synthetic_world(str(root / "data"), num_train=16, num_val=6, image_size=64, seed=0,
                                  rain_presets=("medium", "heavy"), show_progress=False)
    torch.manual_seed(0)
    detector = load_detector(small_rtdetr_config(dict(enumerate(SHAPES)), base_width=8, d_model=32,
                                                 decoder_layers=1, num_queries=10, num_denoising=0))
    detector.save_pretrained(root / "detector")
    torch.save(SPDNet(n_feats=8, n_resblocks=1).state_dict(), root / "spdnet_start.pt")
    overrides = [
        f"--COCO_DIR={paths['coco_dir']}", f"--COCO_RAIN_DIR={paths['coco_rain_dir']}",
        f"--DETECTOR={root / 'detector'}", "--IMAGE_SIZE=64", "--DEVICE=cpu", "--DATALOADER_WORKERS=0",
        "--SPDNET_N_FEATS=8", "--SPDNET_N_RESBLOCKS=1",
        "--PRECISION=fp32",  # the same arithmetic on every CI CPU ("auto" picks bf16 on CPUs with AVX512-BF16)
    ]
    return {"root": root, **paths, "detector_dir": str(root / "detector"),
            "spdnet_weights": str(root / "spdnet_start.pt"), "overrides": overrides}


@pytest.fixture(scope="session")
def two_family_world(tmp_path_factory):
    """A tiny world rendered with one streak and one drop preset (variants medium_v0, drops_heavy_v0)."""
    root = tmp_path_factory.mktemp("two_families")
    return build_synthetic_world(str(root / "data"), num_train=16, num_val=6, image_size=64, seed=2,
                                 rain_presets=("medium", "drops_heavy"), show_progress=False)


@pytest.fixture(scope="session")
def tiny_gate(tiny_world, tmp_path_factory):
    """A small_cnn rain gate (64-pixel input) trained for one epoch on the tiny world, once per session:
    the path of its rain_detector.pt (the gate does not depend on the detector)."""
    import Training_Rain_Detector

    output = tmp_path_factory.mktemp("gate")
    Training_Rain_Detector.main([
        f"--COCO_DIR={tiny_world['coco_dir']}", f"--COCO_RAIN_DIR={tiny_world['coco_rain_dir']}",
        f"--OUTPUT_DIR={output}", "--GATE_IMAGE_SIZE=64", "--DEVICE=cpu", "--DATALOADER_WORKERS=0",
        "--GATE_PERCENT_DATASET=100", "--GATE_VAL_PERCENT=100", "--ARCHITECTURE=small_cnn", "--INPUT_SIZE=64",
        "--GATE_NUM_EPOCHS=1", "--GATE_BATCH_SIZE=8",
    ])
    return str(output / "rain_detector.pt")
