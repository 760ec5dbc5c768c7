"""The number and citation guard: what a model wrote, checked against what it read.

Every number a deep dive or an answer states must occur in the text the model was given, and
every section, table, figure or appendix it cites must exist in the paper. Whatever cannot be
found is marked in place with ⚠️ (and the posted text gets a footnote saying what the mark
means), so a wrong number is never passed on silently.

Pure functions, no I/O. Matching allows for formatting: 41.8 = 41.80, 1.5k = 1,500 = 1.5K,
7B = 7 billion, 85.3% = 0.853, thousands separators, unicode minus, ± and ranges (signs are
ignored: "drops by 0.3" restates "-0.3"). A number written with fewer decimals than the text
(41.8 for 41.83), with a scale suffix (1.5M for 1,532,000), or after "about"/"~"/"约" may be
the text's number rounded. Not checked, because they are not claims: list ordinals, "(1)"
enumerations, equation/algorithm/theorem numbers, arXiv IDs, URLs, and names with digits in
them ("GPT-4o", "Llama-3-8B") that occur in the text as written; a name that does not occur
has its numbers checked one by one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from digest_core.models import UNVERIFIED_NOTE as FOOTNOTES

MARK = "⚠️"  # FOOTNOTES (shown under a deep dive or answer with a mark) explain it

_CJK = re.compile("[\u3400-\u9fff\uf900-\ufaff]")


def footnote(language: str) -> str:
    """The line that explains the mark, in the deep dive's or answer's language."""
    return FOOTNOTES.get(language, FOOTNOTES["en"])


def language_of(text: str) -> str:
    """ "zh" for text with Chinese in it, else "en": picks the footnote of an answer."""
    return "zh" if _CJK.search(text) else "en"


@dataclass(frozen=True)
class Claim:
    """One number or citation the guard could not find. `text` is as written."""

    kind: str  # "number" | "citation"
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Grounding:
    """The checked text with every unverified claim marked, and the counts."""

    text: str
    checked: int
    failed: tuple[Claim, ...] = ()

    @property
    def unverified(self) -> int:
        return len(self.failed)


# -- numbers ------------------------------------------------------------------------------------

_SCALES: dict[str, Decimal] = {
    "k": Decimal(10) ** 3,
    "K": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "B": Decimal(10) ** 9,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "thousand": Decimal(10) ** 3,
    "million": Decimal(10) ** 6,
    "billion": Decimal(10) ** 9,
    "trillion": Decimal(10) ** 12,
    "千": Decimal(10) ** 3,
    "万": Decimal(10) ** 4,
    "亿": Decimal(10) ** 8,
}
_ONE = Decimal(1)
_PERCENT = Decimal("0.01")

# A number: thousands separators, decimals, an exponent, then a glued scale or multiplier
# suffix that is not the start of a word ("7B" yes, "5GB" is 5 with a unit).
_NUM = (
    r"(?P<mant>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"(?:[eE](?P<exp>[-+−]?\d+))?"
    r"(?:(?P<suf>[kKMBGT]|[xX×]|pp)(?![A-Za-z]))?"
)
_NUMBER = re.compile(_NUM)
_PLAIN = r"\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?(?:[kKMBGT]|[xX×]|pp)?"
_NUMBER_ONLY = re.compile(rf"{_PLAIN}(?:[-/]{_PLAIN})*")
# After a number: a percent sign, or a scale word.
_AFTER = re.compile(
    r"\s?(?P<pct>%|％|percent\b(?!age))"
    r"|\s?(?P<word>thousand|million|billion|trillion)\b"
    r"|(?P<cjk>[千万亿])"
)
# A run of letters, digits and the joiners of names and ranges ("Llama-3-8B", "ViT-B/16",
# "10-20", "1,500"). It starts and ends on a letter or digit.
_RUN = re.compile(
    r"(?<![A-Za-z0-9_])[A-Za-z0-9](?:(?:[A-Za-z0-9_.\-/+@]|(?<=\d),(?=\d{3}(?!\d)))*[A-Za-z0-9])?"
)
_HAS_DIGIT = re.compile(r"\d")
_APPROX = re.compile(
    r"(?:~|≈|∼|约|大约|近|超过|逾|接近|将近|\babout|\baround|\broughly|\bapproximately"
    r"|\bnearly|\balmost|\bover|\bmore than|\bless than|\bunder|\bup to|\bsome|>|<|≥|≤)"
    r"\s*\**\s*$",
    re.IGNORECASE,
)
_APPROX_AFTER = re.compile(r"^\s*(?:%\s*)?(?:左右|上下|多|or so\b|roughly\b|approximately\b)")

_WORD_NUMBERS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "twice": 2, "double": 2, "triple": 3, "half": 0.5,
    "dozen": 12, "single": 1, "once": 1, "both": 2, "pair": 2,
}  # fmt: skip
_WORD_NUMBER = re.compile(r"\b(" + "|".join(_WORD_NUMBERS) + r")\b", re.IGNORECASE)
_CJK_NUMBERS = dict(zip("一二两三四五六七八九十", (1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10), strict=True))
# LaTeX powers of ten as the paper writes them: $10^{-4}$, $2\times 10^{5}$.
_POWER = re.compile(
    r"(?:(?P<coef>\d+(?:\.\d+)?)\s*(?:\\times|\\cdot|×|\*|x)\s*)?10\s*\^\s*\{?\s*(?P<exp>[-−]?\d+)"
)


def _dec(text: str) -> Decimal | None:
    try:
        return Decimal(text.replace(",", "").replace("−", "-"))
    except InvalidOperation:
        return None


def _decimals(mantissa: str) -> int:
    return len(mantissa.split(".", 1)[1]) if "." in mantissa else 0


@dataclass(frozen=True)
class _Number:
    mantissa: Decimal  # as written, no exponent, no scale
    decimals: int
    exponent: int
    scale: Decimal
    percent: bool

    @property
    def value(self) -> Decimal:
        return abs(self.mantissa.scaleb(self.exponent) * self.scale)


def _parse(match: re.Match[str], after: str) -> tuple[_Number, int] | None:
    """The number at `match` and how many characters of `after` belong to it."""
    mantissa = _dec(match.group("mant"))
    if mantissa is None:
        return None
    exponent = int(match.group("exp").replace("−", "-")) if match.group("exp") else 0
    suffix = match.group("suf") or ""
    scale = _SCALES.get(suffix, _ONE)
    percent = False
    extra = 0
    tail = _AFTER.match(after)
    if tail and not suffix:
        extra = tail.end()
        if tail.group("pct"):
            percent = True
        else:
            scale = _SCALES[tail.group("word") or tail.group("cjk")]
    decimals = _decimals(match.group("mant"))
    return _Number(mantissa, decimals, exponent, scale, percent), extra


def _sane(value: Decimal) -> bool:
    """Within the range rounding can handle: no paper states a number outside it."""
    return value == 0 or Decimal("1e-12") <= value < Decimal("1e15")


def _quantize(value: Decimal, decimals: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP).normalize()


@dataclass
class _Source:
    """The numbers a source text states, as values, and its text for citation look-ups."""

    text: str
    labels: frozenset[str]
    values: set[Decimal] = field(default_factory=set)
    lowered: str = ""
    _rounded: dict[tuple[Decimal, int], set[Decimal]] = field(default_factory=dict)

    @classmethod
    def of(cls, text: str, labels: Iterable[str]) -> _Source:
        src = cls(text, frozenset(label.lower() for label in labels))
        src.lowered = " ".join(text.lower().split())
        values = src.values
        for match in _NUMBER.finditer(text):
            parsed = _parse(match, text[match.end() : match.end() + 12])
            if parsed is None:
                continue
            number = parsed[0]
            found = [abs(number.mantissa), abs(number.mantissa.scaleb(number.exponent))]
            found.append(number.value)
            if number.percent:
                found.append(number.value * _PERCENT)
            values.update(v for v in found if _sane(v))
        for match in _POWER.finditer(text):
            coef = _dec(match.group("coef") or "1") or _ONE
            power = abs(coef.scaleb(int(match.group("exp").replace("−", "-"))))
            if _sane(power):
                values.add(power)
        for word in _WORD_NUMBER.findall(text):
            values.add(Decimal(str(_WORD_NUMBERS[word.lower()])).normalize())
        for char in set(text) & set(_CJK_NUMBERS):
            values.add(Decimal(_CJK_NUMBERS[char]))
        return src

    def rounded(self, scale: Decimal, decimals: int) -> set[Decimal]:
        key = (scale, decimals)
        if key not in self._rounded:
            self._rounded[key] = {_quantize(v / scale, decimals) for v in self.values}
        return self._rounded[key]

    def has(self, number: _Number, approx: bool) -> bool:
        if number.value.normalize() in self.values:
            return True
        scales = [number.scale.scaleb(number.exponent)]
        if number.percent:
            scales.append(_PERCENT)  # 85.3% for a fraction the text writes 0.853
        target = abs(number.mantissa).normalize()
        for scale in scales:
            if scale == _PERCENT and (target / 100).normalize() in self.values:
                return True
            # Fewer decimals than the text, a scale suffix, or "about": a rounded number.
            if number.decimals or scale not in (_ONE, _PERCENT) or approx:
                if target in self.rounded(scale, number.decimals):
                    return True
        return False


# -- what is not a claim ------------------------------------------------------------------------

_SKIP = re.compile(
    r"https?://\S+"
    r"|\]\([^)\s]*\)"  # a Markdown link's target
    r"|`[^`\n]*https?://[^`\n]*`"
    r"|\b(?:arXiv:\s*)?\d{4}\.\d{4,5}(?:v\d+)?\b"
    r"|\b[a-z][a-z\-]+(?:\.[A-Z]{2})?/\d{7}(?:v\d+)?\b"
    # list ordinals at the start of a line: "1.", "2)", "3、", "**4.**"
    r"|(?m:^[ \t>]*(?:[-*+][ \t]+)?(?:\*\*)?\(?\d{1,2}[.)、](?!\d)(?:\*\*)?)"
    # enumerations and reference numbers: "(1)", "（2）", "[12]", "[3, 4]", "①"
    r"|[(（]\d{1,2}[)）]"
    r"|\[\d{1,3}(?:\s*[,–-]\s*\d{1,3})*\]"
    r"|[①-⑳]"
    # numbered things the guard does not track
    r"|\b(?:Eqs?\.|Equations?|Algorithms?|Alg\.|Theorems?|Thms?\.|Lemmas?|Propositions?"
    r"|Prop\.|Corollar(?:y|ies)|Definitions?|Def\.|Assumptions?|Lines?|Steps?|Stages?"
    r"|Phases?|Claims?|Remarks?|Examples?|Footnotes?|Rows?|Columns?|Cols?\.|Points?|Items?"
    r"|Parts?|Cases?|Questions?|Q)"
    r"\s*[(（]?\d+(?:\.\d+)*[)）]?"
    r"|(?:公式|式|算法|定理|引理|命题|推论|定义|假设|步骤|阶段|第)\s*[(（]?(?>\d+(?:\.\d+)*)[)）]?"
    r"(?!\s*[节章])",
    re.IGNORECASE,
)

# -- citations -----------------------------------------------------------------------------------

_ITEM = r"S?\d+(?:\.\d+)*[a-z]?"
_LIST = rf"{_ITEM}(?:\s*(?:,|and|&|or|–|-|to|、|和|与|及)\s*{_ITEM})*"
_CITATION = re.compile(
    rf"(?P<table>\b(?:[Tt]ables?|TABLES?|[Tt]abs?\.?)\s*(?P<table_n>{_LIST}))"
    rf"|(?P<figure>\b(?:[Ff]igures?|FIGURES?|[Ff]igs?\.?)\s*(?P<figure_n>{_LIST}))"
    rf"|(?P<section>(?:\b(?:[Ss]ections?|SECTIONS?|[Ss]ecs?\.?)|§§?)\s*(?P<section_n>{_LIST}))"
    r"|(?P<appendix>\b(?:[Aa]ppendi(?:x|ces)|App\.)\s*"
    r"(?P<appendix_n>[A-Z](?:\.\d+)*(?:\s*(?:,|and|&|–|-)\s*[A-Z](?:\.\d+)*)*)(?![A-Za-z]))"
    rf"|(?P<ztable>表\s*(?P<ztable_n>{_LIST}))"
    rf"|(?P<zfigure>图\s*(?P<zfigure_n>{_LIST}))"
    r"|(?P<zsection>第\s*(?P<zsection_n>\d+(?:\.\d+)*)\s*[节章])"
    r"|(?P<zsection2>(?P<zsection2_n>\d+\.\d+(?:\.\d+)*)\s*节)"
    r"|(?P<zappendix>附录\s*(?P<zappendix_n>[A-Z](?:\.\d+)*)(?![A-Za-z]))"
)
_KINDS = {
    "table": "table",
    "ztable": "table",
    "figure": "figure",
    "zfigure": "figure",
    "section": "section",
    "zsection": "section",
    "zsection2": "section",
    "appendix": "appendix",
    "zappendix": "appendix",
}
_CITED_ITEM = re.compile(r"S?\d+(?:\.\d+)*[a-z]?|[A-Z](?:\.\d+)*")
_MENTION = {
    "table": r"\b(?:table|tab\.)\s*{n}(?![\d.]\d)",
    "figure": r"\b(?:figure|fig\.)\s*{n}(?![\d.]\d)",
    "section": r"(?:\b(?:section|sec\.)\s*|§\s*){n}(?![\d.]\d)|(?m:^)#*\s*{n}\.?\s+(?-i:[A-Z])",
    "appendix": r"(?:\bappendix\s+|(?m:^)#+\s*){n}\b",
}


class Guard:
    """Checks model-written texts against one source text and the paper's labels."""

    def __init__(self, source: str, labels: Iterable[str] = ()) -> None:
        self._src = _Source.of(source, labels)
        # Section numbers can only be judged when the paper's sections are numbered.
        self._sections_known = any(label.startswith("section ") for label in self._src.labels)

    def check(self, text: str) -> Grounding:
        """`text` with every number and citation not found marked, and the counts."""
        masked: list[tuple[int, int]] = [m.span() for m in _SKIP.finditer(text)]
        failed: list[Claim] = []
        checked = 0

        for match in _CITATION.finditer(text):
            if _inside(match.start(), masked):
                continue
            group = next(g for g in _KINDS if match.group(g))
            kind = _KINDS[group]
            masked.append(match.span())
            items_at = match.start(f"{group}_n")
            for item in _CITED_ITEM.finditer(match.group(f"{group}_n")):
                verdict = self._cited(kind, item.group())
                if verdict is None:
                    continue
                checked += 1
                if not verdict:
                    start, end = items_at + item.start(), items_at + item.end()
                    label = f"{kind.capitalize()} {item.group()}"
                    failed.append(Claim("citation", label, start, end))

        for run in _RUN.finditer(text):
            if not _HAS_DIGIT.search(run.group()) or _inside(run.start(), masked):
                continue
            checked_here, bad = self._check_run(text, run)
            checked += checked_here
            if bad:
                failed.append(Claim("number", text[run.start() : bad], run.start(), bad))

        marked = text
        for claim in sorted(failed, key=lambda c: c.end, reverse=True):
            marked = marked[: claim.end] + MARK + marked[claim.end :]
        return Grounding(marked, checked, tuple(sorted(failed, key=lambda c: c.start)))

    def _check_run(self, text: str, run: re.Match[str]) -> tuple[int, int | None]:
        """(numbers checked, end of the claim to mark or None) for one run of a text."""
        word = run.group()
        numeric = _NUMBER_ONLY.fullmatch(word) is not None
        if not numeric and " ".join(word.lower().split()) in self._src.lowered:
            return 0, None  # a name as the paper writes it: "GPT-4o", "Llama-3-8B"
        before = text[max(0, run.start() - 16) : run.start()]
        approx = bool(_APPROX.search(before))
        checked = 0
        bad_end: int | None = None
        matches = list(_NUMBER.finditer(word))
        for i, match in enumerate(matches):
            last = i == len(matches) - 1
            after = text[run.start() + match.end() : run.start() + match.end() + 12]
            parsed = _parse(match, after if last and match.end() == len(word) else "")
            if parsed is None:
                continue
            number, extra = parsed
            tail_approx = last and bool(_APPROX_AFTER.match(text[run.end() :]))
            checked += 1
            if not self._src.has(number, approx or tail_approx):
                end = run.start() + match.end() + extra
                bad_end = max(bad_end or 0, run.end() if not numeric else end)
        return checked, bad_end

    def _cited(self, kind: str, item: str) -> bool | None:
        """Whether a cited item exists; None when it cannot be judged (not counted)."""
        if item.startswith("S"):
            return None  # supplementary tables and figures are not in the text we have
        number = item.rstrip("abcdefghijklmnopqrstuvwxyz") if kind != "appendix" else item
        if kind == "section" and not self._sections_known:
            return None
        if kind == "appendix":
            number = number.split(".")[0]
        if f"{kind} {number.lower()}" in self._src.labels:
            return True
        pattern = _MENTION[kind].format(n=re.escape(number))
        return re.search(pattern, self._src.text, re.IGNORECASE) is not None


def _inside(pos: int, spans: list[tuple[int, int]]) -> bool:
    return any(start <= pos < end for start, end in spans)


def ground(text: str, source: str, labels: Iterable[str] = ()) -> Grounding:
    """Check one model-written text against the source text it was written from."""
    return Guard(source, labels).check(text)


def with_footnote(grounding: Grounding, language: str | None = None) -> str:
    """The marked text, followed by the footnote when something was marked."""
    if not grounding.failed:
        return grounding.text
    lang = language or language_of(grounding.text)
    return f"{grounding.text.rstrip()}\n\n_{footnote(lang)}_"
