"""Every bad input a user can give ends in one line naming the setting and the file, exit code 1, no traceback.

Config errors are run as real command lines (they must be refused before torch is imported, so
these subprocesses are cheap); the rest go through ``command_line`` in this process.
"""

import os
import subprocess
import sys

import pytest
import torch

import Eval_conditional
import Eval_SPDNet_Adaptation
import Infer
import Make_Demo
import Training_Rain_Detector
import Training_SPDNet_Adaptation
import Training_Utility_Gate
from utils.runtime.config import command_line
from utils.models.spdnet import SPDNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runs a script as `python SCRIPT ARGS...` would, then says whether torch had been imported.
PROBE = (
    "import runpy, sys\n"
    "sys.argv = sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
    "finally:\n"
    "    print('torch imported' if 'torch' in sys.modules else 'torch not imported')\n"
)


def run_script(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *arguments], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def one_line_error(main, argv) -> str:
    """The message ``command_line`` ends ``main(argv)`` with: one line, exit code 1."""
    with pytest.raises(SystemExit) as exit_info:
        command_line(lambda: main(argv))
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    assert "weights_only=False" not in message
    return message


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["Training_SPDNet_Adaptation.py", "--BATCH_SZE=4"], "unknown config key 'BATCH_SZE'. Did you mean BATCH_SIZE"),
        (["Eval_SPDNet_Adaptation.py", "--BATCH_SIZE=big"], "BATCH_SIZE must be int"),
        (["Eval_conditional.py", "configs/nothere.py"], "config file 'configs/nothere.py' does not exist"),
        (["Infer.py", "--ROUTING"], "'--ROUTING' must be --KEY=value"),
        (["Check_Data.py", "--DEMO_SEED=1"], "DEMO_SEED is a setting of Make_Demo.py, not of this script"),
        (["Check_Data.py", "--DEMO_SEDE=1"], "unknown config key 'DEMO_SEDE'"),
        (["Training_Rain_Detector.py", "--NUM_EPOCHS=3"],
         "NUM_EPOCHS is a setting of Training_SPDNet_Adaptation.py, not of this script. Did you mean GATE_NUM_EPOCHS"),
        (["Make_Demo.py", "--DEMO_SEED=one"], "DEMO_SEED must be int"),
        (["Infer.py", "--RAIN_DETECTOR_WEIGHTS=gate.pt"],
         "command line: RAIN_DETECTOR_WEIGHTS is now called GATE_WEIGHTS (same meaning"),
    ],
)
def test_config_errors_are_one_line_before_torch_is_imported(arguments, expected):
    result = run_script(*arguments)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.strip().endswith("torch not imported")


def test_configs_demo_serves_every_script_each_taking_its_own_keys():
    """configs/demo.py sets Make_Demo.py's DEMO_* keys and the production scripts' keys: each script takes
    its own and skips the others'; on the command line another script's key (or a retired one) is refused in
    one line naming it."""
    from utils.runtime.config import load_config

    demo = os.path.join(ROOT, "configs", "demo.py")
    for script in (Training_SPDNet_Adaptation, Eval_SPDNet_Adaptation, Eval_conditional, Infer, Training_Rain_Detector,
                   Training_Utility_Gate):
        config = load_config(vars(script), [demo], quiet=True)
        assert not any(key.startswith("DEMO_") for key in config), script.__name__
        assert config["OUTPUT_DIR"] == "./outputs_spdnet_adaptation/demo", script.__name__
        message = one_line_error(script.main, [demo, "--DEMO_SEED=1"])
        expected = "error: command line: DEMO_SEED is a setting of Make_Demo.py, not of this script."
        assert message.startswith(expected), message
        message = one_line_error(script.main, [demo, "--PREPARE_DEMO=True"])
        assert message.startswith("error: command line: PREPARE_DEMO is gone: build the demo world first with")
    config = load_config(vars(Make_Demo), [demo, os.path.join(ROOT, "configs", "demo_world1.py")], quiet=True)
    assert config["DEMO_SEED"] == 1 and config["DEMO_DIR"] == "./outputs_spdnet_adaptation/demo_world1"
    assert "OUTPUT_DIR" not in config


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """A file of random bytes, a pickle weights-only loading refuses, a valid tiny adapted SPDNet."""
    root = tmp_path_factory.mktemp("bad")
    (root / "random.pt").write_bytes(b"not weights, plain text\n" * 200)  # fixed: random bytes may start like a pickle
    torch.save({"spdnet": {}, "options": __import__("argparse").Namespace(x=1)}, root / "pickle.pt")
    torch.save({"spdnet": SPDNet(n_feats=8, n_resblocks=1).state_dict(), "n_feats": 8, "n_resblocks": 1},
               root / "adapted.pt")
    return root


WEIGHTS_PROBLEMS = [
    ("random.pt", "is not a weights file written by torch.save"),
    ("pickle.pt", "holds a Python object (argparse.Namespace)"),
]


@pytest.mark.parametrize("name, problem", WEIGHTS_PROBLEMS)
def test_bad_spdnet_weights(tiny_world, bad_files, tmp_path, name, problem):
    message = one_line_error(Training_SPDNet_Adaptation.main, tiny_world["overrides"] + [
        f"--SPDNET_WEIGHTS={bad_files / name}", f"--OUTPUT_DIR={tmp_path}"])
    assert f"SPDNET_WEIGHTS: '{bad_files / name}' {problem}" in message


@pytest.mark.parametrize("name, problem", WEIGHTS_PROBLEMS)
def test_bad_adapted_weights(tiny_world, bad_files, tmp_path, name, problem):
    message = one_line_error(Eval_SPDNet_Adaptation.main, tiny_world["overrides"] + [
        f"--SPDNET_WEIGHTS={tiny_world['spdnet_weights']}", f"--ADAPTED_WEIGHTS={bad_files / name}",
        f"--OUTPUT_DIR={tmp_path}"])
    assert f"ADAPTED_WEIGHTS: '{bad_files / name}' {problem}" in message


@pytest.mark.parametrize("name, problem", WEIGHTS_PROBLEMS)
def test_bad_rain_detector_weights(tiny_world, bad_files, tmp_path, name, problem):
    message = one_line_error(Eval_conditional.main, tiny_world["overrides"] + [
        f"--ADAPTED_WEIGHTS={bad_files / 'adapted.pt'}", f"--GATE_WEIGHTS={bad_files / name}",
        f"--OUTPUT_DIR={tmp_path}"])
    assert f"GATE_WEIGHTS: '{bad_files / name}' {problem}" in message


@pytest.mark.parametrize("name, problem", WEIGHTS_PROBLEMS)
def test_bad_resume_checkpoint(tiny_world, bad_files, tmp_path, name, problem):
    (tmp_path / "checkpoint.pt").write_bytes((bad_files / name).read_bytes())
    message = one_line_error(Training_SPDNet_Adaptation.main, tiny_world["overrides"] + [
        f"--SPDNET_WEIGHTS={tiny_world['spdnet_weights']}", f"--OUTPUT_DIR={tmp_path}", "--RESUME=True"])
    assert f"RESUME: '{tmp_path / 'checkpoint.pt'}' {problem}" in message


def test_missing_weights_files_name_their_setting(tiny_world, tmp_path):
    missing = str(tmp_path / "missing.pt")
    message = one_line_error(Training_SPDNet_Adaptation.main, tiny_world["overrides"] + [
        f"--SPDNET_WEIGHTS={missing}", f"--OUTPUT_DIR={tmp_path}"])
    assert f"SPDNET_WEIGHTS: '{missing}' does not exist" in message
    message = one_line_error(Training_SPDNet_Adaptation.main, tiny_world["overrides"] + [
        f"--SPDNET_WEIGHTS={tiny_world['spdnet_weights']}", f"--OUTPUT_DIR={tmp_path}", "--RESUME=True"])
    assert f"RESUME: '{tmp_path / 'checkpoint.pt'}' does not exist" in message
    # the default gate (GATE_WEIGHTS None): the detector-view gate's file in OUTPUT_DIR, and how to make it
    message = one_line_error(Eval_conditional.main, tiny_world["overrides"] + [
        f"--ADAPTED_WEIGHTS={tiny_world['spdnet_weights']}", f"--OUTPUT_DIR={tmp_path}"])
    default = tmp_path / "utility_gate.pt"
    assert f"GATE_WEIGHTS: gate '{default}' does not exist: run Training_Utility_Gate.py" in message


def test_missing_data_is_named_before_any_model_is_loaded(tiny_world, tmp_path):
    """COCO_DIR is checked first: the missing detector further down is never reached."""
    arguments = tiny_world["overrides"] + [f"--COCO_DIR={tmp_path / 'no_coco'}",
                                           f"--DETECTOR={tmp_path / 'no_detector'}", f"--OUTPUT_DIR={tmp_path}"]
    for main in (Training_SPDNet_Adaptation.main, Eval_SPDNet_Adaptation.main, Eval_conditional.main):
        message = one_line_error(main, arguments)
        assert f"COCO_DIR: '{tmp_path / 'no_coco'}' has no annotations/instances_" in message
    message = one_line_error(Training_Rain_Detector.main, [
        f"--COCO_DIR={tiny_world['coco_dir']}", f"--COCO_RAIN_DIR={tmp_path / 'no_rain'}", "--DEVICE=cpu",
        "--DATALOADER_WORKERS=0", f"--OUTPUT_DIR={tmp_path}"])
    assert f"COCO_RAIN_DIR {str(tmp_path / 'no_rain')!r} does not exist" in message


def test_missing_detector_is_named(tiny_world, tmp_path):
    message = one_line_error(Training_SPDNet_Adaptation.main, tiny_world["overrides"] + [
        f"--SPDNET_WEIGHTS={tiny_world['spdnet_weights']}", f"--DETECTOR={tmp_path / 'no_detector'}",
        f"--OUTPUT_DIR={tmp_path}"])
    assert f"DETECTOR: directory '{tmp_path / 'no_detector'}' does not exist" in message


def test_infer_refuses_an_input_that_is_not_an_image(tmp_path):
    readme = os.path.join(ROOT, "README.md")
    message = one_line_error(Infer.main, [f"--INPUT={readme}", f"--OUTPUT_DIR={tmp_path}"])
    assert f"INPUT: {readme!r} is not an image file" in message
    message = one_line_error(Infer.main, [f"--INPUT={tmp_path / 'nothing'}", f"--OUTPUT_DIR={tmp_path}"])
    assert f"INPUT: {str(tmp_path / 'nothing')!r} is neither an image file nor a folder" in message
    (tmp_path / "empty").mkdir()
    message = one_line_error(Infer.main, [f"--INPUT={tmp_path / 'empty'}", f"--OUTPUT_DIR={tmp_path}"])
    assert "has no images" in message


def test_bad_values_are_one_line(tiny_world, tmp_path):
    message = one_line_error(Training_SPDNet_Adaptation.main,
                             tiny_world["overrides"] + ["--PRECISION=fp16", f"--OUTPUT_DIR={tmp_path}"])
    assert "FP16 is refused" in message
    message = one_line_error(Training_SPDNet_Adaptation.main,
                             tiny_world["overrides"] + ["--IMAGE_SIZE=100", f"--OUTPUT_DIR={tmp_path}"])
    assert "IMAGE_SIZE must be a multiple of 32" in message
    message = one_line_error(Training_SPDNet_Adaptation.main,
                             tiny_world["overrides"] + ["--COMPILE=fastest", f"--OUTPUT_DIR={tmp_path}"])
    assert "COMPILE must be one of ('off', 'default'," in message
    for main in (Training_SPDNet_Adaptation.main, Eval_SPDNet_Adaptation.main, Eval_conditional.main):
        message = one_line_error(main, tiny_world["overrides"] + ["--CPU_THREADS=0", f"--OUTPUT_DIR={tmp_path}"])
        assert message == "error: CPU_THREADS must be a positive integer or None, got 0"
    message = one_line_error(Training_Rain_Detector.main, ["--CPU_THREADS=0", f"--OUTPUT_DIR={tmp_path}"])
    assert message == "error: CPU_THREADS must be a positive integer or None, got 0"


@pytest.mark.parametrize("name, problem", WEIGHTS_PROBLEMS)
def test_bad_imagenet_weights(tiny_world, bad_files, tmp_path, name, problem):
    message = one_line_error(Training_Rain_Detector.main, [
        f"--COCO_DIR={tiny_world['coco_dir']}", f"--COCO_RAIN_DIR={tiny_world['coco_rain_dir']}", "--DEVICE=cpu",
        "--DATALOADER_WORKERS=0", "--GATE_IMAGE_SIZE=64", "--GATE_PERCENT_DATASET=100", "--GATE_VAL_PERCENT=100",
        "--ARCHITECTURE=resnet18", f"--IMAGENET_WEIGHTS={bad_files / name}", f"--OUTPUT_DIR={tmp_path}"])
    assert f"IMAGENET_WEIGHTS: '{bad_files / name}' {problem}" in message


def test_a_gate_subset_without_images_is_named(tiny_world, tmp_path):
    message = one_line_error(Training_Rain_Detector.main, [
        f"--COCO_DIR={tiny_world['coco_dir']}", f"--COCO_RAIN_DIR={tiny_world['coco_rain_dir']}", "--DEVICE=cpu",
        "--DATALOADER_WORKERS=0", "--GATE_IMAGE_SIZE=64", "--GATE_PERCENT_DATASET=5", f"--OUTPUT_DIR={tmp_path}"])
    assert ("GATE_PERCENT_DATASET=5.0 leaves no train image of COCO_DIR=" in message
            and message.endswith("raise GATE_PERCENT_DATASET"))
