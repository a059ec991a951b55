"""Verify a COCO / COCO_rain split before a long run, and measure how fast one loader worker is.

    python Check_Data.py                                  # decode every file of val and train
    python Check_Data.py configs/demo.py                  # the demo world
    python Check_Data.py --SPLITS="['val']" --BENCHMARK_IMAGES=200 --CHECK=False   # loader speed only
"""

from __future__ import annotations

from utils.runtime import settings  # the shared defaults (utils/runtime/settings.py)

COCO_DIR = settings.COCO_DIR  # clean COCO: {train,val}2017/ and annotations/
COCO_RAIN_DIR = settings.COCO_RAIN_DIR  # rainy COCO (a directory, a directory of variants, or several joined by ":")
SPLITS = ["val", "train"]  # the splits to check
CHECK = True  # fully decode every clean and rainy file and compare sizes with the annotations
BENCHMARK_IMAGES = 100  # images decoded and resized to time one loader worker (0: no benchmark)
IMAGE_SIZE = settings.IMAGE_SIZE  # the loader's output size for the benchmark

from utils.runtime.config import command_line, load_config  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    config = load_config(globals(), argv)
    # The library (and torch) loads only now, after the settings are checked: a bad one fails at once.
    import torch

    from utils.data.coco import benchmark_loader, build_dataset, check_split

    torch.set_num_threads(1)  # what one DataLoader worker gets
    report = {}
    for split in config["SPLITS"]:
        dataset = build_dataset(config["COCO_DIR"], config["COCO_RAIN_DIR"], split, None,
                                image_size=config["IMAGE_SIZE"], train=True, percent=100, coco_ratio=0.0,
                                rain_ratio=1.0)
        print(f"{split}: {len(dataset):,} images, {len(dataset.rain_dirs)} rain variant(s); "
              "files and annotations found")
        entry = {"images": len(dataset)}
        if config["CHECK"]:
            problems = check_split(dataset)
            for problem in problems:
                print(f"  {problem}")
            print(f"{split}: {len(problems)} problem(s)")
            entry["problems"] = problems
        if config["BENCHMARK_IMAGES"]:
            rate = benchmark_loader(dataset, config["BENCHMARK_IMAGES"])
            print(f"{split}: one loader worker delivers {rate:.1f} images/s at "
                  f"{config['IMAGE_SIZE']}x{config['IMAGE_SIZE']}")
            entry["images_per_second_per_worker"] = rate
        report[split] = entry
    return report


if __name__ == "__main__":
    command_line(main)
