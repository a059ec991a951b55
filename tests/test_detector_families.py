"""Every supported detector family, on tiny random checkpoints saved with their own image processor.

Per family: (a) the vanilla pipeline's detections are those of the checkpoint's own image processor +
model + post_process_object_detection; (b) SPDNet's gradient through the frozen detector is finite and
non-zero and (c) the detector (fingerprint, every BatchNorm statistic) is bitwise unchanged by training;
(d) COCO evaluation of known predictions equals raw pycocotools on the processor's own post-processing;
(e) the conditional model's clean path is bit-identical to the detector alone; (f) the feature loss
runs; (g) the training script saves and resumes, and the evaluation script writes COCO detections;
(h) on that run's adapted SPDNet and a tiny rain gate, Eval_conditional.py scores the three routes per
split with every clean-gated image the frozen detector's, and Infer.py writes detections inside the images.
An unsupported family is refused in one line.
"""

import contextlib
import io
import json
import os
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from transformers import (AutoImageProcessor, AutoModelForObjectDetection, ConditionalDetrConfig,
                          ConditionalDetrImageProcessor, DetrConfig, DetrImageProcessor, DFineConfig, HGNetV2Config,
                          ResNetConfig, RTDetrImageProcessor, RTDetrResNetConfig, RTDetrV2Config)

import Eval_conditional
import Eval_SPDNet_Adaptation
import Infer
from tests.test_rain_gate import BrightnessGate
from tests.test_training import run, run_failing
from utils.data.synthetic import SHAPES
from utils.models.conditional import ConditionalModel
from utils.models.detector import detector_fingerprint, load_detector, small_rtdetr_config
from utils.models.detector_adapters import DetectorAdapter, UnsupportedDetectorError, adapter_of
from utils.models.integrated_model import IntegratedModel
from utils.models.spdnet import SPDNet
from utils.training.coco_eval import CocoEvaluator
from utils.training.objectives import Objective, adaptation_loss

FAMILIES = ("rt_detr", "rt_detr_v2", "d_fine", "conditional_detr", "detr")
SIZE = 64  # images the tiny detectors see
QUERIES = 10
LABELS = dict(enumerate(SHAPES))
# DETR's COCO heads keep COCO's ids, the gaps named "N/A": the tiny DETR does the same.
DETR_LABELS = dict(enumerate(["N/A", SHAPES[0], SHAPES[1], "N/A", *SHAPES[2:]]))
# How many detections per image each family's own post_process_object_detection keeps by default.
PROCESSOR_KEEPS = {"rt_detr": QUERIES, "rt_detr_v2": QUERIES, "d_fine": QUERIES, "conditional_detr": 100,
                   "detr": QUERIES}


def rtdetr_like(config_class, backbone_config, in_channels, id2label):
    return config_class(
        backbone_config=backbone_config, encoder_in_channels=in_channels, d_model=32, encoder_hidden_dim=32,
        encoder_ffn_dim=64, encoder_attention_heads=2, decoder_ffn_dim=64, decoder_attention_heads=2, decoder_layers=2,
        decoder_in_channels=[32] * 3, hidden_expansion=0.5, num_queries=QUERIES, num_denoising=0, id2label=id2label,
        label2id={name: index for index, name in id2label.items()})


def detr_like(config_class, id2label):
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic",
                            out_features=["stage4"])
    return config_class(
        backbone_config=backbone, d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64,
        decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2, num_queries=QUERIES,
        id2label=id2label, label2id={name: index for index, name in id2label.items() if name != "N/A"})


def tiny_config(family: str):
    """A tiny random configuration of ``family`` (32-wide, one or two layers, 10 queries; no download)."""
    if family == "rt_detr":
        return small_rtdetr_config(LABELS, base_width=8, d_model=32, decoder_layers=1, num_queries=QUERIES,
                                   num_denoising=0)
    if family == "rt_detr_v2":
        backbone = RTDetrResNetConfig(layer_type="basic", depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64],
                                      embedding_size=8, downsample_in_bottleneck=False,
                                      out_features=["stage2", "stage3", "stage4"])
        return rtdetr_like(RTDetrV2Config, backbone, [16, 32, 64], LABELS)
    if family == "d_fine":
        backbone = HGNetV2Config(
            stem_channels=[3, 8, 8], stage_in_channels=[8, 16, 32, 64], stage_mid_channels=[8, 8, 16, 16],
            stage_out_channels=[16, 32, 64, 64], stage_num_blocks=[1, 1, 1, 1], stage_numb_of_layers=[1, 1, 1, 1],
            embedding_size=8, hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1],
            out_features=["stage2", "stage3", "stage4"])
        return rtdetr_like(DFineConfig, backbone, [32, 64, 64], LABELS)
    if family == "conditional_detr":
        return detr_like(ConditionalDetrConfig, LABELS)
    return detr_like(DetrConfig, DETR_LABELS)


PROCESSORS = {"rt_detr": RTDetrImageProcessor, "rt_detr_v2": RTDetrImageProcessor, "d_fine": RTDetrImageProcessor,
              "conditional_detr": ConditionalDetrImageProcessor, "detr": DetrImageProcessor}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{family: a save_pretrained directory holding the tiny model and its family's image processor}."""
    root = tmp_path_factory.mktemp("families")
    directories = {}
    for index, family in enumerate(FAMILIES):
        torch.manual_seed(index)
        directory = root / family
        AutoModelForObjectDetection.from_config(tiny_config(family)).save_pretrained(directory)
        PROCESSORS[family](size={"height": SIZE, "width": SIZE}).save_pretrained(directory)
        directories[family] = str(directory)
    return directories


def real_labels(detector) -> list[int]:
    return [label for label, name in sorted(detector.config.id2label.items()) if name != "N/A"]


def batch(detector, seed: int = 1):
    """Two (3, 64, 64) uint8 images and HF labels in the detector's own label indices."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    first, second, third = real_labels(detector)[:3]
    labels = [
        {"class_labels": torch.tensor([first, third]),
         "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.25], [0.7, 0.6, 0.3, 0.2]])},
        {"class_labels": torch.tensor([second]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]
    return images, labels


def by_score(detection: dict) -> dict:
    order = detection["scores"].argsort(descending=True, stable=True)
    return {key: value[order] for key, value in detection.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_vanilla_detections_are_the_processors_and_models_own(checkpoints, family):
    detector = load_detector(checkpoints[family])
    assert detector.config.model_type == family and adapter_of(detector).family == family
    images, _ = batch(detector)
    original_sizes = [(480, 640), (375, 500)]
    processor = AutoImageProcessor.from_pretrained(checkpoints[family])
    reference = AutoModelForObjectDetection.from_pretrained(checkpoints[family]).eval()
    with torch.no_grad():
        outputs = IntegratedModel(SPDNet(2, 1), detector).eval()(images.float() / 255, derain=False)
        expected = processor.post_process_object_detection(
            reference(**processor(images=list(images), return_tensors="pt")), threshold=0.0,
            target_sizes=original_sizes)
    ours = adapter_of(detector).post_process(outputs.logits, outputs.pred_boxes, original_sizes,
                                             PROCESSOR_KEEPS[family])
    for got, want in zip(ours, map(by_score, expected), strict=True):
        assert torch.equal(got["labels"], want["labels"])
        torch.testing.assert_close(got["scores"], want["scores"], atol=1e-5, rtol=0)
        torch.testing.assert_close(got["boxes"], want["boxes"], atol=1e-4 * 640, rtol=0)


def batch_norm_stats(detector) -> list[torch.Tensor]:
    return [tensor.clone() for module in detector.modules() if hasattr(module, "running_mean")
            for tensor in (module.running_mean, module.running_var)]


@pytest.mark.parametrize("family", FAMILIES)
def test_spdnet_learns_through_the_frozen_detector_which_never_changes(checkpoints, family):
    torch.manual_seed(0)
    model = IntegratedModel(SPDNet(n_feats=8, n_resblocks=1), load_detector(checkpoints[family])).train()
    fingerprint, stats = detector_fingerprint(model.detector), batch_norm_stats(model.detector)
    assert stats and not model.detector.training
    images, labels = batch(model.detector)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    for step in range(3):
        optimizer.zero_grad()
        model(images.float() / 255, labels=labels).loss.backward()
        gradient = model.spdnet.conv_init1.conv.weight.grad
        assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0, step
        optimizer.step()
    assert detector_fingerprint(model.detector) == fingerprint
    assert all(torch.equal(a, b) for a, b in zip(stats, batch_norm_stats(model.detector), strict=True))
    assert all(p.grad is None for p in model.detector.parameters())


CATEGORIES = [{"id": 2 * index + 3, "name": name} for index, name in enumerate(SHAPES)]  # ids 3, 5, 7, ...
IMAGES = [{"id": 1, "width": 640, "height": 480, "file_name": "a.png"},
          {"id": 2, "width": 500, "height": 375, "file_name": "b.png"}]
ANNOTATIONS = [  # x, y, w, h in original pixels
    {"id": 1, "image_id": 1, "category_id": 3, "bbox": [100.0, 120.0, 100.0, 100.0]},
    {"id": 2, "image_id": 1, "category_id": 7, "bbox": [300.0, 50.0, 200.0, 150.0]},
    {"id": 3, "image_id": 2, "category_id": 5, "bbox": [40.0, 60.0, 120.0, 90.0]},
]


@pytest.fixture(scope="module")
def annotation_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("coco") / "instances.json"
    annotations = [dict(a, area=a["bbox"][2] * a["bbox"][3], iscrowd=0) for a in ANNOTATIONS]
    path.write_text(json.dumps({"images": IMAGES, "annotations": annotations, "categories": CATEGORIES}))
    return str(path)


def known_predictions(detector, image: dict, generator):
    """Model-like outputs for one image: a jittered query per ground-truth box with its class scored
    high, the other queries random; logits (1, Q, C) (C+1 with DETR's no-object class)."""
    num_logits = detector.config.num_labels + (detector.config.model_type == "detr")
    logits = torch.randn(1, QUERIES, num_logits, generator=generator) - 2
    boxes = torch.rand(1, QUERIES, 4, generator=generator) * 0.5 + 0.25
    category_to_label, _ = adapter_of(detector).label_maps(CATEGORIES)
    for query, annotation in enumerate(a for a in ANNOTATIONS if a["image_id"] == image["id"]):
        x, y, w, h = annotation["bbox"]
        jitter = 1 + 0.05 * torch.randn(4, generator=generator)
        boxes[0, query] = torch.tensor([(x + w / 2) / image["width"], (y + h / 2) / image["height"],
                                        w / image["width"], h / image["height"]]) * jitter
        logits[0, query, category_to_label[annotation["category_id"]]] = 4.0
    return logits, boxes


def raw_pycocotools(annotation_file, results) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(annotation_file)
        evaluator = COCOeval(truth, truth.loadRes(results), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(value) for value in evaluator.stats[:6]]


@pytest.mark.parametrize("family", FAMILIES)
def test_evaluation_of_known_predictions_equals_raw_pycocotools(checkpoints, annotation_file, family):
    detector = load_detector(checkpoints[family])
    processor = AutoImageProcessor.from_pretrained(checkpoints[family])
    name_to_category = {c["name"]: c["id"] for c in CATEGORIES}
    _, label_to_category = adapter_of(detector).label_maps(CATEGORIES)
    evaluator = CocoEvaluator(annotation_file, label_to_category, adapter_of(detector), PROCESSOR_KEEPS[family])
    generator = torch.Generator().manual_seed(3)
    raw_results = []
    for image in IMAGES:
        logits, boxes = known_predictions(detector, image, generator)
        size = [(image["height"], image["width"])]
        evaluator.update(logits, boxes, [image["id"]], size)
        (own,) = processor.post_process_object_detection(SimpleNamespace(logits=logits, pred_boxes=boxes),
                                                         threshold=0.0, target_sizes=size)
        own = {key: value.tolist() for key, value in own.items()}
        for score, label, (x0, y0, x1, y1) in zip(own["scores"], own["labels"], own["boxes"]):
            name = detector.config.id2label[label]
            if name != "N/A":
                raw_results.append({"image_id": image["id"], "category_id": name_to_category[name],
                                    "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
    ours = evaluator.summarize()
    assert 0.2 < ours["AP"] < 1.0
    assert [ours[key] for key in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == pytest.approx(
        raw_pycocotools(annotation_file, raw_results), abs=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_conditional_clean_path_is_bitwise_the_detector_alone(checkpoints, family):
    torch.manual_seed(0)
    integrated = IntegratedModel(SPDNet(n_feats=8, n_resblocks=1), load_detector(checkpoints[family])).eval()
    model = ConditionalModel(BrightnessGate(), integrated)
    images = torch.rand(4, 3, SIZE, SIZE) * 0.4 + 0.1
    images[[1, 3]] += 0.35  # gated rainy
    output = model(images)
    assert output.derained.tolist() == [False, True, False, True]
    with torch.inference_mode():
        direct = integrated.detector(**adapter_of(integrated.detector).inputs(images[[0, 2]]))
    assert torch.equal(output.logits[[0, 2]], direct.logits)
    assert torch.equal(output.pred_boxes[[0, 2]], direct.pred_boxes)


@pytest.mark.parametrize("family", FAMILIES)
def test_per_image_losses_from_one_batched_forward_equal_one_forward_per_image(checkpoints, family):
    """The utility targets' losses: what IntegratedModel.per_image_losses gives for a batch (one forward
    for the RT-DETR families) equals each image's loss as a batch of one, computed independently
    (the detector's own forward with labels), images with one, two and three boxes mixed."""
    torch.manual_seed(0)
    integrated = IntegratedModel(SPDNet(n_feats=8, n_resblocks=1), load_detector(checkpoints[family])).eval()
    (images, labels), (more_images, more_labels) = batch(integrated.detector, 1), batch(integrated.detector, 2)
    images = torch.cat([images, more_images]).float() / 255.0
    labels = labels + more_labels
    labels[3] = {"class_labels": torch.tensor([real_labels(integrated.detector)[0]] * 3),
                 "boxes": torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.2, 0.3], [0.8, 0.7, 0.2, 0.2]])}
    with torch.no_grad():
        batched = integrated.per_image_losses(images, labels)
        alone = torch.stack([integrated.detector(**adapter_of(integrated.detector).inputs(images[i:i + 1]),
                                                 labels=[labels[i]]).loss for i in range(len(images))])
        whole = integrated.detect(images, labels).loss
    assert batched.shape == (4,) and torch.isfinite(batched).all()
    torch.testing.assert_close(batched, alone.float(), rtol=1e-5, atol=1e-6)
    assert not torch.isclose(batched.mean(), whole)  # the batch's own loss is normalised over its boxes


@pytest.mark.parametrize("family", FAMILIES)
def test_feature_loss_runs_and_matches_the_forwards_encoder_output(checkpoints, family):
    torch.manual_seed(0)
    model = IntegratedModel(SPDNet(n_feats=8, n_resblocks=1), load_detector(checkpoints[family])).train()
    images, labels = batch(model.detector)
    images = images.float() / 255
    clean = (images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    with torch.no_grad():
        alone = model.adapter.encoder_features(model.detector, clean)
        full = model.adapter.output_features(model.adapter.forward(model.detector, clean))
    assert len(alone) == len(full) and all(torch.allclose(a, f, atol=1e-5) for a, f in zip(alone, full))
    for objective in (Objective(0.0, 1.0, 0.0), Objective(1.0, 1.0, 0.0)):
        loss, terms = adaptation_loss(model, images, labels, clean, objective)
        assert torch.isfinite(loss) and terms["feature"] > 0
        loss.backward()
        assert model.spdnet.conv_init1.conv.weight.grad.abs().sum() > 0


def test_a_family_without_encoder_features_is_refused_in_one_line():
    class NoFeatures(DetectorAdapter):
        family, title = "toy_detr", "Toy DETR"

    adapter = NoFeatures(SimpleNamespace(id2label=LABELS))
    with pytest.raises(UnsupportedDetectorError) as error:
        adapter.require_features()
    assert str(error.value) == ("FEATURE_LOSS_WEIGHT: the feature loss has no encoder features for Toy DETR "
                                "(model_type 'toy_detr'): set FEATURE_LOSS_WEIGHT=0")


def test_processor_settings_come_from_the_checkpoint_or_the_familys_defaults(checkpoints, tmp_path):
    rtdetr = adapter_of(load_detector(checkpoints["rt_detr"])).preprocessing
    assert (rtdetr.scale, rtdetr.mean, rtdetr.pixel_mask) == (1.0, None, False)  # plain 0-1, the same tensor
    images = torch.rand(1, 3, SIZE, SIZE)
    assert adapter_of(load_detector(checkpoints["rt_detr"])).inputs(images)["pixel_values"] is images
    detr = adapter_of(load_detector(tiny_config("conditional_detr"))).preprocessing  # no file: the defaults
    assert detr.mean == pytest.approx((0.485, 0.456, 0.406)) and detr.pixel_mask
    directory = tmp_path / "normalised_rtdetr"
    load_detector(tiny_config("rt_detr")).save_pretrained(directory)
    RTDetrImageProcessor(do_normalize=True, image_mean=[0.5] * 3, image_std=[0.25] * 3).save_pretrained(directory)
    inputs = adapter_of(load_detector(str(directory))).inputs(torch.full((1, 3, 32, 32), 0.75))
    assert torch.allclose(inputs["pixel_values"], torch.ones(1, 3, 32, 32)) and "pixel_mask" not in inputs


def unsupported_checkpoint(directory) -> str:
    config = tiny_config("rt_detr").to_dict()
    config["model_type"] = "grounding-dino"
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as file:
        json.dump(config, file)
    return str(directory)


def test_an_unsupported_family_is_refused_at_start_up_in_one_line(tiny_world, tmp_path):
    directory = unsupported_checkpoint(tmp_path / "grounding_dino")
    with pytest.raises(UnsupportedDetectorError, match=r"model_type 'grounding-dino' is not supported"):
        load_detector(directory)
    message = run_failing(tiny_world, tmp_path / "out", f"--DETECTOR={directory}")
    assert message.startswith("error: DETECTOR: model_type 'grounding-dino' is not supported")


# Detection and feature losses, 4 of the 16 training images (2 steps), 2 of the 6 validation images.
SHORT_RUN = ["--FEATURE_LOSS_WEIGHT=1.0", "--NUM_EPOCHS=1", "--CHECKPOINT_EVERY_STEPS=1", "--PERCENT_DATASET=25",
             "--GRADIENT_ACCUMULATION_STEPS=1", "--VAL_PERCENT=34"]


@pytest.fixture(scope="module")
def trained_runs():
    """{family: the output directory of its training test's run}, filled as those tests pass."""
    return {}


@pytest.mark.parametrize("family", FAMILIES)
def test_training_saves_and_resumes_and_evaluation_writes_detections(tiny_world, checkpoints, trained_runs, tmp_path,
                                                                      family, capsys):
    detector = ["--DETECTOR=" + checkpoints[family]]
    first = run(tiny_world, tmp_path, *detector, *SHORT_RUN, "--MAX_STEPS=1")
    assert first["stopped"] and first["state"]["step"] == 1
    resumed = run(tiny_world, tmp_path, *detector, *SHORT_RUN, "--RESUME=True")
    assert not resumed["stopped"] and resumed["state"]["step"] == 2 and resumed["state"]["epoch"] == 1
    saved = torch.load(tmp_path / "spdnet_adapted.pt", weights_only=True)
    assert saved["detector_fingerprint"] == detector_fingerprint(load_detector(checkpoints[family]))
    Eval_SPDNet_Adaptation.main(tiny_world["overrides"] + detector + [
        f"--OUTPUT_DIR={tmp_path}", f"--SPDNET_WEIGHTS={tiny_world['spdnet_weights']}", "--IMAGE_QUALITY=False",
        "--NUM_EXAMPLES=1", "--VAL_PERCENT=34"])
    title = adapter_of(load_detector(checkpoints[family])).title  # the tables name the family
    assert f"Vanilla {title} mAP:" in capsys.readouterr().out
    category_ids = {c["id"] for c in json.load(open(os.path.join(tiny_world["coco_dir"], "annotations",
                                                                 "instances_val2017.json")))["categories"]}
    for pipeline in ("vanilla", "original", "adapted"):
        detections = json.load(open(tmp_path / "detections" / f"{pipeline}.json"))
        assert {d["image_id"] for d in detections} and {d["category_id"] for d in detections} <= category_ids
        assert all(len(d["bbox"]) == 4 and 0 <= d["score"] <= 1 for d in detections)
    trained_runs[family] = tmp_path


@pytest.mark.parametrize("family", FAMILIES)
def test_conditional_evaluation_and_inference_run_on_every_family(tiny_world, checkpoints, trained_runs, tiny_gate,
                                                                   tmp_path, family):
    output = trained_runs.get(family)
    if output is None:  # the training test did not run first (selected alone): a two-step run of its own
        output = tmp_path / "run"
        run(tiny_world, output, "--DETECTOR=" + checkpoints[family], *SHORT_RUN)
    models = [f"--DETECTOR={checkpoints[family]}", f"--OUTPUT_DIR={output}", f"--GATE_WEIGHTS={tiny_gate}"]
    results = Eval_conditional.main([o for o in tiny_world["overrides"] if "SPDNET_N" not in o] + models + [
        "--VAL_PERCENT=34", "--BATCH_SIZE=2"])
    assert json.load(open(output / "conditional_results.json")) == json.loads(json.dumps(results))
    assert set(results) == {"clean", "rainy", "mixed"}
    for split in results.values():
        assert {"gate", "always", "never"} <= set(split)
        assert split["gate"]["routed_rainy"] + split["gate"]["routed_clean"] == 2
        guarantee = split["clean_guarantee"]
        assert guarantee["identical_to_detector"] == guarantee["images_gated_clean"] == split["gate"]["routed_clean"]
    assert sum(split["clean_guarantee"]["images_gated_clean"] for split in results.values()) > 0  # not vacuous
    photos = tmp_path / "photos"
    photos.mkdir()
    val = os.path.join(tiny_world["coco_dir"], "val2017")
    for name in sorted(os.listdir(val))[:2]:
        os.symlink(os.path.join(val, name), photos / name)
    records = Infer.main(models + ["--IMAGE_SIZE=64", "--DEVICE=cpu", f"--INPUT={photos}",
                                   f"--OUTPUT={tmp_path / 'out'}", "--SCORE_THRESHOLD=0.0"])
    written = json.load(open(tmp_path / "out" / "detections.json"))
    assert written == json.loads(json.dumps(records)) and len(written) == 2
    names = set(json.load(open(os.path.join(checkpoints[family], "config.json")))["id2label"].values())
    for record in written:
        width, height = Image.open(record["file"]).size
        assert record["detections"] and record["path"] in ("derained", "direct")
        for detection in record["detections"]:
            x0, y0, x1, y1 = detection["box_xyxy"]
            assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height, detection
            assert detection["label"] in names and 0 <= detection["score"] <= 1
