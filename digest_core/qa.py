"""Answers a question about one paper with the context a thread answer has.

The context is the paper's deep dive plus the passages of its full text (or abstract) that
share the most words with the question, and the thread's earlier turns as memory. Without an
LLM the answer is those passages themselves, named by section, and says so.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from digest_core import prompts
from digest_core.config import Profile
from digest_core.grounding import Guard, with_footnote
from digest_core.llm import LLMClient, LLMError
from digest_core.models import Answer, DeepDive, Paper
from digest_core.sources.fulltext import FullText, estimate_tokens

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 2000
_WORD = re.compile(r"[a-z0-9]{3,}|[\u4e00-\u9fff]", re.IGNORECASE)
_COMMON = {
    "the",
    "and",
    "what",
    "how",
    "does",
    "this",
    "that",
    "paper",
    "with",
    "for",
    "are",
    "why",
}


def relevant_passages(text: FullText, question: str, budget_tokens: int) -> list[tuple[str, str]]:
    """Paragraphs ranked by shared words with the question, within a token budget."""
    q_words = {w.lower() for w in _WORD.findall(question)} - _COMMON
    candidates: list[tuple[float, int, str, str]] = []
    order = 0
    for heading, body in text.sections:
        for para in re.split(r"\n\s*\n", body):
            para = para.strip()
            if not para:
                continue
            words = {w.lower() for w in _WORD.findall(para)}
            overlap = len(q_words & words)
            # a mention of a figure or table asked about counts double
            for ref in re.findall(
                r"(?:fig(?:ure)?|table|tab|sec(?:tion)?)\.?\s*\d+", question, re.I
            ):
                if ref.lower().replace(" ", "") in para.lower().replace(" ", ""):
                    overlap += 2
            if overlap:
                candidates.append((-overlap, order, heading, para))
            order += 1
    picked: list[tuple[int, str, str]] = []
    used = 0
    for _, pos, heading, para in sorted(candidates):
        cost = estimate_tokens(para)
        if used + cost > budget_tokens:
            continue
        picked.append((pos, heading, para))
        used += cost
    return [(h, p) for _, h, p in sorted(picked)]


def build_context(
    paper: Paper, dive: DeepDive | None, passages: Sequence[tuple[str, str]], source: str
) -> str:
    parts = [f"Title: {paper.title}", f"arXiv: {paper.versioned_id}"]
    if dive is not None:
        parts.append("## Deep dive (posted in this thread)\n" + dive.body_markdown(heading_level=3))
    else:
        parts.append("## Abstract\n" + paper.abstract)
    if passages:
        parts.append(f"## Passages from the paper ({source})")
        parts.extend(f"[{heading}]\n{para}" for heading, para in passages)
    return prompts.data_block("paper", "\n\n".join(parts))


class Answerer:
    def __init__(
        self, profile: Profile, llm: LLMClient | None, token_budget: int, no_llm_reason: str
    ) -> None:
        self.profile = profile
        self.llm = llm
        self.token_budget = token_budget
        self.no_llm_reason = no_llm_reason
        self.prompt = prompts.load("answer")

    async def answer(
        self,
        paper: Paper,
        dive: DeepDive | None,
        text: FullText,
        question: str,
        history: Sequence[tuple[str, str]] = (),
    ) -> Answer:
        """`history` holds earlier (role, text) turns, oldest first, role "user"/"assistant"."""
        question = question.strip()[:MAX_QUESTION_CHARS]
        passages = relevant_passages(text, question, self.token_budget // 2)
        if self.llm is None:
            return self._extractive(paper, passages, text.source, self.no_llm_reason)
        context = build_context(paper, dive, passages, text.source)
        messages: list[dict[str, str]] = [
            {"role": "user", "content": context},
            {"role": "assistant", "content": "I have the paper material. What is your question?"},
        ]
        for role, turn in history:
            content = prompts.data_block("question", turn) if role == "user" else turn
            messages.append({"role": role, "content": content})
        messages.append({"role": "user", "content": prompts.data_block("question", question)})
        system = self.prompt.render(
            profile_name=self.profile.name, topics=", ".join(self.profile.topics)
        )
        try:
            result = await self.llm.text(
                system=system,
                messages=messages,
                purpose="answer",
                prompt_version=self.prompt.version,
                max_tokens=1200,
            )
        except LLMError as exc:
            log.warning("answer about %s fell back to passages: %s", paper.arxiv_id, exc)
            return self._extractive(paper, passages, text.source, str(exc))
        # The number guard: what the answer states must be in the context the model saw.
        grounded = Guard(context, text.labels()).check(result.content.strip())
        self.llm.record_grounding(result, grounded.checked, grounded.unverified)
        return Answer(
            arxiv_id=paper.arxiv_id,
            text=with_footnote(grounded),
            model=result.model,
            tokens=result.tokens,
            llm_used=True,
        )

    def _extractive(
        self, paper: Paper, passages: Sequence[tuple[str, str]], source: str, why: str
    ) -> Answer:
        note = (
            f"LLM unavailable ({why}): these are the passages of the paper that match your question"
        )
        if passages:
            body = "\n\n".join(
                f"**{heading}** ({source}):\n> {para[:800]}" for heading, para in passages[:3]
            )
        else:
            body = "The paper text available here does not mention what you asked about."
        return Answer(
            arxiv_id=paper.arxiv_id, text=body, model=None, tokens=0, llm_used=False, note=note
        )
