"""Telegram rendering: digests, deep dives and answers as messages in Telegram's HTML subset.

Pure functions, no I/O. Only the tags Telegram accepts are emitted (`b i s code pre a
blockquote`, `<pre><code class="language-x">`), every text is escaped, and links are made only
for http(s) URLs. Long Markdown is split at block boundaries, each chunk rendered on its own
so it is well-formed, and each chunk's visible length (UTF-16 units after entity parsing, what
Telegram's 4,096 limit counts) stays within the limit.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

from digest_core.models import Answer, Digest, DigestEntry, Paper
from digest_core.render.labels import authors_line, label, link_groups
from digest_core.render.markdown import answer_markdown
from digest_core.render.parse import Line, Run, is_safe_url, one_line, pack, to_blocks, truncate

MESSAGE_LIMIT = 4096
DEFAULT_LIMIT = 4000  # headroom under 4,096 for anything a channel may add

# The 👍/👎 buttons: callback_data "rate:up:<arXiv ID>" (Telegram allows 1-64 bytes; the
# chat and the message come with the press itself).
RATE_PREFIX = "rate"
CALLBACK_DATA_LIMIT = 64
# The "which paper do you mean?" buttons: callback_data "pick:<choice key>:<arXiv ID>", or
# "pick:<choice key>:<n>" (the n-th paper) for an ID too long to fit; the question itself
# stays in the database under the key.
PICK_PREFIX = "pick"
PICK_LABEL = 60  # a label longer than this is cut: one paper per row, read at a glance

_TAG = re.compile(r"<[^>]*>")
_STYLE_TAG = {"b": "b", "i": "i", "s": "s"}


def escape(text: str, *, quote: bool = False) -> str:
    """Escape text for Telegram HTML; use `quote=True` for attribute values."""
    return html.escape(text, quote=quote)


def utf16_len(s: str) -> int:
    """Length in UTF-16 code units, the unit Telegram counts in."""
    return len(s.encode("utf-16-le")) // 2


def html_to_plain(html_text: str) -> str:
    """Tags stripped, entities unescaped: the text Telegram would show (for plain resends)."""
    return html.unescape(_TAG.sub("", html_text))


def visible_len(html_text: str) -> int:
    """The length Telegram checks: UTF-16 units of the text after entity parsing."""
    return utf16_len(html_to_plain(html_text))


# --- rating buttons -------------------------------------------------------------------------


@dataclass(frozen=True)
class TelegramMessage:
    """An HTML message with an inline keyboard: rows of {"text", "callback_data"} buttons."""

    html: str
    keyboard: tuple[tuple[tuple[str, str], ...], ...] = ()  # rows of (text, callback_data)

    def __str__(self) -> str:
        return self.html


def rating_data(arxiv_id: str, liked: bool) -> str | None:
    """The callback_data of a 👍 or 👎 button, or None if it would not fit Telegram's limit."""
    data = f"{RATE_PREFIX}:{'up' if liked else 'down'}:{arxiv_id}"
    return data if len(data.encode()) <= CALLBACK_DATA_LIMIT else None


def parse_rating_data(data: str) -> tuple[str, bool] | None:
    """(arXiv ID, liked) from a button's callback_data; None for anything else."""
    prefix, _, rest = data.partition(":")
    verdict, _, arxiv_id = rest.partition(":")
    if prefix != RATE_PREFIX or verdict not in ("up", "down") or not arxiv_id:
        return None
    return arxiv_id, verdict == "up"


def rating_keyboard(
    arxiv_id: str, up: int = 0, down: int = 0
) -> tuple[tuple[tuple[str, str], ...], ...]:
    """One row: 👍 and 👎, with the current counts once there are any."""
    up_data, down_data = rating_data(arxiv_id, True), rating_data(arxiv_id, False)
    if up_data is None or down_data is None:
        return ()
    return (
        (
            (f"👍 {up}" if up else "👍", up_data),
            (f"👎 {down}" if down else "👎", down_data),
        ),
    )


def pick_data(key: str, arxiv_id: str, n: int) -> str:
    """The callback_data of the button of paper `n` (1-based), within Telegram's 64 bytes."""
    data = f"{PICK_PREFIX}:{key}:{arxiv_id}"
    return data if len(data.encode()) <= CALLBACK_DATA_LIMIT else f"{PICK_PREFIX}:{key}:{n}"


def parse_pick_data(data: str) -> tuple[str, str] | None:
    """(choice key, arXiv ID or the paper's number) from a pick button; None for anything
    else. A number is never an arXiv ID (those hold a dot or a slash)."""
    prefix, _, rest = data.partition(":")
    key, _, paper = rest.partition(":")
    if prefix != PICK_PREFIX or not key or not paper:
        return None
    return key, paper


def pick_keyboard(
    key: str, options: Sequence[tuple[str, str]]
) -> tuple[tuple[tuple[str, str], ...], ...]:
    """One row per paper, `options` being (arXiv ID, label) in the list's order."""
    return tuple(
        ((truncate(one_line(label), PICK_LABEL), pick_data(key, arxiv_id, n)),)
        for n, (arxiv_id, label) in enumerate(options, start=1)
    )


# --- rendering ----------------------------------------------------------------------------


def _inline(runs: Sequence[Run]) -> str:
    out: list[str] = []
    stack: list[str] = []

    def move_to(target: Sequence[str]) -> None:
        nonlocal stack
        k = 0
        while k < len(stack) and k < len(target) and stack[k] == target[k]:
            k += 1
        out.extend(f"</{_STYLE_TAG[s]}>" for s in reversed(stack[k:]))
        out.extend(f"<{_STYLE_TAG[s]}>" for s in target[k:])
        stack = list(target)

    for run in runs:
        if run.code:
            # Telegram: bold/italic/strike may not contain or be part of code.
            move_to(())
            out.append(f"<code>{escape(run.text)}</code>")
        elif run.href is not None and is_safe_url(run.href):
            move_to(run.styles)
            out.append(f'<a href="{escape(run.href, quote=True)}">{escape(run.text)}</a>')
        else:
            move_to(run.styles)
            out.append(escape(run.text))
    move_to(())
    return "".join(out)


def _lines_to_html(lines: Sequence[Line]) -> str:
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.code_id is not None:
            # Code is never put inside a blockquote: Telegram does not nest those entities.
            body: list[str] = []
            while i < len(lines) and lines[i].code_id == line.code_id:
                body.append(escape(lines[i].text))
                i += 1
            text = "\n".join(body)
            if line.lang:
                out.append(
                    f'<pre><code class="language-{escape(line.lang, quote=True)}">{text}</code></pre>'
                )
            else:
                out.append(f"<pre>{text}</pre>")
            continue
        if line.quote:
            body = []
            while i < len(lines) and lines[i].quote and lines[i].code_id is None:
                body.append(_inline(lines[i].runs))
                i += 1
            while body and not body[-1]:
                body.pop()
            out.append("<blockquote>" + "\n".join(body) + "</blockquote>")
            continue
        out.append(_inline(line.runs))
        i += 1
    return "\n".join(out)


def markdown_to_html(md: str) -> str:
    """Markdown → Telegram HTML (no length limit; see `split_markdown`)."""
    blocks = to_blocks(md)
    lines: list[Line] = []
    for i, block in enumerate(blocks):
        if i:
            lines.append(Line())
        lines.extend(block)
    return _lines_to_html(lines).strip("\n")


def split_markdown(md: str, limit: int = DEFAULT_LIMIT) -> list[str]:
    """Markdown → HTML chunks, each well-formed and of visible length ≤ `limit`.

    Cuts fall between top-level blocks; a block too big alone is cut between its lines
    (a code block's pieces each get their own `<pre>`), a line too big alone at a sentence or
    space, never inside a link, a code span or an emoji. A chunk does not end with a lone
    heading when the heading can open the next chunk.
    """

    def fits(lines: list[Line]) -> bool:
        return visible_len(_lines_to_html(lines)) <= limit

    chunks = (_lines_to_html(c).strip("\n") for c in pack(to_blocks(md), fits))
    return [c for c in chunks if html_to_plain(c).strip()]


def _join_parts(parts: Sequence[tuple[str, str]], limit: int = DEFAULT_LIMIT) -> list[str]:
    """Join self-contained HTML parts, each (separator before it, html), into as few messages
    as fit; a message never starts with a separator."""
    messages: list[str] = []
    for sep, part in parts:
        if messages and visible_len(messages[-1]) + len(sep) + visible_len(part) <= limit:
            messages[-1] += sep + part
        else:
            messages.append(part)
    return messages


def _paper_link(paper: Paper, limit: int) -> str:
    title = escape(truncate(one_line(paper.title), limit) or paper.arxiv_id)
    if is_safe_url(paper.abs_url):
        return f'<a href="{escape(paper.abs_url, quote=True)}">{title}</a>'
    return title


def _score_note(entry: DigestEntry, language: str) -> str | None:
    return None if entry.score.by_llm else "⚠️ " + escape(label(language, "keyword_note"))


def render_toc(digest: Digest) -> list[str]:
    """The root message of a digest (split only if it is over the limit)."""
    lang = digest.language
    title = escape(label(lang, "title", date=digest.date))
    if digest.empty:
        return [f"{title} · {escape(label(lang, 'empty'))}"]
    head = [
        f"<b>{title}</b>",
        escape(label(lang, "summary", scanned=len(digest.entries), picked=len(digest.picked))),
    ]
    if digest.llm_note:
        head.append("⚠️ " + escape(one_line(digest.llm_note)))
    if digest.quiet:
        head.append(escape(label(lang, "quiet", threshold=digest.threshold)))
    elif digest.picked:
        head.append(escape(label(lang, "in_thread")))
    parts = [("", "\n".join(head))]
    for i, entry in enumerate(digest.picked, start=1):
        line = f"<b>{i}.</b> {_paper_link(entry.paper, 200)} · <b>{entry.score.score}</b>/100"
        reason = truncate(one_line(entry.score.reason), 200)
        line += f"\n↳ {escape(reason)}" if reason else ""
        if i == 1:
            line = f"<b>{escape(label(lang, 'quick_view'))}</b>\n{line}"
        parts.append(("\n\n", line))
    for i, entry in enumerate(digest.others):
        line = f"• {_paper_link(entry.paper, 80)} · {entry.score.score}" + _seen_note(entry, lang)
        if i == 0:
            parts.append(("\n\n", f"<b>{escape(label(lang, 'others'))}</b>\n{line}"))
        else:
            parts.append(("\n", line))
    return _join_parts(parts)


def _seen_note(entry: DigestEntry, language: str) -> str:
    """ " · 👁 deep-dived here on DATE (earlier thread)": a paper not deep-dived again."""
    if entry.seen is None:
        return ""
    note = " · " + escape(label(language, "seen", date=entry.seen.date))
    link = entry.seen.link
    if link and is_safe_url(link):
        url = escape(link, quote=True)
        note += f' (<a href="{url}">{escape(label(language, "earlier_thread"))}</a>)'
    return note


def _score_line(entry: DigestEntry, language: str) -> str:
    return f"{escape(label(language, 'score'))}: <b>{entry.score.score}</b>/100"


def _links_line(entry: DigestEntry, language: str) -> str | None:
    """`🔗 Code: <a>…</a> · 🤗 Models: <a>a</a>, <a>b</a> …`, or None without links."""
    groups = link_groups(entry.links, language)
    if not groups:
        return None
    return " · ".join(
        f"{escape(name)}: "
        + ", ".join(
            f'<a href="{escape(link.url, quote=True)}">{escape(truncate(link.label, 80))}</a>'
            for link in links
        )
        for name, links in groups
    )


def render_deep_dive(entry: DigestEntry, index: int, language: str) -> list[str]:
    """One picked paper as replies: `index. title` (linked) and score, then the deep dive.

    `index` is the 1-based number shown in the table of contents.
    """
    header = [f"<b>{index}. {_paper_link(entry.paper, 300)}</b>", _score_line(entry, language)]
    links = _links_line(entry, language)
    if links:
        header.append(links)
    note = _score_note(entry, language)
    if note:
        header.append(note)
    head = "\n".join(header)
    if entry.deep_dive is None:
        reason = escape(truncate(one_line(entry.score.reason), 1000))
        return [head + (f"\n\n{reason}" if reason else "")]
    room = DEFAULT_LIMIT - visible_len(head) - 2
    chunks = split_markdown(entry.deep_dive.body_markdown())
    if chunks and visible_len(chunks[0]) <= room:
        return [f"{head}\n\n{chunks[0]}"] + chunks[1:]
    return [head] + chunks


def render_paper_root(entry: DigestEntry, language: str) -> str:
    """The root of an on-demand analysis: title, first authors, link, score and reason."""
    paper = entry.paper
    lines = [f"<b>{_paper_link(paper, 300)}</b>"]
    if paper.authors:
        authors = truncate(authors_line(paper.authors, language), 600)
        lines.append(f"{escape(label(language, 'authors'))}: {escape(authors)}")
    if is_safe_url(paper.abs_url):
        url = escape(paper.abs_url, quote=True)
        lines.append(
            f'{escape(label(language, "link"))}: <a href="{url}">{escape(paper.abs_url)}</a>'
        )
    score = f"{escape(label(language, 'relevance'))}: <b>{entry.score.score}</b>/100"
    reason = truncate(one_line(entry.score.reason), 1000)
    lines.append(score + (f" — {escape(reason)}" if reason else ""))
    note = _score_note(entry, language)
    if note:
        lines.append(note)
    return "\n".join(lines)


CAPTION_LIMIT = 1024  # Telegram's limit on a photo caption


def figure_caption(caption: str, limit: int = CAPTION_LIMIT) -> str:
    """A key figure's caption for sendPhoto: plain text (sent without a parse mode), one
    paragraph, at most `limit` characters."""
    return truncate(one_line(caption), limit)


def render_answer(answer: Answer) -> list[str]:
    """A thread answer, split into as many messages as the limit needs."""
    return split_markdown(answer_markdown(answer)) or ["—"]
