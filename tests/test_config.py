"""The strict configurator: overrides from config files and --KEY=value, type checks, clear errors."""

import os

import pytest

from utils.runtime.config import ConfigError, check_fractions, load_config, resolve_config, script_defaults

DEFAULTS = {
    "BATCH_SIZE": 2,
    "LEARNING_RATE": 1e-4,
    "DETECTOR": "PekingU/rtdetr_r18vd",
    "SPDNET_WEIGHTS": None,
    "FP16": False,
    "SIZES": [640, 640],
}


def test_script_defaults_picks_upper_case_constants_only():
    namespace = {"BATCH_SIZE": 2, "lower": 1, "_PRIVATE": 3, "MODULE": pytest, "SEED": 7}
    assert script_defaults(namespace) == {"BATCH_SIZE": 2, "SEED": 7}


def test_command_line_overrides_are_parsed_as_literals():
    config = resolve_config(
        DEFAULTS,
        ["--BATCH_SIZE=8", "--LEARNING_RATE=3", "--DETECTOR=./local/rtdetr", "--SPDNET_WEIGHTS=w.pt",
         "--FP16=True", "--SIZES=[320, 320]"],
    )
    assert config == {
        "BATCH_SIZE": 8, "LEARNING_RATE": 3.0, "DETECTOR": "./local/rtdetr", "SPDNET_WEIGHTS": "w.pt",
        "FP16": True, "SIZES": [320, 320],
    }
    assert isinstance(config["LEARNING_RATE"], float)


def test_none_is_accepted_for_any_key():
    config = resolve_config(DEFAULTS, ["--DETECTOR=None", "--BATCH_SIZE=None"])
    assert config["DETECTOR"] is None and config["BATCH_SIZE"] is None


def test_config_file_then_command_line(tmp_path):
    config_file = tmp_path / "small.py"
    config_file.write_text("import math\nBATCH_SIZE = 4\nLEARNING_RATE = math.pi\n")
    config = resolve_config(DEFAULTS, [str(config_file), "--BATCH_SIZE=16"])
    assert config["BATCH_SIZE"] == 16
    assert config["LEARNING_RATE"] == pytest.approx(3.14159265)
    assert DEFAULTS["BATCH_SIZE"] == 2  # defaults untouched


@pytest.mark.parametrize(
    "argument, message",
    [
        ("--BATCH_SIZ=4", "unknown config key 'BATCH_SIZ'. Did you mean BATCH_SIZE"),
        ("--BATCH_SIZE=2.5", "BATCH_SIZE must be int (default 2), got float 2.5"),
        ("--FP16=1", "FP16 must be bool (default False), got int 1"),
        ("--BATCH_SIZE=True", "BATCH_SIZE must be int"),
        ("--LEARNING_RATE=fast", "LEARNING_RATE must be float (default 0.0001), got str 'fast'"),
        ("--BATCH_SIZE", "must be --KEY=value"),
        ("stray", "neither a configs/*.py file nor --KEY=value"),
        ("configs/does_not_exist.py", "config file 'configs/does_not_exist.py' does not exist"),
    ],
)
def test_bad_overrides_name_the_key_or_value(argument, message):
    with pytest.raises(ConfigError) as error:
        resolve_config(DEFAULTS, [argument])
    assert message in str(error.value)


def test_unknown_key_in_config_file_names_the_file(tmp_path):
    config_file = tmp_path / "typo.py"
    config_file.write_text("LEARNIN_RATE = 1e-3\n")
    with pytest.raises(ConfigError, match=r"config file .*typo.py: unknown config key 'LEARNIN_RATE'"):
        resolve_config(DEFAULTS, [str(config_file)])


def test_command_line_strings_are_never_executed(tmp_path):
    marker = tmp_path / "executed"
    config = resolve_config(DEFAULTS, [f"--DETECTOR=open({str(marker)!r}, 'w')"])
    assert not marker.exists()
    assert config["DETECTOR"].startswith("open(")


def test_load_config_prints_and_help_exits(capsys):
    namespace = dict(DEFAULTS, __file__="Train.py")
    config = load_config(namespace, ["--BATCH_SIZE=3"])
    assert config["BATCH_SIZE"] == 3
    assert "BATCH_SIZE" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        load_config(namespace, ["--help"])
    assert exit_info.value.code == 0
    assert "usage: python Train.py" in capsys.readouterr().out


def test_shared_config_file_skips_other_scripts_settings_but_not_typos(tmp_path):
    config_file = tmp_path / "shared.py"
    config_file.write_text("BATCH_SIZE = 4\nMIXED_RAIN_FRACTION = 0.3\n")
    others = {"MIXED_RAIN_FRACTION": "Eval_conditional.py"}
    config = resolve_config(DEFAULTS, [str(config_file)], others)
    assert config["BATCH_SIZE"] == 4 and "MIXED_RAIN_FRACTION" not in config
    with pytest.raises(ConfigError, match="MIXED_RAIN_FRACTION is a setting of Eval_conditional.py, not of this"):
        resolve_config(DEFAULTS, ["--MIXED_RAIN_FRACTION=0.3"], others)
    with pytest.raises(ConfigError, match="unknown config key 'MIXED_RAIN_FRACTION'"):
        resolve_config(DEFAULTS, [str(config_file)])


def test_sibling_settings_are_what_the_scripts_beside_one_assign_at_their_top(tmp_path):
    """Read without running them: the UPPER_CASE names each script assigns at module level (not inside a
    function, not lower case), each with its script; the asking script's own are left out."""
    import importlib

    from utils.runtime.config import sibling_settings

    (tmp_path / "A.py").write_text("X = 1\nY: int = 2\nlower = 3\ndef f():\n    Z = 4\n")
    (tmp_path / "B.py").write_text("import sys\nW = [1]  # a comment\nsys.exit(1)\n")
    (tmp_path / "notes.txt").write_text("V = 1\n")
    assert sibling_settings(str(tmp_path / "B.py")) == {"X": "A.py", "Y": "A.py"}
    assert sibling_settings(str(tmp_path / "C.py")) == {"X": "A.py", "Y": "A.py", "W": "B.py"}
    assert sibling_settings(None) == {}
    # The project: every setting of every script in the root, as the scripts' modules hold them.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    declared = set()
    for name in os.listdir(root):
        if name.endswith(".py"):
            declared |= set(script_defaults(vars(importlib.import_module(name[:-3]))))
    assert set(sibling_settings(os.path.join(root, "nothing_here.py"))) == declared


def test_cpu_threads_sets_pytorchs_thread_count_and_none_leaves_it():
    import torch

    from utils.runtime.device import set_cpu_threads

    before = torch.get_num_threads()
    try:
        set_cpu_threads(None)
        assert torch.get_num_threads() == before
        set_cpu_threads(1)
        assert torch.get_num_threads() == 1
        for bad in (0, -2, True, 1.5, "2"):
            with pytest.raises(ValueError, match="CPU_THREADS must be a positive integer or None"):
                set_cpu_threads(bad)
    finally:
        torch.set_num_threads(before)


def _root_scripts() -> dict[str, str]:
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {name[:-3]: os.path.join(root, name) for name in sorted(os.listdir(root)) if name.endswith(".py")}


def _bindings(path: str) -> dict[str, str]:
    """The script's constants written ``KEY = settings.NAME``: KEY -> NAME."""
    import ast

    with open(path) as file:
        tree = ast.parse(file.read())
    return {
        node.targets[0].id: node.value.attr for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Attribute)
        and isinstance(node.value.value, ast.Name) and node.value.value.id == "settings"
    }


# The one shared setting whose default differs by kind of script (kept as it was): evaluation loaders.
OTHER_DEFAULTS = {"DATALOADER_WORKERS": {"EVAL_DATALOADER_WORKERS"}}


def test_a_shared_setting_has_one_default_taken_from_utils_runtime_settings():
    """Every script that declares a setting of utils/runtime/settings.py takes its value from there
    (``KEY = settings.KEY``, so it cannot drift) and has that default."""
    import importlib

    from utils.runtime import settings

    shared = {key for key in vars(settings) if key.isupper()} - {"RETIRED_SETTINGS"}  # a table, not a setting
    declared_by = {}
    for script, path in _root_scripts().items():
        defaults, bindings = script_defaults(vars(importlib.import_module(script))), _bindings(path)
        assert "settings" not in defaults
        for key in shared & set(defaults):
            assert bindings.get(key) in {key} | OTHER_DEFAULTS.get(key, set()), (
                f"{script}.py: {key} is not settings.{key}")
            assert defaults[key] == getattr(settings, bindings[key]), f"{script}.py: {key}"
            declared_by.setdefault(key, []).append(script)
    assert set(declared_by) == shared - {"EVAL_DATALOADER_WORKERS"}  # each is someone's
    assert len(declared_by["IMAGE_SIZE"]) == 6 and len(declared_by["SEED"]) == 5 and len(declared_by["COCO_DIR"]) == 7


def test_an_old_setting_name_in_a_config_file_is_one_line_with_its_new_name(tmp_path):
    import Eval_conditional

    old = tmp_path / "old.py"
    old.write_text('RAIN_DETECTOR_WEIGHTS = "./my_gate.pt"\n')
    with pytest.raises(ConfigError, match=f"config file {old}: RAIN_DETECTOR_WEIGHTS is now called GATE_WEIGHTS"):
        load_config(vars(Eval_conditional), [str(old)], quiet=True)
    assert load_config(vars(Eval_conditional), ["--GATE_WEIGHTS=./my_gate.pt"], quiet=True)["GATE_WEIGHTS"] == (
        "./my_gate.pt")


def test_fractions_outside_zero_to_one_are_refused_naming_the_setting():
    check_fractions({"RANDOM_RAIN": 0.0, "LIBRARY_WEATHER": 1.0}, ("RANDOM_RAIN", "LIBRARY_WEATHER"))
    for value in (-0.1, 1.5):
        with pytest.raises(ConfigError, match=rf"^LIBRARY_WEATHER must be in \[0, 1\], got {value}$"):
            check_fractions({"RANDOM_RAIN": 0.5, "LIBRARY_WEATHER": value}, ("RANDOM_RAIN", "LIBRARY_WEATHER"))
