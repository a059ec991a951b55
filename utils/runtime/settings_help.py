"""``--help`` that explains: each setting's default and the comment its source file writes beside it,
grouped under the source's ``# ---- title`` headers. The comments are read from the source with
``tokenize``; nothing is imported."""

from __future__ import annotations

import io
import itertools
import os
import pprint
import re
import textwrap
import tokenize
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

SETTING_NAME = re.compile(r"[A-Z][A-Z0-9_]*")

HELP_WIDTH = 100  # columns --help wraps the comments and group titles at
_GROUP_HEADER = re.compile(r"#\s*-{3,}\s*(.*?)[\s-]*")  # "# ---- data" starts the group "data"


class Declaration(NamedTuple):
    """A setting as its source file declares it."""

    group: str  # the title of the "# ---- title" comment above it ("" before the first one)
    comment: str  # the comment beside it, its continuation lines joined ("" when it has none)


def _setting_line(tokens: list[tokenize.TokenInfo]) -> tuple[str, str, str]:
    """("setting", NAME, its first line's comment) for a top-level ``NAME = ...`` statement, else ("other", "", "")."""
    first = tokens[0]
    if (first.type != tokenize.NAME or first.start[1] != 0 or not SETTING_NAME.fullmatch(first.string)
            or len(tokens) < 2 or tokens[1].string not in ("=", ":")):
        return "other", "", ""
    comment = next((t.string for t in tokens if t.type == tokenize.COMMENT and t.start[0] == first.start[0]), "")
    return "setting", first.string, comment


def _source_lines(source: str) -> Iterator[tuple[str, str, str]]:
    """(kind, name, comment) for each statement and lone line of ``source``, in order: "setting" (see
    ``_setting_line``), "comment" (a comment alone on its line, from column 0), "other" (anything else:
    another statement, a blank line, an indented comment)."""
    statement: list[tokenize.TokenInfo] = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            continue
        if statement:
            if token.type == tokenize.NEWLINE:
                yield _setting_line(statement)
                statement = []
            else:
                statement.append(token)
        elif token.type == tokenize.COMMENT and token.start[1] == 0:
            yield "comment", "", token.string
        elif token.type == tokenize.NL and not token.line.strip():
            yield "other", "", ""  # a blank line
        elif token.type not in (tokenize.NL, tokenize.COMMENT):
            statement.append(token)


def _comment_text(comment: str) -> str:
    return comment.lstrip("#").strip()


def declared_settings(source: str) -> dict[str, Declaration]:
    """The UPPER_CASE settings a Python source assigns at its top level, in its order, each with its group
    and comment: the comment on its line, continued by the comment lines right below it."""
    declarations: dict[str, Declaration] = {}
    group, continued = "", None  # continued: the setting the next comment line continues
    for kind, name, comment in _source_lines(source):
        header = _GROUP_HEADER.fullmatch(comment) if kind == "comment" else None
        if header:
            group, continued = header.group(1), None
        elif kind == "comment" and continued:
            joined = f"{declarations[continued].comment} {_comment_text(comment)}"
            declarations[continued] = declarations[continued]._replace(comment=joined)
        elif kind == "setting":
            declarations[name] = Declaration(group, _comment_text(comment))
            continued = name if comment else None
        else:
            continued = None
    return declarations


def declarations_in(path: str | None) -> dict[str, Declaration]:
    """``declared_settings`` of the file at ``path``; {} when there is none or it cannot be read."""
    if not path:
        return {}
    try:
        with tokenize.open(path) as file:
            return declared_settings(file.read())
    except (OSError, SyntaxError, tokenize.TokenError):
        return {}


def _format_default(head: str, value: Any) -> str:
    """``head`` then ``value``'s repr; a list, tuple or dict too long for HELP_WIDTH wraps, aligned after ``head``."""
    if not isinstance(value, (list, tuple, dict)) or len(head) + len(repr(value)) <= HELP_WIDTH:
        return f"{head}{value!r}"
    text = pprint.pformat(value, width=max(HELP_WIDTH - len(head), 40), compact=True, sort_dicts=False)
    return head + text.replace("\n", "\n" + " " * len(head))


def _format_setting(key: str, value: Any, comment: str) -> str:
    lines = [_format_default(f"  {key} = ", value)]
    if comment:
        lines.append(textwrap.fill(comment, HELP_WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6,
                                   break_long_words=False, break_on_hyphens=False))
    return "\n".join(lines)


def _format_section(title: str, settings: Sequence[tuple[str, Any, str]]) -> str:
    """A titled block of settings (no title line when ``title`` is empty)."""
    lines = [textwrap.fill(f"{title}:", HELP_WIDTH, subsequent_indent="  ", break_on_hyphens=False)] if title else []
    return "\n".join(lines + [_format_setting(*setting) for setting in settings])


def _in_source_order(defaults: Mapping[str, Any], declarations: Mapping[str, Declaration]) -> list[tuple[str, str]]:
    """(key, group) of each setting of ``defaults``: those declared in their source's order, then the rest."""
    declared = [(key, declaration.group) for key, declaration in declarations.items() if key in defaults]
    return declared + [(key, "") for key in defaults if key not in declarations]


def help_sections(defaults: Mapping[str, Any], declarations: Mapping[str, Declaration]) -> list[str]:
    """One formatted block per group of ``defaults``, in the order of their source."""
    return [
        _format_section(group, [(key, defaults[key], declarations.get(key, Declaration("", "")).comment)
                                for key, _ in members])
        for group, members in itertools.groupby(_in_source_order(defaults, declarations), key=lambda item: item[1])
    ]


def _command(namespace: Mapping[str, Any]) -> str:
    """How the script is run: ``-m benchmarks.bench`` for a module of a package, else its file name."""
    spec = namespace.get("__spec__")
    if spec is not None and "." in getattr(spec, "name", ""):
        return f"-m {spec.name}"
    return os.path.basename(str(namespace.get("__file__") or "script.py"))


def help_text(namespace: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """What ``--help`` prints: the usage, then the script's settings by group."""
    blocks = [f"usage: python {_command(namespace)} [configs/NAME.py ...] [--KEY=value ...]",
              "settings (KEY = default, then what it does; set one with --KEY=value or in a config file):"]
    return "\n\n".join(blocks + help_sections(defaults, declarations_in(namespace.get("__file__"))))
