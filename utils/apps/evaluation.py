"""The three-pipeline comparison behind Eval_SPDNet_Adaptation.py: score, tabulate, picture
(utils/apps/pipelines.py builds the pipelines, all sharing one frozen detector, RT-DETR or another
family of utils/models/detector_adapters.py):
    vanilla   image -> RT-DETR
    original  image -> original SPDNet (official weights) -> RT-DETR
    adapted   image -> adapted SPDNet (spdnet_adapted.pt) -> RT-DETR
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from utils.data.coco import build_dataset, collate_fn, loader_settings, non_empty
from utils.runtime.checkpoint import atomic_write_json
from utils.training.coco_eval import METRIC_NAMES, cxcywh_to_xyxy
from utils.training.engine import evaluate
from utils.runtime.device import autocast
from utils.runtime.memory import in_parts
from utils.training.image_quality import psnr, ssim
from utils.apps.pipelines import Pipelines
from utils.apps.visualize import draw_detections, save_grid, save_metric_bars
from utils.runtime.device import choose_device

PIPELINE_TITLES = {  # {detector}: the detector family's title (its adapter's: "RT-DETR", "D-FINE", ...)
    "vanilla": "Vanilla {detector}",
    "original": "Original SPDNet + {detector}",
    "adapted": "Adapted SPDNet + {detector}",
}


def pipeline_titles(detector: str) -> dict[str, str]:
    """Each pipeline's name in tables and pictures, with the detector family's title."""
    return {name: title.format(detector=detector) for name, title in PIPELINE_TITLES.items()}


def build_val_loader(config: dict, id2label: dict, rain_fraction: float):
    """(loader, annotation file, label -> category id) for the validation split, ``rain_fraction`` of
    its images rainy (1: the rainy split, 0: the clean one, in between: a seeded mix)."""
    dataset = build_dataset(
        config["COCO_DIR"], config["COCO_RAIN_DIR"], "val", id2label, image_size=config["IMAGE_SIZE"], train=False,
        percent=config["VAL_PERCENT"], coco_ratio=1.0 - rain_fraction, rain_ratio=rain_fraction, seed=config["SEED"],
    )
    loader = DataLoader(
        dataset, batch_size=config["BATCH_SIZE"], shuffle=False, collate_fn=collate_fn,
        **loader_settings(config["DATALOADER_WORKERS"], choose_device(config["DEVICE"])),
    )
    return loader, dataset.annotation_file, dataset.label_to_category_id


def score_pipelines(pipelines: Pipelines, loader, annotation_file, label_to_category_id, config, device,
                    split: str, detections_dir: str | None = None) -> dict:
    """{pipeline: {AP, AP50, AP75, APs, APm, APl, ms_per_image, images}} on one split; with
    ``detections_dir``, each pipeline's scored detections written there as ``<pipeline>.json``
    (COCO results format: image_id, dataset category_id, bbox x,y,w,h in original pixels, score)."""
    results = {}
    for name, model, derain in pipelines.runs():
        detections = []
        results[name] = evaluate(
            model, loader, annotation_file, label_to_category_id, device=device, precision=config["PRECISION"],
            derain=derain, description=f"{split}: {name}", detections=detections,
        )
        if detections_dir is not None:
            atomic_write_json(os.path.join(detections_dir, f"{name}.json"), detections, indent=None)
    return results


@torch.no_grad()
def image_quality(spdnets: dict, coco_dir: str, coco_rain_dir: str, image_size: int, device: torch.device,
                  percent: float = 100, seed: int = 0) -> dict:
    """Per-image mean PSNR (dB) and SSIM against the clean originals (COCO_DIR, same file names) on
    the rainy val split: ``{"rainy": {"psnr_db", "ssim"}}`` for the input itself and one entry per
    SPDNet of ``spdnets`` ({name: SPDNet}), its output clamped to 0-1 as every pipeline feeds it on."""
    dataset = build_dataset(coco_dir, coco_rain_dir, "val", None, image_size=image_size, percent=percent,
                            coco_ratio=0.0, rain_ratio=1.0, seed=seed, return_clean_pair=True)
    loader = DataLoader(dataset, batch_size=16, collate_fn=collate_fn)
    models = {name: spdnet.to(device).eval() for name, spdnet in spdnets.items()}
    names = ["rainy", *models]
    sums = {name: {"psnr_db": 0.0, "ssim": 0.0} for name in names}
    count, parts = 0, 1

    def measure(images, targets) -> None:
        nonlocal count
        clean = torch.stack([t["clean_image"] for t in targets]).to(device)
        pictures = {name: images if name == "rainy" else models[name](images * 255.0)[0] / 255.0 for name in names}
        for name, picture in pictures.items():
            sums[name]["psnr_db"] += psnr(picture, clean).sum().item()
            sums[name]["ssim"] += ssim(picture, clean).sum().item()
        count += len(images)

    for images, targets in non_empty(tqdm(loader, desc="rainy val: PSNR / SSIM", dynamic_ncols=True, leave=False)):
        parts = in_parts(measure, images.to(device), targets, parts, device, "rainy val: PSNR / SSIM")
    return {name: {metric: round(total / max(count, 1), 4) for metric, total in sums[name].items()} for name in names}


def quality_line(quality: dict) -> str:
    """One line: PSNR / SSIM of the rainy input and of each SPDNet's output."""
    titles = {"rainy": "rainy input", "original": "original SPDNet", "adapted": "adapted SPDNet"}
    return "image quality against the clean originals: " + "; ".join(
        f"{titles.get(name, name)} {value['psnr_db']:.2f} dB, SSIM {value['ssim']:.3f}"
        for name, value in quality.items()
    )


def comparison_table(results: dict, split: str, detector: str = "RT-DETR") -> str:
    """Three headline lines (each pipeline's mAP, the two SPDNet ones with their change against vanilla),
    then every metric and the speed; ``detector``: the family's title."""
    titles = pipeline_titles(detector)
    width = max(28, max(len(title) for title in titles.values()) + 3)
    vanilla = results["vanilla"]["AP"]
    lines = [f"\n{split} validation ({results['vanilla']['images']} images)"]
    # "Vanilla <detector> mAP:" first, then the other two with their change against it.
    for name in ("vanilla", "original", "adapted"):
        ap = results[name]["AP"]
        label = titles[name] + (" mAP:" if name == "vanilla" else ":")
        change = (
            "" if name == "vanilla" else f"  ({100 * (ap - vanilla) / vanilla:+.1f}%)" if vanilla > 0 else "  (n/a)"
        )
        lines.append(f"{label:<{width}}{ap:.4f}{change}")
    header = f"{'pipeline':<{width}}" + "".join(f"{m:>8}" for m in METRIC_NAMES) + f"{'ms/img':>9}"
    lines += ["", header, "-" * len(header)]
    for name in ("vanilla", "original", "adapted"):
        row = results[name]
        lines.append(
            f"{titles[name]:<{width}}" + "".join(f"{row[m]:>8.4f}" for m in METRIC_NAMES)
            + f"{row['ms_per_image']:>9.1f}"
        )
    return "\n".join(lines)


@torch.inference_mode()
def save_comparison_pictures(pipelines: Pipelines, results: dict, config: dict, device: torch.device) -> list[str]:
    """eval_bars.png (metrics per pipeline) and eval_examples.png (rainy input | original | adapted):
    ground-truth boxes in green, each pipeline's best detections in yellow with their scores."""
    output_dir, detector = config["OUTPUT_DIR"], pipelines.original.adapter.title
    titles = pipeline_titles(detector)
    bars = save_metric_bars(
        {split: {titles[n]: v for n, v in results[split].items()}
         for split in ("rainy", "clean") if split in results},
        ["AP", "AP50", "AP75"], os.path.join(output_dir, "eval_bars.png"),
    )
    loader, _, _ = build_val_loader(dict(config, DATALOADER_WORKERS=0), pipelines.detector.config.id2label, 1.0)
    id2label = pipelines.detector.config.id2label
    rows, parts = [], 1

    def draw(images, targets) -> None:
        size = [images.shape[-2:]] * len(images)
        with autocast(device, config["PRECISION"]):
            columns = [
                pipelines.original(images, derain=False),
                pipelines.original(images, derain=True),
                pipelines.adapted(images, derain=True),
            ]
        post_process = pipelines.original.adapter.post_process
        detections = [post_process(out.logits, out.pred_boxes, size) for out in columns]
        for index, target in enumerate(targets[:config["NUM_EXAMPLES"] - len(rows)]):
            # The boxes are normalised (cx, cy, w, h) of the resized image the pipelines saw.
            truth = cxcywh_to_xyxy(target["boxes"]) * images.shape[-1]
            top_k = max(1, len(truth))  # as many guesses as there are objects, whatever their scores
            rows.append([
                draw_detections(columns[c].derained[index], detections[c][index], id2label, top_k=top_k,
                                ground_truth=truth)
                for c in range(3)
            ])

    for images, targets in non_empty(loader):
        parts = in_parts(draw, images.to(device), targets, parts, device, "example pictures")
        if len(rows) >= config["NUM_EXAMPLES"]:
            break
    grid = save_grid(
        rows, [f"rainy input -> {detector}", f"original SPDNet -> {detector}", f"adapted SPDNet -> {detector}"],
        os.path.join(output_dir, "eval_examples.png"),
        caption="green: ground truth; yellow: each pipeline's best detections (as many as there are objects) "
                "and scores",
    )
    print(f"wrote {bars} and {grid}")
    return [bars, grid]
