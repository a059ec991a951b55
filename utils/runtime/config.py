"""The configuration mechanism every script shares (nanoGPT's idea, made strict).

Each script keeps its settings as UPPER_CASE constants at the top, one comment each. They can be
overridden, in this order, by config files and by ``--KEY=value`` arguments::

    python Training_SPDNet_Adaptation.py configs/demo.py --BATCH_SIZE=4 --DETECTOR=None

A config file is a Python file that assigns some of those constants; a ``--KEY=value`` is parsed
with ``ast.literal_eval`` (so ``4``, ``1e-4``, ``True``, ``None``, ``[1, 2]``) and taken as a plain
string when it is not a Python literal, never executed. Unknown keys and values whose type differs
from the default's are errors that name the key; ``None`` is accepted for every key. One config
file may serve several scripts (configs/demo.py does): a key in it that this script lacks is skipped
when a script beside it declares it (``sibling_settings`` reads them), and an error otherwise (a typo).
"""

from __future__ import annotations

import ast
import difflib
import os
import runpy
import sys
from typing import Any, Callable, Mapping, Sequence

from utils.runtime.errors import SettingError, UserError
from utils.runtime.settings import RETIRED_SETTINGS
from utils.runtime.settings_help import SETTING_NAME, help_text


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


def _settings_declared_in(path: str) -> set[str]:
    """The UPPER_CASE names a script assigns at its top level (its settings), read without running it."""
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read(), path)
    names = set()
    for node in tree.body:
        annotated = [node.target] if isinstance(node, ast.AnnAssign) else []
        targets = node.targets if isinstance(node, ast.Assign) else annotated
        names |= {target.id for target in targets
                  if isinstance(target, ast.Name) and SETTING_NAME.fullmatch(target.id)}
    return names


def sibling_settings(script: str | None) -> dict[str, str]:
    """Every setting of the scripts beside ``script`` (the project's root), each with the script that
    declares it: a config file shared by several scripts (configs/demo.py serves seven) may set a key that
    only some of them have, the others skip it; a key that none of them has is an error (a typo).
    ``script`` None (a namespace without ``__file__``): none."""
    if not script:
        return {}
    folder, own = os.path.dirname(os.path.abspath(script)), os.path.basename(script)
    declared: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py") and name != own:
            for key in _settings_declared_in(os.path.join(folder, name)):
                declared.setdefault(key, name)
    return declared


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


def check_fractions(config: Mapping[str, Any], keys: Sequence[str]) -> None:
    """Each of ``keys`` refused in one line unless its value is in [0, 1] (before any data is read)."""
    for key in keys:
        if not 0 <= config[key] <= 1:
            raise ConfigError(f"{key} must be in [0, 1], got {config[key]}")


def parse_cli_value(text: str) -> Any:
    """A Python literal when ``text`` is one, else the string itself (paths, hub ids)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _unknown_key_error(key: str, defaults: Mapping[str, Any], source: str, others: Mapping[str, str]) -> ConfigError:
    if key in RETIRED_SETTINGS:
        return ConfigError(f"{source}: {key} {RETIRED_SETTINGS[key]}")
    close = difflib.get_close_matches(key, list(defaults), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    if key in others:
        return ConfigError(f"{source}: {key} is a setting of {others[key]}, not of this script.{hint}")
    return ConfigError(f"{source}: unknown config key {key!r}.{hint} Known keys: {', '.join(sorted(defaults))}")


def resolve_config(
    defaults: Mapping[str, Any], argv: Sequence[str], other_scripts: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Apply config files and ``--KEY=value`` overrides from ``argv`` to ``defaults``.

    Args:
        defaults: the script's constants (``script_defaults(globals())``).
        argv: command-line arguments without the program name: paths of ``.py`` config files and
            ``--KEY=value`` items, applied left to right.
        other_scripts: settings of the project's other scripts (``sibling_settings``), each with its
            script: a config file may set them (they are skipped here), the command line may not.

    Returns:
        A new dict with every key of ``defaults``, overrides applied and type-checked.
    """
    config, other_scripts = dict(defaults), dict(other_scripts or {})
    for argument in argv:
        if argument.startswith("--"):
            key, separator, text = argument[2:].partition("=")
            if not separator:
                raise ConfigError(f"command line: {argument!r} must be --KEY=value")
            if key not in defaults:
                raise _unknown_key_error(key, defaults, "command line", other_scripts)
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
                if not SETTING_NAME.fullmatch(key):
                    continue  # imports and helper names inside a config file are not settings
                if key not in defaults:
                    if key in other_scripts:
                        continue
                    raise _unknown_key_error(key, defaults, f"config file {argument}", other_scripts)
                config[key] = check_value(key, value, defaults[key], f"config file {argument}")
    return config


def format_config(config: Mapping[str, Any]) -> str:
    width = max((len(key) for key in config), default=0)
    return "\n".join(f"  {key:<{width}} = {value!r}" for key, value in sorted(config.items()))


def load_config(namespace: Mapping[str, Any], argv: Sequence[str] | None = None, quiet: bool = False) -> dict[str, Any]:
    """What a script calls: its constants, overridden from the command line, printed, returned.

    A config file may also set the settings of the scripts beside it (``sibling_settings``), which
    this one skips. ``--help`` prints each setting's default and the comment beside it in the
    script's source (``namespace["__file__"]``), grouped as there, and exits.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    defaults = script_defaults(namespace)
    if any(argument in ("-h", "--help") for argument in argv):
        print(help_text(namespace, defaults))
        raise SystemExit(0)
    config = resolve_config(defaults, argv, sibling_settings(namespace.get("__file__")))
    if not quiet:
        print("config:\n" + format_config(config), flush=True)
    return config


def command_line(main: Callable[[], Any]) -> Any:
    """``main()`` for the shell: a UserError (utils/runtime/errors.py: a setting, a path, the data, a
    full disk) ends the run with one line and exit code 1; any other exception is a bug and keeps its
    traceback."""
    try:
        return main()
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
