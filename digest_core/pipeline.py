"""Papers in, digest out: build_digest(date), analyze(id), answer(id, question), export(date).

The pipeline returns values and never posts. It owns the HTTP client, the arXiv client (one
per process, so arXiv's one-request-every-3-s rule holds for every caller), the LLM client
and the store, and shares one in-flight analysis between concurrent requests for a paper.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from sqlite_utils import Migrations

from digest_core.analysis import (
    AnalysisStage,
    Analyst,
    OnStage,
    Stage,
    analysis_cache_key,
    report_stage,
)
from digest_core.arxiv_id import ArxivId, parse_arxiv_id
from digest_core.config import Settings
from digest_core.fallback import extractive_deep_dive
from digest_core.llm import LLMClient
from digest_core.models import (
    SOURCE_ABSTRACT,
    Answer,
    DeepDive,
    Digest,
    DigestEntry,
    FigureImage,
    Link,
    Paper,
    Rating,
    ResearchProfile,
    Score,
    SeenMark,
)
from digest_core.qa import Answerer
from digest_core.render.markdown import render_report
from digest_core.retry import time_left
from digest_core.scoring import Scorer
from digest_core.sources import SourceError, make_http_client
from digest_core.sources.arxiv import ArxivClient
from digest_core.sources.figure import fetch_figure_image
from digest_core.sources.fulltext import FULLTEXT_CACHE_VERSION, FullText, fetch_fulltext
from digest_core.sources.hf import fetch_daily_papers, fetch_hf_paper, fetch_paper_links
from digest_core.store import Store, claim_failed_since, process_owner

log = logging.getLogger(__name__)

T = TypeVar("T")

Progress = Callable[[str, int, int], None]

# A deep dive is claimed in the database while it is written, so two processes on one file
# pay for it once. The writer renews its claim every CLAIM_LEASE_SECONDS / 3; a claim not
# renewed for CLAIM_LEASE_SECONDS (or whose process is gone) is taken over by a waiter.
CLAIM_LEASE_SECONDS = 30.0
CLAIM_POLL_SECONDS = 0.25
# How long a caller with no deadline of its own (the daily job) waits for another writer.
CLAIM_MAX_WAIT_SECONDS = 900.0
# Papers whose links are looked up at once. Each lookup is four Hugging Face requests on the
# one sources client (10 connections), which arXiv and the full texts share: fifty analyses
# asked at once queued 200 requests ahead of theirs, and a lookup's deadline ran out in the
# queue. Two at a time leave arXiv a connection, and a lookup takes well under a deep dive.
LINK_LOOKUPS_AT_ONCE = 2


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
        self._link_lookups = asyncio.Semaphore(LINK_LOOKUPS_AT_ONCE)
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
            example_limit=settings.digest.rating_examples,
            example_tokens=settings.digest.rating_example_tokens,
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
        # One download of a paper's full text for the analysis and the key figure alike.
        self._fulltext_inflight: dict[str, asyncio.Future[FullText]] = {}
        # This pipeline's name on analysis claims (two pipelines in one process are two owners).
        self.owner = process_owner(f"{id(self):x}")
        self.claim_lease = CLAIM_LEASE_SECONDS
        self.claim_poll = CLAIM_POLL_SECONDS  # how often a waiter looks again (tests: less)

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
        ratings: Sequence[Rating] = (),
        profile: ResearchProfile | None = None,
    ) -> Digest:
        """Fetch the day's list (unless given), score the top N, deep-dive the best K, for one
        profile (default: the configured default profile). `ratings`: the profile's rated
        papers, most recent first (scoring examples)."""
        profile = profile or self.profile
        built = await self.build_digests(
            date, [profile], progress, papers, ratings={profile.name: ratings}
        )
        return built[profile.content_key]

    async def build_digests(
        self,
        date: str,
        profiles: Sequence[ResearchProfile],
        progress: Progress = _no_progress,
        papers: Sequence[Paper] | None = None,
        ratings: Mapping[str, Sequence[Rating]] | None = None,
    ) -> dict[str, Digest]:
        """The day's digest for each distinct profile, by `ResearchProfile.content_key`.

        The list is fetched once and the arXiv versions asked once; each profile whose content
        differs is scored in its own batched call, all profiles at once; the deep dives of
        every profile's picks run together, one per (paper, profile content, language).
        `ratings`: each profile's rated papers (by profile name), most recent first."""
        ratings = ratings or {}
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
                *(
                    self.scorer.score(top, ratings.get(prof.name, ()), prof)
                    for prof in scoring_of.values()
                )
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

        async def one(key: str, paper: Paper) -> tuple[DeepDive, tuple[Link, ...]]:
            nonlocal done
            # The links are looked up while the analysis runs, within their own short deadline.
            dive, links = await self._beside_links(paper, self.deep_dive(paper, plans[key][0]))
            done += 1
            progress("analyse", done, len(jobs))
            return dive, links

        dives = await asyncio.gather(*(one(key, p) for key, p in jobs))
        by_profile: dict[str, list[tuple[Paper, DeepDive, tuple[Link, ...]]]] = {
            key: [] for key in plans
        }
        for (key, paper), (dive, links) in zip(jobs, dives, strict=True):
            by_profile[key].append((paper, dive, links))

        out: dict[str, Digest] = {}
        for key, (prof, ranked, _) in plans.items():
            scoring = scored[(prof.fingerprint, prof.language)]
            triples = by_profile[key]
            picked_ids = {p.arxiv_id for p, _, _ in triples}
            entries = [
                DigestEntry(p, scoring.scores[p.arxiv_id], d, links) for p, d, links in triples
            ] + [
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

    async def skip_seen(
        self,
        digest: Digest,
        seen: Mapping[str, SeenMark],
        profile: ResearchProfile | None = None,
    ) -> Digest:
        """The digest as one destination gets it: a paper deep-dived there before (`seen`, by
        arXiv ID) is listed with its mark and not deep-dived again; the next paper at or above
        the threshold takes its place (its deep dive is cached or written now)."""
        if not seen or not any(e.paper.arxiv_id in seen for e in digest.entries):
            return digest
        # The order build_digest picked in.
        ranked = sorted(digest.entries, key=lambda e: (-e.score.score, -e.paper.upvotes))
        want = len(digest.picked)
        chosen = [
            e for e in ranked if e.paper.arxiv_id not in seen and e.score.score >= digest.threshold
        ][:want]
        chosen_ids = {e.paper.arxiv_id for e in chosen}

        async def dive(entry: DigestEntry) -> DeepDive:
            return entry.deep_dive or await self.deep_dive(entry.paper, profile)

        dives = await asyncio.gather(*(dive(e) for e in chosen))
        picked = [replace(e, deep_dive=d, seen=None) for e, d in zip(chosen, dives, strict=True)]
        others = [
            replace(e, deep_dive=None, seen=seen.get(e.paper.arxiv_id))
            for e in ranked
            if e.paper.arxiv_id not in chosen_ids
        ]
        return replace(digest, entries=tuple(picked + others))

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

    async def deep_dive(
        self,
        paper: Paper,
        profile: ResearchProfile | None = None,
        on_stage: OnStage | None = None,
    ) -> DeepDive:
        """The cached analysis for a profile (and its language), or one new one shared by
        every concurrent caller. `on_stage` hears the stages of a new one (none when it is
        cached, or written by a concurrent caller or another process: only the writer's
        caller hears them)."""
        profile = profile or self.profile
        language = profile.language
        key = analysis_cache_key(paper, self.analyst.prompt_version, self.model, language, profile)
        if self.llm is None:  # the extractive analysis: nothing stored, nothing to claim
            return await _shared(
                self._inflight, key, self._write(key, paper, language, profile, on_stage)
            )
        cached = await self.store.get_analysis(key)
        if cached is not None:
            return cached
        return await _shared(
            self._inflight, key, self._claimed(key, paper, language, profile, on_stage)
        )

    async def _write(
        self,
        key: str,
        paper: Paper,
        language: str,
        profile: ResearchProfile,
        on_stage: OnStage | None = None,
    ) -> DeepDive:
        report_stage(on_stage, AnalysisStage(Stage.FETCHING))
        text = await self.fulltext(paper)
        report_stage(on_stage, AnalysisStage.reading(text))
        report_stage(on_stage, AnalysisStage.writing(text))
        dive = await self.analyst.write(paper, text, language, profile)
        await self.store.save_analysis(key, dive, paper.version)
        return dive

    async def _claimed(
        self,
        key: str,
        paper: Paper,
        language: str,
        profile: ResearchProfile,
        on_stage: OnStage | None = None,
    ) -> DeepDive:
        """Write the deep dive under a claim in the database, or wait for the process that
        holds the claim: its stored analysis is the answer. A claim whose owner died is taken
        over; when the holder failed while we waited, or our own deadline (a person's
        request) runs out first, the labelled extractive analysis is the answer, with no call."""
        # Claim times are stored to the second: compare at that precision (a failure within
        # the second we started counts as one we waited for, which costs no call).
        since = datetime.now(UTC).replace(microsecond=0)
        left = time_left()
        give_up = asyncio.get_running_loop().time() + (
            CLAIM_MAX_WAIT_SECONDS if left is None else max(0.0, left)
        )
        waited = False
        while True:
            if await self.store.claim_analysis(
                key, self.owner, self.claim_lease, failed_since=since
            ):
                # The writer we waited for (or one that finished since the caller looked)
                # may have stored it between our look and our claim: no second call then.
                cached = await self.store.get_analysis(key)
                if cached is not None:
                    await self.store.release_claim(key, self.owner, "done")
                    return cached
                if waited:
                    log.info("deep dive %s: the other writer is gone; writing it here", key)
                return await self._write_claimed(key, paper, language, profile, on_stage)
            if not waited:
                log.info("deep dive %s: another process is writing it; waiting", key)
                waited = True
            await asyncio.sleep(self.claim_poll)
            cached = await self.store.get_analysis(key)
            if cached is not None:
                return cached
            state = await self.store.claim_state(key)
            if state is not None and claim_failed_since(*state, since):
                reason = "the model did not answer for another request just now"
                return extractive_deep_dive(paper, profile, language, reason)
            if asyncio.get_running_loop().time() >= give_up:
                reason = "the model is still busy with this paper"
                return extractive_deep_dive(paper, profile, language, reason)

    async def _write_claimed(
        self,
        key: str,
        paper: Paper,
        language: str,
        profile: ResearchProfile,
        on_stage: OnStage | None = None,
    ) -> DeepDive:
        async def renew() -> None:
            while True:
                await asyncio.sleep(self.claim_lease / 3)
                try:
                    await self.store.renew_claim(key, self.owner)
                except Exception:  # a waiter may take over: worse, but nobody is left waiting
                    log.warning("deep dive %s: claim not renewed", key, exc_info=True)

        renewing = asyncio.create_task(renew())
        status = "failed"
        try:
            dive = await self._write(key, paper, language, profile, on_stage)
            status = "done" if dive.llm_used else "failed"
            return dive
        finally:
            renewing.cancel()
            # Released even on cancellation, so a waiter takes over at once, not after a lease.
            try:
                await asyncio.shield(self.store.release_claim(key, self.owner, status))
            except Exception:
                log.warning("deep dive %s: claim not released", key, exc_info=True)

    async def fulltext(self, paper: Paper) -> FullText:
        if self.offline:
            return FullText(SOURCE_ABSTRACT, (("Abstract", paper.abstract),))
        # The key names the stored format: rows from an older extractor are not reused.
        key = f"{FULLTEXT_CACHE_VERSION}:{paper.versioned_id}"
        return await _shared(self._fulltext_inflight, key, self._fulltext(paper, key))

    async def _fulltext(self, paper: Paper, key: str) -> FullText:
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

    async def links(self, paper: Paper) -> tuple[Link, ...]:
        """The deep dive header's links (code, project page, Hugging Face models, datasets and
        Spaces citing the paper). Each request is bounded by `sources.extras_timeout_seconds`
        once it runs; LINK_LOOKUPS_AT_ONCE papers are looked up at a time. Never raises."""
        if self.offline:
            return ()
        try:
            async with self._link_lookups:
                return await fetch_paper_links(self.http, self.settings.sources, paper)
        except Exception:  # an extra: never the reason a deep dive fails
            log.warning("links of %s: lookup failed", paper.arxiv_id, exc_info=True)
            return ()

    async def key_figure(self, paper: Paper | str | ArxivId) -> FigureImage | None:
        """The paper's key figure (the first raster figure of its arXiv HTML) with its caption,
        fetched from the arXiv host within the size cap; None (logged once) when there is none
        or it cannot be had. Shares the full-text download with a running analysis."""
        if self.offline:
            return None
        try:
            if not isinstance(paper, Paper):
                aid = paper if isinstance(paper, ArxivId) else parse_arxiv_id(paper)
                paper = await self.store.get_paper(aid.base) or await self.resolve(aid)
            text = await self.fulltext(paper)
            if text.figure is None:
                log.info("key figure %s: the arXiv HTML has none; nothing posted", paper.arxiv_id)
                return None
            return await fetch_figure_image(
                self.http, self.settings.sources, paper.arxiv_id, text.figure
            )
        except Exception as exc:  # an extra: never the reason a deep dive fails
            log.warning("key figure: %s; not posted", type(exc).__name__)
            return None

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

    async def rescore(
        self, papers: Sequence[Paper], profile: ResearchProfile | None = None
    ) -> dict[str, Score]:
        """Scores of `papers` with the current prompt and model and no rated examples (the
        regression check of `digestbot eval`: a paper's own rating must not answer for it)."""
        return (await self.scorer.score(papers, (), profile)).scores

    async def score_one(self, paper: Paper, profile: ResearchProfile | None = None) -> Score:
        result = await self.scorer.score([paper], (), profile)
        return result.scores[paper.arxiv_id]

    async def analyze(
        self, id_or_url: str | ArxivId, profile: ResearchProfile | None = None
    ) -> DigestEntry:
        """A deep dive of any arXiv paper, with its score against the profile."""
        return await self._analyze_paper(await self.resolve(id_or_url), profile)

    async def analyze_with_figure(
        self,
        id_or_url: str | ArxivId,
        profile: ResearchProfile | None = None,
        on_stage: OnStage | None = None,
    ) -> tuple[DigestEntry, asyncio.Future[FigureImage | None]]:
        """`analyze`, and the paper's key figure being fetched beside it (see `key_figure`):
        the caller posts the text first, then awaits the figure, or cancels it. `on_stage`
        hears the stages of a new deep dive (see `deep_dive`); it must return at once."""
        paper = await self.resolve(id_or_url)
        figure = asyncio.ensure_future(self.key_figure(paper))
        try:
            return await self._analyze_paper(paper, profile, on_stage), figure
        except BaseException:
            figure.cancel()
            raise

    async def _analyze_paper(
        self, paper: Paper, profile: ResearchProfile | None = None, on_stage: OnStage | None = None
    ) -> DigestEntry:
        work = asyncio.gather(
            self.score_one(paper, profile), self.deep_dive(paper, profile, on_stage)
        )
        (score, dive), links = await self._beside_links(paper, work)
        return DigestEntry(paper, score, dive, links)

    async def _beside_links(self, paper: Paper, work: Awaitable[T]) -> tuple[T, tuple[Link, ...]]:
        """`work`'s result, and the paper's links looked up meanwhile. The links wait their
        turn (LINK_LOOKUPS_AT_ONCE) and may then take `extras_timeout_seconds`, but once the
        work is done they get at most that long again: with Hugging Face hanging and fifty
        papers queued, the analyses are not held up, they come without links."""
        lookup = asyncio.ensure_future(self.links(paper))
        try:
            result = await work
        except BaseException:
            lookup.cancel()
            raise
        done, _ = await asyncio.wait({lookup}, timeout=self.settings.sources.extras_timeout_seconds)
        if not done:
            lookup.cancel()
            log.warning("links of %s: not looked up in time; left out", paper.arxiv_id)
            return result, ()
        return result, lookup.result()

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
        on_delta: Callable[[str], Awaitable[None]] | None = None,
        profile: ResearchProfile | None = None,
    ) -> Answer:
        """The answer to a question about a paper; `on_delta` sees the model's text as it is
        written (see Answerer.answer)."""
        aid = id_or_url if isinstance(id_or_url, ArxivId) else parse_arxiv_id(id_or_url)
        paper = await self.store.get_paper(aid.base)
        if paper is None or (aid.version and paper.version != aid.version):
            paper = await self.resolve(aid)
        language = (profile or self.profile).language
        dive = await self.store.latest_analysis(paper.arxiv_id, language)
        text = await self.fulltext(paper)
        return await self.answerer.answer(paper, dive, text, question, history, on_delta)

    # -- export ----------------------------------------------------------------------------------

    async def export(self, date: str) -> str | None:
        digest = await self.store.load_digest(date)
        return render_report(digest) if digest is not None else None


async def _shared(
    inflight: dict[str, asyncio.Future[T]], key: str, work: Coroutine[Any, Any, T]
) -> T:
    """Run `work` once per key: a concurrent caller with the same key awaits the first one's
    result (or its exception) instead of starting its own."""
    running = inflight.get(key)
    if running is not None:
        work.close()  # never started: the first caller's run answers for it
        return await asyncio.shield(running)
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    inflight[key] = future
    try:
        result = await work
        future.set_result(result)
        return result
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # mark retrieved: waiters get it, nobody else must
        raise
    finally:
        del inflight[key]
