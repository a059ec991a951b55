"""Compare three pipelines on rainy COCO: vanilla RT-DETR, original SPDNet + RT-DETR, adapted SPDNet + RT-DETR.

    python Eval_SPDNet_Adaptation.py                    # after Training_SPDNet_Adaptation.py
    python Eval_SPDNet_Adaptation.py configs/demo.py    # the CPU demo world
    python Eval_SPDNet_Adaptation.py --EVAL_CLEAN=True  # the clean validation split as well

Writes OUTPUT_DIR/eval_results.json, eval_bars.png, eval_examples.png and each pipeline's detections
on the rainy split in COCO results format: OUTPUT_DIR/detections/{vanilla,original,adapted}.json
(with EVAL_CLEAN, the clean split's in OUTPUT_DIR/detections/clean/).
"""

from __future__ import annotations

from utils.runtime import settings  # the shared defaults (utils/runtime/settings.py)

# ---- data
COCO_DIR = settings.COCO_DIR  # clean COCO: val2017/ and annotations/instances_val2017.json
COCO_RAIN_DIR = settings.COCO_RAIN_DIR  # rainy COCO in the same layout (the first variant when several)
VAL_PERCENT = 100.0  # percent of the validation images scored (fractions allowed)
IMAGE_SIZE = settings.IMAGE_SIZE  # square input size (multiple of 32), as in training
EVAL_CLEAN = False  # also score the three pipelines on the clean validation split
IMAGE_QUALITY = True  # PSNR / SSIM of the SPDNets' rainy-val outputs against the clean originals in COCO_DIR
# ---- models
DETECTOR = "PekingU/rtdetr_r18vd"  # hub id or local directory of the frozen detector
SPDNET_WEIGHTS = "./weights/spdnet_official.pt"  # the original (official) SPDNet weights
SPDNET_N_FEATS = 32  # width of the original SPDNet
SPDNET_N_RESBLOCKS = 3  # residual blocks of the original SPDNet
ADAPTED_WEIGHTS = None  # adapted SPDNet (None: OUTPUT_DIR/spdnet_adapted.pt)
# ---- run
BATCH_SIZE = 8  # images per batch
PRECISION = "fp32"  # "fp32" or "bf16" (SPDNet in bf16 autocast; the detector always runs in fp32)
DEVICE = settings.DEVICE  # "auto", "cuda", "cpu", ...
CPU_THREADS = settings.CPU_THREADS  # PyTorch's CPU threads (None: its default, one per core);
#   the same count repeats a CPU run bit for bit
DATALOADER_WORKERS = settings.EVAL_DATALOADER_WORKERS  # data loading processes
NUM_EXAMPLES = 4  # rows of the qualitative picture
SEED = settings.SEED  # the validation subset when VAL_PERCENT < 100
OUTPUT_DIR = settings.OUTPUT_DIR  # where spdnet_adapted.pt is and results go

from utils.runtime.config import command_line, load_config  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    config = load_config(globals(), argv)
    # The library (and torch) loads only now, after the settings are checked: a bad one fails at once.
    import os

    from utils.apps import evaluation
    from utils.runtime.checkpoint import atomic_write_json
    from utils.data.coco import check_data_dirs
    from utils.apps.pipelines import build_three_pipelines
    from utils.runtime.device import choose_device, set_cpu_threads

    set_cpu_threads(config["CPU_THREADS"])
    check_data_dirs(config["COCO_DIR"], config["COCO_RAIN_DIR"], ["val"])
    device = choose_device(config["DEVICE"])
    pipelines = build_three_pipelines(config, device)
    id2label = pipelines.detector.config.id2label
    splits = ["rainy"] + (["clean"] if config["EVAL_CLEAN"] else [])
    results = {}
    for split in splits:
        loader, annotation_file, label_to_category_id = evaluation.build_val_loader(
            config, id2label, 1.0 if split == "rainy" else 0.0)
        detections_dir = os.path.join(config["OUTPUT_DIR"], "detections", *([] if split == "rainy" else [split]))
        results[split] = evaluation.score_pipelines(
            pipelines, loader, annotation_file, label_to_category_id, config, device, split, detections_dir)
        print(evaluation.comparison_table(results[split], split, pipelines.original.adapter.title))
    if config["IMAGE_QUALITY"]:
        spdnets = {"original": pipelines.original.spdnet, "adapted": pipelines.adapted.spdnet}
        results["rainy_image_quality"] = evaluation.image_quality(
            spdnets, config["COCO_DIR"], config["COCO_RAIN_DIR"], config["IMAGE_SIZE"], device, config["VAL_PERCENT"],
            config["SEED"])
        print(evaluation.quality_line(results["rainy_image_quality"]))
    print(f"wrote {atomic_write_json(os.path.join(config['OUTPUT_DIR'], 'eval_results.json'), results)}")
    evaluation.save_comparison_pictures(pipelines, results, config, device)
    return results


if __name__ == "__main__":
    command_line(main)
