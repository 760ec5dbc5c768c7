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


# -- the ranker on real Hugging Face days (tests/fixtures/hf) ---------------------------------------


def _real(arxiv_id: str) -> Paper:
    import json

    from digest_core.sources.hf import parse_daily_papers

    for day in sorted((Path(__file__).parent / "fixtures" / "hf").glob("daily_papers_*.json")):
        for paper in parse_daily_papers(json.loads(day.read_text(encoding="utf-8")), "x"):
            if paper.arxiv_id == arxiv_id:
                return paper
    raise LookupError(arxiv_id)


def test_image_generation_matches_as_a_phrase_not_the_word_generation() -> None:
    # Language-model papers that say "generation" but nothing about images.
    for arxiv_id in ("2602.15763", "2602.15327", "2601.19375", "2602.15772"):
        score = lexical_score(_real(arxiv_id), PROFILE)
        assert "image generation" not in score.reason, (arxiv_id, score.reason)
    t2i = lexical_score(_real("2601.16208"), PROFILE)  # "Scaling Text-to-Image Diffusion ..."
    assert "image generation (title)" in t2i.reason and t2i.score >= 80


def test_video_and_3d_generation_are_adjacent_to_the_generation_topics() -> None:
    world_model = lexical_score(_real("2602.07854"), PROFILE)  # "... Consistent Video World Model"
    assert "image generation (adjacent, title)" in world_model.reason
    assert world_model.score >= 50
    panorama = lexical_score(_real("2601.16192"), PROFILE)  # "immersive 3D world generation"
    assert "image generation (adjacent, abstract)" in panorama.reason
    # adjacent counts less than the topic itself
    direct = lexical_score(
        _paper("Fast Image Generation", "We study image generation with diffusion."), PROFILE
    )
    adjacent = lexical_score(
        _paper("Fast Video Generation", "We study video generation with diffusion."), PROFILE
    )
    assert direct.score > adjacent.score > 50
    # matting is not generation, even "via generative prior"
    matting = lexical_score(_real("2601.14255"), PROFILE)
    assert "adjacent, title" not in matting.reason


def test_denoising_in_a_robot_policy_is_not_image_restoration() -> None:
    legato = lexical_score(_real("2602.12978"), PROFILE)  # action-chunked flow VLA policies
    assert "image restoration" not in legato.reason and legato.score < 20
    restoration = lexical_score(
        _paper("Real-World Image Denoising", "We remove real camera noise from photos."), PROFILE
    )
    assert "image restoration (title)" in restoration.reason


def test_the_extractive_verdict_is_honest_about_where_it_comes_from() -> None:
    paper = _real("2601.16208")
    zh = extractive_deep_dive(paper, PROFILE, "zh", "no OPENAI_API_KEY set")
    en = extractive_deep_dive(paper, PROFILE, "en", "no OPENAI_API_KEY set")
    score = lexical_score(paper, PROFILE).score
    assert zh.verdict.startswith("未经模型判断") and f"{score}/100" in zh.verdict
    assert en.verdict.startswith("Not judged by a model") and "image generation" in en.verdict
    assert en.body_markdown().startswith(f"**Verdict:** {en.verdict}")
    assert "numbers checked" not in en.body_markdown()  # nothing was written by a model
