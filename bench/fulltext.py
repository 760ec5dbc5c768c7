"""What the full-text extractor keeps from each real arXiv HTML page (not a timed test).

For every page in tests/fixtures/arxiv_html it parses the page (best of 3 runs) and prints
the sections with their roles and sizes, then the table cells, captions and appendix
characters kept, and the parse time. It then checks two goals against the raw HTML,
independently of the extractor's own code path:

- every main-body table number kept: each number in the visible text of the cells of each
  table outside the appendix (MathML presentation text, annotations removed) must occur
  in that table's passage;
- every multi-panel figure (one with nested panel figures or an `ltx_flex_figure`) keeps
  its main caption: the caption directly under the outer figure starts its passage.

Prints PASS or FAIL per goal and page. Usage: python bench/fulltext.py. Exits 1 on a FAIL.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from selectolax.lexbor import LexborHTMLParser, LexborNode  # noqa: E402

from digest_core.models import SOURCE_HTML  # noqa: E402
from digest_core.sources.fulltext import FullText, parse_arxiv_html  # noqa: E402

PAGES = ROOT / "tests" / "fixtures" / "arxiv_html"
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def visible(node: LexborNode) -> str:
    """Cell text as a reader sees it: MathML annotations (TeX source) left out."""
    html = node.html or ""
    html = re.sub(r"<annotation(?:-xml)?\b.*?</annotation(?:-xml)?>", " ", html, flags=re.S)
    return LexborHTMLParser(html).body.text(separator=" ") if html else ""


def in_appendix(node: LexborNode) -> bool:
    parent = node.parent
    while parent is not None:
        if "ltx_appendix" in (parent.attributes.get("class") or "").split():
            return True
        parent = parent.parent
    return False


def label_of(figure: LexborNode) -> str | None:
    for caption in figure.css("figcaption"):
        owner = caption.parent
        while owner is not None and owner.tag != "figure":
            owner = owner.parent
        if owner is not None and owner.mem_id == figure.mem_id:
            tag = caption.css_first(".ltx_tag")
            return " ".join(tag.text().split()).rstrip(":. ") if tag is not None else None
    return None


def main_caption(figure: LexborNode) -> str:
    for caption in figure.css("figcaption"):
        owner = caption.parent
        while owner is not None and owner.tag != "figure":
            owner = owner.parent
        if owner is not None and owner.mem_id == figure.mem_id:
            text = re.sub(
                r"<annotation(?:-xml)?\b.*?</annotation(?:-xml)?>",
                "",
                caption.html or "",
                flags=re.S,
            )
            return " ".join(LexborHTMLParser(text).body.text().split())
    return ""


def report(path: Path) -> bool:
    html = path.read_text(encoding="utf-8")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        sections = parse_arxiv_html(html)
        times.append(time.perf_counter() - start)
    full = FullText(SOURCE_HTML, sections)
    passages = full.passages()
    print(f"\n=== {path.name}  ({len(html) / 1024:.0f} KiB, parse {min(times) * 1000:.0f} ms)")
    for s in full.sections:
        print(f"  {s.role:<12} {len(s.text):>7} chars  {s.heading}")
    tables = [p for p in passages if p.kind == "table"]
    figures = [p for p in passages if p.kind == "figure"]
    cells = sum(line.count(" | ") + 1 for p in tables for line in p.text.splitlines()[1:])
    appendix = sum(len(s.text) for s in full.sections if s.role == "appendix")
    print(
        f"  kept: {len(tables)} tables ({cells} cells), {len(figures)} figure captions, "
        f"{appendix} appendix chars, {len(passages)} passages, {len(full.labels())} labels"
    )

    tree = LexborHTMLParser(html)
    by_label = {p.label: p.text for p in passages if p.label}
    ok = True
    missing: list[str] = []
    checked = 0
    for figure in tree.css("figure.ltx_table"):
        if in_appendix(figure):
            continue
        parent = figure.parent
        while parent is not None and parent.tag != "figure":
            parent = parent.parent
        if parent is not None:
            continue  # a sub-table: counted with its outer float
        label = label_of(figure)
        kept = by_label.get(label, "")
        numbers = [n for cell in figure.css("td, th") for n in NUMBER.findall(visible(cell))]
        checked += len(numbers)
        missing += [f"{label}: {n}" for n in numbers if n not in kept]
    goal = not missing
    ok &= goal
    print(
        f"  {'PASS' if goal else 'FAIL'}  main-body table numbers kept: {checked - len(missing)}/{checked}"
    )
    for line in missing[:10]:
        print(f"        missing {line}")

    panels = [
        f
        for f in tree.css("figure.ltx_figure")
        if "ltx_figure_panel" not in (f.attributes.get("class") or "")
        and (f.css_first(".ltx_flex_figure") is not None or len(f.css("figure")) > 1)
    ]
    lost = []
    for figure in panels:
        label, caption = label_of(figure), main_caption(figure)
        kept = " ".join(by_label.get(label, "").split())
        if not caption or not kept.startswith(caption[:80].replace("$", "")[:40]):
            lost.append(f"{label}: {caption[:60]!r}")
    goal = not lost
    ok &= goal
    print(
        f"  {'PASS' if goal else 'FAIL'}  multi-panel figures keep their main caption: {len(panels) - len(lost)}/{len(panels)}"
    )
    for line in lost:
        print(f"        lost {line}")
    return ok


def main() -> int:
    results = [report(path) for path in sorted(PAGES.glob("*.html"))]
    print(f"\n{'PASS' if all(results) else 'FAIL'} overall ({len(results)} pages)")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
