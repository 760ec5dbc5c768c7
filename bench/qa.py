"""Thread questions about a paper: retrieval hit rate, prompt-cache reuse, time to answer.

On two fixture papers (tests/qa_paper.py): "clair", section texts of a draft (tests/fixtures/
papers/), and "selfaware", the real arXiv page 2501.11120v1 (tests/fixtures/arxiv_html/,
~41k tokens) parsed by the real extractor. It asks 6 English and 6 Chinese questions per
paper, each with the section that answers it (a results table, an appendix, a limitations
paragraph among them), and prints:

1. Retrieval hit rate per language: a hit is the answering section among the three passages
   BM25 ranks best. Goal >= 90 % in both. English questions are searched as they are;
   Chinese questions go through the search-terms call to a FAKE LLM that translates by a
   fixed glossary. So the Chinese figure measures retrieval given reasonable English terms,
   not a real model's translation.
2. Prompt tokens per question in one thread per paper and language (6 questions: the
   default thread memory holds them all), with passages retrieved (clair at a 3,200-token
   budget, selfaware at the default 24,000) and with the whole paper sent (clair at 24,000,
   selfaware at 48,000),
   and the share of them in the prefix shared with the earlier requests, as the fake LLM
   reports it in usage.prompt_tokens_details.cached_tokens (OpenAI's rules: counted from
   1,024 tokens, in blocks of 128). Goal >= 80 % from the second question on.
3. Time to answer against the fake LLM over loopback HTTP (the real openai client), per
   question: the local cost of retrieval, prompt building and the call, not a model's latency.

Usage: python bench/qa.py. Always exits 0: it reports.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import qa_paper  # noqa: E402
from fakes.llm import FakeLLM  # noqa: E402

from digest_core.config import LLMSettings, Profile, Secret  # noqa: E402
from digest_core.llm import LLMCall, LLMClient  # noqa: E402
from digest_core.qa import Answerer, rank_passages  # noqa: E402

PROFILE = Profile(
    name="Bench lab", focus="retrieval and QA", topics=("retrieval", "question answering")
)
HIT_GOAL = 0.90
PREFIX_GOAL = 0.80
TOP = 3


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


LANGS = (("en", qa_paper.QUESTIONS_EN), ("zh", qa_paper.QUESTIONS_ZH))
# (paper, budget, label): where passages are retrieved and where the whole paper fits.
THREADS = (
    ("clair", 3200, "passages retrieved"),
    ("selfaware", 24000, "passages retrieved"),
    ("clair", 24000, "whole paper"),
    ("selfaware", 48000, "whole paper"),
)


async def hit_rates(answerer: Answerer) -> dict[str, tuple[int, int]]:
    rates: dict[str, tuple[int, int]] = {}
    for lang, per_paper in LANGS:
        hits = total = 0
        for name, questions in per_paper.items():
            passages = qa_paper.paper_and_text(name)[1].passages()
            for question, section in questions:
                terms = await answerer.search_terms(question)
                top = [s.passage.section for s in rank_passages(passages, terms)[:TOP]]
                hit = any(t.startswith(section) for t in top)
                hits += hit
                total += 1
                if not hit:
                    print(f"  miss ({lang}, {name}): {question!r} -> {top}")
        rates[lang] = (hits, total)
    return rates


async def thread(
    fake: FakeLLM, name: str, budget: int, questions: list[tuple[str, str]]
) -> list[LLMCall]:
    calls: list[LLMCall] = []
    settings = LLMSettings(api_key=Secret("sk-bench"), base_url=f"{fake.url}/v1", model="bench")
    llm = LLMClient(settings, on_call=calls.append)
    answerer = Answerer(PROFILE, llm, budget, "no key")
    paper, text = qa_paper.paper_and_text(name)
    dive = qa_paper.deep_dive(paper)
    history: list[tuple[str, str]] = []
    times: list[float] = []
    try:
        for question, _ in questions:
            started = time.perf_counter()
            answer = await answerer.answer(paper, dive, text, question, history)
            times.append(time.perf_counter() - started)
            history += [("user", question), ("assistant", answer.text)]
            history = history[-12:]  # thread memory, as the assistant keeps it (6 turns)
    finally:
        await llm.aclose()
    answers = [c for c in calls if c.purpose == "answer"]
    for i, call in enumerate(answers):
        call.latency_s = times[i]
    return answers


async def main() -> None:
    fake = FakeLLM(responder=qa_paper.responder, cache_min_tokens=1024, cache_block_tokens=128)
    await fake.start()
    try:
        settings = LLMSettings(api_key=Secret("sk-bench"), base_url=f"{fake.url}/v1", model="b")
        llm = LLMClient(settings)
        try:
            rates = await hit_rates(Answerer(PROFILE, llm, 24000, "no key"))
        finally:
            await llm.aclose()
        print(f"Retrieval hit rate (answering section in the top {TOP} passages by BM25):")
        print(
            "  (zh: English search terms from a FAKE LLM that translates by a fixed glossary"
            " written for these questions, tests/qa_paper.py: it measures retrieval given"
            " reasonable terms, not a real model's translation)"
        )
        verdicts: list[str] = []
        for lang, (hits, total) in rates.items():
            rate = hits / total
            line = f"Hit rate {lang}: {rate:.0%} ({hits}/{total})  goal >= {HIT_GOAL:.0%}"
            print(f"  {line}  {verdict(rate >= HIT_GOAL)}")
            verdicts.append(f"{line}  {verdict(rate >= HIT_GOAL)}")

        all_times: list[float] = []
        shares_ok = {label: True for _, _, label in THREADS}
        for name, budget, label in THREADS:
            for lang, per_paper in LANGS:
                answers = await thread(fake, name, budget, per_paper[name])
                print(f"\nThread ({name}, {lang}, answer budget {budget}: {label}):")
                print("  q  prompt_tokens  cached  share   time_ms")
                for i, call in enumerate(answers, start=1):
                    share = call.cached_tokens / call.prompt_tokens if call.prompt_tokens else 0
                    if i >= 2 and share < PREFIX_GOAL:
                        shares_ok[label] = False
                    all_times.append(call.latency_s)
                    print(
                        f"  {i:<2} {call.prompt_tokens:>13} {call.cached_tokens:>7}"
                        f"  {share:>5.0%}  {call.latency_s * 1000:>8.1f}"
                    )
        for label, ok in shares_ok.items():
            verdicts.append(
                f"Prefix shared with earlier requests, question 2 on ({label}): goal >="
                f" {PREFIX_GOAL:.0%} for every question  {verdict(ok)}"
            )
        print()
        for line in verdicts:
            print(line)
        print(
            f"Time to answer against the fake LLM: median {statistics.median(all_times) * 1000:.1f}"
            f" ms, max {max(all_times) * 1000:.1f} ms over {len(all_times)} questions"
        )
    finally:
        await fake.stop()


if __name__ == "__main__":
    asyncio.run(main())
