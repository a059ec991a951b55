"""Build the CPU demo world: data, a "pretrained" detector, an "original" SPDNet and the rain gate.

    python Make_Demo.py                          # what configs/demo.py triggers in every script
    python Make_Demo.py --DEMO_DETECTOR_STEPS=900

Nothing here is downloaded: the world is synthetic shapes in the COCO layout, the detector is a
small RT-DETR trained on its clean images, the original SPDNet is trained with pixel MSE on rainy ->
clean pairs, and the rain gate on clean vs rainy images (utils/demo.py says how). Each stage is
skipped when its output in DEMO_DIR records the same settings, so scripts run with configs/demo.py
call this first at almost no cost. The scripts then read the world through configs/demo.py.
"""

from __future__ import annotations

DEMO_DIR = "./outputs_spdnet_adaptation/demo"  # the world, the models and every demo result go here
DEMO_SEED = 0  # seeds the scenes, the rain and the three trainings below
DEMO_NUM_TRAIN = 2000  # training scenes (clean + rainy copy each)
DEMO_NUM_VAL = 200  # validation scenes
DEMO_IMAGE_SIZE = 128  # scene size in pixels (a multiple of 32: the detector's input)
DEMO_MAX_OBJECTS = 3  # each scene holds 1..DEMO_MAX_OBJECTS shapes
DEMO_NUM_CLASSES = 3  # shape classes drawn: circle, square, triangle (up to 6: + diamond, cross, ring)
DEMO_RAIN_PRESETS = ["medium"]  # rain strengths of the rainy copies ("light", "medium", "heavy")
DEMO_DETECTOR_STEPS = 400  # optimizer steps of the detector's training on clean images
DEMO_DETECTOR_BATCH_SIZE = 16  # images per detector step
DEMO_DETECTOR_LEARNING_RATE = 1e-3  # peak of the detector's one-cycle schedule
DEMO_DETECTOR_WIDTH = 32  # detector backbone width of the first stage (then x2, x4, x8)
DEMO_DETECTOR_D_MODEL = 128  # detector hidden size
DEMO_DETECTOR_DECODER_LAYERS = 3  # detector decoder layers
DEMO_DETECTOR_QUERIES = 30  # detector object queries
DEMO_DETECTOR_DENOISING = 30  # denoising queries while the detector trains
DEMO_SPDNET_N_FEATS = 8  # width of the demo SPDNet (the official one: 32)
DEMO_SPDNET_N_RESBLOCKS = 1  # residual blocks of the demo SPDNet (the official one: 3)
DEMO_SPDNET_STEPS = 250  # optimizer steps of the pixel-MSE deraining training
DEMO_SPDNET_BATCH_SIZE = 8  # crops per deraining step
DEMO_SPDNET_CROP = 48  # deraining trains on random crops of this size, as the official recipe does
DEMO_SPDNET_LEARNING_RATE = 3e-3  # peak of the deraining one-cycle schedule
DEMO_GATE_EPOCHS = 2  # epochs of the rain gate (Training_Rain_Detector.py, small_cnn)
DEMO_WORKERS = 1  # data loading processes (the 2-core CPU computes on the rest)
DEMO_DEVICE = "auto"  # "auto", "cuda", "cpu"

from utils.config import load_config  # noqa: E402


def stage_paths(demo_dir: str) -> dict[str, str]:
    return {
        "world": f"{demo_dir}/data", "coco_dir": f"{demo_dir}/data/coco", "coco_rain_dir": f"{demo_dir}/data/coco_rain",
        "detector": f"{demo_dir}/detector", "spdnet": f"{demo_dir}/spdnet_original.pt",
        "gate": f"{demo_dir}/rain_detector.pt",
    }


def main(argv: list[str] | None = None) -> dict:
    import os
    import time

    from utils.checkpoint import atomic_write_json
    from utils.demo import MANIFEST, is_built, read_manifest, train_detector, train_original_spdnet
    from utils.pipelines import choose_device
    from utils.synthetic import build_synthetic_world

    config = load_config(globals(), argv, quiet=True)
    device = choose_device(config["DEMO_DEVICE"])
    paths = stage_paths(config["DEMO_DIR"])
    os.makedirs(config["DEMO_DIR"], exist_ok=True)
    start = time.perf_counter()
    seed, workers = config["DEMO_SEED"], config["DEMO_WORKERS"]

    world = {
        "num_train": config["DEMO_NUM_TRAIN"], "num_val": config["DEMO_NUM_VAL"], "image_size": config["DEMO_IMAGE_SIZE"],
        "seed": seed, "rain_presets": list(config["DEMO_RAIN_PRESETS"]), "max_objects": config["DEMO_MAX_OBJECTS"],
        "num_classes": config["DEMO_NUM_CLASSES"],
    }
    build_synthetic_world(paths["world"], world["num_train"], world["num_val"], image_size=world["image_size"], seed=seed,
                          rain_presets=tuple(world["rain_presets"]), max_objects=world["max_objects"],
                          num_classes=world["num_classes"])

    # The detector sees clean images only: a change of rain keeps it.
    clean_world = {key: value for key, value in world.items() if key != "rain_presets"}
    detector = {
        "world": clean_world, "image_size": world["image_size"], "seed": seed, "steps": config["DEMO_DETECTOR_STEPS"],
        "batch_size": config["DEMO_DETECTOR_BATCH_SIZE"], "learning_rate": config["DEMO_DETECTOR_LEARNING_RATE"],
        "base_width": config["DEMO_DETECTOR_WIDTH"], "d_model": config["DEMO_DETECTOR_D_MODEL"],
        "decoder_layers": config["DEMO_DETECTOR_DECODER_LAYERS"], "num_queries": config["DEMO_DETECTOR_QUERIES"],
        "num_denoising": config["DEMO_DETECTOR_DENOISING"],
    }
    manifest = os.path.join(paths["detector"], MANIFEST)
    if is_built(manifest, detector, [paths["detector"]]):
        print(f"demo detector: reused {paths['detector']} (clean val {read_manifest(manifest)['clean_val']})", flush=True)
    else:
        metrics = train_detector(detector, paths["coco_dir"], paths["detector"], device, workers)
        atomic_write_json(manifest, {"settings": detector, "clean_val": {k: metrics[k] for k in ("AP", "AP50")}})
        print(f"demo detector: clean val AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f}", flush=True)

    spdnet = {
        "world": world, "image_size": world["image_size"], "seed": seed, "n_feats": config["DEMO_SPDNET_N_FEATS"],
        "n_resblocks": config["DEMO_SPDNET_N_RESBLOCKS"], "steps": config["DEMO_SPDNET_STEPS"],
        "batch_size": config["DEMO_SPDNET_BATCH_SIZE"], "crop_size": config["DEMO_SPDNET_CROP"],
        "learning_rate": config["DEMO_SPDNET_LEARNING_RATE"],
    }
    manifest = paths["spdnet"] + ".json"
    if is_built(manifest, spdnet, [paths["spdnet"]]):
        print(f"demo original SPDNet: reused {paths['spdnet']} ({read_manifest(manifest)['rainy_val']})", flush=True)
    else:
        quality = train_original_spdnet(spdnet, paths["coco_dir"], paths["coco_rain_dir"], paths["spdnet"], device, workers)
        atomic_write_json(manifest, {"settings": spdnet, "rainy_val": quality})
        print(f"demo original SPDNet: rainy val PSNR {quality['rainy_psnr_db']:.2f} dB -> "
              f"{quality['derained_psnr_db']:.2f} dB derained", flush=True)

    gate = {"world": world, "seed": seed, "epochs": config["DEMO_GATE_EPOCHS"]}
    manifest = paths["gate"] + ".json"
    if is_built(manifest, gate, [paths["gate"]]):
        print(f"demo rain gate: reused {paths['gate']}", flush=True)
    else:
        import Training_Rain_Detector

        result = Training_Rain_Detector.main([
            f"--COCO_DIR={paths['coco_dir']}", f"--COCO_RAIN_DIR={paths['coco_rain_dir']}",
            f"--OUTPUT_DIR={config['DEMO_DIR']}", f"--IMAGE_SIZE={world['image_size']}", "--PERCENT_DATASET=100",
            "--VAL_PERCENT=100", "--ARCHITECTURE=small_cnn", f"--INPUT_SIZE={world['image_size']}",
            f"--NUM_EPOCHS={gate['epochs']}", "--BATCH_SIZE=32", f"--DATALOADER_WORKERS={workers}",
            f"--SEED={seed}", f"--DEVICE={config['DEMO_DEVICE']}",
        ])
        atomic_write_json(manifest, {"settings": gate, "result": {k: v for k, v in result.items() if isinstance(v, (int, float, str))}})
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
