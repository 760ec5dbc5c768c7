"""Slack rendering: digests, deep dives and answers as Block Kit `section` blocks of mrkdwn.

Pure functions, no I/O. Every piece of text from a paper or the LLM is escaped (`& < >` only),
so `<!channel>`, `<@U…>` or `<https://evil|x>` arrive inert; the only `<url|label>` tokens are
the ones built here, for http(s) URLs. Sections stay within 3,000 characters and messages
within 50 blocks and 12,000 characters of block text. Blocks are `verbatim` so Slack does not
auto-parse bare names or mentions in text it did not get as explicit tokens.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from digest_core.models import Answer, Digest, DigestEntry, Paper
from digest_core.render.labels import authors_line, label, link_groups
from digest_core.render.markdown import answer_markdown
from digest_core.render.parse import (
    Line,
    Run,
    is_safe_url,
    one_line,
    pack,
    safe_cut,
    to_blocks,
    truncate,
)

SECTION_LIMIT = 3000
MESSAGE_BLOCKS = 50
MESSAGE_CHARS = 12000
FALLBACK_LIMIT = 300

# The 👍/👎 buttons under every deep dive: one `actions` block; each button's `value` is the
# paper's arXiv ID (the channel and the message come with the press itself).
RATE_BLOCK_ID = "digestbot-rate"
RATE_UP = "rate_up"
RATE_DOWN = "rate_down"
# The "which paper do you mean?" buttons: one per paper, `action_id` "pick_paper_<n>" (unique in
# its block), `value` "<choice key>:<arXiv ID>"; the question itself stays in the database.
PICK_BLOCK_ID = "digestbot-pick"
PICK_ACTION = "pick_paper"
ACTIONS_PER_BLOCK = 25  # Block Kit's limit on an actions block's elements
BUTTON_TEXT = 75  # ... and on a button's label

ZWSP = "\u200b"
_MARK = {"b": "*", "i": "_", "s": "~"}


@dataclass(frozen=True)
class SlackMessage:
    """One `chat.postMessage`: `text` is the escaped notification fallback, `blocks` the body."""

    text: str
    blocks: list[dict]


def escape(text: str) -> str:
    """Escape Slack's three control characters, and nothing else."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_FENCE = re.compile(r"`(?=``)")


def _no_fence(text: str) -> str:
    """Break every run of three backticks: a literal ``` would swallow the rest as code."""
    return _FENCE.sub("`" + ZWSP, text)


def _text(text: str) -> str:
    """Escaped text for mrkdwn: `& < >` escaped and no ``` left to open a code block."""
    return _no_fence(escape(text))


# --- inline mrkdwn ------------------------------------------------------------------------


def _needs_gap(ch: str) -> bool:
    # Slack only honours a marker next to whitespace or ASCII punctuation (not next to CJK).
    return bool(ch) and not ch.isspace() and ch not in string.punctuation and ch != ZWSP


def _finish(pieces: list[list[str]]) -> str:
    """Pieces are [kind, text]: "t" text, "o"/"c" style markers, "O"/"C" code markers."""
    p = [x for x in pieces if x[0] != "t" or x[1]]
    changed = True
    while changed:
        changed = False
        for i in range(len(p) - 1):
            # A marker pair around nothing would print literally.
            if (p[i][0], p[i + 1][0]) in (("o", "c"), ("O", "C")):
                del p[i : i + 2]
                changed = True
                break
            # Slack needs the text inside markers to start and end with a non-space.
            if p[i][0] == "o" and p[i + 1][0] == "t" and p[i + 1][1][:1].isspace():
                body = p[i + 1][1]
                p[i + 1][1] = body.lstrip()
                p.insert(i, ["t", body[: len(body) - len(p[i + 1][1])]])
                changed = True
                break
            if p[i + 1][0] == "c" and p[i][0] == "t" and p[i][1][-1:].isspace():
                body = p[i][1]
                p[i][1] = body.rstrip()
                p.insert(i + 2, ["t", body[len(p[i][1]) :]])
                changed = True
                break
        p = [x for x in p if x[0] != "t" or x[1]]
    out: list[str] = []
    for i, (kind, text) in enumerate(p):
        if kind in "oO":
            prev = out[-1][-1:] if out else ""
            if _needs_gap(prev):
                out.append(ZWSP)
            out.append(text)
        elif kind in "cC":
            out.append(text)
            nxt = p[i + 1][1][:1] if i + 1 < len(p) else ""
            if _needs_gap(nxt):
                out.append(ZWSP)
        else:
            out.append(text)
    return "".join(out)


def _inline(runs: Sequence[Run]) -> str:
    pieces: list[list[str]] = []
    stack: list[str] = []

    def move_to(target: Sequence[str]) -> None:
        nonlocal stack
        k = 0
        while k < len(stack) and k < len(target) and stack[k] == target[k]:
            k += 1
        pieces.extend(["c", _MARK[s]] for s in reversed(stack[k:]))
        pieces.extend(["o", _MARK[s]] for s in target[k:])
        stack = list(target)

    for run in runs:
        if run.code:
            move_to(())  # styles around code are dropped, as on Telegram
            body = escape(run.text.replace("`", "ˋ"))  # a backtick would end the span
            pieces += [["O", "`"], ["t", body], ["C", "`"]]
        elif run.href is not None:
            move_to(run.styles)
            pieces.append(["t", _link(run.href, run.text)])
        else:
            move_to(run.styles)
            pieces.append(["t", _text(run.text)])
    move_to(())
    return _no_fence(_finish(pieces))


def _link(url: str, text: str) -> str:
    """`<url|label>` for a safe http(s) URL; otherwise the label as escaped text."""
    label_text = _text(one_line(text)) or _text(url)
    if not is_safe_url(url):
        return label_text
    return f"<{escape(url)}|{label_text}>"


def _lines_to_mrkdwn(lines: Sequence[Line]) -> str:
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.code_id is not None:
            body: list[str] = []
            while i < len(lines) and lines[i].code_id == line.code_id:
                body.append(_text(lines[i].text))
                i += 1
            out.append("```\n" + "\n".join(body) + "\n```")
            continue
        text = _inline(line.runs)
        if line.quote:
            text = f"> {text}" if text else ">"
        out.append(text)
        i += 1
    return "\n".join(out)


def _fits_section(lines: list[Line]) -> bool:
    return len(_lines_to_mrkdwn(lines)) <= SECTION_LIMIT


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text, "verbatim": True}}


def markdown_to_blocks(md: str) -> list[dict]:
    """Markdown → `section` blocks of mrkdwn, each ≤ 3,000 characters, a new one per heading."""
    chunks = pack(to_blocks(md), _fits_section, break_at_headings=True)
    blocks = []
    for chunk in chunks:
        text = _lines_to_mrkdwn(chunk).strip("\n")
        if text.strip():
            blocks.append(_section(text))
    return blocks


# --- messages -----------------------------------------------------------------------------


def _block_chars(value: Any) -> int:
    """Characters of every `text` string inside a block (what Slack's 12,000 limit counts)."""
    if isinstance(value, dict):
        return sum(
            len(v) if k == "text" and isinstance(v, str) else _block_chars(v)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return sum(_block_chars(v) for v in value)
    return 0


def _fallback(plain: str, suffix: str = "") -> str:
    """Plain text → escaped one-line notification text of at most FALLBACK_LIMIT characters.

    `suffix` (e.g. " (2/3)") is kept whole; the text before it is shortened instead.
    """
    room = FALLBACK_LIMIT - len(suffix)
    raw = truncate(one_line(plain), room)
    while len(escape(raw)) > room:
        raw = truncate(raw, len(raw) - (len(escape(raw)) - room) - 1)
    return escape(raw) + suffix


def split_messages(blocks: list[dict], fallback: str) -> list[SlackMessage]:
    """Pack blocks, in order, into messages of ≤ 50 blocks and ≤ 12,000 characters of text.

    `fallback` is plain text; it is escaped and shortened here, and numbered when the blocks
    need several messages. No blocks, no messages.
    """
    groups: list[list[dict]] = []
    size = 0
    for block in blocks:
        n = _block_chars(block)
        if groups and len(groups[-1]) < MESSAGE_BLOCKS and size + n <= MESSAGE_CHARS:
            groups[-1].append(block)
            size += n
        else:
            groups.append([block])
            size = n
    if len(groups) == 1:
        return [SlackMessage(_fallback(fallback), groups[0])]
    total = len(groups)
    return [
        SlackMessage(_fallback(fallback, f" ({i}/{total})"), group)
        for i, group in enumerate(groups, start=1)
    ]


def _clip(text: str, limit: int) -> str:
    """Shorten escaped mrkdwn without cutting an entity or a `<url|label>` token."""
    if len(text) <= limit:
        return text
    cut = limit - 1
    lt = text.rfind("<", 0, cut)
    if lt > text.rfind(">", 0, cut):
        cut = lt
    amp = text.rfind("&", 0, cut)
    if amp >= 0 and ";" not in text[amp:cut]:
        cut = amp
    cut = safe_cut(text, cut)
    return text[:cut].rstrip() + "…"


def mrkdwn_sections(lines: Sequence[str]) -> list[dict]:
    """Escaped mrkdwn lines → as few sections as fit, each ≤ SECTION_LIMIT."""
    sections: list[str] = []
    for line in lines:
        line = _clip(line, SECTION_LIMIT)
        if sections and len(sections[-1]) + 1 + len(line) <= SECTION_LIMIT:
            sections[-1] += "\n" + line
        else:
            sections.append(line)
    return [_section(text) for text in sections if text.strip()]


def _fits_message(blocks: Sequence[dict]) -> bool:
    return len(blocks) <= MESSAGE_BLOCKS and _block_chars(list(blocks)) <= MESSAGE_CHARS


def _clip_blocks(blocks: list[dict]) -> list[dict]:
    """Last resort for a message that must stay single: keep what fits, say what was left."""
    kept: list[dict] = []
    for i, block in enumerate(blocks):
        if not _fits_message(kept + [block, _section("… +999")]):
            return kept + [_section(f"… +{len(blocks) - i}")]
        kept.append(block)
    return kept


def _paper_link(paper: Paper, limit: int) -> str:
    title = truncate(one_line(paper.title), limit) or paper.arxiv_id
    return _link(paper.abs_url, title) if is_safe_url(paper.abs_url) else _text(title)


def _bold(text: str) -> str:
    return f"*{text}*"


def _score_note(entry: DigestEntry, language: str) -> str | None:
    return None if entry.score.by_llm else "⚠️ " + label(language, "keyword_note")


def rating_block(arxiv_id: str, up: int = 0, down: int = 0) -> dict[str, Any]:
    """The 👍/👎 buttons of a deep dive, showing the current counts once there are any."""

    def button(action: str, emoji: str, count: int) -> dict[str, Any]:
        return {
            "type": "button",
            "action_id": action,
            "value": arxiv_id,
            "text": {"type": "plain_text", "text": f"{emoji} {count}" if count else emoji},
        }

    return {
        "type": "actions",
        "block_id": RATE_BLOCK_ID,
        "elements": [button(RATE_UP, "👍", up), button(RATE_DOWN, "👎", down)],
    }


def with_rating_counts(blocks: list[dict], arxiv_id: str, up: int, down: int) -> list[dict]:
    """A message's blocks with its rating buttons showing new counts (for chat.update)."""
    return [
        rating_block(arxiv_id, up, down) if b.get("block_id") == RATE_BLOCK_ID else b
        for b in blocks
    ]


def pick_blocks(key: str, options: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """One button per paper, `options` being (arXiv ID, label) in the list's order; as many
    actions blocks as Block Kit's 25 elements a block need."""
    buttons = [
        {
            "type": "button",
            "action_id": f"{PICK_ACTION}_{n}",
            "value": f"{key}:{arxiv_id}",
            "text": {
                "type": "plain_text",
                "text": truncate(one_line(label), BUTTON_TEXT),
                "emoji": True,
            },
        }
        for n, (arxiv_id, label) in enumerate(options, start=1)
    ]
    return [
        {
            "type": "actions",
            "block_id": PICK_BLOCK_ID if i == 0 else f"{PICK_BLOCK_ID}-{i // ACTIONS_PER_BLOCK}",
            "elements": buttons[i : i + ACTIONS_PER_BLOCK],
        }
        for i in range(0, len(buttons), ACTIONS_PER_BLOCK)
    ]


def parse_pick_value(value: str) -> tuple[str, str] | None:
    """(choice key, arXiv ID) from a pick button's value; None for anything else."""
    key, _, arxiv_id = value.partition(":")
    return (key, arxiv_id) if key and arxiv_id else None


def _seen_note(entry: DigestEntry, language: str) -> str:
    """ " · 👁 deep-dived here on DATE (earlier thread)": a paper not deep-dived again."""
    if entry.seen is None:
        return ""
    note = " · " + escape(label(language, "seen", date=entry.seen.date))
    link = entry.seen.link
    if link and is_safe_url(link):
        note += f" ({_link(link, label(language, 'earlier_thread'))})"
    return note


def _toc_blocks(
    digest: Digest, title_max: int, reason_max: int, other_max: int, link_others: bool
) -> list[dict]:
    lang = digest.language
    head = [
        _bold(escape(label(lang, "title", date=digest.date))),
        escape(label(lang, "summary", scanned=len(digest.entries), picked=len(digest.picked))),
    ]
    if digest.llm_note:
        head.append("⚠️ " + _text(one_line(digest.llm_note)))
    if digest.quiet:
        head.append(escape(label(lang, "quiet", threshold=digest.threshold)))
    elif digest.picked:
        head.append(escape(label(lang, "in_thread")))
    blocks = mrkdwn_sections(head)

    picked: list[str] = []
    for i, entry in enumerate(digest.picked, start=1):
        line = f"{_bold(f'{i}.')} {_paper_link(entry.paper, title_max)} · {_bold(str(entry.score.score))}/100"
        reason = truncate(one_line(entry.score.reason), reason_max) if reason_max else ""
        picked.append(line + (f"\n↳ {_text(reason)}" if reason else ""))
    if picked:
        blocks += mrkdwn_sections([_bold(escape(label(lang, "quick_view")))] + picked)

    others: list[str] = []
    for entry in digest.others:
        if link_others:
            name = _paper_link(entry.paper, other_max)
        else:
            name = _text(truncate(one_line(entry.paper.title), other_max))
        others.append(f"• {name} · {entry.score.score}{_seen_note(entry, lang)}")
    if others:
        blocks += mrkdwn_sections([_bold(escape(label(lang, "others")))] + others)
    return blocks


# Ever shorter titles and reasons, until 15+ papers with hostile titles fit one message.
_TOC_LEVELS = ((200, 200, 80, True), (120, 120, 60, True), (80, 60, 50, False), (60, 0, 40, False))


def render_toc(digest: Digest) -> SlackMessage:
    """The root message of a digest: counts, picked papers with scores, the others compactly."""
    lang = digest.language
    title = label(lang, "title", date=digest.date)
    if digest.empty:
        line = f"{title} · {label(lang, 'empty')}"
        return SlackMessage(_fallback(line), [_section(escape(line))])
    fallback = f"{title} — {label(lang, 'summary', scanned=len(digest.entries), picked=len(digest.picked))}"
    blocks: list[dict] = []
    for level in _TOC_LEVELS:
        blocks = _toc_blocks(digest, *level)
        if _fits_message(blocks):
            return SlackMessage(_fallback(fallback), blocks)
    return SlackMessage(_fallback(fallback), _clip_blocks(blocks))


def _score_line(entry: DigestEntry, language: str, with_reason: bool) -> str:
    line = f"{escape(label(language, 'score'))}: {_bold(str(entry.score.score))}/100"
    if with_reason and entry.score.reason.strip():
        line += " — " + _text(truncate(one_line(entry.score.reason), 600))
    return line


def _links_line(entry: DigestEntry, language: str) -> str | None:
    """`🔗 Code: <url|label> · 🤗 Models: <url|a>, <url|b> …`, or None without links."""
    groups = link_groups(entry.links, language)
    if not groups:
        return None
    return " · ".join(
        f"{escape(name)}: " + ", ".join(_link(link.url, truncate(link.label, 80)) for link in links)
        for name, links in groups
    )


def render_deep_dive(
    entry: DigestEntry, index: int, language: str, *, rating: bool = True
) -> list[SlackMessage]:
    """One picked paper as thread replies: `index. <url|title>` and score, then the deep dive,
    and (with `rating`) the 👍/👎 buttons at its end.

    `index` is the 1-based number shown in the table of contents.
    """
    header = [
        _bold(f"{index}. {_paper_link(entry.paper, 300)}"),
        _score_line(entry, language, False),
    ]
    links = _links_line(entry, language)
    if links:
        header.append(links)
    note = _score_note(entry, language)
    if note:
        header.append(escape(note))
    blocks = mrkdwn_sections(header)
    if entry.deep_dive is not None:
        blocks += markdown_to_blocks(entry.deep_dive.body_markdown())
    else:
        blocks += mrkdwn_sections([_text(one_line(entry.score.reason)) or "—"])
    if rating:
        blocks.append(rating_block(entry.paper.arxiv_id))
    fallback = f"{index}. {one_line(entry.paper.title)} — {entry.score.score}/100"
    return split_messages(blocks, fallback)


def render_paper_root(entry: DigestEntry, language: str) -> SlackMessage:
    """The root of an on-demand analysis thread: title, first authors, link, score and reason."""
    paper = entry.paper
    lines = [_bold(_paper_link(paper, 300))]
    if paper.authors:
        authors = truncate(authors_line(paper.authors, language), 600)
        lines.append(f"{_text(label(language, 'authors'))}: {_text(authors)}")
    if is_safe_url(paper.abs_url):
        lines.append(f"{escape(label(language, 'link'))}: {_link(paper.abs_url, paper.abs_url)}")
    score = f"{escape(label(language, 'relevance'))}: {_bold(str(entry.score.score))}/100"
    reason = truncate(one_line(entry.score.reason), 600)
    lines.append(score + (f" — {_text(reason)}" if reason else ""))
    note = _score_note(entry, language)
    if note:
        lines.append(_text(note))
    fallback = f"{one_line(paper.title)} — {entry.score.score}/100"
    return SlackMessage(_fallback(fallback), _clip_blocks(mrkdwn_sections(lines)))


def figure_comment(caption: str, limit: int = 1000) -> str:
    """A key figure's caption as the escaped comment of its file upload (plain text)."""
    return _clip(_text(one_line(caption)), limit) if caption.strip() else ""


def render_answer(answer: Answer) -> list[SlackMessage]:
    """A thread answer, split into as many messages as the limits need."""
    blocks = markdown_to_blocks(answer_markdown(answer))
    plain = " ".join(line.text for block in to_blocks(answer.text) for line in block)
    return split_messages(blocks, plain or "—")
