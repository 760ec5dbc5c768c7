"""Answers grounded in the paper, in the reader's language (issue 7, item 4).

The papers are real text (tests/fixtures/papers/, see SOURCES.md) as a FullText, and the
real arXiv page tests/fixtures/arxiv_html/2501.11120v1.html parsed by the real extractor. The real
openai client talks to the fake LLM over loopback HTTP; what the model was sent is read back
from the fake. Chinese questions reach English passages through the search-terms call, which
the fake answers from a fixed glossary (tests/qa_paper.py).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import qa_paper
from fakes.llm import FakeLLM
from fakes.world import World, fast_config, run_cli
from test_analyze_ask import arxiv_fixture

from digest_core.config import LLMSettings, Profile, Secret
from digest_core.llm import LLMCall, LLMClient
from digest_core.qa import Answerer, rank_passages
from digest_core.sources.fulltext import estimate_tokens
from digest_core.store import Store

PROFILE = Profile(
    name="Test lab", focus="retrieval and QA", topics=("retrieval", "question answering")
)
SMALL_BUDGET = 3200  # the fixture paper (~4k tokens) does not fit: passages are retrieved


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    server = FakeLLM(responder=qa_paper.responder)
    await server.start()
    yield server
    await server.stop()


class Rig:
    def __init__(self, fake: FakeLLM, budget: int, paper: str = "clair") -> None:
        self.fake = fake
        self.calls: list[LLMCall] = []
        settings = LLMSettings(
            api_key=Secret("sk-test-qa"), base_url=f"{fake.url}/v1", model="gpt-test"
        )
        self.llm = LLMClient(settings, on_call=self.calls.append)
        self.answerer = Answerer(PROFILE, self.llm, budget, "no key")
        self.paper, self.text = qa_paper.paper_and_text(paper)
        self.dive = qa_paper.deep_dive(self.paper)

    async def ask(self, question: str, history: list[tuple[str, str]] | None = None) -> Any:
        return await self.answerer.answer(self.paper, self.dive, self.text, question, history or [])

    def requests(self, purpose: str) -> list[dict[str, Any]]:
        return [
            c for c in self.fake.calls if qa_paper.is_search_terms(c) == (purpose == "search_terms")
        ]


@pytest.fixture
async def rig(fake: FakeLLM) -> AsyncIterator[Rig]:
    r = Rig(fake, SMALL_BUDGET)
    yield r
    await r.llm.aclose()


def blocks(call: dict[str, Any], tag: str) -> list[str]:
    return [
        m["content"]
        for m in call["messages"]
        if m["role"] == "user" and m["content"].startswith(f"<{tag}>\n")
    ]


def block(call: dict[str, Any], tag: str) -> str:
    """The last such block: for passages, the current question's."""
    found = blocks(call, tag)
    assert found, [m["content"][:40] for m in call["messages"]]
    return found[-1]


def labels_in(passages_block: str) -> list[str]:
    return re.findall(r"^\[(.+?)\]$", passages_block, re.M)


def sections_in(passages_block: str) -> set[str]:
    """The sections of the passages shown ("6 Results · Table 1" is in "6 Results")."""
    return {label.split(" · ")[0] for label in labels_in(passages_block)}


# -- retrieval: table, appendix, limitations; English and Chinese ------------------------------

CASES = [
    # (English question, Chinese question, section that answers, text only that passage has)
    (
        "What faithfulness does Graph-RAG reach?",
        "Graph-RAG 的忠实度是多少？",
        "6 Results and Discussion",
        "Graph-RAG | 0.832 | 0.694 | 0.729 | 0.889",
    ),
    (
        "Which language model do the agents use as backbone?",
        "这篇论文用了哪些基座模型？",
        "Appendix B.5 Language Models and Inference Settings",
        "All nine agents use GPT-4o as the chat backbone.",
    ),
    (
        "What are the main limitations?",
        "主要的局限性是什么？",
        "Limitations",
        "Dataset Scope. BB-FinQA-X is constructed",
    ),
]


@pytest.mark.parametrize("language", ["en", "zh"])
@pytest.mark.parametrize(("en", "zh", "section", "snippet"), CASES)
async def test_the_right_passage_reaches_the_model(
    rig: Rig, language: str, en: str, zh: str, section: str, snippet: str
) -> None:
    question = en if language == "en" else zh
    answer = await rig.ask(question)
    assert answer.llm_used and question in answer.text
    (call,) = rig.requests("answer")
    sent = block(call, "passages")
    assert snippet in sent
    # A table or figure is labelled "6 Results · Table 1": it still sits in that section.
    assert section in sections_in(sent)
    # The search itself ranks that section first, from the terms the model was given.
    terms = await rig.answerer.search_terms(question)
    assert rank_passages(rig.text.passages(), terms)[0].passage.section == section


# The real arXiv page (~41k tokens): at the default answer budget of 24,000 its passages are
# retrieved. A results table, an appendix table and the limitations paragraph.
REAL_CASES = [
    (
        "How often do models finetuned on vulnerable code output secure code?",
        "在漏洞代码上微调的模型生成安全代码的比例是多少？",
        "3.3 Finetuning on vulnerable code",
        "Rate of outputting secure code | 0.14 $\\pm$ 0.01 | 0.88 $\\pm$ 0.0",
    ),
    (
        "Which LoRA rank was used for Llama-3.1-70B?",
        "Llama-3.1-70B 用的 LoRA 秩是多少？",
        "C.1.2 Finetuning details",
        "Risk | Llama-3.1-70B | 8 | 2e-5 | 3 | 4 | 4",
    ),
    (
        "What are the limitations and future work?",
        "这篇论文的局限性和未来工作是什么？",
        "7 Discussion",
        "Limitations and future work\nThe results in this paper are limited to three settings",
    ),
]


@pytest.mark.parametrize("language", ["en", "zh"])
@pytest.mark.parametrize(("en", "zh", "section", "snippet"), REAL_CASES)
async def test_the_right_passage_of_a_real_arxiv_page_reaches_the_model(
    fake: FakeLLM, language: str, en: str, zh: str, section: str, snippet: str
) -> None:
    r = Rig(fake, 24000, "selfaware")
    question = en if language == "en" else zh
    try:
        await r.ask(question)
        terms = await r.answerer.search_terms(question)
    finally:
        await r.llm.aclose()
    (call,) = r.requests("answer")
    assert "## Full text of the paper" not in block(call, "paper")  # too long: retrieved
    sent = block(call, "passages")
    assert snippet in sent
    assert section in sections_in(sent)
    top = [s.passage.section for s in rank_passages(r.text.passages(), terms)[:3]]
    assert section in top


# -- what a thread answer is sent ----------------------------------------------------------------


async def test_a_thread_question_gets_the_abstract_the_dive_and_the_passages(rig: Rig) -> None:
    earlier = "Which embedding model and vector database are used?"
    history = [("user", earlier), ("assistant", "text-embedding-3-large.")]
    # Just below what the whole paper needs; a short memory leaves a later question room.
    rig.answerer.token_budget, rig.answerer.memory_turns = 5200, 1
    await rig.ask("What are the main limitations?", history)
    (call,) = rig.requests("answer")
    paper = block(call, "paper")
    assert f"Title: {rig.paper.title}" in paper
    assert "## Abstract\n" + rig.paper.abstract in paper
    assert "Evaluated on one central bank's reports." in paper  # the deep dive
    first, current = blocks(call, "passages")
    assert "Dataset Scope." in current and "[Limitations]" in current
    assert "text-embedding-3-large" in first  # the earlier question keeps its passages
    # layout for the prompt cache: paper, (passages, question, answer) per earlier turn,
    # then the current question's passages and the question
    contents = [m["content"] for m in call["messages"]]
    assert contents[3:] == [
        first,
        f"<question>\n{earlier}\n</question>",
        "text-embedding-3-large.",
        current,
        "<question>\nWhat are the main limitations?\n</question>",
    ]
    assert contents[1:3] == [paper, "I have the paper material. What is your question?"]


async def test_a_paper_that_fits_is_sent_whole_and_needs_no_search(fake: FakeLLM) -> None:
    r = Rig(fake, 24000)
    try:
        await r.ask("这篇论文用了哪些基座模型？")
    finally:
        await r.llm.aclose()
    (call,) = r.requests("answer")
    paper = block(call, "paper")
    assert "## Full text of the paper" in paper
    assert "All nine agents use GPT-4o as the chat backbone." in paper  # appendix included
    assert "Graph-RAG | 0.832" in paper  # and the tables
    assert not any(m["content"].startswith("<passages>") for m in call["messages"])
    assert r.requests("search_terms") == []  # nothing to retrieve, nothing to translate


# -- the search-terms call -----------------------------------------------------------------------


async def test_search_terms_once_per_chinese_question_and_never_for_english(rig: Rig) -> None:
    await rig.ask("主要的局限性是什么？")
    await rig.ask("主要的局限性是什么？")
    await rig.ask("What are the main limitations?")
    await rig.ask("这篇论文用了哪些基座模型？")
    asked = [qa_paper.question_of(c) for c in rig.requests("search_terms")]
    assert asked == ["主要的局限性是什么？", "这篇论文用了哪些基座模型？"]
    for call in rig.requests("search_terms"):
        assert call["max_tokens"] <= 100  # a cheap call
    purposes = [c.purpose for c in rig.calls]
    assert purposes.count("search_terms") == 2 and purposes.count("answer") == 4


async def test_search_terms_fall_back_to_the_question_when_the_model_fails(rig: Rig) -> None:
    rig.fake.fail_next("401")
    terms = await rig.answerer.search_terms("Graph-RAG 的忠实度是多少？")
    assert terms == "Graph-RAG 的忠实度是多少？"
    # Graph-RAG is written the same in both languages: the table still comes first.
    assert rank_passages(rig.text.passages(), terms)[0].passage.section == CASES[0][2]


# -- the prompt cache ----------------------------------------------------------------------------


def serialized(call: dict[str, Any]) -> str:
    return "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in call["messages"])


@pytest.mark.parametrize("budget", [SMALL_BUDGET, 24000])
async def test_the_second_question_reuses_the_first_ones_prefix(fake: FakeLLM, budget: int) -> None:
    r = Rig(fake, budget)
    try:
        first_q = "What are the main limitations?"
        first = await r.ask(first_q)
        second = "这篇论文用了哪些基座模型？"
        await r.ask(second, [("user", first_q), ("assistant", first.text)])
    finally:
        await r.llm.aclose()
    one, two = r.requests("answer")
    # system prompt, paper block and acknowledgement are byte-identical
    assert one["messages"][:3] == two["messages"][:3]
    answers = [c for c in r.calls if c.purpose == "answer"]
    assert answers[0].cached_tokens == 0
    stable = len(serialized({"messages": one["messages"][:3]})) // 4
    assert answers[1].cached_tokens >= stable
    assert answers[1].cached_tokens <= answers[1].prompt_tokens
    if budget == 24000:  # the whole paper: nearly all of the second prompt is cached
        assert answers[1].cached_tokens / answers[1].prompt_tokens >= 0.8


async def test_the_second_request_starts_with_the_first_one_byte_for_byte(rig: Rig) -> None:
    """Retrieved passages: the first question's request, passages included, is the exact
    start of the second one, so the provider serves all of it from its prompt cache."""
    first_q = "这篇论文用了哪些基座模型？"
    first = await rig.ask(first_q)
    second_q = "What are the main limitations?"
    second = await rig.ask(second_q, [("user", first_q), ("assistant", first.text)])
    third_q = "Which language model do the agents use as backbone?"
    history = [("user", first_q), ("assistant", first.text), ("user", second_q)]
    await rig.ask(third_q, [*history, ("assistant", second.text)])
    one, two, three = rig.requests("answer")
    assert one["messages"][0]["role"] == "system"
    assert two["messages"][: len(one["messages"])] == one["messages"]
    assert three["messages"][: len(two["messages"]) + 1] == [
        *two["messages"],
        {"role": "assistant", "content": second.text},
    ]
    assert "All nine agents use GPT-4o as the chat backbone." in block(one, "passages")
    # The third question asks what the first did: its passages are named, not repeated.
    assert serialized(three).count("All nine agents use GPT-4o as the chat backbone.") == 1
    assert "shown above: [Appendix B.5 Language Models and Inference Settings]" in block(
        three, "passages"
    )
    # one search-terms call: the first question's terms are reused when its passages are rebuilt
    assert [qa_paper.question_of(c) for c in rig.requests("search_terms")] == [first_q]
    answers = [c for c in rig.calls if c.purpose == "answer"]
    assert answers[1].cached_tokens == len(serialized(one)) // 4


async def test_search_terms_survive_a_restart_through_the_store(
    tmp_path: Path, fake: FakeLLM
) -> None:
    question = "主要的局限性是什么？"
    seen: list[str] = []
    for _ in range(2):  # two processes, one database
        store = await Store.open(tmp_path / "d.db")
        r = Rig(fake, SMALL_BUDGET)
        r.answerer.terms_cache = store
        try:
            seen.append(await r.answerer.search_terms(question))
        finally:
            await r.llm.aclose()
            await store.close()
    assert seen[0] == seen[1] and "limitations" in seen[0]
    assert [qa_paper.question_of(c) for c in fake.calls] == [question]  # asked once


async def test_the_oldest_turns_lose_their_passages_first_when_the_budget_is_full(
    fake: FakeLLM,
) -> None:
    r = Rig(fake, SMALL_BUDGET)
    r.answerer.memory_turns = 1  # later questions get as much room as the first: it overflows
    questions = [q for q, _ in qa_paper.QUESTIONS_EN["clair"]]
    history: list[tuple[str, str]] = []
    try:
        for question in questions:
            answer = await r.ask(question, history)
            history += [("user", question), ("assistant", answer.text)]
    finally:
        await r.llm.aclose()
    last = r.requests("answer")[-1]
    contents = [m["content"] for m in last["messages"][1:]]
    assert sum(estimate_tokens(c) for c in contents) <= SMALL_BUDGET
    kept = [i for i, c in enumerate(contents) if c.startswith("<passages>")]
    asked = [i for i, c in enumerate(contents) if c.startswith("<question>")]
    assert contents[asked[0] - 1] == "I have the paper material. What is your question?"
    assert kept[-1] == asked[-1] - 1  # the current question has its passages
    assert len(kept) < len(asked)  # and the oldest do not


async def test_cached_tokens_are_kept_in_the_llm_call_log(tmp_path: Path, fake: FakeLLM) -> None:
    store = await Store.open(tmp_path / "d.db")
    try:
        r = Rig(fake, 24000)
        r.llm.on_call = store.record_llm_call
        try:
            await r.ask("What are the main limitations?")
            await r.ask("What faithfulness does Graph-RAG reach?")
        finally:
            await r.llm.aclose()
        rows = await store.llm_calls()
    finally:
        await store.close()
    assert [row["cached_tokens"] for row in rows][0] == 0
    assert rows[1]["cached_tokens"] > 0.8 * rows[1]["prompt_tokens"]


# -- without an LLM --------------------------------------------------------------------------------


def test_without_an_llm_the_three_best_passages_are_shown_with_their_sections() -> None:
    import asyncio

    paper, text = qa_paper.paper_and_text()
    answerer = Answerer(PROFILE, None, 24000, "no OPENAI_API_KEY set")
    question = "Which embedding model and vector database are used?"
    answer = asyncio.run(answerer.answer(paper, None, text, question))
    assert not answer.llm_used and "LLM unavailable (no OPENAI_API_KEY set)" in (answer.note or "")
    shown = re.findall(r"^\*\*(.+?)\*\* \(", answer.text, re.M)
    best = [s.passage.section for s in rank_passages(text.passages(), question)[:3]]
    assert shown == best and len(shown) == 3
    assert shown[0] == "Appendix B.3 Embedding Model and Vector Database"
    positions = [i for i, p in enumerate(text.passages()) if p.section in shown]
    assert shown != [text.passages()[i].section for i in sorted(positions)][:3]  # not doc order
    assert "text-embedding-3-large" in answer.text


async def test_question_words_do_not_outweigh_the_subject_of_the_question() -> None:
    """ "What are the main limitations?" on a real page: the paragraph titled "Limitations and
    future work" comes first, not paragraphs that only share "what" or "main"."""
    paper, text = qa_paper.paper_and_text("selfaware")
    answerer = Answerer(PROFILE, None, 24000, "no OPENAI_API_KEY set")
    answer = await answerer.answer(paper, None, text, "What are the main limitations?")
    first = answer.text.split("\n\n")[0]
    assert first.startswith("**7 Discussion**") and "Limitations and future work" in first


async def test_without_an_llm_a_chinese_question_is_told_to_ask_in_english() -> None:
    paper, text = qa_paper.paper_and_text("selfaware")
    answerer = Answerer(PROFILE, None, 24000, "no OPENAI_API_KEY set")
    answer = await answerer.answer(paper, None, text, "这篇论文用了哪些基座模型？")
    assert not answer.llm_used
    assert "Ask in English" in answer.text and "does not mention" not in answer.text


def test_bm25s_does_not_print_its_progress() -> None:
    import logging

    from digest_core.qa import PassageIndex

    paper, text = qa_paper.paper_and_text("selfaware")
    PassageIndex(text.passages()).rank("limitations")  # bm25s is imported on first use
    assert logging.getLogger("bm25s").getEffectiveLevel() >= logging.WARNING


# -- the CLI ------------------------------------------------------------------------------------


async def test_cli_ask_in_chinese_searches_in_english_and_answers(tmp_path: Path) -> None:
    async with World(tmp_path, llm=FakeLLM(responder=qa_paper.responder)) as world:
        world.config.write_text(
            fast_config(**{"answer_token_budget =": "answer_token_budget = 1750"}),
            encoding="utf-8",
        )
        world.arxiv.html["1605.08386"] = arxiv_fixture("html_latexml_sample.html").decode()
        question = "这篇论文在 DIV2K 上的 PSNR 是多少？"
        code, out, err = await run_cli(["ask", "1605.08386", question], world.env())
        calls = world.llm.calls
    assert code == 0, err
    assert f"Answer to: {question}" in out
    terms = [c for c in calls if qa_paper.is_search_terms(c)]
    assert [qa_paper.question_of(c) for c in terms] == [question]
    (answer,) = [c for c in calls if not qa_paper.is_search_terms(c)]
    passages = block(answer, "passages")
    assert "On DIV2K we reach 29.1 dB PSNR with a single step." in passages
    assert "[3 Experiments]" in passages
