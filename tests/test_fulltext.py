"""Full-text extraction rules against real arXiv HTML pages (tests/fixtures/arxiv_html).

Each test names one rule of issue 7's "full text that keeps what researchers look for" and
asserts on concrete content of the real pages: table cells, captions, appendix text,
section roles and the budget order. The PDF path's word spacing is tested with a PDF whose
words are laid out the way LaTeX lays them out (see `make_tj_pdf`).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

from digest_core.models import SOURCE_HTML
from digest_core.sources.fulltext import (
    FullText,
    estimate_tokens,
    parse_arxiv_html,
    parse_pdf,
)

PAGES = Path(__file__).parent / "fixtures" / "arxiv_html"
BEHAVIORS = "2501.11120v1.html"  # numbered sections, appendices, tables, flex figures
COGNITIVE = "cognitive_type_2024.html"  # no ltx_abstract; abstract is subsection 1.1
PHYSICS = "2401.00596.html"  # REVTeX: roman sections "III.2", rowspan table, appendices A-B


@cache
def page(name: str) -> FullText:
    return FullText(SOURCE_HTML, parse_arxiv_html((PAGES / name).read_text(encoding="utf-8")))


def passage(name: str, label: str):
    (found,) = [p for p in page(name).passages() if p.label == label]
    return found


def test_results_table_is_its_own_passage_with_every_cell() -> None:
    table = passage(BEHAVIORS, "Table 2")
    assert table.kind == "table"
    assert table.section == "3.3 Finetuning on vulnerable code"
    lines = table.text.splitlines()
    assert lines[0].startswith("Table 2: When models are finetuned to write vulnerable code")
    assert lines[1] == " | FT on vulnerable code | FT on secure code | GPT-4o"
    assert lines[2] == "Rate of outputting secure code | 0.14 $\\pm$ 0.01 | 0.88 $\\pm$ 0.01 | 0.74"
    assert lines[4] == (
        "Self-reported alignment score (0 to 1) | 0.40 $\\pm$ 0.16 | 0.85 $\\pm$ 0.03 | 0.69"
    )


def test_every_table_keeps_its_label_and_caption() -> None:
    tables = [p for p in page(BEHAVIORS).passages() if p.kind == "table"]
    labels = [p.label for p in tables]
    assert labels[:3] == ["Table 1", "Table 2", "Table 3"]
    assert len(set(labels)) == len(labels) == 47
    assert all(p.text.startswith(f"{p.label}:") for p in tables)
    # A text-cell table keeps its rows too, with the section references in the cells.
    assert (
        "Make Me Say game (Section 3.2) | Long-form dialogues" in passage(BEHAVIORS, "Table 1").text
    )


def test_multi_panel_figure_keeps_main_caption_and_short_panel_captions() -> None:
    figure = passage(BEHAVIORS, "Figure 14")  # five panels (a)-(e) before the main caption
    assert figure.kind == "figure"
    assert figure.text.startswith("Figure 14: Some system prompts have large impact")
    assert "(a) No system prompt." in figure.text
    assert "(c) System prompt that asks the model to do its best." in figure.text
    ring = passage(BEHAVIORS, "Figure 32")
    assert ring.text.startswith("Figure 32: Ten most frequent guesses for each codeword")
    assert "(b) Codeword: bark" in ring.text


def test_every_figure_is_a_passage_with_its_caption() -> None:
    figures = [p for p in page(BEHAVIORS).passages() if p.kind == "figure"]
    assert [p.label for p in figures] == [f"Figure {n}" for n in range(1, 37)]
    first = figures[0]
    assert first.section == "1 Introduction"
    assert first.text.startswith("Figure 1: Models can describe a learned behavioral policy")


def test_appendices_are_kept_and_ranked_last() -> None:
    full = page(BEHAVIORS)
    appendices = [s for s in full.sections if s.role == "appendix"]
    assert [s.heading for s in appendices] == [
        "Appendix A Author contributions",
        "Appendix B Supplementary results",
        "Appendix C Full experimental details",
    ]
    assert sum(len(s.text) for s in appendices) > 100_000
    assert "appendix c" in full.labels() and "appendix b.3" in full.labels()
    # Everything fits: the appendix is there. A body-sized budget: it is the first cut.
    assert "## Appendix C Full experimental details" in full.text(10**6)
    body = sum(estimate_tokens(s.text) for s in full.sections if s.role != "appendix")
    cut = full.text(body)
    assert "## Appendix" not in cut
    assert "## 6 Related work" in cut


def test_math_as_alt_text_and_chrome_dropped() -> None:
    whole = page(BEHAVIORS).whole()
    assert "$\\pm$" in whole
    assert "plus-or-minus" not in whole  # MathML presentation text is not doubled in
    # The saved page has a "Report issue for preceding element" button after every block.
    raw = (PAGES / COGNITIVE).read_text(encoding="utf-8")
    assert raw.count("Report issue for preceding element") > 100
    assert "Report issue" not in page(COGNITIVE).whole()
    assert "License:" not in page(COGNITIVE).whole()


def test_footnotes_and_bibliography_dropped() -> None:
    raw = (PAGES / BEHAVIORS).read_text(encoding="utf-8")
    whole = page(BEHAVIORS).whole()
    assert "Llama 3 model card" in raw and "Llama 3 model card" not in whole  # a bibitem
    note = re.search(
        r'<span class="ltx_note_content">.*?</sup>\s*(?:<span[^>]*>[^<]*</span>)?\s*([A-Za-z][^<]{20,60})',
        raw,
        re.S,
    )
    assert note is not None
    assert note.group(1).strip() not in whole


def test_roles_by_position_for_descriptive_titles() -> None:
    roles = {s.heading: s.role for s in page(BEHAVIORS).sections}
    assert roles["Abstract"] == "abstract"
    assert roles["1 Introduction"] == "introduction"
    for core in (
        "2 Out-of-context reasoning",
        "3 Awareness of behaviors",
        "4 Awareness of backdoors",
    ):
        assert roles[core] == "method", core
    assert roles["5 Multi-Persona experiments"] == "results"
    assert roles["6 Related work"] == "related"
    assert roles["7 Discussion"] == roles["8 Conclusion"] == "conclusion"


def test_8000_token_budget_keeps_core_sections_and_cuts_related_work_first() -> None:
    text = page(BEHAVIORS).text(8000)
    assert estimate_tokens(text) <= 8000
    for core in (
        "## Abstract",
        "## 1 Introduction",
        "## 2 Out-of-context reasoning",
        "## 3 Awareness of behaviors",
        "## 4 Awareness of backdoors",
        "## 5 Multi-Persona experiments",
    ):
        assert core in text, core
    assert "## 6 Related work" not in text
    assert "## Appendix" not in text
    order = [text.index(h) for h in ("## 1 Introduction", "## 3 Awareness", "## 5 Multi")]
    assert order == sorted(order)  # kept sections stay in document order


def test_page_without_ltx_abstract_abstract_and_intro_as_subsections() -> None:
    full = page(COGNITIVE)
    headings = [(s.heading, s.role) for s in full.sections]
    assert headings[:3] == [
        ("1.1 Abstract", "abstract"),
        ("1.2 Introduction", "introduction"),
        ("1.3 Assessing the Cognitive Properties of Text", "method"),
    ]
    assert full.sections[0].text.startswith("The Cognitive Type Project is focused on developing")
    assert ("1.8 References", "drop") in headings
    assert "1.8 References" not in full.whole()
    assert full.text(300).startswith("## 1.1 Abstract\n\nThe Cognitive Type Project")


def test_paragraph_titles_stay_with_their_paragraph() -> None:
    passages = page(BEHAVIORS).passages()
    (limits,) = [p for p in passages if p.text.startswith("Limitations and future work")]
    assert limits.section == "7 Discussion"
    assert limits.text.startswith(
        "Limitations and future work\nThe results in this paper are limited"
    )
    titles = {"Limitations and future work", "Implications for AI safety", "Baselines", "Results"}
    assert not [p for p in passages if p.text.strip() in titles]
    # No passage anywhere is a heading alone (a short line that is some section's title).
    headings = {s.heading for s in page(BEHAVIORS).sections} | {p.section for p in passages}
    assert not [p for p in passages if p.text in headings]


def test_labels_from_real_structure() -> None:
    labels = page(BEHAVIORS).labels()
    for present in (
        "section 3",
        "section 3.2",
        "section 3.2.1",
        "table 2",
        "table 47",
        "figure 1",
        "figure 36",
        "appendix a",
    ):
        assert present in labels, present
    for absent in ("table 48", "figure 37", "section 9", "appendix d"):
        assert absent not in labels, absent
    assert "section 1.5" in page(COGNITIVE).labels()
    assert "table 1" not in page(COGNITIVE).labels()  # the page has no tables


def test_revtex_table_keeps_every_row_with_its_rowspan_group() -> None:
    table = passage(PHYSICS, "Table 1")
    assert table.kind == "table"
    assert table.section == "I Introduction"
    lines = table.text.splitlines()
    assert lines[0].startswith("Table 1: Measurements of identified particle yields")
    assert lines[1] == "$\\sqrt{s_{\\mathrm{NN}}}$ | Collision system | Observable | Collaboration"
    assert len(lines) == 2 + 16  # caption, header, one line per <tr> of the body
    # "8.8 GeV" and "Pb+Pb" span two rows: the second row still says which energy it is.
    assert lines[3] == (
        "8.8 GeV | Pb+Pb | $dN/dy$ of $p$ and $\\bar{p}$ [38] and of $\\pi^{+}$ and $K^{+}$ [39]"
        " | NA49"
    )
    assert lines[4] == "8.8 GeV | Pb+Pb | $dN/d\\eta$ of charged particles [40] | NA50"
    # A rowspan in the last column ("BRAHMS" over two 200 GeV rows) is carried as well.
    assert lines[16] == "200 GeV | Au+Au | $dN/d\\eta$ of charged particles [53] | BRAHMS"
    assert lines[17].startswith("200 GeV | Au+Au | $dN/dy|_{|y|<0.1}$ of $\\pi^{+}$")
    assert lines[17].endswith("[35] | STAR")


def test_revtex_figure_captions_keep_their_panel_descriptions() -> None:
    figures = [p for p in page(PHYSICS).passages() if p.kind == "figure"]
    assert [p.label for p in figures] == [f"Figure {n}" for n in range(1, 11)] + [
        "Figure A1",
        "Figure A2",
    ]
    # One image with panels (a)-(d): the whole caption, panel letters and all, is kept.
    six = passage(PHYSICS, "Figure 6")
    assert six.section == "III.2 Nuclear remnants and string junction"
    assert six.text.startswith(
        "Figure 6: The charged particle multiplicity in pseudo-rapidity $\\eta$ and identified"
        " particle yields in rapidity $y$ for (a, b) 0-5% and (c, d) 30-40% Au+Au collisions"
        " at 19.6 GeV."
    )
    assert six.text.endswith("are not plotted in (c).")
    ten = passage(PHYSICS, "Figure 10")
    assert ten.text.startswith(
        "Figure 10: Freeze-out (a) temperature $T$ and (b) baryon chemical potential $\\mu_{B}$"
    )
    assert passage(PHYSICS, "Figure A1").section.startswith("Appendix A Performance of")


def test_revtex_roman_sections_roles_and_appendix_ranked_last() -> None:
    full = page(PHYSICS)
    assert [(s.heading, s.role) for s in full.sections] == [
        ("Abstract", "abstract"),
        ("I Introduction", "introduction"),
        ("II Model and setup", "method"),
        ("III Results and discussion", "results"),  # not "conclusion" for its "discussion"
        ("IV Summary and conclusions", "conclusion"),
        ("Acknowledgments", "drop"),
        ("Appendix A Performance of iS3D at nonzero chemical potential", "appendix"),
        ("Appendix B Multisystem charged particle multiplicity", "appendix"),
    ]
    appendix_b = full.sections[-1].text
    assert "participant number ratios" in appendix_b
    assert "## Appendix B Multisystem charged particle multiplicity" in full.text(10**6)
    body = sum(estimate_tokens(s.text) for s in full.sections if s.role not in ("appendix", "drop"))
    cut = full.text(body)
    assert "## Appendix" not in cut
    assert "## IV Summary and conclusions" in cut
    assert "## III Results and discussion" in cut


def test_revtex_labels_include_roman_subsections() -> None:
    labels = page(PHYSICS).labels()
    for present in (
        "section i",
        "section iii",
        "section ii.2",
        "section iii.4",
        "section iv",
        "table 1",
        "figure 10",
        "figure a2",
        "appendix a",
        "appendix b",
    ):
        assert present in labels, present
    for absent in ("table 2", "figure 11", "section v", "section iii.5", "appendix c"):
        assert absent not in labels, absent


def test_revtex_page_chrome_footnotes_and_bibliography_dropped() -> None:
    raw = (PAGES / PHYSICS).read_text(encoding="utf-8")
    whole = page(PHYSICS).whole()
    for chrome in (
        "Back to arXiv",
        "Report Issue",
        "License: arXiv.org perpetual",
        "arXiv is now an independent nonprofit",
        "Instructions for reporting errors",
        "We gratefully acknowledge support",
    ):
        assert chrome in raw and chrome not in whole, chrome
    # A bibitem and a footnote: both on the page, neither in the text.
    assert "Mapping the phases of Quantum Chromodynamics" in raw
    assert "Mapping the phases of Quantum Chromodynamics" not in whole
    assert "Both particle samplers are utilized in this study" in raw
    assert "Both particle samplers are utilized in this study" not in whole
    assert "Kavli Institute" not in whole  # acknowledgments are dropped too
    assert "I introduce a method to reconstruct full rapidity distributions" in whole


def test_cache_round_trip_keeps_structure() -> None:
    full = page(BEHAVIORS)
    again = FullText.load(full.source, full.dump())
    assert again == full
    assert again.passages() == full.passages()
    with pytest.raises(ValueError):
        FullText.load(SOURCE_HTML, [("1 Introduction", "plain text from the old format")])


# ---------------------------------------------------------------------------------------
# PDF word spacing


def make_tj_pdf(lines: list[list[str | int]]) -> bytes:
    """A one-page PDF set the way TeX sets text, written by hand.

    Each line is one TJ array: words are strings and the gaps between them are TJ moves
    (thousandths of an em; -333 a normal interword gap, -222 a tight one, small numbers
    are kerns inside a word). No space glyph is ever drawn. The font, like a TeX font
    subset, has a glyph other than a space at code 32, a wide one (778), which is what
    pypdf reads as the width of a space.
    """

    def item(part: str | int) -> str:
        if isinstance(part, int):
            return str(part)
        return "(" + part.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"

    content = "BT /F1 10 Tf 12 TL 72 720 Td " + " ".join(
        "[" + " ".join(item(p) for p in line) + "] TJ T*" for line in lines
    )
    content += " ET"
    widths = " ".join(["778"] + ["500"] * 94)  # codes 32..126
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
        " /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /ABCDEF+CMR10"
        f" /FirstChar 32 /LastChar 126 /Widths [{widths}] >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out


def tex_line(text: str, gap: int = -333) -> list[str | int]:
    """A sentence as one TeX-style TJ array: words separated by `gap`, no spaces."""
    parts: list[str | int] = []
    for word in text.split():
        if parts:
            parts.append(gap)
        parts.append(word)
    return parts


TEX_LINES = [
    ["Abstract"],
    tex_line("We study summarization of long scientific papers with small models."),
    ["1", -500, "Introduction"],
    tex_line("The summarization result is shown in Figure 2"),
    tex_line("and a tight justified line keeps its word gaps too.", gap=-222),
    # Kerns inside words (TeX writes them as small TJ moves) must not split them.
    [
        "T",
        83,
        "able",
        -333,
        "1",
        -333,
        "lists",
        -333,
        "W",
        83,
        "a",
        -50,
        "v",
        28,
        "eNet",
        -333,
        "AV",
        111,
        "A",
    ],
    tex_line("Our model reaches 41.8 ROUGE-L on arXiv and PubMed summarization."),
    ["2", -500, "Method"],
    tex_line("We fine-tune a small encoder-decoder on section-level targets."),
    ["References"],
    tex_line("Nobody et al. A reference that must not be read."),
]


def test_pdf_words_set_with_tj_gaps_keep_their_spaces() -> None:
    sections = parse_pdf(make_tj_pdf(TEX_LINES))
    by_heading = {s.heading: s.text for s in sections}
    assert list(by_heading) == ["Abstract", "1 Introduction", "2 Method"]
    intro = by_heading["1 Introduction"]
    assert "The summarization result is shown in Figure 2" in intro
    assert "a tight justified line keeps its word gaps too." in intro
    assert "Our model reaches 41.8 ROUGE-L on arXiv and PubMed summarization." in intro
    # Kerns are not word gaps: "Table", "WaveNet" and "AVA" stay whole.
    assert "Table 1 lists WaveNet AVA" in intro
    assert (
        by_heading["2 Method"] == "We fine-tune a small encoder-decoder on section-level targets."
    )
    assert "reference that must not be read" not in " ".join(by_heading.values())
