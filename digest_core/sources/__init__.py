"""Where papers come from: Hugging Face Daily Papers, the arXiv API and arXiv full text.

This package holds what the three source modules share: the `SourceError` they raise, the
one way to build their HTTP client, and plain GETs under the retry policy (digest_core.retry). Source
modules never follow redirects on their own and never log full request URLs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import httpx

from ..config import SourceSettings
from ..proxy import ProxyRoutes, RoutedHttpxTransport
from ..retry import RetryPolicy, Sleep, TryAgain, retry_after

log = logging.getLogger(__name__)

# Transient answers worth another try; anything else is final.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class SourceError(Exception):
    """A source could not give an answer. `str()` is one short line without URLs."""


def quiet_http_logs() -> None:
    """httpx logs every request URL at INFO; Telegram puts its token in the URL, so keep it quiet."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


# Importing the sources is enough to quiet httpx, whoever builds the client.
quiet_http_logs()


def make_http_client(
    settings: SourceSettings, routes: ProxyRoutes | None = None
) -> httpx.AsyncClient:
    """The client every source uses: our User-Agent, finite timeouts, no redirects, and the
    proxy rule of digest_core.proxy (`routes`, by default the process environment's)."""
    quiet_http_logs()
    timeout = httpx.Timeout(settings.timeout_seconds, connect=min(settings.timeout_seconds, 10.0))
    return httpx.AsyncClient(
        headers={"User-Agent": settings.user_agent},
        timeout=timeout,
        # Redirects are followed by hand, same origin only (see fulltext), so an answer can
        # never send us to another host.
        follow_redirects=False,
        # One client reaches several hosts (Hugging Face or its mirror, arXiv), so the proxy is
        # chosen per request; an explicit transport also turns off httpx's own reading of the
        # proxy variables, which differs from ours.
        transport=RoutedHttpxTransport(
            routes, limits=httpx.Limits(max_connections=10, max_keepalive_connections=5)
        ),
    )


def total_deadline(settings: SourceSettings) -> float:
    """Wall-clock cap on one logical fetch, retries and backoff included.

    httpx's timeouts are per read, so a server that drips bytes could hold a request open
    forever; the deadline bounds it.
    """
    return settings.timeout_seconds * (settings.retries + 1) + settings.retry.backoff_max_seconds


def source_policy(settings: SourceSettings) -> RetryPolicy:
    """The retry policy of a source request: `retries` retries, within the total deadline."""
    return RetryPolicy.from_settings(
        settings.retry, attempts=settings.retries + 1, deadline=total_deadline(settings)
    )


async def get_with_retries(
    client: httpx.AsyncClient,
    url: str,
    *,
    params: Mapping[str, str] | None,
    settings: SourceSettings,
    what: str,
    sleep: Sleep = asyncio.sleep,
) -> httpx.Response:
    """GET, retrying connect errors, timeouts, 5xx and 429 by the source policy.

    Returns the first non-retryable response, or the last one once retries are spent (or when
    it asked for a wait longer than the policy's cap). Raises SourceError naming `what`
    (e.g. "Hugging Face") when no answer ever came. The caller puts the total deadline around
    this.
    """

    async def attempt(_: int) -> httpx.Response:
        try:
            response = await client.get(url, params=params)
        except httpx.TimeoutException:
            raise TryAgain(f"{what} did not answer in time") from None
        except httpx.TransportError as exc:
            raise TryAgain(f"{what} is unreachable ({type(exc).__name__})") from None
        if response.status_code in RETRY_STATUSES:
            wait = retry_after(response.headers)
            raise TryAgain(f"{what} answered {response.status_code}", wait=wait, value=response)
        return response

    try:
        return await source_policy(settings).run(attempt, what=what, sleep=sleep)
    except TryAgain as exc:
        if exc.value is not None:
            return exc.value  # the last answer: the caller reports its status
        raise SourceError(exc.reason) from None
