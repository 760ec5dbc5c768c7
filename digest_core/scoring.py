"""Scores papers 0-100 against the research profile, in as few LLM calls as possible.

One batched structured-output call scores every paper; the answer is validated item by item
(scores out of range, duplicated, missing or unasked-for are not trusted). Papers left without
a valid score get one more call, then the lexical fallback, so one bad paper never sinks the
digest. LLM scores are cached per (paper, profile, prompt version, model, language).

The profile is data, like the papers: it goes to the model in a <profile> block of the user
message (`profile_data`), never into the system prompt, so a topic written in chat cannot
change a rule.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from digest_core import prompts
from digest_core.fallback import lexical_score
from digest_core.llm import LLMClient, LLMError
from digest_core.models import Paper, ResearchProfile, Score
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


def profile_fingerprint(profile: ResearchProfile) -> str:
    return profile.fingerprint


def score_cache_key(
    arxiv_id: str, profile: ResearchProfile, version: str, model: str, language: str
) -> str:
    return f"{arxiv_id}|{profile_fingerprint(profile)}|{version}|{model}|{language}"


def profile_data(profile: ResearchProfile) -> str:
    """The profile as a delimited data block for the user message (see the module docstring)."""
    content = {"name": profile.name, "focus": profile.focus, "topics": list(profile.topics)}
    return prompts.data_block("profile", json.dumps(content, ensure_ascii=False, indent=1))


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
        profile: ResearchProfile,
        store: Store,
        llm: LLMClient | None,
        model: str,
        language: str,
        batch_size: int,
        no_llm_reason: str,
    ) -> None:
        self.profile = profile
        self.store = store
        self.llm = llm
        self.model = model
        self.language = language
        self.batch_size = batch_size
        self.no_llm_reason = no_llm_reason
        self.prompt = prompts.load("score")

    async def score(
        self, papers: Sequence[Paper], profile: ResearchProfile | None = None
    ) -> ScoringResult:
        """Scores against `profile` (default: the one given at construction), with the reasons
        in its language."""
        profile = profile or self.profile
        if not papers:
            return ScoringResult({}, None)
        if self.llm is None:
            return ScoringResult(
                {p.arxiv_id: lexical_score(p, profile) for p in papers},
                f"LLM unavailable ({self.no_llm_reason}): ranked by keyword relevance",
            )
        keys = {
            p.arxiv_id: score_cache_key(
                p.arxiv_id, profile, self.prompt.version, self.model, profile.language
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
                    got = await self._ask(batch, profile, last_round=attempt == 1)
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
                scores[p.arxiv_id] = lexical_score(p, profile)
            why = failure or "no valid score for some papers"
            if len(todo) == len(papers):
                note = f"LLM unavailable ({why}): ranked by keyword relevance"
            else:
                note = f"{len(todo)} paper(s) ranked by keyword relevance ({why})"
        return ScoringResult(scores, note)

    async def _ask(
        self, batch: Sequence[Paper], profile: ResearchProfile, *, last_round: bool
    ) -> dict[str, Score]:
        system = self.prompt.render(
            language_name=LANGUAGE_NAMES.get(profile.language, "English"),
        )
        papers = [
            {"id": p.arxiv_id, "title": p.title, "abstract": p.abstract[:_ABSTRACT_CHARS]}
            for p in batch
        ]
        user = (
            profile_data(profile)
            + "\n\n"
            + prompts.data_block("papers", json.dumps(papers, ensure_ascii=False, indent=1))
        )
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
