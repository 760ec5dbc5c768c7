"""Markdown rendering: the digest exported in the shape of the original daily report.

Pure functions, no I/O. `render_report` writes the whole day (title line, summary line, quick
view with `#item-i` anchors, the other scanned papers, then one deep dive per picked paper);
`render_analysis_markdown` writes one paper for the terminal and as the source the chat
renderers convert. The shared parser lives in `digest_core.render.parse` (`MD`), re-exported
here.
"""

from __future__ import annotations

from digest_core.models import Answer, Digest, DigestEntry
from digest_core.render.labels import authors_line, label, link_groups, source_name
from digest_core.render.parse import MD, is_safe_url, one_line

__all__ = ["MD", "answer_markdown", "render_analysis_markdown", "render_report"]


def link_text(text: str) -> str:
    """Text safe inside `[...]`: one line, brackets and backslashes escaped."""
    text = one_line(text)
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def _destination(url: str) -> str:
    # Parentheses would end the link destination early.
    return url.replace("(", "%28").replace(")", "%29")


def _link(title: str, url: str) -> str:
    """`[title](url)` for an http(s) URL, otherwise the bare (escaped) title."""
    title = title if title.strip() else url
    if is_safe_url(url):
        return f"[{link_text(title)}]({_destination(url)})"
    return link_text(title)


def _url_line(language: str, url: str) -> str | None:
    if not is_safe_url(url):
        return None
    return f"**{label(language, 'link')}**: [{link_text(url)}]({_destination(url)})"


def _links_line(entry: DigestEntry, language: str) -> str | None:
    """`**🔗 Links**: Code: [github.com/a/b](…) · 🤗 Models: [a/m](…)`, or None without links."""
    groups = link_groups(entry.links, language)
    if not groups:
        return None
    body = " · ".join(
        f"{name}: " + ", ".join(_link(link.label, link.url) for link in links)
        for name, links in groups
    )
    return f"**{label(language, 'links')}**: {body}"


def render_report(digest: Digest) -> str:
    """The day's digest as Markdown, in the layout of the original report."""
    lang = digest.language
    out = [f"# {label(lang, 'title', date=digest.date)}"]
    if digest.empty:
        out.append(f"> 🤖 {label(lang, 'empty')}")
        return "\n".join(out) + "\n"

    picked, others = digest.picked, digest.others
    out.append(
        "> " + label(lang, "report_summary", scanned=len(digest.entries), picked=len(picked))
    )
    if digest.llm_note:
        out += [">", f"> ⚠️ {one_line(digest.llm_note)}"]
    out.append(f"## {label(lang, 'quick_view')}")
    if digest.quiet:
        out.append(f"> {label(lang, 'quiet', threshold=digest.threshold)}")
    for i, entry in enumerate(picked):
        title = link_text(entry.paper.title) or entry.paper.arxiv_id
        out.append(f"- [{title}](#item-{i}) (Score: {entry.score.score})")

    if others:
        out += ["", f"## {label(lang, 'others')}"]
        for entry in others:
            line = f"- {_link(entry.paper.title, entry.paper.abs_url)} (Score: {entry.score.score})"
            reason = one_line(entry.score.reason)
            out.append(line + (f" — {reason}" if reason else ""))

    if picked:
        # A blank line before `---`, else the line above would become a setext heading.
        out += ["", "---", f"## {label(lang, 'deep_dive')}"]
        for i, entry in enumerate(picked):
            paper = entry.paper
            title = one_line(paper.title) or paper.arxiv_id
            out.append(f"### <a id='item-{i}'></a>{i + 1}. {title}")
            out.append(
                f"**{label(lang, 'source')}**: {source_name(paper.source)} | "
                f"**{label(lang, 'score')}**: {entry.score.score}/100"
            )
            url_line = _url_line(lang, paper.abs_url)
            if url_line:
                out.append(url_line)
            links_line = _links_line(entry, lang)
            if links_line:
                out.append(links_line)
            out.append("")
            if entry.deep_dive is not None:
                out += [entry.deep_dive.body_markdown(heading_level=4), ""]
            out += ["---"]
    return "\n".join(out) + "\n"


def render_analysis_markdown(entry: DigestEntry, language: str) -> str:
    """One paper: title, authors, link, score with reason, then its deep dive (if any)."""
    paper = entry.paper
    head = [f"## {one_line(paper.title) or paper.arxiv_id}"]
    if paper.authors:
        head.append(f"**{label(language, 'authors')}**: {authors_line(paper.authors, language)}")
    url_line = _url_line(language, paper.abs_url)
    if url_line:
        head.append(url_line)
    links_line = _links_line(entry, language)
    if links_line:
        head.append(links_line)
    score = f"**{label(language, 'relevance')}**: {entry.score.score}/100"
    reason = one_line(entry.score.reason)
    head.append(score + (f" — {reason}" if reason else ""))
    parts = ["\n".join(head)]
    if not entry.score.by_llm:
        parts.append(f"> ⚠️ {label(language, 'keyword_note')}")
    if entry.deep_dive is not None:
        parts.append(entry.deep_dive.body_markdown(heading_level=3))
    return "\n\n".join(parts) + "\n"


def answer_markdown(answer: Answer) -> str:
    """An answer as Markdown: its note (if any), the text, and a footer naming the model."""
    parts = []
    if answer.note:
        parts.append(f"> ⚠️ {one_line(answer.note)}")
    parts.append(answer.text.strip() or "—")
    if answer.model:
        parts.append(f"_Model: {answer.model} · tokens: {answer.tokens}_")
    return "\n\n".join(parts)
