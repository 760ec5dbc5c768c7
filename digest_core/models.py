"""Plain values that flow through the pipeline: papers in, digest out.

Nothing here does I/O. Renderers, channels and the store all speak in these types.
"""

from __future__ import annotations

from dataclasses import dataclass

# The four sections of a deep dive, in the order of the original daily report.
SECTION_KEYS: tuple[str, ...] = ("contribution", "methodology", "takeaway", "limitations")

SECTION_HEADINGS: dict[str, dict[str, str]] = {
    "zh": {
        "contribution": "核心创新点 (Key Contribution)",
        "methodology": "技术细节 (Methodology)",
        "takeaway": "对我的启发 (Takeaway)",
        "limitations": "潜在缺陷 (Limitations)",
    },
    "en": {
        "contribution": "Key Contribution",
        "methodology": "Methodology",
        "takeaway": "Takeaway",
        "limitations": "Limitations",
    },
}

VERDICT_LABEL = {"zh": "一句话结论：", "en": "Verdict:"}
# What the number guard's mark means (digest_core.grounding), under a text that has one.
UNVERIFIED_NOTE = {
    "zh": "⚠️ 标记的数字或引用未出现在模型读到的论文文本中（未核实），请以原文为准。",
    "en": "⚠️ marks a number or citation that does not appear in the paper text the model"
    " read (unverified); check it in the paper.",
}

# What the deep dive was written from, best first.
SOURCE_HTML = "full text (arXiv HTML)"
SOURCE_PDF = "full text (arXiv PDF)"
SOURCE_ABSTRACT = "abstract only"


@dataclass(frozen=True)
class Paper:
    """One paper as the sources describe it. `arxiv_id` is the bare ID, no version."""

    arxiv_id: str
    title: str
    abstract: str
    authors: tuple[str, ...] = ()
    version: int | None = None
    upvotes: int = 0
    published: str | None = None
    ai_summary: str | None = None
    github_repo: str | None = None
    project_page: str | None = None
    abs_url: str = ""
    source: str = "hf"  # where the metadata came from: "hf" or "arxiv"

    @property
    def versioned_id(self) -> str:
        return f"{self.arxiv_id}v{self.version}" if self.version else self.arxiv_id


@dataclass(frozen=True)
class Score:
    """A paper's relevance to the research profile, 0-100, with a one-line reason."""

    arxiv_id: str
    score: int
    reason: str
    by_llm: bool = True


@dataclass(frozen=True)
class DeepDive:
    """The four-section analysis of one paper.

    `sections` maps each of SECTION_KEYS to a Markdown body (without its heading).
    """

    arxiv_id: str
    title: str
    sections: dict[str, str]
    language: str
    source_read: str
    model: str | None
    prompt_version: str
    tokens: int = 0
    llm_used: bool = True
    note: str | None = None  # e.g. "LLM unavailable: extractive summary"
    verdict: str = ""  # one line: why the paper matters (or not) to the profile
    # The number guard (digest_core.grounding): numbers and citations checked against the
    # text the model read, and how many of them were not found (marked ⚠️ in the sections).
    numbers_checked: int = 0
    numbers_unverified: int = 0

    def body_markdown(self, heading_level: int = 3) -> str:
        """The verdict, the sections as Markdown (headings in the configured language), then
        the footer."""
        headings = SECTION_HEADINGS.get(self.language, SECTION_HEADINGS["en"])
        hashes = "#" * heading_level
        parts: list[str] = []
        if self.verdict.strip():
            name = VERDICT_LABEL.get(self.language, VERDICT_LABEL["en"])
            parts.append(f"**{name}** {' '.join(self.verdict.split())}")
        if self.note:
            parts.append(f"> ⚠️ {self.note}")
        for i, key in enumerate(SECTION_KEYS, start=1):
            text = self.sections.get(key, "").strip() or "—"
            parts.append(f"{hashes} {i}. {headings[key]}\n\n{text}")
        if self.numbers_unverified:
            parts.append(f"_{UNVERIFIED_NOTE.get(self.language, UNVERIFIED_NOTE['en'])}_")
        parts.append(self.footer())
        return "\n\n".join(parts)

    def footer(self) -> str:
        model = self.model or "none (built-in extractive analyser)"
        checked = (
            f" · numbers checked: {self.numbers_checked}, unverified: {self.numbers_unverified}"
            if self.llm_used
            else ""
        )
        return (
            f"_Model: {model} · prompt {self.prompt_version} · read: {self.source_read}"
            f" · tokens: {self.tokens}{checked}_"
        )


# What a deep dive's header links to, in this order.
LINK_KINDS: tuple[str, ...] = ("code", "project", "model", "dataset", "space")


@dataclass(frozen=True)
class Link:
    """One link in a deep dive's header: the code, the project page, or a Hugging Face
    model, dataset or Space that cites the paper. `url` is http(s); `label` is short text
    (a repo name such as "org/model")."""

    kind: str  # one of LINK_KINDS
    url: str
    label: str


@dataclass(frozen=True)
class FigureImage:
    """A paper's key figure, fetched and ready to post: the image bytes and their caption."""

    arxiv_id: str
    data: bytes
    filename: str  # e.g. "x1.png"
    mime: str  # image/png, image/jpeg, image/gif or image/webp
    caption: str  # plain text, e.g. "Figure 1: Overview of …"
    source_url: str


@dataclass(frozen=True)
class Rating:
    """A person's verdict on a paper for one profile, as plain values the core can use as a
    scoring example: the bot reads them from chat state and hands them over."""

    arxiv_id: str
    title: str
    liked: bool


@dataclass(frozen=True)
class SeenMark:
    """A paper already deep-dived in this destination: when, and a link to that thread."""

    date: str  # YYYY-MM-DD
    link: str | None = None


@dataclass(frozen=True)
class DigestEntry:
    paper: Paper
    score: Score
    deep_dive: DeepDive | None = None
    links: tuple[Link, ...] = ()  # the header's links (see LINK_KINDS); () when none known
    seen: SeenMark | None = None  # deep-dived here before: listed, not deep-dived again

    @property
    def picked(self) -> bool:
        return self.deep_dive is not None


@dataclass(frozen=True)
class Digest:
    """A finished day: every scanned paper with its score, the picked ones first."""

    date: str  # YYYY-MM-DD
    entries: tuple[DigestEntry, ...]
    profile_name: str
    language: str
    threshold: int
    llm_note: str | None = None  # set when scores did not come from the LLM
    available: int = 0  # how many papers HF listed that day (before the top-N cut)

    @property
    def picked(self) -> tuple[DigestEntry, ...]:
        return tuple(e for e in self.entries if e.picked)

    @property
    def others(self) -> tuple[DigestEntry, ...]:
        return tuple(e for e in self.entries if not e.picked)

    @property
    def quiet(self) -> bool:
        """No paper reached the threshold: nothing is deep-dived (a day whose only papers
        were deep-dived here before is not quiet: the table of contents links them)."""
        return bool(self.entries) and not self.picked and not any(e.seen for e in self.entries)

    @property
    def empty(self) -> bool:
        return not self.entries


@dataclass(frozen=True)
class Answer:
    """An answer to a question about one paper."""

    arxiv_id: str
    text: str  # Markdown
    model: str | None
    tokens: int = 0
    llm_used: bool = True
    note: str | None = None
