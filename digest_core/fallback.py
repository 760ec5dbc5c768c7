"""The built-in analyser used with no LLM key, or when the LLM fails after its retries.

Ranking is lexical relevance of title and abstract to the profile's topics (with common
spellings and abbreviations of each topic); the deep dive is extractive: each section is made
of the abstract's own sentences, chosen by cue words. Every value it returns says it was not
written by an LLM.
"""

from __future__ import annotations

import math
import re
from functools import cache

from digest_core.config import Profile
from digest_core.models import (
    SECTION_KEYS,
    SOURCE_ABSTRACT,
    DeepDive,
    Paper,
    ResearchProfile,
    Score,
)

PROMPT_VERSION = "extractive-1"

# Alternative spellings of common research topics. A topic not listed here still matches by
# its own words as a phrase; these only widen the net for the usual abbreviations and variants.
_VARIANTS: dict[str, tuple[str, ...]] = {
    "diffusion": (
        "diffusion",
        "ddpm",
        "ddim",
        "score-based",
        "denoising diffusion",
        "latent diffusion",
    ),
    "flow matching": ("flow matching", "rectified flow", "stochastic interpolant"),
    "masked autoregressive": (
        "masked autoregressive",
        "mar",
        "autoregressive image",
        "masked generative",
    ),
    "super-resolution": ("super-resolution", "upscaling", "upsampling", "sr"),
    "image generation": (
        "image generation",
        "text-to-image",
        "image synthesis",
        "visual generation",
        "image editing",
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

# Generic last words a topic can drop and still name the same field: "diffusion models".
_GENERIC_TAIL = re.compile(r"[\s-]+(?:models?|methods?|approach(?:es)?|techniques?)$")

# Work next to a generation topic without being it: 3D/4D and video generation. It counts
# for every topic about generation or synthesis, at a discount (_ADJACENT_WEIGHT).
_ADJACENT = re.compile(
    r"(?<![a-z0-9])(?:(?:3d|4d|video|videos|panoram\w*|360°?)(?:[\s-]+[a-z0-9°]+)??"
    r"[\s-]+(?:generation|synthesis|generators?|generative[\s-]+models?|world[\s-]+models?)"
    r"|(?:text|image)-to-(?:video|3d|4d)|video[\s-]+diffusion|novel[\s-]+view[\s-]+synthesis)"
    r"(?![a-z0-9])"
)
_ADJACENT_WEIGHT = 0.7
_GENERATION_TOPIC = re.compile(r"generat|synthes")

# "Denoising" in a robot control policy (diffusion policy, action denoising, manipulation)
# or in the mechanics of a diffusion model ("denoising steps") is not image restoration.
_ROBOT_CONTROL = re.compile(
    r"(?<![a-z0-9])(?:robot\w*|manipulation|visuomotor|embodied|vla|vision-language-action"
    r"|polic(?:y|ies)|action[\s-]+chunk\w*|grasp\w*)(?![a-z0-9])"
)
_NOT_RESTORATION = re.compile(
    r"(?:action[\s-]+|policy[\s-]+)denoising"
    r"|denoising[\s-]+(?:steps?|process\w*|schedules?|trajector\w*|networks?|objectives?"
    r"|diffusion|models?|loss\w*|iterations?|the\s+action\w*)"
)


def _norm(text: str) -> str:
    return " " + re.sub(r"\s+", " ", text.lower()) + " "


def _variants(topic: str) -> tuple[str, ...]:
    t = topic.lower().strip()
    found = [t, _GENERIC_TAIL.sub("", t)]
    for key, alts in _VARIANTS.items():
        if key in t or t in key:
            found.extend(alts)
    return tuple(dict.fromkeys(v for v in found if v))


@cache
def _phrase(phrase: str) -> re.Pattern[str]:
    """A phrase as a pattern: whole words, spaces or hyphens between them, a plural allowed
    on the last word. Multi-word topics match only as phrases, never word by word."""
    words = [re.escape(w) for w in re.split(r"[\s-]+", phrase.strip()) if w]
    body = r"[\s-]+".join(words)
    return re.compile(rf"(?<![a-z0-9]){body}(?:s|es)?(?![a-z0-9])")


def _count(phrase: str, text: str) -> int:
    pattern = _phrase(phrase)
    if phrase != "denoising":
        return len(pattern.findall(text))
    if _ROBOT_CONTROL.search(text):
        return 0
    return sum(1 for m in pattern.finditer(text) if not _NOT_RESTORATION.match(text, m.start()))


def _topic_match(topic: str, title: str, abstract: str) -> tuple[float, str | None]:
    """How strongly a paper matches one topic (0..1) and where."""
    # "denoising" is judged against the whole paper: the robot words may be in the abstract.
    context = title + abstract
    for phrase in _variants(topic):
        if _count(phrase, title) and (phrase != "denoising" or _count(phrase, context)):
            return 1.0, "title"
    for phrase in _variants(topic):
        hits = _count(phrase, abstract)
        if hits and (phrase != "denoising" or _count(phrase, context)):
            return min(0.85, 0.55 + 0.1 * hits), "abstract"
    if _GENERATION_TOPIC.search(topic.lower()):
        if _ADJACENT.search(title):
            return _ADJACENT_WEIGHT, "adjacent, title"
        hits = len(_ADJACENT.findall(abstract))
        if hits:
            return _ADJACENT_WEIGHT * min(0.85, 0.55 + 0.1 * hits), "adjacent, abstract"
    return 0.0, None


# A topic word in a paper about language models or physics is not the topic: "diffusion"
# in "code diffusion LLMs" or "diffusion-limited aggregation". Matches count in full only in
# a paper about images or video.
_VISION = re.compile(
    r"\b(image|images|video|videos|visual|pixel|pixels|vision|3d|scene|camera|photo|render\w*)\b"
)


def lexical_score(paper: Paper, profile: Profile | ResearchProfile) -> Score:
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


def extractive_deep_dive(
    paper: Paper, profile: Profile | ResearchProfile, language: str, why: str
) -> DeepDive:
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
        verdict=extractive_verdict(paper, profile, language),
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


def extractive_verdict(paper: Paper, profile: Profile | ResearchProfile, language: str) -> str:
    """An honest one-line verdict without a model: the built-in ranker's score and reason."""
    score = lexical_score(paper, profile)
    reason = score.reason
    if language == "zh":
        if reason.startswith("keyword match: "):
            reason = "关键词匹配：" + reason.removeprefix("keyword match: ")
        else:
            reason = "标题和摘要中没有研究方向的关键词"
        return f"未经模型判断，仅按关键词估计相关度 {score.score}/100（{reason}）。"
    return f"Not judged by a model: keyword relevance {score.score}/100 ({reason})."


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


def _relation(paper: Paper, profile: Profile | ResearchProfile, language: str) -> str | None:
    title, abstract = _norm(paper.title), _norm(paper.abstract)
    hits = [t for t in profile.topics if _topic_match(t, title, abstract)[0] > 0]
    if not hits:
        return None
    joined = ", ".join(hits)
    if language == "zh":
        return f"- 与研究方向的关联：{joined}"
    return f"- Relation to your topics: {joined}"
