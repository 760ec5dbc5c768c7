"""The one retry policy for every outside call: bounded attempts, jittered exponential backoff,
Retry-After honoured up to a cap, and a total deadline. Built on tenacity.

Callers say what a failure is, the policy says whether and when to try again:

* an attempt raises an exception that `retryable(exc)` accepts (by default `TryAgain`);
* the wait before retry n (1, 2, ...) is `backoff_base × 2^(n-1)`, capped at `backoff_max`,
  times a random factor in [1, 1 + jitter] (never sooner than the plain backoff, so spacing
  rules such as arXiv's 3 s hold);
* a server's requested wait (`exc.wait`, from `retry_after()`) replaces the backoff when it is
  longer; a request longer than `retry_after_cap` ends the retries at once (the caller reports
  "asked to wait N s" rather than sit on a job);
* no retry starts whose wait would cross `deadline` seconds from the first attempt;
* when the attempts run out, the last exception is raised as it is.

`sleep` and `clock` are injectable so that tests (and the scheduler, which renews a lease
while it waits) drive time themselves. The retry settings (`[retry]` in the config file) set
the shape; each caller sets its own attempt count from its own slice (e.g. `sources.retries`).

Layers are never stacked: the openai client's own retries are off (llm.py drives this policy),
and slack_sdk's retry handlers use only `retry_after()` from here.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from digest_core.config import RetrySettings

log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[object]]


class TryAgain(Exception):
    """A transient failure of one attempt. `wait`: seconds the server asked for (or None);
    `value`: what the caller hands back if no attempt is left (e.g. the last response)."""

    def __init__(self, reason: str, *, wait: float | None = None, value: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait
        self.value = value


def retry_after(headers: Mapping[str, Any]) -> float | None:
    """Seconds a server asked us to wait, or None when absent or garbled.

    Reads `retry-after-ms` (OpenAI-compatible servers), then `Retry-After` as delta-seconds or
    an HTTP date. Header names are matched case-insensitively; a list value (slack_sdk) counts
    by its first item. The one Retry-After parser of the project.
    """
    lowered = {str(k).lower(): v for k, v in headers.items()}

    def header(name: str) -> str:
        value = lowered.get(name)
        if isinstance(value, list | tuple):
            value = value[0] if value else None
        return str(value).strip() if value is not None else ""

    raw_ms = header("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = header("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# The time (time.monotonic()) by which the current task's work must be over: a person's
# request sets it once, and every call made for that request (LLM attempts and the waits
# between them) shares what is left of it. None: each call is bounded by its own policy only.
DEADLINE: ContextVar[float | None] = ContextVar("digestbot_deadline", default=None)


@contextmanager
def deadline_in(seconds: float | None) -> Iterator[None]:
    """Give the work run inside this block (in this task and the tasks it starts) a total
    deadline `seconds` from now; an earlier deadline already set stays."""
    if seconds is None:
        yield
        return
    at = time.monotonic() + seconds
    current = DEADLINE.get()
    token = DEADLINE.set(at if current is None else min(current, at))
    try:
        yield
    finally:
        DEADLINE.reset(token)


def time_left() -> float | None:
    """Seconds left before the current task's DEADLINE (may be <= 0), or None if none is set."""
    at = DEADLINE.get()
    return None if at is None else at - time.monotonic()


def _is_try_again(exc: BaseException) -> bool:
    return isinstance(exc, TryAgain)


@dataclass(frozen=True)
class RetryPolicy:
    """How one kind of call is retried. Build it with `from_settings`, then adjust with
    `with_(...)` for the caller's own attempt count or spacing."""

    attempts: int = 3  # total tries, the first included
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    jitter: float = 0.2  # the backoff is stretched by a random factor in [1, 1 + jitter]
    retry_after_cap: float = 60.0
    deadline: float | None = None  # seconds from the first attempt; None: attempts alone bound it

    @classmethod
    def from_settings(cls, settings: RetrySettings, **changes: Any) -> RetryPolicy:
        policy = cls(
            backoff_base=settings.backoff_base_seconds,
            backoff_max=settings.backoff_max_seconds,
            jitter=settings.jitter,
            retry_after_cap=settings.max_retry_after_seconds,
        )
        return replace(policy, **changes)

    def with_(self, **changes: Any) -> RetryPolicy:
        return replace(self, **changes)

    def within(self, seconds: float | None) -> RetryPolicy:
        """This policy with its total deadline cut to `seconds` when that is shorter (a
        request's DEADLINE, see `time_left`)."""
        if seconds is None or (self.deadline is not None and self.deadline <= seconds):
            return self
        return replace(self, deadline=max(0.0, seconds))

    def backoff(self, retry: int) -> float:
        """The jittered wait before retry number `retry` (1 for the first retry)."""
        plain = min(self.backoff_max, self.backoff_base * 2 ** max(0, retry - 1))
        return plain * (1.0 + self.jitter * random.random())

    def delay(self, retry: int, asked: float | None) -> float:
        """The wait before `retry`: the backoff, or the server's request when longer."""
        return max(asked or 0.0, self.backoff(retry))

    def refuses(self, asked: float | None) -> bool:
        """A requested wait too long to sit through: give up now and say so."""
        return asked is not None and asked > self.retry_after_cap

    async def run(
        self,
        attempt: Callable[[int], Awaitable[T]],
        *,
        what: str,
        retryable: Callable[[BaseException], bool] = _is_try_again,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> T:
        """`await attempt(n)` for n = 1, 2, ... until it returns; raise its last exception when
        the policy stops. An exception `retryable` rejects is raised at once. `what` names the
        call in log lines (never a URL or a secret)."""
        started = clock()

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= self.attempts:
                return True
            if self.refuses(_asked(state)):
                return True
            if self.deadline is None:
                return False
            return clock() - started + (state.upcoming_sleep or 0.0) > self.deadline

        def wait(state: RetryCallState) -> float:
            return self.delay(state.attempt_number, _asked(state))

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.info(
                "%s: attempt %d failed (%s); retrying in %.1f s",
                what,
                state.attempt_number,
                _short(exc),
                state.upcoming_sleep,
            )

        retrying = AsyncRetrying(
            sleep=sleep,  # type: ignore[arg-type]
            stop=stop,
            wait=wait,
            retry=retry_if_exception(retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        async for state in retrying:
            with state:
                return await attempt(state.retry_state.attempt_number)
        raise AssertionError("unreachable: tenacity re-raises the last failure")  # pragma: no cover


def _asked(state: RetryCallState) -> float | None:
    exc = state.outcome.exception() if state.outcome else None
    wait = getattr(exc, "wait", None)
    return float(wait) if isinstance(wait, int | float) else None


def _short(exc: BaseException | None) -> str:
    # Retried exceptions are the project's own, whose text is written to be safe to log.
    text = str(exc) if exc is not None else ""
    return (text or type(exc).__name__)[:200]
