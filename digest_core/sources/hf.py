"""Hugging Face Daily Papers: the day's list of papers, and single-paper look-ups.

`parse_daily_papers` is pure and forgiving: a malformed item is skipped, never fatal, because
one odd paper must not cost the whole digest. The fetchers add bounded retries, a total
deadline and one-line `SourceError`s; an empty list (weekends) is a normal answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import httpx

from ..arxiv_id import InvalidArxivId, parse_arxiv_id
from ..config import SourceSettings
from ..models import Link, Paper
from . import Sleep, SourceError, get_with_retries, total_deadline

log = logging.getLogger(__name__)

WHAT = "Hugging Face"
# The API's maximum page size; its default of 50 could cut a busy day short.
PAGE_LIMIT = 100
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)


def parse_daily_papers(payload: object, arxiv_url: str) -> list[Paper]:
    """Papers from a `/api/daily_papers` answer, de-duplicated, most upvoted first.

    Items without an ID or title, or whose ID is not a valid arXiv ID, are skipped.
    """
    if not isinstance(payload, list):
        return []
    papers: list[Paper] = []
    seen: set[str] = set()
    for item in payload:
        paper = _paper_from(item.get("paper") if isinstance(item, dict) else None, item, arxiv_url)
        if paper is None or paper.arxiv_id in seen:
            continue
        seen.add(paper.arxiv_id)
        papers.append(paper)
    # The API already sorts a dated list by upvotes; sorting again (stable) makes it a guarantee.
    papers.sort(key=lambda p: -p.upvotes)
    return papers


def parse_hf_paper(payload: object, arxiv_url: str) -> Paper | None:
    """A Paper from `/api/papers/{id}`, which is the flat paper object without a wrapper."""
    return _paper_from(payload, None, arxiv_url)


async def fetch_daily_papers(
    client: httpx.AsyncClient,
    settings: SourceSettings,
    date: str,
    *,
    sleep: Sleep = asyncio.sleep,
) -> list[Paper]:
    """The Daily Papers list for `date` (YYYY-MM-DD). `[]` on days without papers.

    Raises SourceError with one line when Hugging Face is unreachable, keeps failing, or
    answers with something that is not the list.
    """
    if not _DATE.fullmatch(date):
        raise ValueError(f"date must be YYYY-MM-DD, got {date[:20]!r}")
    url = f"{settings.hf_endpoint}/api/daily_papers"
    params = {"date": date, "limit": str(PAGE_LIMIT)}
    deadline = total_deadline(settings)
    try:
        async with asyncio.timeout(deadline):
            response = await get_with_retries(
                client, url, params=params, settings=settings, what=WHAT, sleep=sleep
            )
    except TimeoutError:
        raise SourceError(f"{WHAT} did not answer within {deadline:.0f} s for {date}") from None
    except SourceError as exc:
        raise SourceError(f"{exc} for {date}") from None
    if response.status_code != 200:
        raise SourceError(f"{WHAT} answered {response.status_code} for {date}")
    payload = _json_body(response)
    if not isinstance(payload, list):
        raise SourceError(
            f"{WHAT} returned a page that is not the papers list ({_describe(response, payload)})"
        )
    papers = parse_daily_papers(payload, settings.arxiv_url)
    if len(papers) < len(payload):
        log.warning(
            "Hugging Face list for %s: skipped %d malformed or duplicate items",
            date,
            len(payload) - len(papers),
        )
    return papers


async def fetch_hf_paper(
    client: httpx.AsyncClient,
    settings: SourceSettings,
    arxiv_id: str,
    *,
    sleep: Sleep = asyncio.sleep,
) -> Paper | None:
    """One paper's HF metadata, or None when HF does not have it or cannot say.

    Failures are logged, not raised: callers fall back to arXiv metadata.
    """
    try:
        parsed = parse_arxiv_id(arxiv_id)
    except InvalidArxivId:
        return None
    if parsed.old_style:
        # HF only indexes new-style IDs; asking would just be a 404.
        return None
    url = f"{settings.hf_endpoint}/api/papers/{parsed.base}"
    try:
        async with asyncio.timeout(total_deadline(settings)):
            response = await get_with_retries(
                client, url, params=None, settings=settings, what=WHAT, sleep=sleep
            )
    except (TimeoutError, SourceError) as exc:
        log.warning("Hugging Face paper %s: %s", parsed.base, str(exc) or "timed out")
        return None
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        log.warning("Hugging Face paper %s: answered %s", parsed.base, response.status_code)
        return None
    paper = parse_hf_paper(_json_body(response), settings.arxiv_url)
    if paper is None:
        log.warning("Hugging Face paper %s: answer is not a paper", parsed.base)
    elif paper.arxiv_id != parsed.base:
        log.warning("Hugging Face paper %s: answered for %s instead", parsed.base, paper.arxiv_id)
        return None
    return paper


# The Hub lists repos that cite a paper by their `arxiv:<id>` tag (HF's paper-pages docs:
# `/api/models?filter=arxiv:ID`, and the same for datasets and spaces). Kind -> (API path,
# page prefix).
HUB_LISTS = {
    "model": ("models", ""),
    "dataset": ("datasets", "datasets/"),
    "space": ("spaces", "spaces/"),
}
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+", re.ASCII)


async def fetch_paper_links(
    client: httpx.AsyncClient, settings: SourceSettings, paper: Paper
) -> tuple[Link, ...]:
    """The links of a deep dive's header: the code repository and project page (from the
    paper, else from HF's paper API) and up to `links_per_kind` Hugging Face models, datasets
    and Spaces that cite it, most liked first.

    All requests run at once, one attempt each, within `extras_timeout_seconds`: what did not
    answer in time is left out. Never raises; what failed is logged in one line."""
    try:
        parsed = parse_arxiv_id(paper.arxiv_id)
    except InvalidArxivId:
        return ()
    hub = settings.hf_endpoint
    failed: list[str] = []

    async def get(what: str, url: str, params: dict[str, str] | None) -> object:
        try:
            async with asyncio.timeout(settings.extras_timeout_seconds):
                response = await client.get(url, params=params)
        except TimeoutError:
            failed.append(f"{what} timed out")
            return None
        except httpx.HTTPError as exc:
            failed.append(f"{what} {type(exc).__name__}")
            return None
        if response.status_code != 200:
            if response.status_code != 404:  # 404: HF has not indexed the paper
                failed.append(f"{what} {response.status_code}")
            return None
        return _json_body(response)

    async def hf_paper() -> Paper | None:
        if paper.github_repo and paper.project_page:
            return paper
        if parsed.old_style:
            return None  # HF only indexes new-style IDs
        found = parse_hf_paper(
            await get("paper", f"{hub}/api/papers/{parsed.base}", None), settings.arxiv_url
        )
        return found if found is not None and found.arxiv_id == parsed.base else None

    async def repos(kind: str) -> list[Link]:
        path, prefix = HUB_LISTS[kind]
        if settings.links_per_kind == 0:
            return []
        params = {
            "filter": f"arxiv:{parsed.base}",
            "sort": "likes",
            "direction": "-1",
            "limit": str(settings.links_per_kind),
        }
        payload = await get(path, f"{hub}/api/{path}", params)
        out: list[Link] = []
        for item in payload if isinstance(payload, list) else []:
            repo = item.get("id") if isinstance(item, dict) else None
            if (
                isinstance(repo, str)
                and _REPO_ID.fullmatch(repo)
                and len(out) < settings.links_per_kind
            ):
                out.append(Link(kind, f"{hub}/{prefix}{repo}", repo))
        return out

    meta, models, datasets, spaces = await asyncio.gather(
        hf_paper(), repos("model"), repos("dataset"), repos("space")
    )
    if failed:
        log.warning("links of %s: Hugging Face %s; left out", parsed.base, ", ".join(failed))
    links: list[Link] = []
    code = paper.github_repo or (meta.github_repo if meta else None)
    project = paper.project_page or (meta.project_page if meta else None)
    if code:
        links.append(Link("code", code, _short(code)))
    if project and project != code:
        links.append(Link("project", project, _short(project)))
    return (*links, *models, *datasets, *spaces)


def _short(url: str) -> str:
    """A link's label: the URL without its scheme, `www.` and trailing slash."""
    return re.sub(r"^https?://(www\.)?", "", url).rstrip("/") or url


def _paper_from(paper: object, outer: object, arxiv_url: str) -> Paper | None:
    if not isinstance(paper, dict):
        return None
    outer_d: dict[str, Any] = outer if isinstance(outer, dict) else {}
    raw_id = paper.get("id")
    title = _clean(paper.get("title")) or _clean(outer_d.get("title"))
    if not isinstance(raw_id, str) or not title:
        return None
    try:
        parsed = parse_arxiv_id(raw_id)
    except InvalidArxivId:
        return None
    authors = paper.get("authors")
    names = tuple(
        name
        for a in (authors if isinstance(authors, list) else [])
        if isinstance(a, dict) and (name := _clean(a.get("name")))
    )
    upvotes = paper.get("upvotes")
    return Paper(
        arxiv_id=parsed.base,
        title=title,
        abstract=_clean(paper.get("summary")) or _clean(outer_d.get("summary")),
        authors=names,
        version=parsed.version,
        upvotes=upvotes if isinstance(upvotes, int) and not isinstance(upvotes, bool) else 0,
        # paper.publishedAt is the arXiv submission time; the outer one is skewed by 5 h.
        published=_text(paper.get("publishedAt")) or None,
        ai_summary=_clean(paper.get("ai_summary")) or None,
        github_repo=_web_url(paper.get("githubRepo")),
        project_page=_web_url(paper.get("projectPage")),
        abs_url=f"{arxiv_url}/abs/{parsed.base}",
        source="hf",
    )


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _clean(value: object) -> str:
    """Collapse all whitespace: 2024-era titles and abstracts were hard-wrapped."""
    return " ".join(value.split()) if isinstance(value, str) else ""


def _web_url(value: object) -> str | None:
    """Only plain web links: these are rendered as links, so no javascript: or tg: schemes."""
    text = _text(value)
    if re.match(r"https?://[^\s/]+", text, re.ASCII) and not any(c.isspace() for c in text):
        return text
    return None


def _json_body(response: httpx.Response) -> object:
    """The body as JSON, or None when it is not JSON (e.g. an HTML error page)."""
    content_type = response.headers.get("content-type", "").lower()
    if "html" in content_type or response.content.lstrip()[:1] == b"<":
        return None
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None


def _describe(response: httpx.Response, payload: object) -> str:
    content_type = response.headers.get("content-type", "").lower()
    if "html" in content_type or response.content.lstrip()[:1] == b"<":
        return "HTML"
    if payload is None:
        return "not JSON"
    return "a JSON object" if isinstance(payload, dict) else f"a JSON {type(payload).__name__}"
