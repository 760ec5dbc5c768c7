"""The paper sources against fakes over real HTTP, fed with recorded real payloads.

Covers Hugging Face (the three recorded days, weekends, retries, HTML-with-200, hangs),
arXiv (Atom quirks, not-found by diff, 400s, pacing and one-in-flight) and full text
(HTML, PDF and abstract fallbacks; the token budget).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fakes.papers import HF_DAYS, FakeArxiv, FakeHF, arxiv_fixture, hf_day

from digest_core.arxiv_id import ArxivId
from digest_core.config import SourceSettings
from digest_core.models import SOURCE_ABSTRACT, SOURCE_HTML, SOURCE_PDF, Paper
from digest_core.sources import SourceError, make_http_client
from digest_core.sources import arxiv as arxiv_module
from digest_core.sources.arxiv import ArxivClient, parse_atom
from digest_core.sources.fulltext import (
    FullText,
    estimate_tokens,
    fetch_fulltext,
    parse_arxiv_html,
    parse_pdf,
)
from digest_core.sources.hf import fetch_daily_papers, fetch_hf_paper, parse_daily_papers

FIXTURES = Path(__file__).parent / "fixtures"
ARXIV = "https://arxiv.org"
EXPECTED_COUNTS = {"2026-01-23": 18, "2026-01-28": 9, "2026-02-18": 13}


def _closed_port_url() -> str:
    """A loopback URL nothing listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def make_settings(
    hf: str = "", arxiv: str = "", *, timeout: float = 2.0, retries: int = 2, interval: float = 0.2
) -> SourceSettings:
    hf = hf or _closed_port_url()
    arxiv = arxiv or _closed_port_url()
    return SourceSettings(
        hf_endpoint=hf,
        arxiv_api_url=f"{arxiv}/api/query",
        arxiv_url=arxiv,
        user_agent="digestbot-tests/1",
        timeout_seconds=timeout,
        arxiv_min_interval_seconds=interval,
        retries=retries,
    )


class Sleeps:
    """Stands in for asyncio.sleep: records the waits, passes no time."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
async def hf() -> AsyncIterator[FakeHF]:
    async with FakeHF.with_fixture_days() as fake:
        yield fake  # type: ignore[misc]


@pytest.fixture
async def ax() -> AsyncIterator[FakeArxiv]:
    async with FakeArxiv.with_fixture_entries() as fake:
        yield fake  # type: ignore[misc]


def _one_line(message: str) -> None:
    assert "\n" not in message and len(message) < 160
    assert "http://" not in message and "https://" not in message


# ---------------------------------------------------------------------------------------
# Hugging Face


@pytest.mark.parametrize("date", HF_DAYS)
async def test_recorded_days_parse_sorted_by_upvotes(hf: FakeHF, date: str) -> None:
    settings = make_settings(hf.url)
    async with make_http_client(settings) as client:
        papers = await fetch_daily_papers(client, settings, date)

    assert len(papers) == EXPECTED_COUNTS[date]
    upvotes = [p.upvotes for p in papers]
    assert upvotes == sorted(upvotes, reverse=True)
    assert [p.arxiv_id for p in papers] == [item["paper"]["id"] for item in hf_day(date)]
    for paper in papers:
        assert paper.title and paper.abstract and paper.authors
        assert paper.abs_url == f"{settings.arxiv_url}/abs/{paper.arxiv_id}"
        assert paper.source == "hf"
        assert paper.published and paper.published.endswith("Z")

    (request,) = hf.daily_requests()
    assert request.query == {"date": date, "limit": "100"}
    assert request.headers["User-Agent"] == "digestbot-tests/1"


async def test_186_authors_and_fields_on_glm5(hf: FakeHF) -> None:
    settings = make_settings(hf.url)
    async with make_http_client(settings) as client:
        papers = await fetch_daily_papers(client, settings, "2026-02-18")
    glm = next(p for p in papers if p.arxiv_id == "2602.15763")
    assert len(glm.authors) == 186
    assert glm.authors[0] == "GLM-5 Team"
    assert glm.upvotes == 15  # from paper.upvotes, not the outer item
    assert glm.github_repo == "https://github.com/zai-org/GLM-5"
    assert glm.ai_summary and glm.ai_summary.startswith("GLM-5 advances")
    # paper.publishedAt, not the outer value that is 5 h earlier
    assert glm.published == "2026-02-17T17:50:56.000Z"


def test_optional_fields_absent_stay_none() -> None:
    payload = hf_day("2026-01-23")
    no_ai = [i["paper"]["id"] for i in payload if "ai_summary" not in i["paper"]]
    no_repo = [i["paper"]["id"] for i in payload if "githubRepo" not in i["paper"]]
    no_page = [i["paper"]["id"] for i in payload if "projectPage" not in i["paper"]]
    assert no_ai and no_repo and no_page  # the recorded day really has such items
    papers = {p.arxiv_id: p for p in parse_daily_papers(payload, ARXIV)}
    assert all(papers[i].ai_summary is None for i in no_ai)
    assert all(papers[i].github_repo is None for i in no_repo)
    assert all(papers[i].project_page is None for i in no_page)
    with_page = [i["paper"]["id"] for i in payload if "projectPage" in i["paper"]]
    assert all(papers[i].project_page for i in with_page)


def test_malformed_items_are_skipped_not_fatal() -> None:
    good = hf_day("2026-01-28")[0]
    payload = [
        "not an item",
        None,
        {"no": "paper"},
        {"paper": {"title": "No id"}},
        {"paper": {"id": "2601.00001"}},  # no title
        {"paper": {"id": "2512.24880/sso-callback", "title": "Bad id"}},
        {"paper": {"id": "../../etc/passwd", "title": "Path"}},
        {"paper": {"id": 2601.00002, "title": "Numeric id"}},
        {"paper": {"id": "2601.00003", "title": "Wrapped\n  title\n  here", "upvotes": True}},
        {"paper": {"id": "2601.00004", "title": "0", "summary": "Zero.", "upvotes": 7}},
        {
            "paper": {
                "id": "2601.00005",
                "title": "Links",
                "upvotes": "9",
                "authors": [{"name": " A  B "}, {"_id": "x"}, "junk", {"name": ""}],
                "githubRepo": "javascript:alert(1)",
                "projectPage": "https://example.org/p",
            }
        },
        good,
        good,  # listed twice
    ]
    papers = parse_daily_papers(payload, ARXIV)
    ids = [p.arxiv_id for p in papers]
    assert ids == [good["paper"]["id"], "2601.00004", "2601.00003", "2601.00005"]
    by_id = {p.arxiv_id: p for p in papers}
    assert by_id["2601.00003"].title == "Wrapped title here"
    assert by_id["2601.00003"].upvotes == 0  # a bool is not a count
    assert by_id["2601.00004"].title == "0"
    assert by_id["2601.00005"].authors == ("A B",)
    assert by_id["2601.00005"].upvotes == 0
    assert by_id["2601.00005"].github_repo is None
    assert by_id["2601.00005"].project_page == "https://example.org/p"
    assert parse_daily_papers({"error": "x"}, ARXIV) == []


async def test_weekend_empty_list_is_not_an_error(hf: FakeHF) -> None:
    settings = make_settings(hf.url)
    async with make_http_client(settings) as client:
        assert await fetch_daily_papers(client, settings, "2026-02-21") == []


async def test_503_then_success_retries_with_backoff(hf: FakeHF) -> None:
    hf.fail_times = 1
    settings = make_settings(hf.url)
    sleeps = Sleeps()
    async with make_http_client(settings) as client:
        papers = await fetch_daily_papers(client, settings, "2026-01-28", sleep=sleeps)
    assert len(papers) == 9
    assert len(hf.daily_requests()) == 2
    # The policy's first backoff, stretched by at most its jitter.
    (waited,) = sleeps.calls
    jitter = settings.retry.jitter
    assert 0.5 <= waited <= 0.5 * (1 + jitter)


async def test_retry_after_is_honoured(hf: FakeHF) -> None:
    hf.fail_times, hf.retry_after = 2, "3"
    settings = make_settings(hf.url)
    sleeps = Sleeps()
    async with make_http_client(settings) as client:
        papers = await fetch_daily_papers(client, settings, "2026-01-28", sleep=sleeps)
    assert len(papers) == 9
    assert sleeps.calls == [3.0, 3.0]


async def test_persistent_503_is_one_line_after_bounded_retries(hf: FakeHF) -> None:
    hf.fail_times = 100
    settings = make_settings(hf.url, retries=2)
    async with make_http_client(settings) as client:
        with pytest.raises(SourceError) as info:
            await fetch_daily_papers(client, settings, "2026-01-28", sleep=Sleeps())
    assert str(info.value) == "Hugging Face answered 503 for 2026-01-28"
    assert len(hf.daily_requests()) == 3


async def test_client_error_is_not_retried(hf: FakeHF) -> None:
    hf.status = 400
    settings = make_settings(hf.url)
    async with make_http_client(settings) as client:
        with pytest.raises(SourceError, match="answered 400 for 2026-01-28"):
            await fetch_daily_papers(client, settings, "2026-01-28", sleep=Sleeps())
    assert len(hf.daily_requests()) == 1


async def test_html_with_200_is_a_source_error(hf: FakeHF) -> None:
    hf.html_body = True
    settings = make_settings(hf.url)
    async with make_http_client(settings) as client:
        with pytest.raises(SourceError) as info:
            await fetch_daily_papers(client, settings, "2026-01-28")
    assert str(info.value) == "Hugging Face returned a page that is not the papers list (HTML)"


async def test_json_object_with_200_is_a_source_error(hf: FakeHF) -> None:
    hf.days["2026-01-28"] = {"error": "surprise"}
    settings = make_settings(hf.url)
    async with make_http_client(settings) as client:
        with pytest.raises(SourceError, match=r"not the papers list \(a JSON object\)"):
            await fetch_daily_papers(client, settings, "2026-01-28")


async def test_hang_fails_within_the_deadline(hf: FakeHF) -> None:
    hf.hang = True
    settings = make_settings(hf.url, timeout=0.3, retries=1)
    async with make_http_client(settings) as client:
        with pytest.raises(SourceError) as info:
            await fetch_daily_papers(client, settings, "2026-01-28", sleep=Sleeps())
    # The fake would answer 503 after a minute: "did not answer in time" is our deadline's
    # doing. bench/digest.py times it against total_deadline().
    assert str(info.value) == "Hugging Face did not answer in time for 2026-01-28"
    assert len(hf.daily_requests()) == 2


async def test_unreachable_is_one_line() -> None:
    settings = make_settings(retries=1)
    sleeps = Sleeps()
    async with make_http_client(settings) as client:
        with pytest.raises(SourceError) as info:
            await fetch_daily_papers(client, settings, "2026-01-28", sleep=sleeps)
    assert str(info.value) == "Hugging Face is unreachable (ConnectError) for 2026-01-28"
    assert len(sleeps.calls) == 1
    _one_line(str(info.value))


async def test_hf_single_paper(hf: FakeHF) -> None:
    flat = dict(hf_day("2026-01-23")[10]["paper"])  # the flat shape /api/papers/{id} returns
    flat["linkedModels"] = []
    hf.papers[flat["id"]] = flat
    settings = make_settings(hf.url)
    sleeps = Sleeps()
    async with make_http_client(settings) as client:
        paper = await fetch_hf_paper(client, settings, flat["id"])
        assert paper is not None and paper.arxiv_id == flat["id"] == "2601.15621"
        assert paper.title == " ".join(flat["title"].split())
        assert await fetch_hf_paper(client, settings, "2601.99999") is None  # 404
        assert await fetch_hf_paper(client, settings, "hep-th/9901001") is None  # no request
        assert await fetch_hf_paper(client, settings, "../../etc/passwd") is None  # no request
        hf.papers["2601.00007"] = ["not", "a", "paper"]
        assert await fetch_hf_paper(client, settings, "2601.00007") is None
    assert hf.paths("/api/papers/") == [
        "/api/papers/2601.15621",
        "/api/papers/2601.99999",
        "/api/papers/2601.00007",
    ]
    assert not sleeps.calls


async def test_hf_single_paper_down_is_none() -> None:
    settings = make_settings(retries=0)
    async with make_http_client(settings) as client:
        assert await fetch_hf_paper(client, settings, "2601.15621") is None


# ---------------------------------------------------------------------------------------
# arXiv: parsing


def test_atom_versioned_title_zero() -> None:
    (paper,) = parse_atom(arxiv_fixture("query_id_2104.12255v1_newstyle_versioned.xml"), ARXIV)
    assert paper.arxiv_id == "2104.12255" and paper.version == 1
    assert paper.versioned_id == "2104.12255v1"
    assert paper.title == "0"
    assert paper.abstract.startswith("What is the funniest number in cryptography? 0.")
    assert paper.authors == ("Quan Thoi Minh Nguyen",)
    assert paper.published == "2021-04-20T16:07:14Z"
    assert paper.abs_url == "https://arxiv.org/abs/2104.12255"
    assert paper.source == "arxiv"


def test_atom_old_style_keeps_slash_and_strips_whitespace() -> None:
    (paper,) = parse_atom(arxiv_fixture("query_id_astro-ph_0601001_oldstyle.xml"), ARXIV)
    assert paper.arxiv_id == "astro-ph/0601001" and paper.version == 1
    assert paper.abstract.startswith("We derive the frequencies")  # no leading whitespace
    assert "&amp;" not in paper.abstract and "Gould & Morgan" in paper.abstract
    assert paper.authors[0] == "Andrew Gould" and len(paper.authors) == 4
    (paper,) = parse_atom(
        arxiv_fixture("query_id_quant-ph_0201082v1_oldstyle_versioned.xml"), ARXIV
    )
    assert paper.arxiv_id == "quant-ph/0201082" and paper.version == 1


def test_atom_non_ascii_authors() -> None:
    (paper,) = parse_atom(
        arxiv_fixture("query_id_1707.08567_newstyle_comment_34authors_nonascii.xml"), ARXIV
    )
    assert len(paper.authors) == 34
    assert "Dirk Wübben" in paper.authors


def test_atom_error_and_empty_feeds_give_nothing() -> None:
    assert parse_atom(arxiv_fixture("query_id_abc_malformed_http400_error_entry.xml"), ARXIV) == []
    assert (
        parse_atom(arxiv_fixture("query_id_0000.0000_wellformed_unknown_http200_empty.xml"), ARXIV)
        == []
    )
    assert (
        parse_atom(arxiv_fixture("query_id_0808.05394_invalid_for_era_http200_empty.xml"), ARXIV)
        == []
    )
    assert parse_atom(b"", ARXIV) == []
    assert parse_atom(b"<feed", ARXIV) == []
    assert parse_atom(b"<html><body>oops</body></html>", ARXIV) == []
    bomb = b'<?xml version="1.0"?><!DOCTYPE f [<!ENTITY a "aaaa">]><feed>&a;</feed>'
    assert parse_atom(bomb, ARXIV) == []


def test_atom_partial_match_and_search_feed() -> None:
    papers = parse_atom(
        arxiv_fixture("query_id_list_0808.05394_1707.08567_partial_match.xml"), ARXIV
    )
    assert [p.arxiv_id for p in papers] == ["1707.08567"]
    papers = parse_atom(arxiv_fixture("query_search_testing_max10.xml"), ARXIV)
    assert len(papers) == 10
    assert all(p.title and p.abstract and p.version for p in papers)


def test_atom_missing_title_keeps_the_paper() -> None:
    xml = arxiv_fixture("query_id_2104.12255v1_newstyle_versioned.xml").replace(
        b"<title>0</title>", b""
    )
    (paper,) = parse_atom(xml, ARXIV)
    assert paper.title == "arXiv:2104.12255"


# ---------------------------------------------------------------------------------------
# arXiv: the client


async def test_fetch_known_unknown_and_versioned(ax: FakeArxiv) -> None:
    settings = make_settings(arxiv=ax.url)
    ids = [
        ArxivId("2104.12255", 1),
        ArxivId("1605.08386"),
        ArxivId("astro-ph/0601001"),
        ArxivId("quant-ph/0201082", 1),
        ArxivId("1707.08567"),
        ArxivId("0000.0000"),  # well-formed, unknown: arXiv answers 200 without it
        ArxivId("0808.05394"),
        ArxivId("1605.08386"),  # asked twice
    ]
    async with make_http_client(settings) as client:
        found = await ArxivClient(client, settings).fetch(ids)
    assert set(found) == {
        "2104.12255",
        "1605.08386",
        "astro-ph/0601001",
        "quant-ph/0201082",
        "1707.08567",
    }
    assert found["2104.12255"].version == 1 and found["2104.12255"].title == "0"
    assert found["astro-ph/0601001"].arxiv_id == "astro-ph/0601001"
    (query,) = ax.queries()
    assert query.query["id_list"] == (
        "2104.12255v1,1605.08386,astro-ph/0601001,quant-ph/0201082v1,1707.08567,0000.0000,0808.05394"
    )
    assert query.query["max_results"] == "7"


async def test_fetch_other_version_is_absent(ax: FakeArxiv) -> None:
    settings = make_settings(arxiv=ax.url)
    async with make_http_client(settings) as client:
        assert await ArxivClient(client, settings).fetch([ArxivId("2104.12255", 9)]) == {}


async def test_malformed_id_400_means_not_found(ax: FakeArxiv) -> None:
    settings = make_settings(arxiv=ax.url)
    async with make_http_client(settings) as client:
        found = await ArxivClient(client, settings).fetch([ArxivId("abc")])
    assert found == {}
    assert len(ax.queries()) == 1  # a 400 is final, not retried


async def test_nothing_asked_nothing_sent(ax: FakeArxiv) -> None:
    settings = make_settings(arxiv=ax.url)
    async with make_http_client(settings) as client:
        assert await ArxivClient(client, settings).fetch([]) == {}
    assert ax.queries() == []


async def test_requests_are_spaced_and_serialised(ax: FakeArxiv) -> None:
    """Concurrent callers send one request at a time, each the interval after the last one
    started. Spacing is read on the client's own clock when httpx sends each request (a
    virtual clock that only the client's sleeps advance), so a loaded machine cannot blur it."""
    ax.delay = 0.05
    offset = [0.0]

    def clock() -> float:
        return offset[0]

    async def sleep(seconds: float) -> None:
        offset[0] += seconds
        await asyncio.sleep(0)

    sent: list[float] = []

    async def on_request(request: httpx.Request) -> None:
        sent.append(clock())

    settings = make_settings(arxiv=ax.url, interval=0.2)
    ids = ["2104.12255", "1605.08386", "1707.08567", "astro-ph/0601001"]
    async with make_http_client(settings) as client:
        client.event_hooks["request"].append(on_request)
        arxiv = ArxivClient(client, settings, sleep=sleep, clock=clock)
        results = await asyncio.gather(*(arxiv.fetch([ArxivId(i)]) for i in ids))
    assert [set(r) for r in results] == [{i} for i in ids]
    assert len(ax.queries()) == len(sent) == 4
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    assert all(gap >= 0.2 for gap in gaps), gaps
    assert ax.max_in_flight == 1


async def test_spacing_counts_from_when_a_request_leaves_not_from_the_queue(
    ax: FakeArxiv, hf: FakeHF
) -> None:
    """The one client's connections (10) are all held by slow Hugging Face requests, so the
    first arXiv request waits for one after its pacing: the second must still reach arXiv the
    interval after the first did, not the interval after the first began to wait."""
    hf.hang, hf.hang_seconds = True, 0.5
    settings = make_settings(hf=hf.url, arxiv=ax.url, interval=0.3)
    async with make_http_client(settings) as client:
        url = f"{hf.url}/api/daily_papers"
        holders = [asyncio.create_task(client.get(url)) for _ in range(10)]
        for _ in range(500):  # until every connection is taken
            if len(hf.daily_requests()) == 10:
                break
            await asyncio.sleep(0.01)
        arxiv = ArxivClient(client, settings)
        await arxiv.fetch([ArxivId("2104.12255")])
        await arxiv.fetch([ArxivId("1605.08386")])
        await asyncio.gather(*holders)
    first, second = ax.queries()
    assert first.at - hf.daily_requests()[0].at >= 0.4  # it did wait for a connection
    assert second.at - first.at >= 0.2, second.at - first.at  # unpaced: ~0.002


async def test_503_and_empty_body_are_retried_spaced(ax: FakeArxiv) -> None:
    ax.fail_times, ax.empty_times = 1, 1
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds
        await asyncio.sleep(0)

    sent: list[float] = []

    async def on_request(request: httpx.Request) -> None:
        sent.append(now[0])

    settings = make_settings(arxiv=ax.url, interval=0.1, retries=2)
    async with make_http_client(settings) as client:
        client.event_hooks["request"].append(on_request)
        arxiv = ArxivClient(client, settings, sleep=sleep, clock=lambda: now[0])
        found = await arxiv.fetch([ArxivId("1605.08386")])
    assert set(found) == {"1605.08386"}
    assert len(ax.queries()) == len(sent) == 3
    # On the client's clock: the interval (at least), then the doubled backoff (at least).
    assert sent[1] - sent[0] >= 0.1 and sent[2] - sent[1] >= 0.2, sent


async def test_arxiv_down_raises_one_line(ax: FakeArxiv) -> None:
    ax.status = 503
    settings = make_settings(arxiv=ax.url, interval=0.01, retries=2)
    async with make_http_client(settings) as client:
        with pytest.raises(SourceError) as info:
            await ArxivClient(client, settings).fetch([ArxivId("1605.08386")])
    assert str(info.value) == "arXiv answered 503 (after 3 attempts)"
    assert len(ax.queries()) == 3


async def test_arxiv_unreachable_raises_one_line() -> None:
    settings = make_settings(interval=0.01, retries=1)
    async with make_http_client(settings) as client:
        with pytest.raises(SourceError) as info:
            await ArxivClient(client, settings).fetch([ArxivId("1605.08386")])
    assert str(info.value) == "arXiv is unreachable (ConnectError) (after 2 attempts)"
    _one_line(str(info.value))


async def test_batches_with_fake_clock(ax: FakeArxiv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches go out one after another, each waiting out the interval on the given clock."""
    monkeypatch.setattr(arxiv_module, "BATCH_SIZE", 2)
    now = [100.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(round(seconds, 3))
        now[0] += seconds

    settings = make_settings(arxiv=ax.url, interval=3.0)
    async with make_http_client(settings) as client:
        arxiv = ArxivClient(client, settings, sleep=sleep, clock=lambda: now[0])
        found = await arxiv.fetch([ArxivId(i) for i in ("2104.12255", "1605.08386", "1707.08567")])
    assert len(found) == 3
    assert [q.query["id_list"] for q in ax.queries()] == ["2104.12255,1605.08386", "1707.08567"]
    assert waits == [3.0]


# ---------------------------------------------------------------------------------------
# Full text


def make_pdf(lines: list[str]) -> bytes:
    """A one-page PDF with one line of Helvetica text per entry, written by hand."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    content = (
        "BT /F1 10 Tf 12 TL 56 770 Td "
        + " ".join(f"({escape(line)}) Tj T*" for line in lines)
        + " ET"
    )
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
        " /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
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


PDF_LINES = [
    "Masked Flow Matching for Blind Super-Resolution",
    "Ada Example",
    "Abstract",
    "We present a flow matching model for blind super-res-",
    "olution that restores fine texture at a quarter of the cost.",
    "1 Introduction",
    "Image restoration recovers a clean image from a degraded one.",
    "3 times faster than diffusion sampling, it is practical.",
    "2 Method",
    "We learn a velocity field between noise and data along straight paths.",
    "3 Experiments",
    "On DIV2K we reach 29.1 dB PSNR with a single sampling step.",
    "4 Conclusion",
    "Flow matching with masking is a fast and faithful restorer.",
    "References",
    "[1] BIBLIOGRAPHY-TEXT-SHOULD-NOT-APPEAR",
]

PAPER = Paper(
    arxiv_id="2601.15621",
    title="Masked Flow Matching for Blind Super-Resolution",
    abstract="We present a flow matching model for blind super-resolution.",
    version=1,
)


def sample_html() -> str:
    return (FIXTURES / "arxiv" / "html_latexml_sample.html").read_text(encoding="utf-8")


def test_parse_latexml_sample() -> None:
    sections = parse_arxiv_html(sample_html())
    headings = [h for h, _ in sections]
    assert headings == ["Abstract", "1 Introduction", "2 Method", "3 Experiments", "4 Conclusion"]
    text = dict(sections)
    assert "$v_{\\theta}(x_{t},t)$" in text["Abstract"]
    assert "$O(n^{2})$" in text["1 Introduction"]
    assert "slow [3]." in text["1 Introduction"]
    method = text["2 Method"]
    assert "2.1 Masking" in method and "Half of the patches" in method  # subsection folded in
    assert "Figure 1: Overview of the masked flow." in method
    assert "$\\mathcal{L}=" in method  # display equation kept
    assert "Table 1: PSNR on DIV2K.\n29.1 dB" in text["3 Experiments"]  # caption, then cells
    everything = "\n".join(t for _, t in sections)
    for absent in ("SHOULD-NOT-APPEAR", "\\usepackage", "Generated by LaTeXML", "Ada Example"):
        assert absent not in everything


def test_html_error_pages_parse_to_nothing() -> None:
    assert parse_arxiv_html("") == ()
    assert parse_arxiv_html("<html><body><h1>No HTML for '2601.15621'</h1></body></html>") == ()
    tiny = (
        '<article class="ltx_document"><div class="ltx_para"><p class="ltx_p">x</p></div></article>'
    )
    assert parse_arxiv_html(tiny) == ()
    assert parse_arxiv_html("\x00<<<>>>" * 100) == ()


def test_parse_pdf_sections_and_failures() -> None:
    sections = parse_pdf(make_pdf(PDF_LINES))
    assert [h for h, _ in sections] == [
        "Abstract",
        "1 Introduction",
        "2 Method",
        "3 Experiments",
        "4 Conclusion",
    ]
    text = dict(sections)
    assert "super-resolution that restores" in text["Abstract"]  # hyphenation mended
    assert "3 times faster" in text["1 Introduction"]  # not mistaken for section 3
    assert all("BIBLIOGRAPHY" not in t for _, t in sections)
    assert parse_pdf(b"") == ()
    assert parse_pdf(b"%PDF-1.4 not really") == ()
    assert parse_pdf(b"<html>not a pdf</html>") == ()


async def test_fulltext_prefers_html(ax: FakeArxiv) -> None:
    ax.html["2601.15621v1"] = sample_html()
    ax.pdf["2601.15621"] = make_pdf(PDF_LINES)
    settings = make_settings(arxiv=ax.url)
    async with make_http_client(settings) as client:
        full = await fetch_fulltext(client, settings, PAPER)
    assert full.source == SOURCE_HTML
    assert [s.heading for s in full.sections][:2] == ["Abstract", "1 Introduction"]
    assert ax.paths("/html/") == ["/html/2601.15621v1"]
    assert ax.paths("/pdf/") == []


async def test_fulltext_falls_back_to_pdf(ax: FakeArxiv) -> None:
    ax.pdf["2601.15621"] = make_pdf(PDF_LINES)
    settings = make_settings(arxiv=ax.url)
    async with make_http_client(settings) as client:
        full = await fetch_fulltext(client, settings, PAPER)
    assert full.source == SOURCE_PDF
    assert "1 Introduction" in dict(full.sections)
    assert ax.paths() == ["/html/2601.15621v1", "/pdf/2601.15621v1"]


async def test_fulltext_html_error_page_with_200_falls_back(ax: FakeArxiv) -> None:
    ax.html["2601.15621"] = "<html><body>Conversion failed</body></html>"
    ax.pdf["2601.15621"] = b"<html>this is not a PDF</html>"
    settings = make_settings(arxiv=ax.url)
    async with make_http_client(settings) as client:
        full = await fetch_fulltext(client, settings, PAPER)
    assert full == FullText(SOURCE_ABSTRACT, (("Abstract", PAPER.abstract),))


async def test_fulltext_abstract_when_nothing_else(ax: FakeArxiv) -> None:
    old = Paper(arxiv_id="hep-th/9901001", title="Old", abstract="An old abstract.")
    settings = make_settings(arxiv=ax.url)
    async with make_http_client(settings) as client:
        full = await fetch_fulltext(client, settings, old)
    assert full.source == SOURCE_ABSTRACT
    assert [tuple(s) for s in full.sections] == [("Abstract", "An old abstract.")]
    assert ax.paths() == ["/html/hep-th/9901001", "/pdf/hep-th/9901001"]


async def test_fulltext_never_fetches_for_a_bad_id(ax: FakeArxiv) -> None:
    bad = Paper(arxiv_id="../../etc/passwd", title="x", abstract="y")
    settings = make_settings(arxiv=ax.url)
    async with make_http_client(settings) as client:
        full = await fetch_fulltext(client, settings, bad)
    assert full.source == SOURCE_ABSTRACT
    assert ax.requests == []


async def test_fulltext_follows_same_origin_redirects_only(ax: FakeArxiv) -> None:
    ax.redirects["/html/2601.15621v1"] = "/html/2601.15621v1/"
    ax.html["2601.15621v1/"] = sample_html()
    ax.redirects["/pdf/2601.15621v1"] = "https://evil.example/paper.pdf"
    settings = make_settings(arxiv=ax.url)
    async with make_http_client(settings) as client:
        assert (await fetch_fulltext(client, settings, PAPER)).source == SOURCE_HTML
        ax.html.clear()
        # The PDF redirect points off arXiv: not followed (the loopback guard would fail it).
        assert (await fetch_fulltext(client, settings, PAPER)).source == SOURCE_ABSTRACT


async def test_fulltext_unreachable_is_abstract() -> None:
    settings = make_settings()
    async with make_http_client(settings) as client:
        full = await fetch_fulltext(client, settings, PAPER)
    assert full.source == SOURCE_ABSTRACT


def test_estimate_tokens() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd" * 10) == 10
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("图像复原") == 4
    assert estimate_tokens("扩散 model") == 2 + 2  # 2 CJK + ceil(6 / 4)


def _long(label: str, sentences: int) -> str:
    return " ".join(f"{label} sentence number {i} says something." for i in range(sentences))


PAPER_SECTIONS = FullText(
    SOURCE_HTML,
    (
        ("Abstract", "ABSTRACT-TEXT. " + _long("Abstract", 5)),
        ("1 Introduction", "INTRO-TEXT. " + _long("Intro", 400)),
        ("2 Related Work", "RELATED-TEXT. " + _long("Related", 300)),
        ("3 Method", "METHOD-TEXT. " + _long("Method", 400)),
        ("4 Experiments", "EXPERIMENTS-TEXT. " + _long("Experiments", 400)),
        ("5 Conclusion", "CONCLUSION-TEXT. " + _long("Conclusion", 5)),
        ("Acknowledgements", "ACK-TEXT. We thank everyone."),
        ("References", "REFS-TEXT. [1] A. Author. A paper. 2020."),
    ),
)


@pytest.mark.parametrize("budget", [400, 1000, 3000, 12000])
def test_fulltext_text_respects_budget_and_priority(budget: int) -> None:
    text = PAPER_SECTIONS.text(budget)
    assert estimate_tokens(text) <= budget
    for key in ("ABSTRACT-TEXT", "INTRO-TEXT", "METHOD-TEXT", "EXPERIMENTS-TEXT"):
        assert key in text, (budget, key)
    assert "ACK-TEXT" not in text and "REFS-TEXT" not in text
    order = [
        text.index(k)
        for k in ("## Abstract", "## 1 Introduction", "## 3 Method", "## 4 Experiments")
    ]
    assert order == sorted(order)
    assert "[…]" in text  # the big sections were cut, with a marker
    assert "RELATED-TEXT" not in text  # "others" come last: no room left for them
    # Cuts land on sentence boundaries.
    for piece in text.split("[…]")[:-1]:
        assert piece.rstrip().endswith(".")


def test_fulltext_text_fair_share_and_generous_budget() -> None:
    text = PAPER_SECTIONS.text(3000)
    intro = text[text.index("## 1 Introduction") : text.index("## 3 Method")]
    method = text[text.index("## 3 Method") : text.index("## 4 Experiments")]
    # A long introduction does not crowd out the method: they get about the same room.
    assert abs(estimate_tokens(intro) - estimate_tokens(method)) < 100
    assert "CONCLUSION-TEXT" in text  # short, so its room was set aside

    everything = PAPER_SECTIONS.text(10**6)
    assert "[…]" not in everything
    assert "RELATED-TEXT" in everything and "CONCLUSION-TEXT" in everything
    assert "ACK-TEXT" not in everything and "REFS-TEXT" not in everything
    assert everything.startswith("## Abstract\n\nABSTRACT-TEXT.")


def test_fulltext_text_tiny_budget_keeps_the_abstract_first() -> None:
    text = PAPER_SECTIONS.text(80)
    assert text.startswith("## Abstract")
    assert estimate_tokens(text) <= 80
    assert "INTRO-TEXT" not in text
    assert FullText(SOURCE_ABSTRACT, (("Abstract", "Short."),)).text(100) == "## Abstract\n\nShort."
    assert PAPER_SECTIONS.text(0) == ""


def test_fulltext_text_cjk_counts_per_character() -> None:
    body = "这是一个关于图像复原的句子。" * 200  # 14 chars a sentence, each a token
    text = FullText(SOURCE_PDF, (("Abstract", body),)).text(300)
    assert estimate_tokens(text) <= 300
    assert text.endswith("。 […]")
    assert len(text) > 250  # about one character a token, not four


async def test_client_settings() -> None:
    settings = make_settings(timeout=7.0)
    async with make_http_client(settings) as client:
        assert isinstance(client, httpx.AsyncClient)
        assert client.headers["User-Agent"] == "digestbot-tests/1"
        assert client.timeout.read == 7.0
        assert client.follow_redirects is False
