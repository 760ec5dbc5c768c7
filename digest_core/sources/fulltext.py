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
import logging
import math
import re
from dataclasses import dataclass
from urllib.parse import quote

import httpx
from selectolax.lexbor import LexborHTMLParser, LexborNode

from ..arxiv_id import InvalidArxivId, parse_arxiv_id
from ..config import SourceSettings
from ..models import SOURCE_ABSTRACT, SOURCE_HTML, SOURCE_PDF, Paper
from . import total_deadline

log = logging.getLogger(__name__)

Sections = tuple[tuple[str, str], ...]

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


# Section ranks: lower is kept first. None means never sent to the LLM.
_ABSTRACT, _INTRO, _METHOD, _RESULTS, _CONCLUSION, _OTHER = range(6)
_KEY_RANKS = (_INTRO, _METHOD, _RESULTS)


def _rank(heading: str) -> int | None:
    h = heading.lower()
    if re.search(r"reference|bibliograph|acknowledg", h):
        return None
    if "abstract" in h:
        return _ABSTRACT
    if "introduction" in h:
        return _INTRO
    if re.search(r"method|approach", h):
        return _METHOD
    if re.search(r"experiment|result|evaluation", h):
        return _RESULTS
    if re.search(r"conclu", h):
        return _CONCLUSION
    return _OTHER


@dataclass(frozen=True)
class Passage:
    """One retrievable unit of a paper: a paragraph, a table or a figure caption.

    `section` is the heading of the section it sits in (e.g. "4.2 Ablation study",
    "Appendix A Hyperparameters"); `label` names a table or figure ("Table 2", "Figure 3").
    """

    section: str
    text: str
    kind: str = "text"  # "text" | "table" | "figure"
    label: str | None = None


@dataclass(frozen=True)
class FullText:
    """What a deep dive reads: where it came from and the paper's sections in order."""

    source: str  # models.SOURCE_HTML / SOURCE_PDF / SOURCE_ABSTRACT
    sections: tuple[tuple[str, str], ...]  # (heading, text)

    def passages(self) -> list[Passage]:
        """Every paragraph, table and caption in document order, each with its section."""
        out: list[Passage] = []
        for heading, body in self.sections:
            for para in re.split(r"\n\s*\n", body):
                para = para.strip()
                if para:
                    out.append(Passage(heading, para))
        return out

    def whole(self) -> str:
        """The whole paper as given (every section, no budget): what a number is checked
        against, and the answer context when it fits."""
        return "\n\n".join(f"## {h}\n\n{b}" if h else b for h, b in self.sections if b.strip())

    def labels(self) -> frozenset[str]:
        """The sections, tables and figures that exist, normalised for citation checks:
        "section 3", "section 3.2", "table 2", "figure 1", "appendix a"."""
        found: set[str] = set()
        for heading, body in self.sections:
            number = re.match(r"\s*([0-9]+(?:\.[0-9]+)*)", heading)
            if number:
                found.add(f"section {number.group(1)}")
            appendix = re.match(r"\s*appendix\s+([A-Z])\b", heading, re.IGNORECASE)
            if appendix:
                found.add(f"appendix {appendix.group(1).lower()}")
            for kind, num in re.findall(r"\b(Table|Figure|Fig\.)\s*([0-9]+)", body):
                found.add(f"{'figure' if kind.startswith('Fig') else 'table'} {num}")
        return frozenset(found)

    def text(self, token_budget: int) -> str:
        """The paper as Markdown-ish text within `token_budget` (see `estimate_tokens`).

        Whole sections are kept in priority order: abstract; then introduction, method and
        experiments/results (these share the room fairly, so a long introduction cannot
        crowd out the method); then conclusion (a short one has its room set aside);
        then the rest. References and acknowledgements are dropped. A section too big for
        its room is cut at a paragraph or sentence boundary and marked with "[…]". Chosen
        sections keep document order.
        """
        pieces = [
            _Piece(i, heading.strip(), body.strip(), rank)
            for i, (heading, body) in enumerate(self.sections)
            if body.strip() and (rank := _rank(heading)) is not None
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

        for piece in (p for p in pieces if p.rank == _ABSTRACT):
            room -= place(piece, room)

        keys = sorted((p for p in pieces if p.rank in _KEY_RANKS), key=lambda p: (p.rank, p.index))
        # A short conclusion is worth more than the last paragraphs of a long method, so
        # its room is set aside when it is small (at most a tenth of the budget).
        reserve = sum(p.cost for p in pieces if p.rank == _CONCLUSION)
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

        rest = sorted((p for p in pieces if p.rank >= _CONCLUSION), key=lambda p: (p.rank, p.index))
        for piece in rest:
            if piece.cost <= room:
                room -= place(piece, room)
        for piece in rest:
            if piece.index not in chosen:
                room -= place(piece, room)

        return "\n\n".join(chosen[i] for i in sorted(chosen))


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
        "ltx_note",
        "ltx_ERROR",
        "ltx_authors",
        "ltx_dates",
        "ltx_page_header",
        "ltx_page_footer",
        "ltx_acknowledgements",
        "ltx_title_document",
        "ltx_title_section",  # the section's own title becomes the heading instead
        "ltx_title_abstract",
    }
)
_SKIP_TAGS = frozenset({"script", "style", "nav", "header", "footer", "button", "svg", "noscript"})
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})


def parse_arxiv_html(html: str) -> Sections:
    """(heading, text) sections of an arXiv LaTeXML page; () for an error or empty page."""
    try:
        tree = LexborHTMLParser(html)
        document = tree.css_first(".ltx_document")
        if document is None:
            return ()
        sections: list[tuple[str, str]] = []
        abstract = document.css_first("div.ltx_abstract")
        if abstract is not None:
            sections.append(("Abstract", _blocks_text(abstract)))
        found_sections = False
        for section in document.css("section.ltx_section"):
            found_sections = True
            if _inside_section(section):
                continue  # folded into its parent by _blocks_text
            title = section.css_first("h2.ltx_title_section") or section.css_first(".ltx_title")
            heading = _collapse(_inline(title)) if title is not None else ""
            sections.append((heading or f"Section {len(sections)}", _blocks_text(section)))
        if not found_sections:
            # A short paper without \section: take the body as one block.
            body = document.css_first("div.ltx_page_content") or document
            text = _blocks_text(body, skip=frozenset({"ltx_abstract"}))
            if text:
                sections.append(("Text", text))
    except Exception:  # selectolax on hostile markup: fall back, never crash a deep dive
        log.warning("arXiv HTML could not be parsed", exc_info=True)
        return ()
    kept = tuple((h, t) for h, t in sections if t)
    if sum(len(t) for _, t in kept) < MIN_TEXT_CHARS:
        return ()
    return kept


def _classes(node: LexborNode) -> set[str]:
    return set((node.attributes.get("class") or "").split())


def _inside_section(node: LexborNode) -> bool:
    parent = node.parent
    while parent is not None:
        if parent.tag == "section" and "ltx_section" in _classes(parent):
            return True
        parent = parent.parent
    return False


def _skipped(node: LexborNode, extra: frozenset[str] = frozenset()) -> bool:
    if node.tag in _SKIP_TAGS:
        return True
    classes = _classes(node)
    return bool(classes & _SKIP_CLASSES or classes & extra)


def _inline(node: LexborNode) -> str:
    """Text of `node`, formulas as `$alttext$`, footnotes and error markup left out."""
    parts: list[str] = []
    for child in node.iter(include_text=True):
        if child.tag == "-text":
            parts.append(child.text_content or "")
        elif child.tag == "math":
            alt = (child.attributes.get("alttext") or "").strip()
            parts.append(f"${alt}$" if alt else _inline(child))
        elif not _skipped(child):
            parts.append(_inline(child))
    return "".join(parts)


def _blocks_text(node: LexborNode, skip: frozenset[str] = frozenset()) -> str:
    blocks: list[str] = []
    _blocks(node, blocks, skip)
    return "\n\n".join(b for b in blocks if b)


def _blocks(node: LexborNode, out: list[str], skip: frozenset[str]) -> None:
    """Paragraph-level text in document order: subsection titles, paragraphs, equations, captions."""
    for child in node.iter():
        if _skipped(child, skip):
            continue
        tag = child.tag
        classes = _classes(child)
        if tag in _HEADINGS or tag == "p":
            out.append(_collapse(_inline(child)))
        elif tag == "figure":
            # Figures and tables: the caption carries the meaning; cell soup does not.
            caption = child.css_first("figcaption")
            if caption is not None:
                out.append(_collapse(_inline(caption)))
        elif tag == "table":
            if classes & {"ltx_equation", "ltx_equationgroup", "ltx_eqn_table"}:
                out.append(_collapse(_inline(child)))
        else:
            _blocks(child, out, skip)


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


def parse_pdf(data: bytes) -> Sections:
    """(heading, text) sections from a paper PDF, stopping at the references; () on failure."""
    try:
        from pypdf import PdfReader

        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            reader.decrypt("")
        pages = [page.extract_text() or "" for page in reader.pages[:PDF_MAX_PAGES]]
    except Exception:  # pypdf raises many kinds of errors on broken files; all mean "no text"
        log.info("PDF could not be read", exc_info=True)
        return ()
    lines = [line.strip() for line in "\n".join(pages).splitlines()]
    return _split_sections([line for line in lines if line])


def _split_sections(lines: list[str]) -> Sections:
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
    kept = tuple((h, t) for h, body in sections if (t := _join_lines(body)))
    if sum(len(t) for _, t in kept) < MIN_TEXT_CHARS:
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
            html = await _download(
                client, settings, f"{settings.arxiv_url}/html/{path}", HTML_MAX_BYTES, "html"
            )
            if html is not None:
                sections = await asyncio.to_thread(
                    parse_arxiv_html, html.decode("utf-8", "replace")
                )
                if sections:
                    return FullText(SOURCE_HTML, _with_abstract(sections, paper))
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


def _with_abstract(sections: Sections, paper: Paper) -> Sections:
    """Make sure the abstract is there: some conversions lose it, and it ranks first."""
    if paper.abstract and not any(_rank(h) == _ABSTRACT for h, _ in sections):
        return (("Abstract", paper.abstract), *sections)
    return sections


async def _download(
    client: httpx.AsyncClient, settings: SourceSettings, url: str, max_bytes: int, kind: str
) -> bytes | None:
    """The body of a 200 answer, or None. Redirects are followed only within arXiv's origin."""
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
                        return None
                    continue
                if response.status_code != 200:
                    log.info("full text: arXiv %s answered %s", kind, response.status_code)
                    return None
                if (
                    kind == "html"
                    and "html" not in response.headers.get("content-type", "").lower()
                ):
                    return None
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        log.warning(
                            "full text: arXiv %s is over %d MB; skipped", kind, max_bytes >> 20
                        )
                        return None
                return bytes(body)
    except httpx.HTTPError as exc:
        log.info("full text: arXiv %s failed (%s)", kind, type(exc).__name__)
    return None
