"""Fakes of the paper sources: Hugging Face Daily Papers and arXiv (API, HTML, PDF).

Both serve recorded real payloads from `tests/fixtures/` over real HTTP, so the code under
test runs its real client, retries and parsing. Point `SourceSettings` at them:

    async with FakeHF.with_fixture_days() as hf, FakeArxiv.with_fixture_entries() as ax:
        settings = SourceSettings(hf_endpoint=hf.url, arxiv_api_url=ax.api_url, arxiv_url=ax.url)

Faults are knobs on the instance (set them before or between requests). Every request is
recorded in `requests` (see FakeServer), with its arrival time in `at`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from fakes.base import FakeServer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
HF_DAYS = ("2026-01-23", "2026-01-28", "2026-02-18")

HF_ERROR_PAGE = (
    "<!DOCTYPE html><html><head><title>Hugging Face</title></head>"
    "<body><h1>We're down for maintenance</h1></body></html>"
)


def hf_day(date: str) -> list[dict[str, Any]]:
    """The recorded `/api/daily_papers?date=` answer for one of HF_DAYS."""
    return json.loads((FIXTURES / "hf" / f"daily_papers_{date}.json").read_text(encoding="utf-8"))


def arxiv_fixture(name: str) -> bytes:
    """The bytes of one recorded arXiv answer in tests/fixtures/arxiv/."""
    return (FIXTURES / "arxiv" / name).read_bytes()


def synthetic_entries(
    template: bytes, template_id: str, n: int, *, first: int, title: str
) -> dict[str, bytes]:
    """`n` more papers for FakeArxiv: one recorded `<entry>` under new IDs (2601.<first>…)
    and titles (`{title} {i}`), for loads over many different papers."""
    found = re.search(rb"<title>(.*?)</title>", template, re.DOTALL)
    assert found is not None
    out = {}
    for i in range(n):
        pid = f"2601.{first + i:05d}"
        entry = template.replace(template_id.encode(), pid.encode())
        out[pid] = entry.replace(found.group(1), f"{title} {i}".encode())
    return out


@dataclass(eq=False)
class FakeHF(FakeServer):
    """Hugging Face: `/api/daily_papers?date=D` and `/api/papers/{id}`.

    days: date -> payload served as JSON (bytes are served as-is); unknown dates get `[]`,
        as HF does for weekends.
    papers: arXiv ID -> the flat object `/api/papers/{id}` returns; unknown IDs get 404.
    Knobs for `/api/daily_papers`:
        status: answer every request with this status and a JSON error body.
        html_body: answer 200 with an HTML maintenance page instead of JSON.
        hang: answer nothing for `hang_seconds` (or until the server stops), then 503: a
            client without a working deadline sees the 503, not a timeout.
        fail_times: the first N requests answer 503 (with `retry_after` as Retry-After if set).
    """

    days: dict[str, Any] = field(default_factory=dict)
    papers: dict[str, Any] = field(default_factory=dict)
    # (kind, arXiv ID) -> the list `/api/{models,datasets,spaces}?filter=arxiv:ID` returns
    # (kind: "models", "datasets", "spaces"); unknown: `[]`, as the Hub answers.
    repos: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    repos_status: int | None = None  # answer the repo lists with this status instead
    # The per-paper lookups (`/api/papers/{id}` and the repo lists) each take this long;
    # `lookups_max_in_flight` records the most served at once.
    lookup_delay: float = 0.0
    lookups_max_in_flight: int = 0
    _lookups_in_flight: int = 0
    status: int | None = None
    html_body: bool = False
    hang: bool = False
    hang_seconds: float = 60.0
    fail_times: int = 0
    retry_after: str | None = None
    _served: int = 0
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def with_fixture_days(cls, *dates: str) -> FakeHF:
        """A fake holding the recorded days (all of HF_DAYS by default)."""
        return cls(days={d: hf_day(d) for d in dates or HF_DAYS})

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/daily_papers", self._daily_papers)
        app.router.add_get("/api/papers/{paper_id:.+}", self._lookup(self._paper))
        for kind in ("models", "datasets", "spaces"):
            app.router.add_get(f"/api/{kind}", self._lookup(self._repo_list))

    def _lookup(self, handler: Any) -> Any:
        async def counted(request: web.Request) -> web.StreamResponse:
            self._lookups_in_flight += 1
            self.lookups_max_in_flight = max(self.lookups_max_in_flight, self._lookups_in_flight)
            try:
                if self.lookup_delay:  # cut short when the fake stops
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._release.wait(), self.lookup_delay)
                return await handler(request)
            finally:
                self._lookups_in_flight -= 1

        return counted

    async def stop(self) -> None:
        self._release.set()  # let hanging handlers finish so shutdown does not wait on them
        await super().stop()

    def daily_requests(self) -> list[Any]:
        return [r for r in self.requests if r.path == "/api/daily_papers"]

    async def _daily_papers(self, request: web.Request) -> web.StreamResponse:
        self._served += 1
        if self.hang:
            try:
                await asyncio.wait_for(self._release.wait(), self.hang_seconds)
            except TimeoutError:
                pass
            return web.Response(status=503)
        if self._served <= self.fail_times:
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.json_response({"error": "Service Unavailable"}, status=503, headers=headers)
        if self.status is not None:
            return web.json_response({"error": f"status {self.status}"}, status=self.status)
        if self.html_body:
            return web.Response(text=HF_ERROR_PAGE, content_type="text/html")
        payload = self.days.get(request.query.get("date", ""), [])
        if isinstance(payload, bytes):
            return web.Response(body=payload, content_type="application/json")
        return web.json_response(payload)

    async def _repo_list(self, request: web.Request) -> web.StreamResponse:
        if self.repos_status is not None:
            return web.json_response({"error": "nope"}, status=self.repos_status)
        kind = request.path.rsplit("/", 1)[-1]
        wanted = request.query.get("filter", "")
        items = (
            self.repos.get((kind, wanted.removeprefix("arxiv:")), [])
            if wanted.startswith("arxiv:")
            else []
        )
        limit = request.query.get("limit", "")
        return web.json_response(items[: int(limit)] if limit.isdigit() else items)

    async def _paper(self, request: web.Request) -> web.StreamResponse:
        paper = self.papers.get(request.match_info["paper_id"])
        if paper is None:
            return web.json_response({"error": "Paper not found"}, status=404)
        return web.json_response(paper)


# An arXiv-shaped ID, as loose as arXiv's own check: anything else gets the 400 error feed.
_LOOKS_LIKE_ID = re.compile(
    r"(?:[0-9]{4}\.[0-9]{4,5}|[a-z-]+(?:\.[A-Z]{2})?/[0-9]{7})(?:v[0-9]+)?", re.ASCII
)
_ENTRY = re.compile(rb"<entry>.*?</entry>", re.DOTALL)
_ENTRY_ID = re.compile(rb"<id>https?://arxiv\.org/abs/(?P<base>\S+?)v(?P<v>[0-9]+)</id>")
_VERSION = re.compile(r"v[0-9]+$")

_FEED_HEAD = (
    b"<?xml version='1.0' encoding='UTF-8'?>\n"
    b'<feed xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/" '
    b'xmlns:arxiv="http://arxiv.org/schemas/atom" xmlns="http://www.w3.org/2005/Atom">\n'
    b"  <id>https://arxiv.org/api/fake</id>\n"
    b"  <title>arXiv Query: fake</title>\n"
    b"  <updated>2026-04-12T22:09:25Z</updated>\n"
)


def arxiv_feed(entries: list[bytes]) -> bytes:
    """A whole Atom feed around `entries`, shaped like the API's answers."""
    counts = (
        f"  <opensearch:itemsPerPage>{len(entries)}</opensearch:itemsPerPage>\n"
        f"  <opensearch:totalResults>{len(entries)}</opensearch:totalResults>\n"
        "  <opensearch:startIndex>0</opensearch:startIndex>\n"
    ).encode()
    return _FEED_HEAD + counts + b"".join(b"  " + e + b"\n" for e in entries) + b"</feed>\n"


def arxiv_error_feed(bad_id: str) -> bytes:
    """The 400 answer for a malformed ID, as in query_id_abc_malformed_http400_error_entry.xml."""
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", bad_id)
    entry = (
        f"<entry><id>https://arxiv.org/api/errors#incorrect_id_format_for_{slug}</id>"
        "<title>Error</title><updated>2026-04-12T22:59:06Z</updated>"
        f"<summary>incorrect id format for {slug}</summary>"
        "<author><name>arXiv api core</name></author></entry>"
    ).encode()
    return arxiv_feed([entry])


def entries_from_feed(feed: bytes) -> dict[str, bytes]:
    """The `<entry>` elements of a recorded feed keyed by bare ID (error entries skipped)."""
    found: dict[str, bytes] = {}
    for match in _ENTRY.finditer(feed):
        entry_id = _ENTRY_ID.search(match.group())
        if entry_id:
            found[entry_id.group("base").decode()] = match.group()
    return found


@dataclass(eq=False)
class FakeArxiv(FakeServer):
    """arXiv: the export API at `/api/query`, plus `/html/{id}` and `/pdf/{id}`.

    entries: bare ID -> `<entry>` XML (see `entries_from_feed`). A query's `id_list` gets a
        feed of the known ones; an ID with a version only matches an entry of that version.
        Unknown but well-formed IDs are simply absent (200), malformed ones give 400 with
        the error feed, as the real API does.
    html / pdf: ID -> page / bytes, looked up by the exact ID in the path, then without its
        version; missing -> 404.
    redirects: path -> Location, answered with 302 before any lookup.
    Knobs for `/api/query`: status (every query), fail_times (first N answer 503),
    empty_times (the N after those answer 200 with an empty body), delay (seconds each
    query takes). `max_in_flight` records the most queries ever served at once.
    """

    entries: dict[str, bytes] = field(default_factory=dict)
    html: dict[str, str] = field(default_factory=dict)
    pdf: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    # Files under a paper's HTML page, by path after /html/ ("2501.11120v1/x1.png"): the
    # figures the page's <img src> points at.
    images: dict[str, bytes] = field(default_factory=dict)
    status: int | None = None
    fail_times: int = 0
    empty_times: int = 0
    delay: float = 0.0
    max_in_flight: int = 0
    _in_flight: int = 0
    _queries: int = 0

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/query"

    @classmethod
    def with_fixture_entries(cls) -> FakeArxiv:
        """A fake that knows every paper in the recorded arXiv answers."""
        entries: dict[str, bytes] = {}
        for path in sorted((FIXTURES / "arxiv").glob("query_*.xml")):
            entries.update(entries_from_feed(path.read_bytes()))
        return cls(entries=entries)

    def queries(self) -> list[Any]:
        return [r for r in self.requests if r.path == "/api/query"]

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/query", self._query)
        app.router.add_get("/html/{paper_id:.+}", self._html)
        app.router.add_get("/pdf/{paper_id:.+}", self._pdf)

    async def _query(self, request: web.Request) -> web.StreamResponse:
        self._queries += 1
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            return self._answer(request.query.get("id_list", ""))
        finally:
            self._in_flight -= 1

    def _answer(self, id_list: str) -> web.Response:
        atom = "application/atom+xml"
        if self._queries <= self.fail_times:
            return web.Response(status=503, text="Service Unavailable")
        if self.status is not None:
            return web.Response(status=self.status, text=f"status {self.status}")
        if self._queries <= self.fail_times + self.empty_times:
            return web.Response(body=b"", content_type=atom)
        ids = [i for i in id_list.split(",") if i]
        bad = [i for i in ids if not _LOOKS_LIKE_ID.fullmatch(i)]
        if bad:
            return web.Response(status=400, body=arxiv_error_feed(bad[0]), content_type=atom)
        found: list[bytes] = []
        for requested in ids:
            base = _VERSION.sub("", requested)
            entry = self.entries.get(base)
            if entry is None or entry in found:
                continue
            if requested != base:
                entry_id = _ENTRY_ID.search(entry)
                if entry_id is None or f"v{entry_id.group('v').decode()}" != requested[len(base) :]:
                    continue
            found.append(entry)
        return web.Response(body=arxiv_feed(found), content_type=atom)

    def _lookup(self, table: dict[str, Any], paper_id: str) -> Any:
        return table.get(paper_id, table.get(_VERSION.sub("", paper_id)))

    async def _html(self, request: web.Request) -> web.StreamResponse:
        if request.path in self.redirects:
            raise web.HTTPFound(self.redirects[request.path])
        image = self.images.get(request.match_info["paper_id"])
        if image is not None:
            kind = "image/png" if image.startswith(b"\x89PNG") else "application/octet-stream"
            return web.Response(body=image, content_type=kind)
        page = self._lookup(self.html, request.match_info["paper_id"])
        if page is None:
            return web.Response(
                status=404,
                text="<html><body>No HTML for this paper</body></html>",
                content_type="text/html",
            )
        return web.Response(text=page, content_type="text/html")

    async def _pdf(self, request: web.Request) -> web.StreamResponse:
        if request.path in self.redirects:
            raise web.HTTPFound(self.redirects[request.path])
        data = self._lookup(self.pdf, request.match_info["paper_id"])
        if data is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=data, content_type="application/pdf")
