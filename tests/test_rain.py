"""The rain renderer: deterministic, visibly rainy, and writing the layout the loader reads."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from utils.rain import PRESETS, make_rainy_split, rain_rng, render_rain, variant_names


@pytest.fixture(scope="module")
def photo():
    ys, xs = np.mgrid[0:120, 0:160]
    return np.stack([xs * 1.5, ys * 2.0, np.full_like(xs, 60)], -1).astype(np.uint8)


def test_rain_is_a_function_of_seed_image_and_variant(photo):
    first = render_rain(photo, "medium", rain_rng(1, 42, 0))
    assert first.shape == photo.shape and first.dtype == np.uint8
    assert np.array_equal(first, render_rain(photo, "medium", rain_rng(1, 42, 0)))
    assert not np.array_equal(first, render_rain(photo, "medium", rain_rng(1, 42, 1)))
    assert not np.array_equal(first, render_rain(photo, "medium", rain_rng(1, 43, 0)))


def test_heavier_rain_covers_more_and_hazes_more(photo):
    streak_fraction, contrast = {}, {}
    for preset in ("light", "medium", "heavy"):
        rainy = render_rain(photo, preset, rain_rng(0, 1, 0)).astype(float)
        brighter = (rainy - photo).mean(-1)
        streak_fraction[preset] = (brighter > 40).mean()
        contrast[preset] = rainy.std()
    assert 0 < streak_fraction["light"] < streak_fraction["medium"] < streak_fraction["heavy"]
    assert PRESETS["heavy"].transmission < PRESETS["medium"].transmission < PRESETS["light"].transmission
    with pytest.raises(ValueError, match="rain preset must be one of"):
        render_rain(photo, "drizzle", rain_rng(0, 0, 0))


def _coco_folder(root, count=4):
    images = []
    os.makedirs(os.path.join(root, "val2017"))
    os.makedirs(os.path.join(root, "annotations"))
    for index in range(count):
        name = f"{index:03d}.jpg"
        Image.fromarray(np.full((30, 40, 3), 40 * index, np.uint8)).save(os.path.join(root, "val2017", name))
        images.append({"id": index + 1, "file_name": name, "width": 40, "height": 30})
    path = os.path.join(root, "annotations", "instances_val2017.json")
    with open(path, "w") as file:
        json.dump({"images": images, "annotations": [], "categories": [{"id": 1, "name": "thing"}]}, file)
    return path


def test_make_rainy_split_writes_variants_copies_annotations_and_resumes(tmp_path):
    coco, rain = str(tmp_path / "coco"), str(tmp_path / "rain")
    annotation_file = _coco_folder(coco)
    report = make_rainy_split(coco, rain, "val2017", annotation_file, ["light", "heavy"], 2, seed=3, show_progress=False)
    assert report["written"] == 16 and report["skipped"] == 0
    assert sorted(os.listdir(rain)) == ["heavy_v0", "heavy_v1", "light_v0", "light_v1"]
    for name in variant_names(["light", "heavy"], 2):
        assert sorted(os.listdir(os.path.join(rain, name, "val2017"))) == ["000.jpg", "001.jpg", "002.jpg", "003.jpg"]
        assert os.path.isfile(os.path.join(rain, name, "annotations", "instances_val2017.json"))
    os.remove(os.path.join(rain, "light_v1", "val2017", "002.jpg"))
    again = make_rainy_split(coco, rain, "val2017", annotation_file, ["light", "heavy"], 2, seed=3, show_progress=False)
    assert again["written"] == 1 and again["skipped"] == 15
    assert not any(name.endswith(".tmp") or ".tmp" in name for name in os.listdir(os.path.join(rain, "light_v1", "val2017")))


def test_single_variant_fills_the_rain_dir_itself_and_workers_agree(tmp_path):
    coco = str(tmp_path / "coco")
    annotation_file = _coco_folder(coco, count=3)
    serial, parallel = str(tmp_path / "serial"), str(tmp_path / "parallel")
    make_rainy_split(coco, serial, "val2017", annotation_file, ["medium"], 1, seed=5, workers=0, show_progress=False)
    make_rainy_split(coco, parallel, "val2017", annotation_file, ["medium"], 1, seed=5, workers=2, show_progress=False)
    for name in ("000.jpg", "001.jpg", "002.jpg"):
        a = np.asarray(Image.open(os.path.join(serial, "val2017", name)))
        b = np.asarray(Image.open(os.path.join(parallel, "val2017", name)))
        assert np.array_equal(a, b)


def test_missing_source_image_is_named(tmp_path):
    coco = str(tmp_path / "coco")
    annotation_file = _coco_folder(coco, count=2)
    os.remove(os.path.join(coco, "val2017", "001.jpg"))
    with pytest.raises(FileNotFoundError, match=r"image .*val2017/001.jpg' is listed in .* but missing"):
        make_rainy_split(coco, str(tmp_path / "rain"), "val2017", annotation_file, show_progress=False)
