"""arXiv API metadata: Atom parsing and a polite, serialised client.

arXiv asks for one request every three seconds and one connection at a time, from all of a
user's machines together. `ArxivClient` enforces both per instance, so the process should
share one. The API's error behaviour is irregular (400 with a fake "Error" entry, 200 with
no entries, empty bodies when called too fast), so "not found" is decided by diffing the
requested IDs against the returned ones, never by trusting an entry's title.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence

import httpx

from ..arxiv_id import ArxivId, InvalidArxivId, parse_arxiv_id
from ..config import SourceSettings
from ..models import Paper
from ..retry import TryAgain, retry_after
from . import RETRY_STATUSES, Sleep, SourceError, source_policy

log = logging.getLogger(__name__)

NS = {
    "atom": "http://www.w3.org/2005/Atom",
    "opensearch": "http://a9.com/-/spec/opensearch/1.1/",
    "arxiv": "http://arxiv.org/schemas/atom",
}
# IDs per request. arxiv.py uses 100 as its page size; a day's list is well under it.
BATCH_SIZE = 100
# Entry ids look like http://arxiv.org/abs/2104.12255v1 (http, always versioned).
_ENTRY_ID = re.compile(r"https?://(?:www\.)?arxiv\.org/abs/(?P<id>\S+)", re.ASCII)


def parse_atom(xml: bytes, arxiv_url: str) -> list[Paper]:
    """Papers in an arXiv Atom feed. Error entries and unparseable entries are dropped."""
    feed = _feed(xml)
    if feed is None:
        return []
    return [p for entry in feed.findall("atom:entry", NS) if (p := _entry(entry, arxiv_url))]


class ArxivClient:
    """Fetches arXiv metadata by ID, one request at a time, spaced by the configured interval."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        settings: SourceSettings,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._settings = settings
        self._sleep = sleep
        self._clock = clock
        # Held for the whole request, retries included: arXiv wants one connection at a time.
        self._lock = asyncio.Lock()
        self._last_start: float | None = None
        # `lookup`: IDs waiting for the next request, and the one caller sending it.
        self._waiting: dict[ArxivId, asyncio.Future[Paper | None]] = {}
        self._leader = asyncio.Lock()

    async def fetch(self, ids: Sequence[ArxivId]) -> dict[str, Paper]:
        """Papers keyed by bare ID. IDs arXiv does not know are simply absent.

        A versioned ID gives that version. Raises SourceError only when arXiv cannot be
        reached (or keeps failing) after the bounded retries.
        """
        wanted: dict[str, ArxivId] = {}
        for arxiv_id in ids:
            wanted.setdefault(str(arxiv_id), arxiv_id)
        found: dict[str, Paper] = {}
        todo = list(wanted.values())
        for start in range(0, len(todo), BATCH_SIZE):
            batch = todo[start : start + BATCH_SIZE]
            for paper in await self._query(batch):
                found.setdefault(paper.arxiv_id, paper)
        missing = sorted({a.base for a in todo} - found.keys())
        if missing:
            log.info(
                "arXiv does not know %d of %d IDs: %s",
                len(missing),
                len(wanted),
                ", ".join(missing[:10]),
            )
        return found

    async def _query(self, batch: list[ArxivId]) -> list[Paper]:
        params = {
            "id_list": ",".join(str(a) for a in batch),
            "start": "0",
            "max_results": str(len(batch)),
        }
        interval = self._settings.arxiv_min_interval_seconds
        # Retries back off (interval, 2x, 4x ...) from the last request's start (`_pace`), and
        # never come sooner than the interval or a Retry-After.
        policy = source_policy(self._settings).with_(
            backoff_base=interval,
            backoff_max=max(self._settings.retry.backoff_max_seconds, interval),
            deadline=None,  # the lock serialises callers; the callers' deadlines bound a fetch
        )

        async def on_the_wire(event: str, info: object) -> None:
            # httpcore's trace: the request's first bytes leave now. A request can wait for
            # one of the shared client's connections (behind Hugging Face lookups) after
            # `_pace`; arXiv's spacing counts from when it really went out.
            if event.endswith(".send_request_headers.started"):
                self._last_start = self._clock()

        async def attempt(_: int) -> list[Paper]:
            await self._pace(interval)
            try:
                response = await self._client.get(
                    self._settings.arxiv_api_url,
                    params=params,
                    extensions={"trace": on_the_wire},
                )
            except httpx.TimeoutException:
                raise TryAgain("arXiv did not answer in time") from None
            except httpx.TransportError as exc:
                raise TryAgain(f"arXiv is unreachable ({type(exc).__name__})") from None
            status = response.status_code
            if status == 400:
                # A malformed ID in the list: arXiv answers 400 with an "Error" entry.
                # The caller reports the IDs as not found; on the CLI that is the one line.
                log.info("arXiv rejected id_list %s as malformed", params["id_list"][:200])
                return []
            if status in RETRY_STATUSES:
                wait = retry_after(response.headers)
                if policy.refuses(wait):
                    raise SourceError(f"arXiv answered {status} and asked to wait {wait:.0f} s")
                raise TryAgain(f"arXiv answered {status}", wait=wait)
            if status != 200:
                raise SourceError(f"arXiv answered {status}")
            feed = _feed(response.content)
            if feed is None or feed.find("opensearch:totalResults", NS) is None:
                # Seen when called too fast: an empty or cut-off body. Retry, spaced.
                raise TryAgain("arXiv returned an empty or incomplete answer")
            return self._select(feed, batch)

        async with self._lock:  # held for the whole request, retries included
            try:
                return await policy.run(attempt, what="arXiv", sleep=self._wait_gap)
            except TryAgain as exc:
                raise SourceError(f"{exc.reason} (after {policy.attempts} attempts)") from None

    async def lookup(self, ids: Sequence[ArxivId]) -> dict[str, Paper]:
        """As `fetch`, but concurrent callers share requests: every ID asked for while arXiv's
        interval runs goes out in the next request, in one `id_list` (up to BATCH_SIZE). Fifty
        people asking for fifty papers at once cost two or three requests, not fifty spaced
        three seconds apart."""
        loop = asyncio.get_running_loop()
        mine: list[asyncio.Future[Paper | None]] = []
        for arxiv_id in dict.fromkeys(ids):
            future = self._waiting.get(arxiv_id)
            if future is None:
                future = self._waiting[arxiv_id] = loop.create_future()
            mine.append(future)
        while not all(f.done() for f in mine):
            async with self._leader:
                if all(f.done() for f in mine):
                    break
                await self._wait_for_slot()
                await self._send_waiting()
        found: dict[str, Paper] = {}
        for future in mine:
            paper = future.result()  # raises the batch's SourceError
            if paper is not None:
                found.setdefault(paper.arxiv_id, paper)
        return found

    async def _wait_for_slot(self) -> None:
        """Sleep until a request may start, without taking the slot (the request does)."""
        if self._last_start is not None:
            wait = self._last_start + self._settings.arxiv_min_interval_seconds - self._clock()
            if wait > 0:
                await self._sleep(wait)

    async def _send_waiting(self) -> None:
        batch: dict[ArxivId, asyncio.Future[Paper | None]] = {}
        bases: set[str] = set()
        for arxiv_id in list(self._waiting):
            if len(batch) == BATCH_SIZE:
                break
            if arxiv_id.base in bases:
                continue  # two versions of one paper cannot share an id_list: next request
            bases.add(arxiv_id.base)
            batch[arxiv_id] = self._waiting.pop(arxiv_id)
        try:
            papers = await self._query(list(batch))
        except SourceError as exc:
            for future in batch.values():
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # retrieved: its waiters get it, nobody else must
            return
        except BaseException:
            # This caller was cancelled mid-request: the others' IDs wait for the next one.
            for arxiv_id, future in batch.items():
                if not future.done():
                    self._waiting.setdefault(arxiv_id, future)
            raise
        by_base = {p.arxiv_id: p for p in papers}
        for arxiv_id, future in batch.items():
            if not future.done():
                future.set_result(by_base.get(arxiv_id.base))

    async def _pace(self, gap: float) -> None:
        """Wait until `gap` (at least the interval) has passed since the last request start,
        and mark this moment as the next request's start (until the transport reports when
        the request really went out)."""
        await self._wait_gap(gap)
        self._last_start = self._clock()

    async def _wait_gap(self, gap: float) -> None:
        """The retry policy's sleep: a retry's wait counts from the last request's start."""
        if self._last_start is not None:
            gap = max(self._settings.arxiv_min_interval_seconds, gap)
            wait = self._last_start + gap - self._clock()
            if wait > 0:
                await self._sleep(wait)

    def _select(self, feed: ET.Element, batch: list[ArxivId]) -> list[Paper]:
        """The answer's papers that were asked for, in the asked version when one was given."""
        asked = {a.base: a for a in batch}
        papers: list[Paper] = []
        for entry in feed.findall("atom:entry", NS):
            paper = _entry(entry, self._settings.arxiv_url)
            if paper is None or paper.arxiv_id not in asked:
                continue
            version = asked[paper.arxiv_id].version
            if version is not None and paper.version != version:
                continue
            papers.append(paper)
        return papers


def _feed(xml: bytes) -> ET.Element | None:
    """The feed root, or None for an empty, cut-off or non-Atom body."""
    if not xml or not xml.strip():
        return None
    # The API never sends a DTD; refusing one rules out entity-expansion tricks cheaply.
    if b"<!DOCTYPE" in xml or b"<!ENTITY" in xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    return root if root.tag == f"{{{NS['atom']}}}feed" else None


def _entry(entry: ET.Element, arxiv_url: str) -> Paper | None:
    raw_id = _collapse(entry.findtext("atom:id", "", NS))
    match = _ENTRY_ID.fullmatch(raw_id)
    # Error entries have ids like https://arxiv.org/api/errors#incorrect_id_format_for_abc,
    # which do not match /abs/ and are dropped here along with their "Error" title.
    if not match:
        return None
    try:
        parsed = parse_arxiv_id(match.group("id"))
    except InvalidArxivId:
        return None
    title_el = entry.find("atom:title", NS)
    # A paper can be titled "0": test for None, never for truthiness.
    title = _collapse(title_el.text) if title_el is not None and title_el.text is not None else ""
    if title == "":
        # The API once dropped the <title> of exactly such a paper; keep the paper anyway.
        title = f"arXiv:{parsed.base}"
    authors = tuple(
        name
        for a in entry.findall("atom:author", NS)
        if (name := _collapse(a.findtext("atom:name", "", NS)))
    )
    return Paper(
        arxiv_id=parsed.base,
        title=title,
        abstract=_collapse(entry.findtext("atom:summary", "", NS)),
        authors=authors,
        version=parsed.version,
        published=_collapse(entry.findtext("atom:published", "", NS)) or None,
        abs_url=f"{arxiv_url}/abs/{parsed.base}",
        source="arxiv",
    )


def _collapse(text: str | None) -> str:
    return " ".join(text.split()) if text else ""
