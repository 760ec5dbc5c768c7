"""Papers in, digest out: build_digest(date), analyze(id), answer(id, question), export(date).

The pipeline returns values and never posts. It owns the HTTP client, the arXiv client (one
per process, so arXiv's one-request-every-3-s rule holds for every caller), the LLM client
and the store, and shares one in-flight analysis between concurrent requests for a paper.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

import httpx
from sqlite_utils import Migrations

from digest_core.analysis import Analyst, analysis_cache_key
from digest_core.arxiv_id import ArxivId, parse_arxiv_id
from digest_core.config import Settings
from digest_core.llm import LLMClient
from digest_core.models import (
    SOURCE_ABSTRACT,
    Answer,
    DeepDive,
    Digest,
    DigestEntry,
    Paper,
    ResearchProfile,
    Score,
)
from digest_core.qa import Answerer
from digest_core.render.markdown import render_report
from digest_core.scoring import Scorer
from digest_core.sources import SourceError, make_http_client
from digest_core.sources.arxiv import ArxivClient
from digest_core.sources.fulltext import FULLTEXT_CACHE_VERSION, FullText, fetch_fulltext
from digest_core.sources.hf import fetch_daily_papers, fetch_hf_paper
from digest_core.store import Store

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


class PaperNotFound(LookupError):
    """A well-formed ID that names no paper. The message is one line for the user."""


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        http: httpx.AsyncClient,
        *,
        offline: bool = False,
    ) -> None:
        self.settings = settings
        self.store = store
        self.http = http
        self.offline = offline  # the demo: no network at all, built-in analyser
        self.arxiv = ArxivClient(http, settings.sources)
        llm_on = settings.llm.enabled and not offline
        self.llm = (
            LLMClient(
                settings.llm,
                on_call=store.record_llm_call,
                on_grounding=store.record_grounding,
            )
            if llm_on
            else None
        )
        why = "offline demo" if offline else "no OPENAI_API_KEY set"
        self.model = settings.llm.model
        self.profile = settings.research_profile()  # the default; callers may pass another
        self.scorer = Scorer(
            self.profile,
            store,
            self.llm,
            self.model,
            settings.digest.language,
            settings.llm.score_batch_size,
            no_llm_reason=why,
        )
        self.analyst = Analyst(
            self.profile, self.llm, self.model, settings.llm.fulltext_token_budget, why
        )
        self.answerer = Answerer(
            settings.profile,
            self.llm,
            settings.llm.answer_token_budget,
            why,
            memory_turns=settings.interactive.thread_memory_turns,
            terms_cache=store,
        )
        self._inflight: dict[str, asyncio.Future[DeepDive]] = {}

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        offline: bool = False,
        extensions: Sequence[Migrations] = (),
    ) -> Pipeline:
        """Open the store at `settings.db_path` (with an application's own `extensions`
        migrations, see store.Store.open) and the clients."""
        store = await Store.open(settings.db_path, extensions=extensions)
        return cls(settings, store, make_http_client(settings.sources), offline=offline)

    async def aclose(self) -> None:
        if self.llm is not None:
            await self.llm.aclose()
        await self.http.aclose()
        await self.store.close()

    # -- the daily digest ------------------------------------------------------------------------

    async def build_digest(
        self,
        date: str,
        progress: Progress = _no_progress,
        papers: Sequence[Paper] | None = None,
        profile: ResearchProfile | None = None,
    ) -> Digest:
        """Fetch the day's list (unless given), score the top N, deep-dive the best K, for one
        profile (default: the configured default profile)."""
        profile = profile or self.profile
        built = await self.build_digests(date, [profile], progress, papers)
        return built[profile.content_key]

    async def build_digests(
        self,
        date: str,
        profiles: Sequence[ResearchProfile],
        progress: Progress = _no_progress,
        papers: Sequence[Paper] | None = None,
    ) -> dict[str, Digest]:
        """The day's digest for each distinct profile, by `ResearchProfile.content_key`.

        The list is fetched once and the arXiv versions asked once; each profile whose content
        differs is scored in its own batched call, all profiles at once; the deep dives of
        every profile's picks run together, one per (paper, profile content, language)."""
        cfg = self.settings.digest
        distinct = list({p.content_key: p for p in profiles}.values())
        if papers is None:
            progress("fetch", 0, 1)
            papers = await fetch_daily_papers(self.http, self.settings.sources, date)
            progress("fetch", 1, 1)
        available = len(papers)
        top = list(papers[: cfg.top_n])
        main_key = self._main_key(distinct)
        if not top:
            out = {}
            for prof in distinct:
                digest = Digest(
                    date,
                    (),
                    prof.name,
                    prof.language,
                    prof.threshold,
                    None,
                    0,
                    profile_key=prof.content_key,
                )
                await self.store.save_digest(digest, main=prof.content_key == main_key)
                out[prof.content_key] = digest
            return out
        await self.store.save_papers(top)

        # The arXiv versions do not depend on the scores: ask for all of them (one request)
        # while the LLM scores, instead of after it for the picked ones.
        versions = asyncio.create_task(self._versions(top))
        # Profiles that differ only in threshold or picks read the same scores: one call.
        scoring_of = {(p.fingerprint, p.language): p for p in distinct}
        try:
            progress("score", 0, len(top))
            results = await asyncio.gather(
                *(self.scorer.score(top, prof) for prof in scoring_of.values())
            )
            progress("score", len(top), len(top))
        except BaseException:
            versions.cancel()
            raise
        scored = dict(zip(scoring_of, results, strict=True))
        upvotes = {p.arxiv_id: p.upvotes for p in top}
        plans: dict[str, tuple[ResearchProfile, list[Paper], list[Paper]]] = {}
        for prof in distinct:
            scores = scored[(prof.fingerprint, prof.language)].scores
            ranked = sorted(top, key=lambda p: (-scores[p.arxiv_id].score, -upvotes[p.arxiv_id]))
            picked = [p for p in ranked if scores[p.arxiv_id].score >= prof.threshold]
            plans[prof.content_key] = (prof, ranked, picked[: prof.picks])
        if any(picked for _, _, picked in plans.values()):
            found = await versions
        else:
            versions.cancel()  # a quiet day needs no version: do not wait on arXiv for it
            found = {}

        def versioned(p: Paper) -> Paper:
            return replace(p, version=found[p.arxiv_id]) if p.arxiv_id in found else p

        jobs = [(key, versioned(p)) for key, (_, _, picked) in plans.items() for p in picked]
        progress("analyse", 0, len(jobs))
        done = 0

        async def one(key: str, paper: Paper) -> DeepDive:
            nonlocal done
            dive = await self.deep_dive(paper, plans[key][0])
            done += 1
            progress("analyse", done, len(jobs))
            return dive

        dives = await asyncio.gather(*(one(key, p) for key, p in jobs))
        by_profile: dict[str, list[tuple[Paper, DeepDive]]] = {key: [] for key in plans}
        for (key, paper), dive in zip(jobs, dives, strict=True):
            by_profile[key].append((paper, dive))

        out: dict[str, Digest] = {}
        for key, (prof, ranked, _) in plans.items():
            scoring = scored[(prof.fingerprint, prof.language)]
            pairs = by_profile[key]
            picked_ids = {p.arxiv_id for p, _ in pairs}
            entries = [DigestEntry(p, scoring.scores[p.arxiv_id], d) for p, d in pairs] + [
                DigestEntry(p, scoring.scores[p.arxiv_id])
                for p in ranked
                if p.arxiv_id not in picked_ids
            ]
            digest = Digest(
                date=date,
                entries=tuple(entries),
                profile_name=prof.name,
                language=prof.language,
                threshold=prof.threshold,
                llm_note=scoring.note,
                available=available,
                profile_key=key,
            )
            await self.store.save_digest(digest, main=key == main_key)
            out[key] = digest
        return out

    def _main_key(self, profiles: Sequence[ResearchProfile]) -> str:
        """Which of the built digests is the day's main one (export): the default profile's,
        or the first built when the default profile is not among them."""
        default = self.profile.content_key
        keys = [p.content_key for p in profiles]
        return default if default in keys else keys[0]

    async def _versions(self, papers: Sequence[Paper]) -> dict[str, int]:
        """The latest arXiv version of each paper (HF lists none), so a new version gets a new
        analysis. One batched request; on failure the papers go on without versions."""
        if not papers or self.offline:
            return {}
        try:
            found = await self.arxiv.fetch([ArxivId(p.arxiv_id, None) for p in papers])
        except SourceError as exc:
            log.warning("arXiv metadata unavailable, continuing without versions: %s", exc)
            return {}
        return {pid: meta.version for pid, meta in found.items() if meta.version}

    # -- one paper -------------------------------------------------------------------------------

    async def deep_dive(self, paper: Paper, profile: ResearchProfile | None = None) -> DeepDive:
        """The cached analysis for a profile (and its language), or one new one shared by
        every concurrent caller."""
        profile = profile or self.profile
        language = profile.language
        key = analysis_cache_key(paper, self.analyst.prompt_version, self.model, language, profile)
        if self.llm is not None:
            cached = await self.store.get_analysis(key)
            if cached is not None:
                return cached
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[DeepDive] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            text = await self.fulltext(paper)
            dive = await self.analyst.write(paper, text, language, profile)
            await self.store.save_analysis(key, dive, paper.version)
            future.set_result(dive)
            return dive
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters get it, nobody else must
            raise
        finally:
            del self._inflight[key]

    async def fulltext(self, paper: Paper) -> FullText:
        if self.offline:
            return FullText(SOURCE_ABSTRACT, (("Abstract", paper.abstract),))
        # The key names the stored format: rows from an older extractor are not reused.
        key = f"{FULLTEXT_CACHE_VERSION}:{paper.versioned_id}"
        cached = await self.store.get_fulltext(key)
        if cached is not None:
            try:
                return FullText.load(cached[0], cached[1])
            except ValueError:
                log.warning(
                    "full text %s: cached copy unreadable; fetching again", paper.versioned_id
                )
        text = await fetch_fulltext(self.http, self.settings.sources, paper)
        if text.source != SOURCE_ABSTRACT:  # the HTML may appear later: don't cache a miss
            await self.store.save_fulltext(key, text.source, text.dump())
        return text

    async def resolve(self, id_or_url: str | ArxivId) -> Paper:
        """The paper an ID names, from arXiv (HF's paper API when arXiv cannot answer).

        Raises InvalidArxivId for malformed input (before any request), PaperNotFound for an
        ID that names nothing, SourceError when neither source can be reached."""
        aid = id_or_url if isinstance(id_or_url, ArxivId) else parse_arxiv_id(id_or_url)
        arxiv_error: SourceError | None = None
        try:
            # Concurrent resolves (50 people, 50 papers) share arXiv requests.
            found = await self.arxiv.lookup([aid])
        except SourceError as exc:
            arxiv_error = exc
            found = {}
        paper = found.get(aid.base)
        if paper is None and arxiv_error is not None:
            paper = await fetch_hf_paper(self.http, self.settings.sources, aid.base)
            if paper is None:
                raise arxiv_error
        if paper is None:
            raise PaperNotFound(f"arXiv has no paper {aid}")
        await self.store.save_papers([paper])
        return paper

    async def score_one(self, paper: Paper, profile: ResearchProfile | None = None) -> Score:
        result = await self.scorer.score([paper], profile)
        return result.scores[paper.arxiv_id]

    async def analyze(
        self, id_or_url: str | ArxivId, profile: ResearchProfile | None = None
    ) -> DigestEntry:
        """A deep dive of any arXiv paper, with its score against the profile."""
        paper = await self.resolve(id_or_url)
        score, dive = await asyncio.gather(
            self.score_one(paper, profile), self.deep_dive(paper, profile)
        )
        return DigestEntry(paper, score, dive)

    async def cached_analysis(
        self, id_or_url: str | ArxivId, profile: ResearchProfile | None = None
    ) -> DeepDive | None:
        """An analysis already in the store that a new request would reuse (same model, prompt
        version, language and profile), without any request."""
        aid = id_or_url if isinstance(id_or_url, ArxivId) else parse_arxiv_id(id_or_url)
        if self.llm is None:
            return None
        profile = profile or self.profile
        return await self.store.latest_analysis(
            aid.base,
            profile.language,
            model=self.model,
            prompt_version=self.analyst.prompt_version,
            profile=profile.fingerprint,
        )

    # -- questions -------------------------------------------------------------------------------

    async def answer(
        self,
        id_or_url: str | ArxivId,
        question: str,
        history: Sequence[tuple[str, str]] = (),
        profile: ResearchProfile | None = None,
    ) -> Answer:
        aid = id_or_url if isinstance(id_or_url, ArxivId) else parse_arxiv_id(id_or_url)
        paper = await self.store.get_paper(aid.base)
        if paper is None or (aid.version and paper.version != aid.version):
            paper = await self.resolve(aid)
        language = (profile or self.profile).language
        dive = await self.store.latest_analysis(paper.arxiv_id, language)
        text = await self.fulltext(paper)
        return await self.answerer.answer(paper, dive, text, question, history)

    # -- export ----------------------------------------------------------------------------------

    async def export(self, date: str) -> str | None:
        digest = await self.store.load_digest(date)
        return render_report(digest) if digest is not None else None
