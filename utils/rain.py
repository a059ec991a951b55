"""Synthetic rain: streaks plus rain accumulation (veiling haze), vectorised.

Streaks: sparse bright noise -> motion blur along a random angle -> threshold, in two layers (near:
long and bright, far: short and faint). Accumulation follows the heavy-rain model

    O = t * (B + S) + (1 - t) * A

with background B, streak layer S, transmission t < 1 and atmospheric light A. Every random choice
comes from ``numpy.random.default_rng([seed, image_id, variant])``, so a rendered image depends on
those three numbers alone, whichever worker renders it and in which order.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class RainPreset:
    density: float  # fraction of pixels seeding a near streak
    length: float  # near streak length, as a fraction of the image's shorter side
    brightness: float  # streak intensity added before the haze, 0-1
    transmission: float  # t of the haze model: 1 = no haze
    angle_range: float  # streaks lean up to this many degrees from vertical


PRESETS = {
    "light": RainPreset(density=0.0025, length=0.035, brightness=0.55, transmission=0.92, angle_range=20.0),
    "medium": RainPreset(density=0.005, length=0.05, brightness=0.75, transmission=0.82, angle_range=25.0),
    "heavy": RainPreset(density=0.009, length=0.07, brightness=0.9, transmission=0.68, angle_range=30.0),
}


def rain_rng(seed: int, image_id: int, variant: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(image_id), int(variant)])


def motion_blur(drops: torch.Tensor, length: int, angle_degrees: float) -> torch.Tensor:
    """Smear (H, W) drops along a line of ``length`` px at ``angle`` from vertical (mean of shifts).

    A line kernel has only ``length`` non-zero taps, so summing that many shifted copies is an
    order of magnitude cheaper than a dense length x length convolution. Shifts wrap around the
    border, which for a random streak field is invisible.
    """
    angle = math.radians(angle_degrees)
    offsets = torch.arange(length, dtype=torch.float64) - (length - 1) / 2
    shifts = {(round(float(t) * math.cos(angle)), round(float(t) * math.sin(angle))) for t in offsets}
    smeared = torch.zeros_like(drops)
    for dy, dx in shifts:
        smeared += torch.roll(drops, shifts=(dy, dx), dims=(0, 1))
    return smeared / len(shifts)


def streak_layer(height: int, width: int, preset: RainPreset, rng: np.random.Generator, scale: float) -> torch.Tensor:
    """(H, W) streaks in 0-1 for one layer; ``scale`` shrinks density, length and brightness for far rain."""
    short_side = min(height, width)
    angle = rng.uniform(-preset.angle_range, preset.angle_range)
    length = max(3, round(preset.length * short_side * scale))
    seeds = torch.from_numpy(rng.random((height, width), dtype=np.float32))
    drops = (seeds < preset.density * (2.0 - scale)).float() * torch.from_numpy(
        rng.uniform(0.6, 1.0, size=(height, width)).astype(np.float32)
    )
    # Average over the streak, then scale back up: a lone drop becomes a line of its own brightness,
    # overlapping drops saturate; the threshold removes the faint fringes left by near-misses.
    blurred = motion_blur(drops, length, angle) * length
    streaks = torch.where(blurred > 0.15, blurred, torch.zeros_like(blurred))
    return (streaks * preset.brightness * scale).clamp(0, 1)


def render_rain(image: np.ndarray, preset: str | RainPreset, rng: np.random.Generator) -> np.ndarray:
    """Rainy copy of an (H, W, 3) uint8 RGB image, same shape and dtype."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"rain preset must be one of {sorted(PRESETS)}, got {preset!r}")
        preset = PRESETS[preset]
    height, width = image.shape[:2]
    background = torch.from_numpy(image.astype(np.float32)) / 255.0
    streaks = streak_layer(height, width, preset, rng, 1.0) + streak_layer(height, width, preset, rng, 0.6)
    # The haze is denser far away; a vertical gradient is the cheapest stand-in for depth.
    depth = torch.linspace(1.0, 0.6, height)[:, None, None]
    transmission = 1.0 - (1.0 - preset.transmission) * depth * rng.uniform(0.85, 1.15)
    atmosphere = float(rng.uniform(0.75, 0.95))
    rainy = transmission * (background + streaks[..., None]) + (1.0 - transmission) * atmosphere
    return (rainy.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()


# ----------------------------------------------------------------------------------------------
# Rendering whole COCO splits (Make_COCO_Rain.py and the synthetic demo world)


def variant_names(presets: Sequence[str], variants_per_preset: int) -> list[str]:
    """One name per rain variant: ``<preset>_v<k>``."""
    for preset in presets:
        if preset not in PRESETS:
            raise ValueError(f"rain preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if variants_per_preset < 1:
        raise ValueError(f"variants per preset must be >= 1, got {variants_per_preset}")
    return [f"{preset}_v{k}" for preset in presets for k in range(variants_per_preset)]


def variant_root(coco_rain_dir: str, names: Sequence[str], name: str) -> str:
    """A single variant fills COCO_RAIN_DIR itself; several get a sub-directory each."""
    return coco_rain_dir if len(names) == 1 else os.path.join(coco_rain_dir, name)


def _render_one(job: tuple) -> int:
    source, destination, preset, seed, image_id, variant, quality = job
    if os.path.exists(destination):
        return 0  # resumable: what a previous run finished is kept
    with Image.open(source) as image:
        pixels = np.asarray(image.convert("RGB"))
    rainy = render_rain(pixels, preset, rain_rng(seed, image_id, variant))
    temporary = f"{destination}.tmp{os.getpid()}"
    Image.fromarray(rainy).save(temporary, format="JPEG", quality=quality)
    os.replace(temporary, destination)
    return 1


def _init_worker() -> None:
    torch.set_num_threads(1)  # one core per worker: the pool is the parallelism


def make_rainy_split(
    coco_dir: str,
    coco_rain_dir: str,
    split_folder: str,
    annotation_file: str,
    presets: Sequence[str] = ("medium",),
    variants_per_preset: int = 1,
    seed: int = 0,
    workers: int = 0,
    quality: int = 95,
    limit: int | None = None,
    show_progress: bool = True,
) -> dict:
    """Render rainy copies of ``coco_dir/split_folder`` for every variant, and copy the annotations.

    Files already present are skipped (resume), each is written to a temporary name and renamed.
    Returns {"written": n, "skipped": n, "seconds": s, "images_per_second_per_worker": r}.
    """
    from multiprocessing import get_context

    from tqdm import tqdm

    source_dir = os.path.join(coco_dir, split_folder)
    if not os.path.isdir(source_dir):
        raise FileNotFoundError(f"image folder {source_dir!r} does not exist")
    if not os.path.isfile(annotation_file):
        raise FileNotFoundError(f"annotation file {annotation_file!r} does not exist")
    with open(annotation_file) as file:
        images = json.load(file)["images"]
    if limit is not None:
        images = images[:limit]
    names = variant_names(presets, variants_per_preset)
    jobs = []
    for variant_index, name in enumerate(names):
        root = variant_root(coco_rain_dir, names, name)
        os.makedirs(os.path.join(root, split_folder), exist_ok=True)
        os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
        shutil.copyfile(annotation_file, os.path.join(root, "annotations", os.path.basename(annotation_file)))
        preset = name.rsplit("_v", 1)[0]
        for image in images:
            source = os.path.join(source_dir, image["file_name"])
            if not os.path.isfile(source):
                raise FileNotFoundError(f"image {source!r} is listed in {annotation_file} but missing")
            destination = os.path.join(root, split_folder, image["file_name"])
            jobs.append((source, destination, preset, seed, image["id"], variant_index, quality))

    start = time.perf_counter()
    progress = tqdm(total=len(jobs), desc=f"rain {split_folder}", unit="img", disable=not show_progress, dynamic_ncols=True)
    written = 0
    if workers > 0:
        with get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            for done in pool.imap_unordered(_render_one, jobs, chunksize=16):
                written += done
                progress.update(1)
    else:
        previous_threads = torch.get_num_threads()
        _init_worker()
        try:
            for job in jobs:
                written += _render_one(job)
                progress.update(1)
        finally:
            torch.set_num_threads(previous_threads)
    progress.close()
    seconds = time.perf_counter() - start
    rate = written / seconds / max(1, workers) if written else 0.0
    return {"written": written, "skipped": len(jobs) - written, "seconds": seconds, "images_per_second_per_worker": rate}
