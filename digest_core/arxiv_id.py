"""arXiv identifiers: the one gate every user- or source-supplied ID passes through.

`parse_arxiv_id` turns the forms people paste (bare IDs, `arXiv:` prefixes, abs/pdf/html
URLs) into a canonical `ArxivId`, and rejects everything else with `InvalidArxivId`. Every
URL the bot builds towards arXiv or Hugging Face is built from an `ArxivId`, never from the
raw text, so path tricks, other hosts and look-alike Unicode digits cannot reach the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Longer input is rejected before any regex runs: the longest legal form (an https URL to
# an old-style versioned PDF) is well under this.
MAX_INPUT_CHARS = 200

_EXAMPLE = "expected e.g. 2602.14941 or hep-th/9901001"
_ECHO_CHARS = 40

# New style: YYMM.NNNN (0704-1412) or YYMM.NNNNN (1501 on). Ranges are checked in code.
# re.ASCII everywhere: in Python `\d` and `\s` would also match full-width and Arabic-Indic
# digits, which must never pass as an ID.
_NEW = r"(?P<yymm>[0-9]{4})\.(?P<num>[0-9]{4,5})"
# Old style: archive[.SC]/YYMMNNN, e.g. hep-th/9901001, math.GT/0309136. The subject class
# (.GT) is not part of the identifier: math.GT/0309136 is math/0309136, the form arXiv's API
# asks for and answers with, so it is dropped from the canonical ID.
_OLD = r"(?P<archive>[a-z]+(?:-[a-z]+)?)(?P<subject>\.[A-Z]{2})?/(?P<old>[0-9]{7})"
_VERSION = r"(?:v(?P<version>[1-9][0-9]{0,3}))?"
_ID = re.compile(rf"(?:{_NEW}|{_OLD}){_VERSION}", re.ASCII)

# The URL forms we accept. The host is matched exactly (no `arxiv.org.evil.example`), and
# after the ID only an optional `.pdf` and one trailing slash may follow: no query, no
# fragment, no further path segments.
_URL = re.compile(
    r"(?:https?://)?(?:www\.|export\.)?arxiv\.org/(?:abs|pdf|html)/(?P<rest>[^?#]+?)(?:\.pdf)?/?",
    re.ASCII | re.IGNORECASE,
)
_PREFIX = re.compile(r"arxiv:", re.ASCII | re.IGNORECASE)


class InvalidArxivId(ValueError):
    """The text is not an arXiv ID. `str()` is one short line that is safe to show a user."""

    def __init__(self, text: str) -> None:
        self.text = text[:MAX_INPUT_CHARS]
        shown = _safe_echo(text)
        message = (
            f"not an arXiv ID: '{shown}' ({_EXAMPLE})"
            if shown
            else f"no arXiv ID given ({_EXAMPLE})"
        )
        super().__init__(message)


@dataclass(frozen=True)
class ArxivId:
    """A validated arXiv ID. `base` is the bare ID; `version` is None for "latest"."""

    base: str
    version: int | None = None

    def __str__(self) -> str:
        return f"{self.base}v{self.version}" if self.version else self.base

    @property
    def old_style(self) -> bool:
        """Old-style IDs (before April 2007) contain a slash; Hugging Face cannot index them."""
        return "/" in self.base


def parse_arxiv_id(text: str) -> ArxivId:
    """Canonicalise one arXiv ID from the forms users paste. Raises InvalidArxivId."""
    if not isinstance(text, str) or len(text) > MAX_INPUT_CHARS:
        raise InvalidArxivId(str(text)[:MAX_INPUT_CHARS] if isinstance(text, str) else "")
    # Only ASCII whitespace is stripped: a zero-width or other exotic space stays in and fails.
    candidate = text.strip(" \t\r\n")
    if not candidate.isascii():
        raise InvalidArxivId(text)
    url = _URL.fullmatch(candidate)
    if url:
        candidate = url.group("rest")
    elif _PREFIX.match(candidate):
        # "arXiv: 2401.12345" is how some citation styles print it.
        candidate = candidate[len("arxiv:") :].lstrip(" ")
    match = _ID.fullmatch(candidate)
    if not match or not _plausible(match):
        raise InvalidArxivId(text)
    version = int(match.group("version")) if match.group("version") else None
    if match.group("old"):
        base = f"{match.group('archive')}/{match.group('old')}"
    else:
        base = f"{match.group('yymm')}.{match.group('num')}"
    return ArxivId(base=base, version=version)


def _plausible(match: re.Match[str]) -> bool:
    """Check the date part: a real month, and the number width arXiv used that month."""
    if match.group("yymm"):
        yymm = match.group("yymm")
        if not 1 <= int(yymm[2:]) <= 12:
            return False
        if len(match.group("num")) == 4:
            return "0704" <= yymm <= "1412"
        return yymm >= "1501"
    # Old style ran from August 1991 to March 2007.
    yymm = match.group("old")[:4]
    if not 1 <= int(yymm[2:]) <= 12:
        return False
    return yymm >= "9108" or yymm <= "0703"


def _safe_echo(text: str) -> str:
    """The input as one short printable line: no newlines, controls, bidi or markup tricks."""
    cleaned = "".join(
        ch if ch == " " or (ch.isprintable() and ch not in "<>&`'") else "?"
        for ch in text[: _ECHO_CHARS + 1]
    ).strip()
    if len(cleaned) > _ECHO_CHARS:
        cleaned = cleaned[: _ECHO_CHARS - 1] + "…"
    return cleaned
