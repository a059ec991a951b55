"""Render rainy copies of COCO splits into the COCO_rain layout the loaders read.

    python Make_COCO_Rain.py                                                   # val + train, medium rain
    python Make_COCO_Rain.py --PRESETS="['light', 'medium', 'heavy']" --VARIANTS_PER_PRESET=2 --WORKERS=8
    python Make_COCO_Rain.py --COCO_DIR=./my_coco --COCO_RAIN_DIR=./my_coco_rain --SPLITS="['val']" --LIMIT=100
    python Make_COCO_Rain.py --SPLITS="['val']" --PRESETS="['drops_heavy']" --COCO_RAIN_DIR=./data/coco_rain_drops

Input: COCO_DIR/{split}2017/*.jpg and COCO_DIR/annotations/instances_{split}2017.json. Output: the
same layout under COCO_RAIN_DIR (same file names, annotation files copied). Variants are named
<preset>_v<k>; a single one fills COCO_RAIN_DIR itself, several get one sub-directory each
(COCO_RAIN_DIR/<preset>_v<k>/{split}2017/...), among which the training loader picks per image and
epoch. Each variant folder records its settings in rain_settings.json; files already rendered are
skipped, so an interrupted run just continues (and a run with other settings into the same folder
is refused rather than mixed). Unreadable source images are listed at the end and make the exit
status 1; everything else is still rendered.
"""

from __future__ import annotations

from utils.runtime import settings  # the shared defaults (utils/runtime/settings.py)

COCO_DIR = settings.COCO_DIR  # the clean images and their annotations
COCO_RAIN_DIR = settings.COCO_RAIN_DIR  # where the rainy copies go
SPLITS = ["val", "train"]  # which splits to render ("train", "val")
PRESETS = ["medium"]  # rain presets: streaks "light", "medium", "heavy"; drops on the lens "drops_light",
#   "drops_heavy"; downpour (veil, washed-out colour, splashes) "downpour_light", "downpour_medium", "downpour_heavy"
VARIANTS_PER_PRESET = 1  # differently seeded renderings of each preset
WORKERS = 2  # parallel processes (each renders on one core; 0: in this process)
RAIN_SEED = 0  # the rain of an image depends only on (RAIN_SEED, image id, variant name)
JPEG_QUALITY = 95  # quality of the written JPEGs
LIMIT = None  # render only the first LIMIT images of each split (None: all)

from utils.runtime.config import command_line, load_config  # noqa: E402
from utils.runtime.errors import SettingError  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    config = load_config(globals(), argv)
    # The library (and torch) loads only now, after the settings are checked: a bad one fails at once.
    from utils.data.coco import SPLIT_FOLDERS, annotation_path
    from utils.data.rain import make_rainy_split

    unknown = [split for split in config["SPLITS"] if split not in SPLIT_FOLDERS]
    if unknown:
        raise SettingError(f"SPLITS may hold {sorted(SPLIT_FOLDERS)}, got {unknown}")
    reports = {}
    for split in config["SPLITS"]:
        report = make_rainy_split(
            config["COCO_DIR"], config["COCO_RAIN_DIR"], SPLIT_FOLDERS[split],
            annotation_path(config["COCO_DIR"], split),
            config["PRESETS"], config["VARIANTS_PER_PRESET"], seed=config["RAIN_SEED"], workers=config["WORKERS"],
            quality=config["JPEG_QUALITY"], limit=config["LIMIT"],
        )
        print(
            f"{split}: wrote {report['written']} images, skipped {report['skipped']} already there, "
            f"{len(report['failed'])} unreadable; {report['seconds']:.1f} s, "
            f"{report['images_per_second_per_worker']:.1f} images/s per worker", flush=True,
        )
        reports[split] = report
    return reports


if __name__ == "__main__":
    import sys

    sys.exit(1 if any(report["failed"] for report in command_line(main).values()) else 0)
