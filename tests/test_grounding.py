"""The number guard: numbers and citations a model writes are checked against what it read.

Unit checks run `Guard` on real text (Hugging Face daily-papers abstracts recorded in
tests/fixtures/hf, and the LaTeXML sample page through the real parser) with deep dives
written the way a model writes them, some numbers planted wrong. The end-to-end checks run
the real openai client against the fake LLM server: a deep dive and an answer with a planted
wrong number come back marked, the llm_calls row holds the counts, and `digestbot analyze`
prints them.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fakes.llm import FakeLLM
from fakes.papers import arxiv_fixture
from fakes.world import World, research_responder, run_cli

from digest_core.grounding import MARK, Guard, footnote, ground, with_footnote
from digest_core.pipeline import Pipeline
from digest_core.sources.fulltext import FullText, parse_arxiv_html
from digest_core.store import Store

HF = Path(__file__).resolve().parent / "fixtures" / "hf"


def abstract(day: str, arxiv_id: str) -> str:
    items = json.loads((HF / f"daily_papers_{day}.json").read_text(encoding="utf-8"))
    return next(i["paper"]["summary"] for i in items if i["paper"]["id"] == arxiv_id)


COSMOS = abstract("2026-01-23", "2601.16163")  # "98.5% and 67.1% average success rates"
RAE = abstract("2026-01-23", "2601.16208")  # "0.5B to 9.8B", "64 epochs", "256 epochs"
LEGATO = abstract("2026-02-18", "2602.12978")  # "approximately 10% improvements", "five"


def failed(text: str, source: str, labels: frozenset[str] = frozenset()) -> list[str]:
    return [c.text for c in ground(text, source, labels).failed]


# -- numbers ---------------------------------------------------------------------------------------


def test_a_chinese_deep_dive_of_a_real_abstract_passes_when_its_numbers_are_the_papers() -> None:
    dive = (
        "**仅读取了摘要。** Cosmos Policy 将预训练视频模型 Cosmos-Predict2 经单阶段后训练变为"
        "机器人策略，在 LIBERO 与 RoboCasa 上平均成功率分别为 **98.5%** 和 67.1%，"
        "优于从零训练的 diffusion policy（摘要未给出具体表格）。"
    )
    result = ground(dive, COSMOS)
    assert result.failed == () and result.text == dive
    # The two rates are checked; "Cosmos-Predict2" is a name the abstract writes as is.
    assert result.checked == 2


def test_planted_wrong_numbers_are_marked_where_they_stand() -> None:
    dive = (
        "- LIBERO: 98.5% average success (vs. OpenVLA at 76.5%).\n"
        "- RoboCasa: 61.7% average success.\n"
        "- Scales from 0.5B to 9.8B parameters; VAEs overfit after 46 epochs."
    )
    result = ground(dive, COSMOS + "\n" + RAE)
    assert [c.text for c in result.failed] == ["76.5%", "61.7%", "46"]
    assert result.unverified == 3 and result.checked == 6
    assert f"76.5%{MARK})" in result.text and f"61.7%{MARK} average" in result.text
    assert f"46{MARK} epochs" in result.text and f"98.5%{MARK}" not in result.text


def test_formatting_differences_are_not_errors() -> None:
    source = (
        "We reach 41.80 PSNR with 1,500 steps, 7 billion parameters and 1.5K samples; "
        "accuracy 0.853, a drop of −0.3 dB, 12 % fewer FLOPs, 32.1±0.2, lr $10^{-4}$, "
        "batch sizes 64-256, three benchmarks."
    )
    for written in (
        "41.8 PSNR",
        "1.5k steps",
        "1500 steps",
        "7B parameters",
        "1,500 samples",
        "85.3% accuracy",
        "drops by 0.3 dB",
        "-0.3 dB",
        "12% fewer FLOPs",
        "32.1 ± 0.2",
        "learning rate 1e-4",
        "batch size 64–256",
        "on 3 benchmarks",
    ):
        assert failed(written, source) == [], written


def test_rounding_is_allowed_only_where_the_writer_signals_it() -> None:
    source = "PSNR 41.83 dB; success 67.1%; 1,532,000 images."
    assert failed("PSNR 41.8 dB", source) == []  # fewer decimals than the text
    assert failed("1.5M images", source) == []  # a scale suffix is a rounded number
    assert failed("about 67% success", source) == []
    assert failed("约 67% 的成功率", source) == []
    assert failed("67% success", source) == ["67%"]  # an integer stated flatly must be there
    assert failed("PSNR 41.9 dB", source) == ["41.9"]
    assert failed("1.6M images", source) == ["1.6M"]


def test_what_is_not_a_claim_is_not_checked() -> None:
    source = "We compare with Llama-3-8B and GPT-4o on 2 benchmarks."
    text = (
        "1. Compared with Llama-3-8B and GPT-4o (see arXiv 2601.16163v1, "
        "https://example.org/v/12345).\n"
        "2) Steps (1) and (2) follow Eq. (7) and Algorithm 3 [12].\n"
        "**Point 4.** 第3阶段"
    )
    result = ground(text, source)
    assert result.failed == () and result.checked == 0


def test_a_model_name_not_in_the_text_has_its_numbers_checked() -> None:
    source = "We compare with Llama-3-8B."
    assert failed("Llama-3-8B is the baseline", source) == []
    assert failed("Llama-3-70B is the baseline", source) == ["Llama-3-70B"]


def test_marks_render_in_markdown_and_the_footnote_matches_the_language() -> None:
    zh = ground("**PSNR 提升到 42.7 dB**（表 1）", "PSNR 41.8 dB")
    assert zh.text == f"**PSNR 提升到 42.7{MARK} dB**（表 1{MARK}）"
    assert with_footnote(zh).endswith(f"_{footnote('zh')}_")
    en = ground("PSNR rises to 42.7 dB.", "PSNR 41.8 dB")
    assert with_footnote(en) == f"PSNR rises to 42.7{MARK} dB.\n\n_{footnote('en')}_"
    clean = ground("PSNR 41.8 dB.", "PSNR 41.8 dB")
    assert with_footnote(clean) == "PSNR 41.8 dB."


# -- citations -------------------------------------------------------------------------------------


def sample_paper() -> FullText:
    return FullText("html", parse_arxiv_html(arxiv_fixture("html_latexml_sample.html").decode()))


def test_citations_are_checked_against_the_papers_labels() -> None:
    paper = sample_paper()
    guard = Guard(paper.whole(), paper.labels())
    good = guard.check("PSNR 29.1 dB on DIV2K (Table 1, Sec. 3); masking (Section 2.1, Fig. 1).")
    assert good.failed == () and good.checked == 5  # 29.1, 2 (DIV2K is a name), 4 citations
    bad = guard.check(
        "Gains in Table 7 and Sec. 4.2; Fig. 3(b); Appendix C; 表5；图2；第6节；见 2.1 节。"
    )
    assert [c.text for c in bad.failed] == [
        "Table 7",
        "Section 4.2",
        "Figure 3",
        "Appendix C",
        "Table 5",
        "Figure 2",
        "Section 6",
    ]
    assert f"Table 7{MARK} and Sec. 4.2{MARK}" in bad.text and f"表5{MARK}" in bad.text


def test_section_numbers_are_not_judged_when_the_paper_has_none() -> None:
    # An abstract has no numbered sections: "Sec. 3" can be neither confirmed nor refuted,
    # but a table the model never saw is still unverified.
    result = ground("See Sec. 3 and Table 2.", COSMOS, frozenset())
    assert [c.text for c in result.failed] == ["Table 2"] and result.checked == 1


# -- the guard in the pipeline, against the fake LLM -----------------------------------------------

PLANTED = "PSNR 31.7 dB on DIV2K"  # the paper says 29.1


def planting_responder() -> Any:
    research = research_responder()

    def respond(body: dict[str, Any]) -> Any:
        system = "\n".join(m["content"] for m in body["messages"] if m["role"] == "system")
        if system.startswith("You write a deep dive"):
            return json.dumps(
                {
                    "verdict": "A one-step flow matching restorer: squarely on super-resolution.",
                    "contribution": (
                        f"One-step sampling: 29.1 dB PSNR on DIV2K (Table 1); also {PLANTED} "
                        "in Table 4."
                    ),
                    "methodology": "Velocity field along straight paths (Sec. 2, Fig. 1).",
                    "takeaway": "- Try the masked objective with half of the patches masked.",
                    "limitations": "Only DIV2K is reported (Sec. 3).",
                }
            )
        if system.startswith("You answer"):
            return "It reaches 29.1 dB PSNR, and 30.4 dB with two steps (Table 1)."
        return research(body)

    return respond


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    # The core alone opens the database: one the bot had migrated would be "newer".
    async with World(tmp_path, llm=FakeLLM(responder=planting_responder()), new_db=True) as w:
        w.arxiv.html["1605.08386"] = arxiv_fixture("html_latexml_sample.html").decode()
        yield w


async def calls_by_purpose(db: Path) -> dict[str, dict[str, Any]]:
    store = await Store.open(db)
    try:
        return {row["purpose"]: row for row in await store.llm_calls()}
    finally:
        await store.close()


async def test_a_planted_wrong_number_is_marked_and_counted_in_the_call_log(
    world: World,
) -> None:
    pipeline = await Pipeline.open(world.settings())
    try:
        entry = await pipeline.analyze("1605.08386")
        answer = await pipeline.answer("1605.08386", "What PSNR does it reach?")
    finally:
        await pipeline.aclose()
    dive = entry.deep_dive
    assert dive is not None and dive.llm_used
    assert dive.verdict.startswith("A one-step flow matching restorer")
    # 29.1 and 31.7, and the citations Table 1, Table 4, Sec. 2, Fig. 1, Sec. 3 (DIV2K is a
    # name the paper writes as is: not counted)
    assert "31.7" + MARK in dive.sections["contribution"]
    assert "Table 4" + MARK in dive.sections["contribution"]
    assert "29.1" + MARK not in dive.sections["contribution"]
    assert (dive.numbers_checked, dive.numbers_unverified) == (7, 2)
    body = dive.body_markdown()
    assert body.startswith("**Verdict:** A one-step") or body.startswith("**一句话结论：** A")
    assert "numbers checked: 7, unverified: 2" in body and footnote(dive.language) in body
    assert "30.4" + MARK in answer.text and "29.1" + MARK not in answer.text
    assert answer.text.endswith(f"_{footnote('en')}_")

    calls = await calls_by_purpose(Path(world.settings().db_path))
    assert (calls["deep_dive"]["numbers_checked"], calls["deep_dive"]["numbers_unverified"]) == (
        7,
        2,
    )
    assert (calls["answer"]["numbers_checked"], calls["answer"]["numbers_unverified"]) == (3, 1)
    assert (calls["score"]["numbers_checked"], calls["score"]["numbers_unverified"]) == (0, 0)


async def test_analyze_prints_the_counts_and_the_cached_rerun_keeps_them(world: World) -> None:
    code, out, err = await run_cli(["analyze", "1605.08386"], world.env())
    assert code == 0 and err == "", err
    lines = out.splitlines()
    verdict = next(i for i, line in enumerate(lines) if "A one-step flow matching" in line)
    first_section = next(i for i, line in enumerate(lines) if line.startswith("### 1."))
    assert verdict < first_section  # the verdict opens the deep dive
    assert re.search(r"numbers checked: 7, unverified: 2_$", out.strip())
    assert "31.7" + MARK in out
    code, again, err = await run_cli(["analyze", "1605.08386"], world.env())
    assert code == 0 and again == out  # from the cache: same marks, verdict and counts
    assert sum(1 for c in world.llm.calls if "deep dive" in json.dumps(c)) == 1


# -- the verdict opens the deep dive on every platform ---------------------------------------------


def test_every_renderer_shows_the_verdict_first() -> None:
    from digest_core.models import DeepDive, DigestEntry, Paper, Score
    from digest_core.render import markdown, slack, telegram

    verdict = "Squarely on super-resolution: a one-step restorer."
    dive = DeepDive(
        arxiv_id="1605.08386",
        title="T",
        sections={
            k: f"Body of {k}." for k in ("contribution", "methodology", "takeaway", "limitations")
        },
        language="zh",
        source_read="full text (arXiv HTML)",
        model="m",
        prompt_version="dive-2",
        verdict=verdict,
        numbers_checked=4,
        numbers_unverified=1,
    )
    entry = DigestEntry(Paper("1605.08386", "T", "A."), Score("1605.08386", 80, "r"), dive)
    md = markdown.render_analysis_markdown(entry, "zh")
    tg = "\n".join(telegram.render_deep_dive(entry, 0, "zh"))
    sl = json.dumps([m.blocks for m in slack.render_deep_dive(entry, 0, "zh")], ensure_ascii=False)
    for shown in (md, tg, sl):
        assert verdict in shown and "Body of contribution" in shown
        assert shown.index(verdict) < shown.index("核心创新点") < shown.index("Body of limitations")
        assert "未核实" in shown  # the footnote of the mark, in the deep dive's language
