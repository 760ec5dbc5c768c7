"""Logging set-up: one place, once, with every secret scrubbed from every line, and no flood.

httpx logs request URLs at INFO, and Telegram puts the bot token in the URL path, so httpx
is held at WARNING; the redacting filter is the second line of defence for anything else.
A warning or error that repeats (a hostile client, a platform outage, asyncio's accept errors)
is written once per interval; the next one after the interval says how many were held back.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Iterable

_TOKEN_SHAPES = re.compile(
    r"(xox[abprs]-[0-9A-Za-z-]+|xapp-[0-9A-Za-z-]+|sk-[A-Za-z0-9_-]{8,}|bot[0-9]+:[A-Za-z0-9_-]{20,}"
    r"|\b[0-9]{6,12}:[A-Za-z0-9_-]{30,}"
    # Slack's legacy verification token travels in every slash-command body as token=...
    r"|(?<=token=)[A-Za-z0-9]{12,})"
)


class RedactingFilter(logging.Filter):
    """Replaces known secret values and token-shaped strings in every record with ***."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return _TOKEN_SHAPES.sub("***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg = self.scrub(message)
        record.args = None
        return True


_DIGITS = re.compile(r"[0-9]+")


class RepeatFilter(logging.Filter):
    """Lets through the first of a run of identical warnings or errors per `interval` seconds.

    "Identical" means the same logger, level, exception type and first line of the message,
    numbers aside (a socket's descriptor, a port, a count): two failures naming different
    destinations are both written. The first record after the interval carries the count
    held back.
    Records below WARNING pass untouched (progress lines are not errors and do not flood).
    """

    MAX_KEYS = 2048  # distinct kinds remembered; beyond it the oldest are forgotten

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._seen: dict[tuple[str, int, str, str], list[float]] = {}  # key -> [start, held]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.interval <= 0 or record.levelno < logging.WARNING:
            return True
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        first = _DIGITS.sub("#", record.getMessage().split("\n", 1)[0][:300])
        key = (record.name, record.levelno, first, exc)
        now = self.clock()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return False
        if entry is not None and entry[1]:
            # No "%" in the suffix, so the template still formats with its arguments.
            record.msg = (
                f"{record.msg} [{int(entry[1])} more like this in the last {now - entry[0]:.0f} s]"
            )
        if len(self._seen) >= self.MAX_KEYS and key not in self._seen:
            self._seen.pop(next(iter(self._seen)))
        self._seen[key] = [now, 0]
        return True


def configure_logging(
    secrets: Iterable[str] = (), level: int = logging.WARNING, repeat_seconds: float = 60.0
) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_digestbot", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._digestbot = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # The repeat filter reads the message template, so it runs before redaction rewrites it.
    handler.addFilter(RepeatFilter(repeat_seconds))
    handler.addFilter(RedactingFilter(secrets))
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs URLs (Telegram's hold the token); Bolt logs whole request bodies of rejected
    # Slack requests (they hold the verification token): both stay at WARNING even with -v.
    for noisy in (
        "httpx",
        "httpcore",
        "httpx2",
        "httpcore2",
        "openai",
        "telegram.ext.Updater",
        "slack_bolt",
    ):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
