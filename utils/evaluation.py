"""The three-pipeline comparison behind Eval_SPDNet_Adaptation.py: build, score, tabulate, picture.

Pipelines, all sharing one frozen detector:
    vanilla   image -> RT-DETR
    original  image -> original SPDNet (official weights) -> RT-DETR
    adapted   image -> adapted SPDNet (spdnet_adapted.pt) -> RT-DETR
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from utils.coco_eval import METRIC_NAMES, post_process
from utils.detector import load_detector
from utils.engine import autocast, check_precision, evaluate
from utils.integrated_model import IntegratedModel
from utils.pipelines import build_spdnet, choose_device

PIPELINE_TITLES = {
    "vanilla": "Vanilla RT-DETR",
    "original": "Original SPDNet + RT-DETR",
    "adapted": "Adapted SPDNet + RT-DETR",
}


@dataclass
class Pipelines:
    detector: torch.nn.Module
    original: IntegratedModel  # with derain=False it is the vanilla detector
    adapted: IntegratedModel

    def runs(self):
        """(name, model, derain) for each pipeline, in table order."""
        return [("vanilla", self.original, False), ("original", self.original, True), ("adapted", self.adapted, True)]


def adapted_weights_path(config: dict) -> str:
    return config["ADAPTED_WEIGHTS"] or os.path.join(config["OUTPUT_DIR"], "spdnet_adapted.pt")


def build_three_pipelines(config: dict, device: torch.device) -> Pipelines:
    """The frozen detector, the original SPDNet and the adapted one; every file checked up front."""
    check_precision(config["PRECISION"])
    adapted_path = adapted_weights_path(config)
    if not os.path.isfile(adapted_path):
        raise FileNotFoundError(
            f"adapted SPDNet {adapted_path!r} does not exist: run Training_SPDNet_Adaptation.py first "
            "(with the same OUTPUT_DIR) or set ADAPTED_WEIGHTS"
        )
    detector = load_detector(config["DETECTOR"])
    original = build_spdnet(config["SPDNET_WEIGHTS"], config["SPDNET_N_FEATS"], config["SPDNET_N_RESBLOCKS"])
    adapted = build_spdnet(adapted_path, config["SPDNET_N_FEATS"], config["SPDNET_N_RESBLOCKS"])
    return Pipelines(
        detector=detector,
        original=IntegratedModel(original, detector).to(device).eval(),
        adapted=IntegratedModel(adapted, detector).to(device).eval(),
    )


def build_val_loader(config: dict, id2label: dict, rain_fraction: float):
    """(loader, annotation file, label -> category id) for the validation split, ``rain_fraction`` of
    its images rainy (1: the rainy split, 0: the clean one, in between: a seeded mix)."""
    from utils.data import build_dataset, collate_fn, loader_settings

    dataset = build_dataset(
        config["COCO_DIR"], config["COCO_RAIN_DIR"], "val", id2label, image_size=config["IMAGE_SIZE"], train=False,
        percent=config["VAL_PERCENT"], coco_ratio=1.0 - rain_fraction, rain_ratio=rain_fraction, seed=config["SEED"],
    )
    loader = DataLoader(
        dataset, batch_size=config["BATCH_SIZE"], shuffle=False, collate_fn=collate_fn,
        **loader_settings(config["DATALOADER_WORKERS"], choose_device(config["DEVICE"])),
    )
    return loader, dataset.annotation_file, dataset.label_to_category_id


def score_pipelines(pipelines: Pipelines, loader, annotation_file, label_to_category_id, config, device, split: str) -> dict:
    """{pipeline: {AP, AP50, AP75, APs, APm, APl, ms_per_image, images}} on one split."""
    return {
        name: evaluate(
            model, loader, annotation_file, label_to_category_id, device=device, precision=config["PRECISION"],
            derain=derain, description=f"{split}: {name}",
        )
        for name, model, derain in pipelines.runs()
    }


def comparison_table(results: dict, split: str) -> str:
    """The plan's three lines (mAP and change against vanilla), then every metric and the speed."""
    vanilla = results["vanilla"]["AP"]
    lines = [f"\n{split} validation ({results['vanilla']['images']} images)"]
    # The plan's wording: "Vanilla RT-DETR mAP:", then the other two with their change against it.
    for name in ("vanilla", "original", "adapted"):
        ap = results[name]["AP"]
        label = PIPELINE_TITLES[name] + (" mAP:" if name == "vanilla" else ":")
        change = "" if name == "vanilla" else f"  ({100 * (ap - vanilla) / vanilla:+.1f}%)" if vanilla > 0 else "  (n/a)"
        lines.append(f"{label:<28}{ap:.4f}{change}")
    header = f"{'pipeline':<28}" + "".join(f"{m:>8}" for m in METRIC_NAMES) + f"{'ms/img':>9}"
    lines += ["", header, "-" * len(header)]
    for name in ("vanilla", "original", "adapted"):
        row = results[name]
        lines.append(
            f"{PIPELINE_TITLES[name]:<28}" + "".join(f"{row[m]:>8.4f}" for m in METRIC_NAMES) + f"{row['ms_per_image']:>9.1f}"
        )
    return "\n".join(lines)


def write_results(results: dict, output_dir: str, name: str) -> str:
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, name)
    temporary = path + ".tmp"
    with open(temporary, "w") as file:
        json.dump(results, file, indent=2)
    os.replace(temporary, path)
    print(f"wrote {path}")
    return path


@torch.inference_mode()
def save_comparison_pictures(pipelines: Pipelines, results: dict, config: dict, device: torch.device) -> list[str]:
    """eval_bars.png (metrics per pipeline) and eval_examples.png (rainy input | original | adapted)."""
    from utils.visualize import draw_detections, save_grid, save_metric_bars

    output_dir = config["OUTPUT_DIR"]
    bars = save_metric_bars(
        {split: {PIPELINE_TITLES[n]: v for n, v in split_results.items()} for split, split_results in results.items()},
        ["AP", "AP50", "AP75"], os.path.join(output_dir, "eval_bars.png"),
    )
    loader, _, _ = build_val_loader(dict(config, DATALOADER_WORKERS=0), pipelines.detector.config.id2label, 1.0)
    id2label = pipelines.detector.config.id2label
    rows = []
    for batch in loader:
        if batch is None:  # every image of the batch was unreadable
            continue
        images, _ = batch
        images = images.to(device)
        size = [images.shape[-2:]] * len(images)
        with autocast(device, config["PRECISION"]):
            columns = [
                pipelines.original(images, derain=False),
                pipelines.original(images, derain=True),
                pipelines.adapted(images, derain=True),
            ]
        detections = [post_process(out.logits, out.pred_boxes, size) for out in columns]
        for index in range(len(images)):
            rows.append([
                draw_detections(columns[c].derained[index], detections[c][index], id2label) for c in range(3)
            ])
            if len(rows) == config["NUM_EXAMPLES"]:
                break
        if len(rows) == config["NUM_EXAMPLES"]:
            break
    grid = save_grid(
        rows, ["rainy input -> RT-DETR", "original SPDNet -> RT-DETR", "adapted SPDNet -> RT-DETR"],
        os.path.join(output_dir, "eval_examples.png"),
    )
    print(f"wrote {bars} and {grid}")
    return [bars, grid]
