"""Training_SPDNet_Adaptation.py end to end on the tiny synthetic world (seconds on a CPU)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import Training_SPDNet_Adaptation as training_script
from utils.apps import adaptation as training
from utils.runtime.config import ConfigError
from utils.runtime.config import command_line
from utils.data.rain import FAMILIES
from utils.models.spdnet import SPDNet, load_spdnet_weights

FAST = ["--PERCENT_DATASET=100", "--BATCH_SIZE=2", "--GRADIENT_ACCUMULATION_STEPS=2", "--WARMUP_STEPS=2",
        "--LOG_EVERY_STEPS=1", "--LEARNING_RATE=1e-3", "--EVAL_BEFORE_TRAINING=False"]
# The method's objective on rainy images only, so the step counts below are 16 images' worth; the
# script's default objective (feature loss, clean images too) trains in tests/test_objectives.py.
DETECTION_ONLY = ["--DETECTION_LOSS_WEIGHT=1.0", "--FEATURE_LOSS_WEIGHT=0.0", "--PIXEL_LOSS_WEIGHT=0.0",
                  "--COCO_RATIO=0.0"]


def script_arguments(tiny_world, output_dir, objective=DETECTION_ONLY) -> list[str]:
    """The training script's command line on the tiny world, fast, with ``objective`` (empty: the default's)."""
    return tiny_world["overrides"] + FAST + objective + [f"--SPDNET_WEIGHTS={tiny_world['spdnet_weights']}",
                                                         f"--OUTPUT_DIR={output_dir}"]


def run(tiny_world, output_dir, *extra):
    return training_script.main(script_arguments(tiny_world, output_dir) + list(extra))


def run_failing(tiny_world, output_dir, *extra) -> str:
    """The one line the command line ends with (exit code 1) when a run cannot go on."""
    with pytest.raises(SystemExit) as exit_info:
        command_line(lambda: training_script.main(script_arguments(tiny_world, output_dir) + list(extra)))
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    return message


def log_records(path):
    """training_log.jsonl, refusing NaN and Infinity (json.loads would accept them)."""
    def refuse(constant):
        raise AssertionError(f"{constant} in {path}")

    return [json.loads(line, parse_constant=refuse) for line in open(path)]


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
    records = log_records(tmp_path / "training_log.jsonl")
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
    with pytest.raises(FileNotFoundError, match="COCO_DIR: '/no/coco' has no annotations/instances_train2017.json"):
        run(tiny_world, tmp_path, "--COCO_DIR=/no/coco")


def test_clean_images_in_the_mix_train_too(tiny_world, tmp_path):
    result = run(tiny_world, tmp_path, "--NUM_EPOCHS=1", "--COCO_RATIO=0.5", "--RAIN_RATIO=0.5")
    assert result["state"]["step"] == 4


def test_two_process_ddp_run_agrees_and_saves_once(tiny_world, tmp_path):
    arguments = script_arguments(tiny_world, tmp_path) + ["--NUM_EPOCHS=1"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
               "Training_SPDNet_Adaptation.py", *arguments]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "rank 0: SPDNet weights and epoch loss" in output and "rank 1: SPDNet weights and epoch loss" in output
    assert output.count("done: best rainy-val AP") == 1  # rank 0 alone reports and saves
    assert output.count("config:\n") == 1 and output.count("  LEARNING_RATE ") == 1  # and prints the config
    records = log_records(tmp_path / "training_log.jsonl")
    assert len([r for r in records if r["type"] == "epoch"]) == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "spdnet_adapted.pt", "training_curves.png",
                                            "training_log.jsonl"]


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_world, tmp_path):
    import signal

    arguments = script_arguments(tiny_world, tmp_path) + ["--NUM_EPOCHS=1000"]
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
    records = log_records(tmp_path / "training_log.jsonl")
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1, 2]
    assert all(r["unreadable_images"] == 0 for r in records if r["type"] == "epoch")


def finite(state_dict):
    return all(torch.isfinite(tensor).all() for tensor in state_dict.values() if tensor.is_floating_point())


def test_spdnet_diverging_under_a_huge_learning_rate_stops_with_the_last_good_checkpoint(tiny_world, tmp_path):
    # Step 1 at LEARNING_RATE=1e8 throws SPDNet's weights to ~1e8: from then on its output is NaN,
    # which the detector's box matcher would refuse with a ValueError. Windows of 2 micro-batches.
    message = run_failing(tiny_world, tmp_path, "--NUM_EPOCHS=2", "--LEARNING_RATE=1e8", "--WARMUP_STEPS=1",
                          "--MAX_NONFINITE_IN_A_ROW=3", "--CHECKPOINT_EVERY_STEPS=1")
    assert "4 micro-batches in a row had a non-finite SPDNet output or loss (limit MAX_NONFINITE_IN_A_ROW=3)" in message
    assert "checkpoint.pt holds step 0, the last whose weights gave a finite loss" in message
    assert "lower --LEARNING_RATE (honoured on resume" in message
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    start = torch.load(tiny_world["spdnet_weights"], weights_only=True)
    assert checkpoint["state"]["step"] == 0 and finite(checkpoint["spdnet"])
    assert all(torch.equal(checkpoint["spdnet"][name], tensor) for name, tensor in start.items())
    # The two NaN windows were no steps: one train record (step 1), no NaN anywhere in the log.
    assert [r["step"] for r in log_records(tmp_path / "training_log.jsonl")] == [1]
    # The advice works: the same checkpoint, resumed at a sane learning rate, trains.
    resumed = run(tiny_world, tmp_path, "--NUM_EPOCHS=1", "--RESUME=True", "--LEARNING_RATE=1e-3", "--WARMUP_STEPS=1")
    assert resumed["state"]["step"] == 4 and resumed["state"]["nonfinite_micro_batches"] == 0


def test_weights_that_overflow_spdnet_stop_the_run_before_any_step(tiny_world, tmp_path):
    start = torch.load(tiny_world["spdnet_weights"], weights_only=True)
    huge = {name: tensor if "DWT" in name else tensor * 1e30
            for name, tensor in start.items()}  # finite, but overflowing
    torch.save(huge, tmp_path / "huge.pt")
    message = run_failing(tiny_world, tmp_path / "out", f"--SPDNET_WEIGHTS={tmp_path / 'huge.pt'}",
                          "--MAX_NONFINITE_IN_A_ROW=3", "--CHECKPOINT_EVERY_STEPS=1")
    assert "4 micro-batches in a row had a non-finite SPDNet output or loss" in message
    assert "No step gave a finite loss since the start of this run, so nothing was saved" in message
    assert not os.path.exists(tmp_path / "out" / "checkpoint.pt")


def test_non_finite_weights_are_refused_on_load_naming_the_file_and_the_tensor(tiny_world, tmp_path):
    from utils.apps.pipelines import build_spdnet

    start = torch.load(tiny_world["spdnet_weights"], weights_only=True)
    start["conv_init1.conv.weight"][0, 0, 0, 0] = float("nan")
    torch.save(start, tmp_path / "nan_start.pt")
    message = run_failing(tiny_world, tmp_path / "a", f"--SPDNET_WEIGHTS={tmp_path / 'nan_start.pt'}")
    assert message == (f"error: SPDNet weights {tmp_path / 'nan_start.pt'}: tensor conv_init1.conv.weight holds NaN "
                       "or inf values; these weights cannot be used")
    assert not os.path.exists(tmp_path / "a" / "checkpoint.pt")

    run(tiny_world, tmp_path / "b", "--NUM_EPOCHS=1", "--CHECKPOINT_EVERY_STEPS=1", "--MAX_STEPS=1")
    checkpoint = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    checkpoint["optimizer"]["state"][0]["exp_avg_sq"].view(-1)[0] = float("inf")
    torch.save(checkpoint, tmp_path / "b" / "checkpoint.pt")
    message = run_failing(tiny_world, tmp_path / "b", "--NUM_EPOCHS=1", "--RESUME=True")
    assert message.startswith("error: no usable checkpoint to resume from: ")  # MAX_STEPS=1: no older one
    assert f"checkpoint {tmp_path / 'b' / 'checkpoint.pt'}: tensor optimizer.state.0.exp_avg_sq holds NaN" in message

    run(tiny_world, tmp_path / "c", "--NUM_EPOCHS=1")
    adapted = torch.load(tmp_path / "c" / "spdnet_adapted.pt", weights_only=True)
    adapted["spdnet"]["conv_init1.conv.bias"][0] = float("nan")
    torch.save(adapted, tmp_path / "c" / "spdnet_adapted.pt")
    with pytest.raises(ValueError, match=r"spdnet_adapted.pt: tensor spdnet.conv_init1.conv.bias holds NaN or inf"):
        build_spdnet(str(tmp_path / "c" / "spdnet_adapted.pt"), 8, 1)


def test_bad_boxes_in_the_annotation_file_are_reported_and_left_out(tiny_world, tmp_path, capfd):
    import shutil

    from utils.data.coco import annotation_path, build_dataset

    coco_dir, rain_dir = tmp_path / "coco", tmp_path / "coco_rain"
    shutil.copytree(tiny_world["coco_dir"], coco_dir)
    shutil.copytree(tiny_world["coco_rain_dir"], rain_dir)
    path = annotation_path(str(coco_dir), "train")
    coco = json.load(open(path))
    first, second = coco["annotations"][0], coco["annotations"][1]
    first["bbox"][2] = float("nan")  # written as NaN, which Python's json reads back as a float
    second["bbox"][3] = -second["bbox"][3]
    with open(path, "w") as file:
        json.dump(coco, file)
    run(tiny_world, tmp_path / "out", f"--COCO_DIR={coco_dir}", f"--COCO_RAIN_DIR={rain_dir}", "--MAX_STEPS=1")
    warnings = [line for line in capfd.readouterr().err.splitlines() if "left out of training" in line]
    assert len(warnings) == 1 and f"warning: {path}: 2 box(es) left out of training" in warnings[0]
    assert f"annotation {first['id']} of image {first['image_id']} bbox {first['bbox']} (not finite)" in warnings[0]
    assert (f"annotation {second['id']} of image {second['image_id']} bbox {second['bbox']} (width or height <= 0)"
            in warnings[0])
    dataset = build_dataset(str(coco_dir), str(rain_dir), "train", None, image_size=64, percent=100)
    kept = {image_id: len(boxes) for image_id, (boxes, _) in dataset.targets.items()}
    original = {image_id: len(boxes) for image_id, (boxes, _) in build_dataset(
        tiny_world["coco_dir"], tiny_world["coco_rain_dir"], "train", None, image_size=64, percent=100).targets.items()}
    lost = {image_id: original[image_id] - kept[image_id] for image_id in kept if original[image_id] != kept[image_id]}
    expected = {}
    for annotation in (first, second):
        expected[annotation["image_id"]] = expected.get(annotation["image_id"], 0) + 1
    assert lost == expected  # left out, not clipped into another box
    assert all(np.isfinite(boxes).all() and (boxes[:, 2:] > 0).all() for boxes, _ in dataset.targets.values())


def test_max_steps_at_an_epochs_last_step_scores_saves_and_resumes_into_the_next_epoch(tiny_world, tmp_path):
    # 4 steps per epoch: MAX_STEPS=4 lands on epoch 1's last step.
    straight = run(tiny_world, tmp_path / "straight", "--NUM_EPOCHS=2")
    stopped = run(tiny_world, tmp_path / "resumed", "--NUM_EPOCHS=2", "--MAX_STEPS=4")
    assert stopped["stopped"] and stopped["state"]["step"] == 4
    assert stopped["state"]["epoch"] == 1 and stopped["state"]["micro_batches_done"] == 0  # epoch 1 is done
    assert os.path.isfile(tmp_path / "resumed" / "spdnet_adapted.pt")
    records = log_records(tmp_path / "resumed" / "training_log.jsonl")
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1]
    again = run(tiny_world, tmp_path / "resumed", "--NUM_EPOCHS=2", "--MAX_STEPS=4", "--RESUME=True")
    assert again["stopped"] and again["state"]["step"] == 4  # MAX_STEPS already reached: no step taken
    resumed = run(tiny_world, tmp_path / "resumed", "--NUM_EPOCHS=2", "--RESUME=True")
    assert not resumed["stopped"] and resumed["state"]["step"] == 8 == straight["state"]["step"]
    records = log_records(tmp_path / "resumed" / "training_log.jsonl")
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and all(r["train_loss"] > 0 for r in epochs)
    straight_epochs = [r for r in log_records(tmp_path / "straight" / "training_log.jsonl") if r["type"] == "epoch"]
    assert [r["train_loss"] for r in epochs] == [r["train_loss"] for r in straight_epochs]
    straight_weights = spdnet_state(tmp_path / "straight" / "checkpoint.pt")
    resumed_weights = spdnet_state(tmp_path / "resumed" / "checkpoint.pt")
    for name, tensor in straight_weights.items():
        assert torch.equal(tensor, resumed_weights[name]), name


def test_resume_honours_a_changed_learning_rate_and_refuses_a_changed_batch_size_mid_epoch(
    tiny_world, tmp_path, capsys
):
    run(tiny_world, tmp_path, "--NUM_EPOCHS=1", "--MAX_STEPS=2")
    message = run_failing(tiny_world, tmp_path, "--NUM_EPOCHS=1", "--RESUME=True", "--BATCH_SIZE=4")
    assert message == (f"error: {tmp_path / 'checkpoint.pt'} stopped in the middle of epoch 1 with BATCH_SIZE=2; "
                       "resume with that value (it fixes the epoch's image order), not 4")
    capsys.readouterr()
    run(tiny_world, tmp_path, "--NUM_EPOCHS=1", "--RESUME=True", "--LEARNING_RATE=1e-4", "--WEIGHT_DECAY=0.01")
    assert "step 2, best mAP -1.0000; learning rate now 7.75e-05 (LEARNING_RATE=0.0001)" in capsys.readouterr().out
    records = [r for r in log_records(tmp_path / "training_log.jsonl") if r["type"] == "train"]
    # 4 steps in all, warm-up min(WARMUP_STEPS=2, 4 // 5 or 1) = 1: steps 3 and 4 at the new rate.
    factors = [training.lr_factor(step, 1, 4, 0.1) for step in range(4)]
    assert [r["lr"] for r in records] == pytest.approx([1e-3 * factors[0], 1e-3 * factors[1], 1e-4 * factors[2],
                                                        1e-4 * factors[3]])
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["optimizer"]["param_groups"][0]["weight_decay"] == 0.01
    assert checkpoint["config"]["LEARNING_RATE"] == 1e-4


def test_fractional_percentages_choose_smaller_subsets(tiny_world, tmp_path, capsys):
    result = run(tiny_world, tmp_path, "--NUM_EPOCHS=1", "--PERCENT_DATASET=12.5", "--VAL_PERCENT=0.5")
    assert result["state"]["step"] == 1  # 2 of 16 images: one micro-batch
    assert ("data: 2 training images (2 rainy + 0 clean, 2 rain variants), 1 rainy validation images"
            in capsys.readouterr().out)
    message = run_failing(tiny_world, tmp_path, "--PERCENT_DATASET=0")
    assert message == "error: PERCENT_DATASET must be in (0, 100] (fractions such as 0.5 are fine), got 0.0"


# ---- diverse rain: several families, on-the-fly rain, a held-out family (docs/training.md)


def two_family_arguments(two_family_world) -> list[str]:
    return [f"--COCO_DIR={two_family_world['coco_dir']}", f"--COCO_RAIN_DIR={two_family_world['coco_rain_dir']}"]


def training_data(tiny_world, output_dir, *extra):
    """build_data of the script's settings (the tiny world's, then ``extra``), as main builds it."""
    from utils.data.synthetic import SHAPES
    from utils.runtime.config import load_config

    config = load_config(vars(training_script), script_arguments(tiny_world, output_dir) + list(extra), quiet=True)
    training.check_config(config)
    run_info = training.Run(device=torch.device("cpu"), rank=0, world_size=1, output_dir=str(output_dir),
                            precision="fp32", objective=training.objective_of(config))
    return training.build_data(config, dict(enumerate(SHAPES)), run_info)


def epoch_targets(data, epoch: int) -> list[dict]:
    data.train_sampler.set_epoch(epoch)
    data.train_dataset.set_epoch(epoch)
    return [target for _, targets in data.train_loader for target in targets]


def test_the_held_out_family_never_reaches_a_training_batch(tiny_world, two_family_world, tmp_path):
    from utils.data.coco import build_dataset
    from utils.data.rain import variant_family

    data = training_data(tiny_world, tmp_path, *two_family_arguments(two_family_world), "--HOLDOUT_FAMILY=drops",
                         "--RANDOM_RAIN=0.5", "--FEATURE_LOSS_WEIGHT=1.0")
    files = data.train_dataset.dataset
    assert [variant_family(os.path.dirname(d)) for d in files.rain_dirs] == ["streaks"]  # drops variants dropped
    read = []  # every file a training batch is made from
    original_read = files._read
    files._read = lambda path, flip: read.append(path) or original_read(path, flip)
    plain = build_dataset(two_family_world["coco_dir"], two_family_world["coco_rain_dir"], "train", None,
                          image_size=64, seed=files.seed, rain_ratio=1.0, return_clean_pair=True, train=True)
    shown = set()
    for epoch in range(3):
        plain.set_epoch(epoch)
        clean = {plain.samples[i][0]: plain[i][1] for i in range(len(plain))}
        for target in epoch_targets(data, epoch):
            family = target["rain_family"]
            if family is None:  # a rendered variant
                assert variant_family(os.path.dirname(files.rain_dirs[target["variant"]])) == "streaks"
            assert target["is_rainy"] and family != "drops"
            expected = clean[target["image_id"]]  # rain moves no object; the pair is the clean original
            assert torch.equal(target["boxes"], expected["boxes"])
            assert torch.equal(target["clean_image"], expected["clean_image"])
            shown.add(family)
    assert shown == {None, *(set(FAMILIES) - {"drops"})}  # rendered rain and on-the-fly rain of every other family
    assert read and not any("drops" in path for path in read)
    assert all(path.startswith((files.clean_dir, *files.rain_dirs)) for path in read)
    # nor the validation batches the best epoch is picked on
    validation = data.val_loader.dataset
    assert [variant_family(os.path.dirname(d)) for d in validation.rain_dirs] == ["streaks"]
    assert len([t for _, targets in data.val_loader for t in targets]) == len(validation) > 0


def test_holding_out_every_rendered_family_trains_on_the_fly_rain_only(tiny_world, tmp_path):
    # The tiny world's rain is all streaks: without them only RANDOM_RAIN=1.0 has rainy images to show.
    data = training_data(tiny_world, tmp_path, "--HOLDOUT_FAMILY=streaks", "--RANDOM_RAIN=1.0")
    assert data.train_dataset.dataset.rain_dirs == []
    targets = epoch_targets(data, 0)
    assert len(targets) == 16 and {t["rain_family"] for t in targets} == set(FAMILIES) - {"streaks"}
    assert all("clean_image" not in t for t in targets)  # the detection objective asks for no clean pair
    # validation: the clean val originals with the other families' rain, the same every epoch
    validation = [(image, t) for images, targets in data.val_loader for image, t in zip(images, targets)]
    assert len(validation) == len(data.val_loader.dataset) > 0
    assert {t["rain_family"] for _, t in validation} <= set(FAMILIES) - {"streaks"}
    again = [image for images, _ in data.val_loader for image in images]
    assert all(torch.equal(image, other) for (image, _), other in zip(validation, again))
    clean = data.val_loader.dataset.dataset
    assert all(not torch.equal(image, clean.load(i, fresh_rain=True)[0]) for i, (image, _) in enumerate(validation))
    message = run_failing(tiny_world, tmp_path, "--HOLDOUT_FAMILY=streaks")
    assert "HOLDOUT_FAMILY='streaks' leaves no rain variant of COCO_RAIN_DIR=" in message
    assert "nothing rainy to train on" in message
    assert "have no rendered rain" in run_failing(tiny_world, tmp_path, "--HOLDOUT_FAMILY=streaks", "--RANDOM_RAIN=0.5")
    assert run_failing(tiny_world, tmp_path, "--HOLDOUT_FAMILY=snow").startswith("error: HOLDOUT_FAMILY must be one of")
    assert run_failing(tiny_world, tmp_path, "--RANDOM_RAIN=1.5") == "error: RANDOM_RAIN must be in [0, 1], got 1.5"


def test_the_defaults_train_on_the_same_samples_as_before(tiny_world, two_family_world, tmp_path):
    from utils.data.coco import CocoRainDataset, build_dataset

    data = training_data(tiny_world, tmp_path, *two_family_arguments(two_family_world))
    dataset = data.train_dataset
    assert type(dataset) is CocoRainDataset  # no wrapper, every variant
    plain = build_dataset(two_family_world["coco_dir"], two_family_world["coco_rain_dir"], "train", None,
                          image_size=64, train=True, coco_ratio=0.0, rain_ratio=1.0, seed=dataset.seed)
    assert dataset.samples == plain.samples and dataset.rain_dirs == plain.rain_dirs and len(plain.rain_dirs) == 2
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        dataset.set_epoch(epoch)
        for index in range(len(plain)):
            (image, target), (expected, expected_target) = dataset[index], plain[index]
            assert torch.equal(image, expected) and target.keys() == expected_target.keys()
            assert target["variant"] == expected_target["variant"]


def test_diverse_rain_trains_through_the_script_and_resumes_bit_for_bit(tiny_world, two_family_world, tmp_path):
    families = two_family_arguments(two_family_world)
    both = run(tiny_world, tmp_path / "both", *families, "--RANDOM_RAIN=0.5", "--NUM_EPOCHS=1")
    assert not both["stopped"] and os.path.isfile(tmp_path / "both" / "spdnet_adapted.pt")
    settings = [*families, "--HOLDOUT_FAMILY=drops", "--RANDOM_RAIN=0.5", "--NUM_EPOCHS=1",
                "--CHECKPOINT_EVERY_STEPS=1"]
    straight = run(tiny_world, tmp_path / "straight", *settings)
    assert straight["state"]["step"] == 4 and os.path.isfile(tmp_path / "straight" / "spdnet_adapted.pt")
    assert run(tiny_world, tmp_path / "resumed", *settings, "--MAX_STEPS=2")["stopped"]
    run(tiny_world, tmp_path / "resumed", *settings, "--RESUME=True")
    straight_weights = spdnet_state(tmp_path / "straight" / "checkpoint.pt")
    resumed_weights = spdnet_state(tmp_path / "resumed" / "checkpoint.pt")
    for name, tensor in straight_weights.items():
        assert torch.equal(tensor, resumed_weights[name]), name


def test_settings_are_resolved_into_the_run_and_never_rewritten(tiny_world, tmp_path):
    """PRECISION="auto" resolves into Run.precision; the settings dict stays as loaded, and what a
    checkpoint records is the settings as the run applied them."""
    from utils.runtime.config import load_config
    from utils.runtime.device import resolve_precision

    config = load_config(vars(training_script), script_arguments(tiny_world, tmp_path) + ["--PRECISION=auto"],
                         quiet=True)
    loaded = dict(config)
    run_info = training.setup_run(config)
    assert config == loaded and config["PRECISION"] == "auto"
    assert run_info.precision == resolve_precision("auto", torch.device("cpu"))[0]
    recorded = run_info.resolved(config)
    assert recorded["PRECISION"] == run_info.precision and recorded["COMPILE"] == "off"
    assert config["PRECISION"] == "auto"  # resolved() makes a copy
