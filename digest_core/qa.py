"""Answers a question about one paper, grounded in the paper, in the question's language.

Every answer's context holds the title, the abstract and the deep dive. Then the paper's
whole text when it fits the answer budget, else the passages (paragraphs, tables, captions,
each with its section) that BM25 ranks best for the question. A question in another language
than the paper's English is first turned into English search terms by one small LLM call,
cached per question text in memory and, through `TermsCache` (the store), across restarts.

The prompt is laid out for the provider's prompt cache, which serves the longest prefix a
request shares with an earlier one:

    system, paper block, ack, [passages1], question1, answer1, …, [passagesN], questionN

The paper block is byte-identical for every question of a thread. When passages are
retrieved, each earlier question keeps the passages it was answered from, in the same place
and bytes as when it was asked: they are rebuilt from the same FullText with the same search
terms (the persisted cache) and the same per-turn allowance, which depends only on the turn's
place in the thread. So the second request starts with the first one byte for byte. A
passage already shown in an earlier turn is not repeated: the later turn names it instead.
The first question gets the larger share of the passage room (it seeds the shared prefix);
later ones a share each sized so a thread's memory fits the budget. When it does not fit, the
oldest turns lose their passages first. Without an LLM the answer is the three passages BM25
ranks best, named by section.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from digest_core import prompts
from digest_core.config import Profile
from digest_core.grounding import Guard, with_footnote
from digest_core.llm import LLMClient, LLMError
from digest_core.models import SOURCE_ABSTRACT, Answer, DeepDive, Paper
from digest_core.sources.fulltext import FullText, Passage, estimate_tokens

if TYPE_CHECKING:
    import bm25s
    import Stemmer

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 2000
EXTRACTIVE_PASSAGES = 3
# Room kept for the thread memory's questions and answers and the current question.
QUESTION_RESERVE_TOKENS = 1500
# The first question's share of the passage room; later questions share the rest, one
# `memory_turns`-th each, so a full thread memory still fits without dropping anything.
FIRST_TURN_SHARE = 0.6
# Earlier passages a turn names instead of repeating them.
MAX_REFERENCES = 6
SEARCH_TERMS_MAX_TOKENS = 60
_TERMS_CACHE_SIZE = 512
_ACK = "I have the paper material. What is your question?"
_REF = re.compile(r"\b(table|tab|figure|fig|section|sec|appendix)\.?\s*([0-9]+|[A-Z]\b)", re.I)


@cache
def _bm25s() -> ModuleType:
    """bm25s (with numpy), imported on the first question rather than with this module: a
    digest or a `serve` that is never asked anything does not pay for it."""
    import bm25s

    # bm25s sets its own logger to DEBUG when imported, which would print "Building index
    # from tokens" on every question; its progress is no news to a user.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


@cache
def _stemmer() -> Stemmer.Stemmer:
    """One English stemmer for index and query alike, so "limitations" meets "limitation"."""
    import Stemmer

    return Stemmer.Stemmer("english")


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


# Words of the question itself, not of its subject: "What are the main limitations?" is about
# limitations, and "main" must not pull in every paragraph that says "main".
_QUESTION_WORDS = frozenset(
    """what which who whom whose why how when where does did done can could would should
    main key major primary biggest important importance significant paper papers author
    authors study work's propose proposed proposes describe described explain tell give list
    mention mentioned discuss discussed summarize summarise overall please""".split()
)
# How much a passage whose heading (section, or paragraph title) carries the question's terms
# gains over one that only mentions them: a "Limitations" paragraph answers "limitations".
_HEADING_WEIGHT = 1.0
_TITLE_LINE_CHARS = 80


def _tokens(texts: list[str], stopwords: object = "en") -> list[list[str]]:
    return _bm25s().tokenize(
        texts, stopwords=stopwords, stemmer=_stemmer(), return_ids=False, show_progress=False
    )


def _heading(passage: Passage) -> str:
    """The section label and, when the passage opens with a short title line, that title."""
    first, _, rest = passage.text.partition("\n")
    title = first if rest and len(first) <= _TITLE_LINE_CHARS else ""
    return f"{passage_label(passage)} {title}"


@cache
def _stemmed_question_words() -> frozenset[str]:
    return frozenset(_stemmer().stemWords(sorted(_QUESTION_WORDS)))


class PassageIndex:
    """A BM25 index over a paper's passages, built once and asked several queries (a thread
    question and the earlier questions whose passages are rebuilt)."""

    def __init__(self, passages: Sequence[Passage]) -> None:
        self.passages = list(passages)
        self._retriever: bm25s.BM25 | None = None
        if self.passages:
            corpus = [f"{passage_label(p)}\n{p.text}" for p in self.passages]
            self._retriever = _bm25s().BM25()
            self._retriever.index(_tokens(corpus), show_progress=False)
            self._headings = [set(t) for t in _tokens([_heading(p) for p in self.passages])]

    def rank(self, query: str) -> list[Scored]:
        """Passages that share a term with `query`, best BM25 score first (ties in document
        order, so the same query always gives the same list).

        The section label is indexed with the text, so "limitations" finds the paragraphs of
        a Limitations section. A question that names a table, figure or section ("Table 2")
        puts the passages carrying that label first.
        """
        if self._retriever is None:
            return []
        query_tokens = [
            t for t in _tokens([query])[0] if t not in _stemmed_question_words()
        ] or _tokens([query])[0]
        if not query_tokens:
            return []
        scores = self._retriever.get_scores(query_tokens)
        wanted = set(query_tokens)
        named = {f"{kind[:3].lower()} {num.lower()}" for kind, num in _REF.findall(query)}
        ranked: list[Scored] = []
        for i, passage in enumerate(self.passages):
            score = float(scores[i])
            if score > 0:
                in_heading = len(wanted & self._headings[i]) / len(wanted)
                score *= 1.0 + _HEADING_WEIGHT * in_heading
            if named and _names(passage, named):
                score += 1000.0  # an explicit reference beats any word overlap
            if score > 0:
                ranked.append(Scored(passage, score, i))
        ranked.sort(key=lambda s: (-s.score, s.position))
        return ranked


def rank_passages(passages: Sequence[Passage], query: str) -> list[Scored]:
    """Passages that share a term with `query`, best BM25 score first (see PassageIndex)."""
    return PassageIndex(passages).rank(query)


def _names(passage: Passage, named: set[str]) -> bool:
    where = f"{passage.label or ''} {passage.section} {passage.text[:40]}"
    found = {f"{k[:3].lower()} {n.lower()}" for k, n in _REF.findall(where)}
    number = re.match(r"\s*([0-9]+)", passage.section)
    if number:
        found.add(f"sec {number.group(1)}")
    return bool(found & named)


def needs_search_terms(question: str) -> bool:
    """English questions are searched as they are; anything else is translated first."""
    return not question.isascii()


class TermsCache(Protocol):
    """Where search terms outlive the process (the store): a thread's earlier questions must
    find the same passages after a restart, or their bytes and the cached prefix change."""

    async def get_search_terms(self, key: str) -> str | None: ...

    async def save_search_terms(self, key: str, terms: str) -> None: ...


@dataclass(frozen=True)
class _TurnPassages:
    """What one question of a thread is shown: new passages, and earlier ones it names."""

    picked: tuple[Scored, ...]
    named: tuple[str, ...]


class Answerer:
    def __init__(
        self,
        profile: Profile,
        llm: LLMClient | None,
        token_budget: int,
        no_llm_reason: str,
        *,
        memory_turns: int = 6,
        terms_cache: TermsCache | None = None,
    ) -> None:
        self.profile = profile
        self.llm = llm
        self.token_budget = token_budget  # llm.answer_token_budget
        self.no_llm_reason = no_llm_reason
        self.memory_turns = max(1, memory_turns)  # interactive.thread_memory_turns
        self.terms_cache = terms_cache
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
        key = f"{self.terms_prompt.version}\n{self.llm.settings.model}\n{question}"
        if self.terms_cache is not None:
            try:
                stored = await self.terms_cache.get_search_terms(key)
            except Exception as exc:  # a cache, not a source of truth: ask the model instead
                log.warning("search-terms cache unreadable, asking the model: %s", exc)
                stored = None
            if stored is not None:
                self._remember(question, stored)
                return stored
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
        self._remember(question, terms)
        if self.terms_cache is not None:
            try:
                await self.terms_cache.save_search_terms(key, terms)
            except Exception as exc:
                log.warning("search terms not kept across restarts: %s", exc)
        return terms

    def _remember(self, question: str, terms: str) -> None:
        self._terms[question] = terms
        if len(self._terms) > _TERMS_CACHE_SIZE:
            self._terms.popitem(last=False)

    # -- answering -----------------------------------------------------------------------------

    async def answer(
        self,
        paper: Paper,
        dive: DeepDive | None,
        text: FullText,
        question: str,
        history: Sequence[tuple[str, str]] = (),
        on_delta: Callable[[str], Awaitable[None]] | None = None,
    ) -> Answer:
        """`history` holds earlier (role, text) turns, oldest first, role "user"/"assistant".

        `on_delta`, when given, is awaited with the model's text as it is written (a preview:
        the returned Answer, checked by the number guard, is what counts). An answer without
        the model comes back at once and is not streamed."""
        question = question.strip()[:MAX_QUESTION_CHARS]
        passages = text.passages()
        if self.llm is None:
            best = rank_passages(passages, question)
            return self._extractive(paper, best, text.source, self.no_llm_reason, question)
        block, whole = self.paper_block(paper, dive, text)
        system = self.prompt.render(
            profile_name=self.profile.name, topics=", ".join(self.profile.topics)
        )
        ranked: list[Scored] = []
        if whole:
            messages = _thread_messages(block, history, {}, question, None, text.source)
        else:
            # The block already holds the abstract: its passages would only repeat it.
            index = PassageIndex([p for p in passages if p.section != "Abstract"])
            ranked = index.rank(await self.search_terms(question))
            messages = await self._retrieved_layout(
                block, index, text.source, history, question, ranked
            )
        try:
            result = await self.llm.text(
                system=system,
                messages=messages,
                purpose="answer",
                prompt_version=self.prompt.version,
                max_tokens=1200,
                on_delta=on_delta,
            )
        except LLMError as exc:
            log.warning("answer about %s fell back to passages: %s", paper.arxiv_id, exc)
            if whole:
                ranked = rank_passages(passages, question)
            return self._extractive(paper, ranked, text.source, str(exc), question)
        # The number guard: what the answer states must be in the context the model saw,
        # the passages of the thread's earlier questions included.
        retrieved = "\n\n".join(
            m["content"] for m in messages if m["content"].startswith("<passages>\n")
        )
        grounded = Guard(block + "\n\n" + retrieved, text.labels()).check(result.content.strip())
        self.llm.record_grounding(result, grounded.checked, grounded.unverified)
        return Answer(
            arxiv_id=paper.arxiv_id,
            text=with_footnote(grounded),
            model=result.model,
            tokens=result.tokens,
            llm_used=True,
        )

    async def _retrieved_layout(
        self,
        block: str,
        index: PassageIndex,
        source: str,
        history: Sequence[tuple[str, str]],
        question: str,
        ranked: list[Scored],
    ) -> list[dict[str, str]]:
        """The messages when passages are retrieved: every question of the thread with the
        passages it was (or is) answered from, the oldest turns' passages dropped first when
        the whole does not fit the budget."""
        asked = [turn for role, turn in history if role == "user"]
        rankings = [index.rank(await self.search_terms(q)) for q in asked] + [ranked]
        # Like the whole-paper test in paper_block, the budget counts the paper material and
        # the thread, not the fixed instructions.
        room = max(self.token_budget - estimate_tokens(block) - QUESTION_RESERVE_TOKENS, 0)
        messages: list[dict[str, str]] = []
        for first_kept in range(len(rankings)):
            shown: set[int] = set()
            per_turn: dict[int, str] = {}
            for k in range(first_kept, len(rankings)):
                allowance = room * (
                    FIRST_TURN_SHARE if k == 0 else (1 - FIRST_TURN_SHARE) / self.memory_turns
                )
                turn = _turn_passages(rankings[k], int(allowance), shown)
                shown |= {s.position for s in turn.picked}
                per_turn[k] = passages_block(turn.picked, source, turn.named)
            current = per_turn.pop(len(rankings) - 1)
            messages = _thread_messages(block, history, per_turn, question, current, source)
            used = sum(estimate_tokens(m["content"]) for m in messages)
            if used <= self.token_budget:
                break
        return messages

    def _extractive(
        self, paper: Paper, ranked: Sequence[Scored], source: str, why: str, question: str
    ) -> Answer:
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
        elif needs_search_terms(question):
            # Without the model nothing turns the question into English search terms, and
            # the paper's words are English: say so instead of "the paper does not say".
            body = (
                "Without the model, questions are matched word for word against the paper's"
                " English text, and none of your question's words occur in it. Ask in English"
                " (for example: which base models are used?) to see the passages that match."
            )
        else:
            body = "The paper text available here does not mention what you asked about."
        return Answer(
            arxiv_id=paper.arxiv_id, text=body, model=None, tokens=0, llm_used=False, note=note
        )


def _turn_passages(ranked: Sequence[Scored], allowance: int, shown: set[int]) -> _TurnPassages:
    """The best passages for one question that fit `allowance` and were not shown to an
    earlier question of the thread; those shown earlier that rank above the last one picked
    are named instead of repeated."""
    picked: list[Scored] = []
    earlier: list[tuple[int, str]] = []  # (rank, label)
    last_pick = -1
    used = 0
    for rank, item in enumerate(ranked):
        if item.position in shown:
            earlier.append((rank, passage_label(item.passage)))
            continue
        cost = estimate_tokens(item.passage.text) + 8
        if used + cost > allowance:
            continue
        picked.append(item)
        used += cost
        last_pick = rank
    named: list[str] = []
    for rank, label in earlier:
        if (rank < last_pick or not picked) and label not in named:
            named.append(label)
    return _TurnPassages(
        tuple(sorted(picked, key=lambda s: s.position)), tuple(named[:MAX_REFERENCES])
    )


def _thread_messages(
    block: str,
    history: Sequence[tuple[str, str]],
    passages_of: dict[int, str],
    question: str,
    current_passages: str | None,
    source: str,
) -> list[dict[str, str]]:
    """[paper, ack, (passages_k, question_k, answer_k)…, passages, question]. `passages_of`
    maps the index of an earlier question (0 = oldest in `history`) to its passages block;
    a question without one (whole paper, or dropped for the budget) stands alone."""
    messages = [
        {"role": "user", "content": block},
        {"role": "assistant", "content": _ACK},
    ]
    asked = 0
    for role, turn in history:
        if role == "user":
            if asked in passages_of:
                messages.append({"role": "user", "content": passages_of[asked]})
            messages.append({"role": "user", "content": prompts.data_block("question", turn)})
            asked += 1
        else:
            messages.append({"role": role, "content": turn})
    if current_passages is not None:
        messages.append({"role": "user", "content": current_passages})
    messages.append({"role": "user", "content": prompts.data_block("question", question)})
    return messages


def passages_block(chosen: Sequence[Scored], source: str, named: Sequence[str] = ()) -> str:
    """The passages retrieved for one question as their own data block, each under its
    section label, then the labels of passages shown earlier in the thread that also bear
    on it."""
    also = "; ".join(f"[{label}]" for label in named)
    if not chosen and not named:
        body = f"(No passage of the paper's text ({source}) matches this question.)"
    elif not chosen:
        body = f"(No new passage: those that bear on this question are shown above: {also})"
    else:
        body = f"## Passages of the paper that bear on the question ({source})\n\n" + "\n\n".join(
            f"[{passage_label(s.passage)}]\n{s.passage.text}" for s in chosen
        )
        if named:
            body += f"\n\nAlso bearing on it, shown above: {also}"
    return prompts.data_block("passages", body)


def _without_leading_abstract(whole: str) -> str:
    """The whole text minus its abstract section, which the block already holds."""
    if not whole.startswith("## Abstract\n"):
        return whole
    nxt = whole.find("\n## ", len("## Abstract\n"))
    return whole[nxt + 1 :] if nxt >= 0 else ""
