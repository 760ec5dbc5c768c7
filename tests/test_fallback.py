"""The built-in analyser: useful on its own, and always says it is not an LLM."""

from __future__ import annotations

from pathlib import Path

from bot.settings import load_settings
from digest_core.fallback import extractive_deep_dive, lexical_score, split_sentences
from digest_core.models import SECTION_KEYS, Paper

CONFIG = Path(__file__).resolve().parent.parent / "config" / "digestbot.toml"
PROFILE = load_settings(env={}, path=CONFIG).profile


def _paper(title: str, abstract: str) -> Paper:
    return Paper("2602.00001", title, abstract)


def test_on_topic_paper_outranks_off_topic_one() -> None:
    sr = lexical_score(
        _paper(
            "Real-World Image Super-Resolution with One-Step Diffusion",
            "We propose a diffusion model for real-world super-resolution and image restoration.",
        ),
        PROFILE,
    )
    agent = lexical_score(
        _paper(
            "Tool-Using LLM Agents for Spreadsheets",
            "We study language agents that edit spreadsheets.",
        ),
        PROFILE,
    )
    assert sr.score >= 80 > 20 >= agent.score
    assert "super-resolution" in sr.reason and "(title)" in sr.reason
    assert agent.reason == "no profile topic in title or abstract"
    assert not sr.by_llm and 0 <= agent.score <= 100


def test_abbreviations_and_variants_count() -> None:
    s = lexical_score(
        _paper("Rectified Flow for Fast Text-to-Image Synthesis", "A DDPM baseline is compared."),
        PROFILE,
    )
    assert s.score >= 60
    assert "flow matching" in s.reason


def test_extractive_deep_dive_has_four_sections_from_the_abstract_and_says_so() -> None:
    abstract = (
        "Image restoration under unknown degradations remains hard. "
        "We propose FlowIR, a flow matching framework for blind restoration. "
        "The method uses a degradation-aware encoder based on a diffusion prior. "
        "Experiments show it outperforms state-of-the-art methods by 1.2 dB PSNR. "
        "However, inference remains costly at high resolutions."
    )
    dive = extractive_deep_dive(_paper("FlowIR", abstract), PROFILE, "en", "no OPENAI_API_KEY set")
    assert set(dive.sections) == set(SECTION_KEYS)
    assert "We propose FlowIR" in dive.sections["contribution"]
    assert "outperforms" in dive.sections["takeaway"]
    assert "However" in dive.sections["limitations"]
    assert "Relation to your topics" in dive.sections["methodology"]
    assert not dive.llm_used and dive.model is None
    body = dive.body_markdown()
    assert "LLM unavailable (no OPENAI_API_KEY set): extractive summary" in body
    assert "Key Contribution" in body and "Limitations" in body
    # every sentence quoted comes from the abstract
    for key in SECTION_KEYS:
        for line in dive.sections[key].splitlines():
            text = line.removeprefix("- ")
            assert (
                text in abstract
                or text.startswith("Relation to")
                or text.startswith("The abstract")
            )


def test_chinese_headings_and_note() -> None:
    dive = extractive_deep_dive(
        _paper("X", "We present X. It is good."), PROFILE, "zh", "LLM timed out"
    )
    body = dive.body_markdown()
    assert "核心创新点 (Key Contribution)" in body and "潜在缺陷 (Limitations)" in body
    assert "LLM 不可用" in body


def test_sentence_split_keeps_numbers() -> None:
    assert split_sentences("We get 1.2 dB. Then v2.0 works! Done.") == [
        "We get 1.2 dB.",
        "Then v2.0 works!",
        "Done.",
    ]
