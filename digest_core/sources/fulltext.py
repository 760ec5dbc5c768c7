"""Full text for deep dives: arXiv HTML first, then the PDF, then the abstract.

arXiv's HTML is LaTeXML output with stable class names, so it parses into clean sections
with formulas kept as `$LaTeX$`. Not every paper converts, so the PDF (pypdf, split on
heading-looking lines) and finally the abstract are fallbacks. `fetch_fulltext` never raises
for source trouble: a deep dive from the abstract is better than none. `FullText.text` cuts
the paper to a token budget, keeping the sections a reviewer reads first.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from selectolax.lexbor import LexborHTMLParser, LexborNode

from ..arxiv_id import InvalidArxivId, parse_arxiv_id
from ..config import SourceSettings
from ..models import SOURCE_ABSTRACT, SOURCE_HTML, SOURCE_PDF, Paper
from . import total_deadline

log = logging.getLogger(__name__)

# Bounds on what we download and parse: a paper is never this big, a broken server might be.
HTML_MAX_BYTES = 20 * 1024 * 1024
PDF_MAX_BYTES = 40 * 1024 * 1024
PDF_MAX_PAGES = 80
MAX_REDIRECTS = 3
# Less extracted text than this means a failed conversion or a scanned PDF.
MIN_TEXT_CHARS = 200
# A truncated section smaller than this is not worth its heading.
MIN_PIECE_TOKENS = 64

TRUNCATION_MARKER = "[…]"
# Bumped whenever the stored shape of a FullText (see FullText.dump) changes.
FULLTEXT_CACHE_VERSION = "ft3"  # ft3: the key figure is kept with the sections

# Hiragana, Katakana, CJK punctuation, ideographs (incl. extension A/B+), Hangul, full-width
# forms: roughly one token per character in common tokenizers.
_CJK = re.compile(
    "[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
    "\uff00-\uffef\U00020000-\U0002fa1f]"
)


def estimate_tokens(text: str) -> int:
    """Approximate token count: each CJK character is one token, other text ~4 chars a token."""
    if not text:
        return 0
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / 4)


# Section roles, in the order the budget keeps them: the budget cuts from the bottom.
# "drop" (references, acknowledgements) is never sent to the LLM.
ROLES = (
    "abstract",
    "introduction",
    "method",
    "results",
    "conclusion",
    "related",
    "other",
    "appendix",
)
_RANK = {role: n for n, role in enumerate(ROLES)}
_KEY_ROLES = frozenset({"introduction", "method", "results"})
DROP = "drop"

# What a heading says about its section. Position decides the rest (see _assign_roles).
_ROLE_WORDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (DROP, re.compile(r"reference|bibliograph|acknowledg", re.I)),
    ("appendix", re.compile(r"^\s*(?:appendix|appendices|supplementary material)\b", re.I)),
    ("abstract", re.compile(r"^\W*abstract\b", re.I)),
    ("introduction", re.compile(r"\bintroduction\b", re.I)),
    ("related", re.compile(r"related\s+work|prior\s+work|previous\s+work|literature", re.I)),
    (
        "conclusion",
        re.compile(r"conclu|limitation|future\s+work|broader\s+impact|^summary$", re.I),
    ),
    (
        "results",
        re.compile(r"experiment|result|evaluat|benchmark|ablation|empirical|case\s+stud", re.I),
    ),
    # "Discussion" alone closes the paper, but "Results and discussion" (the usual
    # physics-journal heading, e.g. arXiv 2401.00596 "III Results and discussion") is the
    # results section: so it is matched only after the results words.
    ("conclusion", re.compile(r"discussion", re.I)),
    ("method", re.compile(r"method|approach|preliminar|background|formulation", re.I)),
)
# A leading section number: "3", "3.2", "A", "B.1", roman "IV" (IEEE style).
_HEADING_NUMBER = re.compile(
    r"\s*(?:appendix\s+)?([0-9]+(?:\.[0-9]+)*|[A-Z](?:\.[0-9]+)*|[IVX]+)\b"
)
_CAPTION_LABEL = re.compile(r"\s*(Table|TABLE|Figure|FIGURE|Fig\.)\s*([0-9]+|[IVX]+)\s*[:.]")


def heading_role(heading: str) -> str | None:
    """The role a heading names by its words, or None when only its position can tell."""
    title = _strip_number(heading)
    for role, pattern in _ROLE_WORDS:
        if pattern.search(title if role not in ("appendix",) else heading):
            return role
    return None


def _strip_number(heading: str) -> str:
    number = _HEADING_NUMBER.match(heading)
    if number and number.group(1) and heading[number.end() :].startswith(" "):
        return heading[number.end() :].strip()
    return heading.strip()


@dataclass(frozen=True)
class Passage:
    """One retrievable unit of a paper: a paragraph, a table or a figure caption.

    `section` is the heading of the (sub)section it sits in (e.g. "4.2 Ablation study",
    "Appendix A Hyperparameters"); `label` names a table or figure ("Table 2", "Figure 3").
    A paragraph title ("Limitations and future work.") stays inside its paragraph's text.
    """

    section: str
    text: str
    kind: str = "text"  # "text" | "table" | "figure"
    label: str | None = None


@dataclass(frozen=True)
class Block:
    """A paragraph, table (caption, then `a | b | c` rows) or figure (main caption, panels).

    `section` is the innermost heading above it when that is a subsection ("" = the
    section's own heading)."""

    text: str
    kind: str = "text"
    label: str | None = None
    section: str = ""


@dataclass(frozen=True)
class Section:
    """A top-level section: its heading, its role in the paper and its blocks in order.

    Unpacks as `(heading, text)` so code written for plain pairs keeps working."""

    heading: str
    blocks: tuple[Block, ...]
    role: str = ""  # one of ROLES or DROP; "" = decide from the heading and position

    @classmethod
    def of(cls, heading: str, body: str, role: str = "") -> Section:
        """A section from plain text: paragraphs split at blank lines; a paragraph that
        starts "Table N:" / "Figure N:" is that table's or figure's caption."""
        blocks = []
        for para in re.split(r"\n\s*\n", body):
            para = para.strip()
            if not para:
                continue
            caption = _CAPTION_LABEL.match(para)
            if caption:
                kind = "table" if caption.group(1).lower() == "table" else "figure"
                blocks.append(Block(para, kind, f"{kind.title()} {caption.group(2)}"))
            else:
                blocks.append(Block(para))
        return cls(heading, tuple(blocks), role)

    @property
    def text(self) -> str:
        return "\n\n".join(b.text for b in self.blocks if b.text)

    def __iter__(self) -> Iterator[str]:
        return iter((self.heading, self.text))


def _assign_roles(sections: Sequence[Section]) -> tuple[Section, ...]:
    """Fill in each section's role from its heading and, failing that, its position: the
    sections between the introduction and the experiments are the method whatever they
    are called; between the experiments and the conclusion, more results."""
    named = [s.role or heading_role(s.heading) for s in sections]

    def first(role: str, after: int = -1) -> int | None:
        return next((i for i, r in enumerate(named) if r == role and i > after), None)

    intro = first("introduction")
    start = (
        intro if intro is not None else (first("abstract") if first("abstract") is not None else -1)
    )
    results = first("results", start)
    end_method = results
    if end_method is None:
        closing = [
            i for i, r in enumerate(named) if r in ("conclusion", "appendix", DROP) and i > start
        ]
        end_method = min(closing) if closing else len(sections)
    conclusion = first("conclusion", results if results is not None else start)
    out = []
    for i, (section, role) in enumerate(zip(sections, named, strict=True)):
        if role is None:
            if start < i < end_method:
                role = "method"
            elif results is not None and results < i and (conclusion is None or i < conclusion):
                role = "results"
            elif i < (start if start >= 0 else 0):
                role = "other"
            else:
                role = "other"
        out.append(
            section if section.role == role else Section(section.heading, section.blocks, role)
        )
    return tuple(out)


_LABEL_KINDS = {"table": "table", "figure": "figure"}


@dataclass(frozen=True)
class KeyFigure:
    """The paper's key figure as its arXiv HTML page shows it (usually the teaser, Figure 1):
    where the image is (an absolute URL, not yet checked or fetched) and its caption."""

    image_url: str
    caption: str
    label: str | None = None


@dataclass(frozen=True)
class FullText:
    """What a deep dive reads: where it came from and the paper's sections in order.

    `sections` may be given as `Section`s or as plain `(heading, text)` pairs; either way
    it holds `Section`s with their roles once built."""

    source: str  # models.SOURCE_HTML / SOURCE_PDF / SOURCE_ABSTRACT
    sections: tuple[Section, ...]
    # The first figure with a raster image, from the arXiv HTML only (see key_figure_of).
    figure: KeyFigure | None = None

    def __post_init__(self) -> None:
        given = tuple(
            s if isinstance(s, Section) else Section.of(str(s[0]), str(s[1])) for s in self.sections
        )
        object.__setattr__(self, "sections", _assign_roles(given))

    def _kept(self) -> list[Section]:
        return [s for s in self.sections if s.role != DROP and s.blocks]

    @property
    def section_count(self) -> int:
        """How many sections of the paper are read (references and acknowledgements are not)."""
        return len(self._kept())

    def passages(self) -> list[Passage]:
        """Every paragraph, table and figure in document order, each with its (sub)section.
        References and acknowledgements are not part of the paper's content here."""
        return [
            Passage(block.section or section.heading, block.text, block.kind, block.label)
            for section in self._kept()
            for block in section.blocks
            if block.text
        ]

    def whole(self) -> str:
        """The whole paper as given (every section but references and acknowledgements, no
        budget): what a number is checked against, and the answer context when it fits."""
        return "\n\n".join(_render(s.heading, s.text) for s in self._kept() if s.text)

    def labels(self) -> frozenset[str]:
        """The sections, tables, figures and appendices that exist, normalised for citation
        checks: "section 3", "section 3.2", "table 2", "figure 1", "appendix a"."""
        found: set[str] = set()
        for section in self._kept():
            headings = {section.heading} | {b.section for b in section.blocks if b.section}
            for heading in headings:
                found |= _heading_labels(heading, section.role == "appendix")
            for block in section.blocks:
                if block.label and block.kind in _LABEL_KINDS:
                    number = block.label.split()[-1].lower()
                    found.add(f"{_LABEL_KINDS[block.kind]} {number}")
        return frozenset(found)

    def dump(self) -> list[tuple[str, str]]:
        """(heading, JSON) pairs for the full-text cache; `load` reads them back. The key
        figure rides in the first section's JSON."""
        rows = []
        for n, s in enumerate(self.sections):
            data: dict[str, Any] = {
                "role": s.role,
                "blocks": [[b.kind, b.label, b.section, b.text] for b in s.blocks],
            }
            if n == 0 and self.figure is not None:
                data["figure"] = [self.figure.image_url, self.figure.caption, self.figure.label]
            rows.append((s.heading, json.dumps(data, ensure_ascii=False)))
        return rows

    @classmethod
    def load(cls, source: str, rows: Iterable[Sequence[str]]) -> FullText:
        """The inverse of `dump`; ValueError on a row it did not write."""
        sections = []
        figure = None
        try:
            for heading, data in rows:
                parsed = json.loads(data)
                blocks = tuple(
                    Block(str(text), str(kind), None if label is None else str(label), str(sub))
                    for kind, label, sub, text in parsed["blocks"]
                )
                sections.append(Section(str(heading), blocks, str(parsed["role"])))
                if "figure" in parsed:
                    url, caption, label = parsed["figure"]
                    figure = KeyFigure(
                        str(url), str(caption), None if label is None else str(label)
                    )
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"not a cached full text ({type(exc).__name__})") from exc
        return cls(source, tuple(sections), figure)

    def text(self, token_budget: int) -> str:
        """The paper as Markdown-ish text within `token_budget` (see `estimate_tokens`).

        Whole sections are kept in role order (see ROLES): abstract; then introduction,
        method and experiments/results (these share the room fairly, so a long
        introduction cannot crowd out the method); then conclusion and limitations (a
        short one has its room set aside); then related work, other sections and the
        appendix. The budget cuts from the bottom of that order. A section too big for
        its room is cut at a paragraph or sentence boundary and marked with "[…]". Chosen
        sections keep document order.
        """
        pieces = [
            _Piece(i, s.heading.strip(), s.text.strip(), _RANK[s.role])
            for i, s in enumerate(self.sections)
            if s.role != DROP and s.text.strip()
        ]
        chosen: dict[int, str] = {}
        room = max(0, token_budget)

        def place(piece: _Piece, allowance: int) -> int:
            """Put `piece` in within `allowance` tokens (cut if needed); returns tokens used."""
            if piece.cost <= allowance:
                chosen[piece.index] = piece.render()
                return piece.cost
            if allowance < min(MIN_PIECE_TOKENS, piece.cost):
                return 0
            cut = piece.cut(allowance)
            if cut is None:
                return 0
            chosen[piece.index] = cut
            return _cost(cut)

        for piece in (p for p in pieces if p.rank == _RANK["abstract"]):
            room -= place(piece, room)

        key_ranks = {_RANK[r] for r in _KEY_ROLES}
        keys = sorted((p for p in pieces if p.rank in key_ranks), key=lambda p: (p.rank, p.index))
        # A short conclusion is worth more than the last paragraphs of a long method, so
        # its room is set aside when it is small (at most a tenth of the budget).
        conclusion = _RANK["conclusion"]
        reserve = sum(p.cost for p in pieces if p.rank == conclusion)
        if reserve > token_budget // 10 or room - reserve < MIN_PIECE_TOKENS * len(keys):
            reserve = 0
        room -= reserve
        if keys and room >= MIN_PIECE_TOKENS * len(keys):
            # Max-min fair split: the smallest sections take what they need, the remaining
            # room is shared equally by the rest.
            for n, piece in enumerate(sorted(keys, key=lambda p: p.cost)):
                share = room // (len(keys) - n)
                room -= place(piece, min(piece.cost, share))
        else:
            # Too little room to share: strict priority order.
            for piece in keys:
                room -= place(piece, room)
        room += reserve

        def whole(piece: _Piece) -> bool:
            return chosen.get(piece.index) == piece.render()

        # The rest strictly in role order: a later role gets only what earlier ones left,
        # and nothing once an earlier section was cut. (A cut at a paragraph boundary
        # leaves a few hundred tokens over; on arXiv 2401.00596 they went to the first
        # lines of Appendix A while "III Results and discussion" was cut short.)
        cut_above = not all(whole(p) for p in pieces if p.rank < conclusion)
        rest = sorted((p for p in pieces if p.rank >= conclusion), key=lambda p: (p.rank, p.index))
        for piece in rest:
            if cut_above and piece.rank > conclusion:
                break
            room -= place(piece, room)
            cut_above = cut_above or not whole(piece)

        return "\n\n".join(chosen[i] for i in sorted(chosen))


def _render(heading: str, body: str) -> str:
    return f"## {heading}\n\n{body}" if heading else body


def _heading_labels(heading: str, appendix: bool) -> set[str]:
    """ "section 3.2" for "3.2 Ablations"; "appendix b" (and "appendix b.1", "section b.1")
    in an appendix; "section iv" for IEEE-style "IV Results", "section iii.2" for a
    REVTeX subsection "III.2 Nuclear remnants"."""
    out: set[str] = set()
    match = re.match(
        r"\s*(?:appendix\s+)?([0-9]+(?:\.[0-9]+)*|[IVX]+(?:\.[0-9]+)*|[A-Z](?:\.[0-9]+)*)(?=\s|$)",
        heading,
        re.I if appendix else 0,
    )
    if not match:
        return out
    number = match.group(1).lower()
    if number[0].isdigit():
        out.add(f"section {number}")
    elif appendix and re.fullmatch(r"[a-z](?:\.[0-9]+)*", number):
        out.add(f"appendix {number}")
        if "." in number:
            out.add(f"section {number}")
    elif re.fullmatch(r"[ivx]+(?:\.[0-9]+)*", number) and not appendix:
        out.add(f"section {number}")  # REVTeX subsections too: "II.2", "III.4"
    return out


@dataclass(frozen=True)
class _Piece:
    index: int
    heading: str
    body: str
    rank: int

    def render(self, body: str | None = None) -> str:
        body = self.body if body is None else body
        return f"## {self.heading}\n\n{body}" if self.heading else body

    @property
    def cost(self) -> int:
        return _cost(self.render())

    def cut(self, allowance: int) -> str | None:
        head_cost = _cost(self.render(""))
        body = _truncate(self.body, allowance - head_cost)
        return None if body is None else self.render(body)


def _cost(rendered: str) -> int:
    # +1 for the blank line that joins sections. Summing per-piece ceilings over-estimates
    # the joined text, so the whole never exceeds the budget.
    return estimate_tokens(rendered) + 1


# Latin sentences end before whitespace; CJK full stops need none after them.
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|[。！？]")


def _truncate(text: str, max_tokens: int) -> str | None:
    """`text` cut to at most `max_tokens`, at a paragraph, sentence or word boundary."""
    marker_cost = estimate_tokens("\n\n" + TRUNCATION_MARKER)
    avail = max_tokens - marker_cost
    if avail <= 0:
        return None
    # No character is cheaper than a quarter token, so the answer is within 4 * avail chars.
    text = text[: avail * 4 + 4]
    lo, hi = 0, len(text)
    while lo < hi:  # longest prefix within budget; the estimate only grows with length
        mid = (lo + hi + 1) // 2
        if estimate_tokens(text[:mid]) <= avail:
            lo = mid
        else:
            hi = mid - 1
    prefix = text[:lo]
    if lo == len(text):
        return prefix
    half = len(prefix) // 2
    paragraph = prefix.rfind("\n\n")
    if paragraph >= half:
        return prefix[:paragraph].rstrip() + "\n\n" + TRUNCATION_MARKER
    sentences = [m.end() for m in _SENTENCE_END.finditer(prefix)]
    if sentences and sentences[-1] >= half:
        return prefix[: sentences[-1]] + " " + TRUNCATION_MARKER
    space = prefix.rfind(" ")
    end = space if space >= half else len(prefix)
    return prefix[:end].rstrip() + " " + TRUNCATION_MARKER


# ---------------------------------------------------------------------------------------
# arXiv HTML (LaTeXML)

# Elements whose text never belongs in the paper body we send.
_SKIP_CLASSES = frozenset(
    {
        "ltx_bibliography",
        "ltx_note",  # footnotes and \thanks
        "ltx_ERROR",
        "ltx_authors",
        "ltx_dates",
        "ltx_page_header",
        "ltx_page_footer",
        "ltx_page_navbar",
        "ltx_TOC",
        "ltx_acknowledgements",
        "ltx_title_document",
        "ltx_keywords",
        "ltx_classification",
    }
)
_SKIP_TAGS = frozenset(
    {"script", "style", "nav", "header", "footer", "button", "svg", "noscript", "img", "form"}
)
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_TOP_LEVEL = frozenset({"ltx_section", "ltx_appendix", "ltx_chapter"})
_EQUATIONS = frozenset({"ltx_equation", "ltx_equationgroup", "ltx_eqn_table"})
# Panel captions longer than this are dropped: the main caption carries the figure.
PANEL_CAPTION_CHARS = 200


def parse_arxiv_html(html: str) -> tuple[Section, ...]:
    """The sections of an arXiv LaTeXML page in document order; () for an error or empty
    page. Tables come as their own blocks (caption, then `a | b | c` rows), figures as
    their main caption plus short panel captions, formulas as `$alttext$`."""
    try:
        document = LexborHTMLParser(html).css_first(".ltx_document")
        if document is None:
            return ()
        sections = _document_sections(document)
    except Exception:  # selectolax on hostile markup: fall back, never crash a deep dive
        log.warning("arXiv HTML could not be parsed", exc_info=True)
        return ()
    kept = tuple(s for s in sections if s.blocks)
    if sum(len(b.text) for s in kept for b in s.blocks) < MIN_TEXT_CHARS:
        return ()
    return kept


# Images a chat can show inline. LaTeXML also emits SVG (`<object data=…svg>`), which
# Telegram's sendPhoto refuses and Slack shows as a file: those figures are passed over.
RASTER_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
}
RASTER_TYPES[".webp"] = "image/webp"


def key_figure_of(html: str, page_url: str) -> KeyFigure | None:
    """The first figure of an arXiv LaTeXML page that has a raster image, with its caption:
    usually the teaser (Figure 1). The image URL is made absolute against the page's
    `<base href>` when it has one, else against `page_url` (the URL the page came from), as a
    browser would. Tables and figures nested in another figure (panels) are not candidates
    of their own. None when there is no such figure or the page cannot be parsed."""
    try:
        tree = LexborHTMLParser(html)
        document = tree.css_first(".ltx_document")
        if document is None:
            return None
        base = httpx.URL(page_url)
        base_tag = tree.css_first("base[href]")
        if base_tag is not None:
            base = base.join(base_tag.attributes.get("href") or "")
        for figure in document.css("figure"):
            classes = _classes(figure)
            if "ltx_table" in classes or _inside_figure(figure):
                continue
            src = next(
                (
                    img.attributes.get("src") or ""
                    for img in figure.css("img")
                    if _raster(img.attributes.get("src") or "")
                ),
                "",
            )
            if not src:
                continue
            captions = _own(figure, "figcaption")
            caption, label = _caption(captions[0]) if captions else ("", None)
            if label and label.lower().startswith("table"):
                continue
            return KeyFigure(str(base.join(src.strip())), caption, label)
    except Exception:  # hostile markup or a bad URL: no figure, never a failed deep dive
        log.warning("arXiv HTML: key figure could not be read", exc_info=True)
    return None


def _raster(src: str) -> bool:
    path = src.split("?", 1)[0].split("#", 1)[0].lower()
    return bool(src) and not path.startswith("data:") and path.endswith(tuple(RASTER_TYPES))


def _inside_figure(node: LexborNode) -> bool:
    parent = node.parent
    while parent is not None:
        if parent.tag == "figure":
            return True
        parent = parent.parent
    return False


def _document_sections(document: LexborNode) -> list[Section]:
    sections: list[Section] = []
    abstract = document.css_first("div.ltx_abstract")
    if abstract is not None:
        blocks = _blocks_of(abstract, skip_titles=True)
        if blocks:
            sections.append(Section("Abstract", tuple(blocks), "abstract"))
    tops = [s for s in document.css("section") if _classes(s) & _TOP_LEVEL and not _inside_top(s)]
    if not tops:
        # A short paper without \section: the body as one block.
        blocks = _blocks_of(document, skip=frozenset({"ltx_abstract"}))
        if blocks:
            sections.append(Section("Text", tuple(blocks)))
        return sections
    # Text before the first section (often a teaser figure) joins the first section.
    front = _blocks_before(document, tops[0])
    for n, top in enumerate(tops):
        heading = _title_of(top)
        role = "appendix" if "ltx_appendix" in _classes(top) else ""
        subs = [
            s
            for s in top.css("section.ltx_subsection")
            if (parent := _parent_section(s)) is not None and parent.mem_id == top.mem_id
        ]
        if abstract is None and any(
            heading_role(_title_of(s)) in ("abstract", "introduction") for s in subs
        ):
            # "1 Overview > 1.1 Abstract, 1.2 Introduction, ...": the subsections are the
            # paper's real top level.
            lead = _blocks_of(top, stop_at=frozenset({"ltx_subsection"}), skip_titles=True)
            for i, sub in enumerate(subs):
                blocks = _blocks_of(sub, skip_titles=True)
                if i == 0:
                    blocks = front + lead + blocks
                sections.append(Section(_title_of(sub) or heading, tuple(blocks), role))
            front = []
            continue
        blocks = _blocks_of(top, skip_titles=True)
        if n == 0:
            blocks = front + blocks
            front = []
        sections.append(Section(heading or f"Section {len(sections) + 1}", tuple(blocks), role))
    return sections


def _classes(node: LexborNode) -> set[str]:
    return set((node.attributes.get("class") or "").split())


def _inside_top(node: LexborNode) -> bool:
    parent = node.parent
    while parent is not None:
        if parent.tag == "section" and _classes(parent) & _TOP_LEVEL:
            return True
        parent = parent.parent
    return False


def _parent_section(node: LexborNode) -> LexborNode | None:
    parent = node.parent
    while parent is not None and parent.tag != "section":
        parent = parent.parent
    return parent


def _title_of(section: LexborNode) -> str:
    for child in section.iter():
        if child.tag in _HEADINGS:
            return _collapse(_inline(child))
    return ""


def _blocks_before(document: LexborNode, first: LexborNode) -> list[Block]:
    """Blocks of the document body that come before its first section, outside the
    abstract and front matter."""
    out: list[Block] = []
    container = first.parent
    if container is None:
        return out
    for child in container.iter():
        if child.mem_id == first.mem_id:
            break
        if child.tag == "section" or _classes(child) & {"ltx_abstract"}:
            continue
        if child.tag in _HEADINGS:
            continue
        _walk(child, _Walk(out, ""), frozenset({"ltx_abstract"}), frozenset())
    return out


@dataclass
class _Walk:
    out: list[Block]
    section: str  # innermost subsection heading seen, "" in the section's own text
    pending: str = ""  # a heading waiting for the paragraph it belongs to


def _blocks_of(
    node: LexborNode,
    skip: frozenset[str] = frozenset(),
    stop_at: frozenset[str] = frozenset(),
    skip_titles: bool = False,
) -> list[Block]:
    """Paragraph-level blocks of `node` in document order. Subsection and paragraph titles
    are joined to the paragraph that follows them, never left alone."""
    state = _Walk([], "")
    for child in node.iter():
        if skip_titles and child.tag in _HEADINGS:
            continue  # the section's own title is its heading
        _walk(child, state, skip, stop_at)
    if state.pending:  # a title with nothing after it: keep it as text of its own
        state.out.append(Block(state.pending, section=state.section))
    return state.out


def _walk(node: LexborNode, state: _Walk, skip: frozenset[str], stop_at: frozenset[str]) -> None:
    if node.tag in _SKIP_TAGS:
        return
    classes = _classes(node)
    if classes & _SKIP_CLASSES or classes & skip or classes & stop_at:
        return
    tag = node.tag
    if tag == "section":
        # A subsection: its title names the blocks under it and prefixes the first one.
        title = _title_of(node)
        outer = state.section
        is_paragraph = "ltx_paragraph" in classes or "ltx_subparagraph" in classes
        if not is_paragraph and title:
            state.section = title
        if title:
            state.pending = f"{state.pending}\n{title}".strip() if state.pending else title
        seen_title = False
        for child in node.iter():
            if not seen_title and child.tag in _HEADINGS:
                seen_title = True
                continue
            _walk(child, state, skip, stop_at)
        state.section = outer
        return
    if tag in _HEADINGS:
        title = _collapse(_inline(node))
        if title:
            state.pending = f"{state.pending}\n{title}".strip() if state.pending else title
        return
    if tag == "figure":
        block = _figure_block(node, state.section)
        if block is not None:
            state.out.append(block)
        return
    if tag == "table" and classes & _EQUATIONS:
        _add_text(state, _collapse(_inline(node)), join_previous=True)
        return
    if tag == "table" and "ltx_tabular" in classes:
        rows = _table_rows(node)
        if rows:
            state.out.append(Block("\n".join(rows), "table", None, state.section))
        return
    if tag == "p" or (tag == "div" and "ltx_p" in classes):
        _add_text(state, _collapse(_inline(node)))
        return
    for child in node.iter():
        _walk(child, state, skip, stop_at)


def _add_text(state: _Walk, text: str, join_previous: bool = False) -> None:
    if not text:
        return
    if state.pending:
        text = f"{state.pending}\n{text}"
        state.pending = ""
    elif join_previous and state.out and state.out[-1].kind == "text":
        # A display equation belongs to the paragraph that introduces it.
        last = state.out.pop()
        text = f"{last.text}\n{text}"
        state.out.append(Block(text, "text", None, last.section))
        return
    state.out.append(Block(text, "text", None, state.section))


def _caption(node: LexborNode) -> tuple[str, str | None]:
    """(caption text, "Table 2" / "Figure 3" / None) of a figcaption."""
    text = _collapse(_inline(node))
    tag = node.css_first(".ltx_tag_table, .ltx_tag_figure, .ltx_tag_float, .ltx_tag")
    label = None
    if tag is not None:
        label = _collapse(tag.text(deep=True)).rstrip(":. ") or None
        if label and label.isupper():  # IEEE "TABLE I"
            first, _, rest = label.partition(" ")
            label = f"{first.title()} {rest}".strip()
    return text, label


def _own(node: LexborNode, tag: str) -> list[LexborNode]:
    """Descendants with `tag` that belong to `node`, not to a figure nested inside it."""
    out = []
    for found in node.css(tag):
        parent = found.parent
        while parent is not None and parent.tag != "figure":
            parent = parent.parent
        if parent is not None and parent.mem_id == node.mem_id:
            out.append(found)
    return out


def _figure_block(figure: LexborNode, section: str) -> Block | None:
    """A figure or table float: main caption, then table rows or short panel captions."""
    classes = _classes(figure)
    kind = "table" if "ltx_table" in classes else "figure"
    main = _own(figure, "figcaption")
    caption, label = _caption(main[0]) if main else ("", None)
    lines = [caption] if caption else []
    for extra in main[1:]:  # a float with several captions (tables side by side)
        text, extra_label = _caption(extra)
        if text:
            lines.append(text)
        label = label or extra_label
    for panel in figure.css("figure"):
        if panel.mem_id == figure.mem_id:
            continue
        caps = _own(panel, "figcaption")
        text, panel_label = _caption(caps[0]) if caps else ("", None)
        if "ltx_table" in _classes(panel):
            kind = "table" if kind == "table" or not caption else kind
        if text and (len(text) <= PANEL_CAPTION_CHARS or "ltx_table" in _classes(panel)):
            lines.append(text)
        if label is None and panel_label and not panel_label.startswith("("):
            label = panel_label
        if "ltx_table" in _classes(panel):
            for table in _tabulars(panel):
                lines.extend(_table_rows(table))
    for table in _tabulars(figure, own_only=True):
        lines.extend(_table_rows(table))
    if kind == "figure" and label and label.lower().startswith("table"):
        kind = "table"
    text = "\n".join(line for line in lines if line)
    if not text:
        return None
    return Block(text, kind, label, section)


def _tabulars(node: LexborNode, own_only: bool = False) -> list[LexborNode]:
    """Outermost tabulars under `node` (a tabular nested in a cell is part of its cell)."""
    out = []
    for table in node.css("table.ltx_tabular"):
        parent = table.parent
        nested = False
        while parent is not None and parent.mem_id != node.mem_id:
            if parent.tag == "table" or (own_only and parent.tag == "figure"):
                nested = True
                break
            parent = parent.parent
        if not nested:
            out.append(table)
    return out


def _span(cell: LexborNode, name: str) -> int:
    value = (cell.attributes.get(name) or "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else 1


def _take_carried(carried: dict[int, tuple[str, int, int]], column: int, cells: list[str]) -> int:
    """Append the cells that rows above span into `column` onwards; the next free column."""
    while column in carried:
        text, width, left = carried[column]
        cells.append(text)
        if left > 1:
            carried[column] = (text, width, left - 1)
        else:
            del carried[column]
        column += width
    return column


def _table_rows(table: LexborNode) -> list[str]:
    """`a | b | c` per row of a tabular, every cell's text (formulas as alttext) kept.

    A cell spanning several rows (`rowspan`, e.g. the beam energy "8.8 GeV" grouping two
    measurements in arXiv 2401.00596's Table 1) is repeated in each row it covers, so a
    row read alone still says which group its numbers belong to."""
    rows = []
    carried: dict[int, tuple[str, int, int]] = {}  # column -> (text, width, rows left)
    for row in table.css("tr"):
        parent = row.parent
        while parent is not None and parent.tag != "table":
            parent = parent.parent
        if parent is None or parent.mem_id != table.mem_id:
            continue  # a row of a table nested in a cell
        cells: list[str] = []
        column = 0
        for cell in row.iter():
            if cell.tag not in ("td", "th"):
                continue
            column = _take_carried(carried, column, cells)
            text = _collapse(_inline(cell))
            width, height = _span(cell, "colspan"), _span(cell, "rowspan")
            cells.append(text)
            if height > 1:
                carried[column] = (text, width, height - 1)
            column += width
        _take_carried(carried, column, cells)
        if any(cells):
            rows.append(" | ".join(cells))
    return rows


def _inline(node: LexborNode) -> str:
    """Text of `node`, formulas as `$alttext$`, footnotes and error markup left out."""
    parts: list[str] = []
    for child in node.iter(include_text=True):
        if child.tag == "-text":
            parts.append(child.text_content or "")
        elif child.tag == "math":
            alt = (child.attributes.get("alttext") or "").strip()
            parts.append(f"${alt}$" if alt else _collapse(child.text(deep=True)))
        elif child.tag == "br":
            parts.append(" ")
        elif child.tag not in _SKIP_TAGS and not _classes(child) & _SKIP_CLASSES:
            parts.append(_inline(child))
    return "".join(parts)


def _collapse(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------
# PDF

_KNOWN_HEADING = re.compile(
    r"(?:(?:[0-9]{1,2}|[IVX]{1,5})\.?\s+)?"
    r"(?P<title>abstract|introduction|related\s+work|background|preliminaries|methods?|methodology"
    r"|approach|(?:our\s+|proposed\s+)?(?:method|approach)|experiments?|experimental\s+(?:setup|results)"
    r"|results|evaluation|discussion|conclusions?|limitations|references|bibliography"
    r"|acknowledge?ments?)",
    re.IGNORECASE | re.ASCII,
)
_NUMBERED_HEADING = re.compile(
    r"(?P<num>[0-9]{1,2})\.?\s+(?P<title>[A-Z][A-Za-z][A-Za-z0-9 ,:&'()/-]{0,70})", re.ASCII
)
_INLINE_ABSTRACT = re.compile(r"abstract\s*[-—–.:]\s*(?P<rest>\S.*)", re.IGNORECASE)
_LEADING_NUMBER = re.compile(r"([0-9]{1,2})\.?\s", re.ASCII)
_END = re.compile(r"\b(?:references|bibliography)\b", re.IGNORECASE)


# Word gaps in TeX output. TeX draws no space glyphs: it sets each line as a TJ array
# whose numbers move the pen, in thousandths of an em; an interword gap is one such number
# (about -333, down to about -190 on a tight justified line), a kern is a small one (at
# most about 0.11 em). pypdf inserts a space when a gap exceeds half the font's space
# width, and finds that width by looking up character code 32. TeX fonts have no space
# there: code 32 holds some other glyph (often a wide one, such as "Q"; pypdf issue #3978),
# so the threshold exceeds every real gap and whole lines come out as
# "ThesummarizationresultisshowninFigure2". The fix does not guess at fonts: a TJ move of
# at least WORD_GAP_EM is split into an overwhelming move that pypdf must read as a space
# and a move back, so the pen ends where the PDF put it and later positions are unchanged.
WORD_GAP_EM = 0.15
_FORCE_GAP = 100_000.0


def _mark_word_gaps(operator: bytes, operands: list[Any], _cm: Any, _tm: Any) -> None:
    """pypdf `visitor_operand_before`: make every word-sized TJ gap read as a space."""
    if operator != b"TJ" or not operands or not isinstance(operands[0], list):
        return
    items = operands[0]
    threshold = -WORD_GAP_EM * 1000
    out: list[Any] = []
    for item in items:
        if (
            isinstance(item, (int, float))
            and not isinstance(item, bool)
            and -_FORCE_GAP < item <= threshold
        ):
            # Idempotent: the forced move is outside the range, the move back is positive.
            out += [-_FORCE_GAP, _FORCE_GAP + float(item)]
        else:
            out.append(item)
    if len(out) != len(items):
        items[:] = out


def parse_pdf(data: bytes) -> tuple[Section, ...]:
    """Sections from a paper PDF, stopping at the references; () on failure."""
    try:
        from pypdf import PdfReader

        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            reader.decrypt("")
        pages = [
            page.extract_text(visitor_operand_before=_mark_word_gaps) or ""
            for page in reader.pages[:PDF_MAX_PAGES]
        ]
    except Exception:  # pypdf raises many kinds of errors on broken files; all mean "no text"
        log.info("PDF could not be read", exc_info=True)
        return ()
    lines = [line.strip() for line in "\n".join(pages).splitlines()]
    return _split_sections([line for line in lines if line])


def _split_sections(lines: list[str]) -> tuple[Section, ...]:
    sections: list[tuple[str, list[str]]] = []
    preamble: list[str] = []
    last_number = 0
    for line in lines:
        heading, rest, number = _pdf_heading(line, last_number)
        if heading is None:
            (sections[-1][1] if sections else preamble).append(line)
            continue
        if _END.search(heading):
            break
        if number:
            last_number = number
        sections.append((heading, [rest] if rest else []))
    if not sections:
        sections = [("Text", preamble)]
    kept = tuple(Section.of(h, t) for h, body in sections if (t := _join_lines(body)))
    if sum(len(s.text) for s in kept) < MIN_TEXT_CHARS:
        return ()
    return kept


def _pdf_heading(line: str, last_number: int) -> tuple[str | None, str, int]:
    """(heading, text after it on the line, section number) or (None, "", 0)."""
    if len(line) > 80:
        return None, "", 0
    known = _KNOWN_HEADING.fullmatch(line)
    if known:
        number = _LEADING_NUMBER.match(line)
        return line, "", int(number.group(1)) if number else 0
    inline = _INLINE_ABSTRACT.fullmatch(line)
    if inline:  # IEEE style: "Abstract—We propose ..."
        return "Abstract", inline.group("rest"), 0
    numbered = _NUMBERED_HEADING.fullmatch(line)
    # Only the next section number counts, and only on short title-like lines: otherwise a
    # wrapped line like "3 times faster than ..." would start a section.
    if (
        numbered
        and int(numbered.group("num")) == last_number + 1
        and len(numbered.group("title").split()) <= 8
        and not line.endswith((".", ","))
    ):
        return line, "", int(numbered.group("num"))
    return None, "", 0


def _join_lines(lines: list[str]) -> str:
    """PDF lines are hard-wrapped: join them, mending words hyphenated at line ends."""
    out = ""
    for line in lines:
        if out.endswith("-") and line[:1].islower():
            out = out[:-1] + line
        else:
            out = f"{out} {line}" if out else line
    return out.strip()


# ---------------------------------------------------------------------------------------
# Fetching


async def fetch_fulltext(
    client: httpx.AsyncClient, settings: SourceSettings, paper: Paper
) -> FullText:
    """The best text available for `paper`: arXiv HTML, else PDF, else the abstract."""
    fallback = FullText(SOURCE_ABSTRACT, (("Abstract", paper.abstract),))
    try:
        arxiv_id = parse_arxiv_id(paper.versioned_id)
    except InvalidArxivId:
        log.warning("full text: %r is not an arXiv ID; using the abstract", paper.arxiv_id[:40])
        return fallback
    # IDs are [a-zA-Z0-9.-/] once validated; quoting anyway keeps the path a path.
    path = quote(str(arxiv_id), safe="/.")
    deadline = total_deadline(settings)
    try:
        async with asyncio.timeout(deadline):
            html, page_url = await _download_from(
                client, settings, f"{settings.arxiv_url}/html/{path}", HTML_MAX_BYTES, "html"
            )
            if html is not None:
                page = html.decode("utf-8", "replace")
                sections = await asyncio.to_thread(parse_arxiv_html, page)
                if sections:
                    figure = await asyncio.to_thread(key_figure_of, page, page_url)
                    return FullText(SOURCE_HTML, _with_abstract(sections, paper), figure)
                log.info("full text %s: arXiv HTML had no usable text", arxiv_id)
            pdf = await _download(
                client, settings, f"{settings.arxiv_url}/pdf/{path}", PDF_MAX_BYTES, "pdf"
            )
            if pdf is not None and pdf.startswith(b"%PDF"):
                sections = await asyncio.to_thread(parse_pdf, pdf)
                if sections:
                    return FullText(SOURCE_PDF, _with_abstract(sections, paper))
                log.info("full text %s: PDF had no usable text", arxiv_id)
    except TimeoutError:
        log.warning("full text %s: gave up after %.0f s; using the abstract", arxiv_id, deadline)
    return fallback


def _with_abstract(sections: tuple[Section, ...], paper: Paper) -> tuple[Section, ...]:
    """Make sure the abstract is there: some conversions lose it, and it ranks first."""
    if paper.abstract and not any(
        (s.role or heading_role(s.heading)) == "abstract" for s in sections
    ):
        return (Section.of("Abstract", paper.abstract, "abstract"), *sections)
    return sections


async def _download(
    client: httpx.AsyncClient, settings: SourceSettings, url: str, max_bytes: int, kind: str
) -> bytes | None:
    """The body of a 200 answer, or None. Redirects are followed only within arXiv's origin."""
    return (await _download_from(client, settings, url, max_bytes, kind))[0]


async def _download_from(
    client: httpx.AsyncClient, settings: SourceSettings, url: str, max_bytes: int, kind: str
) -> tuple[bytes | None, str]:
    """`_download`, and the URL the body finally came from (after same-origin redirects)."""
    origin = httpx.URL(settings.arxiv_url)
    target = httpx.URL(url)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            async with client.stream("GET", target) as response:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    target = target.join(location)
                    if (target.scheme, target.host, target.port) != (
                        origin.scheme,
                        origin.host,
                        origin.port,
                    ):
                        log.warning("full text: arXiv redirected %s off arXiv; not following", kind)
                        return None, str(target)
                    continue
                if response.status_code != 200:
                    log.info("full text: arXiv %s answered %s", kind, response.status_code)
                    return None, str(target)
                if (
                    kind == "html"
                    and "html" not in response.headers.get("content-type", "").lower()
                ):
                    return None, str(target)
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        log.warning(
                            "full text: arXiv %s is over %d MB; skipped", kind, max_bytes >> 20
                        )
                        return None, str(target)
                return bytes(body), str(target)
    except httpx.HTTPError as exc:
        log.info("full text: arXiv %s failed (%s)", kind, type(exc).__name__)
    return None, str(target)
