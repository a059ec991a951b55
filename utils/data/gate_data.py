"""The rain gate's diverse training data: rain re-rendered with randomised settings from the clean
copy (utils/data/random_rain.py), and the blur, JPEG, colour and noise a real camera adds (``GateTrainingSet``)."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from utils.data.random_rain import RandomRainSet, to_uint8
from utils.data.rain import gaussian_blur


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


class GateTrainingSet(RandomRainSet):
    """A CocoRainDataset's samples, made diverse for the gate: ``random_rain`` of the rainy ones are
    re-rendered from their clean copy (the dataset needs ``return_clean_pair``) with a randomised
    preset of ``families`` (``RandomRainSet``), ``weather``'s share of the clean ones get library weather,
    then every image gets ``camera_augment``. Every random
    choice is a function of (seed, epoch, image id, clean or rainy), whatever worker loads the sample."""

    def __init__(self, dataset, families: Sequence[str], random_rain: float = 0.0, blur: float = 0.0,
                 jpeg: float = 0.0, jitter: float = 0.0, noise: float = 0.0, weather=None):
        super().__init__(dataset, families, random_rain, clean_pair=False, weather=weather)
        self.camera = {"blur": blur, "jpeg": jpeg, "jitter": jitter, "noise": noise}

    def __getitem__(self, index: int):
        sample, rng = self.sample_and_rng(index)
        if sample is None:  # unreadable: collate_fn drops it
            return None
        image, target = sample
        return camera_augment(image, rng, **self.camera), target
