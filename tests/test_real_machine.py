"""The accidents of a real machine: a full disk, a damaged checkpoint, files a team cannot read, a GPU
out of memory, and an error whose traceback matters. Each is made to happen for real where it can
(a file-size limit in a child process for the full disk, a truncated file) and, for out of memory, by
raising torch.OutOfMemoryError from the model for batches above a size."""

import json
import os
import subprocess
import sys

import pytest
import torch

import Eval_conditional
import Eval_SPDNet_Adaptation
import Training_SPDNet_Adaptation as training_script
from utils.models.integrated_model import IntegratedModel
from utils.models.spdnet import SPDNet
from utils.runtime import checkpoint as checkpoints
from utils.runtime.config import command_line
from utils.runtime.errors import FileWriteError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--PERCENT_DATASET=100", "--BATCH_SIZE=2", "--GRADIENT_ACCUMULATION_STEPS=2", "--WARMUP_STEPS=2",
        "--LOG_EVERY_STEPS=1", "--LEARNING_RATE=1e-3", "--EVAL_BEFORE_TRAINING=False",
        "--DETECTION_LOSS_WEIGHT=1.0", "--FEATURE_LOSS_WEIGHT=0.0", "--PIXEL_LOSS_WEIGHT=0.0", "--COCO_RATIO=0.0"]


def arguments(tiny_world, output_dir, *extra) -> list[str]:
    """The training script's command line on the tiny world: 16 images, batch 2, 2 per step = 4 steps an epoch."""
    return tiny_world["overrides"] + FAST + [f"--SPDNET_WEIGHTS={tiny_world['spdnet_weights']}",
                                            f"--OUTPUT_DIR={output_dir}", *extra]


def train(tiny_world, output_dir, *extra) -> dict:
    return training_script.main(arguments(tiny_world, output_dir, *extra))


def one_line(main) -> str:
    with pytest.raises(SystemExit) as exit_info:
        command_line(main)
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    return message


def weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["spdnet"]


def assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


def records(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


# ---- a full disk

# Runs a script as `python SCRIPT ARGS...` would, under a file-size limit (what a full disk does to a
# write: it fails part-way with an OSError), in a child process so that the limit binds it alone.
UNDER_A_FILE_SIZE_LIMIT = (
    "import resource, runpy, sys\n"
    "limit = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
    "sys.argv = sys.argv[2:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def run_with_file_size_limit(limit: int, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", UNDER_A_FILE_SIZE_LIMIT, str(limit), *command], capture_output=True,
                          text=True, cwd=ROOT, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_a_full_disk_stops_training_in_one_line_and_a_resume_with_room_ends_as_an_uninterrupted_run(tiny_world,
                                                                                                    tmp_path):
    settings = ["--NUM_EPOCHS=2", "--CHECKPOINT_EVERY_STEPS=1"]
    train(tiny_world, tmp_path / "straight", *settings)
    output = tmp_path / "resumed"
    train(tiny_world, output, *settings, "--MAX_STEPS=4")
    step_4 = (output / "checkpoint.pt").read_bytes()
    before = sorted(os.listdir(output))
    # Room for the log's lines, not for a checkpoint (each is larger than this).
    result = run_with_file_size_limit(len(step_4) // 2, "Training_SPDNet_Adaptation.py",
                                      *arguments(tiny_world, output, *settings, "--RESUME=True"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]  # after the progress bars
    assert line.startswith(f"error: could not write {output / 'checkpoint.pt'}: File too large")
    assert "--RESUME=True" in line
    assert (output / "checkpoint.pt").read_bytes() == step_4  # the last checkpoint is as it was
    assert sorted(os.listdir(output)) == before  # no temporary file left, nothing rotated away
    resumed = train(tiny_world, output, *settings, "--RESUME=True")
    assert resumed["state"]["step"] == 8
    assert_same_weights(weights(tmp_path / "straight" / "checkpoint.pt"), weights(output / "checkpoint.pt"))


# Every writer of the project under a file-size limit: each must fail in a FileWriteError that names
# its file, leave the file it would replace as it was, and leave no temporary file behind.
WRITERS = (
    "import json, os, sys, resource\n"
    "import numpy as np, torch\n"
    "from PIL import Image\n"
    "from utils.runtime import checkpoint as c\n"
    "from utils.runtime.errors import FileWriteError\n"
    "from utils.apps.plots import plot_training_curves\n"
    "from utils.data.rain import render_file\n"
    "folder = sys.argv[1]\n"
    "def path(name): return os.path.join(folder, name)\n"
    "big = {'w': torch.arange(200_000, dtype=torch.float32)}\n"
    "c.atomic_save({'w': torch.zeros(1)}, path('weights.pt'))\n"
    "c.save_checkpoint({'w': torch.zeros(1)}, path('checkpoint.pt'), 2)\n"
    "c.atomic_write_json(path('results.json'), {'AP': 0.5})\n"
    "open(path('log.jsonl'), 'w').write(json.dumps({'type': 'train', 'step': 1, 'loss': 1.0}) + '\\n')\n"
    "Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(path('in.png'))\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))\n"
    "jobs = {\n"
    "    'weights.pt': lambda: c.atomic_save(big, path('weights.pt')),\n"
    "    'checkpoint.pt': lambda: c.save_checkpoint(big, path('checkpoint.pt'), 2),\n"
    "    'results.json': lambda: c.atomic_write_json(path('results.json'), {'x': list(range(20_000))}),\n"
    "    'log.jsonl': lambda: c.append_line(path('log.jsonl'), json.dumps({'x': 'y' * 30_000})),\n"
    "    'curves.png': lambda: plot_training_curves(path('log.jsonl'), path('curves.png')),\n"
    "    'rainy.png': lambda: render_file((path('in.png'), path('rainy.png'), 'heavy', 0, 1, 'heavy_v0', 100)),\n"
    "}\n"
    "for name, job in jobs.items():\n"
    "    try:\n"
    "        job()\n"
    "        print(name, 'written')\n"
    "    except FileWriteError as error:\n"
    "        print(name, 'refused:', error)\n"
)


def test_every_writer_names_its_file_on_a_full_disk_and_leaves_the_old_file_and_no_temporary(tmp_path):
    result = subprocess.run([sys.executable, "-c", WRITERS, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    for name in ("weights.pt", "checkpoint.pt", "results.json", "log.jsonl", "curves.png", "rainy.png"):
        assert lines[name].startswith(f"refused: could not write {tmp_path / name}: File too large"), lines[name]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "in.png", "log.jsonl", "results.json", "weights.pt"]
    assert torch.equal(torch.load(tmp_path / "weights.pt", weights_only=True)["w"], torch.zeros(1))
    assert torch.equal(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["w"], torch.zeros(1))
    assert json.loads((tmp_path / "results.json").read_text()) == {"AP": 0.5}
    assert records(tmp_path / "log.jsonl") == [{"type": "train", "step": 1, "loss": 1.0}]  # no half line


# ---- checkpoints kept and chosen; durable writes; file modes

def test_the_last_two_checkpoints_are_kept_and_a_damaged_newest_one_falls_back_to_the_previous(tiny_world, tmp_path,
                                                                                             capsys):
    settings = ["--NUM_EPOCHS=1", "--CHECKPOINT_EVERY_STEPS=1"]
    train(tiny_world, tmp_path / "straight", *settings)
    output = tmp_path / "damaged"
    train(tiny_world, output, *settings, "--MAX_STEPS=3")
    assert sorted(name for name in os.listdir(output) if name.startswith("checkpoint")) == [
        "checkpoint.1.pt", "checkpoint.pt"]
    newest, previous = output / "checkpoint.pt", output / "checkpoint.1.pt"
    assert torch.load(newest, weights_only=True)["state"]["step"] == 3
    assert torch.load(previous, weights_only=True)["state"]["step"] == 2
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    capsys.readouterr()
    resumed = train(tiny_world, output, *settings, "--RESUME=True")
    printed = capsys.readouterr().out
    assert (f"warning: RESUME: '{newest}' is not a weights file written by torch.save" in printed
            and f"resuming from the previous checkpoint {previous} instead" in printed), printed
    assert f"resumed from {previous}" in printed and "step 2," in printed
    assert resumed["state"]["step"] == 4 and os.path.isfile(f"{newest}.unusable")
    assert_same_weights(weights(tmp_path / "straight" / "checkpoint.pt"), weights(newest))


def test_a_non_finite_newest_checkpoint_falls_back_and_none_usable_is_one_line(tiny_world, tmp_path, capsys):
    settings = ["--NUM_EPOCHS=1", "--CHECKPOINT_EVERY_STEPS=1", "--MAX_STEPS=3"]
    train(tiny_world, tmp_path, *settings)
    newest, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.1.pt"
    poisoned = torch.load(newest, weights_only=True)
    next(iter(poisoned["spdnet"].values())).fill_(float("nan"))
    torch.save(poisoned, newest)
    capsys.readouterr()
    train(tiny_world, tmp_path, *settings, "--RESUME=True")
    printed = capsys.readouterr().out
    assert f"warning: checkpoint {newest}: tensor spdnet." in printed and f"{previous} instead" in printed
    for path in checkpoints.checkpoint_paths(str(newest), 2):
        open(path, "wb").write(b"not a checkpoint\n" * 10)
    message = one_line(lambda: train(tiny_world, tmp_path, *settings, "--RESUME=True"))
    assert message.startswith("error: no usable checkpoint to resume from: ")
    assert f"'{newest}' is not a weights file" in message and f"'{previous}' is not a weights file" in message


def test_writes_flush_the_file_and_its_folder_around_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(handle):
        events.append("fsync folder" if os.path.isdir(os.readlink(f"/proc/self/fd/{handle}")) else "fsync file")
        return real_fsync(handle)

    def replace(source, destination):
        events.append(f"rename to {os.path.basename(destination)}")
        return real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    checkpoints.save_checkpoint({"w": torch.zeros(1)}, str(tmp_path / "checkpoint.pt"), 2)
    assert events == ["fsync file", "rename to checkpoint.pt", "fsync folder"]
    events.clear()
    checkpoints.save_checkpoint({"w": torch.ones(1)}, str(tmp_path / "checkpoint.pt"), 2)
    assert events == ["fsync file", "rename to checkpoint.1.pt", "rename to checkpoint.pt", "fsync folder"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_weights_and_checkpoints_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        checkpoints.atomic_save({"w": torch.zeros(1)}, str(tmp_path / "spdnet_adapted.pt"))
        checkpoints.save_checkpoint({"w": torch.zeros(1)}, str(tmp_path / "checkpoint.pt"), 2)
        checkpoints.atomic_write_json(str(tmp_path / "results.json"), {})
    finally:
        os.umask(previous)
    for name in ("spdnet_adapted.pt", "checkpoint.pt", "results.json"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == mode, name


def test_a_training_run_writes_files_a_colleague_can_read(tiny_world, tmp_path):
    previous = os.umask(0o022)
    try:
        train(tiny_world, tmp_path, "--NUM_EPOCHS=1")
    finally:
        os.umask(previous)
    for name in ("checkpoint.pt", "spdnet_adapted.pt", "training_log.jsonl", "training_curves.png"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644, name


# ---- out of memory

@pytest.fixture
def memory_for(monkeypatch):
    """``memory_for(cls, images)``: ``cls.forward`` raises torch.OutOfMemoryError for batches of more images."""
    def limit(cls, images: int) -> None:
        forward = cls.forward

        def limited(self, pixel_values, *args, **kwargs):
            if len(pixel_values) > images:
                raise torch.OutOfMemoryError(f"out of memory: {len(pixel_values)} images (test limit {images})")
            return forward(self, pixel_values, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", limited)

    return limit


def test_out_of_memory_halves_the_micro_batch_and_trains_as_batch_1_with_twice_the_accumulation(tiny_world, tmp_path,
                                                                                                 memory_for, capsys):
    reference = train(tiny_world, tmp_path / "batch_1", "--NUM_EPOCHS=1", "--BATCH_SIZE=1",
                      "--GRADIENT_ACCUMULATION_STEPS=4")
    memory_for(SPDNet, 1)
    capsys.readouterr()
    halved = train(tiny_world, tmp_path / "halved", "--NUM_EPOCHS=1")
    printed = capsys.readouterr().out
    assert ("out of memory with 2 images per micro-batch after step 0: now 1 images per micro-batch and 4 accumulation "
            "steps (the same 4 images per optimizer step); the window restarts from step 0") in printed
    assert halved["state"]["step"] == reference["state"]["step"] == 4  # the same optimizer steps per epoch
    assert halved["state"]["micro_batch_parts"] == 2
    log = records(tmp_path / "halved" / "training_log.jsonl")
    assert [r for r in log if r["type"] == "out_of_memory"] == [
        {"type": "out_of_memory", "epoch": 1, "step": 0, "micro_batch": 1, "gradient_accumulation_steps": 4,
         "effective_batch": 4}]
    assert_same_weights(weights(tmp_path / "batch_1" / "checkpoint.pt"), weights(tmp_path / "halved" / "checkpoint.pt"))


def test_out_of_memory_in_the_middle_of_a_window_replays_the_window_from_the_last_step(tiny_world, tmp_path,
                                                                                       monkeypatch):
    reference = train(tiny_world, tmp_path / "batch_1", "--NUM_EPOCHS=1", "--BATCH_SIZE=1",
                      "--GRADIENT_ACCUMULATION_STEPS=4")
    forward, calls = SPDNet.forward, []

    def runs_out_later(self, x):  # step 1's window: its first batch of 2 fits, its second does not
        calls.append(len(x))
        if len(x) > 1 and len(calls) > 1:
            raise torch.OutOfMemoryError("out of memory in the middle of a window")
        return forward(self, x)

    monkeypatch.setattr(SPDNet, "forward", runs_out_later)
    halved = train(tiny_world, tmp_path / "halved", "--NUM_EPOCHS=1")
    assert calls[:2] == [2, 2] and calls[2:6] == [1, 1, 1, 1]  # the first batch replayed in halves, then the second
    assert halved["state"]["step"] == reference["state"]["step"] == 4
    assert_same_weights(weights(tmp_path / "batch_1" / "checkpoint.pt"), weights(tmp_path / "halved" / "checkpoint.pt"))


def test_the_halved_micro_batch_is_kept_in_the_checkpoint_and_a_resume_uses_it(tiny_world, tmp_path, memory_for):
    settings = ["--NUM_EPOCHS=2", "--CHECKPOINT_EVERY_STEPS=1"]
    train(tiny_world, tmp_path / "straight", *settings, "--BATCH_SIZE=1", "--GRADIENT_ACCUMULATION_STEPS=4")
    memory_for(SPDNet, 1)
    stopped = train(tiny_world, tmp_path / "run", *settings, "--MAX_STEPS=6")
    assert stopped["stopped"] and torch.load(tmp_path / "run" / "checkpoint.pt",
                                             weights_only=True)["state"]["micro_batch_parts"] == 2
    resumed = train(tiny_world, tmp_path / "run", *settings, "--RESUME=True")
    assert resumed["state"]["step"] == 8
    assert len([r for r in records(tmp_path / "run" / "training_log.jsonl") if r["type"] == "out_of_memory"]) == 1
    assert_same_weights(weights(tmp_path / "straight" / "checkpoint.pt"), weights(tmp_path / "run" / "checkpoint.pt"))


def test_out_of_memory_at_one_image_names_the_peak_and_the_settings_and_leaves_a_checkpoint(tiny_world, tmp_path,
                                                                                          memory_for):
    memory_for(SPDNet, 0)
    message = one_line(lambda: train(tiny_world, tmp_path, "--NUM_EPOCHS=1"))
    assert message.startswith("error: training: out of memory with one image per micro-batch (peak ")
    assert "IMAGE_SIZE" in message and "GRADIENT_CHECKPOINTING=True" in message and "PRECISION='bf16'" in message
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["state"]["step"] == 0


def test_evaluation_splits_its_batches_on_out_of_memory_and_detects_as_one_image_at_a_time(tiny_world, tmp_path,
                                                                                           memory_for):
    adapted = tmp_path / "adapted"
    train(tiny_world, adapted, "--NUM_EPOCHS=1")
    common = tiny_world["overrides"] + [f"--SPDNET_WEIGHTS={tiny_world['spdnet_weights']}",
                                        f"--ADAPTED_WEIGHTS={adapted / 'spdnet_adapted.pt'}", "--NUM_EXAMPLES=2"]
    Eval_SPDNet_Adaptation.main(common + ["--BATCH_SIZE=1", f"--OUTPUT_DIR={tmp_path / 'one'}"])
    memory_for(IntegratedModel, 1)
    Eval_SPDNet_Adaptation.main(common + ["--BATCH_SIZE=4", f"--OUTPUT_DIR={tmp_path / 'split'}"])
    names = sorted(os.listdir(tmp_path / "one" / "detections"))
    assert names == sorted(os.listdir(tmp_path / "split" / "detections")) and len(names) >= 3
    for name in names:
        if name.endswith(".json"):
            one = json.loads((tmp_path / "one" / "detections" / name).read_text())
            assert one and one == json.loads((tmp_path / "split" / "detections" / name).read_text()), name


def test_the_conditional_evaluation_splits_its_batches_on_out_of_memory(tiny_world, tiny_gate, tmp_path, memory_for):
    adapted = tmp_path / "adapted"
    train(tiny_world, adapted, "--NUM_EPOCHS=1")
    common = tiny_world["overrides"] + [f"--ADAPTED_WEIGHTS={adapted / 'spdnet_adapted.pt'}",
                                        f"--GATE_WEIGHTS={tiny_gate}"]
    one = Eval_conditional.main(common + ["--BATCH_SIZE=1", f"--OUTPUT_DIR={tmp_path / 'one'}"])
    memory_for(IntegratedModel, 1)
    split = Eval_conditional.main(common + ["--BATCH_SIZE=4", f"--OUTPUT_DIR={tmp_path / 'split'}"])

    def figures(results):  # every figure but the timings
        return {split: {row: {key: value for key, value in figures.items() if "ms" not in key}
                        for row, figures in rows.items() if row != "speed"} for split, rows in results.items()}

    assert figures(one) == figures(split)
    assert sum(rows["gate"]["routed_rainy"] for rows in one.values()) > 0
    assert all(rows["clean_guarantee"]["images_gated_clean"] ==
               rows["clean_guarantee"]["identical_to_detector"] for rows in split.values())


# ---- tracebacks for bugs, one line for mistakes

def test_a_bug_inside_the_model_keeps_its_traceback_and_leaves_a_resumable_checkpoint(tiny_world, tmp_path,
                                                                                     monkeypatch, capsys):
    forward, calls = SPDNet.forward, []

    def broken(self, x):
        calls.append(len(x))
        if len(calls) == 6:  # inside step 3 (2 micro-batches a step)
            raise ValueError("a shape bug inside SPDNet")
        return forward(self, x)

    monkeypatch.setattr(SPDNet, "forward", broken)
    with pytest.raises(ValueError, match="a shape bug inside SPDNet"):
        command_line(lambda: train(tiny_world, tmp_path / "broken", "--NUM_EPOCHS=1"))
    assert "saved step 2, the last completed one" in capsys.readouterr().out
    assert torch.load(tmp_path / "broken" / "checkpoint.pt", weights_only=True)["state"]["step"] == 2
    monkeypatch.setattr(SPDNet, "forward", forward)
    train(tiny_world, tmp_path / "straight", "--NUM_EPOCHS=1")
    resumed = train(tiny_world, tmp_path / "broken", "--NUM_EPOCHS=1", "--RESUME=True")
    assert resumed["state"]["step"] == 4
    assert_same_weights(weights(tmp_path / "straight" / "checkpoint.pt"),
                        weights(tmp_path / "broken" / "checkpoint.pt"))


def test_a_plain_value_error_is_a_bug_and_a_setting_mistake_is_one_line(tiny_world, tmp_path):
    def bug():
        raise ValueError("raised inside a library")

    with pytest.raises(ValueError, match="raised inside a library"):
        command_line(bug)
    message = one_line(lambda: train(tiny_world, tmp_path, "--KEEP_CHECKPOINTS=0"))
    assert message == "error: KEEP_CHECKPOINTS must be a positive integer, got 0"
    assert isinstance(FileWriteError("x"), OSError)


def test_the_gates_refuse_a_bad_keep_checkpoints_before_training(tiny_world, tmp_path):
    import Training_Rain_Detector

    message = one_line(lambda: Training_Rain_Detector.main([
        f"--COCO_DIR={tiny_world['coco_dir']}", f"--COCO_RAIN_DIR={tiny_world['coco_rain_dir']}", "--DEVICE=cpu",
        "--DATALOADER_WORKERS=0", "--GATE_IMAGE_SIZE=64", "--GATE_PERCENT_DATASET=100", "--GATE_VAL_PERCENT=100",
        "--ARCHITECTURE=small_cnn", "--INPUT_SIZE=64", "--KEEP_CHECKPOINTS=0", f"--OUTPUT_DIR={tmp_path}"]))
    assert message == "error: KEEP_CHECKPOINTS must be a positive integer, got 0"
    assert not os.listdir(tmp_path)  # no step was taken, nothing written


def test_the_annotation_copy_keeps_the_source_mtime_and_skips_an_identical_copy(tmp_path):
    from utils.data.rain import copy_if_changed

    source, destination = tmp_path / "instances.json", tmp_path / "copy" / "instances.json"
    source.write_text('{"images": []}')
    destination.parent.mkdir()
    copy_if_changed(str(source), str(destination))
    assert destination.read_text() == source.read_text()
    assert destination.stat().st_mtime_ns == source.stat().st_mtime_ns
    inode = destination.stat().st_ino
    copy_if_changed(str(source), str(destination))
    assert destination.stat().st_ino == inode  # identical: not copied again
    source.write_text('{"images": [1]}')
    copy_if_changed(str(source), str(destination))
    assert destination.read_text() == '{"images": [1]}' and os.listdir(destination.parent) == ["instances.json"]
