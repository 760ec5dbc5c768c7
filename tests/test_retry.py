"""The one retry policy (digest_core.retry) against the fake Hugging Face over real HTTP:
Retry-After honoured and capped, the total deadline, bounded jitter, one header parser.

Time is a fake clock that only the policy's sleeps move, so nothing here waits or reads the
wall clock.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from fakes.papers import FakeHF

from digest_core.config import RetrySettings, SourceSettings
from digest_core.retry import RetryPolicy, TryAgain, retry_after
from digest_core.sources import SourceError, get_with_retries, make_http_client

DAY = "2026-01-28"


class FakeTime:
    """A clock and a sleep: sleeping moves the clock and records the wait."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
async def hf() -> AsyncIterator[FakeHF]:
    async with FakeHF.with_fixture_days() as fake:
        yield fake  # type: ignore[misc]


def settings_for(hf: FakeHF, *, retries: int = 2, **retry: float) -> SourceSettings:
    return SourceSettings(
        hf_endpoint=hf.url,
        arxiv_api_url=f"{hf.url}/api/query",
        arxiv_url=hf.url,
        retries=retries,
        retry=RetrySettings(**retry),
    )


async def get_day(
    client: httpx.AsyncClient, hf: FakeHF, settings: SourceSettings, time: FakeTime
) -> httpx.Response:
    return await get_with_retries(
        client,
        f"{hf.url}/api/daily_papers",
        params={"date": DAY},
        settings=settings,
        what="Hugging Face",
        sleep=time.sleep,
    )


async def test_retry_after_is_honoured_over_a_shorter_backoff(hf: FakeHF) -> None:
    hf.fail_times, hf.retry_after = 2, "7"
    settings = settings_for(hf, backoff_base_seconds=0.5, jitter=0.0)
    time = FakeTime()
    async with make_http_client(settings) as client:
        response = await get_day(client, hf, settings, time)
    assert response.status_code == 200
    assert time.slept == [7.0, 7.0]
    assert len(hf.daily_requests()) == 3


async def test_backoff_wins_over_a_shorter_retry_after(hf: FakeHF) -> None:
    hf.fail_times, hf.retry_after = 1, "0"
    settings = settings_for(hf, backoff_base_seconds=2.0, jitter=0.0)
    time = FakeTime()
    async with make_http_client(settings) as client:
        await get_day(client, hf, settings, time)
    assert time.slept == [2.0]


async def test_retry_after_past_the_cap_ends_the_retries_at_once(hf: FakeHF) -> None:
    hf.fail_times, hf.retry_after = 5, "120"
    settings = settings_for(hf, max_retry_after_seconds=60)
    time = FakeTime()
    async with make_http_client(settings) as client:
        response = await get_day(client, hf, settings, time)
    assert response.status_code == 503  # handed back for the caller to report
    assert time.slept == [] and len(hf.daily_requests()) == 1


async def test_deadline_stops_retries_before_a_wait_would_cross_it(hf: FakeHF) -> None:
    hf.fail_times = 100
    time = FakeTime()
    policy = RetryPolicy(attempts=10, backoff_base=1.0, backoff_max=1.0, jitter=0.0, deadline=3.5)
    async with httpx.AsyncClient() as client:

        async def attempt(_: int) -> httpx.Response:
            response = await client.get(f"{hf.url}/api/daily_papers", params={"date": DAY})
            if response.status_code == 503:
                raise TryAgain("Hugging Face answered 503")
            return response

        with pytest.raises(TryAgain, match="answered 503"):
            await policy.run(attempt, what="test", sleep=time.sleep, clock=time.clock)
    # Waits at 1, 2, 3 s; a fourth would end at 4 s, past the 3.5 s deadline.
    assert time.slept == [1.0, 1.0, 1.0]
    assert len(hf.daily_requests()) == 4


async def test_attempts_bound_the_retries_and_the_last_failure_is_one_line(hf: FakeHF) -> None:
    hf.fail_times = 100
    settings = settings_for(hf, retries=3, jitter=0.0)
    time = FakeTime()
    async with make_http_client(settings) as client:
        response = await get_day(client, hf, settings, time)
    assert response.status_code == 503 and len(hf.daily_requests()) == 4
    assert time.slept == [0.5, 1.0, 2.0]  # exponential from backoff_base_seconds


async def test_unreachable_raises_source_error_after_the_retries() -> None:
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    settings = SourceSettings(hf_endpoint=url, retries=1)
    time = FakeTime()
    async with make_http_client(settings) as client:
        with pytest.raises(SourceError, match=r"^Hugging Face is unreachable \(ConnectError\)$"):
            await get_with_retries(
                client,
                f"{url}/api/daily_papers",
                params=None,
                settings=settings,
                what="Hugging Face",
                sleep=time.sleep,
            )
    assert len(time.slept) == 1


async def test_jittered_waits_stay_within_their_bounds(hf: FakeHF) -> None:
    hf.fail_times = 100
    settings = settings_for(hf, retries=5, backoff_base_seconds=1.0, backoff_max_seconds=4.0)
    jitter = settings.retry.jitter
    time = FakeTime()
    async with make_http_client(settings) as client:
        await get_day(client, hf, settings, time)
    plain = [1.0, 2.0, 4.0, 4.0, 4.0]  # capped at backoff_max_seconds
    assert len(time.slept) == len(plain)
    for waited, base in zip(time.slept, plain, strict=True):
        assert base <= waited <= base * (1 + jitter)


def test_jitter_spreads_and_never_goes_below_the_plain_backoff() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=8.0, jitter=0.25)
    waits = [policy.backoff(2) for _ in range(200)]
    assert all(2.0 <= w <= 2.5 for w in waits)
    assert len(set(waits)) > 1  # it is jittered at all
    assert RetryPolicy(jitter=0.0).backoff(3) == 2.0


def test_one_retry_after_parser_reads_every_form() -> None:
    later = datetime.now(UTC) + timedelta(seconds=120)
    assert retry_after({"Retry-After": "3"}) == 3.0
    assert retry_after({"retry-after": "1.5"}) == 1.5
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"Retry-After": ["4"]}) == 4.0  # slack_sdk's header lists
    from_date = retry_after({"Retry-After": format_datetime(later, usegmt=True)})
    assert from_date is not None and 100 < from_date <= 120
    assert retry_after({"Retry-After": "soon"}) is None
    assert retry_after({}) is None
    assert retry_after({"Retry-After": "-5"}) == 0.0
