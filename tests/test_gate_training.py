"""The rain gate trains through the shared loop: a JSONL log, and Ctrl-C saves a checkpoint that
RESUME continues bit for bit."""

import json
import os

import torch

from utils.apps import gate_training


def gate_config(tiny_world, output_dir, **changes) -> dict:
    config = {
        "COCO_DIR": tiny_world["coco_dir"], "COCO_RAIN_DIR": tiny_world["coco_rain_dir"], "HOLDOUT_FAMILY": None,
        "EPOCH_VARIANTS": True, "RANDOM_RAIN": 0.0, "LIBRARY_WEATHER": 0.0,
        "AUGMENT_BLUR": 0.0, "AUGMENT_JPEG": 0.0, "AUGMENT_JITTER": 0.0,
        "AUGMENT_NOISE": 0.0, "ARCHITECTURE": "small_cnn", "IMAGENET_WEIGHTS": None, "INPUT_SIZE": 64,
        "GATE_IMAGE_SIZE": 64, "GATE_PERCENT_DATASET": 100.0, "GATE_VAL_PERCENT": 100.0, "GATE_NUM_EPOCHS": 2,
        "GATE_BATCH_SIZE": 4, "GATE_LEARNING_RATE": 1e-3, "DEVICE": "cpu", "CPU_THREADS": None,
        "DATALOADER_WORKERS": 0, "SEED": 5, "OUTPUT_DIR": str(output_dir), "RESUME": False, "LOG_EVERY_STEPS": 1,
        "KEEP_CHECKPOINTS": 2, "AUTO_MICRO_BATCH": True,
    }
    return {**config, **changes}


class StopAfter:
    """Stands in for Ctrl-C: asks the loop to stop once it has been asked ``calls`` times."""

    def __init__(self, calls: int):
        self.calls = calls

    def install(self):
        return self

    def uninstall(self):
        pass

    def __call__(self) -> bool:
        self.calls -= 1
        return self.calls < 0


def gate_weights(output_dir) -> dict:
    return torch.load(os.path.join(output_dir, "rain_detector.pt"), weights_only=True)["state_dict"]


def test_a_stopped_gate_training_resumes_bit_for_bit(tiny_world, tmp_path, monkeypatch):
    straight = gate_training.train_rain_detector(gate_config(tiny_world, tmp_path / "straight"))
    micro_batches = len(open(tmp_path / "straight" / "rain_detector_log.jsonl").readlines())
    assert micro_batches > 4

    monkeypatch.setattr(gate_training, "StopRequested", lambda: StopAfter(calls=6))  # stops in epoch 2
    stopped = gate_training.train_rain_detector(gate_config(tiny_world, tmp_path / "resumed"))
    assert stopped["stopped"] and os.path.exists(tmp_path / "resumed" / "rain_detector_checkpoint.pt")
    monkeypatch.undo()
    resumed = gate_training.train_rain_detector(gate_config(tiny_world, tmp_path / "resumed", RESUME=True))

    assert resumed == straight
    expected, got = gate_weights(tmp_path / "straight"), gate_weights(tmp_path / "resumed")
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name


def test_the_gate_logs_steps_and_epochs_as_json_lines(tiny_world, tmp_path):
    gate_training.train_rain_detector(gate_config(tiny_world, tmp_path, GATE_NUM_EPOCHS=1))
    records = [json.loads(line) for line in open(tmp_path / "rain_detector_log.jsonl")]
    steps = [r for r in records if r["type"] == "train"]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))
    assert all(r["loss"] > 0 and r["lr"] > 0 for r in steps)
    assert len(epochs) == 1 and epochs[0]["epoch"] == 1 and 0 <= epochs[0]["accuracy"] <= 1


def test_library_weather_reaches_the_gates_clean_training_images_only(tiny_world, tmp_path):
    """LIBRARY_WEATHER (the gates' share of library weather): clean training images only, drawn per image
    and epoch, the same on a second pass; validation untouched; a fraction outside [0, 1] refused."""
    import pytest

    from utils.data.library_weather import WEATHER_KINDS
    from utils.runtime.errors import SettingError

    data = gate_training.build_gate_data(gate_config(tiny_world, tmp_path, LIBRARY_WEATHER=0.5),
                                         torch.device("cpu"))

    def kinds(loader):
        return [(bool(t["is_rainy"]), t.get("weather")) for _, targets in loader for t in targets]

    data.generator.manual_seed(0)
    first = kinds(data.train)
    data.generator.manual_seed(0)
    assert kinds(data.train) == first
    weathered = [kind for rainy, kind in first if kind is not None]
    assert weathered and all(kind in WEATHER_KINDS for kind in weathered)
    assert all(not rainy for rainy, kind in first if kind is not None)
    assert len(weathered) < sum(not rainy for rainy, _ in first)
    assert all(kind is None for _, kind in kinds(data.val))
    with pytest.raises(SettingError, match=r"LIBRARY_WEATHER must be in \[0, 1\], got 1.5"):
        gate_training.train_rain_detector(gate_config(tiny_world, tmp_path, LIBRARY_WEATHER=1.5))
