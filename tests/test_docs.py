"""The documentation's example commands agree with the CLI: every ``farm ...`` in README.md
and docs/*.md names a real command with real options, files that exist, and the scene id
of the scene file it was given."""

from __future__ import annotations

import json
import re

import click

from farm.cli import cli

from .conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_FENCES = ("sh", "bash", "console", "shell", "")
DIAGRAM = re.compile("[─│►▲▼┌└]")
#: a ``farm`` command where a shell starts one: line start, after a prompt, &&, ;, | or $(
COMMAND = re.compile(r"(?:^\s*(?:\$\s+)?|&&\s*|;\s*|\|\s*|\$\(\s*)(farm\s[^;&|)]*)")
INLINE = re.compile(r"`(farm [^`]*)`")
REPO_PATH = re.compile(r"(examples|deploy|workflows|farm|tests|bench|blender)/[\w./-]+\.\w+")
SCENE_COMMANDS = ("status", "watch", "cancel", "pause", "resume", "retry", "preview")


def blocks(text: str) -> list[list[tuple[int, str]]]:
    """The ``farm`` commands of each shell code block, and each inline one on its own, as
    (line number, command); comments and diagrams left out."""
    found: list[list[tuple[int, str]]] = []
    fence: str | None = None
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = None if fence is not None else line.strip()[3:]
            if fence is not None:
                found.append([])
            continue
        if fence is None:
            found += [[(n, m.group(1))] for m in INLINE.finditer(line)]
        elif fence in SHELL_FENCES and not DIAGRAM.search(line):
            code = re.sub(r"(^|\s)#.*", "", line)
            found[-1] += [(n, m.group(1)) for m in COMMAND.finditer(code)]
    return [b for b in found if b]


def words(command: str) -> list[str]:
    return command.replace("[", " ").replace("]", " ").replace("\\", " ").split()


def resolve(command: str) -> tuple[click.Command, list[str], list[str]]:
    """The click command a documented line runs, its name and the words after it."""
    cmd: click.Command = cli
    rest, path = words(command)[1:], ["farm"]
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        sub = cmd.commands.get(name)
        if sub is None:
            raise LookupError(f"no command {' '.join([*path, name])!r}")
        cmd, path = sub, [*path, name]
    return cmd, path, rest


def documented() -> list[tuple[str, list[tuple[int, str]]]]:
    return [(doc.name, block) for doc in DOCS for block in blocks(doc.read_text())]


def test_the_docs_show_farm_commands():
    commands = {c for _, block in documented() for _, c in block}
    assert len(commands) > 80  # the scanner finds them (README, operations, deploy, ...)
    assert "farm submit examples/demo_scene.json " in commands


def test_every_documented_command_and_option_exists():
    wrong = []
    for doc, block in documented():
        for n, command in block:
            try:
                cmd, path, rest = resolve(command)
            except LookupError as exc:
                wrong.append(f"{doc}:{n}: {command.strip()}: {exc}")
                continue
            known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"-h", "--help"}
            flags = [w.split("=")[0].rstrip(",.") for w in rest if re.match(r"--?[a-zA-Z]", w)]
            wrong += [f"{doc}:{n}: {' '.join(path)} has no option {f}" for f in flags
                      if f not in known]  # fmt: skip
    assert wrong == []


def test_every_file_a_documented_command_names_exists():
    missing = [f"{doc}:{n}: {m.group(0)}" for doc, block in documented() for n, command in block
               for m in REPO_PATH.finditer(command) if not (REPO / m.group(0)).exists()]  # fmt: skip
    assert missing == []


def test_a_scene_followed_after_sending_it_is_named_by_its_id():
    """``farm submit examples/demo_scene.json && farm watch ID``: ID is the file's id."""
    wrong = []
    for doc, block in documented():
        sent = {json.loads((REPO / m.group(0)).read_text())["id"] for _, c in block
                for m in REPO_PATH.finditer(c) if m.group(0).endswith(".json")
                and words(c)[1] in ("submit", "enqueue", "validate")}  # fmt: skip
        for n, command in block:
            args = words(command)[1:]
            named = args[1:2] and not args[1].isupper() and not args[1].startswith("-")  # not SCENE
            if sent and args[0] in SCENE_COMMANDS and named and args[1] not in sent:
                wrong.append(f"{doc}:{n}: {command.strip()}: the scene sent is {sent}")
    assert wrong == []


def test_task_search_examples_use_the_demo_scene_id():
    """operations.md's Flower search (``scene=ID``) names the demo scene by its id."""
    demo = json.loads((REPO / "examples" / "demo_scene.json").read_text())["id"]
    ids = set(re.findall(r"`scene=([\w.-]+)`", (REPO / "docs" / "operations.md").read_text()))
    assert ids == {demo}
