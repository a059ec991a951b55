"""Evaluation scripts end to end on the tiny world, and the conditional model's routing."""

import json
import os

import pytest
import torch

import Eval_conditional
import Eval_SPDNet_Adaptation
import Infer
import Training_Rain_Detector
import Training_SPDNet_Adaptation
from utils.models.conditional import ConditionalModel
from utils.models.rain_gate import RainDetector, load_rain_detector
from utils.training.gate_metrics import choose_threshold, classification_metrics


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory):
    """An adapted SPDNet and a rain detector, trained for a moment, in one output directory."""
    output = tmp_path_factory.mktemp("outputs")
    common = tiny_world["overrides"] + [f"--OUTPUT_DIR={output}"]
    Training_SPDNet_Adaptation.main(common + [
        f"--SPDNET_WEIGHTS={tiny_world['spdnet_weights']}", "--NUM_EPOCHS=1", "--PERCENT_DATASET=100",
        "--EVAL_BEFORE_TRAINING=False", "--GRADIENT_ACCUMULATION_STEPS=2",
    ])
    gate = Training_Rain_Detector.main([
        f"--COCO_DIR={tiny_world['coco_dir']}", f"--COCO_RAIN_DIR={tiny_world['coco_rain_dir']}",
        f"--OUTPUT_DIR={output}", "--GATE_IMAGE_SIZE=64", "--DEVICE=cpu", "--DATALOADER_WORKERS=0",
        "--GATE_PERCENT_DATASET=100", "--GATE_VAL_PERCENT=100",
        "--ARCHITECTURE=small_cnn", "--INPUT_SIZE=64", "--GATE_NUM_EPOCHS=2", "--GATE_BATCH_SIZE=8",
    ])
    # the gated scripts' default gate is the detector-view gate's utility_gate.pt: these tests route with the rain gate
    return {"output": output, "common": common, "gate": gate, "rain_gate": f"--GATE_WEIGHTS={output}/rain_detector.pt"}


def test_three_pipeline_comparison_writes_results_and_pictures(tiny_world, trained, capsys):
    results = Eval_SPDNet_Adaptation.main(trained["common"] + [
        f"--SPDNET_WEIGHTS={tiny_world['spdnet_weights']}", "--EVAL_CLEAN=True", "--BATCH_SIZE=4", "--NUM_EXAMPLES=2",
    ])
    printed = capsys.readouterr().out
    assert ("Vanilla RT-DETR mAP:" in printed and "Original SPDNet + RT-DETR:" in printed
            and "Adapted SPDNet + RT-DETR:" in printed)
    saved = json.loads(open(trained["output"] / "eval_results.json").read())
    assert saved == json.loads(json.dumps(results))
    assert set(saved) == {"rainy", "clean", "rainy_image_quality"}
    assert "image quality against the clean originals: rainy input" in printed
    quality = saved.pop("rainy_image_quality")
    assert set(quality) == {"rainy", "original", "adapted"}
    assert all(0 < row["ssim"] <= 1 and row["psnr_db"] > 0 for row in quality.values())
    for split in saved.values():
        assert set(split) == {"vanilla", "original", "adapted"}
        for row in split.values():
            assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "ms_per_image"} <= set(row) and row["images"] == 6
    for picture in ("eval_bars.png", "eval_examples.png"):
        assert os.path.getsize(trained["output"] / picture) > 1000


def test_missing_adapted_weights_are_named(tiny_world, tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r"spdnet_adapted.pt' does not exist: run Training_SPDNet_Adaptation.py"):
        Eval_SPDNet_Adaptation.main(tiny_world["overrides"] + [f"--OUTPUT_DIR={tmp_path}"])


def test_rain_detector_saves_its_validation_threshold(trained):
    gate = load_rain_detector(str(trained["output"] / "rain_detector.pt"))
    assert gate.threshold == pytest.approx(trained["gate"]["threshold"])
    assert 0.0 < gate.threshold < 1.0
    assert {"accuracy", "precision", "recall"} <= set(trained["gate"])
    saved = torch.load(trained["output"] / "rain_detector.pt", weights_only=True)
    assert saved["val_metrics"]["accuracy"] == trained["gate"]["accuracy"]


def test_threshold_choice_and_metrics_on_known_scores():
    scores = torch.tensor([0.1, 0.2, 0.35, 0.4, 0.7, 0.9])
    rainy = torch.tensor([0, 0, 0, 1, 1, 1])
    threshold = choose_threshold(scores, rainy)
    assert 0.35 < threshold <= 0.4
    metrics = classification_metrics(scores, rainy, threshold)
    assert metrics["accuracy"] == 1.0 and metrics["precision"] == 1.0 and metrics["recall"] == 1.0
    metrics = classification_metrics(scores, rainy, 0.15)
    assert metrics["confusion"] == {"rainy_as_rainy": 3, "clean_as_rainy": 2, "rainy_as_clean": 0, "clean_as_clean": 1}
    assert metrics["precision"] == pytest.approx(3 / 5) and metrics["recall"] == 1.0


def test_conditional_evaluation_reports_routes_gate_and_guarantee(tiny_world, trained):
    results = Eval_conditional.main(
        [o for o in trained["common"] if "SPDNET_N" not in o]
        + ["--BATCH_SIZE=4", "--MIXED_RAIN_FRACTION=0.5", "--ORACLE_REPORT=True", trained["rain_gate"]]
    )
    assert set(results) == {"clean", "rainy", "mixed"}
    for split in results.values():
        assert {"gate", "always", "never", "rain_detector", "speed", "clean_guarantee"} <= set(split)
        guarantee = split["clean_guarantee"]
        assert guarantee["identical_to_detector"] == guarantee["images_gated_clean"]
        assert split["gate"]["routed_rainy"] + split["gate"]["routed_clean"] == 6
        assert split["speed"]["clean_path_ms_per_image"] < split["speed"]["rainy_path_ms_per_image"]
        oracle = split["oracle"]
        assert oracle["images"] == 6 and oracle["gate_derains"] == split["gate"]["routed_rainy"]
        assert 0 <= oracle["agreement"] <= 1 and 0 <= oracle["oracle_derains"] <= 6
        assert 0 <= oracle["router"]["AP"] <= 1
    assert os.path.isfile(trained["output"] / "conditional_results.json")


def test_the_oracle_router_scores_each_image_on_the_path_with_the_lower_loss():
    from types import SimpleNamespace

    from utils.apps import conditional_eval

    updates = []
    recorder = SimpleNamespace(update=lambda logits, boxes, ids, sizes: updates.append((logits, boxes, ids)))
    plain, derained = torch.tensor([1.0, 0.5, 2.0]), torch.tensor([0.5, 1.0, 2.0])  # SPDNet helps image 0 only
    outputs = {name: SimpleNamespace(logits=torch.full((3, 2, 4), value), pred_boxes=torch.full((3, 2, 4), value))
               for name, value in (("always", 1.0), ("never", 0.0))}
    tally = conditional_eval.RouteTally(evaluators={}, seconds={}, oracle_router=recorder)
    conditional_eval.score_oracle((plain, derained), [0, 1, 2], torch.tensor([[64, 64]] * 3), outputs, tally)
    assert tally.oracle[0].tolist() == [True, False, False]  # a tie keeps the frozen detector's path
    (logits, boxes, ids), = updates
    assert logits[:, 0, 0].tolist() == boxes[:, 0, 0].tolist() == [1.0, 0.0, 0.0] and ids == [0, 1, 2]


class FixedGate(RainDetector):
    """A gate that calls rainy the images whose mean brightness is above 0.5."""

    def __init__(self):
        super().__init__("small_cnn", 32, threshold=0.5)

    def probability(self, images):
        return (images.mean(dim=(1, 2, 3)) > 0.5).float()


def test_batch_is_split_by_the_gate_and_merged_in_order(tiny_world):
    from utils.models.detector import load_detector
    from utils.models.integrated_model import IntegratedModel
    from utils.models.spdnet import SPDNet

    integrated = IntegratedModel(SPDNet(n_feats=8, n_resblocks=1), load_detector(tiny_world["detector_dir"])).eval()
    model = ConditionalModel(FixedGate(), integrated)
    images = torch.rand(5, 3, 64, 64) * 0.4
    images[[1, 3]] += 0.5  # bright = "rainy"
    output = model(images)
    assert output.derained.tolist() == [False, True, False, True, False]
    with torch.inference_mode():
        derained = integrated(images[[1, 3]], derain=True)
        direct = integrated.detector(pixel_values=images[[0, 2, 4]])
    assert torch.equal(output.logits[[1, 3]], derained.logits)
    assert torch.equal(output.logits[[0, 2, 4]], direct.logits)
    assert torch.equal(output.pred_boxes[[0, 2, 4]], direct.pred_boxes)
    assert model(images, route="never").derained.sum() == 0 and model(images, route="always").derained.all()


def test_infer_writes_annotated_images_and_detections(tiny_world, trained, tmp_path):
    records = Infer.main([
        f"--OUTPUT_DIR={trained['output']}", f"--DETECTOR={tiny_world['detector_dir']}", "--IMAGE_SIZE=64",
        "--DEVICE=cpu", f"--INPUT={tiny_world['coco_dir']}/val2017", f"--OUTPUT={tmp_path}", "--SCORE_THRESHOLD=0.0",
        trained["rain_gate"],
    ])
    assert len(records) == 6
    written = json.loads(open(tmp_path / "detections.json").read())
    assert written == json.loads(json.dumps(records))
    first = written[0]
    assert {"file", "rain_probability", "path", "detections"} <= set(first) and first["path"] in ("derained", "direct")
    assert first["detections"] and {"label", "score", "box_xyxy"} <= set(first["detections"][0])
    assert len([name for name in os.listdir(tmp_path) if name.endswith("_detected.png")]) == 6
    with pytest.raises(FileNotFoundError, match="neither an image file nor a folder"):
        Infer.main([f"--OUTPUT_DIR={trained['output']}", "--INPUT=/no/such/photos"])
    # A folder whose image files all fail to decode is an error, not an empty success.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"INPUT: none of the 1 image files in .*broken' could be read"):
        Infer.main([f"--OUTPUT_DIR={trained['output']}", f"--DETECTOR={tiny_world['detector_dir']}", "--IMAGE_SIZE=64",
                    "--DEVICE=cpu", f"--INPUT={broken}", f"--OUTPUT={tmp_path / 'out'}", trained["rain_gate"]])


def test_conditional_evaluation_scores_held_out_rain_and_soft_routing(tiny_world, trained, tmp_path, capsys):
    from utils.data.coco import annotation_path
    from utils.data.rain import make_rainy_split

    drops = str(tmp_path / "drops")
    make_rainy_split(tiny_world["coco_dir"], drops, "val2017", annotation_path(tiny_world["coco_dir"], "val"),
                     ["drops_heavy"], 1, show_progress=False)
    results = Eval_conditional.main(
        [o for o in trained["common"] if "SPDNET_N" not in o]
        + ["--BATCH_SIZE=4", f"--HOLDOUT_RAIN_DIR={drops}", "--SOFT_ROUTING=True", trained["rain_gate"]]
    )
    printed = capsys.readouterr().out
    assert list(results) == ["clean", "rainy", "mixed", "heldout", "heldout_mixed"]
    assert "hard vs soft routing" in printed and "heldout_mixed" in printed and "conditional (soft)" in printed
    for split in results.values():
        assert {"gate", "soft", "always", "never"} <= set(split)
        guarantee = split["clean_guarantee"]
        assert guarantee["identical_to_detector"] == guarantee["images_gated_clean"]
    gate = results["heldout"]["rain_detector"]["confusion"]
    assert gate["rainy_as_rainy"] + gate["rainy_as_clean"] == 6 and gate["clean_as_rainy"] + gate["clean_as_clean"] == 0
    mixed = results["heldout_mixed"]["rain_detector"]["confusion"]
    assert (mixed["rainy_as_rainy"] + mixed["rainy_as_clean"] == 3
            and mixed["clean_as_rainy"] + mixed["clean_as_clean"] == 3)


def test_held_out_settings_are_checked_before_any_work(tiny_world, trained, tmp_path):
    common = [o for o in trained["common"] if "SPDNET_N" not in o]
    with pytest.raises(ValueError, match="HOLDOUT_FAMILY must be one of"):
        Eval_conditional.main(common + ["--HOLDOUT_FAMILY=snow"])
    with pytest.raises(ValueError, match="HOLDOUT_FAMILY='streaks' leaves no rain variant"):
        Eval_conditional.main(common + ["--HOLDOUT_FAMILY=streaks"])
    with pytest.raises(ValueError, match="has no variant of it; set HOLDOUT_RAIN_DIR"):
        Eval_conditional.main(common + ["--HOLDOUT_FAMILY=drops"])
    with pytest.raises(FileNotFoundError, match="HOLDOUT_RAIN_DIR: .*nowhere' does not exist"):
        Eval_conditional.main(common + [f"--HOLDOUT_RAIN_DIR={tmp_path / 'nowhere'}"])


def test_held_out_family_inside_coco_rain_dir_makes_the_held_out_splits(trained, tmp_path):
    from utils.apps.conditional_eval import validation_splits
    from utils.data.synthetic import build_synthetic_world

    world = build_synthetic_world(str(tmp_path / "world"), num_train=2, num_val=6, image_size=64, seed=5,
                                  rain_presets=("medium", "drops_light"), show_progress=False)
    splits = validation_splits({
        "HOLDOUT_FAMILY": "drops", "HOLDOUT_RAIN_DIR": None, "COCO_RAIN_DIR": world["coco_rain_dir"],
        "MIXED_RAIN_FRACTION": 0.5,
    })
    rain = world["coco_rain_dir"]
    assert splits["rainy"] == (1.0, [f"{rain}/medium_v0"]) and splits["heldout"] == (1.0, [f"{rain}/drops_light_v0"])
    results = Eval_conditional.main(
        [o for o in trained["common"] if "SPDNET_N" not in o and "COCO" not in o]
        + [f"--COCO_DIR={world['coco_dir']}", f"--COCO_RAIN_DIR={rain}", "--BATCH_SIZE=6", "--HOLDOUT_FAMILY=drops",
           trained["rain_gate"]]
    )
    assert list(results) == ["clean", "rainy", "mixed", "heldout", "heldout_mixed"]
    assert sum(results["heldout"]["rain_detector"]["confusion"].values()) == 6
