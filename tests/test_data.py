"""The COCO / COCO_rain loader on tiny hand-made fixtures: quirks, subsets, flips, variants, errors."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from utils.data.coco import (
    CocoRainDataset, build_dataset, check_split, collate_fn, load_rgb, loader_settings, rain_variant_dirs,
)

ID2LABEL = {0: "circle", 1: "square"}
CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "circle"}, {"id": 9, "name": "hexagon"}]
IMAGES = [
    {"id": 1, "file_name": "rgb.jpg", "width": 80, "height": 60},
    {"id": 2, "file_name": "gray.jpg", "width": 64, "height": 64},
    {"id": 3, "file_name": "cmyk.jpg", "width": 50, "height": 40},
    {"id": 4, "file_name": "rgba.png", "width": 40, "height": 50},
    {"id": 5, "file_name": "palette.png", "width": 32, "height": 32},
    {"id": 6, "file_name": "empty.jpg", "width": 48, "height": 48},
]
ANNOTATIONS = [
    {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 5, 20, 30], "iscrowd": 0},
    {"id": 2, "image_id": 1, "category_id": 7, "bbox": [40, 20, 30, 20], "iscrowd": 0},
    {"id": 3, "image_id": 1, "category_id": 7, "bbox": [0, 0, 80, 60], "iscrowd": 1},  # crowd
    {"id": 4, "image_id": 2, "category_id": 3, "bbox": [5, 5, 0, 10], "iscrowd": 0},  # zero width
    {"id": 5, "image_id": 2, "category_id": 7, "bbox": [8, 8, 16, 16], "iscrowd": 0},
    {"id": 6, "image_id": 3, "category_id": 9, "bbox": [1, 1, 10, 10], "iscrowd": 0},  # unknown to the detector
    {"id": 7, "image_id": 3, "category_id": 3, "bbox": [45, 30, 20, 20], "iscrowd": 0},  # partly outside
    {"id": 8, "image_id": 4, "category_id": 7, "bbox": [4, 4, 8, 8], "iscrowd": 0},
    {"id": 9, "image_id": 5, "category_id": 3, "bbox": [2, 2, 10, 10], "iscrowd": 0},
    {"id": 10, "image_id": 5, "category_id": 7, "bbox": [50, 50, 5, 5], "iscrowd": 0},  # entirely outside
]


def _save(image: Image.Image, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path)


def _write_image(info: dict, path: str, seed: int) -> None:
    """The fixture image in its quirky mode, random pixels (so that variants differ)."""
    pixels = np.random.default_rng(seed).integers(0, 255, size=(info["height"], info["width"], 3), dtype=np.uint8)
    name = info["file_name"]
    if name == "gray.jpg":
        _save(Image.fromarray(pixels[..., 0]), path)
    elif name == "cmyk.jpg":
        _save(Image.fromarray(pixels).convert("CMYK"), path)
    elif name == "rgba.png":
        _save(Image.fromarray(np.dstack([pixels, np.full(pixels.shape[:2], 128, np.uint8)]), "RGBA"), path)
    elif name == "palette.png":
        _save(Image.fromarray(pixels).convert("P"), path)
    else:
        _save(Image.fromarray(pixels), path)


@pytest.fixture()
def coco_world(tmp_path):
    """Six images, each with a quirk, in COCO + two rain variants (different pixel values)."""
    coco, rain = tmp_path / "coco", tmp_path / "coco_rain"
    for root, offset in ((coco / "val2017", 0), (rain / "light_v0" / "val2017", 1), (rain / "heavy_v0" / "val2017", 2)):
        for info in IMAGES:
            _write_image(info, str(root / info["file_name"]), info["id"] * 10 + offset)
    annotation = {"images": IMAGES, "annotations": ANNOTATIONS, "categories": CATEGORIES}
    for root in (coco, rain / "light_v0", rain / "heavy_v0"):
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / "instances_val2017.json").write_text(json.dumps(annotation))
    return str(coco), str(rain)


def dataset(world, **kwargs) -> CocoRainDataset:
    coco, rain = world
    settings = dict(image_size=64, train=False, percent=100, coco_ratio=0.0, rain_ratio=1.0, seed=0)
    settings.update(kwargs)
    return build_dataset(coco, rain, "val", ID2LABEL, **settings)


def by_id(data, image_id, is_rainy=True):
    return data[data.samples.index((image_id, is_rainy))]


def corrupt(path: str) -> None:
    with open(path, "wb") as file:
        file.write(b"not an image at all")


def test_every_image_mode_decodes_to_rgb_at_the_training_size(coco_world):
    data = dataset(coco_world)
    assert len(data) == 6
    for index in range(len(data)):
        image, target = data[index]
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and image.is_contiguous()
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert target["is_rainy"] and target["variant"] in (0, 1)
        assert target["class_labels"].dtype == torch.int64 and target["boxes"].dtype == torch.float32
    grey, _ = by_id(data, 2)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])  # L -> RGB replicates the channel


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
    _, target = by_id(data, 5)
    assert target["class_labels"].tolist() == [1]  # the box lying outside the image is gone
    _, target = by_id(data, 6)
    assert target["class_labels"].shape == (0,) and target["boxes"].shape == (0, 4)  # kept, empty
    assert data.label_to_category_id == {0: 7, 1: 3} and data.category_id_to_label == {7: 0, 3: 1}


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
    # The clean and the rainy validation splits hold the same images, whatever the percent.
    clean_half, rainy_half = (dataset(coco_world, percent=50, coco_ratio=1.0, rain_ratio=0.0),
                              dataset(coco_world, percent=50))
    assert [i for i, _ in clean_half.samples] == [i for i, _ in rainy_half.samples]


def test_plan_defaults_give_ten_percent_of_coco_train_rainy():
    coco_train_ids = list(range(1, 118_288))  # 118,287 images in train2017
    choose = CocoRainDataset._choose_samples
    samples = choose(SimpleNamespace(seed=42), coco_train_ids, 10, 0.0, 1.0)
    assert len(samples) == 11_829 and all(rainy for _, rainy in samples)
    larger = {image_id for image_id, _ in choose(SimpleNamespace(seed=42), coco_train_ids, 20, 0.0, 1.0)}
    assert {image_id for image_id, _ in samples} <= larger  # nested subsets: 10 % is part of 20 %
    mixed = choose(SimpleNamespace(seed=42), coco_train_ids, 10, 0.3, 0.7)
    assert sum(not rainy for _, rainy in mixed) == 3_549 and sum(rainy for _, rainy in mixed) == 8_280


def test_flip_moves_image_pair_and_boxes_together(coco_world):
    data = dataset(coco_world, train=True, return_clean_pair=True)
    plain = dataset(coco_world, train=False, return_clean_pair=True)
    index = data.samples.index((1, True))
    flipped_epochs = [epoch for epoch in range(20) if data.flips(1, epoch)]
    assert 0 < len(flipped_epochs) < 20
    epoch = flipped_epochs[0]
    data.set_epoch(epoch)
    plain.set_epoch(epoch)  # same variant, no flip
    image, target = data[index]
    reference, reference_target = plain[index]
    torch.testing.assert_close(image, reference.flip(-1))
    torch.testing.assert_close(target["clean_image"], reference_target["clean_image"].flip(-1))
    assert not torch.equal(target["clean_image"], image)  # the pair really is the clean file
    mirrored = reference_target["boxes"].clone()
    mirrored[:, 0] = 1.0 - mirrored[:, 0]
    torch.testing.assert_close(target["boxes"], mirrored)
    # The flip is a function of (seed, epoch, image): another instance gives the very same sample.
    again = dataset(coco_world, train=True, return_clean_pair=True)
    again.set_epoch(epoch)
    assert torch.equal(again[index][0], image) and torch.equal(again[index][1]["boxes"], target["boxes"])


def test_rain_variant_changes_with_epoch_deterministically(coco_world):
    data = dataset(coco_world)
    choices = {epoch: [data.variant_of(image_id, epoch) for image_id in range(1, 7)] for epoch in range(8)}
    assert len({tuple(c) for c in choices.values()}) > 1  # epochs see different rain
    assert choices == {epoch: [dataset(coco_world).variant_of(i, epoch) for i in range(1, 7)] for epoch in range(8)}
    variant = data.variant_of(1, 3)
    data.set_epoch(3)
    image, target = by_id(data, 1)
    assert target["variant"] == variant
    expected_dir = ["heavy_v0", "light_v0"][variant]  # variant folders in sorted order
    reference = load_rgb(os.path.join(coco_world[1], expected_dir, "val2017", "rgb.jpg")).resize((64, 64))
    other = load_rgb(os.path.join(coco_world[1], ["light_v0", "heavy_v0"][variant], "val2017",
                                  "rgb.jpg")).resize((64, 64))

    def distance(picture):
        return (image * 255 - torch.from_numpy(np.array(picture)).permute(2, 0, 1).float()).abs().mean()

    assert distance(reference) < 12 < distance(other)


@pytest.mark.parametrize("context", [None, "spawn"])
def test_epoch_and_unreadable_count_cross_persistent_workers(coco_world, context, capfd):
    """set_epoch reaches workers started once (fork, or spawn as on macOS and Python 3.14's
    forkserver), and what they skip is counted in this process."""
    data = dataset(coco_world)
    corrupt(os.path.join(coco_world[1], "light_v0", "val2017", "gray.jpg"))
    loader = torch.utils.data.DataLoader(data, batch_size=6, num_workers=1, persistent_workers=True,
                                         collate_fn=collate_fn, multiprocessing_context=context)
    skipped = 0
    for epoch in (0, 1, 2, 5):
        data.set_epoch(epoch)
        (_, targets), = list(loader)
        assert [t["variant"] for t in targets] == [data.variant_of(t["image_id"], epoch) for t in targets]
        skipped += data.variant_of(2, epoch) == 1  # light_v0
    assert len({tuple(data.variant_of(i, e) for i in range(1, 7)) for e in (0, 1, 2, 5)}) > 1
    assert skipped > 0 and int(data.unreadable) == skipped
    assert "skipping unreadable image" in capfd.readouterr().err


def test_collate_stacks_and_drops_unreadable(coco_world, capsys):
    data = dataset(coco_world, return_clean_pair=True)
    epoch = next(e for e in range(20) if data.variant_of(1, e) == 1)  # sorted: heavy_v0, light_v0
    data.set_epoch(epoch)
    corrupt(os.path.join(coco_world[1], "light_v0", "val2017", "rgb.jpg"))
    samples = [data[i] for i in range(len(data))]
    assert sum(sample is None for sample in samples) == 1 and int(data.unreadable) == 1
    assert "light_v0/val2017/rgb.jpg" in capsys.readouterr().err
    images, targets = collate_fn(samples)
    assert images.shape == (5, 3, 64, 64) and len(targets) == 5
    assert torch.stack([t["clean_image"] for t in targets]).shape == (5, 3, 64, 64)
    assert collate_fn([None, None]) is None
    # A broken clean partner is named too, not the rainy file that was fine.
    corrupt(os.path.join(coco_world[0], "val2017", "empty.jpg"))
    assert by_id(data, 6) is None
    assert "coco/val2017/empty.jpg" in capsys.readouterr().err


def test_check_split_finds_unreadable_and_wrongly_sized_files(coco_world):
    data = dataset(coco_world)
    assert check_split(data, workers=0, show_progress=False) == []
    corrupt(os.path.join(coco_world[1], "light_v0", "val2017", "rgb.jpg"))
    Image.new("RGB", (10, 10)).save(os.path.join(coco_world[1], "heavy_v0", "val2017", "rgb.jpg"))
    os.remove(os.path.join(coco_world[0], "val2017", "cmyk.jpg"))
    problems = check_split(data, workers=2, show_progress=False)
    assert len(problems) == 3
    assert any("light_v0/val2017/rgb.jpg: unreadable" in p for p in problems)
    assert any("heavy_v0/val2017/rgb.jpg: stored size 10x10 differs from the annotation's 80x60" in p for p in problems)
    assert any("coco/val2017/cmyk.jpg: missing" in p for p in problems)


def test_missing_paths_are_named(coco_world, tmp_path):
    coco, rain = coco_world
    with pytest.raises(FileNotFoundError, match="COCO_DIR '/nowhere' does not exist"):
        build_dataset("/nowhere", rain, "val", ID2LABEL)
    with pytest.raises(FileNotFoundError, match=r"clean image folder .*train2017"):
        build_dataset(coco, rain, "train", ID2LABEL)
    with pytest.raises(ValueError, match="rain_ratio > 0 needs COCO_RAIN_DIR"):
        build_dataset(coco, None, "val", ID2LABEL)
    os.remove(os.path.join(coco, "val2017", "gray.jpg"))
    with pytest.raises(FileNotFoundError, match=r"image .*coco/val2017/gray.jpg' is listed in .* but missing"):
        build_dataset(coco, None, "val", ID2LABEL, coco_ratio=1.0, rain_ratio=0.0)
    os.remove(os.path.join(rain, "heavy_v0", "val2017", "cmyk.jpg"))
    with pytest.raises(FileNotFoundError,
                       match=r"rainy image .*heavy_v0/val2017/cmyk.jpg' is listed in .* but missing"):
        build_dataset(coco, rain, "val", ID2LABEL)
    os.remove(os.path.join(coco, "annotations", "instances_val2017.json"))
    with pytest.raises(FileNotFoundError, match=r"annotation file .*instances_val2017.json' does not exist"):
        build_dataset(coco, rain, "val", ID2LABEL)
    with pytest.raises(FileNotFoundError, match="COCO_RAIN_DIR '/no/rain' does not exist"):
        rain_variant_dirs("/no/rain", "val")
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match="has neither val2017/ nor variant folders"):
        rain_variant_dirs(str(tmp_path / "bare"), "val")
    with pytest.raises(FileNotFoundError, match=r"rainy image folder .*bare/val2017' does not exist"):
        rain_variant_dirs([str(tmp_path / "bare")], "val")


def test_broken_annotation_files_are_named(coco_world):
    coco, rain = coco_world
    path = os.path.join(coco, "annotations", "instances_val2017.json")
    with open(path, "w") as file:
        file.write('{"images": [')
    with pytest.raises(ValueError, match=r"annotation file .*instances_val2017.json' is not valid JSON"):
        build_dataset(coco, rain, "val", ID2LABEL)
    with open(path, "w") as file:
        json.dump({"images": IMAGES, "annotations": ANNOTATIONS}, file)
    with pytest.raises(ValueError, match=r"instances_val2017.json' has no 'categories' list"):
        build_dataset(coco, rain, "val", ID2LABEL)


def test_rain_dir_forms_single_nested_list_and_joined(coco_world):
    _, rain = coco_world
    single = os.path.join(rain, "light_v0")
    heavy = os.path.join(rain, "heavy_v0")
    assert rain_variant_dirs(single, "val") == [os.path.join(single, "val2017")]
    assert rain_variant_dirs(rain, "val") == [os.path.join(rain, name, "val2017") for name in ("heavy_v0", "light_v0")]
    assert rain_variant_dirs([single], "val") == [os.path.join(single, "val2017")]
    joined = single + os.pathsep + heavy  # what a str config constant can hold
    assert rain_variant_dirs(joined, "val") == [os.path.join(single, "val2017"), os.path.join(heavy, "val2017")]
    os.makedirs(os.path.join(rain, "val2017"))
    with pytest.raises(ValueError, match=r"has both its own val2017/ and variant folders \['heavy_v0', 'light_v0'\]"):
        rain_variant_dirs(rain, "val")


def test_detector_label_missing_from_annotations_is_an_error(coco_world):
    coco, rain = coco_world
    with pytest.raises(ValueError, match="'triangle'"):
        build_dataset(coco, rain, "val", {0: "circle", 1: "square", 2: "triangle"})


def test_loader_settings_keep_an_accelerator_fed():
    assert loader_settings(0, torch.device("cpu")) == {"num_workers": 0, "pin_memory": False}
    assert loader_settings(4, torch.device("cuda")) == {
        "num_workers": 4, "pin_memory": True, "persistent_workers": True, "prefetch_factor": 4,
    }


def test_exif_orientation_is_not_applied(tmp_path):
    """COCO boxes refer to the stored pixels: a JPEG with an EXIF rotation tag must load unrotated."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = str(tmp_path / "rotated.jpg")
    Image.fromarray(pixels).save(path, exif=exif)
    assert Image.open(path).getexif()[0x0112] == 6
    for image in (load_rgb(path), load_rgb(path, draft_size=16)):
        assert image.size == (40, 20)
        assert np.asarray(image)[:, :10].mean() > 200 and np.asarray(image)[:, 30:].mean() < 50
