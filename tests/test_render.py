"""Renderers: the Markdown export's shape, Slack Block Kit and Telegram HTML, limits and escaping.

Every value is built here; nothing touches the network. The only file read is an issue of the
original hand-run report, vendored in `tests/fixtures/seeds/`, for comparison.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from digest_core.models import Answer, DeepDive, Digest, DigestEntry, Paper, Score
from digest_core.render import markdown, slack, telegram
from digest_core.render.parse import MD

SEED_REPORT = Path(__file__).parent / "fixtures" / "seeds" / "report-2026-02-18.md"

# --- builders -----------------------------------------------------------------------------

SECTIONS_ZH = {
    "contribution": "AnchorWeave 用多个**局部几何记忆**替代单一全局记忆。",
    "methodology": (
        "**方法：**使用覆盖驱动的检索。\n\n"
        "*   **问题识别**：\n"
        "    *   **现有方法缺陷**：依赖全局重建。\n"
        "    *   视角：见 [arXiv](https://arxiv.org/abs/2602.14941)。\n"
        "*   解决方案：\n"
        "    1.  多局部记忆\n"
        "    2.  编织控制器\n\n"
        "```python\nif a < b and c > d:\n    weave(x)\n```"
    ),
    "takeaway": "对 Image Restoration 的启发：修复**条件信号**。",
    "limitations": "1. 记忆管理开销\n2. 检索鲁棒性",
}


def paper(i: int, title: str | None = None, *, source: str = "hf", authors: int = 3) -> Paper:
    arxiv_id = f"2602.{14900 + i:05d}"
    return Paper(
        arxiv_id=arxiv_id,
        title=title if title is not None else f"Paper number {i}: a study of things",
        abstract="An abstract.",
        authors=tuple(f"Author {k}" for k in range(authors)),
        abs_url=f"https://arxiv.org/abs/{arxiv_id}",
        source=source,
    )


def dive(p: Paper, language: str = "zh", sections: dict[str, str] | None = None, note=None):
    return DeepDive(
        arxiv_id=p.arxiv_id,
        title=p.title,
        sections=dict(sections if sections is not None else SECTIONS_ZH),
        language=language,
        source_read="abstract only",
        model="test-model",
        prompt_version="v1",
        tokens=1234,
        note=note,
    )


def entry(p: Paper, score: int, *, picked: bool, language: str = "zh", by_llm=True, **kw):
    s = Score(p.arxiv_id, score, f"Reason for {p.arxiv_id}: fits the profile", by_llm=by_llm)
    return DigestEntry(p, s, dive(p, language, **kw) if picked else None)


def digest(
    n: int = 15,
    picked: int = 2,
    *,
    language: str = "zh",
    llm_note: str | None = None,
    titles: dict[int, str] | None = None,
) -> Digest:
    titles = titles or {}
    entries = tuple(
        entry(paper(i, titles.get(i)), 92 - i * 3, picked=i < picked, language=language)
        for i in range(n)
    )
    return Digest(
        date="2026-02-18",
        entries=entries,
        profile_name="cv",
        language=language,
        threshold=60,
        llm_note=llm_note,
        available=n,
    )


def long_sections(target: int = 12000) -> dict[str, str]:
    """A Chinese+English deep dive of about `target` characters with numbered words w0000…"""
    n = 0
    sections: dict[str, str] = {}
    per = target // 4
    for key in ("contribution", "methodology", "takeaway", "limitations"):
        paras: list[str] = []
        size = 0
        while size < per:
            sentence = f"**要点{n}：**使用 w{n:04d} memory bank 提升一致性 😀。"
            if n % 7 == 0:
                sentence = (
                    f"- 列表项 w{n:04d} with `code_{n}` and [链接](https://arxiv.org/abs/{n})"
                )
            paras.append(sentence)
            size += len(sentence) + 2
            n += 1
        sections[key] = "\n\n".join(paras)
    return sections


def markdown_links(md: str) -> set[str]:
    return {
        c.attrs["href"]
        for t in MD.parse(md)
        if t.type == "inline"
        for c in (t.children or [])
        if c.type == "link_open"
    }


def words(text: str) -> list[str]:
    return re.findall(r"w\d{4}", text)


# --- checkers -----------------------------------------------------------------------------

ALLOWED_TG = {"b", "i", "s", "u", "code", "pre", "a", "blockquote"}


class _TagChecker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in ALLOWED_TG:
            self.errors.append(f"tag {tag}")
        for name, value in attrs:
            ok = (tag == "a" and name == "href" and re.match(r"https?://", value or "")) or (
                tag == "code" and name == "class" and (value or "").startswith("language-")
            )
            if not ok:
                self.errors.append(f"attr {tag} {name}={value}")
        self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.errors.append(f"self-closing {tag}")

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> with {self.stack}")
        else:
            self.stack.pop()


def assert_telegram_html(text: str) -> None:
    checker = _TagChecker()
    checker.feed(text)
    checker.close()
    assert not checker.errors, (checker.errors, text[:500])
    assert not checker.stack, (checker.stack, text[:500])
    for m in re.finditer(r"<[^>]*>?", text):
        assert re.fullmatch(r"</?(b|i|s|u|code|pre|a|blockquote)( [^<>]*)?>", m.group()), m.group()
    assert not re.search(r"&(?!(amp|lt|gt|quot);|#\d+;|#x[0-9a-fA-F]+;)", text), text[:300]
    assert telegram.visible_len(text) <= telegram.MESSAGE_LIMIT
    assert telegram.html_to_plain(text).strip()


def slack_texts(messages: list[slack.SlackMessage]) -> list[str]:
    out = []
    for m in messages:
        out.append(m.text)
        out += [b["text"]["text"] for b in m.blocks if "text" in b]
    return out


def assert_slack_safe(texts: list[str], allowed_urls: set[str]) -> None:
    """No live Slack token except `<url|label>` links to URLs we meant to link."""
    for text in texts:
        assert not re.search(r"<[!@#]", text), text
        for m in re.finditer(r"<[^>]*>?", text):
            link = re.fullmatch(r"<(https?://[^|<>\s]+)\|[^<>]*>", m.group())
            assert link, m.group()
            assert link.group(1).replace("&amp;", "&") in allowed_urls, m.group()
        assert not re.search(r"&(?!(amp|lt|gt);)", text), text


def assert_slack_limits(messages: list[slack.SlackMessage]) -> None:
    for m in messages:
        assert 1 <= len(m.blocks) <= 50
        assert len(m.text) <= 300
        total = 0
        for block in m.blocks:
            if block["type"] == "actions":  # the 👍/👎 buttons: plain-text labels only
                assert block["block_id"] == slack.RATE_BLOCK_ID
                continue
            assert block["type"] == "section"
            text = block["text"]["text"]
            assert 0 < len(text) <= 3000
            assert text.count("```") % 2 == 0, "a code fence split must close and reopen"
            total += len(text)
        assert total <= 12000


# --- Markdown export ----------------------------------------------------------------------


def test_report_has_the_original_shape():
    d = digest()
    report = markdown.render_report(d)
    lines = report.splitlines()
    p0, p1 = d.picked[0].paper, d.picked[1].paper
    assert lines[:5] == [
        "# 🚀 CV 论文日报 | 2026-02-18",
        "> 🤖 今日动态：扫描 15 篇 (HF Top 15)，精选 2 篇深度解读。",
        "## 📋 目录 (Quick View)",
        f"- [{p0.title}](#item-0) (Score: 92)",
        f"- [{p1.title}](#item-1) (Score: 89)",
    ]
    assert "## 📊 其余论文 (Other Papers)" in lines
    others = [line for line in lines if line.startswith("- [Paper number")][2:]
    assert len(others) == 13 and all("(Score: " in o and " — Reason for" in o for o in others)
    assert "## 🧠 深度解读 (Deep Dive)" in lines
    i0 = lines.index(f"### <a id='item-0'></a>1. {p0.title}")
    assert lines[i0 + 1] == "**来源**: HuggingFace 🔥 | **评分**: 92/100"
    assert lines[i0 + 2] == f"**原文链接**: [{p0.abs_url}]({p0.abs_url})"
    assert f"### <a id='item-1'></a>2. {p1.title}" in lines
    headings = [line for line in lines if line.startswith("#### ")]
    assert headings[:4] == [
        "#### 1. 核心创新点 (Key Contribution)",
        "#### 2. 技术细节 (Methodology)",
        "#### 3. 对我的启发 (Takeaway)",
        "#### 4. 潜在缺陷 (Limitations)",
    ]
    assert len(headings) == 8
    assert "作为计算机视觉专家" not in report
    # `---` always follows a blank line, so no line turns into a setext heading.
    assert not any(t.type == "heading" and t.markup in ("-", "=") for t in MD.parse(report))


def test_report_matches_the_seed_header():
    expected = SEED_REPORT.read_text(encoding="utf-8").splitlines()[:5]
    titles = {
        0: "AnchorWeave: World-Consistent Video Generation with Retrieved Local Spatial Memories",
        1: "VisPhyWorld: Probing Physical Reasoning via Code-Driven Video Reconstruction",
    }
    d = digest(titles=titles)
    scores = {0: 92, 1: 65}
    d = Digest(
        d.date,
        tuple(
            DigestEntry(e.paper, Score(e.paper.arxiv_id, scores.get(i, 40), "r"), e.deep_dive)
            for i, e in enumerate(d.entries)
        ),
        d.profile_name,
        d.language,
        d.threshold,
    )
    assert markdown.render_report(d).splitlines()[:5] == expected


def test_report_in_english_uses_english_headings_only():
    d = digest(language="en", llm_note="LLM unavailable: ranked by keyword relevance")
    report = markdown.render_report(d)
    assert report.startswith("# 🚀 Paper digest | 2026-02-18\n")
    assert "scanned 15 (HF Top 15), picked 2" in report
    assert "> ⚠️ LLM unavailable: ranked by keyword relevance" in report
    assert "**Source**: HuggingFace 🔥 | **Score**: 92/100" in report
    assert "#### 1. Key Contribution" in report and "#### 4. Limitations" in report
    assert "核心创新点" not in report and "来源" not in report


def test_report_quiet_and_empty_days():
    quiet = digest(picked=0)
    report = markdown.render_report(quiet)
    assert "今日无论文达到阈值 60 分：不做深度解读" in report
    assert "深度解读 (Deep Dive)" not in report
    assert report.count("(Score: ") == 15
    empty = Digest("2026-02-18", (), "cv", "en", 60)
    assert markdown.render_report(empty).splitlines() == [
        "# 🚀 Paper digest | 2026-02-18",
        "> 🤖 No papers today",
    ]


def test_report_titles_stay_on_one_line_and_links_hold():
    hostile = "Attention [is] all\nyou need](https://evil.example) \\"
    d = digest(titles={0: hostile, 5: "Other [paper]\nwith newline"})
    report = markdown.render_report(d)
    tokens = MD.parse(report)
    links = [
        c.attrs["href"]
        for t in tokens
        if t.type == "inline"
        for c in (t.children or [])
        if c.type == "link_open"
    ]
    assert "#item-0" in links and "#item-1" in links
    assert "https://evil.example" not in links
    assert (
        "### <a id='item-0'></a>1. Attention [is] all you need](https://evil.example) \\" in report
    )
    assert "- [Other \\[paper\\] with newline](https://arxiv.org/abs/2602.14905)" in report


def test_source_line_names_arxiv():
    p = paper(0, source="arxiv")
    d = Digest("2026-02-18", (entry(p, 80, picked=True),), "cv", "zh", 60)
    assert "**来源**: arXiv | **评分**: 80/100" in markdown.render_report(d)


def test_analysis_markdown_for_one_paper():
    p = paper(0, authors=25)
    text = markdown.render_analysis_markdown(entry(p, 77, picked=True, language="en"), "en")
    assert text.startswith(f"## {p.title}\n")
    assert "Author 0, Author 1" in text and "Author 9 et al. (25 authors)" in text
    assert "Author 10" not in text
    assert f"[{p.abs_url}]({p.abs_url})" in text
    assert "77/100 — Reason for" in text
    assert "### 1. Key Contribution" in text
    zh = markdown.render_analysis_markdown(entry(p, 77, picked=False, by_llm=False), "zh")
    assert "等 (共 25 位作者)" in zh and "LLM 不可用" in zh


def test_deep_dive_note_appears_once():
    p = paper(0)
    e = entry(p, 70, picked=True, note="LLM unavailable: extractive summary")
    report = markdown.render_report(Digest("2026-02-18", (e,), "cv", "zh", 60))
    assert report.count("LLM unavailable: extractive summary") == 1


# --- shared: bold next to CJK, lists, links, code --------------------------------------------

CJK_MD = "**方法：**使用记忆库，见**粗体**后"


def test_cjk_bold_on_both_platforms():
    text = slack.markdown_to_blocks(CJK_MD)[0]["text"]["text"]
    assert text == "*方法：*\u200b使用记忆库，见\u200b*粗体*\u200b后"
    assert telegram.markdown_to_html(CJK_MD) == "<b>方法：</b>使用记忆库，见<b>粗体</b>后"


def test_markers_do_not_hug_spaces_in_slack():
    text = slack.markdown_to_blocks("a **bold `code` text** b *it* ~~gone~~")[0]["text"]["text"]
    assert text == "a *bold* `code` *text* b _it_ ~gone~"


LIST_MD = """* top
    * nested **bold**
        1. deep
        2. deeper
* second item
  continues here

3. three
4. four
"""


def test_nested_lists():
    s = slack.markdown_to_blocks(LIST_MD)[0]["text"]["text"].splitlines()
    assert s[:6] == [
        "• top",
        "    ◦ nested *bold*",
        "        1. deep",
        "        2. deeper",
        "• second item",
        "  continues here",
    ]
    assert "3. three" in s and "4. four" in s
    t = telegram.markdown_to_html(LIST_MD)
    assert "• top\n    ◦ nested <b>bold</b>\n        1. deep" in t
    assert "<ul>" not in t and "<li>" not in t


def test_links_code_quotes_tables():
    md = (
        "# Title\n\nSee [arXiv](https://arxiv.org/abs/1?a=1&b=2) and [x](javascript:alert(1))"
        " and [f](ftp://host/x) `a<b`.\n\n> quoted <mask>\n\n"
        "```python\nif a < b && c > d:\n    pass\n```\n\n| 列 | b |\n|---|---|\n| 中文 | 2 |\n"
    )
    s = "\n".join(b["text"]["text"] for b in slack.markdown_to_blocks(md))
    assert s.startswith("*Title*\n")
    assert "<https://arxiv.org/abs/1?a=1&amp;b=2|arXiv>" in s
    assert "[x](javascript:alert(1))" in s and "f (ftp://host/x)" in s
    assert "`a&lt;b`" in s and "> quoted &lt;mask&gt;" in s
    assert "```\nif a &lt; b &amp;&amp; c &gt; d:\n    pass\n```" in s
    assert "列   | b" in s
    t = telegram.markdown_to_html(md)
    assert t.startswith("<b>Title</b>\n\n")
    assert '<a href="https://arxiv.org/abs/1?a=1&amp;b=2">arXiv</a>' in t
    assert "javascript" not in re.findall(r"<a [^>]*>", t).__str__()
    assert "<code>a&lt;b</code>" in t and "<blockquote>quoted &lt;mask&gt;</blockquote>" in t
    assert '<pre><code class="language-python">if a &lt; b &amp;&amp; c &gt; d:' in t
    assert "<pre>列   | b" in t
    assert_telegram_html(t)
    for tag in ("<p>", "<br", "<h1", "<ul", "<table"):
        assert tag not in t


# --- hostile titles and model output --------------------------------------------------------

HOSTILE = [
    "<!channel> New SOTA",
    "<!here>",
    "<!subteam^S123> ping",
    "<@U0123ABCD> look",
    "<https://evil.example|Official PDF>",
    "a<b & c>d",
    "&lt;!channel&gt;",
    "<script>alert(1)</script>",
    "<b>unclosed",
    "</i></code>",
    "[x](javascript:alert(1))",
    '<a href="tg://user?id=1">me</a>',
    "*bold* _x_ ~y~ ```",
    "$O(n^2)$ & 😀",
]


def hostile_digest(title: str) -> Digest:
    sections = {
        "contribution": f"{title}\n\n**{title}**",
        "methodology": f"- {title}\n  - `{title}`\n\n> {title}",
        "takeaway": f"[{title}](https://arxiv.org/abs/1) [click]({title})",
        "limitations": f"```\n{title}\n```",
    }
    entries = (
        entry(paper(0, title), 90, picked=True, sections=sections),
        entry(paper(1, title), 40, picked=False),
    )
    return Digest("2026-02-18", entries, "cv", "zh", 60, llm_note=title)


@pytest.mark.parametrize("title", HOSTILE)
def test_hostile_text_is_inert_on_slack(title):
    d = hostile_digest(title)
    e = d.entries[0]
    answer = Answer("2602.14900", f"{title}\n\n**{title}**", "m", note=title)
    messages = [slack.render_toc(d), slack.render_paper_root(e, "zh")]
    messages += slack.render_deep_dive(e, 1, "zh") + slack.render_answer(answer)
    # Only our paper links and the links the Markdown itself wrote (as markdown-it reads them).
    allowed = {paper(0).abs_url, paper(1).abs_url} | markdown_links(e.deep_dive.body_markdown())
    assert_slack_safe(slack_texts(messages), allowed)
    assert_slack_limits(messages)


@pytest.mark.parametrize("title", HOSTILE)
def test_hostile_text_is_well_formed_on_telegram(title):
    d = hostile_digest(title)
    e = d.entries[0]
    answer = Answer("2602.14900", f"{title}\n\n**{title}**", "m", note=title)
    messages = telegram.render_toc(d) + [telegram.render_paper_root(e, "zh")]
    messages += telegram.render_deep_dive(e, 1, "zh") + telegram.render_answer(answer)
    allowed = {paper(0).abs_url, paper(1).abs_url} | markdown_links(e.deep_dive.body_markdown())
    for m in messages:
        assert_telegram_html(m)
        for href in re.findall(r'<a href="([^"]*)">', m):
            assert html.unescape(href) in allowed, href
    # The title is shown literally.
    assert title.replace("\n", " ") in telegram.html_to_plain(telegram.render_paper_root(e, "zh"))


@pytest.mark.parametrize("title", HOSTILE)
def test_hostile_titles_in_the_export_stay_on_one_line(title):
    report = markdown.render_report(hostile_digest(title))
    assert f"### <a id='item-0'></a>1. {title}\n" in report


def test_slack_escape():
    assert slack.escape("<!channel> a&b") == "&lt;!channel&gt; a&amp;b"
    assert slack.escape("&lt;!channel&gt;") == "&amp;lt;!channel&amp;gt;"
    assert slack.escape('it\'s "q"') == 'it\'s "q"'
    link = slack.render_toc(hostile_digest("&lt;!channel&gt;")).blocks
    assert any("&amp;lt;!channel&amp;gt;" in b["text"]["text"] for b in link)


def test_telegram_escape():
    assert telegram.escape('<b> & "q"') == '&lt;b&gt; &amp; "q"'
    assert telegram.escape('"q"', quote=True) == "&quot;q&quot;"


# --- limits and splitting ---------------------------------------------------------------------


def long_entry() -> DigestEntry:
    return entry(paper(0), 90, picked=True, sections=long_sections())


def test_long_deep_dive_splits_into_slack_messages_within_limits():
    e = long_entry()
    body = e.deep_dive.body_markdown()
    assert len(body) >= 12000
    messages = slack.render_deep_dive(e, 1, "zh")
    assert len(messages) >= 2
    assert_slack_limits(messages)
    assert_slack_safe(
        slack_texts(messages),
        {paper(0).abs_url} | {f"https://arxiv.org/abs/{n}" for n in range(2000)},
    )
    text = "\n".join(b["text"]["text"] for m in messages for b in m.blocks if "text" in b)
    assert words(text) == words(body)
    # The 👍/👎 buttons close the deep dive, once, carrying its paper ID.
    actions = [b for m in messages for b in m.blocks if b["type"] == "actions"]
    assert actions == [messages[-1].blocks[-1]]
    assert {el["value"] for el in actions[0]["elements"]} == {e.paper.arxiv_id}
    assert messages[0].blocks[0]["text"]["text"].startswith(f"*1. <{paper(0).abs_url}|")
    assert messages[0].text.endswith(f"(1/{len(messages)})")


def test_long_deep_dive_splits_into_telegram_chunks_within_limits():
    e = long_entry()
    body = e.deep_dive.body_markdown()
    chunks = telegram.render_deep_dive(e, 1, "zh")
    assert len(chunks) >= 3
    for c in chunks:
        assert_telegram_html(c)
        assert telegram.visible_len(c) <= 4000
    plain = "".join(telegram.html_to_plain(c) for c in chunks)
    assert words(plain) == words(body)
    assert chunks[0].startswith("<b>1. <a href=")


def test_one_huge_paragraph_is_cut_at_sentences_without_breaking_markup():
    sentence = "**重点：**使用 [链接 w{n:04d}](https://arxiv.org/abs/{n}) 和 `code` 提升。"
    md = " ".join(sentence.format(n=n) for n in range(300))
    chunks = telegram.split_markdown(md, limit=1500)
    assert len(chunks) >= 3
    for c in chunks:
        assert_telegram_html(c)
        assert telegram.visible_len(c) <= 1500
        assert c.rstrip().endswith("。")
    assert words("".join(telegram.html_to_plain(c) for c in chunks)) == words(md)
    sections = [b["text"]["text"] for b in slack.markdown_to_blocks(md)]
    assert len(sections) >= 5
    for s in sections:
        assert len(s) <= 3000
        assert s.count("<") == s.count(">") == len(re.findall(r"<https://[^|>]+\|[^>]+>", s))
        assert s.count("`") % 2 == 0
    assert words("".join(sections)) == words(md)


def test_escaping_expansion_never_cuts_an_entity():
    md = " ".join(["a&b<c>"] * 2000)
    sections = [b["text"]["text"] for b in slack.markdown_to_blocks(md)]
    assert len(sections) >= 2
    for s in sections:
        assert len(s) <= 3000
        assert not re.search(r"&(?!(amp|lt|gt);)", s)


def test_long_code_block_reopens_its_fence():
    code = "\n".join(f"line_{n:04d} = compute(a < b)  # w{n:04d}" for n in range(400))
    md = f"Intro.\n\n```python\n{code}\n```\n\nAfter."
    chunks = telegram.split_markdown(md)
    assert len(chunks) >= 3
    for c in chunks:
        assert_telegram_html(c)
    pres = [c for c in chunks if "<pre>" in c or "<pre><code" in c]
    assert all(c.count('<pre><code class="language-python">') == 1 for c in pres)
    assert words("".join(telegram.html_to_plain(c) for c in chunks)) == words(md)
    sections = [b["text"]["text"] for b in slack.markdown_to_blocks(md)]
    assert len(sections) >= 5
    assert all(s.count("```") % 2 == 0 and len(s) <= 3000 for s in sections)
    assert words("".join(sections)) == words(md)


def test_emoji_at_the_split_point_is_never_halved():
    family = "👨\u200d👩\u200d👧"
    md = "a" * 3999 + "😀" + "🇨🇳" * 300 + family * 500
    chunks = telegram.split_markdown(md, limit=4000)
    assert len(chunks) >= 2
    for c in chunks:
        assert telegram.visible_len(c) <= 4000
        c.encode("utf-16", errors="strict")  # no lone surrogates
        assert not c.startswith("\u200d") and not c.endswith("\u200d")
    plain = "".join(chunks)
    assert plain.replace(" ", "") == md
    assert chunks[0] == "a" * 3999  # the emoji did not fit: it moved whole
    # Regional-indicator pairs stay paired.
    for c in chunks:
        flags = [ch for ch in c if 0x1F1E6 <= ord(ch) <= 0x1F1FF]
        assert len(flags) % 2 == 0


def test_utf16_and_visible_length():
    assert telegram.utf16_len("😀a") == 3
    assert telegram.visible_len('<b>😀</b> &amp; <a href="https://x.org">x</a>') == 6
    assert telegram.html_to_plain("<b>a &lt;b&gt; &amp;</b>") == "a <b> &"


def test_a_chunk_does_not_end_with_a_lone_heading():
    md = "x" * 3980 + "\n\n## Next section\n\nBody of the next section."
    chunks = telegram.split_markdown(md)
    assert len(chunks) == 2
    assert chunks[1].startswith("<b>Next section</b>")
    assert "Next section" not in chunks[0]


def test_split_messages_respects_block_and_char_limits():
    small = [slack._section(f"block {n}") for n in range(60)]
    messages = slack.split_messages(small, "fallback <!channel>")
    assert [len(m.blocks) for m in messages] == [50, 10]
    assert messages[0].text == "fallback &lt;!channel&gt; (1/2)"
    big = [slack._section("x" * 3000) for _ in range(5)]
    assert [len(m.blocks) for m in slack.split_messages(big, "f")] == [4, 1]


# --- table of contents, quiet days, notes -----------------------------------------------------


def test_fifteen_paper_toc_fits_on_both_platforms():
    long_title = "A & B < C > D: " + "very long title words " * 40
    d = digest(n=15, picked=15, titles={i: long_title + str(i) for i in range(15)})
    m = slack.render_toc(d)
    assert_slack_limits([m])
    assert m.blocks[0]["text"]["text"].startswith("*🚀 CV 论文日报 | 2026-02-18*")
    assert "扫描 15 篇，精选 15 篇深度解读" in m.blocks[0]["text"]["text"]
    text = "\n".join(b["text"]["text"] for b in m.blocks)
    assert text.count("<https://arxiv.org/abs/") == 15
    chunks = telegram.render_toc(d)
    for c in chunks:
        assert_telegram_html(c)
    assert "".join(chunks).count('<a href="https://arxiv.org/abs/') == 15


def test_fifteen_hostile_titles_still_fit_one_slack_message():
    d = digest(n=15, picked=15, titles={i: "&" * 400 for i in range(15)})
    m = slack.render_toc(d)
    assert_slack_limits([m])
    text = "\n".join(b["text"]["text"] for b in m.blocks)
    assert text.count("<https://arxiv.org/abs/") == 15


def test_toc_lists_picked_then_others():
    d = digest()
    text = "\n".join(b["text"]["text"] for b in slack.render_toc(d).blocks)
    assert "*1.* <https://arxiv.org/abs/2602.14900|Paper number 0" in text
    assert "*92*/100\n↳ Reason for 2602.14900" in text
    assert "*📊 其余论文 (Other Papers)*" in text
    assert text.count("\n• ") == 13
    html = "\n".join(telegram.render_toc(d))
    assert "<b>1.</b> <a href=" in html and "<b>92</b>/100" in html
    assert html.count("\n• ") == 13


def test_quiet_day_wording():
    zh = digest(picked=0)
    assert (
        "今日无论文达到阈值 60 分：不做深度解读" in slack.render_toc(zh).blocks[0]["text"]["text"]
    )
    assert "今日无论文达到阈值 60 分：不做深度解读" in telegram.render_toc(zh)[0]
    en = digest(picked=0, language="en")
    assert (
        "Quiet day: no paper reached the threshold (60)"
        in slack.render_toc(en).blocks[0]["text"]["text"]
    )
    assert "Scanned 15, picked 0 for deep dives" in telegram.render_toc(en)[0]


def test_empty_day_is_one_line():
    d = Digest("2026-02-18", (), "cv", "zh", 60)
    m = slack.render_toc(d)
    assert len(m.blocks) == 1 and "\n" not in m.blocks[0]["text"]["text"]
    assert "今日没有新论文" in m.text
    assert telegram.render_toc(d) == ["🚀 CV 论文日报 | 2026-02-18 · 今日没有新论文"]


def test_llm_note_is_shown_wherever_scores_are():
    note = "LLM unavailable: ranked by keyword relevance"
    d = digest(language="en", llm_note=note)
    assert note in slack.render_toc(d).blocks[0]["text"]["text"]
    assert note in telegram.render_toc(d)[0]
    e = entry(paper(0), 55, picked=True, language="en", by_llm=False)
    assert note in slack.render_deep_dive(e, 1, "en")[0].blocks[0]["text"]["text"]
    assert note in telegram.render_deep_dive(e, 1, "en")[0]
    assert note in telegram.render_paper_root(e, "en")
    assert any(note in b["text"]["text"] for b in slack.render_paper_root(e, "en").blocks)


def test_paper_root_and_answer():
    p = paper(0, authors=40)
    e = entry(p, 81, picked=False, language="en")
    root = slack.render_paper_root(e, "en")
    text = root.blocks[0]["text"]["text"]
    assert text.startswith(f"*<{p.abs_url}|{p.title}>*")
    assert "et al. (40 authors)" in text and "*81*/100 — Reason for" in text
    html = telegram.render_paper_root(e, "en")
    assert_telegram_html(html)
    assert "et al. (40 authors)" in html and "<b>81</b>/100" in html
    answer = Answer(p.arxiv_id, "**答：**是的。\n\n- a\n- b", "m1", tokens=9, note="cached context")
    s = slack.render_answer(answer)
    assert_slack_limits(s)
    assert "*答：*\u200b是的。" in s[0].blocks[0]["text"]["text"] + s[0].blocks[-1]["text"]["text"]
    t = telegram.render_answer(answer)
    assert "<b>答：</b>是的。" in t[0] and "cached context" in t[0] and "m1" in t[0]


def test_unsafe_paper_url_is_not_linked():
    p = Paper("2602.00001", "T", "a", abs_url="javascript:alert(1)")
    e = DigestEntry(p, Score(p.arxiv_id, 70, "r"), None)
    root = slack.render_paper_root(e, "en")
    assert "<" not in root.blocks[0]["text"]["text"]
    assert "href" not in telegram.render_paper_root(e, "en")
    assert "javascript" not in markdown.render_analysis_markdown(e, "en")
