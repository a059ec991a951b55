"""Eval_conditional.py's pieces (the gated model is built by utils/apps/pipelines.py): choose the splits
(held-out rain included), score its routes (hard and soft routing), check the clean guarantee, tabulate."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from utils.training.coco_eval import METRIC_NAMES, CocoEvaluator
from utils.models.conditional import ConditionalModel
from utils.data.coco import non_empty, rain_variant_dirs
from utils.runtime.device import autocast
from utils.runtime.errors import DataError, MissingFileError, SettingError
from utils.runtime.memory import in_parts
from utils.apps.evaluation import build_val_loader
from utils.data.rain import FAMILIES, split_by_family
from utils.training.engine import detector_targets
from utils.training.gate_metrics import classification_metrics
from utils.training.utility import path_losses, utility_targets
from tqdm import tqdm

# Result rows: name -> (route, routing). "gate" is the hard-routed conditional model, "soft" the soft one.
ROWS = {"gate": ("gate", "hard"), "soft": ("gate", "soft"), "always": ("always", "hard"), "never": ("never", "hard")}
ROUTE_TITLES = {
    "gate": "conditional (gated)", "soft": "conditional (soft)", "always": "always derain",
    "never": "never derain (vanilla)",
}


def validation_splits(config: dict) -> dict[str, tuple[float, object]]:
    """split -> (fraction of rainy images, the COCO_RAIN_DIR its rainy images come from).

    clean, rainy and mixed always; with HOLDOUT_FAMILY or HOLDOUT_RAIN_DIR also heldout (every image
    in the rain the gate never saw) and heldout_mixed (MIXED_RAIN_FRACTION of them, the rest clean:
    the gate's precision there counts its false alarms on clean images too). HOLDOUT_FAMILY's
    variants of COCO_RAIN_DIR leave rainy and mixed and, without HOLDOUT_RAIN_DIR, make the held-out splits.
    """
    family, held_out = config["HOLDOUT_FAMILY"], config["HOLDOUT_RAIN_DIR"]
    if family is not None and family not in FAMILIES:
        raise SettingError(f"HOLDOUT_FAMILY must be one of {FAMILIES} or None, got {family!r}")
    if held_out is not None and not os.path.isdir(held_out):
        raise MissingFileError(f"HOLDOUT_RAIN_DIR: {held_out!r} does not exist")
    seen = config["COCO_RAIN_DIR"]
    if family is not None:
        seen, of_family = split_by_family(rain_variant_dirs(config["COCO_RAIN_DIR"], "val"), family)
        if not seen:
            raise DataError(f"HOLDOUT_FAMILY={family!r} leaves no rain variant of "
                            f"COCO_RAIN_DIR={config['COCO_RAIN_DIR']!r} for the rainy split")
        if held_out is None and not of_family:
            raise DataError(f"HOLDOUT_FAMILY={family!r}: COCO_RAIN_DIR={config['COCO_RAIN_DIR']!r} has no variant "
                            "of it; set HOLDOUT_RAIN_DIR")
        held_out = held_out or of_family
    mixed = config["MIXED_RAIN_FRACTION"]
    splits = {"clean": (0.0, seen), "rainy": (1.0, seen), "mixed": (mixed, seen)}
    if held_out is not None:
        splits.update(heldout=(1.0, held_out), heldout_mixed=(mixed, held_out))
    return splits


def build_split_loader(config: dict, model: ConditionalModel, rain_fraction: float, coco_rain_dir):
    """(loader, annotation file, label -> category id) for validation with ``rain_fraction`` of the
    images rainy, from ``coco_rain_dir``."""
    return build_val_loader(dict(config, COCO_RAIN_DIR=coco_rain_dir), model.integrated.detector.config.id2label,
                            rain_fraction)


@dataclass
class RouteTally:
    """What ``score_routes`` gathers over one split's batches, row by row of ``ROWS``."""

    evaluators: dict[str, CocoEvaluator]  # row -> its COCO evaluator
    seconds: dict[str, dict[str, float]]  # row -> seconds in the gate, the rainy path and the clean path
    probabilities: list[torch.Tensor] = field(default_factory=list)  # per batch, (B,): the gate's rain probability
    actual: list[torch.Tensor] = field(default_factory=list)  # per batch, (B,) bool: the image is rainy
    gated_rainy: list[torch.Tensor] = field(default_factory=list)  # per batch, (B,) bool: gated to the rainy path
    blends: list[torch.Tensor] = field(default_factory=list)  # per batch, (B,): soft routing's blend (SOFT_ROUTING)
    oracle: list[torch.Tensor] = field(default_factory=list)  # per batch, (B,) bool: SPDNet's path has the lower
    #   detector loss (ORACLE_REPORT)
    oracle_router: CocoEvaluator | None = None  # ORACLE_REPORT: each image scored on the oracle's path
    clean_checked: int = 0  # images gated clean
    clean_mismatches: int = 0  # of those, the ones a gated routing gave another output than the frozen detector's
    max_deviation_from_full_batch: float = 0.0  # largest |logit| difference, vanilla on the full batch vs gated


@torch.inference_mode()
def score_routes(model: ConditionalModel, loader, annotation_file, label_to_category_id, config, device, split) -> dict:
    """mAP of each route (soft routing too with SOFT_ROUTING), the gate's confusion, ms per image per
    path, and the clean-path guarantee of every gated routing."""
    rows = [row for row in ROWS if row != "soft" or config["SOFT_ROUTING"]]
    tally = RouteTally(
        evaluators={row: CocoEvaluator(annotation_file, label_to_category_id, model.integrated.adapter)
                    for row in rows},
        seconds={row: {"gate": 0.0, "rainy_path": 0.0, "clean_path": 0.0} for row in rows},
        oracle_router=(CocoEvaluator(annotation_file, label_to_category_id, model.integrated.adapter)
                       if config.get("ORACLE_REPORT") else None),
    )
    parts = 1  # out of memory: the batches are split (in_parts)
    for images, targets in non_empty(tqdm(loader, desc=f"{split} val", dynamic_ncols=True, leave=False)):
        parts = in_parts(lambda part, part_targets: score_batch(model, part, part_targets, rows, tally, config, device),
                         images.to(device, non_blocking=True), targets, parts, device, f"{split} val")
    if tally.clean_mismatches:
        raise RuntimeError(f"{split}: {tally.clean_mismatches} of {tally.clean_checked} images gated clean did not get "
                           "the frozen detector's exact output")
    return route_results(model, rows, tally)


def score_batch(model: ConditionalModel, images: torch.Tensor, targets, rows: list[str], tally: RouteTally, config,
                device) -> None:
    """Run one batch ((B, 3, H, W) images and their targets) through every row's route into ``tally``,
    checking the clean guarantee on it. Every model runs before ``tally`` changes (``in_parts``)."""
    images = images.to(device, non_blocking=True)
    image_ids = [int(t["image_id"]) for t in targets]
    sizes = torch.stack([torch.as_tensor(t["orig_size"]) for t in targets])
    with autocast(device, config["PRECISION"]):
        outputs = {row: model(images, route=ROWS[row][0], routing=ROWS[row][1]) for row in rows}
        clean = (~outputs["gate"].derained).nonzero().squeeze(1)
        direct = model.integrated.detect(images[clean]) if len(clean) else None
        losses = (path_losses(model.integrated, images, detector_targets(targets, device))
                  if config.get("ORACLE_REPORT") else None)
        for row in rows:
            for key, value in outputs[row].seconds.items():
                tally.seconds[row][key] += value
            tally.evaluators[row].update(outputs[row].logits, outputs[row].pred_boxes, image_ids, sizes)
        check_clean_guarantee(clean, direct, outputs, [row for row in rows if ROWS[row][0] == "gate"], tally)
        if losses is not None:
            score_oracle(losses, image_ids, sizes, outputs, tally)
    tally.probabilities.append(outputs["gate"].rain_probability.cpu())
    tally.gated_rainy.append(outputs["gate"].derained.cpu())
    if "soft" in outputs:
        tally.blends.append(outputs["soft"].blend.cpu())
    tally.actual.append(torch.tensor([bool(t["is_rainy"]) for t in targets]))


def score_oracle(losses: tuple[torch.Tensor, torch.Tensor], image_ids: list[int], sizes: torch.Tensor,
                 outputs: dict, tally: RouteTally) -> None:
    """ORACLE_REPORT: per image of the batch, the path with the lower detector loss (``losses``: the
    (B,) losses without and with SPDNet; SPDNet's when L(x) - L(SPDNet(x)) > 0), kept for the gate's
    agreement and scored as the oracle router (with the batch's image ids and (B, 2) original sizes,
    as every row is)."""
    derain = utility_targets(*losses, 0.0).bool()
    tally.oracle.append(derain.cpu())
    pick = derain.view(-1, 1, 1)
    always, never = outputs["always"], outputs["never"]
    tally.oracle_router.update(torch.where(pick, always.logits, never.logits),
                               torch.where(pick, always.pred_boxes, never.pred_boxes), image_ids, sizes)


def check_clean_guarantee(clean: torch.Tensor, direct, outputs: dict, gated: list[str], tally: RouteTally) -> None:
    """The guarantee: an image gated clean gets exactly the frozen detector's output, whatever the
    routing. ``clean``: the indices of the batch's images gated clean, ``direct``: the frozen
    detector's output on them alone. Counts into ``tally`` those images, those a ``gated`` row's
    output differs on, and how far the full-batch vanilla logits stray from the gated ones."""
    if len(clean):
        same = all(
            torch.equal(direct.logits, outputs[row].logits[clean])
            and torch.equal(direct.pred_boxes, outputs[row].pred_boxes[clean])
            for row in gated
        )
        tally.clean_checked += len(clean)
        tally.clean_mismatches += 0 if same else len(clean)
        deviation = (outputs["never"].logits[clean] - outputs["gate"].logits[clean]).abs().max()
        tally.max_deviation_from_full_batch = max(tally.max_deviation_from_full_batch, float(deviation))


def route_results(model: ConditionalModel, rows: list[str], tally: RouteTally) -> dict:
    """``score_routes``' result from a split's ``tally``: each row's COCO metrics and ms per image, the
    gate's routing counts, the rain detector's classification metrics, speed and the clean guarantee."""
    probability, is_rainy, routed = (torch.cat(tally.probabilities), torch.cat(tally.actual),
                                     torch.cat(tally.gated_rainy))
    seconds, images_total = tally.seconds, len(probability)
    n_rainy_path, n_clean_path = int(routed.sum()), int((~routed).sum())
    result = {row: tally.evaluators[row].summarize() for row in rows}
    for row in rows:
        result[row]["ms_per_image"] = 1000 * sum(seconds[row].values()) / images_total
    if "soft" in rows:
        blend = torch.cat(tally.blends)[routed]
        result["soft"]["mean_blend_of_gated_rainy"] = float(blend.mean()) if len(blend) else None
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
    if tally.oracle:
        result["oracle"] = dict(oracle_agreement(routed, torch.cat(tally.oracle)),
                                router=tally.oracle_router.summarize())
    result["clean_guarantee"] = {
        "images_gated_clean": tally.clean_checked,
        "identical_to_detector": tally.clean_checked - tally.clean_mismatches,
        "max_logit_difference_vs_full_batch_vanilla": tally.max_deviation_from_full_batch,
    }
    return result


def oracle_agreement(routed: torch.Tensor, oracle: torch.Tensor) -> dict:
    """(N,) bool gate decisions against the (N,) bool oracle (per image, SPDNet's path has the lower
    detector loss): how often they agree, and precision / recall of "derain"."""
    metrics = classification_metrics(routed.float(), oracle, 0.5)
    return {"agreement": metrics["accuracy"], "precision": metrics["precision"], "recall": metrics["recall"],
            "oracle_derains": int(oracle.sum()), "gate_derains": int(routed.sum()), "images": len(oracle)}


def conditional_table(results: dict) -> str:
    width = max(7, *(len(split) + 1 for split in results))
    header = f"{'split':<{width}}{'route':<26}" + "".join(f"{m:>8}" for m in METRIC_NAMES) + f"{'ms/img':>9}"
    lines = ["", header, "-" * len(header)]
    for split, result in results.items():
        for name in (row for row in ROWS if row in result):
            row = result[name]
            lines.append(f"{split:<{width}}{ROUTE_TITLES[name]:<26}" + "".join(f"{row[m]:>8.4f}" for m in METRIC_NAMES)
                         + f"{row['ms_per_image']:>9.1f}")
        gate, speed, guarantee = result["rain_detector"], result["speed"], result["clean_guarantee"]
        confusion = gate["confusion"]
        lines.append(
            f"{'':<{width}}gate: accuracy {gate['accuracy']:.3f}, precision(rainy) {gate['precision']:.3f}, "
            f"recall(rainy) {gate['recall']:.3f}; rainy->rainy {confusion['rainy_as_rainy']}, "
            f"clean->rainy {confusion['clean_as_rainy']}, "
            f"rainy->clean {confusion['rainy_as_clean']}, clean->clean {confusion['clean_as_clean']}"
        )
        speedup = speed["clean_path_speedup"]
        lines.append(
            f"{'':<{width}}paths: rainy {speed['rainy_path_ms_per_image']:.1f} ms/img, "
            f"clean {speed['clean_path_ms_per_image']:.1f} ms/img"
            + (f" ({speedup:.1f}x faster)" if speedup else "")
            + f", gate {speed['gate_ms_per_image']:.1f} ms/img; {guarantee['identical_to_detector']}/"
            f"{guarantee['images_gated_clean']} clean-gated images identical to the frozen detector"
            + (" (hard and soft routing)" if "soft" in result else "")
        )
        if "oracle" in result:
            oracle = result["oracle"]
            lines.append(f"{'':<{width}}oracle (the path with the lower detector loss): the gate agrees on "
                         f"{oracle['agreement']:.3f} of {oracle['images']} images; derains {oracle['gate_derains']}, "
                         f"the oracle {oracle['oracle_derains']} (precision {oracle['precision']:.3f}, "
                         f"recall {oracle['recall']:.3f})")
            router = oracle["router"]
            lines.append(f"{'':<{width}}oracle router (each image on the oracle's path): AP {router['AP']:.4f}, "
                         f"AP50 {router['AP50']:.4f}")
    return "\n".join(lines)


def routing_table(results: dict) -> str:
    """Hard against soft routing of the conditional model, split by split (SOFT_ROUTING)."""
    width = max(7, *(len(split) + 1 for split in results))
    header = (f"{'split':<{width}}"
              + "".join(f"{title:>10}" for title in ("hard AP", "soft AP", "soft-hard", "hard AP50", "soft AP50"))
              + f"{'gated rainy':>13}{'mean g':>8}")
    lines = ["", "hard vs soft routing (same gate decisions; soft blends g * SPDNet(x) + (1 - g) * x)", header,
             "-" * len(header)]
    for split, result in results.items():
        hard, soft = result["gate"], result["soft"]
        blend = soft["mean_blend_of_gated_rainy"]
        lines.append(
            f"{split:<{width}}{hard['AP']:>10.4f}{soft['AP']:>10.4f}{soft['AP'] - hard['AP']:>+10.4f}"
            f"{hard['AP50']:>10.4f}{soft['AP50']:>10.4f}"
            f"{result['gate']['routed_rainy']:>13}" + (f"{blend:>8.3f}" if blend is not None else f"{'-':>8}")
        )
    return "\n".join(lines)
