"""A Channel that posts into memory, for the fast in-process tests of the conversation flow.

It implements bot.channels.base.Channel: renders as plain text, records every send, replace
and "working" signal, and can behave like Slack (searchable, a placeholder the answer
replaces) or Telegram (not searchable, a typing action). It stands in for no real part: the
real channels are tested over HTTP against the platform fakes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from bot.channels.base import Outgoing, PlainText
from digest_core.models import Answer, Digest, DigestEntry


@dataclass
class Sent:
    chat: str
    ref: str
    reply_to: str | None
    key: str | None
    text: str


class RecordingChannel(PlainText):
    def __init__(self, platform: str = "slack", *, placeholder: bool | None = None) -> None:
        self.platform = platform
        self.searchable = platform == "slack"
        self.placeholder = platform == "slack" if placeholder is None else placeholder
        self.sent: list[Sent] = []
        self.typing = 0
        self._refs = itertools.count(1)

    def render_digest(self, digest: Digest) -> list[Outgoing]:
        out = [Outgoing("toc", f"digest {digest.date}", "toc")]
        for e in digest.picked:
            out.append(Outgoing(f"{e.paper.arxiv_id}#0", e.paper.title, e.paper.arxiv_id))
        return out

    def render_analysis(self, entry: DigestEntry) -> list[Outgoing]:
        aid = entry.paper.arxiv_id
        return [Outgoing("root", f"analysis of {aid}", aid), Outgoing(f"{aid}#0", "dive", aid)]

    def render_answer(self, answer: Answer) -> list[Outgoing]:
        return [Outgoing("answer#0", answer.text, f"answer {answer.arxiv_id}")]

    def render_line(self, text: str) -> Outgoing:
        return Outgoing("line", text, text[:40])

    async def send(self, chat: str, payload: Any, thread: str | None, *, key: str = "") -> str:
        ref = f"m{next(self._refs)}"
        self.sent.append(Sent(chat, ref, thread, key, str(payload)))
        return ref

    async def send_image(
        self, chat: str, image: Any, caption: str, thread: str | None, *, key: str
    ) -> str:
        ref = f"m{next(self._refs)}"
        self.sent.append(Sent(chat, ref, thread, key, f"[image {image.filename}] {caption}"))
        return ref

    async def find_posted(self, chat: str, thread: str | None, key: str) -> str | None:
        if not self.searchable:
            return None
        return next((s.ref for s in self.sent if s.chat == chat and s.key == key), None)

    async def working(self, chat: str, thread: str | None) -> str | None:
        if not self.placeholder:
            self.typing += 1
            return None
        return await self.send(chat, "Reading the paper…", thread, key="working")

    async def replace(self, chat: str, ref: str, payload: Any) -> None:
        for s in self.sent:
            if s.ref == ref:
                s.text = str(payload)

    async def aclose(self) -> None:
        return None

    def texts(self, chat: str | None = None) -> list[str]:
        return [s.text for s in self.sent if chat is None or s.chat == chat]
