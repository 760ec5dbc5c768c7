"""UI wording for every renderer, in the digest languages ("zh" and "en").

The Chinese wording follows the original daily report; English is its plain equivalent.
Renderers look labels up here so Slack, Telegram and the Markdown export say the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence

from digest_core.models import LINK_KINDS, Link
from digest_core.render.parse import is_safe_url

LABELS: dict[str, dict[str, str]] = {
    "zh": {
        "title": "🚀 CV 论文日报 | {date}",
        "report_summary": "🤖 今日动态：扫描 {scanned} 篇 (HF Top {scanned})，精选 {picked} 篇深度解读。",
        "summary": "扫描 {scanned} 篇，精选 {picked} 篇深度解读",
        "quiet": "今日无论文达到阈值 {threshold} 分：不做深度解读",
        "empty": "今日没有新论文",
        "quick_view": "📋 目录 (Quick View)",
        "others": "📊 其余论文 (Other Papers)",
        "deep_dive": "🧠 深度解读 (Deep Dive)",
        "source": "来源",
        "score": "评分",
        "link": "原文链接",
        "authors": "作者",
        "et_al": "{names} 等 (共 {count} 位作者)",
        "relevance": "🎯 与研究方向的相关度",
        "in_thread": "👇 每篇论文的深度解读见本帖回复",
        "keyword_note": "LLM 不可用：按关键词相关度评分",
        "links": "🔗 相关链接",
        "link_code": "代码",
        "link_project": "项目主页",
        "link_model": "🤗 模型",
        "link_dataset": "🤗 数据集",
        "link_space": "🤗 Spaces",
        "seen": "👁 已于 {date} 在此解读",
        "earlier_thread": "此前的讨论",
    },
    "en": {
        "title": "🚀 Paper digest | {date}",
        "report_summary": "🤖 Today: scanned {scanned} (HF Top {scanned}), picked {picked} for deep dives.",
        "summary": "Scanned {scanned}, picked {picked} for deep dives",
        "quiet": "Quiet day: no paper reached the threshold ({threshold})",
        "empty": "No papers today",
        "quick_view": "📋 Quick View",
        "others": "📊 Other Papers",
        "deep_dive": "🧠 Deep Dive",
        "source": "Source",
        "score": "Score",
        "link": "Link",
        "authors": "Authors",
        "et_al": "{names} et al. ({count} authors)",
        "relevance": "🎯 Relevance to your profile",
        "in_thread": "👇 Deep dives are in the thread",
        "keyword_note": "LLM unavailable: ranked by keyword relevance",
        "links": "🔗 Links",
        "link_code": "Code",
        "link_project": "Project page",
        "link_model": "🤗 Models",
        "link_dataset": "🤗 Datasets",
        "link_space": "🤗 Spaces",
        "seen": "👁 deep-dived here on {date}",
        "earlier_thread": "earlier thread",
    },
}

SOURCE_NAMES = {"hf": "HuggingFace 🔥", "arxiv": "arXiv"}

MAX_AUTHORS = 10


def label(language: str, key: str, **fields: object) -> str:
    """The label `key` in `language` (English when the language is unknown), formatted."""
    table = LABELS.get(language, LABELS["en"])
    return table[key].format(**fields) if fields else table[key]


def link_groups(links: Sequence[Link], language: str) -> list[tuple[str, list[Link]]]:
    """A deep dive's header links grouped for display, in LINK_KINDS order: (label, links).
    Only http(s) links are kept; renderers format each group as `label: a, b`."""
    groups = []
    for kind in LINK_KINDS:
        found = [link for link in links if link.kind == kind and is_safe_url(link.url)]
        if found:
            groups.append((label(language, f"link_{kind}"), found))
    return groups


def source_name(source: str) -> str:
    return SOURCE_NAMES.get(source, "arXiv")


def authors_line(authors: tuple[str, ...], language: str) -> str:
    """The first MAX_AUTHORS names; longer lists end with "et al." and the full count."""
    names = [" ".join(a.split()) for a in authors if a.strip()]
    if len(names) <= MAX_AUTHORS:
        return ", ".join(names) or "—"
    return label(language, "et_al", names=", ".join(names[:MAX_AUTHORS]), count=len(names))
