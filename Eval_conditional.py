"""Evaluate the gated conditional model on clean, rainy and mixed validation data.

    python Eval_conditional.py                    # after Training_SPDNet_Adaptation.py and Training_Utility_Gate.py
    python Eval_conditional.py configs/demo.py    # the CPU demo world
    python Eval_conditional.py --HOLDOUT_RAIN_DIR=./data/coco_rain_drops --SOFT_ROUTING=True

Per split: mAP of the conditional model against always-derain and never-derain, the gate's confusion
matrix, milliseconds per image on each path, and a check that every image gated clean gets exactly the
frozen detector's detections. With HOLDOUT_FAMILY or HOLDOUT_RAIN_DIR also on rain the gate never saw
(splits heldout and heldout_mixed); with SOFT_ROUTING the soft-routed model too, and a hard vs soft
table (docs/rain_gate.md); with ORACLE_REPORT how often the gate's decision agrees with the oracle (per
image, the path with the lower detector loss). Writes OUTPUT_DIR/conditional_results.json. The gate is
GATE_WEIGHTS: the detector-view gate (utility_gate.pt, the default) or a rain gate (rain_detector.pt).
"""

from __future__ import annotations

from utils.runtime import settings  # the shared defaults (utils/runtime/settings.py)

# ---- data
COCO_DIR = settings.COCO_DIR  # clean COCO: val2017/ and annotations/instances_val2017.json
COCO_RAIN_DIR = settings.COCO_RAIN_DIR  # rainy COCO in the same layout
VAL_PERCENT = 100.0  # percent of the validation images used (fractions allowed)
MIXED_RAIN_FRACTION = 0.5  # fraction of rainy images in the mixed splits
HOLDOUT_FAMILY = None  # rain family the gate was trained without ("streaks", "drops", "downpour"): its variants
#   of COCO_RAIN_DIR leave rainy/mixed and make the held-out splits
HOLDOUT_RAIN_DIR = None  # rainy val the gate never saw, in COCO_RAIN_DIR's layout: the held-out splits
#   (None: HOLDOUT_FAMILY's variants of COCO_RAIN_DIR)
IMAGE_SIZE = settings.IMAGE_SIZE  # square input size (multiple of 32)
# ---- models
DETECTOR = "PekingU/rtdetr_r18vd"  # hub id or local directory of the frozen detector
ADAPTED_WEIGHTS = None  # adapted SPDNet (None: OUTPUT_DIR/spdnet_adapted.pt)
GATE_WEIGHTS = None  # the gate (None: OUTPUT_DIR/utility_gate.pt, Training_Utility_Gate.py's detector-view gate,
#   the one that carries to weather it never trained on: docs/unseen_rain.md); a rain gate routes the same
#   (OUTPUT_DIR/rain_detector.pt, Training_Rain_Detector.py); "confidence_rule": the label-free baseline
SPDNET_N_FEATS = 32  # SPDNet width, when the weights file does not record it
SPDNET_N_RESBLOCKS = 3  # SPDNet blocks, when the weights file does not record it
SOFT_ROUTING = False  # also score soft routing (gated-rainy images see g * SPDNet(x) + (1 - g) * x,
#   g the calibrated P(rain))
ORACLE_REPORT = False  # also report how often the gate's decision agrees with the oracle (per image, the path
#   with the lower detector loss: two extra detector passes per image, one image at a time)
# ---- run
BATCH_SIZE = 8  # images per batch (split by the gate inside)
PRECISION = "fp32"  # "fp32" or "bf16" (SPDNet in bf16 autocast; the detector always runs in fp32)
DEVICE = settings.DEVICE  # "auto", "cuda", "cpu", ...
CPU_THREADS = settings.CPU_THREADS  # PyTorch's CPU threads (None: its default, one per core);
#   the same count repeats a CPU run bit for bit
DATALOADER_WORKERS = settings.EVAL_DATALOADER_WORKERS  # data loading processes
SEED = settings.SEED  # the validation subset and the mixed split's choice of rainy images
OUTPUT_DIR = settings.OUTPUT_DIR  # where the weights are and results go

from utils.runtime.config import command_line, load_config  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    config = load_config(globals(), argv)
    # The library (and torch) loads only now, after the settings are checked: a bad one fails at once.
    import os

    from utils.apps import conditional_eval
    from utils.runtime.checkpoint import atomic_write_json
    from utils.data.coco import check_data_dirs
    from utils.apps.pipelines import build_conditional_model
    from utils.runtime.device import choose_device, set_cpu_threads

    set_cpu_threads(config["CPU_THREADS"])
    check_data_dirs(config["COCO_DIR"], config["COCO_RAIN_DIR"], ["val"])
    device = choose_device(config["DEVICE"])
    splits = conditional_eval.validation_splits(config)
    model = build_conditional_model(config, device)
    results = {}
    for split, (rain_fraction, coco_rain_dir) in splits.items():
        loader, annotation_file, label_to_category_id = conditional_eval.build_split_loader(
            config, model, rain_fraction, coco_rain_dir)
        results[split] = conditional_eval.score_routes(
            model, loader, annotation_file, label_to_category_id, config, device, split)
    print(conditional_eval.conditional_table(results))
    if config["SOFT_ROUTING"]:
        print(conditional_eval.routing_table(results))
    print(f"wrote {atomic_write_json(os.path.join(config['OUTPUT_DIR'], 'conditional_results.json'), results)}")
    return results


if __name__ == "__main__":
    command_line(main)
