"""The `digestbot` command: digest, analyze, ask, export, serve, demo.

Every failure a user can cause or meet ends with one line on stderr and a non-zero exit:
2 for input that cannot be served (bad ID, bad date, bad configuration), 1 for a source or
delivery that failed. Progress goes to stderr only when it is a terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, date, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported on use below, so `--help` stays fast
    from bot.settings import AppSettings as Settings
    from digest_core.pipeline import Pipeline, Progress

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

log = logging.getLogger("digestbot")


class UserError(Exception):
    """Input that cannot be served; the message is the one line the user sees."""


def _version() -> str:
    try:
        return metadata.version("digestbot")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digestbot",
        description="Research radar: the day's Hugging Face papers scored against your research "
        "profile, with deep dives of the best, for the terminal, Slack and Telegram.",
    )
    parser.add_argument("--version", action="version", version=f"digestbot {_version()}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log progress details to stderr"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("digest", help="build the day's digest and deliver it")
    p.add_argument("--date", help="YYYY-MM-DD (default: today in UTC)")
    p.add_argument("--dry-run", action="store_true", help="print to the terminal, post nothing")
    p.add_argument("--to", help="comma-separated destinations: console,slack,telegram,markdown")
    p.add_argument(
        "--profile",
        metavar="NAME",
        help="build for this research profile (default: each destination's own)",
    )

    p = sub.add_parser("analyze", help="print a deep dive of any arXiv paper")
    p.add_argument("paper", metavar="ARXIV_ID_OR_URL")

    p = sub.add_parser("ask", help="answer a question about a paper")
    p.add_argument("paper", metavar="ARXIV_ID")
    p.add_argument("question")

    p = sub.add_parser("export", help="write a stored digest as Markdown (the daily report format)")
    p.add_argument("--date", required=True, help="YYYY-MM-DD")
    p.add_argument("--out", help="file to write (default: stdout)")

    sub.add_parser("profiles", help="list the research profiles and which channel gets which")

    p = sub.add_parser(
        "eval",
        help="re-score every rated paper and print how far the scores agree with the ratings",
        description="Re-scores every paper rated 👍/👎 (buttons or /digest like|dislike) for a "
        "profile with the current prompt and model (without the rated examples, so a paper's "
        "own rating cannot answer for it) and prints the agreement: a 👍 paper should score at "
        "or above the threshold, a 👎 paper below it. Lists every disagreement. Run it when "
        "the prompt or the model changes.",
    )
    p.add_argument(
        "--profile",
        metavar="NAME",
        help="the profile: default or a [profiles.NAME] (default: default)",
    )

    sub.add_parser("serve", help="run the scheduler and the Slack and Telegram bots until SIGTERM")
    sub.add_parser("demo", help="run the whole pipeline offline on a bundled real day")
    return parser


def parse_day(text: str | None, *, allow_future: bool = False) -> str:
    """A YYYY-MM-DD date; today in UTC when not given (HF rejects dates after today in UTC)."""
    today = datetime.now(UTC).date()
    if text is None:
        return today.isoformat()
    text = text.strip()
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        raise UserError(f"--date: expected YYYY-MM-DD, got {text[:40]!r}")
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise UserError(f"--date: {text} is not a calendar date") from None
    if day > today and not allow_future:
        raise UserError(f"--date: {text} is in the future (today in UTC is {today})")
    return day.isoformat()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_dispatch(args))
    except UserError as exc:
        print(f"digestbot: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


async def _dispatch(args: argparse.Namespace) -> int:
    from bot.logs import configure_logging
    from bot.settings import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    configure_logging(
        settings.secrets(),
        logging.INFO if args.verbose else logging.WARNING,
        repeat_seconds=settings.serve.log_repeat_seconds,
    )
    try:
        if args.command == "demo":
            return await _demo(settings)
        if args.command == "serve":
            from bot.serve import serve

            return await serve(settings)
        return await _with_pipeline(settings, args)
    except Exception as exc:
        # digest_core.store is loaded by whatever raised a StoreError; looked up rather than
        # imported, so malformed input is answered without loading sqlite-utils (and numpy).
        store = sys.modules.get("digest_core.store")
        if store is not None and isinstance(exc, store.StoreError):
            raise UserError(str(exc)) from None
        raise


async def _with_pipeline(settings: Settings, args: argparse.Namespace) -> int:
    # Validate input before importing or opening anything: malformed input makes no request,
    # and is answered without loading the LLM and HTTP stacks.
    from digest_core.arxiv_id import InvalidArxivId, parse_arxiv_id

    day = parse_day(args.date) if args.command in ("digest", "export") else None
    profile = getattr(args, "profile", None)
    if profile is not None and profile not in settings.profile_names():
        known = ", ".join(settings.profile_names())
        raise UserError(f"--profile: unknown profile {profile!r} (known: {known})")
    if args.command in ("analyze", "ask"):
        try:
            parse_arxiv_id(args.paper)
        except InvalidArxivId as exc:
            raise UserError(str(exc)) from None
        if args.command == "ask" and not args.question.strip():
            raise UserError("ask: the question is empty")

    from bot.chatstore import open_pipeline
    from digest_core.pipeline import PaperNotFound
    from digest_core.sources import SourceError

    pipeline = await open_pipeline(settings)
    try:
        if args.command == "digest":
            assert day is not None
            return await _digest(pipeline, day, args)
        if args.command == "analyze":
            return await _analyze(pipeline, args.paper)
        if args.command == "ask":
            answer = await pipeline.answer(args.paper, args.question)
            from digest_core.render.markdown import answer_markdown

            print(answer_markdown(answer))
            return EXIT_OK
        if args.command == "export":
            assert day is not None
            return await _export(pipeline, day, args.out)
        if args.command == "profiles":
            return await _profiles(pipeline)
        if args.command == "eval":
            return await _eval(pipeline, args.profile)
    except PaperNotFound as exc:
        raise UserError(str(exc)) from None
    except SourceError as exc:
        print(f"digestbot: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await pipeline.aclose()
    return EXIT_FAILED


def _progress_printer() -> Progress:
    """Progress lines on a terminal; nothing at all on a pipe."""
    if not sys.stderr.isatty():
        return lambda stage, done, total: None
    labels = {"fetch": "fetching papers", "score": "scoring", "analyse": "writing deep dives"}

    def show(stage: str, done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        print(
            f"\r{labels.get(stage, stage)}: {done}/{total}   ", end=end, file=sys.stderr, flush=True
        )

    return show


async def _digest(pipeline: Pipeline, day: str, args: argparse.Namespace) -> int:
    from bot.chatstore import ChatStore
    from bot.service import (
        UnknownDestination,
        deliver_each,
        digests_for,
        parse_destinations,
    )
    from bot.team import Team

    try:
        destinations = parse_destinations(args.to, pipeline.settings, dry_run=args.dry_run)
    except UnknownDestination as exc:
        raise UserError(str(exc)) from None
    chat = ChatStore(pipeline.store)
    team = Team(pipeline.settings, chat)
    if not args.dry_run:
        # Chats subscribed with `/digest subscribe` on a platform being delivered to.
        channels = {d.channel.platform: d.channel for d in destinations}
        destinations = await team.destinations(destinations, channels)
    plan = await team.plan(destinations, only=args.profile)
    digests = await digests_for(
        pipeline, chat, day, plan, fresh=args.dry_run, progress=_progress_printer()
    )
    return await deliver_each(pipeline, [(d, digests[p.content_key]) for d, p in plan])


async def _profiles(pipeline: Pipeline) -> int:
    """One line per profile (the configured ones, then each chat's edited copy), with the
    destinations that get it."""
    from bot.chatstore import ChatStore
    from bot.team import Team, describe

    settings = pipeline.settings
    chat = ChatStore(pipeline.store)
    team = Team(settings, chat)
    chats = [("slack", c) for c in settings.slack.channels]
    chats += [("telegram", c) for c in settings.telegram.chats]
    for sub in await chat.subscriptions():
        if sub.active and (sub.platform, sub.chat) not in chats:
            chats.append((sub.platform, sub.chat))
        elif not sub.active and (sub.platform, sub.chat) in chats:
            chats.remove((sub.platform, sub.chat))
    bound = [(b.platform, b.chat) for b in await chat.bindings()]
    users: dict[str, list[str]] = {}
    copies: list[str] = []
    for platform, where in chats + [b for b in bound if b not in chats]:
        profile = await team.profile_for(platform, where)
        place = f"{platform}:{where}" + ("" if (platform, where) in chats else " (not subscribed)")
        if "*" in profile.key:  # its own edited copy: a line of its own
            base = profile.key.partition("*")[0]
            copies.append(f"{place} (edited copy of {base}): {describe(profile)}")
        else:
            users.setdefault(profile.key, []).append(place)
    for name in settings.profile_names():
        gets = ", ".join(users.get(name, [])) or "no channel"
        print(f"{name}: {describe(settings.research_profile(name))} → {gets}")
    for line in copies:
        print(line)
    return EXIT_OK


async def _eval(pipeline: Pipeline, name: str | None) -> int:
    """`digestbot eval`: the ratings as a regression set for the scoring prompt and model."""
    from bot.chatstore import ChatStore

    settings = pipeline.settings
    try:
        profile = settings.research_profile(name)
    except KeyError:
        known = ", ".join(settings.profile_names())
        raise UserError(f"eval --profile: unknown profile {name!r} (known: {known})") from None
    ratings = await ChatStore(pipeline.store).profile_ratings(profile.name)
    if not ratings:
        print(
            f"No rated papers for the profile {profile.name!r} yet: rate deep dives with 👍/👎 "
            "or `/digest like ID` in chat."
        )
        return EXIT_OK
    papers = []
    for rating in ratings:
        paper = await pipeline.store.get_paper(rating.arxiv_id) or await pipeline.resolve(
            rating.arxiv_id
        )
        papers.append(paper)
    scores = await pipeline.rescore(papers, profile)
    threshold = profile.threshold
    wrong = [r for r in ratings if (scores[r.arxiv_id].score >= threshold) != r.liked]
    agree = len(ratings) - len(wrong)
    how = "keyword ranking (no LLM)" if pipeline.llm is None else pipeline.model
    print(
        f"Profile {profile.name!r} · {how} · prompt {pipeline.scorer.prompt.version} · "
        f"threshold {threshold}"
    )
    print(
        f"Agreement: {agree}/{len(ratings)} ({100 * agree / len(ratings):.0f}%): "
        "👍 at or above the threshold, 👎 below it"
    )
    if wrong:
        print("Disagreements:")
    for r in wrong:
        mark, side = ("👍", "<") if r.liked else ("👎", ">=")
        score = scores[r.arxiv_id]
        print(f"  {mark} {r.arxiv_id} scored {score.score} {side} {threshold}: {r.title}")
        print(f"     reason: {score.reason}")
    return EXIT_OK


async def _analyze(pipeline: Pipeline, paper: str) -> int:
    from digest_core.render.markdown import render_analysis_markdown

    entry = await pipeline.analyze(paper)
    print(render_analysis_markdown(entry, pipeline.settings.digest.language))
    return EXIT_OK


async def _export(pipeline: Pipeline, day: str, out: str | None) -> int:
    text = await pipeline.export(day)
    if text is None:
        raise UserError(
            f"export: no digest stored for {day}; run `digestbot digest --date {day}` first"
        )
    if out:
        from bot.channels.console import write_text

        await asyncio.to_thread(write_text, Path(out), text)
        print(f"wrote {out}", file=sys.stderr)
    else:
        print(text)
    return EXIT_OK


DEMO_DAY = "2026-01-23"


async def _demo(settings: Settings) -> int:
    """The bundled real HF day, scored and analysed with the built-in analyser, no network."""
    import json
    from importlib import resources

    from digest_core.pipeline import Pipeline
    from digest_core.render.markdown import render_report
    from digest_core.sources.hf import parse_daily_papers

    raw = (
        resources.files("digest_core").joinpath(f"data/hf_daily_{DEMO_DAY}.json").read_text("utf-8")
    )
    papers = parse_daily_papers(json.loads(raw), settings.sources.arxiv_url)
    with tempfile.TemporaryDirectory(prefix="digestbot-demo-") as tmp:
        demo_settings = settings.model_copy(update={"db_path": Path(tmp) / "demo.db"})
        pipeline = await Pipeline.open(demo_settings, offline=True)
        try:
            digest = await pipeline.build_digest(
                DEMO_DAY, progress=_progress_printer(), papers=papers
            )
        finally:
            await pipeline.aclose()
    print(render_report(digest))
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
