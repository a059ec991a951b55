"""The rain renderer: deterministic, visibly rainy, fast, and writing the layout the loader reads."""

import json
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

import Make_COCO_Rain
from utils.data.coco import build_dataset
from utils.data.rain import (
    PRESETS, family_presets, make_rainy_split, motion_blur, rain_rng, render_rain, renderer_versions, split_by_family,
    variant_names,
)
from utils.data.coco import rain_variant_dirs
from utils.data.synthetic import build_synthetic_world


@pytest.fixture(scope="module")
def photo():
    ys, xs = np.mgrid[0:120, 0:160]
    return np.stack([xs * 1.5, ys * 2.0, np.full_like(xs, 60)], -1).astype(np.uint8)


def test_rain_is_a_function_of_seed_image_and_variant(photo):
    first = render_rain(photo, "medium", rain_rng(1, 42, "medium_v0"))
    assert first.shape == photo.shape and first.dtype == np.uint8
    assert np.array_equal(first, render_rain(photo, "medium", rain_rng(1, 42, "medium_v0")))
    assert not np.array_equal(first, render_rain(photo, "medium", rain_rng(1, 42, "medium_v1")))
    assert not np.array_equal(first, render_rain(photo, "medium", rain_rng(1, 43, "medium_v0")))
    assert not np.array_equal(first, render_rain(photo, "medium", rain_rng(2, 42, "medium_v0")))


def test_a_drop_becomes_a_tapered_streak_along_the_wind():
    drops = torch.zeros(41, 41)
    drops[20, 20] = 0.8
    vertical = motion_blur(drops, 11, 0.0)
    assert vertical[20, 20] == pytest.approx(0.8)  # as bright as the drop in its middle
    assert (vertical[15:26, 20] > 0).all() and vertical[:, :20].sum() == 0 and vertical[:, 21:].sum() == 0
    assert vertical[15, 20] < vertical[18, 20] < vertical[20, 20]  # fading towards the ends
    leaning = motion_blur(drops, 11, 30.0)
    rows, cols = torch.nonzero(leaning, as_tuple=True)
    slope = np.polyfit(rows.numpy() - 20, cols.numpy() - 20, 1)[0]
    assert slope == pytest.approx(np.tan(np.radians(30)), abs=0.1)  # 30 degrees from vertical


def test_heavier_rain_covers_more_and_hazes_more(photo):
    streak_fraction, contrast = {}, {}
    for preset in ("light", "medium", "heavy"):
        rainy = render_rain(photo, preset, rain_rng(0, 1, "v")).astype(float)
        brighter = (rainy - photo).mean(-1)
        streak_fraction[preset] = (brighter > 40).mean()
        contrast[preset] = np.abs(rainy[1:] - rainy[:-1]).mean() + np.abs(rainy[:, 1:] - rainy[:, :-1]).mean()
    assert 0.005 < streak_fraction["light"] < streak_fraction["medium"] < streak_fraction["heavy"]
    assert PRESETS["heavy"].transmission < PRESETS["medium"].transmission < PRESETS["light"].transmission
    # Haze lifts dark pixels towards the atmospheric light: the darkest corner is no longer black.
    dark = np.zeros((120, 160, 3), np.uint8)
    lifted = [render_rain(dark, preset, rain_rng(0, 1, "v"))[:10].min() for preset in ("light", "medium", "heavy")]
    assert 0 < lifted[0] < lifted[1] < lifted[2]
    with pytest.raises(ValueError, match="rain preset must be one of"):
        render_rain(photo, "drizzle", rain_rng(0, 0, "v"))


def test_rendering_a_coco_sized_image_is_vectorised():
    """A guard against per-pixel Python loops, which take seconds: 640x480 renders in milliseconds
    on one core (streaks about 15 ms, a downpour about 50 ms; the bounds leave room for a busy CI machine)."""
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core, as each Make_COCO_Rain worker has
    try:
        for preset, bound in (("heavy", 0.1), ("downpour_heavy", 0.3)):
            render_rain(image, preset, rain_rng(0, 0, "v"))
            seconds = []
            for image_id in range(3):
                start = time.perf_counter()
                render_rain(image, preset, rain_rng(0, image_id, "v"))
                seconds.append(time.perf_counter() - start)
            assert sorted(seconds)[1] < bound, preset
    finally:
        torch.set_num_threads(threads)


def _coco_folder(root, count=4):
    images = []
    os.makedirs(os.path.join(root, "val2017"))
    os.makedirs(os.path.join(root, "annotations"))
    for index in range(count):
        name = f"{index:03d}.jpg"
        Image.fromarray(np.full((30, 40, 3), 40 * index, np.uint8)).save(os.path.join(root, "val2017", name))
        images.append({"id": index + 1, "file_name": name, "width": 40, "height": 30})
    path = os.path.join(root, "annotations", "instances_val2017.json")
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 0}]
    with open(path, "w") as file:
        json.dump({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}, file)
    return path


def test_make_rainy_split_writes_variants_copies_annotations_and_resumes(tmp_path):
    coco, rain = str(tmp_path / "coco"), str(tmp_path / "rain")
    annotation_file = _coco_folder(coco)
    report = make_rainy_split(coco, rain, "val2017", annotation_file, ["light", "heavy"], 2, seed=3,
                              show_progress=False)
    assert report["written"] == 16 and report["skipped"] == 0 and report["failed"] == []
    assert sorted(os.listdir(rain)) == ["heavy_v0", "heavy_v1", "light_v0", "light_v1"]
    for name in variant_names(["light", "heavy"], 2):
        assert sorted(os.listdir(os.path.join(rain, name, "val2017"))) == ["000.jpg", "001.jpg", "002.jpg", "003.jpg"]
        with (open(os.path.join(rain, name, "annotations", "instances_val2017.json")) as copy,
              open(annotation_file) as original):
            assert copy.read() == original.read()
    os.remove(os.path.join(rain, "light_v1", "val2017", "002.jpg"))
    again = make_rainy_split(coco, rain, "val2017", annotation_file, ["light", "heavy"], 2, seed=3, show_progress=False)
    assert again["written"] == 1 and again["skipped"] == 15
    assert not any(".tmp" in name for _, _, files in os.walk(rain) for name in files)
    # A variant's rain depends on its name, not on which other variants the run renders.
    alone = str(tmp_path / "alone")
    make_rainy_split(coco, alone, "val2017", annotation_file, ["heavy", "medium"], 2, seed=3, show_progress=False)
    for name in ("000.jpg", "003.jpg"):
        a = np.asarray(Image.open(os.path.join(rain, "heavy_v1", "val2017", name)))
        assert np.array_equal(a, np.asarray(Image.open(os.path.join(alone, "heavy_v1", "val2017", name))))


def test_other_rain_into_the_same_folder_is_refused(tmp_path):
    coco, rain = str(tmp_path / "coco"), str(tmp_path / "rain")
    annotation_file = _coco_folder(coco, count=2)
    make_rainy_split(coco, rain, "val2017", annotation_file, ["medium"], 1, seed=0, show_progress=False)
    with pytest.raises(ValueError, match=r"holds rain rendered with .*'seed': 0.*this run asks for .*'seed': 1"):
        make_rainy_split(coco, rain, "val2017", annotation_file, ["medium"], 1, seed=1, show_progress=False)
    with pytest.raises(ValueError, match="holds one rain variant itself"):
        make_rainy_split(coco, rain, "val2017", annotation_file, ["light", "heavy"], 1, seed=0, show_progress=False)
    foreign = tmp_path / "foreign"
    (foreign / "val2017").mkdir(parents=True)
    (foreign / "val2017" / "000.jpg").write_bytes(b"someone else's rain")
    with pytest.raises(ValueError, match="already holds files but .* has no rain_settings.json"):
        make_rainy_split(coco, str(foreign), "val2017", annotation_file, show_progress=False)


def test_single_variant_fills_the_rain_dir_itself_and_workers_agree(tmp_path):
    coco = str(tmp_path / "coco")
    annotation_file = _coco_folder(coco, count=3)
    serial, parallel = str(tmp_path / "serial"), str(tmp_path / "parallel")
    make_rainy_split(coco, serial, "val2017", annotation_file, ["medium"], 1, seed=5, workers=0, show_progress=False)
    make_rainy_split(coco, parallel, "val2017", annotation_file, ["medium"], 1, seed=5, workers=2, show_progress=False)
    assert sorted(os.listdir(serial)) == ["annotations", "rain_settings.json", "val2017"]
    for name in ("000.jpg", "001.jpg", "002.jpg"):
        a = np.asarray(Image.open(os.path.join(serial, "val2017", name)))
        b = np.asarray(Image.open(os.path.join(parallel, "val2017", name)))
        assert np.array_equal(a, b)


def test_bad_sources_are_named(tmp_path, capsys):
    coco = str(tmp_path / "coco")
    annotation_file = _coco_folder(coco, count=3)
    with open(os.path.join(coco, "val2017", "001.jpg"), "wb") as file:
        file.write(b"truncated")
    report = make_rainy_split(coco, str(tmp_path / "rain"), "val2017", annotation_file, show_progress=False)
    assert report["written"] == 2 and len(report["failed"]) == 1 and "val2017/001.jpg" in report["failed"][0]
    assert "could not render" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "rain" / "val2017")) == ["000.jpg", "002.jpg"]
    os.remove(os.path.join(coco, "val2017", "001.jpg"))
    with pytest.raises(FileNotFoundError, match=r"image .*val2017/001.jpg' is listed in .* but missing"):
        make_rainy_split(coco, str(tmp_path / "rain2"), "val2017", annotation_file, show_progress=False)
    with pytest.raises(FileNotFoundError, match=r"image folder .*train2017' does not exist"):
        make_rainy_split(coco, str(tmp_path / "rain3"), "train2017", annotation_file, show_progress=False)


def test_make_coco_rain_script_writes_what_the_loader_reads(tmp_path, capsys):
    coco, rain = str(tmp_path / "coco"), str(tmp_path / "rain")
    _coco_folder(coco)
    reports = Make_COCO_Rain.main([
        f"--COCO_DIR={coco}", f"--COCO_RAIN_DIR={rain}", "--SPLITS=['val']", "--PRESETS=['light', 'heavy']",
        "--WORKERS=0", "--LIMIT=None",
    ])
    assert reports["val"]["written"] == 8
    assert "images/s per worker" in capsys.readouterr().out
    data = build_dataset(coco, rain, "val", {0: "thing"}, image_size=32, return_clean_pair=True)
    assert len(data) == 4 and len(data.rain_dirs) == 2
    image, target = data[0]
    assert image.shape == (3, 32, 32) and target["class_labels"].tolist() == [0]
    assert (image - target["clean_image"]).abs().mean() > 0.02  # rainy differs from its clean pair


def test_streak_presets_render_exactly_as_before_the_drop_family(photo):
    """SHA-256 of renderings made before the drop family existed: adding it changed no streak pixel."""
    import hashlib

    before = {
        "light": "f1e6f3d2f713d0bca6e35bfecf0faea7be8e5ae24cfcc951b07e375af47e3991",
        "medium": "6c7d4e01a4175150337a0343fa973b1184392a31ed88f317d92ce91a190aa6c5",
        "heavy": "2a07a7242a1e2bbc262040e41d5dc2d05950518bd8ccc3e6e3e64aaa95c08310",
    }
    for preset, digest in before.items():
        rainy = render_rain(photo, preset, rain_rng(7, 3, f"{preset}_v0"))
        assert hashlib.sha256(rainy.tobytes()).hexdigest() == digest


def test_earlier_presets_render_exactly_as_before_the_downpour_family(photo):
    """SHA-256 of renderings made before the downpour family existed, on the photo and on a noise image:
    adding it changed no streak or drop pixel."""
    import hashlib

    noise = np.random.default_rng(11).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    before = {
        ("photo", "light"): "f1e6f3d2f713d0bca6e35bfecf0faea7be8e5ae24cfcc951b07e375af47e3991",
        ("photo", "medium"): "6c7d4e01a4175150337a0343fa973b1184392a31ed88f317d92ce91a190aa6c5",
        ("photo", "heavy"): "2a07a7242a1e2bbc262040e41d5dc2d05950518bd8ccc3e6e3e64aaa95c08310",
        ("photo", "drops_light"): "30b0097dd32228bbd02176edc9cb7bc09ddedb33ef890ec239aba821a1c6c602",
        ("photo", "drops_heavy"): "fa9bbb388bfc0f285b5d0b8e1a24d6712ff53d30a9eb6cc7a8773af1438e482d",
        ("noise", "light"): "fa37da56616a358ba0474ba7db46a490651ac701d9dcf902a7d10c6a9ee996c2",
        ("noise", "medium"): "c7016efb791c7b8aae83b4f19aa0e7520c803ed6608bc8316071e26af23b3446",
        ("noise", "heavy"): "6fd574fd26259ed35a1d39a7194691f94ebadad72a494965d6c156d5efa46382",
        ("noise", "drops_light"): "00a9c27b590f55f2ecab9209f1630a47216b3a0da0fbf86255abcc146d050951",
        ("noise", "drops_heavy"): "46526d5cadc8f2403d04b21c97461b277cb23ded4b4eb81dd3ddb65afc43a5b8",
    }
    for (image, preset), digest in before.items():
        rainy = render_rain({"photo": photo, "noise": noise}[image], preset, rain_rng(7, 3, f"{preset}_v0"))
        assert hashlib.sha256(rainy.tobytes()).hexdigest() == digest, (image, preset)


def test_downpour_is_a_deterministic_washed_out_veil_unlike_streaks(photo):
    names = ["downpour_light", "downpour_medium", "downpour_heavy"]
    assert family_presets("downpour") == names
    first = render_rain(photo, "downpour_medium", rain_rng(1, 42, "downpour_medium_v0"))
    assert first.shape == photo.shape and first.dtype == np.uint8
    assert np.array_equal(first, render_rain(photo, "downpour_medium", rain_rng(1, 42, "downpour_medium_v0")))
    assert not np.array_equal(first, render_rain(photo, "downpour_medium", rain_rng(1, 43, "downpour_medium_v0")))
    assert not np.array_equal(first, render_rain(photo, "downpour_medium", rain_rng(1, 42, "downpour_medium_v1")))

    def colour(image):  # mean spread between an image's channels: 0 for grey
        return np.ptp(image.astype(float), axis=-1).mean()

    heavy_streaks = render_rain(photo, "heavy", rain_rng(0, 1, "v"))
    downpours = [render_rain(photo, name, rain_rng(0, 1, "v")) for name in names]
    spread = [image.astype(float).std() for image in [photo] + downpours]
    # Contrast and colour drop, more with every preset, and further than under the heaviest streaks.
    assert spread[0] > spread[1] > spread[2] > spread[3] and spread[1] < heavy_streaks.astype(float).std()
    colours = [colour(image) for image in [photo] + downpours]
    assert colours[0] > colours[1] > colours[2] > colours[3] and colours[1] < colour(heavy_streaks)
    # No bright streaks: on a flat grey picture bright marks are splashes, in the lower 40 % only,
    # where streaks light up the whole picture.
    grey = np.full((120, 160, 3), 100, np.uint8)
    for name, in_upper_part in (("heavy", True), ("downpour_heavy", False)):
        rainy = render_rain(grey, name, rain_rng(0, 1, "v")).astype(float).mean(-1)
        bright = rainy > np.median(rainy) + 50
        assert bright[:72].any() == in_upper_part and bright[72:].mean() > 0.01, name
    assert renderer_versions(["medium", "downpour_light"]) == {"renderer_version": 2, "downpour_renderer_version": 1}


def test_downpour_renders_through_make_coco_rain_and_the_world_builder(tmp_path):
    coco, rain = str(tmp_path / "coco"), str(tmp_path / "rain")
    _coco_folder(coco, count=2)
    reports = Make_COCO_Rain.main([f"--COCO_DIR={coco}", f"--COCO_RAIN_DIR={rain}", "--SPLITS=['val']",
                                   "--PRESETS=['downpour_heavy']", "--WORKERS=0"])
    assert reports["val"]["written"] == 2
    assert sorted(os.listdir(os.path.join(rain, "val2017"))) == ["000.jpg", "001.jpg"]
    with open(os.path.join(rain, "rain_settings.json")) as file:
        assert json.load(file) == {"variant": "downpour_heavy_v0", "seed": 0, "renderer_version": 2,
                                   "downpour_renderer_version": 1}
    paths = build_synthetic_world(str(tmp_path / "world"), num_train=2, num_val=2, image_size=32,
                                  rain_presets=("downpour_medium",), show_progress=False)
    assert len(os.listdir(os.path.join(paths["coco_rain_dir"], "val2017"))) == 2
    assert split_by_family(rain_variant_dirs(paths["coco_rain_dir"], "val"), "downpour")[1] == [paths["coco_rain_dir"]]


def test_drops_are_deterministic_local_blurred_lenses(photo):
    assert family_presets("streaks") == ["light", "medium", "heavy"]
    assert family_presets("drops") == ["drops_light", "drops_heavy"]
    first = render_rain(photo, "drops_heavy", rain_rng(1, 42, "drops_heavy_v0"))
    assert first.shape == photo.shape and first.dtype == np.uint8
    assert np.array_equal(first, render_rain(photo, "drops_heavy", rain_rng(1, 42, "drops_heavy_v0")))
    assert not np.array_equal(first, render_rain(photo, "drops_heavy", rain_rng(1, 42, "drops_heavy_v1")))
    covered = {}
    for preset in ("drops_light", "drops_heavy"):
        changed = np.abs(render_rain(photo, preset, rain_rng(0, 1, "v")).astype(int) - photo).max(-1) > 8
        covered[preset] = changed.mean()
    # Drops cover part of the picture, more in heavier presets, and leave the rest untouched
    # (streak rain with its haze changes every pixel).
    assert 0.02 < covered["drops_light"] < covered["drops_heavy"] < 0.6
    # Inside a drop the view is blurred: on a checkerboard, drops lower the local contrast.
    board = ((np.indices((120, 160)).sum(0) // 2) % 2 * 200 + 20).astype(np.uint8)[..., None].repeat(3, -1)
    rainy = render_rain(board, "drops_heavy", rain_rng(0, 2, "v")).astype(float)
    changed = np.abs(rainy - board).max(-1) > 8
    contrast = np.abs(rainy[:, 1:] - rainy[:, :-1]).max(-1)
    assert contrast[changed[:, 1:]].mean() < 0.5 * contrast[~changed[:, 1:]].mean()


def test_presets_are_randomised_within_their_family():
    rng = np.random.default_rng(0)
    for name, preset in PRESETS.items():
        neighbours = [preset.randomised(rng) for _ in range(20)]
        assert all(type(n) is type(preset) and n != preset for n in neighbours)
        image = render_rain(np.full((48, 64, 3), 90, np.uint8), neighbours[0], rain_rng(0, 0, name))
        assert image.shape == (48, 64, 3)
    assert all(0 < n.transmission <= 1 and n.brightness <= 1
               for n in (PRESETS["heavy"].randomised(rng) for _ in range(50)))


def test_variant_folders_know_their_family(tmp_path):
    coco, rain = str(tmp_path / "coco"), str(tmp_path / "rain")
    annotation_file = _coco_folder(coco, count=2)
    make_rainy_split(coco, rain, "val2017", annotation_file, ["medium", "drops_light"], 1, seed=0, show_progress=False)
    with open(os.path.join(rain, "drops_light_v0", "rain_settings.json")) as file:
        assert json.load(file) == {"variant": "drops_light_v0", "seed": 0, "renderer_version": 2,
                                   "drops_renderer_version": 1}
    with open(os.path.join(rain, "medium_v0", "rain_settings.json")) as file:
        assert json.load(file) == {"variant": "medium_v0", "seed": 0, "renderer_version": 2}  # as before drops existed
    others, held_out = split_by_family(rain_variant_dirs(rain, "val"), "drops")
    assert others == [os.path.join(rain, "medium_v0")] and held_out == [os.path.join(rain, "drops_light_v0")]
    with pytest.raises(ValueError, match="rain family must be one of"):
        split_by_family(rain_variant_dirs(rain, "val"), "snow")
    os.remove(os.path.join(rain, "medium_v0", "rain_settings.json"))
    with pytest.raises(FileNotFoundError, match="medium_v0' has no rain_settings.json"):
        split_by_family(rain_variant_dirs(rain, "val"), "drops")
