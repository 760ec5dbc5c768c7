"""House rules that hold for the whole repository: the core's import boundary, and the README
and `.env.example` keeping up with the commands and environment variables in the code.

Every list here is read from the code or the docs at test time, never written down in the
test, so a new command, variable or import is caught the day it lands.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from bot.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "digest_core"
README = ROOT / "README.md"
ENV_EXAMPLE = ROOT / ".env.example"

# What the core must never import: the bot layer and every chat or scheduling library.
FORBIDDEN_IN_CORE = ("bot", "slack_sdk", "slack_bolt", "telegram", "apscheduler")

# An environment variable's shape: PORT, or upper-case words joined by underscores.
ENV_NAME = re.compile(r"^(?:PORT|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)$")


def python_files(*packages: str) -> Iterator[Path]:
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


@functools.cache
def parsed(path: Path) -> ast.Module:
    """A module's syntax tree, parsed once for all the scans here."""
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def top_level(module: str) -> str:
    return module.split(".", 1)[0]


def last_name(node: ast.AST) -> str:
    """The name a call's target ends with (`importlib.import_module` → `import_module`); what
    `ast.unparse(node)` ends with for a name or an attribute, without unparsing every call."""
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def dotted(node: ast.AST) -> str:
    """`a.b.c` for a chain of names and attributes, "" for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    return ".".join([node.id, *reversed(parts)])


# ----------------------------------------------------------------------- the core's boundary


def test_core_modules_import_nothing_from_the_bot_or_chat_libraries() -> None:
    offenders = []
    files = list(python_files("digest_core"))
    assert files, "no module found under digest_core/"
    for path in files:
        tree = parsed(path)
        relative = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and last_name(node.func).endswith(
                ("import_module", "__import__")
            ):
                # a dynamic import would dodge the static check: the core needs none
                offenders.append(f"{relative}:{node.lineno} imports dynamically")
                continue
            else:  # relative imports stay inside digest_core
                continue
            where = f"{relative}:{node.lineno}"
            offenders += [
                f"{where} imports {name}" for name in names if top_level(name) in FORBIDDEN_IN_CORE
            ]
    assert offenders == []


def test_importing_every_core_module_loads_no_bot_or_chat_library() -> None:
    # A fresh interpreter, so nothing this test session imported counts.
    script = f"""
import importlib, json, pkgutil, sys
import digest_core
for info in pkgutil.walk_packages(digest_core.__path__, "digest_core."):
    importlib.import_module(info.name)
forbidden = {FORBIDDEN_IN_CORE!r}
loaded = sorted(m for m in sys.modules if m.split(".", 1)[0] in forbidden)
core = sorted(m for m in sys.modules if m.startswith("digest_core"))
print(json.dumps({{"loaded": loaded, "core": core}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    report = json.loads(done.stdout)
    assert report["loaded"] == []
    # Every module file was really imported (the walk did not stop early).
    on_disk = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in python_files("digest_core")
    }
    assert on_disk <= set(report["core"])


# ----------------------------------------------------------------------- commands in the README


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def long_options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def test_readme_documents_every_command_and_option() -> None:
    readme = README.read_text(encoding="utf-8")
    parser = build_parser()
    commands = subcommands(parser)
    assert commands, "bot.cli.build_parser() has no subcommands"
    missing = [f"digestbot {name}" for name in commands if f"digestbot {name}" not in readme]
    for name, sub in [("digestbot", parser), *commands.items()]:
        missing += [f"{name} {opt}" for opt in sorted(long_options(sub)) if opt not in readme]
    assert missing == []


# ------------------------------------------------------------ environment variables in the docs


@functools.cache
def env_names_read_by_code() -> dict[str, str]:
    """Every environment variable the code reads, found by an AST scan of bot/ and digest_core/.

    A name counts when a string literal of a variable's shape is
    - the key of a lookup: `environ.get("X")`, `env["X"]`, `os.getenv("X")`, `env.get("X")`;
    - passed to a helper together with the environment: `_secret(env, "X")`;
    - a settings alias: `Field(alias="X")`, `validation_alias="X"`, `AliasChoices("X", …)`;
    - listed in a module-level `ENV_VARS` (or `*_ENV_VARS`) collection.
    Returns name -> where it was first seen.
    """
    found: dict[str, str] = {}

    def note(node: ast.AST, path: Path) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if ENV_NAME.match(node.value):
                found.setdefault(node.value, f"{path.relative_to(ROOT)}:{node.lineno}")

    def is_env(node: ast.AST) -> bool:
        if isinstance(node, ast.Attribute) and node.attr == "env":
            return True
        return dotted(node) in ("env", "environ", "os.environ", "environment")

    for path in python_files("bot", "digest_core"):
        tree = parsed(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript) and is_env(node.value):
                note(node.slice, path)
            elif isinstance(node, ast.Call):
                func = node.func
                name = last_name(func)
                if isinstance(func, ast.Attribute) and func.attr in ("get", "pop", "setdefault"):
                    if is_env(func.value) and node.args:
                        note(node.args[0], path)
                if name.endswith("getenv") and node.args:
                    note(node.args[0], path)
                if any(is_env(arg) for arg in node.args) or name.endswith("AliasChoices"):
                    for arg in node.args:
                        note(arg, path)
                for keyword in node.keywords:
                    if keyword.arg in ("alias", "validation_alias", "env", "env_name"):
                        for inner in ast.walk(keyword.value):
                            note(inner, path)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if (
                    any(isinstance(t, ast.Name) and t.id.endswith("ENV_VARS") for t in targets)
                    and node.value is not None
                ):
                    for inner in ast.walk(node.value):
                        note(inner, path)
    return found


def readme_env_table() -> set[str]:
    """The names in the first column of the README's table of environment variables."""
    names: set[str] = set()
    in_table = False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("| variable |"):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            break
        if in_table and not line.startswith("|---"):
            first = line.split("|")[1]
            names.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", first))
    return names


def env_example_names() -> set[str]:
    """Variables `.env.example` names, set or commented out (`# NAME=`)."""
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))


def test_the_scan_finds_the_variables() -> None:
    # Guards the scan itself: if the settings change shape (say, names derived from field
    # names), this fails instead of the README test passing on an empty set. Then keep the
    # names in one `ENV_VARS` collection in the code, which the scan reads.
    found = env_names_read_by_code()
    assert len(found) >= 10, found


def test_readme_documents_every_environment_variable_the_code_reads() -> None:
    documented = readme_env_table()
    undocumented = {
        name: where for name, where in env_names_read_by_code().items() if name not in documented
    }
    assert undocumented == {}


def test_env_example_names_every_variable_in_the_readme() -> None:
    table = readme_env_table()
    assert table, "README has no table of environment variables"
    assert sorted(table - env_example_names()) == []


def test_env_example_holds_no_values_and_is_not_ignored() -> None:
    # Every assignment is commented out or empty, or an example address: no secret ships.
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match and not line.startswith("#"):
            assert match.group(2) == "", line
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".env.example"], cwd=ROOT, capture_output=True
    )
    real = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, capture_output=True)
    if real.returncode == 128:  # not a git checkout (an sdist): nothing to check
        return
    assert ignored.returncode == 1, ".env.example must not be git-ignored"
    assert real.returncode == 0, ".env must be git-ignored"


# ------------------------------------------------------------------- the exception hierarchy


def exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in a module of digest_core or bot, imported in this process."""
    import importlib
    import inspect
    import pkgutil

    found: dict[str, type[BaseException]] = {}
    for package in ("digest_core", "bot"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if (
                    inspect.isclass(value)
                    and issubclass(value, BaseException)
                    and value.__module__ == module.__name__
                ):
                    found[name] = value
    return found


def test_the_drawn_exception_tree_names_every_exception_class() -> None:
    from digest_core import errors

    drawing = errors.__doc__ or ""
    # A tree line: box-drawing branch, the class name, then its module.
    drawn = dict(re.findall(r"[├└]── (\w+)[ .]+((?:digest_core|bot)[\w.]*)", drawing))
    classes = exception_classes()
    assert classes, "no exception class found"
    assert set(drawn) == set(classes)
    for name, cls in classes.items():
        assert drawn[name] == cls.__module__, name
        # drawn under its real base: the nearest enclosing branch names the parent
        parent = cls.__bases__[0].__name__
        line = next(line for line in drawing.splitlines() if re.search(rf"── {name}\b", line))
        indent = line.index("──")
        above = drawing[: drawing.index(line)].splitlines()
        enclosing = next(
            (
                candidate
                for candidate in reversed(above)
                if "──" in candidate and candidate.index("──") < indent
            ),
            "    Exception",
        )
        assert parent in enclosing, (name, parent, enclosing)
