"""The configuration mechanism every script shares (nanoGPT's idea, made strict).

Each script keeps its settings as UPPER_CASE constants at the top, one comment each. They can be
overridden, in this order, by config files and by ``--KEY=value`` arguments::

    python Training_SPDNet_Adaptation.py configs/demo.py --BATCH_SIZE=4 --DETECTOR=None

A config file is a Python file that assigns some of those constants; a ``--KEY=value`` is parsed
with ``ast.literal_eval`` (so ``4``, ``1e-4``, ``True``, ``None``, ``[1, 2]``) and taken as a plain
string when it is not a Python literal, never executed. Unknown keys and values whose type differs
from the default's are errors that name the key; ``None`` is accepted for every key. One config
file may serve several scripts (configs/demo.py does): a key in it that this script lacks is skipped
when another script of the project declares it (``PROJECT_SETTINGS``), and an error otherwise (a typo).
A script that can prepare the CPU demo also takes the demo's settings (``extra_defaults``).
"""

from __future__ import annotations

import ast
import difflib
import os
import re
import runpy
import sys
from typing import Any, Callable, Mapping, Sequence

from utils.runtime import demo_settings
from utils.runtime.demo_settings import demo_defaults
from utils.runtime.errors import SettingError, UserError
from utils.runtime.settings_help import DEMO_SETTINGS_TITLE, SETTING_NAME, help_text


class ConfigError(SettingError):
    """A config file or --KEY=value that names an unknown key or gives a value of the wrong type."""


_CONFIG_VALUE_TYPES = (bool, int, float, str, list, tuple, dict, type(None))


def script_defaults(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The UPPER_CASE constants of a script's globals: its configurable settings."""
    return {
        key: value
        for key, value in namespace.items()
        if SETTING_NAME.fullmatch(key) and isinstance(value, _CONFIG_VALUE_TYPES)
    }


# Every setting of the scripts in the project's root, declared here so that a config file shared by
# several scripts (configs/demo.py serves seven) may set a key that only some of them have: the others
# skip it, and a key no script has is an error (a typo). tests/test_config.py checks that this
# matches the scripts' constants; the DEMO_* settings are utils/runtime/demo_settings.py's.
PROJECT_SETTINGS = frozenset({
    # Training_SPDNet_Adaptation.py
    "COCO_DIR", "COCO_RAIN_DIR", "PERCENT_DATASET", "COCO_RATIO", "RAIN_RATIO", "VAL_PERCENT", "IMAGE_SIZE",
    "DETECTOR", "SPDNET_WEIGHTS", "SPDNET_N_FEATS", "SPDNET_N_RESBLOCKS", "NUM_EPOCHS", "BATCH_SIZE",
    "GRADIENT_ACCUMULATION_STEPS", "LEARNING_RATE", "WEIGHT_DECAY", "WARMUP_STEPS", "MIN_LR_RATIO",
    "GRAD_CLIP_NORM", "EARLY_STOPPING_PATIENCE", "MAX_NONFINITE_IN_A_ROW", "MAX_STEPS", "FP16", "PRECISION",
    "GRADIENT_CHECKPOINTING", "CHANNELS_LAST", "COMPILE", "DEVICE", "CPU_THREADS", "DATALOADER_WORKERS", "SEED",
    "OUTPUT_DIR", "PREPARE_DEMO", "RESUME", "CHECKPOINT_EVERY_STEPS", "LOG_EVERY_STEPS", "EVAL_BEFORE_TRAINING",
    "DETECTION_LOSS_WEIGHT", "FEATURE_LOSS_WEIGHT", "PIXEL_LOSS_WEIGHT", "HOLDOUT_FAMILY", "RANDOM_RAIN",
    "KEEP_CHECKPOINTS", "AUTO_MICRO_BATCH",
    # Eval_SPDNet_Adaptation.py
    "EVAL_CLEAN", "IMAGE_QUALITY", "ADAPTED_WEIGHTS", "NUM_EXAMPLES",
    # Eval_conditional.py
    "MIXED_RAIN_FRACTION", "HOLDOUT_FAMILY", "HOLDOUT_RAIN_DIR", "GATE_WEIGHTS", "SOFT_ROUTING",
    "ORACLE_REPORT",
    # Infer.py
    "INPUT", "OUTPUT", "SCORE_THRESHOLD", "ROUTING",
    # Training_Rain_Detector.py
    "EPOCH_VARIANTS", "RANDOM_RAIN", "AUGMENT_BLUR", "AUGMENT_JPEG", "AUGMENT_JITTER", "AUGMENT_NOISE",
    "ARCHITECTURE", "IMAGENET_WEIGHTS", "INPUT_SIZE", "GATE_IMAGE_SIZE", "GATE_PERCENT_DATASET", "GATE_VAL_PERCENT",
    "GATE_NUM_EPOCHS", "GATE_BATCH_SIZE", "GATE_LEARNING_RATE",
    # Training_Utility_Gate.py
    "UTILITY_MODE", "UTILITY_MARGIN",
    # Check_Data.py, Make_COCO_Rain.py, Make_Synthetic_World.py
    "SPLITS", "CHECK", "BENCHMARK_IMAGES", "PRESETS", "VARIANTS_PER_PRESET", "WORKERS", "JPEG_QUALITY", "LIMIT",
    "RAIN_SEED", "WORLD_DIR", "NUM_TRAIN", "NUM_VAL", "MAX_OBJECTS", "WORLD_IMAGE_SIZE", "WORLD_SEED",
})


# Settings that have a new name: the old one, on the command line or in a config file, is refused in one
# line that gives the new name.
RENAMED_SETTINGS = {
    "RAIN_DETECTOR_WEIGHTS": "GATE_WEIGHTS",  # it takes a rain gate or a utility gate; "detector" is the frozen one
}


def shared_setting_names() -> frozenset[str]:
    """The keys a config file may set whatever script reads it: every script's, and the demo's."""
    return PROJECT_SETTINGS | set(demo_defaults())


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_value(key: str, value: Any, default: Any, source: str) -> Any:
    """``value`` if it fits the type of ``default`` (ints widen to float), else a ConfigError."""
    if value is None or default is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        if isinstance(default, bool) and isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, (int, float)):
        return float(value)
    elif isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(default)(value)
    elif type(value) is type(default):
        return value
    raise ConfigError(
        f"{source}: {key} must be {_type_name(default)} (default {default!r}), "
        f"got {_type_name(value)} {value!r}"
    )


def parse_cli_value(text: str) -> Any:
    """A Python literal when ``text`` is one, else the string itself (paths, hub ids)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _unknown_key_error(key: str, defaults: Mapping[str, Any], source: str) -> ConfigError:
    if key in RENAMED_SETTINGS:
        return ConfigError(f"{source}: {key} is now called {RENAMED_SETTINGS[key]}: set {RENAMED_SETTINGS[key]} "
                           "instead (same meaning)")
    close = difflib.get_close_matches(key, list(defaults), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"{source}: unknown config key {key!r}.{hint} Known keys: {', '.join(sorted(defaults))}")


def resolve_config(
    defaults: Mapping[str, Any], argv: Sequence[str], other_scripts_keys: set[str] | None = None
) -> dict[str, Any]:
    """Apply config files and ``--KEY=value`` overrides from ``argv`` to ``defaults``.

    Args:
        defaults: the script's constants (``script_defaults(globals())``).
        argv: command-line arguments without the program name: paths of ``.py`` config files and
            ``--KEY=value`` items, applied left to right.
        other_scripts_keys: settings of the project's other scripts, which a config file may set
            without error (they are skipped here); None means ``shared_setting_names()``.

    Returns:
        A new dict with every key of ``defaults``, overrides applied and type-checked.
    """
    config = dict(defaults)
    for argument in argv:
        if argument.startswith("--"):
            key, separator, text = argument[2:].partition("=")
            if not separator:
                raise ConfigError(f"command line: {argument!r} must be --KEY=value")
            if key not in defaults:
                raise _unknown_key_error(key, defaults, "command line")
            config[key] = check_value(key, parse_cli_value(text), defaults[key], "command line")
        else:
            if not argument.endswith(".py"):
                raise ConfigError(f"command line: {argument!r} is neither a configs/*.py file nor --KEY=value")
            if not os.path.isfile(argument):
                raise ConfigError(f"config file {argument!r} does not exist")
            assigned = {
                key: value for key, value in runpy.run_path(argument).items() if not key.startswith("_")
            }
            for key, value in assigned.items():
                if not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
                    continue  # imports and helper names inside a config file are not settings
                if key not in defaults:
                    if other_scripts_keys is None:
                        other_scripts_keys = shared_setting_names()
                    if key in other_scripts_keys:
                        continue
                    raise _unknown_key_error(key, defaults, f"config file {argument}")
                config[key] = check_value(key, value, defaults[key], f"config file {argument}")
    return config


def format_config(config: Mapping[str, Any]) -> str:
    width = max((len(key) for key in config), default=0)
    return "\n".join(f"  {key:<{width}} = {value!r}" for key, value in sorted(config.items()))


def load_config(
    namespace: Mapping[str, Any], argv: Sequence[str] | None = None, quiet: bool = False,
    extra_defaults: Mapping[str, Any] | None = None, extra_source: str | None = None,
    extra_title: str = DEMO_SETTINGS_TITLE,
) -> dict[str, Any]:
    """What a script calls: its constants, overridden from the command line, printed, returned.

    ``extra_defaults``: settings the script takes besides its own constants (the demo's, for the
    scripts that can prepare it); they are printed only where they differ from their defaults.
    ``--help`` prints each setting's default and the comment beside it in its source (the script's,
    ``namespace["__file__"]``), grouped as there, then the extra settings under ``extra_title``,
    explained by ``extra_source`` (None: utils/runtime/demo_settings.py), and exits.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    own = script_defaults(namespace)
    extra = dict(extra_defaults or {})
    defaults = {**extra, **own}
    if any(argument in ("-h", "--help") for argument in argv):
        print(help_text(namespace, own, extra, extra_source or demo_settings.__file__, extra_title))
        raise SystemExit(0)
    config = resolve_config(defaults, argv)
    if not quiet:
        shown = {key: value for key, value in config.items() if key in own or value != extra[key]}
        print("config:\n" + format_config(shown), flush=True)
    return config


def command_line(main: Callable[[], Any]) -> Any:
    """``main()`` for the shell: a UserError (utils/runtime/errors.py: a setting, a path, the data, a
    full disk) ends the run with one line and exit code 1; any other exception is a bug and keeps its
    traceback."""
    try:
        return main()
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
