"""Logging set-up: one place, once, with every secret scrubbed from every line.

httpx logs request URLs at INFO, and Telegram puts the bot token in the URL path, so httpx
is held at WARNING; the redacting filter is the second line of defence for anything else.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

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


def configure_logging(secrets: Iterable[str] = (), level: int = logging.WARNING) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_digestbot", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._digestbot = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
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
