"""Library weather (utils/data/library_weather.py): every kind changes the image, keeps its shape and
dtype, and is a function of the rng alone; rain families and unknown kinds are refused."""

import random

import numpy as np
import pytest
import torch

from utils.data.library_weather import WEATHER_KINDS, RandomWeather, render_weather, weather_transform
from utils.data.rain import FAMILIES

SIZE = 96


def scene(size: int = SIZE) -> np.ndarray:
    """A uint8 (H, W, 3) picture with dark and bright parts, edges and texture."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.stack([x, y, (x + y) / 2], -1) * 200 + np.random.default_rng(0).uniform(0, 55, (size, size, 3))
    image[size // 4:size // 2, size // 4:3 * size // 4] = (200, 40, 40)
    image[size // 2:, : size // 4] = (20, 20, 20)
    return image.astype(np.uint8)


@pytest.mark.parametrize("kind", WEATHER_KINDS)
def test_same_seed_same_image_and_the_image_changes(kind):
    image = scene()
    first = render_weather(image, kind, np.random.default_rng(5))
    second = render_weather(image, kind, np.random.default_rng(5))
    assert first.shape == image.shape and first.dtype == np.uint8
    assert np.array_equal(first, second)
    assert not np.array_equal(first, image)


@pytest.mark.parametrize("kind", WEATHER_KINDS)
def test_different_seeds_differ(kind):
    image = scene()
    renders = [render_weather(image, kind, np.random.default_rng(seed)).tobytes() for seed in range(4)]
    assert len(set(renders)) > 1


@pytest.mark.parametrize("kind", WEATHER_KINDS)
def test_independent_of_global_state_and_earlier_renders(kind):
    image = scene()
    np.random.seed(1)
    random.seed(1)
    first = render_weather(image, kind, np.random.default_rng(11))
    np.random.seed(2)
    random.seed(2)
    render_weather(image, kind, np.random.default_rng(12))
    np.random.uniform(size=7)
    random.random()
    assert np.array_equal(first, render_weather(image, kind, np.random.default_rng(11)))


def test_input_is_left_untouched_and_other_shapes_work():
    image = scene(64)[:, :48].copy()
    before = image.copy()
    out = render_weather(image, "shadow", np.random.default_rng(0))
    assert out.shape == (64, 48, 3) and np.array_equal(image, before)


@pytest.mark.parametrize("kind", FAMILIES)
def test_rain_families_are_refused(kind):
    with pytest.raises(ValueError, match="rain.py"):
        weather_transform(kind, 64)
    with pytest.raises(ValueError, match="rain family"):
        render_weather(scene(), kind, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rain family"):
        RandomWeather([kind], 0.5)


def test_unknown_kind_is_refused_with_the_known_kinds():
    with pytest.raises(ValueError, match="'hail'.*fog, snow"):
        weather_transform("hail", 64)
    with pytest.raises(ValueError, match="hail"):
        RandomWeather(["fog", "hail"], 0.5)


def test_kinds_are_disjoint_from_rain_families():
    assert not set(WEATHER_KINDS) & set(FAMILIES)


def test_random_weather_fraction_is_checked():
    for fraction in (-0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            RandomWeather(WEATHER_KINDS, fraction)
    with pytest.raises(ValueError, match="at least one"):
        RandomWeather([], 0.5)
    assert RandomWeather([], 0).fraction == 0


def test_random_weather_fraction_zero_never_and_one_always():
    never, always = RandomWeather(WEATHER_KINDS, 0), RandomWeather(WEATHER_KINDS, 1)
    rng = np.random.default_rng(0)
    assert not any(never.chosen(rng) for _ in range(200))
    assert all(always.chosen(rng) for _ in range(200))


def test_random_weather_renders_only_its_kinds_deterministically():
    weather = RandomWeather(["fog", "noise"], 1)
    clean = torch.from_numpy(scene(64)).permute(2, 0, 1).float() / 255.0
    kinds = set()
    for seed in range(8):
        image, kind = weather.render(clean, np.random.default_rng(seed))
        again, kind_again = weather.render(clean, np.random.default_rng(seed))
        assert kind == kind_again and torch.equal(image, again)
        assert image.shape == clean.shape and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
        kinds.add(kind)
    assert kinds == {"fog", "noise"} and not kinds & set(FAMILIES)
