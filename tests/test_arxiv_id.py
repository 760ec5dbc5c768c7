"""parse_arxiv_id: every accepted form canonicalises, every bad input is one safe error line."""

from __future__ import annotations

import pytest

from digest_core.arxiv_id import ArxivId, InvalidArxivId, parse_arxiv_id

ACCEPTED = [
    ("2602.14941", "2602.14941", None),
    ("2602.14941v2", "2602.14941", 2),
    ("2401.12345v12", "2401.12345", 12),
    ("arXiv:2602.14941", "2602.14941", None),
    ("ARXIV:2602.14941v3", "2602.14941", 3),
    ("arxiv: 2602.14941", "2602.14941", None),
    ("https://arxiv.org/abs/2602.14941", "2602.14941", None),
    ("https://arxiv.org/abs/2602.14941v2", "2602.14941", 2),
    ("https://arxiv.org/pdf/2401.12345v1", "2401.12345", 1),
    ("https://arxiv.org/pdf/2401.12345v1.pdf", "2401.12345", 1),
    ("https://arxiv.org/pdf/2401.12345.pdf", "2401.12345", None),
    ("https://arxiv.org/html/2401.12345v2", "2401.12345", 2),
    ("https://arxiv.org/abs/2401.12345/", "2401.12345", None),
    ("http://arxiv.org/abs/2401.12345", "2401.12345", None),
    ("https://www.arxiv.org/abs/2401.12345", "2401.12345", None),
    ("https://export.arxiv.org/abs/2401.12345", "2401.12345", None),
    ("arxiv.org/abs/2401.12345", "2401.12345", None),
    ("  2401.12345 \n", "2401.12345", None),
    ("\t2401.12345v1\t", "2401.12345", 1),
    ("0704.0001", "0704.0001", None),
    ("0706.0001v2", "0706.0001", 2),
    ("1412.9999", "1412.9999", None),
    ("1501.00001v1", "1501.00001", 1),
    ("hep-th/9901001", "hep-th/9901001", None),
    ("math.GT/0309136", "math/0309136", None),  # the subject class is not part of the ID
    ("astro-ph/0601001", "astro-ph/0601001", None),
    ("quant-ph/0201082v1", "quant-ph/0201082", 1),
    ("arXiv:hep-th/9901001v2", "hep-th/9901001", 2),
    ("https://arxiv.org/abs/hep-th/9901001", "hep-th/9901001", None),
    ("https://arxiv.org/pdf/math.GT/0309136v1.pdf", "math/0309136", 1),
]


@pytest.mark.parametrize(("text", "base", "version"), ACCEPTED)
def test_accepted_forms(text: str, base: str, version: int | None) -> None:
    parsed = parse_arxiv_id(text)
    assert parsed == ArxivId(base, version)
    assert str(parsed) == (f"{base}v{version}" if version else base)


REJECTED = [
    "",
    "   ",
    "2401.123",
    "24011.2345",
    "2401.12345v",
    "2401.12345v0",
    "2401.123456",
    "2413.12345",  # month 13
    "2400.12345",  # month 00
    "1412.12345",  # 5 digits before 1501
    "0808.05394",  # 5 digits in the 4-digit era (arXiv answers it with nothing)
    "1501.0001",  # 4 digits after 1412
    "0703.0001",  # before the new scheme started
    "0000.0000",
    "abc",
    "2" * 10_000,
    "x" * 10_000,
    "2401.12345 2401.12346",
    "2401.12345,2401.12346",
    "2401.12345\n2401.12346",
    " ".join(["2401.12345"] * 50),
    "../../etc/passwd",
    "2401.12345/../..",
    "2401.12345/../../api/query?search_query=all:x",
    "2401.12345?x=1",
    "2401.12345#x",
    "2401.12345%2F..%2F",
    "2401.12345%2F",
    "2512.24880/sso-callback",
    "https://arxiv.org/abs/2401.12345?x=1",
    "https://arxiv.org/abs/2401.12345#frag",
    "https://arxiv.org/abs/2401.12345/../../x",
    "https://arxiv.org.evil.example/abs/2401.12345",
    "https://evil.example/arxiv.org/abs/2401.12345",
    "https://user@arxiv.org/abs/2401.12345",
    "https://arxiv.org:8080/abs/2401.12345",
    "https://arxiv.org/list/2401.12345",
    "ftp://arxiv.org/abs/2401.12345",
    "http://169.254.169.254/latest/meta-data/",
    "http://localhost:8080/",
    "http://localhost/",
    "file:///etc/passwd",
    "２４０１．１２３４５",  # full-width digits and dot
    "٢٤٠١.١٢٣٤٥",  # Arabic-Indic digits
    "2401.1234\u0665",  # one Arabic-Indic digit at the end
    "2401.\u200b12345",  # zero-width space inside
    "\u200b2401.12345",
    "\u202e2401.12345",  # right-to-left override
    "2401.12345\n<!channel>",
    "2401.12345 <!channel>",
    "HEP-TH/9901001",  # archive names are lower-case
    "hep-th/990100",  # old style needs 7 digits
    "hep-th/9913001",  # month 13
    "hep_th/9901001",
    "math.gt/0309136",
    "hep-th/9901001v",
    "arXiv:",
    "arXiv:arXiv:2401.12345",
]


@pytest.mark.parametrize("text", REJECTED)
def test_rejected_inputs(text: str) -> None:
    with pytest.raises(InvalidArxivId) as info:
        parse_arxiv_id(text)
    _assert_safe_line(str(info.value))


def _assert_safe_line(message: str) -> None:
    assert "\n" not in message and "\r" not in message
    assert message.isprintable()
    assert len(message) <= 120
    assert "<!" not in message and "<" not in message
    assert "\u202e" not in message and "\u200b" not in message
    assert "expected e.g. 2602.14941 or hep-th/9901001" in message


def test_error_echoes_a_short_printable_prefix() -> None:
    with pytest.raises(InvalidArxivId) as info:
        parse_arxiv_id("2401.123")
    assert (
        str(info.value)
        == "not an arXiv ID: '2401.123' (expected e.g. 2602.14941 or hep-th/9901001)"
    )

    with pytest.raises(InvalidArxivId) as info:
        parse_arxiv_id("x" * 10_000)
    assert "x" * 39 + "…" in str(info.value)
    assert "x" * 41 not in str(info.value)

    with pytest.raises(InvalidArxivId) as info:
        parse_arxiv_id("")
    assert str(info.value).startswith("no arXiv ID given")


def test_newline_and_mention_are_neutralised_in_the_echo() -> None:
    with pytest.raises(InvalidArxivId) as info:
        parse_arxiv_id("2401.12345\n<!channel>")
    assert str(info.value) == (
        "not an arXiv ID: '2401.12345??!channel?' (expected e.g. 2602.14941 or hep-th/9901001)"
    )


def test_error_is_a_value_error() -> None:
    assert issubclass(InvalidArxivId, ValueError)


def test_old_style_flag() -> None:
    assert parse_arxiv_id("hep-th/9901001").old_style
    assert not parse_arxiv_id("2602.14941").old_style
