"""CI runs the README's test command, character for character."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `pip install uv && uv pip install -e ".[test]" && pytest ...` (or plain pip's), up to a
# comment or a shell `||`.
COMMAND = re.compile(
    r'^\s*((?:pip install uv && uv )?pip install -e "\.\[test\]" && pytest\b[^#|\n]*)', re.MULTILINE
)


def test_ci_runs_the_readme_test_command() -> None:
    readme = {c.strip() for c in COMMAND.findall((ROOT / "README.md").read_text("utf-8"))}
    ci = {c.strip() for c in COMMAND.findall((ROOT / ".ci" / "run").read_text("utf-8"))}
    assert len(ci) == 1, ci
    assert readme == ci
