"""``--help`` explains every setting: its default and the comment written beside it, grouped and ordered as in
the script, and none but the script's own (the demo's DEMO_* are Make_Demo.py's alone).

The root scripts run as real command lines (``--help`` must answer before torch is imported, so these
subprocesses are cheap). The benchmarks import torch before their settings are read (their modules import
utils/runtime/checkpoint.py), so their ``--help`` is the call their ``main`` makes, in this process.
The expected comments come from a plain line-by-line reading of each source, independent of the one
utils/runtime/config.py makes with ``tokenize``.
"""

import ast
import importlib
import os
import re

import pytest

from utils.runtime.config import load_config
from tests.test_errors import run_script
from utils.runtime.settings_help import declared_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = [
    "Training_SPDNet_Adaptation.py", "Eval_SPDNet_Adaptation.py", "Eval_conditional.py", "Infer.py",
    "Training_Rain_Detector.py", "Training_Utility_Gate.py", "Check_Data.py", "Make_COCO_Rain.py",
    "Make_Synthetic_World.py", "Make_Demo.py",
]
BENCHMARKS = ["benchmarks.bench", "benchmarks.bench_objectives", "benchmarks.bench_precision",
              "benchmarks.bench_routers"]
SETTING_LINE = re.compile(r"([A-Z][A-Z0-9_]*) = (.*)")
KEY_LINE = re.compile(r"  ([A-Z][A-Z0-9_]*) = ")


def read_source(path: str) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """([(key, group, comment, value text)] of the top-level settings, [group titles]), read line by line:
    a "# ---- title" line starts a group; "#   " lines right below a setting continue its comment."""
    settings, titles, group, continuing = [], [], "", False
    with open(os.path.join(ROOT, path), encoding="utf-8") as file:
        for line in file.read().splitlines():
            setting = SETTING_LINE.match(line)
            if line.startswith("# ----"):
                group = line[len("# ----"):].strip()
                titles.append(group)
                continuing = False
            elif setting:
                value, _, comment = setting.group(2).partition("  # ")
                settings.append((setting.group(1), group, comment.strip(), value.strip()))
                continuing = bool(comment)
            elif continuing and line.startswith("#   "):
                key, group_of_key, comment, value = settings[-1]
                settings[-1] = (key, group_of_key, f"{comment} {line[4:].strip()}", value)
            else:
                continuing = False
    return settings, titles


def read_help(output: str) -> tuple[list[str], dict[str, tuple[str, list[str]]], list[str]]:
    """([keys in printed order], {key: (the title above it, its lines)}, [title lines]) of a --help."""
    keys, blocks, titles, title = [], {}, [], ""
    for line in output.splitlines():
        key = KEY_LINE.match(line)
        if line and not line.startswith(" "):
            title = line
            titles.append(line)
        elif key:
            keys.append(key.group(1))
            blocks[key.group(1)] = (title, [line])
        elif line.startswith("  ") and keys:
            blocks[keys[-1]][1].append(line)
    return keys, blocks, titles


def words(text: str) -> str:
    return " ".join(text.split())


def check_settings(settings, blocks, printed_keys) -> None:
    """Each setting printed with its default (when a literal) and its comment (alone when it has none),
    under its group's title, in the source's order."""
    headers = {f"{group}:" for _, group, _, _ in settings if group}
    assert printed_keys == [key for key, _, _, _ in settings]
    for key, group, comment, value in settings:
        title, lines = blocks[key]
        assert title == f"{group}:" if group else title not in headers, (key, title)
        if comment:
            assert words(comment) in words(" ".join(lines)), (key, lines)
        else:
            assert len(lines) == 1, (key, lines)  # the default alone
        try:
            default = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            continue  # settings.X, a value spanning lines: not checked here
        assert lines[0] == f"  {key} = {default!r}", (key, lines)


def check_help(path: str, output: str) -> None:
    settings, group_titles = read_source(path)
    printed_keys, blocks, titles = read_help(output)
    assert titles[0].startswith("usage: python "), titles[0]
    check_settings(settings, blocks, printed_keys)
    positions = [titles.index(f"{title}:") for title in group_titles]
    assert positions == sorted(positions), group_titles
    for line in output.splitlines():
        assert KEY_LINE.match(line) or line.startswith("usage:") or len(line) <= 100, line
    if not path.endswith("Make_Demo.py"):
        assert not any(key.startswith("DEMO_") for key in printed_keys)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_explains_every_setting_before_torch_is_imported(script):
    result = run_script(script, "--help")
    assert result.returncode == 0, result.stderr
    output, _, probe = result.stdout.rstrip().rpartition("\n")
    assert probe == "torch not imported"
    assert output.startswith(f"usage: python {script} ")
    check_help(script, output)


@pytest.mark.parametrize("module_name", BENCHMARKS)
def test_benchmark_help_explains_every_setting(module_name, capsys):
    module = importlib.import_module(module_name)
    with pytest.raises(SystemExit) as exit_info:
        load_config(vars(module), ["--help"])
    assert exit_info.value.code == 0
    output = capsys.readouterr().out
    assert output.startswith(f"usage: python -m {module_name} ")
    check_help(module_name.replace(".", os.sep) + ".py", output)


def test_declared_settings_reads_groups_comments_and_their_continuations():
    source = (
        '"""A docstring: NOT_A_SETTING = 1  # no"""\n'
        "import os\n"
        "# ---- data\n"
        'PATH = "a#b"  # a path;\n'
        "#   continued here\n"
        "#   and here\n"
        "\n"
        "# a lone comment, no continuation\n"
        "NO_COMMENT = 1\n"
        "# not NO_COMMENT's either\n"
        "# ---- more: a title -----\n"
        "TABLE = {  # a table\n"
        "    'x': 1,  # not the table's comment\n"
        "}\n"
        "lower = 2  # not a setting\n"
        "def f():\n"
        "    INNER = 3  # not a setting\n"
        "    # nor this\n"
    )
    declarations = declared_settings(source)
    assert list(declarations) == ["PATH", "NO_COMMENT", "TABLE"]
    assert declarations["PATH"] == ("data", "a path; continued here and here")
    assert declarations["NO_COMMENT"] == ("data", "")
    assert declarations["TABLE"] == ("more: a title", "a table")
