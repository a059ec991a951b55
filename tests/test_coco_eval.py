"""COCO evaluation on hand-made cases whose AP is known, and the resize round trip."""

import json

import pytest
import torch

from utils.runtime.coco_categories import COCO_ID2LABEL
from utils.training.coco_eval import CocoEvaluator, coco_metrics, cxcywh_to_xyxy, post_process, to_coco_results
from utils.runtime.coco_categories import coco_label_maps

# Two images of different sizes; COCO category ids with gaps (1 person, 18 dog, 90 toothbrush).
IMAGES = [{"id": 11, "width": 640, "height": 480, "file_name": "a.jpg"},
          {"id": 12, "width": 500, "height": 375, "file_name": "b.jpg"}]
ANNOTATIONS = [
    {"id": 1, "image_id": 11, "category_id": 1, "bbox": [100.0, 120.0, 100.0, 100.0]},
    {"id": 2, "image_id": 11, "category_id": 90, "bbox": [300.0, 50.0, 200.0, 150.0]},
    {"id": 3, "image_id": 12, "category_id": 18, "bbox": [40.0, 60.0, 120.0, 90.0]},
]


@pytest.fixture()
def annotation_file(tmp_path):
    path = tmp_path / "instances_val.json"
    categories = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 90, "name": "toothbrush"}]
    for annotation in ANNOTATIONS:
        annotation.update(area=annotation["bbox"][2] * annotation["bbox"][3], iscrowd=0)
    path.write_text(json.dumps({"images": IMAGES, "annotations": ANNOTATIONS, "categories": categories}))
    return str(path)


def result(image_id, category_id, bbox, score=0.9):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "score": score}


def test_perfect_detections_score_one(annotation_file):
    results = [result(a["image_id"], a["category_id"], a["bbox"]) for a in ANNOTATIONS]
    metrics = coco_metrics(annotation_file, results, per_class=True)
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(1.0)
    assert metrics["per_class_AP"] == pytest.approx({"person": 1.0, "dog": 1.0, "toothbrush": 1.0})


def test_wrong_class_scores_zero(annotation_file):
    results = [result(a["image_id"], 1 if a["category_id"] != 1 else 18, a["bbox"]) for a in ANNOTATIONS]
    assert coco_metrics(annotation_file, results)["AP"] == pytest.approx(0.0)
    assert coco_metrics(annotation_file, [])["AP"] == 0.0


def test_shifted_box_scores_its_iou_thresholds(annotation_file):
    # One 100x100 box shifted 23 px sideways: IoU = 77 / 123 = 0.626, so it matches at IoU 0.50, 0.55
    # and 0.60 but not at 0.65..0.95: AP = 3/10, AP50 = 1, AP75 = 0.
    x, y, w, h = ANNOTATIONS[0]["bbox"]
    metrics = coco_metrics(annotation_file, [result(11, 1, (x + 23, y, w, h))], image_ids=[11], per_class=True)
    assert metrics["per_class_AP"]["person"] == pytest.approx(0.3)
    only_person = coco_metrics(annotation_file,
                               [result(11, 1, (x + 23, y, w, h)), result(11, 90, ANNOTATIONS[1]["bbox"])],
                               image_ids=[11])
    assert only_person["AP50"] == pytest.approx(1.0)
    assert only_person["AP75"] == pytest.approx(0.5)  # person misses at 0.75, toothbrush is perfect
    assert only_person["AP"] == pytest.approx((0.3 + 1.0) / 2)


def test_post_process_matches_rtdetr_top_k_over_queries_and_classes():
    logits = torch.full((1, 3, 4), -10.0)
    logits[0, 0, 2] = 3.0   # query 0 is best as class 2
    logits[0, 0, 1] = 2.0   # ... and second best as class 1 (sigmoid scores every class)
    logits[0, 2, 0] = 1.0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1], [0.25, 0.75, 0.5, 0.5]]])
    (detections,) = post_process(logits, boxes, [(100, 200)], max_detections=3)
    assert detections["labels"].tolist() == [2, 1, 0]
    assert torch.allclose(detections["scores"], torch.sigmoid(torch.tensor([3.0, 2.0, 1.0])))
    assert torch.allclose(detections["boxes"][0], torch.tensor([80.0, 30.0, 120.0, 70.0]))
    assert torch.allclose(detections["boxes"][1], detections["boxes"][0])
    assert torch.allclose(detections["boxes"][2], torch.tensor([0.0, 50.0, 100.0, 100.0]))
    assert post_process(logits, boxes, [(100, 200)])[0]["scores"].shape == (12,)  # K = min(100, Q*C)


def test_round_trip_through_resize_keeps_boxes_and_category_ids(annotation_file):
    """Ground truth -> normalised cx,cy,w,h (what the resized model input uses) -> model-like output
    -> post-processing at the original size -> COCO results equal to the ground truth."""
    category_to_label, label_to_category = coco_label_maps(COCO_ID2LABEL)
    evaluator = CocoEvaluator(annotation_file, label_to_category)
    sizes = {image["id"]: (image["height"], image["width"]) for image in IMAGES}
    num_queries, num_classes = 5, len(COCO_ID2LABEL)
    for image in IMAGES:
        height, width = sizes[image["id"]]
        logits = torch.full((1, num_queries, num_classes), -20.0)
        pred_boxes = torch.full((1, num_queries, 4), 0.5)
        for query, annotation in enumerate(a for a in ANNOTATIONS if a["image_id"] == image["id"]):
            x, y, w, h = annotation["bbox"]
            pred_boxes[0, query] = torch.tensor([(x + w / 2) / width, (y + h / 2) / height, w / width, h / height])
            logits[0, query, category_to_label[annotation["category_id"]]] = 5.0
        evaluator.update(logits, pred_boxes, [image["id"]], [(height, width)])
    top = {(r["image_id"], r["category_id"]): r["bbox"] for r in evaluator.results if r["score"] > 0.5}
    assert set(top) == {(a["image_id"], a["category_id"]) for a in ANNOTATIONS}
    for annotation in ANNOTATIONS:
        assert top[(annotation["image_id"], annotation["category_id"])] == pytest.approx(annotation["bbox"], abs=1e-3)
    assert evaluator.summarize()["AP"] == pytest.approx(1.0)


def test_to_coco_results_converts_xyxy_to_xywh():
    detections = [{"scores": torch.tensor([0.8]), "labels": torch.tensor([79]),
                   "boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0]])}]
    (entry,) = to_coco_results(detections, [5], {79: 90})
    assert entry == {"image_id": 5, "category_id": 90, "bbox": pytest.approx([10.0, 20.0, 20.0, 40.0]),
                     "score": pytest.approx(0.8)}
    assert torch.equal(cxcywh_to_xyxy(torch.tensor([2.0, 3.0, 4.0, 2.0])), torch.tensor([0.0, 2.0, 4.0, 4.0]))
