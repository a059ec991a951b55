"""COCO mAP of detector outputs, through pycocotools: the one implementation every script uses.

    logits (B, Q, C), pred_boxes (B, Q, 4) normalised cx,cy,w,h
      -> post-processing of the detector's family (its adapter's ``post_process``; RT-DETR's by default:
         sigmoid scores, top-k over queries x classes), boxes scaled to each image's original size
         (the model saw a plain resize, so normalised coordinates are the same in both)
      -> COCO results: absolute x,y,w,h in original pixels, dataset category ids
      -> COCOeval: AP, AP50, AP75, APs, APm, APl (and per-class AP on request)
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from utils.models.detector_adapters import MAX_DETECTIONS, cxcywh_to_xyxy, sigmoid_top_k  # noqa: F401

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")

# RT-DETR's post-processing (as ``RTDetrImageProcessor.post_process_object_detection`` with focal loss);
# every family's is its adapter's ``post_process`` (utils/models/detector_adapters.py).
post_process = sigmoid_top_k


def to_coco_results(
    detections: Sequence[Mapping[str, torch.Tensor]],
    image_ids: Sequence[int],
    label_to_category_id: Mapping[int, int],
    placeholder_labels: Iterable[int] = (),
) -> list[dict]:
    """Post-processed detections -> COCO result entries (x, y, w, h boxes, dataset category ids).

    A label with no dataset category (a DETR checkpoint's "N/A" placeholders) cannot be scored and is
    left out; every other label must be in ``label_to_category_id``.
    """
    results = []
    for detection, image_id in zip(detections, image_ids, strict=True):
        boxes = detection["boxes"].detach().cpu().double()
        xywh = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1).tolist()
        for score, label, box in zip(detection["scores"].tolist(), detection["labels"].tolist(), xywh):
            if int(label) in placeholder_labels:
                continue
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

    >>> evaluator = CocoEvaluator(annotation_file, label_to_category_id, model.adapter)
    >>> evaluator.update(outputs.logits, outputs.pred_boxes, image_ids, original_sizes)  # per batch
    >>> evaluator.summarize()  # {"AP": ..., "AP50": ..., ...}

    ``adapter``: the detector family's adapter (its post-processing and placeholder labels); None: RT-DETR's.
    """

    def __init__(self, coco_gt, label_to_category_id: Mapping[int, int], adapter=None,
                 max_detections: int = MAX_DETECTIONS):
        self.coco_gt = load_coco(coco_gt) if isinstance(coco_gt, str) else coco_gt
        self.label_to_category_id = dict(label_to_category_id)
        self.post_process: Callable = post_process if adapter is None else adapter.post_process
        self.placeholder_labels = frozenset() if adapter is None else adapter.placeholder_labels()
        self.max_detections = max_detections
        self.results: list[dict] = []
        self.image_ids: list[int] = []

    def update(self, logits, pred_boxes, image_ids: Sequence[int], original_sizes) -> list[dict]:
        """Add one batch: logits (B, Q, C), pred_boxes (B, Q, 4), B image ids and (B, 2) original sizes."""
        detections = self.post_process(logits, pred_boxes, original_sizes, self.max_detections)
        image_ids = [int(i) for i in image_ids]
        self.results.extend(to_coco_results(detections, image_ids, self.label_to_category_id, self.placeholder_labels))
        self.image_ids.extend(image_ids)
        return detections

    def summarize(self, per_class: bool = False) -> dict:
        return coco_metrics(self.coco_gt, self.results, self.image_ids, per_class=per_class)
