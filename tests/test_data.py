"""The COCO / COCO_rain loader on tiny hand-made fixtures: quirks, subsets, flips, variants, errors."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from utils.data import build_dataset, collate_fn, check_split, rain_variant_dirs

ID2LABEL = {0: "circle", 1: "square"}
CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "circle"}, {"id": 9, "name": "hexagon"}]


def _save(image: Image.Image, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path)


def _gradient(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)


@pytest.fixture()
def coco_world(tmp_path):
    """Six images, each with a quirk, in COCO + two rain variants (different pixel values)."""
    coco, rain = tmp_path / "coco", tmp_path / "coco_rain"
    images = [
        {"id": 1, "file_name": "rgb.jpg", "width": 80, "height": 60},
        {"id": 2, "file_name": "gray.jpg", "width": 64, "height": 64},
        {"id": 3, "file_name": "cmyk.jpg", "width": 50, "height": 40},
        {"id": 4, "file_name": "rgba.png", "width": 40, "height": 50},
        {"id": 5, "file_name": "palette.png", "width": 32, "height": 32},
        {"id": 6, "file_name": "empty.jpg", "width": 48, "height": 48},
    ]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 5, 20, 30], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [40, 20, 30, 20], "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 7, "bbox": [0, 0, 80, 60], "iscrowd": 1},  # crowd
        {"id": 4, "image_id": 2, "category_id": 3, "bbox": [5, 5, 0, 10], "iscrowd": 0},  # zero width
        {"id": 5, "image_id": 2, "category_id": 7, "bbox": [8, 8, 16, 16], "iscrowd": 0},
        {"id": 6, "image_id": 3, "category_id": 9, "bbox": [1, 1, 10, 10], "iscrowd": 0},  # unknown to the detector
        {"id": 7, "image_id": 3, "category_id": 3, "bbox": [45, 30, 20, 20], "iscrowd": 0},  # partly outside
        {"id": 8, "image_id": 4, "category_id": 7, "bbox": [4, 4, 8, 8], "iscrowd": 0},
        {"id": 9, "image_id": 5, "category_id": 3, "bbox": [2, 2, 10, 10], "iscrowd": 0},
    ]
    for root, offset in ((coco / "val2017", 0), (rain / "light_v0" / "val2017", 1), (rain / "heavy_v0" / "val2017", 2)):
        for image in images:
            pixels = _gradient(image["width"], image["height"], image["id"] * 10 + offset)
            path = str(root / image["file_name"])
            if image["file_name"] == "gray.jpg":
                _save(Image.fromarray(pixels[..., 0]), path)
            elif image["file_name"] == "cmyk.jpg":
                _save(Image.fromarray(pixels).convert("CMYK"), path)
            elif image["file_name"] == "rgba.png":
                _save(Image.fromarray(np.dstack([pixels, np.full(pixels.shape[:2], 128, np.uint8)]), "RGBA"), path)
            elif image["file_name"] == "palette.png":
                _save(Image.fromarray(pixels).convert("P"), path)
            else:
                _save(Image.fromarray(pixels), path)
    annotation = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    for root in (coco, rain / "light_v0", rain / "heavy_v0"):
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / "instances_val2017.json").write_text(json.dumps(annotation))
    return str(coco), str(rain)


def dataset(world, **kwargs):
    coco, rain = world
    settings = dict(image_size=64, train=False, percent=100, coco_ratio=0.0, rain_ratio=1.0, seed=0)
    settings.update(kwargs)
    return build_dataset(coco, rain, "val", ID2LABEL, **settings)


def by_id(data, image_id, is_rainy=True):
    return next(data[i] for i, sample in enumerate(data.samples) if sample == (image_id, is_rainy))


def test_every_image_mode_decodes_to_rgb_at_the_training_size(coco_world):
    data = dataset(coco_world)
    assert len(data) == 6
    for index in range(len(data)):
        image, target = data[index]
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert target["is_rainy"] and target["variant"] in (0, 1)


def test_targets_follow_coco_quirks_and_label_mapping(coco_world):
    data = dataset(coco_world)
    _, target = by_id(data, 1)
    # crowd region dropped; square (id 3) -> label 1, circle (id 7) -> label 0
    assert target["class_labels"].tolist() == [1, 0]
    expected = torch.tensor([[20 / 80, 20 / 60, 20 / 80, 30 / 60], [55 / 80, 30 / 60, 30 / 80, 20 / 60]])
    torch.testing.assert_close(target["boxes"], expected)
    assert target["orig_size"].tolist() == [60, 80] and target["image_id"] == 1
    _, target = by_id(data, 2)
    assert target["class_labels"].tolist() == [0]  # the zero-width box is gone
    _, target = by_id(data, 3)
    assert target["class_labels"].tolist() == [1]  # 'hexagon' is unknown to the detector
    torch.testing.assert_close(target["boxes"], torch.tensor([[47.5 / 50, 35 / 40, 5 / 50, 10 / 40]]))  # clipped
    _, target = by_id(data, 6)
    assert target["class_labels"].shape == (0,) and target["boxes"].shape == (0, 4)  # kept, empty
    assert data.label_to_category_id == {0: 7, 1: 3}


def test_subsets_follow_percent_and_ratios_deterministically(coco_world):
    assert len(dataset(coco_world, percent=50)) == 3
    mixed = dataset(coco_world, percent=100, coco_ratio=0.5, rain_ratio=0.5)
    assert sum(rainy for _, rainy in mixed.samples) == 3 and len(mixed) == 6
    assert len({image_id for image_id, _ in mixed.samples}) == 6  # disjoint halves
    both = dataset(coco_world, percent=50, coco_ratio=1.0, rain_ratio=1.0)
    assert len(both) == 6 and len({image_id for image_id, _ in both.samples}) == 3  # each image clean and rainy
    assert dataset(coco_world, percent=50).samples == dataset(coco_world, percent=50).samples
    seeds = {tuple(dataset(coco_world, percent=50, seed=seed).samples) for seed in range(6)}
    assert len(seeds) > 1
    clean = dataset(coco_world, coco_ratio=1.0, rain_ratio=0.0)
    assert not any(rainy for _, rainy in clean.samples) and clean.rain_dirs == []


def test_flip_moves_image_pair_and_boxes_together(coco_world):
    data = dataset(coco_world, train=True, return_clean_pair=True)
    plain = dataset(coco_world, train=False, return_clean_pair=True)
    index = next(i for i, (image_id, _) in enumerate(data.samples) if image_id == 1)
    flipped_epochs = [epoch for epoch in range(20) if data.flips(1, epoch)]
    assert 0 < len(flipped_epochs) < 20
    epoch = flipped_epochs[0]
    data.set_epoch(epoch)
    plain.set_epoch(epoch)  # same variant, no flip
    image, target = data[index]
    reference, reference_target = plain[index]
    torch.testing.assert_close(image, reference.flip(-1))
    torch.testing.assert_close(target["clean_image"], reference_target["clean_image"].flip(-1))
    mirrored = reference_target["boxes"].clone()
    mirrored[:, 0] = 1.0 - mirrored[:, 0]
    torch.testing.assert_close(target["boxes"], mirrored)


def test_rain_variant_changes_with_epoch_deterministically(coco_world):
    data = dataset(coco_world)
    choices = {epoch: [data.variant_of(image_id, epoch) for image_id in range(1, 7)] for epoch in range(8)}
    assert len({tuple(c) for c in choices.values()}) > 1  # epochs see different rain
    assert choices == {epoch: [dataset(coco_world).variant_of(i, epoch) for i in range(1, 7)] for epoch in range(8)}
    variant = data.variant_of(1, 3)
    data.set_epoch(3)
    image, target = by_id(data, 1)
    assert target["variant"] == variant
    expected_dir = sorted(["heavy_v0", "light_v0"])[variant]
    reference = Image.open(os.path.join(coco_world[1], expected_dir, "val2017", "rgb.jpg")).convert("RGB").resize((64, 64))
    assert (image * 255 - torch.from_numpy(np.array(reference)).permute(2, 0, 1).float()).abs().mean() < 12


def test_variant_choice_reaches_persistent_workers(coco_world):
    data = dataset(coco_world)
    loader = torch.utils.data.DataLoader(data, batch_size=6, num_workers=1, persistent_workers=True, collate_fn=collate_fn)
    for epoch in (0, 5):
        data.set_epoch(epoch)
        _, targets = next(iter(loader))
        assert [t["variant"] for t in targets] == [data.variant_of(t["image_id"], epoch) for t in targets]


def test_collate_stacks_and_drops_unreadable(coco_world, capsys):
    coco, rain = coco_world
    data = dataset(coco_world)
    path = os.path.join(rain, "light_v0", "val2017", "rgb.jpg")
    with open(path, "wb") as file:
        file.write(b"not a jpeg at all")
    for epoch in range(10):
        data.set_epoch(epoch)
        if data.variant_of(1, epoch) == 1:  # sorted: heavy_v0, light_v0
            break
    samples = [data[i] for i in range(len(data))]
    assert sum(sample is None for sample in samples) == 1 and int(data.unreadable) == 1
    assert "skipping unreadable image" in capsys.readouterr().err and "rgb.jpg" in path
    images, targets = collate_fn(samples)
    assert images.shape == (5, 3, 64, 64) and len(targets) == 5
    assert collate_fn([None, None]) is None
    problems = check_split(data, show_progress=False)
    assert any("light_v0/val2017/rgb.jpg: unreadable" in p for p in problems)


def test_missing_paths_are_named(coco_world, tmp_path):
    coco, rain = coco_world
    with pytest.raises(FileNotFoundError, match="COCO_DIR '/nowhere' does not exist"):
        build_dataset("/nowhere", rain, "val", ID2LABEL)
    with pytest.raises(FileNotFoundError, match=r"clean image folder .*train2017"):
        build_dataset(coco, rain, "train", ID2LABEL)
    os.remove(os.path.join(rain, "heavy_v0", "val2017", "cmyk.jpg"))
    with pytest.raises(FileNotFoundError, match=r"rainy image .*heavy_v0/val2017/cmyk.jpg' is listed in .* but missing"):
        build_dataset(coco, rain, "val", ID2LABEL)
    os.remove(os.path.join(coco, "annotations", "instances_val2017.json"))
    with pytest.raises(FileNotFoundError, match=r"annotation file .*instances_val2017.json' does not exist"):
        build_dataset(coco, rain, "val", ID2LABEL)
    with pytest.raises(FileNotFoundError, match="COCO_RAIN_DIR '/no/rain' does not exist"):
        rain_variant_dirs("/no/rain", "val")
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match="has neither val2017/ nor variant folders"):
        rain_variant_dirs(str(tmp_path / "bare"), "val")


def test_rain_dir_forms_single_nested_and_list(coco_world):
    _, rain = coco_world
    single = os.path.join(rain, "light_v0")
    assert rain_variant_dirs(single, "val") == [os.path.join(single, "val2017")]
    assert rain_variant_dirs(rain, "val") == [os.path.join(rain, name, "val2017") for name in ("heavy_v0", "light_v0")]
    assert rain_variant_dirs([single], "val") == [os.path.join(single, "val2017")]


def test_detector_label_missing_from_annotations_is_an_error(coco_world):
    coco, rain = coco_world
    with pytest.raises(ValueError, match="'triangle'"):
        build_dataset(coco, rain, "val", {0: "circle", 1: "square", 2: "triangle"})


def test_exif_orientation_is_not_applied(tmp_path):
    """COCO boxes refer to the stored pixels: a JPEG with an EXIF rotation tag must load unrotated."""
    from utils.data import load_rgb

    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = str(tmp_path / "rotated.jpg")
    Image.fromarray(pixels).save(path, exif=exif)
    image = load_rgb(path)
    assert image.size == (40, 20)
    assert np.asarray(image)[:, :10].mean() > 200 and np.asarray(image)[:, 30:].mean() < 50
