"""Writes the four-section deep dive of one paper, from its full text where it can be had.

Cached by (arXiv id, version, prompt version, model, language, profile content): re-running a
day or re-analysing a paper costs no LLM call, two chats with the same profile share one deep
dive, and a chat with another profile gets its own, related to its topics. The profile goes
to the model as data (a <profile> block in the user message), never into the system prompt. When the LLM is missing or fails after its retries,
the extractive analyser writes the deep dive and says so.

While a new deep dive is made, its stages (fetching the paper, reading the full text, writing)
are reported as `AnalysisStage` values to an optional callback, so a chat can show the
requester where it is; a cached deep dive has no stages. The core only reports: it never posts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from digest_core import prompts
from digest_core.fallback import extractive_deep_dive
from digest_core.grounding import Guard
from digest_core.llm import LLMClient, LLMError
from digest_core.models import SECTION_KEYS, SOURCE_ABSTRACT, DeepDive, Paper, ResearchProfile
from digest_core.scoring import LANGUAGE_NAMES, profile_data
from digest_core.sources.fulltext import FullText

log = logging.getLogger(__name__)


class Stage(StrEnum):
    """Where a new deep dive is, in the order the stages come."""

    FETCHING = "fetching"  # downloading the paper's full text (arXiv HTML, else the PDF)
    READING = "reading"  # the text is in hand: `sections` of it go to the model
    WRITING = "writing"  # the model (or the extractive analyser) writes the deep dive


@dataclass(frozen=True)
class AnalysisStage:
    """One stage of a deep dive being made. `sections` is how many sections of the full text
    are read (READING and WRITING); None when there is no full text, only the abstract."""

    stage: Stage
    sections: int | None = None

    @classmethod
    def reading(cls, text: FullText) -> AnalysisStage:
        return cls(Stage.READING, _sections_read(text))

    @classmethod
    def writing(cls, text: FullText) -> AnalysisStage:
        return cls(Stage.WRITING, _sections_read(text))

    def describe(self) -> str:
        """The stage as a short lower-case phrase ("reading the full text (12 sections)")."""
        if self.stage is Stage.FETCHING:
            return "fetching the paper"
        read = (
            "the abstract only (no full text)"
            if self.sections is None
            else f"the full text ({self.sections} section{'s' if self.sections != 1 else ''})"
        )
        if self.stage is Stage.READING:
            return f"reading {read}"
        # Writing follows reading at once: what was read stays in view even when a chat shows
        # only the newest stage.
        return f"writing the deep dive from {read}"


OnStage = Callable[[AnalysisStage], None]


def report_stage(on_stage: OnStage | None, stage: AnalysisStage) -> None:
    """Tell `on_stage` (if any) about a stage. A progress display must never fail or slow the
    analysis: the callback is expected to return at once, and whatever it raises is logged."""
    if on_stage is None:
        return
    try:
        on_stage(stage)
    except Exception:
        log.warning("analysis progress callback failed at %s", stage.stage, exc_info=True)


def _sections_read(text: FullText) -> int | None:
    return None if text.source == SOURCE_ABSTRACT else text.section_count


DIVE_FIELDS: tuple[str, ...] = ("verdict", *SECTION_KEYS)
DIVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {key: {"type": "string"} for key in DIVE_FIELDS},
    "required": list(DIVE_FIELDS),
    "additionalProperties": False,
}
VERDICT_MAX_CHARS = 300

# Openers the original report's model liked to write; a deep dive starts with content.
_BOILERPLATE = re.compile(
    r"^\s*(作为(一名)?(计算机视觉|CV)?(领域的)?(专家|研究员)[^。\n]*[。\n]"
    r"|as an? (computer vision )?(expert|researcher)[^.\n]*[.\n])\s*",
    re.IGNORECASE,
)


def analysis_cache_key(
    paper: Paper, version: str, model: str, language: str, profile: ResearchProfile
) -> str:
    return (
        f"{paper.arxiv_id}|v{paper.version or 0}|{version}|{model}|{language}|{profile.fingerprint}"
    )


def parse_sections(data: object) -> dict[str, str]:
    """The four sections, each non-empty Markdown with the boilerplate opener removed, and
    the verdict on one line under key "verdict" ("" when the model left it out: a missing
    verdict is not worth a retry)."""
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object with the four sections")
    sections: dict[str, str] = {}
    for key in SECTION_KEYS:
        value = data.get(key)
        if isinstance(value, list):  # some models answer a list of bullet strings
            value = "\n".join(f"- {v}" for v in value if isinstance(v, str))
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"section '{key}' is missing or empty")
        sections[key] = _BOILERPLATE.sub("", value.strip(), count=1).strip()
    verdict = data.get("verdict")
    verdict = " ".join(verdict.split()) if isinstance(verdict, str) else ""
    if len(verdict) > VERDICT_MAX_CHARS:
        verdict = verdict[: VERDICT_MAX_CHARS - 1].rstrip() + "…"
    sections["verdict"] = verdict
    return sections


def paper_data(paper: Paper, text: FullText, budget: int) -> str:
    """The paper as a delimited data block: metadata, then the budgeted text."""
    head = [f"Title: {paper.title}", f"arXiv: {paper.versioned_id}"]
    if paper.authors:
        shown = ", ".join(paper.authors[:12]) + (" et al." if len(paper.authors) > 12 else "")
        head.append(f"Authors: {shown}")
    head.append(f"Text given: {text.source}")
    body = text.text(budget)
    if text.source != SOURCE_ABSTRACT:
        body = (
            f"## Abstract\n{paper.abstract}\n\n{body}"
            if "abstract" not in body[:200].lower()
            else body
        )
    return prompts.data_block("paper", "\n".join(head) + "\n\n" + body)


class Analyst:
    def __init__(
        self,
        profile: ResearchProfile,
        llm: LLMClient | None,
        model: str,
        token_budget: int,
        no_llm_reason: str,
    ) -> None:
        self.profile = profile
        self.llm = llm
        self.model = model
        self.token_budget = token_budget
        self.no_llm_reason = no_llm_reason
        self.prompt = prompts.load("deep_dive")

    @property
    def prompt_version(self) -> str:
        return self.prompt.version

    async def write(
        self,
        paper: Paper,
        text: FullText,
        language: str,
        profile: ResearchProfile | None = None,
    ) -> DeepDive:
        profile = profile or self.profile
        if self.llm is None:
            return extractive_deep_dive(paper, profile, language, self.no_llm_reason)
        system = self.prompt.render(language_name=LANGUAGE_NAMES.get(language, "English"))
        given = paper_data(paper, text, self.token_budget)
        try:
            sections, result = await self.llm.json(
                system=system,
                user=profile_data(profile) + "\n\n" + given,
                schema=DIVE_SCHEMA,
                schema_name="deep_dive",
                purpose="deep_dive",
                prompt_version=self.prompt.version,
                max_tokens=3000,
                validate=parse_sections,
            )
        except LLMError as exc:
            log.warning(
                "deep dive of %s fell back to the extractive analyser: %s", paper.arxiv_id, exc
            )
            return extractive_deep_dive(paper, profile, language, str(exc))
        # Every number and citation is checked against the paper text the model was given (not
        # the profile: a number in a topic is no evidence).
        guard = Guard(given, text.labels())
        written = dict(sections)  # type: ignore[call-overload]
        checked = {key: guard.check(value) for key, value in written.items()}
        total = sum(g.checked for g in checked.values())
        failed = sum(g.unverified for g in checked.values())
        self.llm.record_grounding(result, total, failed)
        if failed:
            log.info("deep dive of %s: %d of %d numbers unverified", paper.arxiv_id, failed, total)
        return DeepDive(
            arxiv_id=paper.arxiv_id,
            title=paper.title,
            sections={key: checked[key].text for key in SECTION_KEYS},
            language=language,
            source_read=text.source,
            model=result.model or self.model,
            prompt_version=self.prompt.version,
            tokens=result.tokens,
            llm_used=True,
            verdict=checked["verdict"].text,
            numbers_checked=total,
            numbers_unverified=failed,
        )
