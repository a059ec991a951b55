"""Training_SPDNet_Adaptation.py end to end on the tiny synthetic world (seconds on a CPU)."""

import json
import os
import subprocess
import sys

import pytest
import torch

import Training_SPDNet_Adaptation as training_script
from utils import training
from utils.config import ConfigError
from utils.engine import NonFiniteLossError
from utils.spdnet import SPDNet, load_spdnet_weights

FAST = ["--PERCENT_DATASET=100", "--BATCH_SIZE=2", "--GRADIENT_ACCUMULATION_STEPS=2", "--WARMUP_STEPS=2",
        "--LOG_EVERY_STEPS=1", "--LEARNING_RATE=1e-3", "--EVAL_BEFORE_TRAINING=False"]


def run(tiny_world, output_dir, *extra):
    arguments = tiny_world["overrides"] + FAST + [f"--SPDNET_WEIGHTS={tiny_world['spdnet_weights']}", f"--OUTPUT_DIR={output_dir}"]
    return training_script.main(arguments + list(extra))


def spdnet_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["spdnet"]


def test_one_epoch_writes_weights_log_and_plot(tiny_world, tmp_path):
    result = run(tiny_world, tmp_path, "--NUM_EPOCHS=1", "--EVAL_BEFORE_TRAINING=True")
    assert not result["stopped"] and result["state"]["step"] == 4  # 16 images, 2 per micro-batch, 2 per step
    for name in ("spdnet_adapted.pt", "checkpoint.pt", "training_log.jsonl", "training_curves.png"):
        assert os.path.isfile(tmp_path / name), name
    adapted = torch.load(tmp_path / "spdnet_adapted.pt", weights_only=True)
    assert adapted["epoch"] == 1 and adapted["n_feats"] == 8 and "AP" in adapted["val_metrics"]
    assert adapted["config"]["NUM_EPOCHS"] == 1 and adapted["detector"] == tiny_world["detector_dir"]
    model = load_spdnet_weights(SPDNet(n_feats=8, n_resblocks=1), str(tmp_path / "spdnet_adapted.pt"))
    start = torch.load(tiny_world["spdnet_weights"], weights_only=True)
    assert not torch.equal(model.conv_init1.conv.weight, start["conv_init1.conv.weight"])  # it learned
    records = [json.loads(line) for line in open(tmp_path / "training_log.jsonl")]
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [0, 1]
    train_records = [r for r in records if r["type"] == "train"]
    assert len(train_records) == 4 and all(r["loss"] > 0 and r["images_per_s"] > 0 for r in train_records)
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert {"spdnet", "optimizer", "scheduler", "state", "rng", "config", "detector_fingerprint"} <= set(checkpoint)


def test_resumed_run_ends_with_the_same_weights(tiny_world, tmp_path):
    # 16 images, batch 2, 3 micro-batches per step: 8 micro-batches = steps of 3, 3, 2 per epoch.
    settings = ["--NUM_EPOCHS=2", "--GRADIENT_ACCUMULATION_STEPS=3", "--CHECKPOINT_EVERY_STEPS=1"]
    run(tiny_world, tmp_path / "straight", *settings)
    stopped = run(tiny_world, tmp_path / "resumed", *settings, "--MAX_STEPS=4")
    assert stopped["stopped"] and stopped["state"]["step"] == 4 and stopped["state"]["epoch"] == 1
    assert stopped["state"]["micro_batches_done"] == 3  # mid-epoch
    assert not os.path.exists(tmp_path / "resumed" / "training_curves.png")
    resumed = run(tiny_world, tmp_path / "resumed", *settings, "--RESUME=True")
    assert resumed["state"]["step"] == 6 and not resumed["stopped"]
    straight_weights = spdnet_state(tmp_path / "straight" / "checkpoint.pt")
    resumed_weights = spdnet_state(tmp_path / "resumed" / "checkpoint.pt")
    for name, tensor in straight_weights.items():
        assert torch.equal(tensor, resumed_weights[name]), name


def test_a_changed_detector_aborts_before_saving(tiny_world, tmp_path, monkeypatch):
    original = training.train_one_epoch

    def tamper(model, *args, **kwargs):
        result = original(model, *args, **kwargs)
        with torch.no_grad():
            next(model.detector.parameters()).view(-1)[0] += 0.01
        return result

    monkeypatch.setattr(training, "train_one_epoch", tamper)
    with pytest.raises(training.DetectorChangedError, match="the frozen detector changed"):
        run(tiny_world, tmp_path, "--NUM_EPOCHS=1")
    assert not os.path.exists(tmp_path / "spdnet_adapted.pt")


def test_config_errors_are_clear(tiny_world, tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'NUM_EPOCH'"):
        run(tiny_world, tmp_path, "--NUM_EPOCH=1")
    with pytest.raises(ConfigError, match="BATCH_SIZE must be int"):
        run(tiny_world, tmp_path, "--BATCH_SIZE=two")
    with pytest.raises(ValueError, match="FP16 is refused"):
        run(tiny_world, tmp_path, "--FP16=True")
    with pytest.raises(ValueError, match="IMAGE_SIZE must be a multiple of 32"):
        run(tiny_world, tmp_path, "--IMAGE_SIZE=100")
    with pytest.raises(FileNotFoundError, match="COCO_DIR '/no/coco' does not exist"):
        run(tiny_world, tmp_path, "--COCO_DIR=/no/coco")


def test_clean_images_in_the_mix_train_too(tiny_world, tmp_path):
    result = run(tiny_world, tmp_path, "--NUM_EPOCHS=1", "--COCO_RATIO=0.5", "--RAIN_RATIO=0.5")
    assert result["state"]["step"] == 4


def test_non_finite_losses_are_skipped_then_stop_the_run(tiny_world, tmp_path, monkeypatch):
    from utils.integrated_model import IntegratedModel

    forward = IntegratedModel.forward
    calls = {"n": 0}

    def sometimes_nan(self, pixel_values, labels=None, derain=True):
        outputs = forward(self, pixel_values, labels=labels, derain=derain)
        if labels is not None:
            calls["n"] += 1
            if calls["n"] >= 3:
                outputs["loss"] = outputs.loss * float("nan")
        return outputs

    monkeypatch.setattr(IntegratedModel, "forward", sometimes_nan)
    # Windows of 2 micro-batches; from the 3rd on every loss is NaN. The count is read once per window:
    # after window 2 it is 2 (< 3, the window takes no optimizer step), after window 3 it is 4.
    with pytest.raises(NonFiniteLossError, match="4 micro-batches in a row had a non-finite loss"):
        run(tiny_world, tmp_path, "--NUM_EPOCHS=2", "--MAX_NONFINITE_IN_A_ROW=3", "--CHECKPOINT_EVERY_STEPS=1")
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # the last good one survived
    assert checkpoint["state"]["step"] == 2 and checkpoint["state"]["nonfinite_micro_batches"] == 2
    assert all(torch.isfinite(t).all() for t in checkpoint["spdnet"].values())


def test_two_process_ddp_run_agrees_and_saves_once(tiny_world, tmp_path):
    arguments = tiny_world["overrides"] + FAST + [
        f"--SPDNET_WEIGHTS={tiny_world['spdnet_weights']}", f"--OUTPUT_DIR={tmp_path}", "--NUM_EPOCHS=1",
    ]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
               "Training_SPDNet_Adaptation.py", *arguments]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "rank 0: SPDNet weights and epoch loss" in output and "rank 1: SPDNet weights and epoch loss" in output
    assert output.count("done: best rainy-val AP") == 1  # rank 0 alone reports and saves
    records = [json.loads(line) for line in open(tmp_path / "training_log.jsonl")]
    assert len([r for r in records if r["type"] == "epoch"]) == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "spdnet_adapted.pt", "training_curves.png", "training_log.jsonl"]


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_world, tmp_path):
    import signal

    arguments = tiny_world["overrides"] + FAST + [
        f"--SPDNET_WEIGHTS={tiny_world['spdnet_weights']}", f"--OUTPUT_DIR={tmp_path}", "--NUM_EPOCHS=1000",
    ]
    process = subprocess.Popen(
        [sys.executable, "-u", "Training_SPDNet_Adaptation.py", *arguments],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    lines = []
    for line in process.stdout:  # wait until training is under way
        lines.append(line)
        if line.startswith("epoch 2: train loss"):
            process.send_signal(signal.SIGTERM)
            break
    output = "".join(lines) + process.communicate(timeout=120)[0]
    assert process.returncode == 0, output[-2000:]
    assert "SIGTERM: saving a checkpoint and stopping" in output and "continue with --RESUME=True" in output
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["state"]["step"] >= 8  # at least the two finished epochs of 4 steps


def test_early_stopping_after_patience_epochs_without_improvement(tiny_world, tmp_path):
    # The random tiny detector scores 0.0 on every epoch: epoch 1 is the best, epoch 2 does not improve.
    result = run(tiny_world, tmp_path, "--NUM_EPOCHS=5", "--EARLY_STOPPING_PATIENCE=1")
    assert result["early_stopped"] and result["state"]["epoch"] == 2 and result["state"]["best_epoch"] == 1
    records = [json.loads(line) for line in open(tmp_path / "training_log.jsonl")]
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1, 2]
    assert all(r["unreadable_images"] == 0 for r in records if r["type"] == "epoch")
