"""Answers a question about one paper, grounded in the paper, in the question's language.

Every answer's context holds the title, the abstract and the deep dive. Then the paper's
whole text when it fits the answer budget, else the passages (paragraphs, tables, captions,
each with its section) that BM25 ranks best for the question. A question in another language
than the paper's English is first turned into English search terms by one small, cached LLM
call, so a Chinese question finds English passages.

The prompt is laid out for the provider's prompt cache: system prompt, then the paper
material (byte-identical for every question of a thread), then the thread's memory, then the
retrieved passages (they change with each question), then the question. Without an LLM the
answer is the three passages BM25 ranks best, named by section.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import bm25s
import Stemmer

from digest_core import prompts
from digest_core.config import Profile
from digest_core.llm import LLMClient, LLMError
from digest_core.models import SOURCE_ABSTRACT, Answer, DeepDive, Paper
from digest_core.sources.fulltext import FullText, Passage, estimate_tokens

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 2000
EXTRACTIVE_PASSAGES = 3
# Room kept for the thread memory, the question and the answer's own framing.
QUESTION_RESERVE_TOKENS = 1500
SEARCH_TERMS_MAX_TOKENS = 60
_TERMS_CACHE_SIZE = 512
_ACK = "I have the paper material. What is your question?"
_REF = re.compile(r"\b(table|tab|figure|fig|section|sec|appendix)\.?\s*([0-9]+|[A-Z]\b)", re.I)

# One English stemmer for index and query alike, so "limitations" meets "limitation".
_STEMMER = Stemmer.Stemmer("english")


@dataclass(frozen=True)
class Scored:
    passage: Passage
    score: float
    position: int  # in document order


def passage_label(passage: Passage) -> str:
    """ "4.2 Ablation study · Table 2": where a passage sits, as the answer should cite it."""
    if passage.label and passage.label not in passage.section:
        return f"{passage.section} · {passage.label}" if passage.section else passage.label
    return passage.section or "Text"


def _tokens(texts: list[str]) -> list[list[str]]:
    return bm25s.tokenize(
        texts, stopwords="en", stemmer=_STEMMER, return_ids=False, show_progress=False
    )


def rank_passages(passages: Sequence[Passage], query: str) -> list[Scored]:
    """Passages that share a term with `query`, best BM25 score first.

    The section label is indexed with the text, so "limitations" finds the paragraphs of a
    Limitations section. A question that names a table, figure or section ("Table 2") puts
    the passages carrying that label first.
    """
    if not passages:
        return []
    corpus = [f"{passage_label(p)}\n{p.text}" for p in passages]
    query_tokens = _tokens([query])[0]
    if not query_tokens:
        return []
    retriever = bm25s.BM25()
    retriever.index(_tokens(corpus), show_progress=False)
    scores = retriever.get_scores(query_tokens)
    named = {f"{kind[:3].lower()} {num.lower()}" for kind, num in _REF.findall(query)}
    ranked: list[Scored] = []
    for i, passage in enumerate(passages):
        score = float(scores[i])
        if named and _names(passage, named):
            score += 1000.0  # an explicit reference beats any word overlap
        if score > 0:
            ranked.append(Scored(passage, score, i))
    ranked.sort(key=lambda s: (-s.score, s.position))
    return ranked


def _names(passage: Passage, named: set[str]) -> bool:
    where = f"{passage.label or ''} {passage.section} {passage.text[:40]}"
    found = {f"{k[:3].lower()} {n.lower()}" for k, n in _REF.findall(where)}
    number = re.match(r"\s*([0-9]+)", passage.section)
    if number:
        found.add(f"sec {number.group(1)}")
    return bool(found & named)


def within_budget(ranked: Sequence[Scored], budget_tokens: int) -> list[Scored]:
    """The best passages that fit `budget_tokens`, back in document order."""
    picked: list[Scored] = []
    used = 0
    for item in ranked:
        cost = estimate_tokens(item.passage.text) + 8
        if used + cost > budget_tokens:
            continue
        picked.append(item)
        used += cost
    return sorted(picked, key=lambda s: s.position)


def needs_search_terms(question: str) -> bool:
    """English questions are searched as they are; anything else is translated first."""
    return not question.isascii()


class Answerer:
    def __init__(
        self,
        profile: Profile,
        llm: LLMClient | None,
        token_budget: int,
        no_llm_reason: str,
    ) -> None:
        self.profile = profile
        self.llm = llm
        self.token_budget = token_budget  # llm.answer_token_budget
        self.no_llm_reason = no_llm_reason
        self.prompt = prompts.load("answer")
        self.terms_prompt = prompts.load("search_terms")
        self._terms: OrderedDict[str, str] = OrderedDict()

    # -- the context ---------------------------------------------------------------------------

    def paper_block(self, paper: Paper, dive: DeepDive | None, text: FullText) -> tuple[str, bool]:
        """The stable paper material and whether it holds the whole paper.

        Identical for every question about the paper (for the same deep dive), so the
        provider can serve it from its prompt cache."""
        parts = [f"Title: {paper.title}", f"arXiv: {paper.versioned_id}"]
        parts.append("## Abstract\n" + (paper.abstract or "(none)"))
        if dive is not None:
            parts.append(
                "## Deep dive (posted in this thread)\n" + dive.body_markdown(heading_level=3)
            )
        head = "\n\n".join(parts)
        if text.source == SOURCE_ABSTRACT:
            return prompts.data_block("paper", head), True
        whole = _without_leading_abstract(text.whole())
        full = f"{head}\n\n## Full text of the paper ({text.source})\n\n{whole}"
        if estimate_tokens(full) + QUESTION_RESERVE_TOKENS <= self.token_budget:
            return prompts.data_block("paper", full), True
        return prompts.data_block("paper", head), False

    async def search_terms(self, question: str) -> str:
        """English search terms for `question`: itself when it is English, else the model's
        translation (cached per question text), else its own words when no model answers."""
        if not needs_search_terms(question) or self.llm is None:
            return question
        cached = self._terms.get(question)
        if cached is not None:
            self._terms.move_to_end(question)
            return cached
        try:
            result = await self.llm.text(
                system=self.terms_prompt.render(),
                user=prompts.data_block("question", question),
                purpose="search_terms",
                prompt_version=self.terms_prompt.version,
                max_tokens=SEARCH_TERMS_MAX_TOKENS,
            )
        except LLMError as exc:
            log.info("search terms for a question fell back to its own words: %s", exc)
            return question
        # The original words stay: names and numbers ("GPT-4o", "Table 2") match as typed.
        terms = f"{' '.join(result.content.split())[:400]} {question}"
        self._terms[question] = terms
        if len(self._terms) > _TERMS_CACHE_SIZE:
            self._terms.popitem(last=False)
        return terms

    # -- answering -----------------------------------------------------------------------------

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
        passages = text.passages()
        if self.llm is None:
            ranked = rank_passages(passages, question)
            return self._extractive(paper, ranked, text.source, self.no_llm_reason)
        block, whole = self.paper_block(paper, dive, text)
        ranked = []
        if not whole:
            ranked = rank_passages(passages, await self.search_terms(question))
        messages: list[dict[str, str]] = [
            {"role": "user", "content": block},
            {"role": "assistant", "content": _ACK},
        ]
        for role, turn in history:
            content = prompts.data_block("question", turn) if role == "user" else turn
            messages.append({"role": role, "content": content})
        if not whole:
            room = self.token_budget - estimate_tokens(block) - QUESTION_RESERVE_TOKENS
            chosen = within_budget(ranked, max(room, 0))
            messages.append({"role": "user", "content": passages_block(chosen, text.source)})
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
            if whole:
                ranked = rank_passages(passages, question)
            return self._extractive(paper, ranked, text.source, str(exc))
        return Answer(
            arxiv_id=paper.arxiv_id,
            text=result.content.strip(),
            model=result.model,
            tokens=result.tokens,
            llm_used=True,
        )

    def _extractive(self, paper: Paper, ranked: Sequence[Scored], source: str, why: str) -> Answer:
        note = (
            f"LLM unavailable ({why}): these are the passages of the paper that best match"
            " your question"
        )
        best = list(ranked[:EXTRACTIVE_PASSAGES])
        if best:
            body = "\n\n".join(
                f"**{passage_label(s.passage)}** ({source}):\n> {s.passage.text[:800]}"
                for s in best
            )
        else:
            body = "The paper text available here does not mention what you asked about."
        return Answer(
            arxiv_id=paper.arxiv_id, text=body, model=None, tokens=0, llm_used=False, note=note
        )


def passages_block(chosen: Sequence[Scored], source: str) -> str:
    """The retrieved passages as their own data block, each under its section label."""
    if not chosen:
        body = f"(No passage of the paper's text ({source}) matches this question.)"
    else:
        body = f"## Passages of the paper that bear on the question ({source})\n\n" + "\n\n".join(
            f"[{passage_label(s.passage)}]\n{s.passage.text}" for s in chosen
        )
    return prompts.data_block("passages", body)


def _without_leading_abstract(whole: str) -> str:
    """The whole text minus its abstract section, which the block already holds."""
    if not whole.startswith("## Abstract\n"):
        return whole
    nxt = whole.find("\n## ", len("## Abstract\n"))
    return whole[nxt + 1 :] if nxt >= 0 else ""
