"""Versioned prompt templates.

Each template file starts with `version: NAME-N`; the version goes into every cache key and
every LLM call record, so changing a prompt means bumping its version. Placeholders are
`$name` (string.Template). Paper text and user questions never go into a system prompt: they
are passed as delimited data in the user message (see `data_block`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from string import Template


@dataclass(frozen=True)
class Prompt:
    version: str
    template: Template

    def render(self, **values: str) -> str:
        return self.template.substitute(**values)


@cache
def load(name: str) -> Prompt:
    text = resources.files(__package__).joinpath(f"{name}.md").read_text(encoding="utf-8")
    first, _, body = text.partition("\n")
    if not first.startswith("version: "):
        raise ValueError(f"prompt {name} has no version line")
    return Prompt(first.removeprefix("version: ").strip(), Template(body.strip()))


def data_block(tag: str, content: str) -> str:
    """Wrap untrusted text in markers the system prompt tells the model to treat as data.

    A closing marker inside the content is defused so the data cannot end its own block.
    """
    safe = content.replace(f"</{tag}>", f"</ {tag}>").replace(f"<{tag}>", f"< {tag}>")
    return f"<{tag}>\n{safe}\n</{tag}>"
