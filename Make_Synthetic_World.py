"""Write the synthetic demo world: small COCO-format scenes of shapes, clean and rainy.

    python Make_Synthetic_World.py                                         # 2000 train + 200 val, 160x160
    python Make_Synthetic_World.py --WORLD_IMAGE_SIZE=128 --PRESETS="['medium', 'heavy']" --WORLD_DIR=/tmp/world

Writes WORLD_DIR/coco (train2017/, val2017/, annotations/) and WORLD_DIR/coco_rain in the layout of
Make_COCO_Rain.py, so every script takes it through --COCO_DIR / --COCO_RAIN_DIR like real COCO.
Its classes (circle, square, triangle, diamond, cross, ring) are utils.data.synthetic.ID2LABEL. A world
already built with the same settings is reused; other settings rebuild it.
"""

from __future__ import annotations

WORLD_DIR = "./data/synthetic"  # root of the world: coco/ and coco_rain/ go inside
NUM_TRAIN = 2000  # training scenes
NUM_VAL = 200  # validation scenes
WORLD_IMAGE_SIZE = 160  # scenes are WORLD_IMAGE_SIZE x WORLD_IMAGE_SIZE pixels
MAX_OBJECTS = 6  # each scene holds 1..MAX_OBJECTS shapes
PRESETS = ["medium"]  # rain presets rendered: "light", "medium", "heavy" (streaks), "drops_light", "drops_heavy"
#   (drops), "downpour_light", "downpour_medium", "downpour_heavy" (downpour)
VARIANTS_PER_PRESET = 1  # differently seeded renderings of each preset
WORLD_SEED = 0  # scenes and rain are a function of this seed
WORKERS = 0  # processes for the rain (0: this process; small images render fastest without a pool)

from utils.runtime.config import command_line, load_config  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    config = load_config(globals(), argv)
    # The library (and torch) loads only now, after the settings are checked: a bad one fails at once.
    import time

    from utils.data.synthetic import build_synthetic_world

    start = time.perf_counter()
    paths = build_synthetic_world(
        config["WORLD_DIR"], num_train=config["NUM_TRAIN"], num_val=config["NUM_VAL"],
        image_size=config["WORLD_IMAGE_SIZE"], seed=config["WORLD_SEED"], rain_presets=tuple(config["PRESETS"]),
        variants_per_preset=config["VARIANTS_PER_PRESET"], max_objects=config["MAX_OBJECTS"], workers=config["WORKERS"],
    )
    seconds = time.perf_counter() - start
    print(f"synthetic world of {config['NUM_TRAIN'] + config['NUM_VAL']} scenes ready in {seconds:.1f} s")
    print(f"use it with --COCO_DIR={paths['coco_dir']} --COCO_RAIN_DIR={paths['coco_rain_dir']}")
    return paths


if __name__ == "__main__":
    command_line(main)
