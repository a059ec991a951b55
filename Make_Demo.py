"""Build the CPU demo world: data and rain gate, next to the kept "pretrained" detector and "original" SPDNet.

    python Make_Demo.py                          # what configs/demo.py triggers in every script
    python Make_Demo.py --DEMO_SEED=1 --DEMO_DIR=./outputs_spdnet_adaptation/demo_world1
    python Make_Demo.py --DEMO_PRETRAIN=True     # re-make the kept weights in demo_weights/ (~100 min on 2 cores)

Nothing here is downloaded. Real users download PekingU's RT-DETR and the official SPDNet; the demo
keeps their stand-ins in DEMO_WEIGHTS_DIR (``detector/`` and ``spdnet_original.pt``), trained by
``--DEMO_PRETRAIN=True`` on a pretraining world of their own (DEMO_PRETRAIN_SEED: scenes and rain no
demo world shows), with the settings and the measured quality recorded beside them. A demo world
(DEMO_SEED) is synthetic shapes in the COCO layout, clean and rainy; the rain gate is trained on it.
Each stage is skipped when its output records the same settings, so scripts run with
configs/demo.py call this first at almost no cost; utils/apps/demo.py says how each stage is made.

Its settings (DEMO_*, listed by --help) are declared in utils/runtime/demo_settings.py, because every script
that can prepare the demo takes them too: `python Training_SPDNet_Adaptation.py configs/demo.py
--DEMO_SEED=1` builds world 1 before training on it.
"""

from __future__ import annotations

from utils.runtime.config import command_line, load_config  # noqa: E402
from utils.runtime.demo_settings import demo_defaults  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    config = load_config(globals(), argv, quiet=True, extra_defaults=demo_defaults())
    # The library (and torch) loads only now, after the settings are checked: a bad one fails at once.
    from utils.apps.demo import prepare_demo

    return prepare_demo(config)


if __name__ == "__main__":
    command_line(main)
