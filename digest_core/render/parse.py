"""Shared Markdown machinery for the chat renderers: one parser, one line-based form, one splitter.

Markdown (from the LLM or built by us) is parsed once by markdown-it with raw HTML off, so
`<mask>` or `a<b` stay text, and with the CJK-friendly plugin, so `**方法：**使用` is bold. The
tree is flattened into `Line`s of styled `Run`s grouped by top-level block. Slack and Telegram
each serialise any slice of lines on their own: because styles live on runs and not on open/close
events, every slice (and every piece of a cut line) serialises to well-formed markup. `pack`
splits the blocks into chunks that fit a platform limit.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode
from mdit_py_cjk_friendly import cjk_friendly

# The one parser configuration of the project.
MD = MarkdownIt("commonmark", {"html": False}).enable(["strikethrough", "table"]).use(cjk_friendly)

INDENT = "    "
BULLETS = ("•", "◦", "▪")
RULE = "──────────"

_SAFE_URL = re.compile(r"https?://[^\s<>|\"'`\x00-\x1f\x7f]+", re.IGNORECASE)
_LANG_JUNK = re.compile(r"[^\w+#.-]")


def parse(md: str) -> SyntaxTreeNode:
    return SyntaxTreeNode(MD.parse(md))


def is_safe_url(url: str | None) -> bool:
    """True for an http(s) URL that cannot break out of `<url|label>` or `href="…"`."""
    return bool(url) and _SAFE_URL.fullmatch(url) is not None


def one_line(text: str) -> str:
    """Collapse every run of whitespace (newlines included) to one space."""
    return " ".join(text.split())


def truncate(text: str, limit: int) -> str:
    """At most `limit` characters, ending in "…" when cut; never splits an emoji sequence."""
    if len(text) <= limit:
        return text
    if limit <= 1:
        return "…"[:limit]
    cut = safe_cut(text, limit - 1)
    return text[:cut].rstrip() + "…"


# --- graphemes (approximate, enough to never cut an emoji or a combining sequence) ----------

_ZWJ = "\u200d"


def _extends(ch: str) -> bool:
    """Characters that belong to the preceding one: marks, joiners, selectors, modifiers."""
    cp = ord(ch)
    return (
        ch == _ZWJ
        or unicodedata.category(ch) in ("Mn", "Me", "Mc")
        or 0xFE00 <= cp <= 0xFE0F
        or 0xE0100 <= cp <= 0xE01EF
        or 0x1F3FB <= cp <= 0x1F3FF
        or 0xE0020 <= cp <= 0xE007F
    )


def _regional(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def graphemes(text: str) -> list[tuple[int, int]]:
    """(start, end) spans of user-perceived characters, approximately (UAX #29 lite)."""
    spans: list[tuple[int, int]] = []
    for i, ch in enumerate(text):
        if spans:
            start, _ = spans[-1]
            prev = text[i - 1]
            joins = _extends(ch) or prev == _ZWJ
            flag_pair = _regional(ch) and _regional(prev) and (i - start) == 1
            if joins or flag_pair:
                spans[-1] = (start, i + 1)
                continue
        spans.append((i, i + 1))
    return spans


def safe_cut(text: str, pos: int) -> int:
    """The largest grapheme boundary at or before `pos`."""
    best = 0
    for start, end in graphemes(text[: pos + 8]):
        if end <= pos:
            best = end
        if start >= pos:
            break
    return best


# --- the line-based intermediate form -------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """A piece of text with its inline styles, outermost first ("b", "i", "s").

    `code` runs are inline code; `href` runs are links (the text is the label). Both are atoms:
    a splitter keeps them whole unless one alone is over the limit.
    """

    text: str
    styles: tuple[str, ...] = ()
    code: bool = False
    href: str | None = None

    @property
    def atom(self) -> bool:
        return self.code or self.href is not None


@dataclass(frozen=True)
class Line:
    """One output line. `code_id` groups the lines of one code block (its language in `lang`)."""

    runs: tuple[Run, ...] = ()
    quote: bool = False
    code_id: int | None = None
    lang: str = ""
    heading: bool = False

    @property
    def text(self) -> str:
        return "".join(r.text for r in self.runs)


BLANK = Line()
Block = list[Line]


def _add(styles: tuple[str, ...], style: str) -> tuple[str, ...]:
    return styles if style in styles else styles + (style,)


def plain_text(node: SyntaxTreeNode) -> str:
    """The text of a node without any markup (links keep their label)."""
    if node.type in ("text", "code_inline", "html_inline"):
        return node.content
    if node.type in ("softbreak", "hardbreak"):
        return " "
    if node.type in ("fence", "code_block", "html_block"):
        return node.content
    return "".join(plain_text(c) for c in node.children)


def _display_width(text: str) -> int:
    # Wide CJK characters take two cells in a monospaced table.
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


class _Builder:
    def __init__(self) -> None:
        self._code_ids = itertools.count()

    def blocks(self, md: str) -> list[Block]:
        root = parse(md)
        return [lines for child in root.children if (lines := self.node(child, 0))]

    # blocks -----------------------------------------------------------------------------

    def node(self, node: SyntaxTreeNode, depth: int) -> list[Line]:
        kind = node.type
        if kind == "paragraph":
            return self.inline_lines(node, ())
        if kind == "heading":
            lines = self.inline_lines(node, ("b",), strip=("b",))
            return [replace(line, heading=True) for line in lines]
        if kind in ("bullet_list", "ordered_list"):
            return self.list_lines(node, depth)
        if kind == "blockquote":
            lines: list[Line] = []
            for i, child in enumerate(node.children):
                if i:
                    lines.append(BLANK)
                lines.extend(self.node(child, depth))
            return [replace(line, quote=True) for line in lines]
        if kind in ("fence", "code_block"):
            lang = _LANG_JUNK.sub("", (node.info or "").split(" ")[0])[:30]
            return self.code_lines(node.content.rstrip("\n").split("\n"), lang)
        if kind == "table":
            return self.table_lines(node)
        if kind == "hr":
            return [Line((Run(RULE),))]
        # Anything else (html_block cannot occur with html off): keep its text, literally.
        text = plain_text(node).rstrip("\n")
        return [Line((Run(t),)) for t in text.split("\n")] if text else []

    def code_lines(self, rows: Sequence[str], lang: str) -> list[Line]:
        code_id = next(self._code_ids)
        return [Line((Run(row),) if row else (), code_id=code_id, lang=lang) for row in rows]

    def list_lines(self, node: SyntaxTreeNode, depth: int) -> list[Line]:
        ordered = node.type == "ordered_list"
        number = int(node.attrs.get("start", 1) or 1) if ordered else 0
        indent = INDENT * depth
        lines: list[Line] = []
        for item in node.children:
            marker = f"{number}. " if ordered else f"{BULLETS[depth % len(BULLETS)]} "
            number += 1
            first = True
            for child in item.children:
                child_lines = self.node(child, depth + 1)
                if child.type in ("bullet_list", "ordered_list"):
                    lines.extend(child_lines)  # already indented one level deeper
                    continue
                for line in child_lines:
                    if line.code_id is not None:
                        lines.append(line)
                        continue
                    prefix = indent + marker if first else indent + " " * len(marker)
                    lines.append(replace(line, runs=(Run(prefix),) + line.runs))
                    first = False
            if first:  # an empty item still shows its marker
                lines.append(Line((Run(indent + marker.rstrip()),)))
        return lines

    def table_lines(self, node: SyntaxTreeNode) -> list[Line]:
        rows: list[list[str]] = []
        for section in node.children:
            for tr in section.children:
                rows.append([one_line(plain_text(cell)) for cell in tr.children])
        if not rows:
            return []
        ncols = max(len(r) for r in rows)
        rows = [r + [""] * (ncols - len(r)) for r in rows]
        widths = [max(_display_width(r[c]) for r in rows) for c in range(ncols)]

        def fmt(row: list[str]) -> str:
            cells = [cell + " " * (widths[c] - _display_width(cell)) for c, cell in enumerate(row)]
            return " | ".join(cells).rstrip()

        text_rows = [fmt(rows[0]), "-+-".join("-" * w for w in widths)] + [fmt(r) for r in rows[1:]]
        return self.code_lines(text_rows, "")

    # inline -----------------------------------------------------------------------------

    def inline_lines(
        self, node: SyntaxTreeNode, styles: tuple[str, ...], strip: tuple[str, ...] = ()
    ) -> list[Line]:
        out: list[list[Run]] = [[]]
        for child in node.children:  # the single `inline` child of a paragraph or heading
            self.inline(child, styles, strip, out)
        return [Line(tuple(runs)) for runs in out]

    def inline(
        self,
        node: SyntaxTreeNode,
        styles: tuple[str, ...],
        strip: tuple[str, ...],
        out: list[list[Run]],
    ) -> None:
        kind = node.type
        style = {"strong": "b", "em": "i", "s": "s"}.get(kind)
        if kind == "inline":
            for child in node.children:
                self.inline(child, styles, strip, out)
        elif style is not None:
            inner = styles if style in strip else _add(styles, style)
            for child in node.children:
                self.inline(child, inner, strip, out)
        elif kind in ("softbreak", "hardbreak"):
            # Chat clients show source line breaks; LLM output relies on them.
            out.append([])
        elif kind == "code_inline":
            if node.content:
                out[-1].append(Run(node.content, (), code=True))
        elif kind in ("link", "image"):
            href = node.attrs.get("href") if kind == "link" else node.attrs.get("src")
            href = str(href) if href is not None else ""
            label = one_line(plain_text(node) if kind == "link" else node.content) or href
            if is_safe_url(href):
                out[-1].append(Run(label, styles, href=href))
            else:
                # Not a link we can vouch for: show it as text, never as markup.
                text = label if not href or label == href else f"{label} ({href})"
                out[-1].append(Run(text, styles))
        elif kind in ("text", "html_inline"):
            if node.content:
                out[-1].append(Run(node.content, styles))
        else:
            text = plain_text(node)
            if text:
                out[-1].append(Run(text, styles))


def to_blocks(md: str) -> list[Block]:
    """Markdown → top-level blocks of lines."""
    return _Builder().blocks(md)


def blocks_to_lines(blocks: Sequence[Block]) -> list[Line]:
    """Join blocks with a blank line between them."""
    lines: list[Line] = []
    for i, block in enumerate(blocks):
        if i:
            lines.append(BLANK)
        lines.extend(block)
    return lines


# --- splitting ----------------------------------------------------------------------------

Fits = Callable[[list[Line]], bool]

_SENTENCE_END = set("。！？!?；;…")
_SOFT_END = set(".,，、:：)）]」』")


def _plain(run: Run) -> Run:
    return Run(run.text, run.styles)


def split_line(line: Line, fits: Fits) -> list[Line]:
    """Cut one line into pieces that each fit, preferring sentence ends, then spaces.

    Links and code spans stay whole; one too big on its own is demoted to plain text first.
    Cuts fall on grapheme boundaries, so an emoji is never halved.
    """
    runs = [_plain(r) if r.atom and not fits([replace(line, runs=(r,))]) else r for r in line.runs]
    units: list[tuple[int, int, int]] = []  # (run index, start, end)
    for ri, run in enumerate(runs):
        if run.atom:
            units.append((ri, 0, len(run.text)))
        else:
            units.extend((ri, s, e) for s, e in graphemes(run.text))

    def make(a: int, b: int) -> Line:
        pieces: list[Run] = []
        for ri, group in itertools.groupby(units[a:b], key=lambda u: u[0]):
            spans = list(group)
            run = runs[ri]
            pieces.append(replace(run, text=run.text[spans[0][1] : spans[-1][2]]))
        return replace(line, runs=tuple(pieces))

    def char(i: int) -> str:
        ri, s, e = units[i]
        return "" if runs[ri].atom else runs[ri].text[s:e]

    out: list[Line] = []
    start = 0
    while start < len(units):
        if fits([make(start, len(units))]):
            out.append(make(start, len(units)))
            break
        lo, hi = 1, len(units) - start
        while lo < hi:  # largest count that fits (at least one unit, even if it does not)
            mid = (lo + hi + 1) // 2
            if fits([make(start, start + mid)]):
                lo = mid
            else:
                hi = mid - 1
        end = start + lo
        floor = start + max(1, lo // 2)  # don't make pieces absurdly short to hit a boundary
        for wanted in (_SENTENCE_END, _SOFT_END, None):
            for j in range(end, floor - 1, -1):
                c = char(j - 1)
                if (wanted is None and c.isspace()) or (wanted is not None and c in wanted):
                    end = j
                    break
            else:
                continue
            break
        out.append(make(start, end))
        start = end
        while start < len(units) and char(start).isspace():
            start += 1
    return out


def _is_heading(unit: tuple[list[Line], bool]) -> bool:
    return all(line.heading for line in unit[0])


def pack(
    blocks: Sequence[Block], fits: Fits, *, break_at_headings: bool = False
) -> list[list[Line]]:
    """Group blocks into chunks that each satisfy `fits`, in order, nothing dropped.

    Whole blocks are preferred; a block too big alone is cut at its lines, and a line too big
    alone is cut by `split_line`. A chunk does not end with a lone heading when the heading can
    move to the next chunk.
    """
    units: list[tuple[list[Line], bool]] = []  # (lines, starts a new block)
    for block in blocks:
        if fits(block):
            units.append((block, True))
            continue
        first = True
        for line in block:
            pieces = [line] if fits([line]) else split_line(line, fits)
            for piece in pieces:
                units.append(([piece], first))
                first = False

    def join(group: list[tuple[list[Line], bool]]) -> list[Line]:
        lines: list[Line] = []
        for i, (unit_lines, starts_block) in enumerate(group):
            if i and starts_block:
                lines.append(BLANK)
            lines.extend(unit_lines)
        return lines

    chunks: list[list[Line]] = []
    current: list[tuple[list[Line], bool]] = []
    for unit in units:
        if current and break_at_headings and unit[1] and _is_heading(unit):
            chunks.append(join(current))
            current = []
        if not current or fits(join(current + [unit])):
            current.append(unit)
            continue
        carry: list[tuple[list[Line], bool]] = []
        if len(current) > 1 and _is_heading(current[-1]):
            carry = [current.pop()]
        chunks.append(join(current))
        current = carry + [unit]
        if carry and not fits(join(current)):
            chunks.append(join(carry))
            current = [unit]
    if current:
        chunks.append(join(current))
    return chunks
