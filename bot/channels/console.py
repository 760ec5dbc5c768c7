"""Local destinations: the terminal (the default with no platform configured) and a Markdown file.

Both print the digest in the original report's format; neither keeps a ledger, because
printing again is not a duplicate post.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any, TextIO

from bot.channels.base import Outgoing, PlainText
from digest_core.models import Answer, Digest, DigestEntry, FigureImage
from digest_core.render.markdown import (
    answer_markdown,
    render_analysis_markdown,
    render_report,
)


class ConsoleChannel(PlainText):
    platform = "console"
    searchable = False

    def __init__(self, stream: TextIO | None = None, language: str = "zh") -> None:
        self.stream = stream
        self.language = language

    def render_digest(self, digest: Digest) -> list[Outgoing]:
        return [Outgoing("report", render_report(digest), f"digest {digest.date}")]

    def render_analysis(self, entry: DigestEntry) -> list[Outgoing]:
        text = render_analysis_markdown(entry, self.language)
        return [Outgoing("analysis", text, f"analysis {entry.paper.arxiv_id}")]

    def render_answer(self, answer: Answer) -> list[Outgoing]:
        return [Outgoing("answer", answer_markdown(answer), f"answer {answer.arxiv_id}")]

    def render_line(self, text: str) -> Outgoing:
        return Outgoing("line", text, text.splitlines()[0][:80] if text else "line")

    async def find_posted(self, chat: str, thread: str | None, key: str) -> str | None:
        return None

    async def send_image(
        self, chat: str, image: FigureImage, caption: str, thread: str | None, *, key: str
    ) -> str:
        """A terminal shows no image: one line naming it and its caption."""
        line = f"[{image.filename}, {len(image.data) // 1024} kB] {caption}".strip()
        return await ConsoleChannel.send(self, chat, line, thread)

    async def working(self, chat: str, thread: str | None) -> str | None:
        return None

    async def replace(self, chat: str, ref: str, payload: Any) -> None:
        await self.send(chat, payload, None)

    async def aclose(self) -> None:
        return None

    async def send(
        self, chat: str, payload: Any, thread: str | None, *, key: str | None = None
    ) -> str:
        stream = self.stream or sys.stdout
        print(payload, file=stream, flush=True)
        return "stdout"


class MarkdownFileChannel(ConsoleChannel):
    """Writes each digest to `<chat>/digest-<date>.md` (chat is a directory)."""

    platform = "markdown"

    def render_digest(self, digest: Digest) -> list[Outgoing]:
        return [
            Outgoing(f"digest-{digest.date}.md", render_report(digest), f"digest {digest.date}")
        ]

    async def send(
        self, chat: str, payload: Any, thread: str | None, *, key: str | None = None
    ) -> str:
        path = Path(chat) / (key or "digest.md")
        await asyncio.to_thread(write_text, path, str(payload))
        print(f"wrote {path}", file=sys.stderr)
        return str(path)


def write_text(path: Path, text: str) -> None:
    """Write a file, creating its folder (run off the event loop)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
