"""Weather other than rain, rendered on the fly by a well-kept library (albumentations 2.0.8): fog,
snow, sun flare, shadow, low light, sensor noise and blur, beside the project's own rain families
(``utils.data.rain.FAMILIES``), for the gates and the soft mix.

Albumentations, not kornia: albumentations works per sample on uint8 (H, W, 3) numpy images, as this
data path does (``random_rain``), and has fog, snow, sun flare and shadow itself; kornia works on
batched tensors and has neither fog nor sun flare.

The library's own rain (``A.RandomRain``) is never used: rain comes from ``utils.data.rain`` alone,
so a rain family held out of training cannot leak in through the library. Every random choice of a
render comes from one integer drawn from the caller's generator (``sample_rng``), so a sample is the
same whichever worker renders it, and whatever the global numpy and ``random`` states are.
"""

from __future__ import annotations

import functools
import os
import random
from typing import Sequence

import numpy as np
import torch

from utils.data.rain import FAMILIES
from utils.data.random_rain import to_uint8

WEATHER_KINDS = ("fog", "snow", "sun_flare", "shadow", "low_light", "noise", "blur")


def albumentations():
    """The albumentations module, imported on first use and told never to look for updates online."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    return A


def check_kind(kind: str) -> None:
    """Refuse an unknown kind, and a rain family with a pointer to where rain comes from."""
    if kind in FAMILIES:
        raise ValueError(f"{kind!r} is a rain family: rain comes from utils/data/rain.py, not from "
                         f"library weather (kinds: {', '.join(WEATHER_KINDS)})")
    if kind not in WEATHER_KINDS:
        raise ValueError(f"unknown weather kind {kind!r}; known kinds: {', '.join(WEATHER_KINDS)}")


def odd(n: float) -> int:
    """The odd integer at or above ``n`` (at least 3), as blur kernels need."""
    n = max(3, int(round(n)))
    return n if n % 2 else n + 1


def weather_transform(kind: str, image_size: int):
    """One albumentations transform (p=1) of ``kind`` with randomised, moderate parameters, its
    sizes scaled for images of about ``image_size`` pixels a side (640: the detector's)."""
    check_kind(kind)
    A, s = albumentations(), image_size / 640
    kinds = {
        "fog": lambda: [A.RandomFog(fog_coef_range=(0.3, 0.7), alpha_coef=0.08, p=1)],
        # "bleach", not "texture": 2.0.8's texture adds the snow layer to hue and saturation as well.
        "snow": lambda: [A.RandomSnow(snow_point_range=(0.1, 0.35), brightness_coeff=2.0, method="bleach", p=1)],
        "sun_flare": lambda: [A.OneOf([
            A.RandomSunFlare(src_radius=max(4, int(0.25 * image_size)), num_flare_circles_range=(4, 10),
                             method="overlay", p=1),
            A.RandomSunFlare(src_radius=max(2, int(0.1 * image_size)), num_flare_circles_range=(4, 10),
                             method="physics_based", p=1)], p=1)],
        "shadow": lambda: [A.RandomShadow(shadow_roi=(0, 0.3, 1, 1), num_shadows_limit=(1, 3),
                                          shadow_dimension=5, shadow_intensity_range=(0.3, 0.7), p=1)],
        "low_light": lambda: [
            A.RandomBrightnessContrast(brightness_limit=(-0.15, -0.05), contrast_limit=(-0.2, 0.0), p=1),
            A.RandomGamma(gamma_limit=(110, 140), p=1),
            A.GaussNoise(std_range=(0.01, 0.03), p=0.5)],
        "noise": lambda: [A.OneOf([A.GaussNoise(std_range=(0.03, 0.1), p=1),
                                   A.ISONoise(color_shift=(0.01, 0.05), intensity=(0.1, 0.5), p=1)], p=1)],
        "blur": lambda: [A.OneOf([
            A.MotionBlur(blur_limit=(3, odd(13 * s)), p=1),
            A.Defocus(radius=(1, max(2, round(5 * s))), alias_blur=(0.1, 0.5), p=1),
            A.GaussianBlur(blur_limit=0, sigma_limit=(0.5, max(1.0, 3 * s)), p=1)], p=1)],
    }
    return A.Compose(kinds[kind](), p=1)


@functools.lru_cache(maxsize=64)
def cached_transform(kind: str, image_size: int):
    """``weather_transform``, built once per (kind, size) in each process."""
    return weather_transform(kind, image_size)


def render_weather(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``image`` (uint8 (H, W, 3)) with weather of ``kind``: a function of the image, the kind and
    one integer drawn from ``rng`` alone."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"library weather takes uint8 (H, W, 3) images, got {image.dtype} {image.shape}")
    transform = cached_transform(kind, max(image.shape[:2]))
    seed = int(rng.integers(2**31))
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return transform(image=np.ascontiguousarray(image))["image"]


class RandomWeather:
    """Library weather for ``fraction`` of the images: a kind of ``kinds`` (each equally likely),
    randomised, rendered on the clean original (the counterpart of ``random_rain.RandomRain``)."""

    def __init__(self, kinds: Sequence[str], fraction: float):
        if not 0 <= fraction <= 1:
            raise ValueError(f"the fraction of images with library weather must be in [0, 1], got {fraction}")
        self.kinds, self.fraction = tuple(kinds), fraction
        for kind in self.kinds:
            check_kind(kind)
        if fraction > 0 and not self.kinds:
            raise ValueError("library weather needs at least one weather kind to draw from")

    def chosen(self, rng: np.random.Generator) -> bool:
        """Whether an image gets library weather (one draw of ``rng``)."""
        return rng.random() < self.fraction

    def render(self, clean: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, str]:
        """(weathered (3, H, W) 0-1 copy of ``clean``, the kind drawn)."""
        kind = self.kinds[rng.integers(len(self.kinds))]
        image = torch.from_numpy(render_weather(to_uint8(clean), kind, rng)).permute(2, 0, 1).float() / 255.0
        return image, kind


def library_weather(fraction: float) -> RandomWeather | None:
    """LIBRARY_WEATHER as the training sets take it: every kind for ``fraction`` of the clean images, or
    None at 0 (nothing drawn, so the samples are exactly those without it)."""
    return RandomWeather(WEATHER_KINDS, fraction) if fraction > 0 else None
