"""The synthetic demo world: exact boxes, deterministic, read by the very loader real COCO uses."""

import hashlib
import os

import numpy as np
import pytest

from utils.data import build_dataset, collate_fn
from utils.synthetic import SHAPES, build_synthetic_world, render_scene


def test_scenes_are_deterministic_and_boxes_hold_the_objects():
    image, objects = render_scene(np.random.default_rng([4, 7]), 96)
    again, objects_again = render_scene(np.random.default_rng([4, 7]), 96)
    assert np.array_equal(image, again) and objects == objects_again
    assert 1 <= len(objects) <= 6
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
    paths = build_synthetic_world(str(tmp_path / "world"), num_train=12, num_val=6, image_size=64, seed=1, show_progress=False)
    id2label = dict(enumerate(SHAPES))
    train = build_dataset(paths["coco_dir"], paths["coco_rain_dir"], "train", id2label, image_size=64, train=True)
    val = build_dataset(paths["coco_dir"], paths["coco_rain_dir"], "val", id2label, image_size=64, coco_ratio=1.0, rain_ratio=0.0)
    assert len(train) == 12 and len(val) == 6
    images, targets = collate_fn([train[i] for i in range(4)])
    assert images.shape == (4, 3, 64, 64)
    assert all(len(t["class_labels"]) >= 1 for t in targets)
    assert all(((t["boxes"] > 0) & (t["boxes"] <= 1)).all() for t in targets)
    rainy = train[0][0]
    clean = build_dataset(paths["coco_dir"], None, "train", id2label, image_size=64, coco_ratio=1.0, rain_ratio=0.0)[0][0]
    assert (rainy - clean).abs().mean() > 0.02  # the rainy copy really differs


def test_world_is_a_function_of_the_seed(tmp_path):
    first = build_synthetic_world(str(tmp_path / "a"), num_train=4, num_val=2, image_size=48, seed=3, show_progress=False)
    second = build_synthetic_world(str(tmp_path / "b"), num_train=4, num_val=2, image_size=48, seed=3, show_progress=False)
    other = build_synthetic_world(str(tmp_path / "c"), num_train=4, num_val=2, image_size=48, seed=4, show_progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    assert set(first) == {"coco_dir", "coco_rain_dir"} and second and other
