"""Rain rendered on the fly from the clean original with randomised presets of chosen families: the
RANDOM_RAIN of the rain gate (``gate_data.GateTrainingSet``) and of SPDNet's adaptation
(Training_SPDNet_Adaptation.py), one piece for both.

Every random choice is a function of (seed, epoch, image id, clean or rainy) (``sample_rng``): a
sample is the same whichever worker loads it and in whatever order, and a resumed run replays it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from utils.data.rain import PRESETS, family_presets, render_rain


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) 0-1 -> (H, W, 3) uint8, as the rain renderer and PIL take it."""
    return image.mul(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def sample_rng(seed: int, epoch: int, image_id: int, is_rainy: bool) -> np.random.Generator:
    """The random stream of one sample in one epoch."""
    return np.random.default_rng([seed, epoch, image_id, int(is_rainy)])


class RandomRain:
    """Fresh rain for ``fraction`` of the rainy images: a preset of ``families`` (each preset of each
    family equally likely), randomised (``preset.randomised``), rendered on the clean original."""

    def __init__(self, families: Sequence[str], fraction: float):
        if not 0 <= fraction <= 1:
            raise ValueError(f"the fraction of images with fresh rain must be in [0, 1], got {fraction}")
        self.families, self.fraction = tuple(families), fraction
        self.presets = [name for family in self.families for name in family_presets(family)]
        if fraction > 0 and not self.presets:
            raise ValueError("fresh rain needs at least one rain family to draw from")

    def chosen(self, rng: np.random.Generator) -> bool:
        """Whether a rainy image gets fresh rain (one draw of ``rng``)."""
        return rng.random() < self.fraction

    def render(self, clean: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, str]:
        """(fresh rainy (3, H, W) 0-1 copy of ``clean``, the family of the preset drawn)."""
        preset = PRESETS[self.presets[rng.integers(len(self.presets))]].randomised(rng)
        image = torch.from_numpy(render_rain(to_uint8(clean), preset, rng)).permute(2, 0, 1).float() / 255.0
        return image, preset.family


class RandomRainSet(torch.utils.data.Dataset):
    """A CocoRainDataset's samples, ``fraction`` of the rainy ones (drawn per image and epoch) shown
    with fresh rain of ``families`` on their clean original instead of a rendered variant (which is
    then not read). The dataset needs ``return_clean_pair`` when ``fraction`` > 0.

    ``weather`` (a ``library_weather.RandomWeather``, or None) does the same for the clean samples: its
    fraction of them (drawn per image and epoch) shown with library weather instead.

    Targets are the dataset's: boxes unchanged (rain moves no object), ``clean_image`` the clean
    original (kept only with ``clean_pair``), ``variant`` -1 for fresh rain, plus ``rain_family``: the
    family of the fresh rain, None for a rendered variant or a clean image, and ``weather``: the kind of
    library weather a clean sample was shown with, else None.
    """

    def __init__(self, dataset, families: Sequence[str], fraction: float, clean_pair: bool = True, weather=None):
        if fraction > 0 and not dataset.return_clean_pair:
            raise ValueError("random rain re-renders the clean copy: build the dataset with return_clean_pair=True")
        self.dataset, self.rain, self.clean_pair = dataset, RandomRain(families, fraction), clean_pair
        self.weather = weather

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    @property
    def unreadable(self) -> torch.Tensor:
        return self.dataset.unreadable

    def describe(self) -> str:
        weather = "" if self.weather is None else (
            f"; {self.weather.fraction:g} of the clean ones with library weather ({', '.join(self.weather.kinds)})")
        return (f"{self.dataset.describe()}; {self.rain.fraction:g} of the rainy ones with fresh rain of "
                f"{', '.join(self.rain.families)}{weather}")

    def sample_and_rng(self, index: int):
        """(the sample, or None when unreadable; its random stream, advanced past the rain's draws)."""
        image_id, is_rainy = self.dataset.samples[index]
        rng = sample_rng(self.dataset.seed, self.dataset.epoch, image_id, is_rainy)
        fresh = is_rainy and self.rain.chosen(rng)
        sample = self.dataset.load(index, fresh_rain=fresh)
        if sample is None:  # unreadable: collate_fn drops it
            return None, rng
        image, target = sample
        family = kind = None
        if fresh:
            image, family = self.rain.render(target["clean_image"], rng)
        elif not is_rainy and self.weather is not None and self.weather.chosen(rng):
            image, kind = self.weather.render(image, rng)
        target["rain_family"], target["weather"] = family, kind
        if not self.clean_pair:
            target.pop("clean_image", None)
        return (image, target), rng

    def __getitem__(self, index: int):
        return self.sample_and_rng(index)[0]
