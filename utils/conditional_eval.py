"""Eval_conditional.py's pieces: build the gated model, score its routes, check the clean guarantee."""

from __future__ import annotations

import os

import torch

from utils.checkpoint import load_checkpoint
from utils.coco_eval import METRIC_NAMES, CocoEvaluator
from utils.conditional import ConditionalModel
from utils.detector import load_detector
from utils.engine import autocast, check_precision
from utils.evaluation import build_val_loader
from utils.integrated_model import IntegratedModel
from utils.pipelines import build_spdnet
from utils.rain_detector import classification_metrics, load_rain_detector
from tqdm import tqdm

ROUTES = ("gate", "always", "never")
ROUTE_TITLES = {"gate": "conditional (gated)", "always": "always derain", "never": "never derain (vanilla)"}


def _weights_path(config: dict, key: str, default_name: str) -> str:
    path = config[key] or os.path.join(config["OUTPUT_DIR"], default_name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key}: {path!r} does not exist")
    return path


def build_conditional_model(config: dict, device: torch.device) -> ConditionalModel:
    """The rain gate, the adapted SPDNet and the frozen detector; files checked before any work."""
    check_precision(config["PRECISION"])
    adapted_path = _weights_path(config, "ADAPTED_WEIGHTS", "spdnet_adapted.pt")
    gate_path = _weights_path(config, "RAIN_DETECTOR_WEIGHTS", "rain_detector.pt")
    detector = load_detector(config["DETECTOR"])
    integrated = IntegratedModel(build_spdnet(adapted_path, config["SPDNET_N_FEATS"], config["SPDNET_N_RESBLOCKS"]), detector)
    recorded = load_checkpoint(adapted_path).get("detector_fingerprint")
    if recorded is not None and recorded != integrated.detector_fingerprint():
        raise RuntimeError(
            f"{adapted_path} was adapted to another detector than DETECTOR={config['DETECTOR']!r} "
            "(fingerprints differ): evaluate with the detector it was trained against"
        )
    return ConditionalModel(load_rain_detector(gate_path), integrated).to(device).eval()


def build_split_loader(config: dict, model: ConditionalModel, split: str):
    """(loader, annotation file, label -> category id) for 'clean', 'rainy' or 'mixed' validation."""
    rain_fraction = {"clean": 0.0, "rainy": 1.0, "mixed": config["MIXED_RAIN_FRACTION"]}[split]
    return build_val_loader(config, model.integrated.detector.config.id2label, rain_fraction)


@torch.inference_mode()
def score_routes(model: ConditionalModel, loader, annotation_file, label_to_category_id, config, device, split) -> dict:
    """mAP of each route, the gate's confusion, ms per image per path, and the clean-path guarantee."""
    evaluators = {route: CocoEvaluator(annotation_file, label_to_category_id) for route in ROUTES}
    seconds = {route: {"gate": 0.0, "rainy_path": 0.0, "clean_path": 0.0} for route in ROUTES}
    probabilities, actual, gated_rainy = [], [], []
    clean_checked, clean_mismatches, max_deviation_from_full_batch = 0, 0, 0.0
    for batch in tqdm(loader, desc=f"{split} val", dynamic_ncols=True, leave=False):
        if batch is None:  # every image of the batch was unreadable
            continue
        images, targets = batch
        images = images.to(device, non_blocking=True)
        image_ids = [int(t["image_id"]) for t in targets]
        sizes = torch.stack([torch.as_tensor(t["orig_size"]) for t in targets])
        outputs = {}
        with autocast(device, config["PRECISION"]):
            for route in ROUTES:
                outputs[route] = model(images, route=route)
                for key, value in outputs[route].seconds.items():
                    seconds[route][key] += value
                evaluators[route].update(outputs[route].logits, outputs[route].pred_boxes, image_ids, sizes)
            # The guarantee: an image gated clean gets exactly the frozen detector's output.
            clean = (~outputs["gate"].derained).nonzero().squeeze(1)
            if len(clean):
                direct = model.integrated.detect(images[clean])
                same = torch.equal(direct.logits, outputs["gate"].logits[clean]) and torch.equal(
                    direct.pred_boxes, outputs["gate"].pred_boxes[clean]
                )
                clean_checked += len(clean)
                clean_mismatches += 0 if same else len(clean)
                deviation = (outputs["never"].logits[clean] - outputs["gate"].logits[clean]).abs().max()
                max_deviation_from_full_batch = max(max_deviation_from_full_batch, float(deviation))
        probabilities.append(outputs["gate"].rain_probability.cpu())
        gated_rainy.append(outputs["gate"].derained.cpu())
        actual.append(torch.tensor([bool(t["is_rainy"]) for t in targets]))
    if clean_mismatches:
        raise RuntimeError(f"{split}: {clean_mismatches} of {clean_checked} images gated clean did not get the frozen detector's exact output")

    probability, is_rainy, routed = torch.cat(probabilities), torch.cat(actual), torch.cat(gated_rainy)
    images_total = len(probability)
    n_rainy_path, n_clean_path = int(routed.sum()), int((~routed).sum())
    result = {route: evaluators[route].summarize() for route in ROUTES}
    for route in ROUTES:
        result[route]["ms_per_image"] = 1000 * sum(seconds[route].values()) / images_total
    rainy_path_ms = 1000 * seconds["always"]["rainy_path"] / images_total
    clean_path_ms = 1000 * seconds["never"]["clean_path"] / images_total
    result["gate"] = dict(
        result["gate"],
        **{
            "images": images_total, "routed_rainy": n_rainy_path, "routed_clean": n_clean_path,
            "gate_ms_per_image": 1000 * seconds["gate"]["gate"] / images_total,
        },
    )
    result["rain_detector"] = classification_metrics(probability, is_rainy, model.rain_detector.threshold)
    result["speed"] = {
        "rainy_path_ms_per_image": rainy_path_ms,
        "clean_path_ms_per_image": clean_path_ms,
        "gate_ms_per_image": result["gate"]["gate_ms_per_image"],
        "clean_path_speedup": rainy_path_ms / clean_path_ms if clean_path_ms else None,
    }
    result["clean_guarantee"] = {
        "images_gated_clean": clean_checked, "identical_to_detector": clean_checked - clean_mismatches,
        "max_logit_difference_vs_full_batch_vanilla": max_deviation_from_full_batch,
    }
    return result


def conditional_table(results: dict) -> str:
    header = f"{'split':<7}{'route':<26}" + "".join(f"{m:>8}" for m in METRIC_NAMES) + f"{'ms/img':>9}"
    lines = ["", header, "-" * len(header)]
    for split, result in results.items():
        for route in ROUTES:
            row = result[route]
            lines.append(f"{split:<7}{ROUTE_TITLES[route]:<26}" + "".join(f"{row[m]:>8.4f}" for m in METRIC_NAMES) + f"{row['ms_per_image']:>9.1f}")
        gate, speed, guarantee = result["rain_detector"], result["speed"], result["clean_guarantee"]
        confusion = gate["confusion"]
        lines.append(
            f"{'':<7}gate: accuracy {gate['accuracy']:.3f}, precision(rainy) {gate['precision']:.3f}, recall(rainy) "
            f"{gate['recall']:.3f}; rainy->rainy {confusion['rainy_as_rainy']}, clean->rainy {confusion['clean_as_rainy']}, "
            f"rainy->clean {confusion['rainy_as_clean']}, clean->clean {confusion['clean_as_clean']}"
        )
        speedup = speed["clean_path_speedup"]
        lines.append(
            f"{'':<7}paths: rainy {speed['rainy_path_ms_per_image']:.1f} ms/img, clean {speed['clean_path_ms_per_image']:.1f} ms/img"
            + (f" ({speedup:.1f}x faster)" if speedup else "")
            + f", gate {speed['gate_ms_per_image']:.1f} ms/img; {guarantee['identical_to_detector']}/"
            f"{guarantee['images_gated_clean']} clean-gated images identical to the frozen detector"
        )
    return "\n".join(lines)
