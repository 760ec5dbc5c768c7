"""The one place where core, store and channels meet.

Delivery walks the messages a channel renders and passes each through the ledger: record the
intent, post, record the result. A re-run skips what was sent, a crashed run resumes into the
same thread, and a post whose outcome is unknown is looked for before it is sent again (on
platforms that can be searched). One destination's failure never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bot.channels.base import Channel, DeliveryError, ErrorKind, Outgoing
from bot.chatstore import ChatStore, PostRecord, PostStatus, ThreadRecord
from bot.settings import AppSettings as Settings
from digest_core.config import RetrySettings
from digest_core.models import Digest, FigureImage, Paper, Rating, ResearchProfile, SeenMark
from digest_core.pipeline import Pipeline, Progress
from digest_core.retry import RetryPolicy, TryAgain

log = logging.getLogger(__name__)

LOCAL_PLATFORMS = ("console", "markdown")
# Fetches a paper's key figure (Pipeline.key_figure): None when there is none to post.
FigureSource = Callable[[Paper], Awaitable[FigureImage | None]]
SEND_ATTEMPTS = 3
# Sends of one post whose outcome was unknown (a timeout after Telegram may have stored it),
# over all runs, on a platform that cannot be searched: at most one duplicate, ever.
BLIND_SENDS = 2


@dataclass(frozen=True)
class Destination:
    channel: Channel
    chat: str

    @property
    def label(self) -> str:
        return f"{self.channel.platform}:{self.chat}"


@dataclass(frozen=True)
class Delivered:
    destination: str
    ok: bool
    posted: int
    skipped: int
    error: str | None = None
    retryable: bool = False  # a transient failure: trying again later may deliver the rest


class UnknownDestination(ValueError):
    """`--to` names a destination that does not exist or is not configured (one line)."""


def parse_destinations(
    to: str | None, settings: Settings, *, dry_run: bool = False
) -> list[Destination]:
    """`--to console,slack,telegram`; without it every configured platform, or the console."""
    from bot.channels.console import ConsoleChannel, MarkdownFileChannel

    if dry_run:
        return [Destination(ConsoleChannel(), "stdout")]
    names = [n.strip() for n in to.split(",") if n.strip()] if to else []
    for name in names:
        if name not in ("console", "slack", "telegram", "markdown"):
            raise UnknownDestination(
                f"--to: unknown destination {name!r} (console, slack, telegram, markdown)"
            )
    if not names:
        names = [
            n
            for n, on in (("slack", settings.slack.channels), ("telegram", settings.telegram.chats))
            if on
        ]
        names = names or ["console"]
    out: list[Destination] = []
    for name in names:
        if name == "console":
            out.append(Destination(ConsoleChannel(), "stdout"))
        elif name == "markdown":
            out.append(Destination(MarkdownFileChannel(), "exports"))
        elif name == "slack":
            out.extend(_slack_destinations(settings))
        elif name == "telegram":
            out.extend(_telegram_destinations(settings))
    return out


def _slack_destinations(settings: Settings) -> list[Destination]:
    from bot.channels.slack import slack_channel

    if not settings.slack.bot_token or not settings.slack.channels:
        raise UnknownDestination("--to slack: set SLACK_BOT_TOKEN and SLACK_CHANNELS")
    channel = slack_channel(settings)
    return [Destination(channel, c) for c in settings.slack.channels]


def _telegram_destinations(settings: Settings) -> list[Destination]:
    from bot.channels.telegram import TelegramChannel, make_bot

    if not settings.telegram.bot_token or not settings.telegram.chats:
        raise UnknownDestination("--to telegram: set TELEGRAM_BOT_TOKEN and TELEGRAM_CHATS")
    bot = make_bot(settings.telegram.bot_token.get(), settings.telegram.api_url)
    channel = TelegramChannel(bot, settings.digest.language, retry=settings.retry)
    return [Destination(channel, c) for c in settings.telegram.chats]


async def destination_profile(
    settings: Settings, chat: ChatStore, platform: str, where: str
) -> ResearchProfile:
    """Which research profile a destination (a Slack channel, a Telegram chat or forum topic)
    uses: the default, a named one or its own edited copy (bot.team, from chat state). The
    one place that answers it: digests, ratings, scoring examples all ask here."""
    from bot.team import resolve  # bot.team builds on this module

    return resolve(settings, await chat.binding(platform, where))


async def profile_ratings(
    settings: Settings, chat: ChatStore, profile: ResearchProfile
) -> list[Rating]:
    """A profile's rated papers, most recent first, as the core takes them (plain values).
    Read a little beyond the examples a scoring call shows, because the papers being scored
    are left out of their own examples."""
    cfg = settings.digest
    return await chat.profile_ratings(profile.name, limit=cfg.rating_examples + cfg.top_n)


async def for_destination(
    pipeline: Pipeline, chat: ChatStore, dest: Destination, digest: Digest
) -> Digest:
    """The digest as one destination gets it: papers deep-dived there within `seen_days`
    (not counting this day's own thread, so a re-run is the same digest) are marked with the
    date and a link to their thread, and the next papers take their places."""
    days = pipeline.settings.digest.seen_days
    if not days or dest.channel.platform in LOCAL_PLATFORMS or not digest.entries:
        return digest
    since = datetime.now(UTC) - timedelta(days=days)
    seen = await chat.deep_dived(
        dest.channel.platform, dest.chat, since, other_than=f"digest:{digest.date}"
    )
    ids = {e.paper.arxiv_id for e in digest.entries}
    marks: dict[str, SeenMark] = {}
    for arxiv_id, record in seen.items():
        if arxiv_id in ids:
            link = None
            if record.thread_ref:
                link = await dest.channel.permalink(dest.chat, record.thread_ref)
            marks[arxiv_id] = SeenMark(record.date, link)
    profile = await destination_profile(pipeline.settings, chat, dest.channel.platform, dest.chat)
    return await pipeline.skip_seen(digest, marks, profile)


async def started_digest(
    chat: ChatStore,
    day: str,
    profile_key: str | None = None,
    destinations: Sequence[Destination] = (),
) -> Digest | None:
    """The digest a run already began posting, so a re-run or a catch-up finishes that one:
    rebuilt from HF's list (which grows during the day) it could pick other papers, and post
    their deep dives under a table of contents that does not list them. With `profile_key`:
    that profile's digest, if one of its `destinations` got part of it."""
    scope = f"digest:{day}"
    if profile_key is None:
        return await chat.store.load_digest(day) if await chat.has_posts(scope) else None
    for dest in destinations:
        if await chat.post_state(scope, dest.channel.platform, dest.chat):
            break
    else:
        return None
    found = await chat.store.load_digest(day, profile_key)
    if found is None:
        main = await chat.store.load_digest(day)
        if main is not None and not main.profile_key:
            found = main  # stored before profiles existed: the one profile there was
    return found


Papers = Callable[[], Awaitable[Sequence[Paper]]]


async def digests_for(
    pipeline: Pipeline,
    chat: ChatStore,
    day: str,
    plan: Sequence[tuple[Destination, ResearchProfile]],
    *,
    fresh: bool = False,
    papers: Papers | None = None,
    progress: Progress | None = None,
) -> dict[str, Digest]:
    """The day's digest of every profile in `plan`, by content key: the one already begun
    (unless `fresh`), or built now, all new ones from one fetch of the day's list."""
    groups: dict[str, tuple[ResearchProfile, list[Destination]]] = {}
    for dest, profile in plan:
        groups.setdefault(profile.content_key, (profile, []))[1].append(dest)
    if not groups:
        groups[pipeline.profile.content_key] = (pipeline.profile, [])
    out: dict[str, Digest] = {}
    todo: list[ResearchProfile] = []
    for key, (profile, dests) in groups.items():
        begun = None if fresh else await started_digest(chat, day, key, dests)
        if begun is not None:
            out[key] = begun
        else:
            todo.append(profile)
    if todo:
        given = await papers() if papers is not None else None
        extra = {"progress": progress} if progress is not None else {}
        ratings = {p.name: await profile_ratings(pipeline.settings, chat, p) for p in todo}
        out.update(await pipeline.build_digests(day, todo, papers=given, ratings=ratings, **extra))
    return out


async def deliver_digest(
    pipeline: Pipeline, digest: Digest, destinations: list[Destination]
) -> int:
    """Deliver to every destination; exit code 0 when all of them got the whole digest."""
    return await deliver_each(pipeline, [(dest, digest) for dest in destinations])


async def deliver_each(pipeline: Pipeline, pairs: Sequence[tuple[Destination, Digest]]) -> int:
    """Deliver each destination its digest; exit code 0 when all of them got the whole one."""
    chat = ChatStore(pipeline.store)
    results = []
    for dest, digest in pairs:
        # An explicit run is the operator's retry: destinations that failed permanently before
        # (the bot was not in the channel yet) are tried again.
        results.append(
            await deliver(
                chat, dest, digest, pipeline.settings, pipeline=pipeline, retry_permanent=True
            )
        )
    await _close_channels([dest for dest, _ in pairs])
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"digestbot: {r.destination}: not delivered: {r.error}", file=sys.stderr)
    return 1 if failed else 0


async def _close_channels(destinations: list[Destination]) -> None:
    seen: set[int] = set()
    for dest in destinations:
        if id(dest.channel) not in seen:
            seen.add(id(dest.channel))
            await dest.channel.aclose()


async def deliver(
    store: ChatStore,
    dest: Destination,
    digest: Digest,
    settings: Settings,
    *,
    pipeline: Pipeline | None = None,
    retry_permanent: bool = False,
    figures: FigureSource | None = None,
) -> Delivered:
    """Deliver a digest to one destination through the ledger. With `pipeline`, papers
    deep-dived there recently are not deep-dived again (`for_destination`). Then each picked
    paper's key figure is posted at the end of the thread (after all the text: a slow or
    missing image never holds up a deep dive), fetched by `figures` (default: the pipeline's
    `key_figure`)."""
    channel = dest.channel
    if figures is None and pipeline is not None:
        figures = pipeline.key_figure
    if pipeline is not None:
        digest = await for_destination(pipeline, store, dest, digest)
    if (
        digest.empty
        and not settings.digest.empty_day_notice
        and channel.platform not in LOCAL_PLATFORMS
    ):
        log.info("no papers for %s: nothing posted to %s", digest.date, dest.label)
        return Delivered(dest.label, True, 0, 0)
    messages = channel.render_digest(digest)
    if channel.platform in LOCAL_PLATFORMS:
        for out in messages:
            await channel.send(dest.chat, out.payload, None, key=out.key)
        return Delivered(dest.label, True, len(messages), 0)
    scope = f"digest:{digest.date}"
    delivered = await post_thread(
        store,
        dest,
        scope,
        messages,
        kind="digest",
        papers=[e.paper.arxiv_id for e in digest.entries],
        retry_permanent=retry_permanent,
        retry=settings.retry,
    )
    root = (await store.post_state(scope, channel.platform, dest.chat)).get(messages[0].key)
    if figures is not None and delivered.ok and root is not None and root.message_ref:
        # Fetched together, posted in the digest's order, each named by its number and title.
        fetches = [asyncio.ensure_future(figures(e.paper)) for e in digest.picked]
        for i, (entry, fetch) in enumerate(zip(digest.picked, fetches, strict=True), start=1):
            prefix = f"{i}. {' '.join(entry.paper.title.split())[:200]} — "
            await post_figure(
                store,
                dest,
                scope,
                root.message_ref,
                entry.paper.arxiv_id,
                fetch,
                caption_prefix=prefix,
            )
    return delivered


async def post_thread(
    store: ChatStore,
    dest: Destination,
    scope: str,
    messages: list[Outgoing],
    *,
    kind: str,
    papers: list[str],
    thread: str | None = None,
    belongs_to: str | None = None,
    replacing: str | None = None,
    retry: RetrySettings | None = None,
    retry_pause: float | None = None,
    retry_permanent: bool = False,
) -> Delivered:
    """Post a root and its replies exactly once through the ledger (or only replies, into an
    existing `thread`). Returns what happened; never raises DeliveryError.

    `belongs_to` names the bot thread the replies are part of when `thread` is only where they
    go (a Telegram reply to a person's message): a reply to any of them then finds that
    thread. `replacing` is a placeholder the channel posted (`Channel.working`): the first
    message takes its place instead of being sent.

    A destination that failed permanently (not_in_channel, bot kicked) is not tried again,
    nor is a post on an unsearchable platform already sent blindly BLIND_SENDS times, unless
    `retry_permanent`: a person asking again (an operator's re-run, a new /analyze).

    After a transient failure a message is checked for and sent again with the pauses of the
    `[retry]` settings (`retry`; the defaults without); `retry_pause` replaces their base."""
    channel, chat = dest.channel, dest.chat
    policy = RetryPolicy.from_settings(
        retry or RetrySettings(), attempts=SEND_ATTEMPTS, retry_after_cap=float("inf")
    )
    if retry_pause is not None:
        policy = policy.with_(backoff_base=retry_pause)
    state = await store.post_state(scope, channel.platform, chat)
    posted = skipped = 0
    refused: list[str] = []  # messages the platform would not take; the others still went out

    def row(
        out: Outgoing,
        seq: int,
        status: PostStatus,
        reply_to: str | None,
        *,
        message_ref: str | None = None,
        error_kind: ErrorKind | None = None,
        error: str | None = None,
        attempts: int = 0,
    ) -> PostRecord:
        return PostRecord(
            scope,
            channel.platform,
            chat,
            out.key,
            seq,
            status,
            thread_ref=belongs_to or reply_to,
            message_ref=message_ref,
            error_kind=error_kind,
            error=error,
            attempts=attempts,
        )

    for seq, out in enumerate(messages):
        prior = state.get(out.key)
        if prior and prior.status is PostStatus.SENT:
            skipped += 1
            if seq == 0 and thread is None:
                thread = prior.message_ref
            continue
        failed_as = prior.error_kind if prior else None
        sends = 0 if retry_permanent or prior is None else prior.attempts
        if failed_as is ErrorKind.CONTENT and not retry_permanent:
            refused.append(f"{out.summary}: {prior.error if prior else ''}")
            continue
        if failed_as is ErrorKind.PERMANENT and not retry_permanent:
            return Delivered(dest.label, False, posted, skipped, prior.error if prior else None)
        if not channel.searchable and sends >= BLIND_SENDS:
            reason = (
                f"{out.summary}: timed out {sends} times and may have landed; re-run to send again"
            )
            return Delivered(dest.label, False, posted, skipped, reason)
        reply_to = thread if (seq > 0 or thread is not None) else None
        # The mark that finds this post again must be unique per scope: every thread's first
        # post is "toc" or "root", and an older thread's must not pass for this one's.
        mark = f"{scope}/{out.key}"
        ref = None
        used = sends
        if prior and prior.status in (PostStatus.INTENT, PostStatus.FAILED):
            ref = await _find_previous(channel, chat, reply_to, mark)
        if ref is None:
            budget = SEND_ATTEMPTS if channel.searchable else BLIND_SENDS
            await store.record_post(row(out, seq, PostStatus.INTENT, reply_to, attempts=sends))
            counter = [sends]
            try:
                if seq == 0 and replacing is not None:
                    await channel.replace(chat, replacing, out.payload)
                    ref = replacing
                else:
                    ref = await _send_once(
                        channel, chat, out, mark, reply_to, policy, budget, counter
                    )
            except DeliveryError as exc:
                # A refused root leaves nothing to thread the rest under: that is the
                # destination failing, not one message.
                error_kind = exc.kind
                if error_kind is ErrorKind.CONTENT and seq == 0:
                    error_kind = ErrorKind.PERMANENT if exc.permanent else ErrorKind.TRANSIENT
                await store.record_post(
                    row(
                        out,
                        seq,
                        PostStatus.FAILED,
                        reply_to,
                        error_kind=error_kind,
                        error=exc.reason,
                        attempts=counter[0],
                    )
                )
                log.error(
                    "%s: %s post failed (%s): %s", dest.label, out.summary, error_kind, exc.reason
                )
                if error_kind is ErrorKind.CONTENT:
                    refused.append(f"{out.summary}: {exc.reason}")
                    continue  # this message only: the rest of the thread still goes out
                return Delivered(
                    dest.label, False, posted, skipped, exc.reason, retryable=not exc.permanent
                )
            posted += 1
            used = counter[0]
        else:
            skipped += 1
        await store.record_post(
            row(out, seq, PostStatus.SENT, reply_to, message_ref=ref, attempts=used)
        )
        if seq == 0 and thread is None:
            thread = ref
            await store.save_thread(
                ThreadRecord(channel.platform, chat, ref, kind, scope, tuple(papers))
            )
    if refused:
        return Delivered(dest.label, False, posted, skipped, "; ".join(refused))
    return Delivered(dest.label, True, posted, skipped)


FIGURE_ATTEMPTS = 2  # sends of one figure, over all runs, after transient failures


async def post_figure(
    store: ChatStore,
    dest: Destination,
    scope: str,
    thread: str,
    arxiv_id: str,
    fetch: Awaitable[FigureImage | None],
    *,
    caption_prefix: str = "",
) -> bool:
    """Post a paper's key figure into `thread` once, through the ledger, after its text.

    The ledger row lives in `figure:<scope>` (key = the arXiv ID), so the text's own
    bookkeeping ("already analysed here") never waits on it. A figure already sent, or whose
    send may have landed (an intent without an outcome: an upload cannot be looked up
    again), is not sent again and `fetch` is not even awaited; nor after FIGURE_ATTEMPTS
    transient failures or one refusal. A figure that cannot be had (`fetch` gives None) was
    logged where it failed and is simply not posted. Returns whether a figure was posted.
    Never raises DeliveryError."""
    channel, chat = dest.channel, dest.chat
    figure_scope = f"figure:{scope}"
    prior = (await store.post_state(figure_scope, channel.platform, chat)).get(arxiv_id)
    if prior is not None and (
        prior.status is not PostStatus.FAILED
        or prior.error_kind is not ErrorKind.TRANSIENT
        or prior.attempts >= FIGURE_ATTEMPTS
    ):
        if asyncio.iscoroutine(fetch):
            fetch.close()
        elif isinstance(fetch, asyncio.Future):
            fetch.cancel()
        return False
    image = await fetch
    if image is None:
        return False
    attempts = (prior.attempts if prior else 0) + 1

    def row(status: PostStatus, **extra: object) -> PostRecord:
        return PostRecord(
            figure_scope,
            channel.platform,
            chat,
            arxiv_id,
            0,
            status,
            thread_ref=thread,
            attempts=attempts,
            **extra,  # type: ignore[arg-type]
        )

    await store.record_post(row(PostStatus.INTENT))
    caption = f"{caption_prefix}{image.caption}".strip()
    try:
        ref = await channel.send_image(
            chat, image, caption, thread, key=f"{figure_scope}/{arxiv_id}"
        )
    except DeliveryError as exc:
        await store.record_post(row(PostStatus.FAILED, error_kind=exc.kind, error=exc.reason))
        log.warning("%s: key figure of %s not posted: %s", dest.label, arxiv_id, exc.reason)
        return False
    await store.record_post(row(PostStatus.SENT, message_ref=ref))
    return True


async def _send_once(
    channel: Channel,
    chat: str,
    out: Outgoing,
    mark: str,
    thread: str | None,
    policy: RetryPolicy,
    budget: int,
    counter: list[int],
) -> str:
    """Send, and after a transient failure look for the message before sending it again: a
    5xx or a dropped connection can come after the platform stored the post. On a platform
    that cannot be searched (Telegram), `counter` counts the sends whose outcome is unknown
    (they may have landed), and `budget` bounds them, over all runs, through the ledger."""

    async def attempt(number: int) -> str:
        if number > 1:
            # The last send may have landed after all: look before sending it again.
            found = await _find_previous(channel, chat, thread, mark)
            if found is not None:
                return found
        try:
            return await channel.send(chat, out.payload, thread, key=mark)
        except DeliveryError as exc:
            if exc.maybe_delivered:
                counter[0] += 1
            if exc.permanent or counter[0] >= budget:
                raise
            log.warning(
                "%s: transient failure (%s); checking, then trying again", out.summary, exc.reason
            )
            raise TryAgain(exc.reason, value=exc) from None

    try:
        return await policy.run(attempt, what=out.summary)
    except TryAgain as exc:
        raise exc.value from None


async def _find_previous(channel: Channel, chat: str, thread: str | None, key: str) -> str | None:
    """A post recorded as intended but not confirmed may have landed: look before resending."""
    if not channel.searchable:
        return None
    try:
        return await channel.find_posted(chat, thread, key)
    except DeliveryError as exc:
        log.warning("could not check for an earlier post of %s: %s", key, exc.reason)
        return None
