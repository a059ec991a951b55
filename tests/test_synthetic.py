"""The synthetic demo world: exact boxes, deterministic, read by the very loader real COCO uses."""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

import Make_Synthetic_World
from utils.data.coco import build_dataset, collate_fn
from utils.data.synthetic import ID2LABEL, SHAPES, build_synthetic_world, render_scene


def test_scenes_are_deterministic_and_boxes_hold_the_objects():
    image, objects = render_scene(np.random.default_rng([4, 7]), 96)
    again, objects_again = render_scene(np.random.default_rng([4, 7]), 96)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert np.array_equal(image, again) and objects == objects_again
    counts = [len(render_scene(np.random.default_rng([seed]), 96)[1]) for seed in range(40)]
    assert min(counts) >= 1 and max(counts) <= 6 and len(set(counts)) >= 4
    for category_id, (x, y, w, h) in objects:
        assert 1 <= category_id <= len(SHAPES)
        assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 96 and w > 0 and h > 0


def test_square_fills_exactly_its_box():
    # Scan seeds for a lone square on the canvas and check that its box is tight to the pixels.
    for seed in range(200):
        image, objects = render_scene(np.random.default_rng([seed]), 64, max_objects=1)
        if objects[0][0] == SHAPES.index("square") + 1:
            break
    else:
        pytest.fail("no lone square in 200 scenes")
    x, y, w, h = (int(v) for v in objects[0][1])
    inside = image[y : y + h, x : x + w].reshape(-1, 3)
    assert (inside == inside[0]).all(axis=1).mean() > 0.95  # one flat colour (JPEG not involved here)
    outside = image[y + h :, :].reshape(-1, 3) if y + h < 64 else image[:y, :].reshape(-1, 3)
    assert not (outside == inside[0]).all(axis=1).any()  # and nothing of that colour outside it


def _digest(root):
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            digest.update(name.encode())
            with open(os.path.join(folder, name), "rb") as file:
                digest.update(file.read())
    return digest.hexdigest()


def test_world_goes_through_the_coco_loader(tmp_path):
    paths = build_synthetic_world(str(tmp_path / "world"), num_train=12, num_val=6, image_size=64, seed=1,
                                  rain_presets=("medium", "heavy"), show_progress=False)
    assert sorted(os.listdir(paths["coco_rain_dir"])) == ["heavy_v0", "medium_v0"]
    train = build_dataset(paths["coco_dir"], paths["coco_rain_dir"], "train", ID2LABEL, image_size=64, train=True,
                          return_clean_pair=True)
    val = build_dataset(paths["coco_dir"], paths["coco_rain_dir"], "val", ID2LABEL, image_size=64, coco_ratio=1.0,
                        rain_ratio=0.0)
    assert len(train) == 12 and len(val) == 6 and len(train.rain_dirs) == 2
    with open(val.annotation_file) as file:
        assert [c["name"] for c in json.load(file)["categories"]] == list(SHAPES)
    assert train.label_to_category_id == {label: label + 1 for label in range(len(SHAPES))}
    images, targets = collate_fn([train[i] for i in range(4)])
    assert images.shape == (4, 3, 64, 64)
    assert all(len(t["class_labels"]) >= 1 for t in targets)
    assert all(((t["boxes"] > 0) & (t["boxes"] <= 1)).all() for t in targets)
    for image, target in zip(images, targets):
        assert (image - target["clean_image"]).abs().mean() > 0.02  # the rainy copy really differs


def test_world_is_a_function_of_the_seed(tmp_path):
    build_synthetic_world(str(tmp_path / "a"), num_train=4, num_val=2, image_size=48, seed=3, show_progress=False)
    build_synthetic_world(str(tmp_path / "b"), num_train=4, num_val=2, image_size=48, seed=3, show_progress=False)
    build_synthetic_world(str(tmp_path / "c"), num_train=4, num_val=2, image_size=48, seed=4, show_progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_a_built_world_is_reused_and_other_settings_rebuild_it(tmp_path, capsys):
    root = str(tmp_path / "world")
    paths = Make_Synthetic_World.main([f"--WORLD_DIR={root}", "--NUM_TRAIN=3", "--NUM_VAL=2", "--WORLD_IMAGE_SIZE=40"])
    assert "--COCO_DIR=" in capsys.readouterr().out
    first_file = os.path.join(paths["coco_dir"], "train2017", "000000000001.jpg")
    stamp = os.stat(first_file).st_mtime_ns
    assert build_synthetic_world(root, 3, 2, image_size=40, show_progress=False) == paths
    assert os.stat(first_file).st_mtime_ns == stamp  # reused, not rewritten
    build_synthetic_world(root, 3, 2, image_size=56, show_progress=False)
    assert Image.open(first_file).size == (56, 56)
    assert Image.open(os.path.join(paths["coco_rain_dir"], "train2017", "000000000001.jpg")).size == (56, 56)
    foreign = tmp_path / "foreign"
    (foreign / "coco").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="holds coco/ or coco_rain/ but no world.json"):
        build_synthetic_world(str(foreign), 3, 2, show_progress=False)
    assert (foreign / "coco").is_dir()  # left alone
