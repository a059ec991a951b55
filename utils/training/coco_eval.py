"""COCO mAP of detector outputs, through pycocotools: the one implementation every script uses.

    logits (B, Q, C), pred_boxes (B, Q, 4) normalised cx,cy,w,h
      -> post_process: sigmoid scores, top-k over queries x classes (RT-DETR's own post-processing),
         boxes scaled to each image's original size (the model saw a plain resize, so normalised
         coordinates are the same in both)
      -> COCO results: absolute x,y,w,h in original pixels, dataset category ids
      -> COCOeval: AP, AP50, AP75, APs, APm, APl (and per-class AP on request)
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Mapping, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# COCO scores at most 100 detections per image (COCOeval's maxDets).
MAX_DETECTIONS = 100


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) centre x, centre y, width, height -> (..., 4) x0, y0, x1, y1."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def post_process(
    logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    original_sizes: torch.Tensor | Sequence[Sequence[int]],
    max_detections: int = MAX_DETECTIONS,
) -> list[dict[str, torch.Tensor]]:
    """RT-DETR's post-processing (as ``RTDetrImageProcessor.post_process_object_detection`` with focal loss).

    Args:
        logits: (B, Q, C) class logits; each query may score every class (sigmoid, not softmax).
        pred_boxes: (B, Q, 4) normalised (cx, cy, w, h).
        original_sizes: (B, 2) (height, width) of the images before resizing.
        max_detections: detections kept per image, the best over all query x class pairs.

    Returns:
        One dict per image: ``scores`` (K,), ``labels`` (K,) contiguous class indices, ``boxes`` (K, 4)
        absolute (x0, y0, x1, y1) in original-image pixels, sorted by score, K = min(max_detections, Q*C).
    """
    logits, pred_boxes = logits.float(), pred_boxes.float()
    sizes = torch.as_tensor(original_sizes, dtype=torch.float32, device=logits.device).reshape(-1, 2)
    if len(sizes) != len(logits):
        raise ValueError(f"got {len(sizes)} original sizes for a batch of {len(logits)} images")
    height, width = sizes.unbind(1)
    scale = torch.stack((width, height, width, height), dim=1)[:, None, :]
    boxes = cxcywh_to_xyxy(pred_boxes) * scale
    num_classes = logits.shape[-1]
    k = min(max_detections, logits.shape[1] * num_classes)
    scores, flat_index = torch.topk(logits.sigmoid().flatten(1), k, dim=-1)
    labels = flat_index % num_classes
    query_index = flat_index // num_classes
    boxes = boxes.gather(1, query_index.unsqueeze(-1).expand(-1, -1, 4))
    return [{"scores": s, "labels": label, "boxes": b} for s, label, b in zip(scores, labels, boxes)]


def to_coco_results(
    detections: Sequence[Mapping[str, torch.Tensor]],
    image_ids: Sequence[int],
    label_to_category_id: Mapping[int, int],
) -> list[dict]:
    """Post-processed detections -> COCO result entries (x, y, w, h boxes, dataset category ids)."""
    results = []
    for detection, image_id in zip(detections, image_ids, strict=True):
        boxes = detection["boxes"].detach().cpu().double()
        xywh = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1).tolist()
        for score, label, box in zip(detection["scores"].tolist(), detection["labels"].tolist(), xywh):
            results.append(
                {"image_id": int(image_id), "category_id": label_to_category_id[int(label)], "bbox": box,
                 "score": score}
            )
    return results


def load_coco(annotation_file: str):
    """pycocotools' COCO index of an annotation file, quietly."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(annotation_file)


def coco_metrics(coco_gt, results: list[dict], image_ids: Sequence[int] | None = None, per_class: bool = False) -> dict:
    """COCO box mAP of ``results`` against ground truth ``coco_gt`` (a pycocotools COCO or a path).

    Only ``image_ids`` are scored (all of coco_gt's images when None), so a subset can be evaluated.
    Returns AP, AP50, AP75, APs, APm, APl (-1 where COCO has nothing to score, e.g. no small objects)
    and, with ``per_class``, ``per_class_AP``: {category name: AP}.
    """
    if isinstance(coco_gt, str):
        coco_gt = load_coco(coco_gt)
    image_ids = sorted(coco_gt.getImgIds() if image_ids is None else {int(i) for i in image_ids})
    if not results:
        metrics = {name: 0.0 for name in METRIC_NAMES}
        if per_class:
            metrics["per_class_AP"] = {c["name"]: 0.0 for c in coco_gt.loadCats(coco_gt.getCatIds())}
        return metrics
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics = {name: float(value) for name, value in zip(METRIC_NAMES, evaluator.stats[:6])}
    if per_class:
        # precision: (IoU thresholds, recall points, categories, area ranges, max dets); area 'all', 100 dets.
        precision = evaluator.eval["precision"][:, :, :, 0, -1]
        metrics["per_class_AP"] = {}
        for index, category_id in enumerate(evaluator.params.catIds):
            values = precision[:, :, index]
            values = values[values > -1]
            metrics["per_class_AP"][coco_gt.cats[int(category_id)]["name"]] = (
                float(np.mean(values)) if values.size else -1.0
            )
    return metrics


class CocoEvaluator:
    """Collects batches of detector outputs, then scores them all at once.

    >>> evaluator = CocoEvaluator(annotation_file, label_to_category_id)
    >>> evaluator.update(outputs.logits, outputs.pred_boxes, image_ids, original_sizes)  # per batch
    >>> evaluator.summarize()  # {"AP": ..., "AP50": ..., ...}
    """

    def __init__(self, coco_gt, label_to_category_id: Mapping[int, int], max_detections: int = MAX_DETECTIONS):
        self.coco_gt = load_coco(coco_gt) if isinstance(coco_gt, str) else coco_gt
        self.label_to_category_id = dict(label_to_category_id)
        self.max_detections = max_detections
        self.results: list[dict] = []
        self.image_ids: list[int] = []

    def update(self, logits, pred_boxes, image_ids: Sequence[int], original_sizes) -> list[dict]:
        """Add one batch: logits (B, Q, C), pred_boxes (B, Q, 4), B image ids and (B, 2) original sizes."""
        detections = post_process(logits, pred_boxes, original_sizes, self.max_detections)
        image_ids = [int(i) for i in image_ids]
        self.results.extend(to_coco_results(detections, image_ids, self.label_to_category_id))
        self.image_ids.extend(image_ids)
        return detections

    def summarize(self, per_class: bool = False) -> dict:
        return coco_metrics(self.coco_gt, self.results, self.image_ids, per_class=per_class)
