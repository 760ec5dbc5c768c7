"""Where papers come from: Hugging Face Daily Papers, the arXiv API and arXiv full text.

This package holds what the three source modules share: the `SourceError` they raise, the
one way to build their HTTP client, and the bounded retry loop for plain GETs. Source
modules never follow redirects on their own and never log full request URLs.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

import httpx

from ..config import SourceSettings

log = logging.getLogger(__name__)

# Transient answers worth another try; anything else is final.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Never wait longer than this for a Retry-After; past it the source is "down, try later".
MAX_RETRY_AFTER_SECONDS = 60.0
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 8.0

Sleep = Callable[[float], Awaitable[object]]


class SourceError(Exception):
    """A source could not give an answer. `str()` is one short line without URLs."""


def quiet_http_logs() -> None:
    """httpx logs every request URL at INFO; Telegram puts its token in the URL, so keep it quiet."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


# Importing the sources is enough to quiet httpx, whoever builds the client.
quiet_http_logs()


def make_http_client(settings: SourceSettings) -> httpx.AsyncClient:
    """The client every source uses: our User-Agent, finite timeouts, no redirects."""
    quiet_http_logs()
    timeout = httpx.Timeout(settings.timeout_seconds, connect=min(settings.timeout_seconds, 10.0))
    return httpx.AsyncClient(
        headers={"User-Agent": settings.user_agent},
        timeout=timeout,
        # Redirects are followed by hand, same origin only (see fulltext), so an answer can
        # never send us to another host.
        follow_redirects=False,
        limits=httpx.Limits(max_connections=10, max_keepalive_connections=5),
    )


def total_deadline(settings: SourceSettings) -> float:
    """Wall-clock cap on one logical fetch, retries and backoff included.

    httpx's timeouts are per read, so a server that drips bytes could hold a request open
    forever; the deadline bounds it.
    """
    return settings.timeout_seconds * (settings.retries + 1) + BACKOFF_MAX_SECONDS


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The Retry-After header as seconds (delta or HTTP date), or None when absent/garbled."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isascii() and value.replace(".", "", 1).isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff for attempt 0, 1, 2, ...: 0.5 s, 1 s, 2 s ... capped."""
    return min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt)


async def get_with_retries(
    client: httpx.AsyncClient,
    url: str,
    *,
    params: Mapping[str, str] | None,
    retries: int,
    what: str,
    sleep: Sleep = asyncio.sleep,
) -> httpx.Response:
    """GET, retrying connect errors, timeouts, 5xx and 429 at most `retries` times.

    Returns the first non-retryable response, or the last one once retries are spent.
    Raises SourceError naming `what` (e.g. "Hugging Face") when no answer ever came.
    The caller puts the total deadline around this.
    """
    attempt = 0
    while True:
        try:
            response = await client.get(url, params=params)
        except httpx.TimeoutException:
            failure = f"{what} did not answer in time"
        except httpx.TransportError as exc:
            failure = f"{what} is unreachable ({type(exc).__name__})"
        else:
            if response.status_code not in RETRY_STATUSES or attempt >= retries:
                return response
            delay = retry_after_seconds(response.headers)
            if delay is not None and delay > MAX_RETRY_AFTER_SECONDS:
                # It asked for a long pause: report it rather than sit on the caller.
                return response
            delay = max(delay or 0.0, backoff_seconds(attempt))
            log.info("%s answered %s; retrying in %.1f s", what, response.status_code, delay)
            attempt += 1
            await sleep(delay)
            continue
        if attempt >= retries:
            raise SourceError(failure)
        log.info("%s; retrying", failure)
        await sleep(backoff_seconds(attempt))
        attempt += 1
