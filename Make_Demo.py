"""Build the CPU demo world: data and rain gate, next to the kept "pretrained" detector and "original" SPDNet.

    python Make_Demo.py                          # what configs/demo.py triggers in every script
    python Make_Demo.py --DEMO_SEED=1 --DEMO_DIR=./outputs_spdnet_adaptation/demo_world1
    python Make_Demo.py --DEMO_PRETRAIN=True     # re-make the kept weights in demo_weights/ (~40 min on 2 cores)

Nothing here is downloaded. Real users download PekingU's RT-DETR and the official SPDNet; the demo
keeps their stand-ins in DEMO_WEIGHTS_DIR (``detector/`` and ``spdnet_original.pt``), trained by
``--DEMO_PRETRAIN=True`` on a pretraining world of their own (DEMO_PRETRAIN_SEED: scenes and rain no
demo world shows), with the settings and the measured quality recorded beside them. A demo world
(DEMO_SEED) is synthetic shapes in the COCO layout, clean and rainy; the rain gate is trained on it.
Each stage is skipped when its output records the same settings, so scripts run with
configs/demo.py call this first at almost no cost; utils/demo.py says how each stage is made.
"""

from __future__ import annotations

DEMO_DIR = "./outputs_spdnet_adaptation/demo"  # the world, the gate and every demo result go here
DEMO_SEED = 0  # seeds the demo world's scenes, rain and gate
DEMO_NUM_TRAIN = 2000  # training scenes of a demo world (clean + rainy copy each)
DEMO_NUM_VAL = 200  # validation scenes (demo and pretraining worlds)
DEMO_IMAGE_SIZE = 128  # scene size in pixels (a multiple of 32: the detector's input)
DEMO_MAX_OBJECTS = 3  # each scene holds 1..DEMO_MAX_OBJECTS shapes
DEMO_NUM_CLASSES = 3  # shape classes drawn: circle, square, triangle (up to 6: + diamond, cross, ring)
DEMO_RAIN_PRESETS = ["medium"]  # rain strengths of the rainy copies ("light", "medium", "heavy")
DEMO_GATE_EPOCHS = 2  # epochs of the rain gate (Training_Rain_Detector.py, small_cnn)
DEMO_WEIGHTS_DIR = "./demo_weights"  # the kept stand-ins: detector/ and spdnet_original.pt (in the repository)
DEMO_PRETRAIN = False  # True: (re)train the kept stand-ins on the pretraining world instead of building DEMO_DIR
DEMO_PRETRAIN_DIR = "./outputs_spdnet_adaptation/demo_pretrain"  # the pretraining world's data (not kept)
DEMO_PRETRAIN_SEED = 1000  # the pretraining world's scenes and rain, and the two trainings below
DEMO_PRETRAIN_NUM_TRAIN = 4000  # training scenes of the pretraining world
DEMO_DETECTOR_STEPS = 2500  # optimizer steps of the detector's training on clean images
DEMO_DETECTOR_BATCH_SIZE = 16  # images per detector step
DEMO_DETECTOR_LEARNING_RATE = 1e-3  # peak of the detector's one-cycle schedule
DEMO_DETECTOR_WIDTH = 32  # detector backbone width of the first stage (then x2, x4, x8)
DEMO_DETECTOR_D_MODEL = 128  # detector hidden size
DEMO_DETECTOR_DECODER_LAYERS = 3  # detector decoder layers
DEMO_DETECTOR_QUERIES = 30  # detector object queries
DEMO_DETECTOR_DENOISING = 30  # denoising queries while the detector trains
DEMO_SPDNET_N_FEATS = 8  # width of the demo SPDNet (the official one: 32)
DEMO_SPDNET_N_RESBLOCKS = 1  # residual blocks of the demo SPDNet (the official one: 3)
DEMO_SPDNET_STEPS = 3000  # optimizer steps of the deraining training (pixel MSE to the clean image)
DEMO_SPDNET_BATCH_SIZE = 16  # crops per deraining step
DEMO_SPDNET_CROP = 64  # train on random crops of this size, as the official recipe does (None: whole images)
DEMO_SPDNET_LEARNING_RATE = 1e-3  # peak of the deraining one-cycle schedule
DEMO_WORKERS = 1  # data loading processes (the 2-core CPU computes on the rest)
DEMO_DEVICE = "auto"  # "auto", "cuda", "cpu"

from utils.config import load_config  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    import time

    from utils.checkpoint import atomic_write_json
    from utils.demo import build_demo, is_built, pretrain_stand_ins, world_settings

    config = load_config(globals(), argv, quiet=True)
    if config["DEMO_PRETRAIN"]:
        return pretrain_stand_ins(config)
    start = time.perf_counter()
    paths = build_demo(config)
    world = world_settings(config, config["DEMO_SEED"], config["DEMO_NUM_TRAIN"])
    gate = {"world": world, "seed": config["DEMO_SEED"], "epochs": config["DEMO_GATE_EPOCHS"]}
    if is_built(paths["gate"] + ".json", gate, [paths["gate"]]):
        print(f"demo rain gate: reused {paths['gate']}", flush=True)
    else:
        import Training_Rain_Detector

        size, workers = config["DEMO_IMAGE_SIZE"], config["DEMO_WORKERS"]
        result = Training_Rain_Detector.main([
            f"--COCO_DIR={paths['coco_dir']}", f"--COCO_RAIN_DIR={paths['coco_rain_dir']}",
            f"--OUTPUT_DIR={config['DEMO_DIR']}", f"--IMAGE_SIZE={size}", "--PERCENT_DATASET=100",
            "--VAL_PERCENT=100", "--ARCHITECTURE=small_cnn", f"--INPUT_SIZE={size}",
            f"--NUM_EPOCHS={gate['epochs']}", "--BATCH_SIZE=32", f"--DATALOADER_WORKERS={workers}",
            f"--SEED={config['DEMO_SEED']}", f"--DEVICE={config['DEMO_DEVICE']}",
        ])
        atomic_write_json(paths["gate"] + ".json", {"settings": gate, "result": {k: v for k, v in result.items() if isinstance(v, (int, float, str))}})
    print(f"demo world ready in {config['DEMO_DIR']} ({time.perf_counter() - start:.0f} s)", flush=True)
    return paths


def prepare_demo_if_asked(config: dict, argv: list[str] | None) -> None:
    """What the other scripts call: build or reuse the demo when PREPARE_DEMO is set, reading the
    same config files (so configs/demo.py's DEMO_* settings reach this script too)."""
    import sys

    if config.get("PREPARE_DEMO"):
        main([argument for argument in (sys.argv[1:] if argv is None else argv) if argument.endswith(".py")])


if __name__ == "__main__":
    main()
