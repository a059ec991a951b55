"""The rain gate's diverse training data: rain re-rendered with randomised settings from the clean
copy, and the blur, JPEG, colour and noise a real camera adds (``GateTrainingSet``)."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from utils.data.rain import PRESETS, family_presets, gaussian_blur, render_rain


def camera_augment(image: torch.Tensor, rng: np.random.Generator, blur: float, jpeg: float, jitter: float,
                   noise: float) -> torch.Tensor:
    """What a real camera adds to a (3, H, W) 0-1 image: colour and brightness jitter (factors within
    1 +- ``jitter``), a Gaussian blur (probability ``blur``), sensor noise (std up to ``noise``, on
    half the images), JPEG re-encoding at quality 30-90 (probability ``jpeg``)."""
    if jitter > 0:
        image = TF.adjust_brightness(image, rng.uniform(1 - jitter, 1 + jitter))
        image = TF.adjust_contrast(image, rng.uniform(1 - jitter, 1 + jitter))
        image = TF.adjust_saturation(image, rng.uniform(1 - jitter, 1 + jitter))
    if rng.random() < blur:
        image = gaussian_blur(image, rng.uniform(0.3, 1.5))
    if noise > 0 and rng.random() < 0.5:
        image = image + torch.from_numpy(rng.standard_normal(image.shape, dtype=np.float32)) * rng.uniform(0, noise)
    image = image.clamp(0, 1)
    if rng.random() < jpeg:
        buffer = io.BytesIO()
        Image.fromarray(to_uint8(image)).save(buffer, format="JPEG", quality=int(rng.integers(30, 91)))
        image = torch.from_numpy(np.asarray(Image.open(buffer).convert("RGB")).copy()).permute(2, 0, 1).float() / 255.0
    return image


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) 0-1 -> (H, W, 3) uint8, as the rain renderer and PIL take it."""
    return image.mul(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


class GateTrainingSet(torch.utils.data.Dataset):
    """A CocoRainDataset's samples, made diverse for the gate: ``random_rain`` of the rainy ones are
    re-rendered from their clean copy (the dataset needs ``return_clean_pair``) with a randomised
    preset of ``families``, then every image gets ``camera_augment``. Every random choice is a
    function of (seed, epoch, image id, clean or rainy), whatever worker loads the sample."""

    def __init__(self, dataset, families: Sequence[str], random_rain: float = 0.0, blur: float = 0.0,
                 jpeg: float = 0.0, jitter: float = 0.0, noise: float = 0.0):
        if random_rain > 0 and not dataset.return_clean_pair:
            raise ValueError("random rain re-renders the clean copy: build the dataset with return_clean_pair=True")
        self.dataset, self.random_rain = dataset, random_rain
        self.presets = [name for family in families for name in family_presets(family)]
        self.camera = {"blur": blur, "jpeg": jpeg, "jitter": jitter, "noise": noise}

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        if sample is None:  # unreadable: collate_fn drops it
            return None
        image, target = sample
        clean = target.pop("clean_image", None)
        rng = np.random.default_rng([self.dataset.seed, self.dataset.epoch, target["image_id"],
                                     int(target["is_rainy"])])
        if target["is_rainy"] and rng.random() < self.random_rain:
            preset = PRESETS[self.presets[rng.integers(len(self.presets))]].randomised(rng)
            image = torch.from_numpy(render_rain(to_uint8(clean), preset, rng)).permute(2, 0, 1).float() / 255.0
        return camera_augment(image, rng, **self.camera), target
