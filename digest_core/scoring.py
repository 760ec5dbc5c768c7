"""Scores papers 0-100 against the research profile, in as few LLM calls as possible.

One batched structured-output call scores every paper; the answer is validated item by item
(scores out of range, duplicated, missing or unasked-for are not trusted). Papers left without
a valid score get one more call, then the lexical fallback, so one bad paper never sinks the
digest. LLM scores are cached per (paper, profile, prompt version, model, rated examples).

Ratings (👍/👎 from chat) arrive as plain `Rating` values: the most recent ones, bounded in
number and tokens, go into the user message as data (never into the system prompt), and
their fingerprint into the cache key, so a new rating makes the next digest score afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from digest_core import prompts
from digest_core.config import Profile
from digest_core.fallback import lexical_score
from digest_core.llm import LLMClient, LLMError
from digest_core.models import Paper, Rating, Score
from digest_core.sources.fulltext import estimate_tokens
from digest_core.store import Store

log = logging.getLogger(__name__)

LANGUAGE_NAMES = {"zh": "Chinese (简体中文)", "en": "English"}

SCORE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "scores": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "score": {"type": "integer"},
                    "reason": {"type": "string"},
                },
                "required": ["id", "score", "reason"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["scores"],
    "additionalProperties": False,
}

_ABSTRACT_CHARS = 1500  # enough to judge relevance; keeps a 15-paper batch small


@dataclass(frozen=True)
class ScoringResult:
    scores: dict[str, Score]
    note: str | None  # set when some or all scores are not from the LLM


def profile_fingerprint(profile: Profile) -> str:
    raw = json.dumps([profile.name, profile.focus, list(profile.topics)], ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def score_cache_key(
    arxiv_id: str,
    profile: Profile,
    version: str,
    model: str,
    language: str,
    examples: Sequence[Rating] = (),
) -> str:
    key = f"{arxiv_id}|{profile_fingerprint(profile)}|{version}|{model}|{language}"
    # Without examples the key is what it always was, so earlier cached scores stay valid.
    return f"{key}|{examples_fingerprint(examples)}" if examples else key


def select_examples(
    ratings: Sequence[Rating], limit: int, token_budget: int, exclude: Sequence[str] = ()
) -> tuple[Rating, ...]:
    """The rated papers a scoring call sees: `ratings` come most recent first; keep at most
    `limit` of them and about `token_budget` tokens of titles, one per paper, and none of
    the papers being scored (`exclude`: its own verdict would answer the question)."""
    skip = set(exclude)
    out: list[Rating] = []
    used = 0
    for r in ratings:
        if len(out) >= limit or r.arxiv_id in skip:
            continue
        title = " ".join(r.title.split())[:300]
        cost = estimate_tokens(title) + 8  # the JSON around a title
        if used + cost > token_budget:
            break
        skip.add(r.arxiv_id)
        used += cost
        out.append(Rating(r.arxiv_id, title, r.liked))
    return tuple(out)


def examples_fingerprint(examples: Sequence[Rating]) -> str:
    raw = json.dumps([[r.arxiv_id, r.liked] for r in examples])
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def examples_block(examples: Sequence[Rating]) -> str:
    """The rated papers as a data block for the user message (titles are untrusted text)."""
    rows = [{"title": r.title, "verdict": "liked" if r.liked else "disliked"} for r in examples]
    return prompts.data_block("rated_examples", json.dumps(rows, ensure_ascii=False, indent=1))


def coerce_score(value: object) -> int | None:
    """A trustworthy 0-100 integer, or None. Accepts 87, 87.0, "87", "9/10", "87/100"."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        fraction = re.fullmatch(r"(\d+(?:\.\d+)?)\s*/\s*(10|100)", text)
        if fraction:
            number = float(fraction.group(1)) * (100 / float(fraction.group(2)))
        elif re.fullmatch(r"\d+(?:\.\d+)?", text):
            number = float(text)
        else:
            return None
    else:
        return None
    if math.isnan(number) or not 0 <= number <= 100:
        return None
    return round(number)


def parse_scores(data: object, asked: Sequence[str]) -> dict[str, Score]:
    """Valid scores by ID from the model's answer; anything untrustworthy is dropped."""
    items = data.get("scores") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError("expected an object with a 'scores' list")
    wanted = set(asked)
    found: dict[str, Score] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        pid = str(item.get("id", "")).strip().removeprefix("arXiv:")
        if pid not in wanted or pid in found:
            continue  # unasked-for, or a duplicate: the first answer stands
        score = coerce_score(item.get("score"))
        reason = item.get("reason")
        if score is None or not isinstance(reason, str) or not reason.strip():
            continue
        found[pid] = Score(pid, score, " ".join(reason.split())[:300], by_llm=True)
    if not found:
        raise ValueError("no item had a valid id, a 0-100 score and a reason")
    return found


class Scorer:
    def __init__(
        self,
        profile: Profile,
        store: Store,
        llm: LLMClient | None,
        model: str,
        language: str,
        batch_size: int,
        no_llm_reason: str,
        example_limit: int = 20,
        example_tokens: int = 800,
    ) -> None:
        self.profile = profile
        self.store = store
        self.llm = llm
        self.model = model
        self.language = language
        self.batch_size = batch_size
        self.no_llm_reason = no_llm_reason
        self.example_limit = example_limit
        self.example_tokens = example_tokens
        self.prompt = prompts.load("score")

    async def score(self, papers: Sequence[Paper], ratings: Sequence[Rating] = ()) -> ScoringResult:
        """Score `papers`; `ratings` (most recent first) are the profile's rated papers, of
        which a bounded few are shown to the model as examples."""
        if not papers:
            return ScoringResult({}, None)
        if self.llm is None:
            return ScoringResult(
                {p.arxiv_id: lexical_score(p, self.profile) for p in papers},
                f"LLM unavailable ({self.no_llm_reason}): ranked by keyword relevance",
            )
        examples = select_examples(
            ratings,
            self.example_limit,
            self.example_tokens,
            exclude=[p.arxiv_id for p in papers],
        )
        keys = {
            p.arxiv_id: score_cache_key(
                p.arxiv_id, self.profile, self.prompt.version, self.model, self.language, examples
            )
            for p in papers
        }
        scores = await self.store.get_scores(keys)
        todo = [p for p in papers if p.arxiv_id not in scores]
        failure: str | None = None
        for attempt in range(2):  # the second pass asks again only for what is still missing
            if not todo:
                break
            for start in range(0, len(todo), self.batch_size):
                batch = todo[start : start + self.batch_size]
                try:
                    got = await self._ask(batch, examples, last_round=attempt == 1)
                except LLMError as exc:
                    failure = str(exc)
                    log.warning("scoring batch failed: %s", exc)
                    continue
                scores.update(got)
                await self.store.save_scores(
                    [(keys[s.arxiv_id], s, self.model, self.prompt.version) for s in got.values()]
                )
            todo = [p for p in todo if p.arxiv_id not in scores]
            if failure is not None:
                break  # the LLM itself failed after its retries: do not ask again
            if todo and attempt == 0:
                log.info("asking again for %d paper(s) without a valid score", len(todo))
        note = None
        if todo:
            for p in todo:
                scores[p.arxiv_id] = lexical_score(p, self.profile)
            why = failure or "no valid score for some papers"
            if len(todo) == len(papers):
                note = f"LLM unavailable ({why}): ranked by keyword relevance"
            else:
                note = f"{len(todo)} paper(s) ranked by keyword relevance ({why})"
        return ScoringResult(scores, note)

    async def _ask(
        self, batch: Sequence[Paper], examples: Sequence[Rating], *, last_round: bool
    ) -> dict[str, Score]:
        system = self.prompt.render(
            profile_name=self.profile.name,
            profile_focus=self.profile.focus,
            topics=", ".join(self.profile.topics),
            language_name=LANGUAGE_NAMES.get(self.language, "English"),
        )
        papers = [
            {"id": p.arxiv_id, "title": p.title, "abstract": p.abstract[:_ABSTRACT_CHARS]}
            for p in batch
        ]
        user = prompts.data_block("papers", json.dumps(papers, ensure_ascii=False, indent=1))
        if examples:
            user = examples_block(examples) + "\n\n" + user
        asked = [p.arxiv_id for p in batch]

        def validate(data: object) -> dict[str, Score]:
            try:
                return parse_scores(data, asked)
            except ValueError:
                if last_round:
                    # Asking again was the one more call: what is still invalid falls back
                    # instead of the LLM client asking a third time.
                    return {}
                raise

        data, _ = await self.llm.json(  # type: ignore[union-attr]
            system=system,
            user=user,
            schema=SCORE_SCHEMA,
            schema_name="paper_scores",
            purpose="score",
            prompt_version=self.prompt.version,
            max_tokens=80 * len(batch) + 200,
            validate=validate,
        )
        return data  # type: ignore[return-value]
