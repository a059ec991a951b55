"""The detector side: r18vd config, label mapping, loading, freezing and fingerprinting."""

import os
import subprocess
import sys

import pytest
import torch

from utils.runtime.coco_categories import COCO_CATEGORIES, COCO_ID2LABEL, coco_label_maps
from utils.models.detector import (
    count_parameters,
    detector_fingerprint,
    load_detector,
    rtdetr_r18vd_config,
    small_rtdetr_config,
)

SHAPES = {0: "circle", 1: "square", 2: "triangle"}


def test_r18vd_config_has_the_published_parameter_count():
    detector = load_detector(rtdetr_r18vd_config())
    assert count_parameters(detector) == 20_174_608
    assert count_parameters(detector, trainable_only=True) == 0
    assert not detector.training
    assert type(detector).__name__ == "RTDetrForObjectDetection"
    batch_norms = [m for m in detector.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(batch_norms) == 46  # outside the backbone, whose batch norms are frozen by design


def test_coco_label_maps_cover_all_80_classes():
    category_to_label, label_to_category = coco_label_maps(COCO_ID2LABEL)
    assert len(category_to_label) == len(label_to_category) == 80
    assert label_to_category[0] == 1 and COCO_ID2LABEL[0] == "person"
    assert label_to_category[79] == 90 and COCO_ID2LABEL[79] == "toothbrush"
    for category in COCO_CATEGORIES:
        label = category_to_label[category["id"]]
        assert COCO_ID2LABEL[label] == category["name"]
        assert label_to_category[label] == category["id"]
    assert sorted(category_to_label) == [c["id"] for c in COCO_CATEGORIES]
    assert 12 not in category_to_label and 26 not in category_to_label  # COCO's gaps


def test_coco_label_maps_accepts_string_keys_and_custom_categories():
    categories = [{"id": 7, "name": "Triangle"}, {"id": 3, "name": "circle"}, {"id": 5, "name": "square"}]
    category_to_label, label_to_category = coco_label_maps({"0": "circle", "1": "square", "2": "triangle"}, categories)
    assert category_to_label == {3: 0, 5: 1, 7: 2}
    assert label_to_category == {0: 3, 1: 5, 2: 7}


def test_detector_label_without_category_is_an_error():
    with pytest.raises(ValueError, match=r"2: 'hexagon'"):
        coco_label_maps({0: "circle", 1: "square", 2: "hexagon"},
                        [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}])
    with pytest.raises(ValueError, match="appears twice"):
        coco_label_maps(SHAPES, [{"id": 1, "name": "circle"}, {"id": 2, "name": "circle"}])


def test_save_pretrained_directory_loads_back_identically(tmp_path):
    detector = load_detector(small_rtdetr_config(SHAPES, base_width=8, d_model=32, decoder_layers=1, num_queries=10))
    detector.save_pretrained(tmp_path / "detector")
    reloaded = load_detector(str(tmp_path / "detector"))
    assert detector_fingerprint(reloaded) == detector_fingerprint(detector)
    assert not reloaded.training and count_parameters(reloaded, trainable_only=True) == 0
    assert reloaded.config.id2label == SHAPES


def test_missing_local_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        load_detector(str(tmp_path / "does_not_exist"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_detector(str(tmp_path / "empty"))


def test_unreachable_hub_id_says_how_to_get_the_weights():
    # A subprocess, because the hub's offline switch is read when huggingface_hub is imported.
    code = "from utils.models.detector import load_detector\nload_detector('PekingU/rtdetr_r18vd')"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=os.path.join(os.getcwd(), ".no_hf_cache"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert "DETECTOR: could not load 'PekingU/rtdetr_r18vd'" in result.stderr
    assert "--local-dir" in result.stderr and "set DETECTOR to that local directory" in result.stderr


def test_fingerprint_sees_any_change_to_parameters_or_buffers():
    detector = load_detector(small_rtdetr_config(SHAPES, base_width=8, d_model=32, decoder_layers=1, num_queries=10))
    before = detector_fingerprint(detector)
    assert detector_fingerprint(detector) == before
    batch_norm = next(m for m in detector.modules() if isinstance(m, torch.nn.BatchNorm2d))
    original = batch_norm.running_mean.clone()
    batch_norm.running_mean[0] += 1e-6
    assert detector_fingerprint(detector) != before
    batch_norm.running_mean.copy_(original)
    assert detector_fingerprint(detector) == before
    with torch.no_grad():
        next(detector.parameters()).view(-1)[0] += 1.0
    assert detector_fingerprint(detector) != before
