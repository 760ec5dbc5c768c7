"""Speed and LLM-call figures of the daily digest, against local fakes (not a timed test).

Starts fakes of Hugging Face (the recorded 2026-01-23 day, 18 papers), arXiv (metadata for
every paper of that day, plus an HTML full text for each) and an OpenAI-compatible server
whose every answer takes L = 1 s, all on 127.0.0.1 and in this process. Then it builds the
day's digest twice on a fresh database, with the committed configuration (arXiv spacing
3 s, the real LLM deadlines), each run with a new Pipeline as a second `digestbot digest`
process would have, and prints each figure beside its goal:

- run 1 wall time <= 2.2 L + 1 s (scores in at most 2 calls, the 2 deep dives in parallel)
- scoring calls <= 2; deep-dive calls = the deep dives written; LLM calls in flight at once
- run 2 (the same day again) makes 0 LLM calls

Then the deadlines the tests check by outcome only (a hang ends as a timeout, not as the
fake's late answer), timed here with the test configuration:

- Hugging Face hangs (source deadline 1 s, 1 retry): time to the "did not answer in time"
  error, beside `total_deadline()` (was timed in tests/test_sources.py)
- the LLM hangs (deadline 1 s, 1 retry): time until scoring falls back to keyword relevance
  (was timed in tests/test_scoring.py and tests/test_llm.py, with a 0.5 s deadline the
  configuration does not accept)

Usage: python bench/digest.py [--latency SECONDS] [--arxiv-delay SECONDS]. `--arxiv-delay`
makes each arXiv API answer take that long (the real API often takes about a second): the
one version lookup of a run overlaps the scoring call, so it should not add to the wall
time while it is shorter than L. Always exits 0: it reports, it does not judge.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fakes.llm import FakeLLM  # noqa: E402
from fakes.papers import FakeArxiv, FakeHF, arxiv_fixture, hf_day  # noqa: E402
from fakes.world import fast_config, research_responder  # noqa: E402

from bot.settings import load_settings  # noqa: E402
from digest_core.pipeline import Pipeline  # noqa: E402

DAY = "2026-01-23"
KEY = "sk-bench-0000000000000000"


def arxiv_entry(paper: dict) -> bytes:
    """An arXiv API `<entry>` for one HF paper (HF lists no version; arXiv says v1)."""
    authors = "".join(
        f"<author><name>{escape(a['name'])}</name></author>" for a in paper.get("authors", [])
    )
    return (
        f"<entry><id>http://arxiv.org/abs/{paper['id']}v1</id>"
        f"<published>{paper.get('publishedAt', '')}</published>"
        f"<title>{escape(paper['title'])}</title>"
        f"<summary>{escape(paper.get('summary', ''))}</summary>{authors}</entry>"
    ).encode()


class Clock:
    """Records when each progress stage starts and ends, relative to the run's start."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.marks: dict[str, list[float]] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic() - self.start
        mark = self.marks.setdefault(stage, [now, now])
        mark[1] = now

    def span(self, stage: str) -> str:
        if stage not in self.marks:
            return "-"
        a, b = self.marks[stage]
        return f"{a:5.2f} -> {b:5.2f} s"


def kinds(calls: list[dict]) -> tuple[int, int, int]:
    """(scoring, deep dive, other) LLM calls, told apart by their system prompts."""
    score = dive = other = 0
    for call in calls:
        system = next((m["content"] for m in call["messages"] if m["role"] == "system"), "")
        if "rate research papers" in system:
            score += 1
        elif "deep dive" in system:
            dive += 1
        else:
            other += 1
    return score, dive, other


async def run(pipeline_env: dict[str, str]) -> tuple[float, Clock, object]:
    settings = load_settings(env=pipeline_env)
    pipeline = await Pipeline.open(settings)
    try:
        clock = Clock()
        digest = await pipeline.build_digest(DAY, progress=clock)
        wall = time.monotonic() - clock.start
    finally:
        await pipeline.aclose()
    return wall, clock, digest


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


async def deadlines() -> None:
    """Time a hung Hugging Face and a hung LLM against the deadlines that end them."""
    from digest_core.sources import SourceError, make_http_client, total_deadline
    from digest_core.sources.hf import fetch_daily_papers, parse_daily_papers

    hf = FakeHF(days={DAY: hf_day(DAY)}, hang=True)
    llm = FakeLLM(responder=research_responder())
    llm_hang = 30.0
    for fake in (hf, llm):
        await fake.start()
    try:
        with tempfile.TemporaryDirectory(prefix="digestbot-bench-") as tmp:
            config = Path(tmp) / "digestbot.toml"
            config.write_text(
                fast_config(
                    **{
                        # the smallest deadlines the configuration accepts
                        "timeout_seconds = 120": "timeout_seconds = 1",  # [llm]
                        "timeout_seconds = 30": "timeout_seconds = 1",  # [sources]
                    }
                ),
                encoding="utf-8",
            )
            env = {
                "DIGEST_CONFIG": str(config),
                "DIGEST_DB": str(Path(tmp) / "bench.db"),
                "HF_ENDPOINT": hf.url,
                "OPENAI_BASE_URL": f"{llm.url}/v1",
                "OPENAI_API_KEY": KEY,
            }
            settings = load_settings(env=env)
            src = settings.sources
            started = time.perf_counter()
            async with make_http_client(src) as client:
                try:
                    await fetch_daily_papers(client, src, DAY)
                    hf_outcome = "answered (unexpected)"
                except SourceError as exc:
                    hf_outcome = str(exc)
            hf_took = time.perf_counter() - started

            llm.fail_next("hang", times=10, seconds=llm_hang)
            papers = parse_daily_papers(hf_day(DAY), "https://arxiv.org")[:5]
            pipeline = await Pipeline.open(settings)
            try:
                started = time.perf_counter()
                result = await pipeline.scorer.score(papers)
                llm_took = time.perf_counter() - started
                answered = llm.answered  # before stop() releases the hung requests
            finally:
                await pipeline.aclose()
    finally:
        for fake in (hf, llm):
            await fake.stop()

    attempts_hf = src.retries + 1
    cap = total_deadline(src)
    print()
    print("deadlines (the tests check the outcome; the time is measured here):")
    print(
        f"  Hugging Face hangs: gave up after {hf_took:.2f} s ({attempts_hf} x"
        f" {src.timeout_seconds:g} s + backoff), total_deadline {cap:.2f} s"
        f"   {verdict(hf_took < cap)}"
    )
    print(f"    {hf_outcome}")
    llm_cfg = settings.llm
    goal = llm_cfg.timeout_seconds * (llm_cfg.max_retries + 1) + 2.0  # + backoff and scheduling
    print(
        f"  LLM hangs ({llm_hang:g} s each): scoring fell back after {llm_took:.2f} s"
        f" ({llm_cfg.max_retries + 1} x {llm_cfg.timeout_seconds:g} s + backoff),"
        f" goal < {goal:.1f} s   {verdict(llm_took < goal)}"
    )
    print(f"    {result.note}; LLM calls {len(llm.calls)}, answered {answered}")


async def main(latency: float, arxiv_delay: float) -> None:
    day = hf_day(DAY)
    hf = FakeHF(days={DAY: day})
    entries = {item["paper"]["id"]: arxiv_entry(item["paper"]) for item in day}
    page = arxiv_fixture("html_latexml_sample.html").decode()
    arxiv = FakeArxiv(entries=entries, html=dict.fromkeys(entries, page), delay=arxiv_delay)
    llm = FakeLLM(responder=research_responder(), latency=latency)
    for fake in (hf, arxiv, llm):
        await fake.start()
    try:
        with tempfile.TemporaryDirectory(prefix="digestbot-bench-") as tmp:
            env = {
                "DIGEST_CONFIG": str(ROOT / "config" / "digestbot.toml"),
                "DIGEST_DB": str(Path(tmp) / "bench.db"),
                "HF_ENDPOINT": hf.url,
                "ARXIV_API_URL": arxiv.api_url,
                "ARXIV_URL": arxiv.url,
                "OPENAI_BASE_URL": f"{llm.url}/v1",
                "OPENAI_API_KEY": KEY,
            }
            interval = load_settings(env=env).sources.arxiv_min_interval_seconds
            wall1, clock1, digest1 = await run(env)
            calls1 = llm.calls
            in_flight1 = llm.max_in_flight
            queries1 = len(arxiv.queries())
            wall2, clock2, digest2 = await run(env)
            calls2 = llm.calls[len(calls1) :]
    finally:
        for fake in (hf, arxiv, llm):
            await fake.stop()

    score1, dive1, other1 = kinds(calls1)
    picked = len(digest1.picked)  # type: ignore[attr-defined]
    scanned = len(digest1.entries)  # type: ignore[attr-defined]
    goal = 2.2 * latency + 1.0
    queries2 = len(arxiv.queries()) - queries1

    print(f"digestbot digest benchmark: HF day {DAY}, fake LLM latency L = {latency:g} s,")
    print(
        f"arXiv spacing {interval:g} s, arXiv answer delay {arxiv_delay:g} s; {scanned} papers scanned, {picked} deep dives written"
        f" ({sum(1 for e in digest1.entries if e.score.by_llm)} LLM scores)"  # type: ignore[attr-defined]
    )
    print()
    rows = [
        (
            "run 1 wall time",
            f"{wall1:.2f} s",
            f"<= 2.2*L + 1 s = {goal:.1f} s",
            wall1 <= goal,
        ),
        ("run 1 scoring calls", str(score1), "<= 2", score1 <= 2),
        ("run 1 deep-dive calls", str(dive1), f"= deep dives written ({picked})", dive1 == picked),
        ("run 1 other LLM calls", str(other1), "0", other1 == 0),
        (
            "run 1 max LLM calls in flight",
            str(in_flight1),
            f">= {min(2, picked)} (deep dives in parallel)",
            in_flight1 >= min(2, picked),
        ),
        ("run 2 LLM calls", str(len(calls2)), "0", len(calls2) == 0),
        (
            "run 2 same digest",
            "yes" if digest2 == digest1 else "no",
            "yes",
            digest2 == digest1,
        ),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, target, ok in rows:
        print(f"  {name:<{width}}  {value:>8}   goal {target:<34} {verdict(ok)}")
    print()
    print("run 1 stages (from the start of the run):")
    print(f"  fetch HF list        {clock1.span('fetch')}")
    print(f"  score                {clock1.span('score')}")
    print(f"  deep dives           {clock1.span('analyse')}")
    if "score" in clock1.marks and "analyse" in clock1.marks:
        gap = clock1.marks["analyse"][0] - clock1.marks["score"][1]
        print(f"  wait between scoring and deep dives (arXiv version lookup): {gap:.2f} s")
    print(f"run 2 wall time {wall2:.2f} s (stages: score {clock2.span('score')})")
    print(f"arXiv API queries: run 1 {queries1}, run 2 {queries2}")
    await deadlines()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=1.0, help="fake LLM latency L (s)")
    parser.add_argument(
        "--arxiv-delay", type=float, default=0.0, help="time each arXiv API answer takes (s)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.latency, args.arxiv_delay))
    sys.exit(0)
