"""The docs only show commands that work: every ``ctran ...`` command line in the README, BENCHMARKS.md,
CONTRIBUTING.md and ``docs/`` parses with the real argument parser (as ``ctran`` itself parses it; nothing
runs), every flag named in the text exists for its command, every ``--config NAME`` is a shipped config, and
every config key named (``train.epochs=...`` on a command line, ``section.key`` in the text) exists.

Command lines are read from code blocks (shell blocks whole, ``$ ctran ...`` lines of text blocks), joined
across ``\\`` continuations, cut at ``#`` comments and shell operators; ``$W``-style variables stay as their
literal text (any string is a valid path). Inline ``ctran ...`` spans in the text are sentences more than
commands (``ctran train --init-from runs/coco/best.pt ...``), so for them only the command and its flags
are checked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import re
import shlex
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctran.cli import build_parser
from ctran.config import Config, shipped_configs

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    ROOT / "README.md",
    ROOT / "BENCHMARKS.md",
    ROOT / "CONTRIBUTING.md",
    *sorted((ROOT / "docs").rglob("*.md")),
]
SHELL = {"bash", "sh", "shell", "console"}
NOT_SHELL = {"python", "yaml", "json", "bibtex", "toml"}
SHELL_OPERATORS = {">", ">>", "<", "|", "||", "&&", ";", "&", "2>", "2>&1"}
SECTIONS = tuple(
    name for name, hint in typing.get_type_hints(Config).items() if dataclasses.is_dataclass(hint)
)
# `section.key` in a code span, as an override (`=`), a YAML line (`:`) or a comparison (` <`); not a call
KEY_SPAN = re.compile(rf"^((?:{'|'.join(SECTIONS)})\.[a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*)(?=$|\s*[=:<>])")
PARSER = build_parser()  # parsing leaves it as it was
FILE_SUFFIX = re.compile(r"\.(csv|jsonl?|txt|pkl|sbatch|ya?ml|py|png|md|pt)$")


@dataclass
class Command:
    where: str  # file:line
    argv: list[str]  # the arguments after `ctran`


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _code_blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """(first line number, language, lines) of every fenced code block."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```(\w*)", lines[i])
        if not fence:
            i += 1
            continue
        start, language, body = i + 2, fence.group(2).lower(), []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            body.append(lines[i][len(fence.group(1)) :])
            i += 1
        blocks.append((start, language, body))
        i += 1
    return blocks


def _logical_lines(first: int, body: list[str]) -> list[tuple[int, str]]:
    """Lines joined across trailing backslashes, each with the number of its first line."""
    joined, pending, start = [], "", first
    for offset, line in enumerate(body):
        if not pending:
            start = first + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append((start, pending + line))
        pending = ""
    return joined


def _ctran_argv(tokens: list[str]) -> list[str] | None:
    """The arguments after the ``ctran`` program (``ctran``, ``.venv/bin/ctran``, ``python -m ctran``,
    ``torchrun ... -m ctran``), cut at the first shell operator; None when the line runs no ctran."""
    for i, token in enumerate(tokens):
        if token == "ctran" or token.endswith("/ctran"):
            argv = tokens[i + 1 :]
        elif token == "-m" and tokens[i + 1 : i + 2] == ["ctran"]:
            argv = tokens[i + 2 :]
        else:
            continue
        cut = next((j for j, t in enumerate(argv) if t in SHELL_OPERATORS or t.startswith((">", "|"))), None)
        return argv[:cut]
    return None


def documented_commands() -> list[Command]:
    """Every ``ctran`` command line of the docs' code blocks."""
    commands = []
    for page in PAGES:
        for first, language, body in _code_blocks(page.read_text()):
            if language in NOT_SHELL or not (language in SHELL or language == "text"):
                continue
            for number, line in _logical_lines(first, body):
                line = line.strip()
                if language == "text" and not line.startswith("$ "):
                    continue  # output shown after a prompt: only the prompt lines are commands
                line = line.removeprefix("$ ")
                try:
                    tokens = shlex.split(line, comments=True)
                except ValueError as err:
                    pytest.fail(f"{_relative(page)}:{number}: cannot split {line!r}: {err}")
                argv = _ctran_argv(tokens)
                if argv is not None:
                    commands.append(Command(f"{_relative(page)}:{number}", argv))
    return commands


def _inline_spans(text: str) -> list[tuple[int, str]]:
    """(line number, content) of every inline code span outside code blocks, whitespace collapsed."""
    fenced = set()
    for first, _, body in _code_blocks(text):
        fenced.update(range(first - 1, first + len(body) + 1))
    prose = "\n".join("" if i + 1 in fenced else line for i, line in enumerate(text.splitlines()))
    return [
        (prose.count("\n", 0, m.start()) + 1, " ".join(m.group(2).split()))
        for m in re.finditer(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", prose, re.S)
    ]


def _subparsers(parser) -> dict:
    return parser._subparsers._group_actions[0].choices if parser._subparsers else {}


def parse_problem(argv: list[str]) -> str | None:
    """None if ``ctran ARGV`` parses as ``ctran.cli.main`` parses it, else argparse's complaint."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            args, rest = PARSER.parse_known_args(argv)
    except SystemExit as exit:
        return None if exit.code == 0 else stderr.getvalue().strip().splitlines()[-1]  # 0: --help
    if rest and not (hasattr(args, "overrides") and all("=" in t and not t.startswith("-") for t in rest)):
        return f"unrecognized arguments: {' '.join(rest)}"
    return None


def _is_dict(hint: object) -> bool:
    """``dict[...]``, or ``dict[...] | None``."""
    return typing.get_origin(hint) is dict or any(typing.get_origin(a) is dict for a in typing.get_args(hint))


def config_key_problem(key: str) -> str | None:
    """None if ``key`` names a config field (or an entry of a dict-valued one: ``data.options.x``)."""
    node: object = Config
    for part in key.split("."):
        fields = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return f"unknown config key {key}"
        node = fields[part]
        if _is_dict(node):
            return None  # data.options, data.options.unlisted, data.sizes.train
    return f"{key} is a section, not a key" if dataclasses.is_dataclass(node) else None


def _overrides(argv: list[str]) -> list[str]:
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        args, rest = PARSER.parse_known_args(argv)
    return [*getattr(args, "overrides", []), *rest]


def _config_problem(argv: list[str]) -> str | None:
    """A ``--config NAME`` that is neither a shipped config nor a file of the repository."""
    for flag, value in itertools.pairwise(argv):
        if flag != "--config":
            continue
        if "/" not in value and not value.endswith(".yaml") and value not in shipped_configs():
            return f"--config {value}: no such shipped config ({', '.join(shipped_configs())})"
        if value.startswith("configs/") and not (ROOT / value).is_file():
            return f"--config {value}: no such file in the repository"
    return None


def test_every_documented_command_line_parses() -> None:
    commands = documented_commands()
    assert len(commands) >= 50, f"only {len(commands)} command lines found: is the extraction broken?"
    problems = []
    for command in commands:
        unknown = unknown_flags(command.argv)
        problem = parse_problem(command.argv) or _config_problem(command.argv)
        if problem is None and unknown:
            problem = f"{', '.join(unknown)}: not spelt as the command spells it"
        if problem is None:
            problem = next(
                filter(None, (config_key_problem(o.partition("=")[0]) for o in _overrides(command.argv))),
                None,
            )
        if problem:
            problems.append(f"{command.where}: ctran {shlex.join(command.argv)}\n    {problem}")
    assert not problems, "\n".join(problems)


def unknown_flags(argv: list[str]) -> list[str] | None:
    """The ``--flags`` of ``ctran ARGV`` that its command does not have, spelt out in full (argparse would
    also take an abbreviation: the docs should not); None when there is no such command."""
    command, rest = PARSER, argv
    if argv and not argv[0].startswith("-"):
        if argv[0] not in _subparsers(PARSER):
            return None
        command, rest = _subparsers(PARSER)[argv[0]], argv[1:]
        if rest and rest[0] in _subparsers(command):  # `ctran data check`
            command, rest = _subparsers(command)[rest[0]], rest[1:]
    options = {o for action in command._actions for o in action.option_strings}
    return [flag for flag in (t.split("=")[0] for t in rest if t.startswith("--")) if flag not in options]


def test_every_flag_named_in_the_text_exists() -> None:
    """Inline ``ctran CMD --flag ...`` spans: the command exists and so does each flag it names."""
    spans, problems = 0, []
    for page in PAGES:
        for number, span in _inline_spans(page.read_text()):
            tokens = span.split()
            if tokens[0] != "ctran" or len(tokens) < 2:
                continue  # `ctran.load(...)`
            if not re.fullmatch(r"(-.*|[a-z][a-z-]*(/[a-z][a-z-]*)*)", tokens[1]):
                continue  # `ctran COMMAND --help`
            for name in tokens[1].split("/") if not tokens[1].startswith("-") else [""]:
                spans += 1
                unknown = unknown_flags([name, *tokens[2:]] if name else tokens[1:])
                if unknown is None:
                    problems.append(f"{_relative(page)}:{number}: `{span}`: no command {name!r}")
                elif unknown:
                    problems.append(f"{_relative(page)}:{number}: `{span}`: no {', '.join(unknown)}")
    assert spans >= 40, f"only {spans} ctran commands found in the text: is the extraction broken?"
    assert not problems, "\n".join(problems)


def test_every_config_key_named_in_the_text_exists() -> None:
    keys, problems = 0, []
    for page in PAGES:
        for number, span in _inline_spans(page.read_text()):
            match = KEY_SPAN.match(span)
            if not match or FILE_SUFFIX.search(match.group(1)):
                continue  # `model.eval()`, `train.csv`
            keys += 1
            problem = config_key_problem(match.group(1))
            if problem:
                problems.append(f"{_relative(page)}:{number}: `{span}`: {problem}")
    assert keys >= 40, f"only {keys} config keys found in the text: is the extraction broken?"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["train", "--config", "digits-tiny", "--out", "runs/x", "train.epochs=3"], None),
        (["train", "--config", "digits", "--out", "x", "--bogus"], "unrecognized arguments: --bogus"),
        (["predict", "--checkpoint", "c.pt", "a.png", "--top-k", "three"], "invalid int value: 'three'"),
        (["serve", "--help"], None),
    ],
)
def test_parse_problem_is_what_ctran_says(argv: list[str], problem: str | None) -> None:
    got = parse_problem(argv)
    assert got == problem if problem is None else problem in got


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("train.epochs", True),
        ("data.options.unlisted", True),  # an entry of a dict-valued field
        ("data.sizes.train", True),
        ("model.attention", True),
        ("train.epoch", False),
        ("model", False),
        ("train.lr.x", False),
        ("eval.known_fraction", False),
    ],
)
def test_config_keys_are_checked_against_the_config_classes(key: str, ok: bool) -> None:
    assert (config_key_problem(key) is None) == ok


def test_command_lines_are_read_like_a_shell_reads_them() -> None:
    text = """
```bash
W=$(python -c 'print(1)')
ctran train --config own-cpu --backbone-weights "$W" \\
    --out runs/mine model.kind=baseline   # a comment
torchrun --nproc_per_node=4 -m ctran train --config coco80 --out r train.batch_size=4
ctran predict --checkpoint c.pt photos/ --format json > predictions.json
```

```text
$ ctran predict --checkpoint c.pt scene.png
ctran serve: listening on http://127.0.0.1:8000/
```
"""
    commands = [
        _ctran_argv(shlex.split(line.strip().removeprefix("$ "), comments=True))
        for first, language, body in _code_blocks(text)
        for _, line in _logical_lines(first, body)
        if language != "text" or line.startswith("$ ")
    ]
    assert [c for c in commands if c is not None] == [
        [
            "train",
            "--config",
            "own-cpu",
            "--backbone-weights",
            "$W",
            "--out",
            "runs/mine",
            "model.kind=baseline",
        ],
        ["train", "--config", "coco80", "--out", "r", "train.batch_size=4"],
        ["predict", "--checkpoint", "c.pt", "photos/", "--format", "json"],
        ["predict", "--checkpoint", "c.pt", "scene.png"],
    ]
