"""The built-in analyser used with no LLM key, or when the LLM fails after its retries.

Ranking is lexical relevance of title and abstract to the profile's topics (with common
spellings and abbreviations of each topic); the deep dive is extractive: each section is made
of the abstract's own sentences, chosen by cue words. Every value it returns says it was not
written by an LLM.
"""

from __future__ import annotations

import math
import re

from digest_core.config import Profile
from digest_core.models import SECTION_KEYS, SOURCE_ABSTRACT, DeepDive, Paper, Score

PROMPT_VERSION = "extractive-1"

# Alternative spellings of common research topics. A topic not listed here still matches by
# its own words; these only widen the net for the usual abbreviations and variants.
_VARIANTS: dict[str, tuple[str, ...]] = {
    "diffusion": (
        "diffusion",
        "ddpm",
        "ddim",
        "score-based",
        "denoising diffusion",
        "latent diffusion",
    ),
    "flow matching": ("flow matching", "rectified flow", "flow-matching", "stochastic interpolant"),
    "masked autoregressive": (
        "masked autoregressive",
        "mar ",
        "autoregressive image",
        "masked generative",
    ),
    "super-resolution": ("super-resolution", "super resolution", "upscaling", "upsampling", " sr "),
    "image generation": (
        "image generation",
        "text-to-image",
        "image synthesis",
        "video generation",
        "visual generation",
        "image editing",
        "text-to-video",
    ),
    "image restoration": (
        "image restoration",
        "video restoration",
        "denoising",
        "deblurring",
        "deraining",
        "dehazing",
        "inpainting",
        "low-light",
        "artifact removal",
    ),
    "video generation": ("video generation", "text-to-video", "video synthesis", "video diffusion"),
    "segmentation": ("segmentation", "segment anything", "mask prediction"),
    "3d": ("3d", "gaussian splatting", "nerf", "neural radiance"),
}

_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_STOP = {"model", "models", "method", "methods", "image", "images", "the", "and", "of", "for", "a"}


def _norm(text: str) -> str:
    return " " + re.sub(r"\s+", " ", text.lower()) + " "


def _stem(word: str) -> str:
    for suffix in ("ing", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def _variants(topic: str) -> tuple[str, ...]:
    t = topic.lower().strip()
    found = [t]
    for key, alts in _VARIANTS.items():
        if key in t or t in key:
            found.extend(alts)
    return tuple(dict.fromkeys(found))


def _topic_match(topic: str, title: str, abstract: str) -> tuple[float, str | None]:
    """How strongly a paper matches one topic (0..1) and where."""
    for phrase in _variants(topic):
        if phrase in title:
            return 1.0, "title"
    for phrase in _variants(topic):
        if phrase in abstract:
            hits = abstract.count(phrase)
            return min(0.85, 0.55 + 0.1 * hits), "abstract"
    words = {_stem(w) for w in _WORD.findall(topic.lower())} - _STOP
    if not words:
        return 0.0, None
    present = {_stem(w) for w in _WORD.findall(title + " " + abstract)}
    share = len(words & present) / len(words)
    return (0.3 * share, "abstract") if share >= 0.5 else (0.0, None)


# A topic word in a paper about language models or physics is not the topic: "diffusion"
# in "code diffusion LLMs" or "diffusion-limited aggregation". Matches count in full only in
# a paper about images or video.
_VISION = re.compile(
    r"\b(image|images|video|videos|visual|pixel|pixels|vision|3d|scene|camera|photo|render\w*)\b"
)


def lexical_score(paper: Paper, profile: Profile) -> Score:
    """Relevance 0-100 from topic matches in title and abstract; the reason names them."""
    title = _norm(paper.title)
    abstract = _norm(paper.abstract)
    matches: list[tuple[str, float, str]] = []
    for topic in profile.topics:
        strength, where = _topic_match(topic, title, abstract)
        if strength > 0 and where:
            matches.append((topic, strength, where))
    # Several weaker matches add up, but never past 100: 1 - prod(1 - s).
    combined = 1.0 - math.prod(1.0 - 0.8 * s for _, s, _ in matches)
    visual = len(_VISION.findall(title + abstract))
    domain = 1.0 if visual >= 2 else 0.75 if visual == 1 else 0.5
    score = round(100 * combined * domain)
    if matches:
        matches.sort(key=lambda m: -m[1])
        named = ", ".join(f"{t} ({w})" for t, _, w in matches[:3])
        reason = f"keyword match: {named}"
    else:
        reason = "no profile topic in title or abstract"
    return Score(paper.arxiv_id, score, reason, by_llm=False)


_SENTENCE = re.compile(r"(?<=[.!?。！？])\s+(?=[A-Z0-9\"'(\[\u4e00-\u9fff])")

_CUES: dict[str, tuple[str, ...]] = {
    "contribution": (
        "we propose",
        "we present",
        "we introduce",
        "this paper",
        "this work",
        "novel",
        "first",
    ),
    "methodology": (
        "we use",
        "framework",
        "architecture",
        "method",
        "module",
        "based on",
        "leverag",
        "by ",
        "via",
        "train",
        "consist",
        "design",
    ),
    "takeaway": (
        "outperform",
        "state-of-the-art",
        "sota",
        "achiev",
        "improv",
        "demonstrat",
        "experiment",
        "results",
        "%",
        "code",
        "available",
    ),
    "limitations": (
        "however",
        "limit",
        "challeng",
        "although",
        "remain",
        "fail",
        "costly",
        "expensive",
    ),
}

NO_LLM_NOTES = {
    "zh": "LLM 不可用（{why}）：以下为摘要原句的抽取式摘要，未经模型分析",
    "en": "LLM unavailable ({why}): extractive summary of the abstract's own sentences",
}

_EMPTY = {
    "zh": {
        "limitations": "摘要未提及局限；请阅读论文的讨论部分。",
        "default": "摘要中没有可抽取的相关句子。",
    },
    "en": {
        "limitations": "The abstract states no limitation; read the paper's discussion section.",
        "default": "The abstract has no sentence for this section.",
    },
}


def split_sentences(text: str) -> list[str]:
    text = re.sub(r"\s+", " ", text).strip()
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def extractive_deep_dive(paper: Paper, profile: Profile, language: str, why: str) -> DeepDive:
    """Four sections from the abstract's sentences; each sentence goes to the section whose
    cue words it matches most, in the abstract's order."""
    sentences = split_sentences(paper.abstract)
    chosen = _assign(sentences)
    sections: dict[str, str] = {}
    empty = _EMPTY.get(language, _EMPTY["en"])
    for key in SECTION_KEYS:
        lines = [f"- {sentences[i]}" for i in chosen[key]]
        if key == "methodology":
            relation = _relation(paper, profile, language)
            if relation:
                lines.append(relation)
        if key == "takeaway" and paper.github_repo:
            lines.append(f"- Code: {paper.github_repo}")
        sections[key] = "\n".join(lines) or empty.get(key, empty["default"])
    notes = NO_LLM_NOTES.get(language, NO_LLM_NOTES["en"])
    return DeepDive(
        arxiv_id=paper.arxiv_id,
        title=paper.title,
        sections=sections,
        language=language,
        source_read=SOURCE_ABSTRACT,
        model=None,
        prompt_version=PROMPT_VERSION,
        tokens=0,
        llm_used=False,
        note=notes.format(why=why),
    )


_LIMITS = {"contribution": 2, "methodology": 3, "takeaway": 2, "limitations": 2}


def _assign(sentences: list[str]) -> dict[str, list[int]]:
    chosen: dict[str, list[int]] = {key: [] for key in SECTION_KEYS}
    for i, sentence in enumerate(sentences):
        low = sentence.lower()
        hits = {key: sum(1 for c in _CUES[key] if c in low) for key in SECTION_KEYS}
        best = max(SECTION_KEYS, key=lambda k: hits[k])  # ties go to the earlier section
        if hits[best] and len(chosen[best]) < _LIMITS[best]:
            chosen[best].append(i)
    used = {i for picked in chosen.values() for i in picked}
    if not chosen["contribution"] and sentences and 0 not in used:
        chosen["contribution"] = [0]  # the opening sentence usually states the problem or claim
    return chosen


def _relation(paper: Paper, profile: Profile, language: str) -> str | None:
    title, abstract = _norm(paper.title), _norm(paper.abstract)
    hits = [t for t in profile.topics if _topic_match(t, title, abstract)[0] > 0]
    if not hits:
        return None
    joined = ", ".join(hits)
    if language == "zh":
        return f"- 与研究方向的关联：{joined}"
    return f"- Relation to your topics: {joined}"
