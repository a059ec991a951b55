"""Every command the docs show passes the configurator's checks: a renamed setting cannot leave a doc behind.

The command lines of README.md and docs/*.md (fenced code blocks and inline backticks) that run one of
the project's configurable scripts (``python SCRIPT.py``, ``python -m benchmarks.bench``,
``.venv/bin/python ...``, ``torchrun [its options] SCRIPT.py``, or a bare ``SCRIPT.py configs/...`` in
prose) have their config files and ``--KEY=value`` items run through
``utils.runtime.config.resolve_config`` with the defaults the script's own ``load_config`` uses
(``script_defaults`` of its module, and ``sibling_settings`` of its file: the other scripts' keys a
config file may set). No model is loaded: the scripts' defaults are read in one fresh
process, which also checks that importing a root script does not import torch.

Skipped: other programs (pytest, pip, tools/*.py with their own argparse), ``--help`` and other
arguments that are neither a config file nor ``--KEY=value``, and shell placeholders (``<dir>``,
``...``, ``$VAR``): a ``--KEY=<placeholder>`` still has its key checked (as ``--KEY=None``, which every
key accepts).
"""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass

import pytest

from utils.runtime.config import ConfigError, resolve_config, sibling_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "docs", "*.md")))

PLACEHOLDER = "__PLACEHOLDER__"
_ANGLE_PLACEHOLDER = re.compile(r"<[A-Za-z_][^<>\s]*>")  # <dir>, <world>/seed<s>
_REDIRECTION = re.compile(r"(?<!\S)\d?(?:>>?|<)&?\s*\S+")  # > log.txt, 2>&1, >> out
_ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")
_SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
_WRAPPERS = {"nohup", "time", "env", "exec"}
_PLACEHOLDER_VALUES = {"", "..", "...", "…", "value"}


@dataclass(frozen=True)
class DocCommand:
    doc: str  # README.md, docs/NAME.md
    line: int  # 1-based, where the command starts
    text: str  # as shown (continuations joined)
    script: str  # a path relative to the repository root, or a module name (benchmarks.bench)
    argv: tuple[str, ...]  # what the script's load_config would see, placeholders as PLACEHOLDER

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}:{self.script}"


def candidate_texts(markdown: str) -> list[tuple[int, str]]:
    """(line, text) of every fenced code block line (``\\`` continuations joined) and every inline code span."""
    candidates = []
    lines = markdown.split("\n")
    prose = []  # the lines outside fences, fenced ones blanked so the line numbers stay
    fence = None
    pending, pending_line = "", 0
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if fence is None and re.match(r"(```|~~~)", stripped):
            fence = stripped[:3]
            prose.append("")
            continue
        if fence is not None:
            prose.append("")
            if stripped.startswith(fence):
                fence = None
                continue
            if not pending:
                pending_line = number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            candidates.append((pending_line, pending + stripped))
            pending = ""
            continue
        prose.append(line)
    # Inline code spans do not cross a blank line (a paragraph break), but may cross a line break.
    text = "\n".join(prose)
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        span = match.group(1)
        if "\n\n" in span or re.search(r"\n\s*\n", span):
            continue
        candidates.append((text.count("\n", 0, match.start()) + 1, " ".join(span.split())))
    return candidates


def _tokens(text: str) -> list[str] | None:
    text = _ANGLE_PLACEHOLDER.sub(PLACEHOLDER, text)
    text = _REDIRECTION.sub(" ", text)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote: prose, not a command
        return None


def _segments(tokens: list[str]) -> list[list[str]]:
    segments, current = [], []
    for token in tokens:
        if token in _SEPARATORS:
            segments.append(current)
            current = []
        else:
            current.append(token)
    return [segment for segment in segments + [current] if segment]


def _is_root_script(script: str) -> bool:
    return script.endswith(".py") and "/" not in script


def _is_python(token: str) -> bool:
    return re.fullmatch(r"(?:\S*/)?python(?:3(?:\.\d+)?)?", token) is not None


def _configurable(script: str) -> bool:
    """A script of this repository whose settings go through load_config."""
    path = _script_path(script)
    if path is None or not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as file:
        return "load_config(" in file.read()


def _script_path(script: str) -> str | None:
    if script.endswith(".py"):
        return os.path.join(ROOT, script)
    if re.fullmatch(r"[A-Za-z_][\w.]*", script):  # a module name: python -m benchmarks.bench
        return os.path.join(ROOT, *script.split(".")) + ".py"
    return None


def _find_script(segment: list[str]) -> tuple[str, list[str]] | None:
    """(script, its arguments) of one shell command, or None when it runs none of the project's scripts."""
    tokens = list(segment)
    while tokens and (tokens[0] in _WRAPPERS or _ENV_ASSIGNMENT.fullmatch(tokens[0])):
        tokens.pop(0)
    if not tokens:
        return None
    head, rest = tokens[0], tokens[1:]
    if _is_python(head):
        while rest and rest[0] in ("-u", "-O", "-B", "-E", "-s"):
            rest.pop(0)
        if not rest:
            return None
        if rest[0] == "-m":
            if len(rest) < 2:
                return None
            if rest[1] == "torch.distributed.run":
                return _after_torchrun(rest[2:])
            return rest[1], rest[2:]
        if rest[0].startswith("-"):  # -c CODE and the like
            return None
        return rest[0], rest[1:]
    if head == "torchrun":
        return _after_torchrun(rest)
    if _is_root_script(head) and rest and rest[0].startswith(("--", "configs/")):
        return head, rest  # `Training_SPDNet_Adaptation.py configs/demo.py` in prose (not a list of script names)
    return None


def _after_torchrun(tokens: list[str]) -> tuple[str, list[str]] | None:
    """torchrun's own options come first; the script is the first .py (or, with -m, the first module name)."""
    module = False
    for index, token in enumerate(tokens):
        if token in ("-m", "--module"):
            module = True
        elif token.startswith("-"):
            continue
        elif token.endswith(".py") or (module and _configurable(token)):
            return token, tokens[index + 1:]
    return None


def _is_placeholder(text: str) -> bool:
    return (PLACEHOLDER in text or text.strip() in _PLACEHOLDER_VALUES or "$" in text
            or text.endswith("...") or text.endswith("…"))


def _arguments(arguments: list[str]) -> tuple[str, ...]:
    """The config files and --KEY=value items, in order; a placeholder value is checked as None."""
    kept = []
    for argument in arguments:
        if argument.startswith("--"):
            key, separator, value = argument[2:].partition("=")
            if not separator or not re.fullmatch(r"[A-Z][A-Z0-9_]*", key) or key == "KEY":
                continue  # --help, or the generic --KEY=value of a usage line
            kept.append(f"--{key}=None" if _is_placeholder(value) else argument)
        else:
            path = argument.strip("[]")
            if path.endswith(".py") and not _is_placeholder(path) and "NAME" not in path:
                kept.append(path)
    return tuple(kept)


def doc_commands(docs: list[str] = DOCS) -> list[DocCommand]:
    commands = []
    for doc in docs:
        with open(os.path.join(ROOT, doc), encoding="utf-8") as file:
            markdown = file.read()
        for line, text in candidate_texts(markdown):
            tokens = _tokens(text)
            if not tokens:
                continue
            for segment in _segments(tokens):
                found = _find_script(segment)
                if found is None:
                    continue
                script, arguments = found
                if not _configurable(script):
                    continue
                commands.append(DocCommand(doc, line, text, script, _arguments(arguments)))
    return commands


COMMANDS = doc_commands()


def _ids(commands: list[DocCommand]) -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for command in commands:
        seen[command.id] = seen.get(command.id, 0) + 1
        ids.append(command.id if seen[command.id] == 1 else f"{command.id}#{seen[command.id]}")
    return ids


_DEFAULTS_PROBE = r"""
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
from utils.runtime.config import script_defaults
out = {}
for name in json.loads(sys.argv[2]):
    module = importlib.import_module(name)
    out[name] = {"defaults": repr(script_defaults(vars(module))), "torch": "torch" in sys.modules}
print(json.dumps(out))
"""


def _module_name(script: str) -> str:
    return script[:-3].replace("/", ".") if script.endswith(".py") else script


@pytest.fixture(scope="module")
def script_settings() -> dict[str, dict]:
    """Each documented script's defaults, as its load_config builds them, read in a fresh process;
    root scripts first, so that "torch" says whether importing that script (or one before it) loaded torch."""
    scripts = sorted({command.script for command in COMMANDS} | {"Make_COCO_Rain.py"},
                     key=lambda script: (not _is_root_script(script), script))
    modules = [_module_name(script) for script in scripts]
    result = subprocess.run([sys.executable, "-c", _DEFAULTS_PROBE, ROOT, json.dumps(modules)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    probed = json.loads(result.stdout)
    settings = {}
    for script, module in zip(scripts, modules):
        settings[script] = {"defaults": ast.literal_eval(probed[module]["defaults"]),
                            "others": sibling_settings(_script_path(script)), "torch": probed[module]["torch"]}
    return settings


def test_the_docs_show_commands():
    """The extractor finds the docs' commands (an empty list would make every check below vacuous)."""
    assert len(COMMANDS) >= 40, [command.id for command in COMMANDS]
    assert {command.doc for command in COMMANDS} >= {"README.md", "docs/training.md", "docs/data.md"}


def test_root_scripts_import_without_torch(script_settings):
    """Reading a root script's settings loads no model: the scripts import the library inside main()."""
    heavy = [script for script, probed in script_settings.items() if _is_root_script(script) and probed["torch"]]
    assert not heavy, f"importing {heavy} imports torch"


@pytest.mark.parametrize("command", COMMANDS, ids=_ids(COMMANDS))
def test_documented_command_passes_the_configurator(command: DocCommand, script_settings, monkeypatch):
    monkeypatch.chdir(ROOT)  # config files are given relative to the repository root
    try:
        settings = script_settings[command.script]
        resolve_config(settings["defaults"], list(command.argv), settings["others"])
        problem = None
    except ConfigError as error:
        problem = str(error)
    if problem is not None:
        pytest.fail(f"{command.doc}:{command.line}: `{command.text}`\n  {problem}", pytrace=False)


def test_extractor_on_a_sample():
    sample = "\n".join([
        "Run `python Make_COCO_Rain.py --RAIN_SEED=3` or `Eval_conditional.py",
        "configs/demo.py --SOFT_ROUTING=True`; `python tools/demo_table.py --worlds 0` is argparse.",
        "",
        "```bash",
        "CUDA_VISIBLE_DEVICES=0,1 torchrun --nproc_per_node=2 --master_port 29501 Training_SPDNet_Adaptation.py \\",
        "    configs/small_gpu.py --OUTPUT_DIR=<dir> --NUM_EPOCHS=2 > log.txt 2>&1   # comment --NOT=1",
        "python -m benchmarks.bench --help && .venv/bin/python Check_Data.py --SPLITS=\"['val']\"",
        ".venv/bin/python -m pytest -q",
        "```",
    ])
    commands = []
    for line, text in candidate_texts(sample):
        for segment in _segments(_tokens(text) or []):
            found = _find_script(segment)
            if found and _configurable(found[0]):
                commands.append((line, found[0], _arguments(found[1])))
    assert commands == [
        (5, "Training_SPDNet_Adaptation.py", ("configs/small_gpu.py", "--OUTPUT_DIR=None", "--NUM_EPOCHS=2")),
        (7, "benchmarks.bench", ()),
        (7, "Check_Data.py", ("--SPLITS=['val']",)),
        (1, "Make_COCO_Rain.py", ("--RAIN_SEED=3",)),
        (1, "Eval_conditional.py", ("configs/demo.py", "--SOFT_ROUTING=True")),
    ]


def test_a_stale_setting_fails(script_settings):
    """What the check is for: Make_COCO_Rain.py's rain seed is RAIN_SEED, and a doc that still said
    SEED, or gave COCO_RAIN_DIR as a list, would fail."""
    defaults = script_settings["Make_COCO_Rain.py"]["defaults"]
    with pytest.raises(ConfigError, match="unknown config key 'SEED'"):
        resolve_config(defaults, ["--SEED=0"])
    with pytest.raises(ConfigError, match="COCO_RAIN_DIR must be str"):
        resolve_config(defaults, ["--COCO_RAIN_DIR=['./data/rain_a', './data/rain_b']"])
