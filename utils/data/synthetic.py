"""A synthetic COCO-layout world of simple shapes, clean and rainy: the demo's and the tests' data.

Scenes are textured gradient backgrounds with 1-``max_objects`` shapes of six classes in random
colours, sizes and positions (overlaps allowed, up to IoU 0.3), with exact boxes. They are written
as COCO_DIR (``{train,val}2017/*.jpg`` + ``annotations/instances_*.json``) and rendered rainy into
COCO_RAIN_DIR by the same code as Make_COCO_Rain.py, so they go through the very loader real COCO
goes through. Everything is a function of the seed. The category names (``SHAPES``) are the
detector's labels: ``ID2LABEL`` is its ``id2label``.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from utils.runtime.checkpoint import atomic_write_json
from utils.runtime.errors import SettingError
from utils.data.rain import make_rainy_split, renderer_versions

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
CATEGORIES = [{"id": index + 1, "name": name, "supercategory": "shape"} for index, name in enumerate(SHAPES)]
ID2LABEL = dict(enumerate(SHAPES))

# Bumped whenever scenes change, so that a world built by older code is rebuilt rather than reused.
WORLD_VERSION = 1
WORLD_FILE = "world.json"


def world_id2label(num_classes: int = len(SHAPES)) -> dict[int, str]:
    """The labels of a world drawing only the first ``num_classes`` shapes: its detector's id2label."""
    if not 1 <= num_classes <= len(SHAPES):
        raise SettingError(f"num_classes must be in 1..{len(SHAPES)}, got {num_classes}")
    return dict(enumerate(SHAPES[:num_classes]))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A two-colour gradient at a random angle plus low-frequency texture. (size, size, 3) uint8."""
    start, end = rng.uniform(20, 235, size=3).astype(np.float32), rng.uniform(20, 235, size=3).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    axis = np.linspace(0.0, 1.0, size, dtype=np.float32)
    ramp = axis[None, :] * np.float32(np.cos(angle)) + axis[:, None] * np.float32(np.sin(angle))
    ramp = (ramp - ramp.min()) / max(1e-6, float(np.ptp(ramp)))
    coarse = rng.normal(0, 10, size=(8, 8)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))
    grain = rng.standard_normal((size, size), dtype=np.float32) * 4
    image = start + (end - start) * ramp[..., None] + (texture + grain)[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], colour: tuple) -> None:
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)
    elif shape == "cross":
        draw.rectangle((x0, cy - h / 6, x1, cy + h / 6), fill=colour)
        draw.rectangle((cx - w / 6, y0, cx + w / 6, y1), fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(w / 5)))


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def render_scene(rng: np.random.Generator, size: int, max_objects: int = 6, min_fraction: float = 0.12,
                 max_fraction: float = 0.35,
                 num_classes: int = len(SHAPES)) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
    """One scene: (size, size, 3) uint8 and [(category_id, [x, y, w, h]), ...] with exact boxes."""
    image = Image.fromarray(_background(rng, size))
    draw = ImageDraw.Draw(image)
    objects: list[tuple[int, list[float]]] = []
    boxes: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            side = int(rng.uniform(min_fraction, max_fraction) * size)
            w = side
            h = int(side * rng.uniform(0.8, 1.25)) if rng.random() < 0.5 else side
            h = min(h, size - 1)
            x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            box = (x0, y0, x0 + w, y0 + h)
            if all(_iou(box, other) <= 0.3 for other in boxes):
                break
        else:
            continue
        category = int(rng.integers(0, num_classes))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        # PIL draws inclusive of the end pixel: the drawn extent is exactly [x0, x0 + w) x [y0, y0 + h).
        _draw_shape(draw, SHAPES[category], (x0, y0, x0 + w - 1, y0 + h - 1), colour)
        boxes.append(box)
        objects.append((category + 1, [float(x0), float(y0), float(w), float(h)]))
    return np.asarray(image), objects


def write_coco_split(coco_dir: str, split_folder: str, num_images: int, size: int, seed: int, first_id: int,
                     max_objects: int = 6, show_progress: bool = True, num_classes: int = len(SHAPES)) -> str:
    """Render ``num_images`` scenes into COCO_DIR/split_folder and write its annotation file."""
    image_dir = os.path.join(coco_dir, split_folder)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(coco_dir, "annotations"), exist_ok=True)
    images, annotations = [], []
    for image_id in tqdm(range(first_id, first_id + num_images), desc=f"scenes {split_folder}", unit="img",
                         disable=not show_progress, dynamic_ncols=True):
        pixels, objects = render_scene(np.random.default_rng([seed, image_id]), size, max_objects,
                                       num_classes=num_classes)
        file_name = f"{image_id:012d}.jpg"
        Image.fromarray(pixels).save(os.path.join(image_dir, file_name), quality=95)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for category_id, bbox in objects:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category_id, "bbox": bbox,
                "area": bbox[2] * bbox[3], "iscrowd": 0,
            })
    path = os.path.join(coco_dir, "annotations", f"instances_{split_folder}.json")
    atomic_write_json(path, {"images": images, "annotations": annotations, "categories": CATEGORIES[:num_classes]})
    return path


def build_synthetic_world(
    root: str,
    num_train: int = 2000,
    num_val: int = 200,
    image_size: int = 160,
    seed: int = 0,
    rain_presets: tuple[str, ...] = ("medium",),
    variants_per_preset: int = 1,
    max_objects: int = 6,
    num_classes: int = len(SHAPES),
    workers: int = 0,
    show_progress: bool = True,
) -> dict[str, str]:
    """Write ``root/coco`` and ``root/coco_rain``; returns {"coco_dir": ..., "coco_rain_dir": ...}.

    Train image ids are 1..num_train, val ids 1,000,000 onwards; image_size x image_size JPEGs. A root
    whose ``world.json`` records these very settings is reused as it is (a demo can call this every
    run); a world of other settings, or an unfinished one, is deleted and built again. A root with
    ``coco/`` or ``coco_rain/`` but no ``world.json`` is not ours to delete: FileExistsError.
    """
    paths = {"coco_dir": os.path.join(root, "coco"), "coco_rain_dir": os.path.join(root, "coco_rain")}
    settings = {
        "num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": seed,
        "rain_presets": list(rain_presets), "variants_per_preset": variants_per_preset, "max_objects": max_objects,
        "num_classes": num_classes,
        "world_version": WORLD_VERSION,
        **{f"rain_{key}": version for key, version in renderer_versions(rain_presets).items()},
    }
    manifest = os.path.join(root, WORLD_FILE)
    if os.path.isfile(manifest):
        with open(manifest) as file:
            if json.load(file) == {**settings, "complete": True}:
                if show_progress:
                    print(f"synthetic world in {root} already built with these settings: reused", flush=True)
                return paths
    elif any(os.path.exists(path) for path in paths.values()):
        raise FileExistsError(f"{root!r} holds coco/ or coco_rain/ but no {WORLD_FILE}: "
                              "not a synthetic world, left alone")
    for path in paths.values():
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(root, exist_ok=True)
    atomic_write_json(manifest, {**settings, "complete": False})
    for split_folder, count, first_id in (("train2017", num_train, 1), ("val2017", num_val, 1_000_000)):
        annotation_file = write_coco_split(
            paths["coco_dir"], split_folder, count, image_size, seed, first_id, max_objects, show_progress, num_classes
        )
        make_rainy_split(
            paths["coco_dir"], paths["coco_rain_dir"], split_folder, annotation_file, rain_presets, variants_per_preset,
            seed=seed, workers=workers, show_progress=show_progress,
        )
    atomic_write_json(manifest, {**settings, "complete": True})
    return paths
