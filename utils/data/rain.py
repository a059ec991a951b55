"""Synthetic rain in three families, vectorised: streaks plus haze, raindrops on the lens, and a downpour.

Family "streaks" (presets light, medium, heavy). Streaks: sparse random drops (thresholded uniform
noise) -> motion blur along the wind direction with a tapered profile -> threshold (crisp ends) ->
a 3x3 soften (anti-aliased, ~1.5 px wide), in two layers: near (long, bright, dense) and far
(short, faint, at almost the same angle). Accumulation follows the heavy-rain model

    O = t * (B + S) + (1 - t) * A

with background B, streak layer S, transmission t < 1 (lower towards the top of the picture, a
stand-in for depth) and atmospheric light A.

Family "drops" (presets drops_light, drops_heavy): water drops on the lens or windscreen, as in the
raindrop data of Qian et al. (Attentive GAN, CVPR 2018), which streaks cannot produce. The camera
focuses on the scene, so each drop is an out-of-focus lens: elliptic, with a soft edge and a dark
rim, it shows a blurred, inverted view of a region ``magnification`` times its size around it (a
refraction map sampled with ``grid_sample``), plus a small specular highlight; between the drops the
scene stays sharp and untouched.

Family "downpour" (presets downpour_light, downpour_medium, downpour_heavy): rain too dense to resolve
into streaks. The scene is smeared a little along the wind and washed out (colour pulled towards
grey), a dense texture of short faint streaks lies over it, and a thick veil of spray
(transmission far below the streak presets', uneven in drifting curtains of low-frequency noise)
lifts every dark pixel; on the lower part of the picture, where rain hits the ground, small
bright splash marks. Objects lose contrast, colour and edges everywhere at once, rather than
being crossed by bright lines (streaks) or hidden locally (drops).

Every random choice comes from
``rain_rng(seed, image_id, variant)``, so a rendered image depends on those three alone (the variant
is its name, e.g. ``"heavy_v1"``), whichever worker renders it, in which order, and whatever other
variants the same run renders.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from multiprocessing import get_context
from typing import ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from utils.runtime.checkpoint import atomic_write_json, write_atomically
from utils.runtime.errors import NO_ROOM, DataError, FileWriteError, MissingFileError, SettingError
from utils.data.coco import read_annotation_file

# Bumped whenever the streak renderer's output changes, so a resume never mixes two renderers' rain.
RENDERER_VERSION = 2
# The same for the drop renderer; recorded only for drop presets, so streak folders keep their settings.
DROPS_RENDERER_VERSION = 1
# The same for the downpour renderer; recorded only for downpour presets.
DOWNPOUR_RENDERER_VERSION = 1
SETTINGS_FILE = "rain_settings.json"


@dataclass(frozen=True)
class RainPreset:
    family: ClassVar[str] = "streaks"
    density: float  # fraction of pixels seeding a near streak (the far layer gets 1.4x as many)
    length: float  # near streak length, as a fraction of the image's shorter side
    brightness: float  # streak intensity added before the haze, 0-1
    transmission: float  # t of the haze model at the top of the picture: 1 = no haze
    angle_range: float  # the wind leans streaks up to this many degrees from vertical

    def randomised(self, rng: np.random.Generator) -> "RainPreset":
        """A random neighbour of this preset (the gate's training draws rain settings it never saw)."""
        return RainPreset(
            density=self.density * rng.uniform(0.5, 1.5), length=self.length * rng.uniform(0.7, 1.4),
            brightness=min(1.0, self.brightness * rng.uniform(0.7, 1.1)),
            transmission=1.0 - (1.0 - self.transmission) * rng.uniform(0.5, 1.5),
            angle_range=self.angle_range * rng.uniform(0.5, 1.5),
        )


@dataclass(frozen=True)
class DropPreset:
    family: ClassVar[str] = "drops"
    count: float  # drops per square of the image's shorter side (a 4:3 image gets 4/3 as many)
    radius: float  # largest drop radius, a fraction of the shorter side (radii are drawn from 30-100 % of it)
    blur: float  # defocus of the drops: Gaussian sigma, a fraction of the shorter side
    magnification: float  # a drop shows an inverted view of a region this many times its own size
    darkness: float  # how much the rim of a drop darkens what it shows, 0-1

    def randomised(self, rng: np.random.Generator) -> "DropPreset":
        """A random neighbour of this preset (the gate's training draws rain settings it never saw)."""
        return DropPreset(
            count=self.count * rng.uniform(0.5, 1.5), radius=self.radius * rng.uniform(0.7, 1.4),
            blur=self.blur * rng.uniform(0.5, 1.5), magnification=self.magnification * rng.uniform(0.7, 1.3),
            darkness=min(1.0, self.darkness * rng.uniform(0.5, 1.5)),
        )


@dataclass(frozen=True)
class DownpourPreset:
    family: ClassVar[str] = "downpour"
    density: float  # fraction of pixels seeding a short streak of the rain texture
    length: float  # texture streak length, a fraction of the image's shorter side (at least 3 px)
    brightness: float  # intensity of the rain texture, 0-1
    transmission: float  # t of the veil at the top of the picture (mean over its curtains): 1 = no veil
    saturation: float  # colour kept, 0-1 (0: grey)
    smear: float  # length of the scene's motion blur along the wind, a fraction of the shorter side
    splashes: float  # splash marks per square of the shorter side, in the lower 40 % of the picture
    angle_range: float  # the wind leans the rain up to this many degrees from vertical

    def randomised(self, rng: np.random.Generator) -> "DownpourPreset":
        """A random neighbour of this preset (the gate's training draws rain settings it never saw)."""
        return DownpourPreset(
            density=self.density * rng.uniform(0.5, 1.5), length=self.length * rng.uniform(0.7, 1.4),
            brightness=min(1.0, self.brightness * rng.uniform(0.7, 1.3)),
            transmission=1.0 - (1.0 - self.transmission) * rng.uniform(0.7, 1.3),
            saturation=min(1.0, self.saturation * rng.uniform(0.7, 1.3)), smear=self.smear * rng.uniform(0.5, 1.5),
            splashes=self.splashes * rng.uniform(0.5, 1.5), angle_range=self.angle_range * rng.uniform(0.5, 1.5),
        )


PRESETS = {
    "light": RainPreset(density=0.0025, length=0.035, brightness=0.6, transmission=0.9, angle_range=15.0),
    "medium": RainPreset(density=0.005, length=0.05, brightness=0.8, transmission=0.78, angle_range=20.0),
    "heavy": RainPreset(density=0.009, length=0.07, brightness=0.95, transmission=0.62, angle_range=25.0),
    "drops_light": DropPreset(count=12.0, radius=0.06, blur=0.006, magnification=2.5, darkness=0.35),
    "drops_heavy": DropPreset(count=30.0, radius=0.09, blur=0.01, magnification=3.0, darkness=0.45),
    "downpour_light": DownpourPreset(density=0.03, length=0.02, brightness=0.25, transmission=0.6, saturation=0.75,
                                     smear=0.004, splashes=40.0, angle_range=10.0),
    "downpour_medium": DownpourPreset(density=0.05, length=0.025, brightness=0.3, transmission=0.45, saturation=0.6,
                                      smear=0.007, splashes=100.0, angle_range=15.0),
    "downpour_heavy": DownpourPreset(density=0.08, length=0.03, brightness=0.35, transmission=0.3, saturation=0.45,
                                     smear=0.01, splashes=200.0, angle_range=20.0),
}
FAMILIES = ("streaks", "drops", "downpour")
Preset = RainPreset | DropPreset | DownpourPreset


def rain_rng(seed: int, image_id: int, variant: str) -> np.random.Generator:
    """The random stream of one rainy rendering: a function of (seed, image id, variant name) only."""
    variant_code = int.from_bytes(hashlib.blake2b(str(variant).encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([int(seed), int(image_id), variant_code])


def motion_blur(drops: torch.Tensor, length: int, angle_degrees: float) -> torch.Tensor:
    """Smear (H, W) drops along a ``length`` px line at ``angle`` from vertical, tapered at both ends.

    A lone drop becomes a streak as bright as the drop in its middle, fading towards its ends. A
    line kernel has only ``length`` non-zero taps, so summing that many shifted copies is an order
    of magnitude cheaper than a dense length x length convolution. Shifts wrap around the border,
    which for a random streak field is invisible.
    """
    angle = math.radians(angle_degrees)
    half = (length - 1) / 2
    taps: dict[tuple[int, int], float] = {}
    for offset in np.linspace(-half, half, length):
        shift = (round(offset * math.cos(angle)), round(offset * math.sin(angle)))
        taps[shift] = max(taps.get(shift, 0.0), 1.0 - (abs(offset) / (half + 1)) ** 3)
    smeared = torch.zeros_like(drops)
    for (dy, dx), weight in taps.items():
        smeared.add_(torch.roll(drops, shifts=(dy, dx), dims=(0, 1)), alpha=weight)
    return smeared


_SOFTEN_KERNEL = (torch.tensor([1.0, 2.0, 1.0])[:, None] * torch.tensor([1.0, 2.0, 1.0])[None, :] / 16.0)[None, None]


def streak_layer(
    height: int, width: int, preset: RainPreset, angle: float, rng: np.random.Generator, scale: float
) -> torch.Tensor:
    """(H, W) streaks >= 0 for one layer; ``scale`` < 1 makes far rain: shorter, fainter, denser."""
    # At least 10 px (near): shorter streaks read as drizzle dots on small images.
    length = round(max(10.0, preset.length * min(height, width)) * scale)
    seeded = torch.from_numpy(rng.random((height, width), dtype=np.float32) < preset.density * (2.4 - 1.4 * scale))
    drops = torch.zeros(height, width)
    drops[seeded] = torch.from_numpy(rng.uniform(0.6, 1.0, size=int(seeded.sum())).astype(np.float32))
    streaks = motion_blur(drops, length, angle)
    # The taper leaves long faint tails; cutting them gives streaks with definite ends.
    streaks = torch.where(streaks > 0.25, streaks, torch.zeros_like(streaks))
    return streaks * preset.brightness * scale


def soften(layer: torch.Tensor) -> torch.Tensor:
    """3x3 binomial blur of an (H, W) layer, times 2 to restore a thin line's peak.

    Rounded shifts draw jagged 1 px lines; this anti-aliases them into ~1.5 px streaks.
    """
    return F.conv2d(layer[None, None], _SOFTEN_KERNEL, padding=1)[0, 0] * 2.0


def resolve_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, (RainPreset, DropPreset, DownpourPreset)):
        return preset
    if preset not in PRESETS:
        raise SettingError(f"rain preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return PRESETS[preset]


def families_except(holdout: str | None) -> list[str]:
    """Every rain family but ``holdout`` (all of them for None): what on-the-fly rain may draw from."""
    return [family for family in FAMILIES if family != holdout]


def family_presets(family: str) -> list[str]:
    """The preset names of a rain family ("streaks", "drops" or "downpour")."""
    if family not in FAMILIES:
        raise SettingError(f"rain family must be one of {FAMILIES}, got {family!r}")
    return [name for name, preset in PRESETS.items() if preset.family == family]


def render_rain(image: np.ndarray, preset: str | Preset, rng: np.random.Generator) -> np.ndarray:
    """Rainy copy of an (H, W, 3) uint8 RGB image, same shape and dtype, in the preset's family."""
    preset = resolve_preset(preset)
    if isinstance(preset, DropPreset):
        return render_drops(image, preset, rng)
    if isinstance(preset, DownpourPreset):
        return render_downpour(image, preset, rng)
    height, width = image.shape[:2]
    background = torch.from_numpy(np.array(image, dtype=np.float32)).div_(255.0)
    wind = rng.uniform(-preset.angle_range, preset.angle_range)  # one wind for the whole scene
    near = streak_layer(height, width, preset, wind, rng, 1.0)
    far = streak_layer(height, width, preset, wind + rng.uniform(-4.0, 4.0), rng, 0.6)
    streaks = soften(near + far).clamp_(0, 1)[..., None]
    depth = torch.linspace(1.0, 0.6, height)[:, None, None]  # haze is densest at the (distant) top
    transmission = 1.0 - (1.0 - preset.transmission) * depth * rng.uniform(0.85, 1.15)
    atmosphere = float(rng.uniform(0.75, 0.95))
    rainy = transmission * (background + streaks) + (1.0 - transmission) * atmosphere
    return rainy.clamp_(0, 1).mul_(255.0).add_(0.5).to(torch.uint8).numpy()


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (C, H, W) tensor, reflecting at the border (sigma in px)."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * sigma**2))
    taps = (taps / taps.sum()).repeat(len(image), 1, 1)
    padded = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, taps[:, :, None, :], groups=len(image))
    return F.conv2d(rows, taps[:, :, :, None], groups=len(image))[0]


def drop_maps(height: int, width: int, preset: DropPreset, rng: np.random.Generator):
    """Where each pixel looks through a drop: (source y, source x, coverage 0-1, shade) maps, (H, W) each.

    Drops are drawn one after another, a later one covering an earlier one where they overlap.
    Inside a drop of centre c and radii (ry, rx), the pixel at c + (u ry, v rx) shows the scene at
    c' - (u ry, v rx) * magnification (inverted, a wider view; c' a little above c, as a drop on a
    pane sees the scene above it). Coverage falls to 0 over the outer 15 % of the radius; shade
    darkens the rim and adds a highlight up and to the left of the centre.
    """
    short = min(height, width)
    source_y = torch.arange(height, dtype=torch.float32)[:, None].repeat(1, width)
    source_x = torch.arange(width, dtype=torch.float32)[None, :].repeat(height, 1)
    coverage, shade = torch.zeros(height, width), torch.ones(height, width)
    for _ in range(max(1, round(preset.count * height * width / short**2))):
        radius = max(2.0, preset.radius * short * rng.uniform(0.3, 1.0))
        aspect = rng.uniform(0.75, 1.25)
        ry, rx = radius * aspect, radius / aspect
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        view_y = cy - radius * rng.uniform(0.0, 1.5)
        y0, y1 = max(0, math.floor(cy - ry)), min(height, math.ceil(cy + ry) + 1)
        x0, x1 = max(0, math.floor(cx - rx)), min(width, math.ceil(cx + rx) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        u = (torch.arange(y0, y1, dtype=torch.float32)[:, None] - cy) / ry
        v = (torch.arange(x0, x1, dtype=torch.float32)[None, :] - cx) / rx
        distance = torch.sqrt(u**2 + v**2)
        inside = distance < 1.0
        rim = ((distance - 0.7) / 0.3).clamp(0, 1)
        highlight = torch.exp(-((u + 0.35) ** 2 + (v + 0.35) ** 2) / 0.02)
        window = (slice(y0, y1), slice(x0, x1))
        source_y[window] = torch.where(inside, view_y - u * ry * preset.magnification, source_y[window])
        source_x[window] = torch.where(inside, cx - v * rx * preset.magnification, source_x[window])
        coverage[window] = torch.where(inside, ((1.0 - distance) / 0.15).clamp(0, 1), coverage[window])
        shade[window] = torch.where(inside, 1.0 - preset.darkness * rim + 0.5 * highlight, shade[window])
    return source_y, source_x, coverage, shade


def render_drops(image: np.ndarray, preset: DropPreset, rng: np.random.Generator) -> np.ndarray:
    """Raindrops on the lens over an (H, W, 3) uint8 RGB image (module docstring): same shape and dtype."""
    height, width = image.shape[:2]
    background = torch.from_numpy(np.array(image, dtype=np.float32)).div_(255.0).permute(2, 0, 1)
    source_y, source_x, coverage, shade = drop_maps(height, width, preset, rng)
    grid = torch.stack((source_x / max(1, width - 1), source_y / max(1, height - 1)), -1) * 2.0 - 1.0
    view = F.grid_sample(background[None], grid[None], mode="bilinear", padding_mode="border", align_corners=True)[0]
    sigma = max(0.5, preset.blur * min(height, width))
    # A drop gathers light from a wide cone: its view is brighter and flatter than the scene.
    view = gaussian_blur(view * shade * 0.85 + 0.12, sigma)
    coverage = gaussian_blur(coverage[None], sigma)
    rainy = coverage * view + (1.0 - coverage) * background
    return rainy.clamp_(0, 1).mul_(255.0).add_(0.5).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def smear(image: torch.Tensor, length: int, angle_degrees: float) -> torch.Tensor:
    """Mean of a (C, H, W) image over a ``length`` px line at ``angle`` from vertical: the scene's motion
    blur in a downpour (edges repeated at the border, unlike ``motion_blur``'s wrap-around)."""
    if length < 2:
        return image
    angle = math.radians(angle_degrees)
    half = (length - 1) / 2
    shifts = {(round(o * math.cos(angle)), round(o * math.sin(angle))) for o in np.linspace(-half, half, length)}
    pad = math.ceil(half) + 1
    height, width = image.shape[-2:]
    padded = F.pad(image[None], (pad, pad, pad, pad), mode="replicate")[0]
    total = torch.zeros_like(image)
    for dy, dx in sorted(shifts):
        total.add_(padded[:, pad + dy:pad + dy + height, pad + dx:pad + dx + width])
    return total / len(shifts)


def splash_marks(height: int, width: int, preset: DownpourPreset, rng: np.random.Generator) -> torch.Tensor:
    """(H, W) splash marks >= 0: small flat bright crowns where rain hits the ground, in the lower 40 %
    of the picture, densest at the bottom (scattered as points, then one convolution draws them)."""
    short = min(height, width)
    count = round(preset.splashes * height * width / short**2)
    from_bottom = 0.4 * (1.0 - np.sqrt(rng.random(count)))  # density falls linearly to 0 at 40 % up
    rows = np.clip((height * (1.0 - from_bottom)).astype(np.int64), 0, height - 1)
    cols = rng.integers(0, width, size=count)
    points = torch.zeros(height * width)
    points.index_add_(0, torch.from_numpy(rows * width + cols),
                      torch.from_numpy(rng.uniform(0.5, 1.0, size=count).astype(np.float32)))
    rx = max(1.5, 0.006 * short)  # a splash is wide and flat: a crown seen from the side
    ry = max(0.75, 0.4 * rx)
    ky, kx = math.ceil(2 * ry), math.ceil(2 * rx)
    v = torch.arange(-ky, ky + 1, dtype=torch.float32)[:, None] / ry
    u = torch.arange(-kx, kx + 1, dtype=torch.float32)[None, :] / rx
    distance = torch.sqrt(u**2 + v**2)
    # A bright rim around a fainter centre, fading above: light caught by the rising crown of water.
    kernel = torch.exp(-((distance - 0.8) ** 2) / 0.08) * torch.where(v > 0, 1.0, 0.6) + 0.4 * torch.exp(-distance**2)
    return F.conv2d(points.view(1, 1, height, width), kernel[None, None], padding=(ky, kx))[0, 0]


def render_downpour(image: np.ndarray, preset: DownpourPreset, rng: np.random.Generator) -> np.ndarray:
    """A downpour over an (H, W, 3) uint8 RGB image (module docstring): same shape and dtype.

        O = t * (smeared, washed-out B + R) + (1 - t) * A + splashes

    with a dense fine rain texture R and a transmission t that is low (a thick veil), lower towards the
    top, and uneven in curtains (low-frequency noise, stretched along the wind).
    """
    height, width = image.shape[:2]
    short = min(height, width)
    background = torch.from_numpy(np.array(image, dtype=np.float32)).div_(255.0).permute(2, 0, 1)
    wind = rng.uniform(-preset.angle_range, preset.angle_range)
    scene = smear(background, round(preset.smear * short), wind)
    grey = (0.299 * scene[0] + 0.587 * scene[1] + 0.114 * scene[2])[None]
    scene = grey + preset.saturation * (scene - grey)
    # The rain itself: many short faint streaks, too dense to tell apart, not cut into crisp ones.
    length = max(3, round(preset.length * short))
    seeded = torch.from_numpy(rng.random((height, width), dtype=np.float32) < preset.density)
    drops = torch.zeros(height, width)
    drops[seeded] = torch.from_numpy(rng.uniform(0.3, 1.0, size=int(seeded.sum())).astype(np.float32))
    texture = soften(motion_blur(drops, length, wind)).mul_(0.5 * preset.brightness).clamp_(0, 1)
    # Curtains of rain: a coarse random grid, smoothly upsampled.
    curtains = torch.from_numpy(rng.random((4, 6), dtype=np.float32))[None, None]
    curtains = F.interpolate(curtains, size=(height, width), mode="bicubic", align_corners=False)[0, 0]
    curtains = 0.7 + 0.6 * curtains.clamp_(0, 1)
    depth = torch.linspace(1.0, 0.7, height)[:, None]
    veil = ((1.0 - preset.transmission) * depth * curtains * rng.uniform(0.9, 1.1)).clamp_(0, 0.95)
    transmission = 1.0 - veil
    atmosphere = float(rng.uniform(0.7, 0.88)) * torch.tensor([0.97, 1.0, 1.03])[:, None, None]
    rainy = transmission * (scene + texture * curtains) + (1.0 - transmission) * atmosphere
    rainy = rainy + 0.8 * splash_marks(height, width, preset, rng)
    return rainy.clamp_(0, 1).mul_(255.0).add_(0.5).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


# ----------------------------------------------------------------------------------------------
# Rendering whole COCO splits (Make_COCO_Rain.py and the synthetic demo world)


def variant_names(presets: Sequence[str], variants_per_preset: int) -> list[str]:
    """One name per rain variant: ``<preset>_v<k>``."""
    for preset in presets:
        resolve_preset(preset)
    if variants_per_preset < 1:
        raise SettingError(f"variants per preset must be >= 1, got {variants_per_preset}")
    return [f"{preset}_v{k}" for preset in presets for k in range(variants_per_preset)]


def variant_preset(name: str) -> str:
    """The preset of a variant name: ``drops_light_v1`` -> ``drops_light``."""
    return name.rsplit("_v", 1)[0]


def renderer_versions(presets: Sequence[str]) -> dict[str, int]:
    """What a folder or world of these presets records about the renderers that drew them."""
    versions = {"renderer_version": RENDERER_VERSION}
    if any(resolve_preset(preset).family == "drops" for preset in presets):
        versions["drops_renderer_version"] = DROPS_RENDERER_VERSION
    if any(resolve_preset(preset).family == "downpour" for preset in presets):
        versions["downpour_renderer_version"] = DOWNPOUR_RENDERER_VERSION
    return versions


def variant_family(root: str) -> str:
    """The rain family of a variant folder (the one holding ``{split}2017/``), from its rain_settings.json."""
    path = os.path.join(root, SETTINGS_FILE)
    if not os.path.isfile(path):
        raise MissingFileError(
            f"{root!r} has no {SETTINGS_FILE}, so its rain family is unknown: render it with Make_COCO_Rain.py"
        )
    with open(path) as file:
        return resolve_preset(variant_preset(json.load(file)["variant"])).family


def split_by_family(variant_dirs: Sequence[str], family: str) -> tuple[list[str], list[str]]:
    """Variant roots (the parents of the ``{split}2017/`` folders ``variant_dirs`` lists) of other
    families, and of ``family``."""
    roots = [os.path.dirname(os.path.normpath(directory)) for directory in variant_dirs]
    family_presets(family)  # checks the name
    return [r for r in roots if variant_family(r) != family], [r for r in roots if variant_family(r) == family]


def variant_root(coco_rain_dir: str, names: Sequence[str], name: str) -> str:
    """A single variant fills COCO_RAIN_DIR itself; several get a sub-directory each."""
    return coco_rain_dir if len(names) == 1 else os.path.join(coco_rain_dir, name)


def claim_variant_root(root: str, name: str, seed: int, split_folder: str) -> None:
    """Record which rain ``root`` holds, or refuse when it already holds different or unknown rain.

    Resuming skips files that exist, so rendering into a folder made with another seed, preset or
    renderer would silently mix two kinds of rain.
    """
    settings = {"variant": name, "seed": int(seed), **renderer_versions([variant_preset(name)])}
    path = os.path.join(root, SETTINGS_FILE)
    if os.path.isfile(path):
        with open(path) as file:
            existing = json.load(file)
        if existing != settings:
            raise DataError(
                f"{root!r} holds rain rendered with {existing}, this run asks for {settings}: "
                "choose another COCO_RAIN_DIR, or delete that folder to render it again"
            )
        return
    images = os.path.join(root, split_folder)
    if os.path.isdir(images) and os.listdir(images):
        raise DataError(
            f"{images!r} already holds files but {root!r} has no {SETTINGS_FILE}, so their rain is unknown: "
            "choose another COCO_RAIN_DIR, or delete that folder"
        )
    atomic_write_json(path, settings, indent=None)


def copy_if_changed(source: str, destination: str) -> None:
    """Copy atomically (with the source's mtime), skipping an identical copy from an earlier run."""
    if os.path.isfile(destination):
        src, dst = os.stat(source), os.stat(destination)
        if (src.st_size, src.st_mtime_ns) == (dst.st_size, dst.st_mtime_ns):
            return
    with open(source, "rb") as original:
        write_atomically(destination, lambda file: shutil.copyfileobj(original, file))
    shutil.copystat(source, destination)  # the mtime compared above (a crash before it: copied again next time)


def render_file(job: tuple) -> tuple[str, str | None]:
    """Render one rainy file. Returns (status, error): "written", "skipped" or "failed"."""
    source, destination, preset, seed, image_id, variant, quality = job
    if os.path.exists(destination):
        return "skipped", None  # resumable: what a previous run finished is kept
    temporary = f"{destination}.tmp{os.getpid()}"
    try:
        with Image.open(source) as image:
            pixels = np.asarray(image.convert("RGB"))  # EXIF orientation untouched, as in the loader
        rainy = render_rain(pixels, preset, rain_rng(seed, image_id, variant))
        Image.fromarray(rainy).save(temporary, format="JPEG", quality=quality)
        os.replace(temporary, destination)
        return "written", None
    except OSError as error:
        if error.errno in NO_ROOM:  # the disk, not the source image: nothing else will be written either
            raise FileWriteError.of(destination, error) from None
        return "failed", f"{source}: {type(error).__name__}: {error}"
    except (SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return "failed", f"{source}: {type(error).__name__}: {error}"
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _init_worker() -> None:
    torch.set_num_threads(1)  # one core per worker: the pool is the parallelism


def prepare_rain_jobs(source_dir: str, coco_rain_dir: str, split_folder: str, annotation_file: str,
                      images: Sequence[dict], names: Sequence[str], seed: int, quality: int) -> list[tuple]:
    """Make each variant's folders (claimed for it, the annotation file copied in) and list its renders:
    one ``render_file`` job (source, destination, preset, seed, image id, variant, quality) per variant
    of ``names`` and image of ``images`` (the annotation file's entries), variant by variant. An image
    listed but missing from ``source_dir`` is an error."""
    jobs = []
    for name in names:
        root = variant_root(coco_rain_dir, names, name)
        claim_variant_root(root, name, seed, split_folder)
        os.makedirs(os.path.join(root, split_folder), exist_ok=True)
        os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
        copy_if_changed(annotation_file, os.path.join(root, "annotations", os.path.basename(annotation_file)))
        preset = variant_preset(name)
        for image in images:
            source = os.path.join(source_dir, image["file_name"])
            if not os.path.isfile(source):
                raise MissingFileError(f"image {source!r} is listed in {annotation_file} but missing")
            destination = os.path.join(root, split_folder, image["file_name"])
            jobs.append((source, destination, preset, seed, image["id"], name, quality))
    return jobs


def run_rain_jobs(jobs: Sequence[tuple], workers: int, description: str, show_progress: bool) -> tuple[dict, list[str]]:
    """Render ``jobs`` in ``workers`` spawned processes (0: in this one, on one thread, restored after),
    under a progress bar titled ``description``: ({"written": n, "skipped": n, "failed": n}, the
    failures' messages)."""
    counts, failed = {"written": 0, "skipped": 0, "failed": 0}, []
    with ExitStack() as stack:
        if workers > 0:
            pool = stack.enter_context(get_context("spawn").Pool(workers, initializer=_init_worker))
            results = pool.imap_unordered(render_file, jobs, chunksize=16)
        else:
            stack.callback(torch.set_num_threads, torch.get_num_threads())
            _init_worker()
            results = map(render_file, jobs)
        for status, error in tqdm(results, total=len(jobs), desc=description, unit="img",
                                  disable=not show_progress, dynamic_ncols=True):
            counts[status] += 1
            if error is not None:
                failed.append(error)
    return counts, failed


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

    Variants are named ``<preset>_v<k>``; one variant is written straight into ``coco_rain_dir``,
    several into ``coco_rain_dir/<name>/`` each (``{split_folder}/`` + ``annotations/`` inside).
    Files already present are skipped (resume); each is written to a temporary name and renamed.
    An unreadable source image is reported and counted, and the others are still rendered.

    Returns:
        {"written": n, "skipped": n, "failed": [message, ...], "seconds": s,
        "images_per_second_per_worker": rate of the files written}.
    """
    source_dir = os.path.join(coco_dir, split_folder)
    if not os.path.isdir(source_dir):
        raise MissingFileError(f"image folder {source_dir!r} does not exist")
    images = read_annotation_file(annotation_file)["images"][:limit]
    names = variant_names(presets, variants_per_preset)
    single_there = any(os.path.exists(os.path.join(coco_rain_dir, entry)) for entry in (SETTINGS_FILE, split_folder))
    if len(names) > 1 and single_there:
        raise DataError(
            f"{coco_rain_dir!r} holds one rain variant itself; several variants go into sub-directories, "
            "which the loader could not tell apart from it: choose another COCO_RAIN_DIR"
        )
    jobs = prepare_rain_jobs(source_dir, coco_rain_dir, split_folder, annotation_file, images, names, seed, quality)
    start = time.perf_counter()
    counts, failed = run_rain_jobs(jobs, workers, f"rain {split_folder}", show_progress)
    for message in failed:
        print(f"warning: could not render {message}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    rate = counts["written"] / seconds / max(1, workers) if counts["written"] else 0.0
    return {
        "written": counts["written"], "skipped": counts["skipped"], "failed": failed, "seconds": seconds,
        "images_per_second_per_worker": rate,
    }

